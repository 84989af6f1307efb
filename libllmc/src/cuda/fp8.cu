/*
 * fp8.cu: casts of bf16 tensors to FP8 for the block products, with their
 * largest magnitudes recorded on the way, and the per-tensor scales.
 *
 * A block of 256 threads owns 64 columns and walks down the rows in 64 x 64
 * tiles (a fixed number of blocks per column strip, CAST_ROW_SPLITS), so
 * that each block's amax and column sums cover several tiles and the next
 * tile's loads are in flight while the current one is converted. Each
 * thread moves 8 values at a time: 16-byte loads of bf16, 8-byte stores of
 * FP8 in the row-major output, and the tile staged in shared memory for the
 * transposed output (Hopper's FP8 products take only the "TN" layout, so a
 * weight gradient needs both operands with the token dimension innermost).
 * Largest magnitudes combine by atomicMax on the float bits (non-negative
 * floats order as their bits do): a max is the same in any order, and the
 * column sums go through fixed partials, so runs stay bit-identical.
 */
#include <algorithm>

#include "fp8.cuh"
#include "kernels.cuh"

#define TILE 64
#define CAST_THREADS 256
#define HALF_ROWS (CAST_THREADS / 8)  // a thread's two rows of a tile are this far apart

namespace {

/* tanh in one instruction (max error ~2^-11): GELU' is rounded to bf16 (2^-8) anyway. */
__device__ __forceinline__ float fast_tanh(float x) {
    float y;
    asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* GELU's tanh form (as gelu.cu) and its derivative (as the bf16 path's DGELU epilogue). */
__device__ __forceinline__ float gelu(float x) {
    const float k = 0.7978845608028654f, a = 0.044715f;  // sqrt(2/pi)
    return 0.5f * x * (1.0f + fast_tanh(k * (x + a * x * x * x)));
}
__device__ __forceinline__ float gelu_grad(float x) {
    const float k = 0.7978845608028654f, a = 0.044715f;
    const float t = fast_tanh(k * (x + a * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * a * x * x);
}

__device__ __forceinline__ uint8_t to_fp8(float x, bool e5m2) {
    return __nv_cvt_float_to_fp8(x, __NV_SATFINITE, e5m2 ? __NV_E5M2 : __NV_E4M3);
}

/* One thread's share of a tile: rows row and row + HALF_ROWS, 8 columns. */
struct Chunk {
    Vec16<bf16> v[2], pre[2];
};

template <int transform>
__device__ __forceinline__ void load_chunk(Chunk &c, const bf16 *in, const bf16 *gelu_pre,
                                           int row, int col, int rows, int cols) {
    for (int h = 0; h < 2; h++) {
        const int r = row + h * HALF_ROWS;
        if (r >= rows || col >= cols) continue;
        c.v[h] = load16(in + (size_t)r * cols + col);
        if (transform == FP8_GELU_GRAD) c.pre[h] = load16(gelu_pre + (size_t)r * cols + col);
    }
}

/* amax_only: read (and transform) without writing anything but amax.
 * partial (may be NULL): row split blockIdx.y's sums of this block's
 * columns, of the values as cast. */
template <bool amax_only, int transform>
__global__ void __launch_bounds__(CAST_THREADS, 3)
quantize_kernel(uint8_t *out, uint8_t *outT, const bf16 *in, const bf16 *gelu_pre, int rows,
                int cols, size_t in_stride, size_t out_stride, const float *scale, float *amax,
                float *partial, int first_slot, bool record, bool e5m2) {
    __shared__ uint8_t tile[TILE][TILE + 1];  // +1: the transposed reads hit distinct banks
    __shared__ float warp_amax[CAST_THREADS / 32];
    __shared__ float col_sums[HALF_ROWS][TILE];
    const int z = blockIdx.z, slot = first_slot + z * FP8_PRODUCTS;
    in += z * in_stride;
    if (transform == FP8_GELU_GRAD) gelu_pre += z * in_stride;
    if (out) out += z * out_stride;
    if (outT) outT += z * out_stride;
    const int c0 = blockIdx.x * TILE, tr = threadIdx.x / 8, tc = threadIdx.x % 8 * 8;
    const int col = c0 + tc, stride = gridDim.y * TILE;
    const float s = amax_only ? 1.0f : scale[slot];
    float m = 0.0f, sums[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    Chunk cur, next;
    int r0 = blockIdx.y * TILE;
    load_chunk<transform>(cur, in, gelu_pre, r0 + tr, col, rows, cols);
    for (; r0 < rows; r0 += stride) {
        if (r0 + stride < rows)
            load_chunk<transform>(next, in, gelu_pre, r0 + stride + tr, col, rows, cols);
        for (int h = 0; h < 2; h++) {
            const int r = tr + h * HALF_ROWS, row = r0 + r;
            uint8_t q[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            if (row < rows && col < cols) {
                float x[8];
                for (int j = 0; j < 8; j++) {
                    x[j] = __bfloat162float(cur.v[h].v[j]);
                    if (transform == FP8_GELU)
                        x[j] = gelu(x[j]);
                    else if (transform == FP8_GELU_GRAD)  // rounded to bf16 as the bf16 path's
                        x[j] = __bfloat162float(__float2bfloat16(
                            x[j] * gelu_grad(__bfloat162float(cur.pre[h].v[j]))));
                    m = fmaxf(m, fabsf(x[j]));
                    sums[j] += x[j];
                }
                if (!amax_only) {
                    for (int j = 0; j < 8; j++) q[j] = to_fp8(x[j] * s, e5m2);
                    if (out)
                        *reinterpret_cast<uint2 *>(out + (size_t)row * cols + col) =
                            *reinterpret_cast<uint2 *>(q);
                }
            }
            if (outT)
                for (int j = 0; j < 8; j++) tile[r][tc + j] = q[j];
        }
        if (outT) {
            __syncthreads();
            for (int k = threadIdx.x; k < TILE * TILE / 8; k += CAST_THREADS) {
                const int c = k / (TILE / 8), rr = k % (TILE / 8) * 8;
                const int tcol = c0 + c, trow = r0 + rr;
                if (tcol >= cols || trow >= rows) continue;
                uint8_t q[8];
                for (int j = 0; j < 8; j++) q[j] = tile[rr + j][c];
                *reinterpret_cast<uint2 *>(outT + (size_t)tcol * rows + trow) =
                    *reinterpret_cast<uint2 *>(q);
            }
            __syncthreads();  // the next tile reuses the shared tile
        }
        cur = next;
    }
    if (record) {
        m = warp_max(m);
        if (threadIdx.x % 32 == 0) warp_amax[threadIdx.x / 32] = m;
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < CAST_THREADS / 32; w++) m = fmaxf(m, warp_amax[w]);
            atomicMax(reinterpret_cast<unsigned int *>(amax + slot), __float_as_uint(m));
        }
    }
    if (!partial) return;
    for (int j = 0; j < 8; j++) col_sums[tr][tc + j] = sums[j];
    __syncthreads();
    if (threadIdx.x < TILE && c0 + (int)threadIdx.x < cols) {
        float t = 0.0f;
        for (int r = 0; r < HALF_ROWS; r++) t += col_sums[r][threadIdx.x];
        partial[(size_t)blockIdx.y * cols + c0 + threadIdx.x] = t;
    }
}

__global__ void set_scales_kernel(float *scale, float *descale, float *amax, float *history,
                                  int first_slot, int count, int stride, bool delayed,
                                  int g_first) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    const int slot = first_slot + i * stride;
    float a = amax[slot];
    if (delayed) {
        float *h = history + (size_t)slot * FP8_HISTORY;
        for (int k = FP8_HISTORY - 1; k > 0; k--) h[k] = h[k - 1];
        h[0] = a;
        for (int k = 1; k < FP8_HISTORY; k++) a = fmaxf(a, h[k]);
        amax[slot] = 0.0f;
    }
    if (!(a > 0.0f) || !isfinite(a)) return;  // nothing seen yet, or a broken step: keep it
    const float fp8_max = slot >= g_first ? 57344.0f : 448.0f;  // E5M2, E4M3
    int e;
    frexpf(fp8_max / a, &e);  // fp8_max / a = f * 2^e, f in [0.5, 1): 2^(e-1) <= fp8_max / a
    e = max(-126, min(126, e - 1));
    scale[slot] = ldexpf(1.0f, e);
    descale[(size_t)slot * FP8_DESCALE_STRIDE] = ldexpf(1.0f, -e);
}

__global__ void set_scale_kernel(float *scale, float *descale, int slot, float value) {
    scale[slot] = value;
    descale[(size_t)slot * FP8_DESCALE_STRIDE] = 1.0f / value;
}

__global__ void reset_kernel(float *scale, float *descale, float *amax, float *history, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    scale[i] = descale[(size_t)i * FP8_DESCALE_STRIDE] = 1.0f;
    amax[i] = 0.0f;
    for (int k = 0; k < FP8_HISTORY; k++) history[(size_t)i * FP8_HISTORY + k] = 0.0f;
}

/* Column strips of 64 on x, at most CAST_ROW_SPLITS blocks down each strip on y, layers on z. */
dim3 cast_grid(int rows, int cols, int layers) {
    return dim3(ceil_div(cols, TILE), std::min(ceil_div(rows, TILE), CAST_ROW_SPLITS), layers);
}

}  // namespace

void fp8_reset(const fp8_scaling &s, cudaStream_t st) {
    reset_kernel<<<ceil_div(s.slots(), 256), 256, 0, st>>>(s.scale, s.descale, s.amax, s.history,
                                                           s.slots());
}

template <bool amax_only>
void (*cast_kernel(int transform))(uint8_t *, uint8_t *, const bf16 *, const bf16 *, int, int,
                                   size_t, size_t, const float *, float *, float *, int, bool,
                                   bool) {
    return transform == FP8_GELU        ? quantize_kernel<amax_only, FP8_GELU>
           : transform == FP8_GELU_GRAD ? quantize_kernel<amax_only, FP8_GELU_GRAD>
                                        : quantize_kernel<amax_only, FP8_AS_IS>;
}

void fp8_quantize(void *out, void *outT, const bf16 *in, int transform, const bf16 *gelu_pre,
                  int rows, int cols, int layers, size_t in_stride, size_t out_stride,
                  const fp8_scaling &s, int first_slot, bool record, float *dbias, float *partial,
                  cudaStream_t st) {
    const bool e5m2 = first_slot >= s.slot(FP8_G, 0, 0);
    const dim3 grid = cast_grid(rows, cols, layers);
    cast_kernel<false>(transform)<<<grid, CAST_THREADS, 0, st>>>(
        (uint8_t *)out, (uint8_t *)outT, in, gelu_pre, rows, cols, in_stride, out_stride, s.scale,
        s.amax, dbias ? partial : nullptr, first_slot, record, e5m2);
    if (dbias) add_partials(dbias, dbias, partial, grid.y, cols, cols, cols, st);
}

void fp8_amax(const bf16 *in, int transform, const bf16 *gelu_pre, int rows, int cols,
              int layers, size_t in_stride, const fp8_scaling &s, int first_slot,
              cudaStream_t st) {
    cast_kernel<true>(transform)<<<cast_grid(rows, cols, layers), CAST_THREADS, 0, st>>>(
        nullptr, nullptr, in, gelu_pre, rows, cols, in_stride, 0, s.scale, s.amax, nullptr,
        first_slot, true, false);
}

void fp8_set_scale(const fp8_scaling &s, int slot, float scale, cudaStream_t st) {
    set_scale_kernel<<<1, 1, 0, st>>>(s.scale, s.descale, slot, scale);
}

void fp8_set_scales(const fp8_scaling &s, int first_slot, int count, int stride, bool delayed,
                    cudaStream_t st) {
    set_scales_kernel<<<ceil_div(count, 128), 128, 0, st>>>(s.scale, s.descale, s.amax, s.history,
                                                            first_slot, count, stride, delayed,
                                                            s.slot(FP8_G, 0, 0));
}
