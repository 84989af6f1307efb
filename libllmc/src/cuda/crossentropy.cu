/*
 * crossentropy.cu: softmax + cross-entropy over bf16 logits rows, writing the
 * logits' gradient in place. The classifier runs it over chunks of rows, so
 * the full (B*T, Vp) logits never exist at once, in any precision.
 *
 * One block per row. The block copies the row into shared memory as it
 * reads it (up to CE_HELD_COLS columns: GPT-2's 50,304 fit, and two blocks
 * still share a multiprocessor, so one reads while the other computes), so
 * that the row is read from device memory once and its gradient written
 * once. Columns beyond CE_HELD_COLS (larger vocabularies) are read again.
 */
#include <math_constants.h>

#include <algorithm>

#include "kernels.cuh"

#define CE_THREADS 512
#define CE_HELD_COLS (56 * 1024)  // 112 KB of bf16
#define CE_UNROLL 4                // 16-byte loads in flight per thread

/* Running softmax normalizer: sum of exp(x - max). */
struct MaxSum {
    float max, sum;
};

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
    if (b.max == -CUDART_INF_F) return a;
    if (a.max == -CUDART_INF_F) return b;
    const float m = fmaxf(a.max, b.max);
    return {m, a.sum * __expf(a.max - m) + b.sum * __expf(b.max - m)};
}

/* Logit k of the 8 from column c, -inf in the padding columns >= V. */
__device__ __forceinline__ float logit(const Vec16<bf16> &v, int k, int c, int V) {
    return c + k < V ? __bfloat162float(v.v[k]) : -CUDART_INF_F;
}

/* dloss * (softmax - onehot) of the 8 columns from c, 0 in padding columns. */
__device__ __forceinline__ Vec16<bf16> gradient(const Vec16<bf16> &v, int c, int V, int target,
                                                float max, float inv_sum, float dloss) {
    Vec16<bf16> g;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const int j = c + k;
        float d = 0.0f;
        if (j < V) {
            const float p = __expf(__bfloat162float(v.v[k]) - max) * inv_sum;
            d = (p - (j == target ? 1.0f : 0.0f)) * dloss;
        }
        g.v[k] = __float2bfloat16(d);
    }
    return g;
}

__global__ void __launch_bounds__(CE_THREADS)
    crossentropy_kernel(bf16 *logits, float *losses, const int *targets, int V, int Vp, float dloss,
                        int write_grad) {
    extern __shared__ Vec16<bf16> held[];  // the row's first `cols` columns, 8 per entry
    __shared__ MaxSum shared[CE_THREADS / 32];
    const int row = blockIdx.x;
    const int target = targets[row];
    bf16 *x = logits + (size_t)row * Vp;
    if (target < 0) {  // ignored position: no loss, no gradient
        if (write_grad)
            for (int c = threadIdx.x * 8; c < Vp; c += CE_THREADS * 8) store16(x + c, Vec16<bf16>{});
        if (threadIdx.x == 0) losses[row] = 0.0f;
        return;
    }
    const int cols = min(Vp, CE_HELD_COLS), step = CE_THREADS * 8;
    const float target_logit = threadIdx.x == 0 ? __bfloat162float(x[target]) : 0.0f;
    /* Read the held columns (CE_UNROLL loads at a time), keeping each thread's max.
     * A thread reads back only what it wrote itself: no barrier needed. */
    float m = -CUDART_INF_F;
    for (int c0 = threadIdx.x * 8; c0 < cols; c0 += CE_UNROLL * step) {
        Vec16<bf16> v[CE_UNROLL];
#pragma unroll
        for (int u = 0; u < CE_UNROLL; u++)
            if (c0 + u * step < cols) v[u] = load16(x + c0 + u * step);
#pragma unroll
        for (int u = 0; u < CE_UNROLL; u++) {
            const int c = c0 + u * step;
            if (c >= cols) continue;
            held[c / 8] = v[u];
#pragma unroll
            for (int k = 0; k < 8; k++) m = fmaxf(m, logit(v[u], k, c, V));
        }
    }
    float s = 0.0f;
    if (m != -CUDART_INF_F)
        for (int c = threadIdx.x * 8; c < cols; c += step) {
            const Vec16<bf16> v = held[c / 8];
#pragma unroll
            for (int k = 0; k < 8; k++) s += __expf(logit(v, k, c, V) - m);
        }
    MaxSum ms = {m, s};
    for (int c = cols + threadIdx.x * 8; c < V; c += step) {  // columns not held
        const Vec16<bf16> v = load16(x + c);
        float cm = -CUDART_INF_F, cs = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; k++) cm = fmaxf(cm, logit(v, k, c, V));
#pragma unroll
        for (int k = 0; k < 8; k++) cs += __expf(logit(v, k, c, V) - cm);
        ms = combine(ms, {cm, cs});
    }
    for (int o = 16; o > 0; o >>= 1) {
        MaxSum other = {__shfl_xor_sync(0xFFFFFFFFu, ms.max, o),
                        __shfl_xor_sync(0xFFFFFFFFu, ms.sum, o)};
        ms = combine(ms, other);
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) shared[warp] = ms;
    __syncthreads();  // also: x[target] has been read before any gradient is written
    ms = shared[0];
    for (int w = 1; w < CE_THREADS / 32; w++) ms = combine(ms, shared[w]);
    if (threadIdx.x == 0) losses[row] = ms.max + logf(ms.sum) - target_logit;
    if (!write_grad) return;
    const float inv_sum = 1.0f / ms.sum;
    for (int c = threadIdx.x * 8; c < cols; c += step)
        store16(x + c, gradient(held[c / 8], c, V, target, ms.max, inv_sum, dloss));
    for (int c = cols + threadIdx.x * 8; c < Vp; c += step)
        store16(x + c, gradient(load16(x + c), c, V, target, ms.max, inv_sum, dloss));
}

void crossentropy_forward_backward(bf16 *logits, float *losses, const int *targets, int rows,
                                   int V, int Vp, float dloss, int write_grad, cudaStream_t s) {
    /* above the default 48 KB; on every call, as the setting is per device */
    cudaFuncSetAttribute(crossentropy_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         CE_HELD_COLS * (int)sizeof(bf16));
    const size_t smem = (size_t)std::min(Vp, CE_HELD_COLS) * sizeof(bf16);
    crossentropy_kernel<<<rows, CE_THREADS, smem, s>>>(logits, losses, targets, V, Vp, dloss,
                                                       write_grad);
}
