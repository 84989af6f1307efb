/*
 * kernels.cuh: the launchers of the backend's own kernels, one source file
 * per family. All run on the given stream and are deterministic: reductions
 * go through per-block partial sums added in a fixed order, never atomics.
 * Rows are tokens (N = B*T); C is the channel count, a multiple of 8.
 */
#ifndef LLMC_CUDA_KERNELS_CUH
#define LLMC_CUDA_KERNELS_CUH

#include "common.cuh"

/* The two-pass reductions: a fixed grid writes rows of partial sums, then
 * add_partials adds them in a fixed order. Blocks of the LayerNorm backward
 * (3C wide partials), row splits of the bias gradient (OC <= 4C wide) and of
 * the FP8 casts' column sums (fp8.cuh: 256 x 4C), blocks of the sum of
 * squares; the partial buffer holds PARTIAL_FLOATS(C) floats. */
#define LN_BACKWARD_BLOCKS 512
#define BIAS_ROW_SPLITS 128
#define SUM_SQUARES_BLOCKS 256
#define PARTIAL_FLOATS(C) ((size_t)LN_BACKWARD_BLOCKS * 3 * (C))

/* encoder.cu: token + position embeddings (Llama: wpe and dwpe NULL, the
 * token embedding alone), and their gradients.
 * The wte gradient is gathered per distinct token: `order` lists the rows
 * sorted by token, bucket_start[i]..bucket_start[i+1] those of bucket_token[i]. */
void encoder_forward(bf16 *out, const int *tokens, const bf16 *wte, const bf16 *wpe, int B, int T,
                     int C, cudaStream_t s);
/* partial: scratch of 2 * ceil(B*T / 32) * C floats. */
void encoder_backward(float *dwte, float *dwpe, float *partial, const bf16 *dout,
                      const int *order, const int *bucket_start, const int *bucket_token,
                      int num_buckets, int B, int T, int C, cudaStream_t s);

/* layernorm.cu. mean/rstd are saved per row for the backward pass. */
/* With fp8.out set, the output goes there instead of out: E4M3 at *fp8.scale,
 * each value rounded to bf16 first (the bits a cast of the bf16 output
 * gives), and fp8.amax (may be NULL) takes their largest magnitude. */
struct ln_fp8_out {
    uint8_t *out = nullptr;
    const float *scale = nullptr;
    float *amax = nullptr;
};
void layernorm_forward(bf16 *out, float *mean, float *rstd, const bf16 *inp, const bf16 *w,
                       const bf16 *b, int N, int C, cudaStream_t s, const ln_fp8_out &fp8 = {});
/* res_out = res_in + branch, out = LayerNorm(res_out). */
void residual_layernorm_forward(bf16 *res_out, bf16 *out, float *mean, float *rstd,
                                const bf16 *res_in, const bf16 *branch, const bf16 *w,
                                const bf16 *b, int N, int C, cudaStream_t s,
                                const ln_fp8_out &fp8 = {});
/* dinp += dLN/dinp; dw, db += (fp32); and when dsum is not NULL, dsum +=
 * the column sums of the updated dinp: the bias gradient of the projection
 * whose output joined the residual stream there, at no extra pass. */
#define LN_MAX_CHANNELS 2048
void layernorm_backward(bf16 *dinp, float *dw, float *db, float *dsum, float *partial,
                        const bf16 *dout, const bf16 *inp, const bf16 *w, const float *mean,
                        const float *rstd, int N, int C, cudaStream_t s);

/* rmsnorm.cu (Llama): as the LayerNorm launchers with no bias and no mean;
 * any C that is a multiple of 8. rmsnorm_backward: dinp += dRMS/dinp, dw +=
 * (fp32, through partial: BIAS_ROW_SPLITS x C floats). */
void rmsnorm_forward(bf16 *out, float *rstd, const bf16 *inp, const bf16 *w, int N, int C,
                     float eps, cudaStream_t s);
void residual_rmsnorm_forward(bf16 *res_out, bf16 *out, float *rstd, const bf16 *res_in,
                              const bf16 *branch, const bf16 *w, int N, int C, float eps,
                              cudaStream_t s);
void rmsnorm_backward(bf16 *dinp, float *dw, float *partial, const bf16 *dout, const bf16 *inp,
                      const bf16 *w, const float *rstd, int N, int C, cudaStream_t s);

/* A decode row's norm: the family's kind, weights (b: LayerNorm's bias, NULL
 * for RMSNorm) and epsilon. */
#define LN_EPS 1e-5f  // GPT-2's LayerNorm
enum { NORM_LAYER, NORM_RMS };
struct row_norm {
    int kind;
    const bf16 *w, *b;
    float eps;
};

/* The norms of decode rows (no mean/rstd saved: nothing runs backward):
 * out = norm(x) of each of n rows, x = res_in, or with a branch (not NULL)
 * res_out = res_in + branch, rounded to bf16, and x = res_out. A block per
 * row (decode_norm_threads(C) threads, two 16-byte slices each at most):
 * C <= DECODE_NORM_MAX_CHANNELS. Not the training kernels' bits. */
#define DECODE_NORM_MAX_CHANNELS (1024 * 8 * 2)
static inline int decode_norm_threads(int C) {
    return C / 8 < 1024 ? 32 * ceil_div(C / 8, 32) : 1024;
}
void decode_norm(bf16 *res_out, bf16 *out, const bf16 *res_in, const bf16 *branch,
                 const row_norm &norm, int n, int C, cudaStream_t s);

/* rope.cu (Llama): rotates the NH query and NKV key heads (hs channels) at
 * the start of each of the B*T qkv rows ((NH + 2 NKV) hs wide) by the
 * position's angles (cos_t, sin_t: (T, hs/2)); inverse for the backward pass. */
void rope_rotate(bf16 *qkv, const float *cos_t, const float *sin_t, int B, int T, int NH, int NKV,
                 int hs, bool inverse, cudaStream_t s);
/* The same on n rows of single tokens, row i at position pos[i] (generation). */
void rope_rotate_at(bf16 *qkv, const float *cos_t, const float *sin_t, const int *pos, int n,
                    int NH, int NKV, int hs, cudaStream_t s);
/* Fills the device tables cos_t and sin_t (T, hs/2) for positions 0..T-1 of
 * config c (its theta and Llama 3.1 scaling), computed on the host exactly
 * as the CPU backend's; returns once they are on the device. */
llmc_status rope_upload_table(float *cos_t, float *sin_t, const llmc_config *c, int T,
                              cudaStream_t s);

/* swiglu.cu (Llama): out (N, F) = up * silu(gate) of inp rows (N, 2F) =
 * [up | gate]; the backward pass overwrites dinp (N, 2F). F % 8 == 0. */
void swiglu_forward(bf16 *out, const bf16 *inp, int N, int F, cudaStream_t s);
void swiglu_backward(bf16 *dinp, const bf16 *dout, const bf16 *inp, int N, int F, cudaStream_t s);

/* reduce.cu: for c < n, out0[c] (c < split) or out1[c - split] += the sum over
 * k < rows of partial[k * width + c]. */
void add_partials(float *out0, float *out1, const float *partial, int rows, int width, int n,
                  int split, cudaStream_t s);
/* reduce.cu: dbias += column sums of dout (N, OC). */
void bias_backward(float *dbias, float *partial, const bf16 *dout, int N, int OC, cudaStream_t s);

/* gemv.cu: out (n, OC) = inp (n, IC) @ w^T (+ bias, NULL for none; GELU of the
 * sum with gelu), fp32 sums, for decode steps of n <= GEMV_MAX_ROWS rows: w is
 * streamed once for all n rows (a step of few tokens is bound by reading the
 * weights). A row's result is bit for bit the same whatever the other rows
 * (n = 1..8). Only where gemv_fits: IC a multiple of 8, inp and w 16-byte
 * aligned (otherwise cuBLASLt, matmul.cuh). */
#define GEMV_MAX_ROWS 8
bool gemv_fits(int n, int IC, const void *inp, const void *w);
void gemv_forward(bf16 *out, const bf16 *inp, const bf16 *w, const bf16 *bias, int n, int IC,
                  int OC, bool gelu, cudaStream_t s);
/* The same, fp32 out, no bias (the LM head's logits). */
void gemv_forward_fp32(float *out, const bf16 *inp, const bf16 *w, int n, int IC, int OC,
                       cudaStream_t s);

/* gelu.cu: GELU (tanh form), for recomputing the MLP activation in backward. */
void gelu_forward(bf16 *out, const bf16 *inp, size_t n, cudaStream_t s);

/* crossentropy.cu: softmax + cross-entropy (and optionally its gradient)
 * over the first V of Vp columns of bf16 logits rows. losses[r] gets each
 * row's loss (0 where target < 0). With write_grad, dloss * (softmax -
 * onehot), zero in padded columns and in ignored rows, overwrites the
 * logits, or with grad8 goes there instead (rows x Vp E4M3 at grad8_scale, a
 * power of two). */
void crossentropy_forward_backward(bf16 *logits, float *losses, const int *targets, int rows,
                                   int V, int Vp, float dloss, int write_grad, cudaStream_t s,
                                   uint8_t *grad8 = nullptr, float grad8_scale = 1.0f);

/* gather.cu: out[i] = in[rows[i]] for n rows of C bf16; and out[rows[i]] = in[i]. */
void gather_rows(bf16 *out, const bf16 *in, const int *rows, int n, int C, cudaStream_t s);
void scatter_floats(float *out, const float *in, const int *rows, int n, cudaStream_t s);

/* adamw.cu: one AdamW step over n floats; the bf16 copy is written with
 * stochastic rounding seeded by (seed, element index). */
void adamw_update(float *master, bf16 *param, float *m, float *v, const float *grad, size_t n,
                  float lr, float beta1, float beta2, float bias_corr1, float bias_corr2,
                  float eps, float weight_decay, float grad_scale, uint32_t seed, size_t index0,
                  cudaStream_t s);
/* param = stochastic_round(master), with the same random bits as adamw_update. */
void round_params(bf16 *param, const float *master, size_t n, uint32_t seed, size_t index0,
                  cudaStream_t s);

/* reduce.cu: *out = sum of squares of x (n floats, a multiple of 4). */
void sum_squares(float *out, float *partial, const float *x, size_t n, cudaStream_t s);
/* *out = sum of x in double, in a fixed order. */
void sum_losses(double *out, const float *x, size_t n, cudaStream_t s);

#endif
