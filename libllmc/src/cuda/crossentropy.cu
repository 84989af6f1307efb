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

/* e^(x - shift) as one fused multiply-add and the hardware's 2^x, the
 * shift given as shift_log2 = shift log2(e) (__expf(x - shift) would
 * subtract, multiply, then take 2^x: the kernel is bound by its instructions,
 * ~10 a logit, not by its bytes). */
#define CE_LOG2E 1.4426950408889634f
__device__ __forceinline__ float exp_shifted(float x, float shift_log2) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(fmaf(x, CE_LOG2E, -shift_log2)));
    return y;
}

/* The 8 logits of the 16-byte slice at column c as floats, -inf at or past
 * V (only in the row's last slice: one test a slice, not one a logit). */
__device__ __forceinline__ void slice_values(float y[8], const Vec16<bf16> &v, int c, int V) {
#pragma unroll
    for (int k = 0; k < 8; k++) y[k] = __bfloat162float(v.v[k]);
    if (c + 8 > V)
#pragma unroll
        for (int k = 0; k < 8; k++)
            if (c + k >= V) y[k] = -CUDART_INF_F;
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
#pragma unroll
        for (int u = 0; u < CE_LOADS; u++) {
            const int c = c0 + u * CE_THREADS * 8;
            v[u] = c < V ? load16(x + c) : Vec16<bf16>{};
        }
        float vals[CE_LOADS][8], m = -CUDART_INF_F;
#pragma unroll
        for (int u = 0; u < CE_LOADS; u++) {
            slice_values(vals[u], v[u], c0 + u * CE_THREADS * 8, V);
#pragma unroll
            for (int k = 0; k < 8; k++) m = fmaxf(m, vals[u][k]);
        }
        if (m == -CUDART_INF_F) continue;  // every value past V: nothing to add
        const float m_log2 = m * CE_LOG2E;
        float s = 0.0f;
#pragma unroll
        for (int u = 0; u < CE_LOADS; u++)
#pragma unroll
            for (int k = 0; k < 8; k++) s += exp_shifted(vals[u][k], m_log2);
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
    const float lse = ms.max + logf(ms.sum), lse_log2 = lse * CE_LOG2E;
    if (threadIdx.x == 0) losses[row] = lse - __bfloat162float(x[target]);
    if (!write_grad) return;
    __syncthreads();  // everyone has read x[target] before it is overwritten
    /* the gradient (softmax - one-hot) x dloss, the E4M3 copy's scale folded
     * into dloss: one multiply a logit */
    const float factor = grad8 ? dloss * grad8_scale : dloss;
    for (int c = threadIdx.x * 8; c < Vp; c += CE_THREADS * 8) {
        float d[8];
        slice_values(d, load16(x + c), c, V);
#pragma unroll
        for (int k = 0; k < 8; k++) d[k] = exp_shifted(d[k], lse_log2);  // 0 past V
        if ((unsigned)(target - c) < 8u)  // the target's slice
#pragma unroll
            for (int k = 0; k < 8; k++)
                if (c + k == target) d[k] -= 1.0f;
        if (grad8) {
            uint32_t q[2];
            to_fp8x8(q, d, factor, false);
            *(uint2 *)(x8 + c) = make_uint2(q[0], q[1]);
        } else {
            Vec16<bf16> g;
#pragma unroll
            for (int k = 0; k < 8; k++) g.v[k] = __float2bfloat16(d[k] * factor);
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
