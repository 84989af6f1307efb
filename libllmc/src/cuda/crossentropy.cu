/*
 * crossentropy.cu: softmax + cross-entropy over bf16 logits rows, writing the
 * logits' gradient in place (bf16) or into an E4M3 copy (FP8's LM head). The
 * classifier runs it over chunks of rows, so the full (B*T, Vp) logits never
 * exist at once, in any precision.
 */
#include <math_constants.h>

#include "fp8.cuh"
#include "kernels.cuh"

#define CE_THREADS 512
#define CE_LOADS 4

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

__global__ void __launch_bounds__(CE_THREADS)
    crossentropy_kernel(bf16 *logits, float *losses, const int *targets, int V, int Vp,
                        float dloss, int write_grad, uint8_t *grad8, float grad8_scale) {
    __shared__ MaxSum shared[CE_THREADS / 32];
    const int row = blockIdx.x;
    const int target = targets[row];
    bf16 *x = logits + (size_t)row * Vp;
    uint8_t *x8 = grad8 ? grad8 + (size_t)row * Vp : nullptr;
    if (target < 0) {  // ignored position: no loss, no gradient
        for (int c = threadIdx.x * 8; write_grad && c < Vp; c += CE_THREADS * 8) {
            if (grad8)
                *(uint2 *)(x8 + c) = make_uint2(0, 0);
            else
                store16(x + c, Vec16<bf16>{});
        }
        if (threadIdx.x == 0) losses[row] = 0.0f;
        return;
    }
    /* CE_LOADS 16-byte loads in flight per thread (a row is ~12 per thread at
     * GPT-2's vocabulary), then one max and one sum over their 8 * CE_LOADS
     * values */
    MaxSum ms = {-CUDART_INF_F, 0.0f};
    for (int c0 = threadIdx.x * 8; c0 < V; c0 += CE_THREADS * 8 * CE_LOADS) {
        Vec16<bf16> v[CE_LOADS];
        for (int u = 0; u < CE_LOADS; u++) {
            const int c = c0 + u * CE_THREADS * 8;
            v[u] = c < V ? load16(x + c) : Vec16<bf16>{};
        }
        float vals[CE_LOADS][8], m = -CUDART_INF_F;
        for (int u = 0; u < CE_LOADS; u++)
            for (int k = 0; k < 8; k++) {
                const int j = c0 + u * CE_THREADS * 8 + k;
                vals[u][k] = j < V ? __bfloat162float(v[u].v[k]) : -CUDART_INF_F;
                m = fmaxf(m, vals[u][k]);
            }
        float s = 0.0f;
        for (int u = 0; u < CE_LOADS; u++)
            for (int k = 0; k < 8; k++) s += __expf(vals[u][k] - m);
        ms = combine(ms, {m, s});
    }
    for (int o = 16; o > 0; o >>= 1) {
        MaxSum other = {__shfl_xor_sync(0xFFFFFFFFu, ms.max, o),
                        __shfl_xor_sync(0xFFFFFFFFu, ms.sum, o)};
        ms = combine(ms, other);
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) shared[warp] = ms;
    __syncthreads();
    ms = shared[0];
    for (int w = 1; w < CE_THREADS / 32; w++) ms = combine(ms, shared[w]);
    const float lse = ms.max + logf(ms.sum);
    if (threadIdx.x == 0) losses[row] = lse - __bfloat162float(x[target]);
    if (!write_grad) return;
    __syncthreads();  // everyone has read x[target] before it is overwritten
    for (int c = threadIdx.x * 8; c < Vp; c += CE_THREADS * 8) {
        const Vec16<bf16> v = load16(x + c);
        float d[8];
        for (int k = 0; k < 8; k++) {
            const int j = c + k;
            d[k] = j < V ? (__expf(__bfloat162float(v.v[k]) - lse) - (j == target ? 1.0f : 0.0f)) *
                               dloss
                         : 0.0f;
        }
        if (grad8) {
            uint32_t q[2];
            to_fp8x8(q, d, grad8_scale, false);
            *(uint2 *)(x8 + c) = make_uint2(q[0], q[1]);
        } else {
            Vec16<bf16> g;
            for (int k = 0; k < 8; k++) g.v[k] = __float2bfloat16(d[k]);
            store16(x + c, g);
        }
    }
}

void crossentropy_forward_backward(bf16 *logits, float *losses, const int *targets, int rows,
                                   int V, int Vp, float dloss, int write_grad, cudaStream_t s,
                                   uint8_t *grad8, float grad8_scale) {
    crossentropy_kernel<<<rows, CE_THREADS, 0, s>>>(logits, losses, targets, V, Vp, dloss,
                                                    write_grad, grad8, grad8_scale);
}
