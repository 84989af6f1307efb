/*
 * crossentropy.cu: softmax + cross-entropy over bf16 logits rows, writing the
 * logits' gradient in place (bf16), or for FP8's LM head into an E4M3 copy
 * both ways: row-major (the input gradient's operand) and transposed (the
 * weight gradient's: Hopper's FP8 products take both operands K-major), so
 * that no separate pass reads the row-major copy back to transpose it. The
 * classifier runs it over chunks of rows, so the full (B*T, Vp) logits never
 * exist at once, in any precision.
 */
#include <math_constants.h>

#include "fp8.cuh"
#include "kernels.cuh"

#define CE_THREADS 512
#define CE_LOADS 4
/* The FP8 kernel: a block of CE_ROWS rows, a warp each for the
 * normalizers, then tiles of CE_TILE columns, each thread converting 8
 * columns of 4 consecutive rows (4 loads a tile, the next tile's in flight
 * meanwhile; a word of 4 rows of a column in 8 byte permutes). 16 rows make
 * each column's bytes one 16-byte store into the transposed copy, half a
 * sector; the next block's rows write the other half. 64 registers for 2
 * blocks an SM (as the bf16 kernel): a chunk of 4,096 rows is 256 blocks,
 * one wave on 132 SMs. */
#define CE_ROWS 16
#define CE_TILE (CE_THREADS / 4 * 8)
static_assert(CE_THREADS == 32 * CE_ROWS, "a warp per row of an FP8 block");

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

/* The 16-byte slice of logits at column c, as words: 8 bf16 carried in 4
 * registers (as Vec16<bf16> the compiler moves the 16-bit halves apart, and
 * the FP8 kernel's loads in flight spilled). */
__device__ __forceinline__ uint4 load_slice(const bf16 *x, int c) {
    return *reinterpret_cast<const uint4 *>(x + c);
}

/* The 8 logits of slice v at column c as floats (a bf16 is the high half of
 * its float), -inf at or past V (only in the row's last slice: one test a
 * slice, not one a logit). */
__device__ __forceinline__ void slice_values(float y[8], uint4 v, int c, int V) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
        y[2 * k] = __uint_as_float(w[k] << 16);
        y[2 * k + 1] = __uint_as_float(w[k] & 0xFFFF0000u);
    }
    if (c + 8 > V)
#pragma unroll
        for (int k = 0; k < 8; k++)
            if (c + k >= V) y[k] = -CUDART_INF_F;
}

/* A thread's normalizer over the slices of row x at columns first, first +
 * STEP, ... (< V): CE_LOADS 16-byte loads in flight, then one max and one
 * sum over their 8 * CE_LOADS values. */
template <int STEP>
__device__ __forceinline__ MaxSum slices_maxsum(const bf16 *x, int first, int V) {
    MaxSum ms = {-CUDART_INF_F, 0.0f};
    for (int c0 = first; c0 < V; c0 += STEP * CE_LOADS) {
        uint4 v[CE_LOADS];
#pragma unroll
        for (int u = 0; u < CE_LOADS; u++) {
            const int c = c0 + u * STEP;
            v[u] = c < V ? load_slice(x, c) : uint4{};
        }
        float vals[CE_LOADS][8], m = -CUDART_INF_F;
#pragma unroll
        for (int u = 0; u < CE_LOADS; u++) {
            slice_values(vals[u], v[u], c0 + u * STEP, V);
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
    return ms;
}

/* The normalizer of a warp's lanes, in every lane. */
__device__ __forceinline__ MaxSum warp_maxsum(MaxSum ms) {
    for (int o = 16; o > 0; o >>= 1) {
        MaxSum other = {__shfl_xor_sync(0xFFFFFFFFu, ms.max, o),
                        __shfl_xor_sync(0xFFFFFFFFu, ms.sum, o)};
        ms = combine(ms, other);
    }
    return ms;
}

/* The gradient softmax - one-hot of the slice at column c (logits v), not
 * yet scaled by dloss: 0 at or past V; the one-hot subtracted in the
 * target's slice only. */
__device__ __forceinline__ void slice_gradient(float d[8], uint4 v, int c, int V,
                                               int target, float lse_log2) {
    slice_values(d, v, c, V);
#pragma unroll
    for (int k = 0; k < 8; k++) d[k] = exp_shifted(d[k], lse_log2);  // 0 past V
    if ((unsigned)(target - c) < 8u)
#pragma unroll
        for (int k = 0; k < 8; k++)
            if (c + k == target) d[k] -= 1.0f;
}

/* bf16: a block per row, the gradient (with write_grad) over the logits. */
__global__ void __launch_bounds__(CE_THREADS)
    crossentropy_kernel(bf16 *logits, float *losses, const int *targets, int V, int Vp,
                        float dloss, int write_grad) {
    __shared__ MaxSum shared[CE_THREADS / 32];
    const int row = blockIdx.x;
    const int target = targets[row];
    bf16 *x = logits + (size_t)row * Vp;
    if (target < 0) {  // ignored position: no loss, no gradient
        for (int c = threadIdx.x * 8; write_grad && c < Vp; c += CE_THREADS * 8)
            store16(x + c, Vec16<bf16>{});
        if (threadIdx.x == 0) losses[row] = 0.0f;
        return;
    }
    /* a row is ~12 slices a thread at GPT-2's vocabulary */
    MaxSum ms = warp_maxsum(slices_maxsum<CE_THREADS * 8>(x, threadIdx.x * 8, V));
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) shared[warp] = ms;
    __syncthreads();
    ms = shared[0];
    for (int w = 1; w < CE_THREADS / 32; w++) ms = combine(ms, shared[w]);
    const float lse = ms.max + logf(ms.sum), lse_log2 = lse * CE_LOG2E;
    if (threadIdx.x == 0) losses[row] = lse - __bfloat162float(x[target]);
    if (!write_grad) return;
    __syncthreads();  // everyone has read x[target] before it is overwritten
    for (int c = threadIdx.x * 8; c < Vp; c += CE_THREADS * 8) {
        float d[8];
        slice_gradient(d, load_slice(x, c), c, V, target, lse_log2);
        Vec16<bf16> g;
#pragma unroll
        for (int k = 0; k < 8; k++) g.v[k] = __float2bfloat16(d[k] * dloss);
        store16(x + c, g);
    }
}

/* Where column i of a tile keeps its 16 bytes (rows 0..15) in shared
 * memory: its place in its aligned group of 8 xor the group's index mod 8,
 * so that a warp's word stores (8 groups x 4 row quads) hit 32 different
 * banks; a warp's reads of 32 columns still take 4 full 128-byte rows. */
__device__ __forceinline__ int tile_slot(int i) { return i ^ (i >> 3 & 7); }

/* Slice c of the 4 rows x, x + Vp, ... (zeros, not loaded, for an ignored
 * row or c outside 0..Vp-1). */
__device__ __forceinline__ void load_quad(uint4 v[4], const bf16 *x, int Vp, const int target[4],
                                          int c) {
#pragma unroll
    for (int h = 0; h < 4; h++)
        v[h] = target[h] >= 0 && (unsigned)c < (unsigned)Vp ? load_slice(x + (size_t)h * Vp, c)
                                                             : uint4{};
}

/* FP8: a block per CE_ROWS rows (the chunk's last block may have fewer).
 * Pass 1: a warp per row's normalizer, its loss (the sums in another order
 * than the bf16 kernel's, so its last bits may differ from a bf16 run's
 * with the same logits; still one row's alone). Pass 2, a tile at a time:
 * each thread takes 8 columns of 4 rows (rows 4q..4q+3 of the block) to
 * E4M3 at factor = dloss x the copy's scale, stores each row's 8 bytes in
 * grad8 (rows x Vp) and their 4 x 4 transposes in shared memory; then each
 * column's 16 bytes go to grad8T (Vp x rows) in one store. The next tile's
 * logits are loaded while a tile is converted. The tiles go from the row's
 * end back: pass 1 read the ends last, so what of the block's rows is still
 * in L2 (16 rows a block: pass 2 reads from HBM mostly) is read first.
 * Ignored rows are zeros in both copies. */
__global__ void __launch_bounds__(CE_THREADS, 2)
    crossentropy_fp8_kernel(const bf16 *logits, float *losses, const int *targets, int rows,
                            int V, int Vp, float dloss, float grad8_scale, uint8_t *grad8,
                            uint8_t *grad8T) {
    __shared__ float row_lse_log2[CE_ROWS];
    __shared__ int row_target[CE_ROWS];
    __shared__ uint4 staged[2][CE_TILE];  // a tile's columns (tile_slot), double-buffered
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = blockIdx.x * CE_ROWS;
    const int n = min(CE_ROWS, rows - r0);  // the block's rows
    {
        int target = -1;  // a row past the chunk: as ignored
        float lse = 0.0f;
        if (warp < n) {
            const bf16 *x = logits + (size_t)(r0 + warp) * Vp;
            target = targets[r0 + warp];
            if (target >= 0) {
                const MaxSum ms = warp_maxsum(slices_maxsum<32 * 8>(x, lane * 8, V));
                lse = ms.max + logf(ms.sum);
            }
            if (lane == 0)
                losses[r0 + warp] = target < 0 ? 0.0f : lse - __bfloat162float(x[target]);
        }
        if (lane == 0) {
            row_target[warp] = target;
            row_lse_log2[warp] = lse * CE_LOG2E;
        }
    }
    __syncthreads();
    const int q = threadIdx.x % 4, j = threadIdx.x / 4;  // rows 4q.., columns 8j.. of a tile
    const bf16 *x = logits + (size_t)(r0 + 4 * q) * Vp;
    uint8_t *x8 = grad8 + (size_t)(r0 + 4 * q) * Vp;
    int target[4];
    float lse_log2[4];
#pragma unroll
    for (int h = 0; h < 4; h++) {
        target[h] = row_target[4 * q + h];
        lse_log2[h] = row_lse_log2[4 * q + h];
    }
    /* the E4M3 copy's scale folded into dloss: one multiply a logit */
    const float factor = dloss * grad8_scale;
    const bool aligned = rows % 16 == 0;
    const int last = (Vp - 1) / CE_TILE * CE_TILE;  // the last tile's first column
    uint4 v[4];
    load_quad(v, x, Vp, target, last + 8 * j);
    for (int t0 = last, b = 0; t0 >= 0; t0 -= CE_TILE, b ^= 1) {
        const int c = t0 + 8 * j;
        uint4 next[4];
        load_quad(next, x, Vp, target, c - CE_TILE);
        uint32_t w[4][2];  // row h's 8 bytes
#pragma unroll
        for (int h = 0; h < 4; h++) {
            w[h][0] = w[h][1] = 0;
            if (target[h] < 0 || c >= Vp) continue;
            float d[8];
            slice_gradient(d, v[h], c, V, target[h], lse_log2[h]);
            to_fp8x8(w[h], d, factor, false);
        }
#pragma unroll
        for (int h = 0; h < 4; h++)
            if (4 * q + h < n && c < Vp)
                *(uint2 *)(x8 + (size_t)h * Vp + c) = make_uint2(w[h][0], w[h][1]);
        uint32_t *words = (uint32_t *)staged[b];
#pragma unroll
        for (int half = 0; half < 2; half++) {  // columns c + 4 half + k, rows 4q..4q+3
            const uint32_t in[4] = {w[0][half], w[1][half], w[2][half], w[3][half]};
            uint32_t col[4];
            transpose4x4(col, in);
#pragma unroll
            for (int k = 0; k < 4; k++) words[tile_slot(8 * j + 4 * half + k) * 4 + q] = col[k];
        }
        __syncthreads();  // (double buffer: the tile before's reads are done too)
        for (int i = threadIdx.x; i < CE_TILE && t0 + i < Vp; i += CE_THREADS)
            store_column16(grad8T + (size_t)(t0 + i) * rows + r0, staged[b][tile_slot(i)], n,
                           aligned);
#pragma unroll
        for (int h = 0; h < 4; h++) v[h] = next[h];
    }
}

void crossentropy_forward_backward(bf16 *logits, float *losses, const int *targets, int rows,
                                   int V, int Vp, float dloss, int write_grad, cudaStream_t s,
                                   uint8_t *grad8, uint8_t *grad8T, float grad8_scale) {
    if (write_grad && grad8)
        crossentropy_fp8_kernel<<<ceil_div(rows, CE_ROWS), CE_THREADS, 0, s>>>(
            logits, losses, targets, rows, V, Vp, dloss, grad8_scale, grad8, grad8T);
    else
        crossentropy_kernel<<<rows, CE_THREADS, 0, s>>>(logits, losses, targets, V, Vp, dloss,
                                                        write_grad);
}
