/*
 * layers.h: the CPU backend's fp32 kernels, one file per layer family.
 * Internal to libllmc/src/cpu.
 *
 * Conventions: activations are row-major (N rows = B*T tokens, C columns);
 * weights are (out, in) as in llm.c's files. Kernels parallelise with
 * OpenMP over the thread count the backend set for the calling thread.
 * Every reduction runs in an order that depends only on the shapes, never
 * on the thread count, so training is bit-identical for a seed whatever
 * num_threads is. Gradients of parameters accumulate (+=); see each kernel
 * for its activation gradient.
 */
#ifndef LLMC_CPU_LAYERS_H
#define LLMC_CPU_LAYERS_H

#include <stddef.h>
#include <stdint.h>

/* Kernels run on one thread below this much work (floats touched, or
 * multiply-adds for products): waking the other threads would cost more
 * than it saves, and far more when other programs keep the cores busy. */
#define PARALLEL_MIN_FLOATS 32768
#define PARALLEL_MIN_MACS (1 << 20)

/* ---- vector maths ----------------------------------------------------------
 * e^x written so that GCC vectorises it inside `omp simd` loops (glibc's expf
 * is scalar without -ffast-math, and the classifier's softmax alone takes
 * B*T*V exponentials). Cody-Waite range reduction x = n ln2 + r with
 * |r| <= ln2/2, a degree-7 Taylor polynomial for e^r (truncation error
 * below 1e-8 relative), then 2^n put into the exponent bits: within 1.7 ulp
 * of e^x over [-87.3, 88] (checked against double exp at every millionth
 * step). Inputs below -87.3 give 0; inputs above 88 saturate at e^88: callers
 * need e^x for x <= 0, or 1/(1 + e^x), which is below 1e-38 either way. */
static inline float vec_expf(float x) {
    const float lo = -87.33654f, hi = 88.0f;
    const float xc = x < lo ? lo : (x > hi ? hi : x);
    /* round(xc / ln2) by adding 1.5 * 2^23: the low mantissa bits then hold n */
    const float shifter = 12582912.0f;
    union { float f; int32_t i; } t = {xc * 1.44269504088896341f + shifter};
    const float n = t.f - shifter;
    const int32_t ni = t.i - 0x4B400000;
    const float r = (xc - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* shifted as unsigned: a NaN input (from inf - inf upstream) gives any ni,
     * and the result is NaN whatever it is, but a signed shift would be UB */
    union { uint32_t i; float f; } scale = {(uint32_t)(ni + 127) << 23};
    return x < lo ? 0.0f : p * scale.f;
}

/* ---- matmul.c ------------------------------------------------------------- */

/* Prepares the BLAS for use from OpenMP threads (single-threaded calls). */
void cpu_blas_init(void);

/* C = alpha * op(A) op(B) + beta * C, row-major, op transposing where the
 * flag is set; M x N output, inner dimension K. gemm_serial runs on the
 * calling thread (for use inside parallel regions); gemm shares the output
 * among the OpenMP threads in parts fixed by the shape, so that every
 * element comes out the same whatever the thread count. */
void gemm_serial(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                 int lda, const float *B, int ldb, float beta, float *C, int ldc);
void gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
          const float *B, int ldb, float beta, float *C, int ldc);

/* out (N, OC) = residual + inp (N, C) @ weight^T + bias; residual and bias
 * may be NULL. */
void matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                    const float *residual, int N, int C, int OC);
/* matmul_forward for a few rows (at most MATMUL_FEW_ROWS; bias and residual
 * may be NULL, residual may be out): each weight read once, without the
 * packing a BLAS product does, which for so few rows (decoding) would cost
 * more than the product. */
#define MATMUL_FEW_ROWS 16
void matmul_forward_few(float *out, const float *inp, const float *weight, const float *bias,
                        const float *residual, int N, int C, int OC);
/* dinp = dout @ weight (overwritten); dweight += dout^T @ inp; dbias += column
 * sums of dout (skipped when dbias is NULL). */
void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, int N, int C, int OC);
/* dst[c] += sum over rows of src (N, C), summed row by row in order. */
void column_sums_add(float *dst, const float *src, int N, int C);

/* ---- encoder.c ------------------------------------------------------------ */

/* out (B, T, C) = wte[tokens] + wpe[0..T); wpe (and dwpe) NULL: wte[tokens]. */
void encoder_forward(float *out, const int32_t *tokens, const float *wte, const float *wpe, int B,
                     int T, int C);
void encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tokens, int B,
                      int T, int C);

/* ---- layernorm.c ---------------------------------------------------------- */

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                       const float *bias, int N, int C);
/* dinp += gradient through the normalisation (accumulates: it is the residual stream). */
void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, const float *mean,
                        const float *rstd, int N, int C);

/* ---- rmsnorm.c ------------------------------------------------------------ */

void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C,
                     float eps);
/* dinp += gradient through the normalisation (the residual stream); dweight +=. */
void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                      const float *weight, const float *rstd, int N, int C);

/* ---- rope.c --------------------------------------------------------------- */

/* cos_t, sin_t (T, half) of the angles t * inv_freq[i]. */
void rope_table(float *cos_t, float *sin_t, const float *inv_freq, int T, int half);
/* Rotates the NH query and NKV key heads (hs channels each) at the start of
 * every qkv row ((NH + 2 NKV) hs wide; B*T rows, position = row % T), in
 * place; inverse rotates back (the backward pass of the rotation). */
void rope_rotate(float *qkv, const float *cos_t, const float *sin_t, int B, int T, int NH, int NKV,
                 int hs, int inverse);
/* rope_rotate (forward) of n qkv rows, row i at position pos[i] (decoding). */
void rope_rotate_at(float *qkv, const float *cos_t, const float *sin_t, const int32_t *pos, int n,
                    int NH, int NKV, int hs);

/* ---- swiglu.c ------------------------------------------------------------- */

/* out (N, F) = up * silu(gate), inp rows (N, 2F) = [up | gate]. */
void swiglu_forward(float *out, const float *inp, int N, int F);
/* dinp (N, 2F) overwritten from dout (N, F). */
void swiglu_backward(float *dinp, const float *dout, const float *inp, int N, int F);

/* ---- attention.c ---------------------------------------------------------- */

/* Rows of the attention matrix handled at a time (see attention.c). */
#define ATTENTION_TILE 64

/* Causal multi-head attention. qkv (B, T, C + 2 NKV hs) holds q for NH heads,
 * then k and v for NKV heads (NKV divides NH; query head h reads key/value
 * head h / (NH / NKV); GPT-2: NKV = NH, rows 3C wide);
 * att (B, NH, T, T) receives the softmax probabilities: row i those of keys
 * 0..i, then zeros up to the end of its tile of ATTENTION_TILE rows; the
 * rest of the row is never written nor read. out (B, T, C) gets the heads'
 * outputs side by side. */
void attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH,
                       int NKV);
/* dqkv (overwritten) from dout; scratch holds attention_scratch_floats(T)
 * floats per OpenMP thread. */
static inline size_t attention_scratch_floats(int T) {
    /* a multiple of 16 floats, so that every thread's part is 64-byte aligned
     * like the others and vectorised sums run the same way on any thread */
    return ((size_t)T * T + 15) & ~(size_t)15;
}
void attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                        const float *att, int B, int T, int C, int NH, int NKV);

/* ---- gelu.c --------------------------------------------------------------- */

/* GELU, tanh approximation, as GPT-2. */
void gelu_forward(float *out, const float *inp, size_t n);
/* dinp = dout * gelu'(inp); dinp may be dout. */
void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);

/* ---- crossentropy.c ------------------------------------------------------- */

/* Rows of the LM head processed at a time: the logits of one chunk are the
 * only vocabulary-sized activation the backend keeps. */
#define CLASSIFIER_CHUNK_ROWS 512

/* The LM head (wte: the tied head's or Llama's output layer, first V rows)
 * with softmax cross-entropy and its backward pass, over N rows of x (N, C),
 * CLASSIFIER_CHUNK_ROWS at a time through logits_buf (CLASSIFIER_CHUNK_ROWS * V
 * floats). losses[i] gets row i's loss (0 where targets[i] == -1); for a loss
 * weighted dloss per counted row, dx (N, C) is overwritten and dwte += . */
void classifier_forward_backward(float *losses, float *dx, float *dwte, float *logits_buf,
                                 const float *x, const float *wte, const int32_t *targets, int N,
                                 int C, int V, float dloss);
/* The losses alone, computed for the counted rows only (targets[i] != -1;
 * the others get 0), gathered CLASSIFIER_CHUNK_ROWS at a time into rows_buf
 * (CLASSIFIER_CHUNK_ROWS * C floats). A counted row's loss is the same as
 * classifier_forward_backward's. */
void classifier_losses(float *losses, float *logits_buf, float *rows_buf, const float *x,
                       const float *wte, const int32_t *targets, int N, int C, int V);

/* ---- adamw.c -------------------------------------------------------------- */

/* Sum of squares of x in double, in an order fixed by n alone. */
double sum_squares(const float *x, size_t n);
/* One AdamW step (torch.optim.AdamW's formulation) on n parameters whose
 * gradients are multiplied by grad_scale first; t is the 1-based step. */
void adamw_update(float *params, const float *grads, float *mom1, float *mom2, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, float grad_scale,
                  int64_t t);

/* ---- kvcache.c (generation) ---------------------------------------------
 * One layer's cache: keys and values (S, NKV, T, hs) each. Row i of qkv
 * (n, (NH + 2 NKV) hs; GPT-2 3C) is token position pos[i] of slot slot[i]. */

/* Copies each row's keys and values into the cache. */
void kv_store(float *keys, float *values, const float *qkv, const int32_t *slot,
              const int32_t *pos, int n, int C, int NH, int NKV, int T);
/* out (n, C): each row's query attends over positions 0..pos[i] of its
 * slot (query head h over key/value head h / (NH / NKV)); scratch holds T
 * floats per OpenMP thread. */
void attention_cached(float *out, float *scratch, const float *qkv, const float *keys,
                      const float *values, const int32_t *slot, const int32_t *pos, int n, int C,
                      int NH, int NKV, int T);

#endif /* LLMC_CPU_LAYERS_H */
