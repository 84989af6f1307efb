/*
 * matmul.cuh: the linear layers through cuBLASLt, row-major view.
 * Activations are (N, IC) rows, weights (OC, IC) as in llm.c's files.
 * bf16 inputs, fp32 accumulation; weight gradients accumulate in fp32.
 */
#ifndef LLMC_CUDA_MATMUL_CUH
#define LLMC_CUDA_MATMUL_CUH

#include "common.cuh"

typedef struct mm_ctx mm_ctx;

llmc_status mm_create(mm_ctx **out, cudaStream_t s);
void mm_destroy(mm_ctx *ctx);
size_t mm_memory_bytes(const mm_ctx *ctx);

/* out (N, OC) = inp @ w^T + bias (bias may be NULL). inp rows are inp_stride
 * elements apart (IC for packed rows). With gelu_pre non-NULL the output is
 * GELU of the result and gelu_pre receives the result before GELU. With
 * plan_rows > N, the product runs cuBLASLt's algorithm for plan_rows rows, so
 * that every row's result is the one it gets in a product of plan_rows rows
 * (the classifier's chunks: an eval gathers the rows it scores into them). */
llmc_status matmul_forward(mm_ctx *ctx, bf16 *out, const bf16 *inp, int inp_stride, const bf16 *w,
                           const bf16 *bias, int N, int IC, int OC, bf16 *gelu_pre,
                           int plan_rows = 0);
/* The same product written as fp32 (logits for the API), no bias. */
llmc_status matmul_forward_fp32(mm_ctx *ctx, float *out, const bf16 *inp, int inp_stride,
                                const bf16 *w, int N, int IC, int OC);
/* dinp (N, IC) = dout @ w; with gelu_pre non-NULL, times GELU'(gelu_pre). */
llmc_status matmul_backward_input(mm_ctx *ctx, bf16 *dinp, const bf16 *dout, const bf16 *w, int N,
                                  int IC, int OC, const bf16 *gelu_pre);
/* dw (OC, IC) += dout^T @ inp, fp32. */
llmc_status matmul_backward_weight(mm_ctx *ctx, float *dw, const bf16 *dout, const bf16 *inp,
                                   int N, int IC, int OC);

/* FP8 (Hopper) versions of the three: operands E4M3 (inputs, weights) and
 * E5M2 (gradients) as fp8.cu casts them, each with the device scale that
 * undoes its cast (descale); inp8/dout8 are (N, IC)/(N, OC) rows, w8 the
 * (OC, IC) weight, wT8 its (IC, OC) transpose, inpT8/doutT8 the (IC, N)/
 * (OC, N) transposes of the activations. No GELU epilogues: cuBLASLt's FP8
 * kernels with DGELU ran 2.8x slower than without on an H200, and fp8.cu's
 * casts apply GELU (to fcproj's input) and GELU' (to fc's output gradient)
 * while reading those tensors anyway. */
llmc_status matmul_forward_fp8(mm_ctx *ctx, bf16 *out, const void *inp8, const void *w8,
                               const float *inp_descale, const float *w_descale, const bf16 *bias,
                               int N, int IC, int OC, int plan_rows = 0);
/* The gradients (dout8, doutT8) are E5M2, or E4M3 with dout_e4m3 (the LM
 * head's logit gradients, bounded: fp8.cuh). */
llmc_status matmul_backward_input_fp8(mm_ctx *ctx, bf16 *dinp, const void *dout8, const void *wT8,
                                      const float *dout_descale, const float *w_descale, int N,
                                      int IC, int OC, bool dout_e4m3 = false);
llmc_status matmul_backward_weight_fp8(mm_ctx *ctx, float *dw, const void *doutT8,
                                       const void *inpT8, const float *dout_descale,
                                       const float *inp_descale, int N, int IC, int OC,
                                       bool dout_e4m3 = false);

#endif
