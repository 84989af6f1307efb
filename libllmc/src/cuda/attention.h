/*
 * attention.h: causal multi-head attention through cuDNN's fused flash
 * attention. Kept apart from the rest of the backend because its translation
 * unit (cudnn-frontend, header-only and heavy) takes minutes to compile:
 * nothing here depends on the other CUDA headers, so it is rebuilt rarely.
 *
 * Layouts (row = one token, b-major):
 *   qkv  (B, T, NH + 2 NKV, HS) bf16: the fused QKV projection's output, NH
 *        query heads then NKV key and NKV value heads (GPT-2: NKV = NH;
 *        Llama's grouped-query attention: NKV divides NH)
 *   out  (B, T, NH, HS)    bf16
 *   lse  (B, NH, T)        fp32: softmax log-sum-exp per query, saved for backward
 */
#ifndef LLMC_CUDA_ATTENTION_H
#define LLMC_CUDA_ATTENTION_H

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <stddef.h>

typedef struct attn_ctx attn_ctx;

/* Each call returns an llmc_status value (0 = LLMC_OK, 4 = out of memory,
 * 6 = device error) and on failure writes a message into err (errlen bytes).
 * The workspace is sized for max_B x max_T and grown later if needed. */
int attn_create(attn_ctx **out, int max_B, int max_T, int NH, int NKV, int HS,
                cudaStream_t stream, char *err, size_t errlen);
void attn_destroy(attn_ctx *ctx);
/* Device bytes the context holds (workspace), for memory accounting. */
size_t attn_memory_bytes(const attn_ctx *ctx);

/* lse may be NULL (inference: no statistics written). */
int attn_forward(attn_ctx *ctx, __nv_bfloat16 *out, float *lse, const __nv_bfloat16 *qkv, int B,
                 int T, char *err, size_t errlen);
int attn_backward(attn_ctx *ctx, __nv_bfloat16 *dqkv, const __nv_bfloat16 *dout,
                  const __nv_bfloat16 *qkv, const __nv_bfloat16 *out, const float *lse, int B, int T,
                  char *err, size_t errlen);

#endif
