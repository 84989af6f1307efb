/*
 * fp8.cu: casts of bf16 tensors to FP8 for the block products, with their
 * largest magnitudes recorded on the way, and the per-tensor scales.
 *
 * A block owns 64 columns and walks down the rows in tiles of TILE_ROWS x 64
 * (a fixed number of blocks per column strip, CAST_ROW_SPLITS), so that each
 * block's amax and column sums cover several tiles and the next tile's loads
 * are in flight while the current one is converted. Each thread moves 8
 * values at a time: 16-byte loads of bf16, 8-byte stores of FP8 in the
 * row-major output. The transposed output (Hopper's FP8 products take only
 * the "TN" layout, so a weight gradient needs both operands with the token
 * dimension innermost) goes through shared memory byte by byte, with 8-byte
 * stores. (Transposing 4 x 4 bytes in registers for 16-byte stores, loading
 * the next tile row by row and sizing the grid to whole waves all measured
 * slower on the H200: bench/CUDA_NOTES.md.)
 * Largest magnitudes combine by atomicMax on the float bits (non-negative
 * floats order as their bits do): a max is the same in any order, and the
 * column sums go through fixed partials, so runs stay bit-identical.
 */
#include <algorithm>

#include "fp8.cuh"
#include "kernels.cuh"

/* The cast kernel's knobs: bench/fp8_cast_probe.sh builds and times variants
 * with -D; every variant writes the same bytes. */
#ifndef CAST_THREADS  // threads per block, 8 across a tile's row
#define CAST_THREADS 256
#endif
#ifndef CAST_ROWS  // rows per thread per tile
#define CAST_ROWS 2
#endif
#ifndef CAST_MIN_BLOCKS  // blocks per SM that __launch_bounds__ leaves registers for
#define CAST_MIN_BLOCKS 4
#endif
#ifndef CAST_PREFETCH  // 1: the next tile's loads issued before this tile is converted
#define CAST_PREFETCH 1
#endif

#define TILE 64                            // columns of a tile
#define THREAD_ROWS (CAST_THREADS / 8)     // rows a tile's threads cover at a time
#define TILE_ROWS (THREAD_ROWS * CAST_ROWS)

static_assert(CAST_THREADS % 32 == 0 && CAST_THREADS <= 1024, "CAST_THREADS: whole warps");
static_assert(CAST_ROW_SPLITS * 4 <= LN_BACKWARD_BLOCKS * 3,
              "the partial buffer (PARTIAL_FLOATS) holds CAST_ROW_SPLITS rows of 4C");

namespace {

/* The derivative of GELU's tanh form (as the bf16 path's DGELU epilogue), with
 * tanh_approx: the result is rounded to bf16 (2^-8), then to FP8. */
__device__ __forceinline__ float gelu_grad(float x) {
    const float k = 0.7978845608028654f, a = 0.044715f;  // sqrt(2/pi)
    const float t = tanh_approx(k * (x + a * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * a * x * x);
}

/* A tile's row for thread row tr's h-th row. */
__device__ __forceinline__ int tile_row(int tr, int h) { return tr + h * THREAD_ROWS; }

/* Shared memory of a block: the staged transposed tiles (the cast's, and
 * GELU's where fp8_transform.geluT asks for it), then the column sums. */
union alignas(16) CastShared {
    uint8_t bytes[2][TILE_ROWS][TILE + 1];  // +1: the transposed reads hit distinct banks
    float col_sums[THREAD_ROWS][TILE];
};

/* A staged tile's bytes (rows r0.., columns c0..) into outT, 8 bytes a store. */
__device__ __forceinline__ void store_transposed(uint8_t *outT, const uint8_t (*tile)[TILE + 1],
                                                 int r0, int c0, int rows, int cols) {
    for (int k = threadIdx.x; k < TILE * TILE_ROWS / 8; k += CAST_THREADS) {
        const int c = k / (TILE_ROWS / 8), rr = k % (TILE_ROWS / 8) * 8;
        const int tcol = c0 + c, trow = r0 + rr;
        if (tcol >= cols || trow >= rows) continue;
        uint8_t b[8];
        for (int j = 0; j < 8; j++) b[j] = tile[rr + j][c];
        *reinterpret_cast<uint2 *>(outT + (size_t)tcol * rows + trow) =
            *reinterpret_cast<uint2 *>(b);
    }
}

/* Stages a row's 8 bytes, q, at row r, columns tc.. of a tile. */
__device__ __forceinline__ void stage(uint8_t (*tile)[TILE + 1], int r, int tc,
                                      const uint32_t q[2]) {
    for (int j = 0; j < 8; j++) tile[r][tc + j] = (uint8_t)(q[j / 4] >> (j % 4 * 8));
}

/* One thread's share of a tile: CAST_ROWS rows (tile_row), 8 columns. */
struct Chunk {
    Vec16<bf16> v[CAST_ROWS], pre[CAST_ROWS];
};

template <int transform>
__device__ __forceinline__ void load_chunk(Chunk &c, const bf16 *in, const bf16 *gelu_pre,
                                           int r0, int tr, int col, int rows, int cols) {
#pragma unroll
    for (int h = 0; h < CAST_ROWS; h++) {
        const int r = r0 + tile_row(tr, h);
        if (r >= rows || col >= cols) continue;
        c.v[h] = load16(in + (size_t)r * cols + col);
        if (transform == FP8_GELU_GRAD) c.pre[h] = load16(gelu_pre + (size_t)r * cols + col);
    }
}

/* 8 values, transformed (fp8.cuh). */
template <int transform>
__device__ __forceinline__ void transformed(float x[8], const Vec16<bf16> &v,
                                            const Vec16<bf16> &pre) {
    for (int j = 0; j < 8; j++) {
        x[j] = __bfloat162float(v.v[j]);
        if (transform == FP8_GELU) {
            x[j] = gelu_tanh<true>(x[j]);  // cast to FP8 next: the approximate tanh
        } else if (transform == FP8_GELU_GRAD) {  // rounded to bf16 as the bf16 path's
            x[j] = __bfloat162float(__float2bfloat16(x[j] * gelu_grad(__bfloat162float(pre.v[j]))));
        }
    }
}

/* amax_only: read (and transform) without writing anything but amax.
 * gelu_t: GELU_GRAD's cast also writing t.geluT (fp8.cuh).
 * partial (may be NULL): row split blockIdx.y's sums of this block's
 * columns, of the values as cast. GELU_GRAD's casts keep twice the loads in
 * flight: held to CAST_MIN_BLOCKS they spilled and ran 5% slower than with
 * one block fewer (bench/fp8_cast_probe on an H200; the others ran 13-23%
 * faster at 4 blocks than at 3). */
template <bool amax_only, int transform, bool gelu_t = false>
__global__ void __launch_bounds__(CAST_THREADS, transform == FP8_GELU_GRAD ? CAST_MIN_BLOCKS - 1
                                                                          : CAST_MIN_BLOCKS)
quantize_kernel(uint8_t *out, uint8_t *outT, const bf16 *in, const fp8_transform t, int rows,
                int cols, size_t in_stride, size_t out_stride, const float *scale, float *amax,
                float *partial, int first_slot, bool record, bool e5m2) {
    __shared__ CastShared sh;
    __shared__ float warp_amax[CAST_THREADS / 32];
    const int z = blockIdx.z, slot = first_slot + z * FP8_PRODUCTS;
    in += z * in_stride;
    const bf16 *gelu_pre = transform == FP8_GELU_GRAD ? t.gelu_pre + z * in_stride : nullptr;
    if (out) out += z * out_stride;
    if (outT) outT += z * out_stride;
    const int c0 = blockIdx.x * TILE, tr = threadIdx.x / 8, tc = threadIdx.x % 8 * 8;
    const int col = c0 + tc, stride = gridDim.y * TILE_ROWS;
    const float s = amax_only ? 1.0f : scale[slot];
    const float s_gelu = gelu_t ? *t.gelu_scale : 1.0f;
    uint8_t *geluT = gelu_t ? t.geluT + z * out_stride : nullptr;
    float m = 0.0f, sums[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    Chunk cur, next;
    int r0 = blockIdx.y * TILE_ROWS;
    if (CAST_PREFETCH) load_chunk<transform>(cur, in, gelu_pre, r0, tr, col, rows, cols);
    for (; r0 < rows; r0 += stride) {
        const bool more = r0 + stride < rows;
        if (CAST_PREFETCH == 0)
            load_chunk<transform>(cur, in, gelu_pre, r0, tr, col, rows, cols);
        else if (CAST_PREFETCH == 1 && more)
            load_chunk<transform>(next, in, gelu_pre, r0 + stride, tr, col, rows, cols);
        uint32_t q[CAST_ROWS][2];  // each row's 8 values in FP8 (zeros outside the matrix)
#pragma unroll
        for (int h = 0; h < CAST_ROWS; h++) {
            const int r = tile_row(tr, h), row = r0 + r;
            const Vec16<bf16> v = cur.v[h], pre = cur.pre[h];
            q[h][0] = q[h][1] = 0;
            uint32_t q_gelu[2] = {0, 0};
            if (row < rows && col < cols) {
                float x[8];
                transformed<transform>(x, v, pre);
                for (int j = 0; j < 8; j++) {
                    m = fmaxf(m, fabsf(x[j]));
                    sums[j] += x[j];
                }
                if (!amax_only) {
                    to_fp8x8(q[h], x, s, e5m2);
                    if (out)
                        *reinterpret_cast<uint2 *>(out + (size_t)row * cols + col) =
                            make_uint2(q[h][0], q[h][1]);
                }
                if (gelu_t) {
                    transformed<FP8_GELU>(x, pre, pre);
                    to_fp8x8(q_gelu, x, s_gelu, false);
                }
            }
            if (outT) stage(sh.bytes[0], r, tc, q[h]);
            if (gelu_t) stage(sh.bytes[1], r, tc, q_gelu);
        }
        if (outT || gelu_t) {
            __syncthreads();
            if (outT) store_transposed(outT, sh.bytes[0], r0, c0, rows, cols);
            if (gelu_t) store_transposed(geluT, sh.bytes[1], r0, c0, rows, cols);
            __syncthreads();  // the next tile reuses the shared tiles
        }
        if (CAST_PREFETCH == 1) cur = next;
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
    __syncthreads();  // the column sums take the shared tiles' place
    for (int j = 0; j < 8; j++) sh.col_sums[tr][tc + j] = sums[j];
    __syncthreads();
    for (int c = threadIdx.x; c < TILE && c0 + c < cols; c += CAST_THREADS) {
        float t = 0.0f;
        for (int r = 0; r < THREAD_ROWS; r++) t += sh.col_sums[r][c];
        partial[(size_t)blockIdx.y * cols + c0 + c] = t;
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
    scale[slot] = fp8_pow2_scale(a, slot >= g_first ? FP8_E5M2_MAX : FP8_E4M3_MAX);
    descale[(size_t)slot * FP8_DESCALE_STRIDE] = 1.0f / scale[slot];  // exact: a power of two
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

/* A 64 x 64 tile of bytes through shared memory: each of the 256 threads
 * reads 16 bytes of a row and writes 16 bytes of a column. Rows of the tile
 * 68 bytes apart, so that a column's bytes spread over the banks. */
__global__ void __launch_bounds__(256) transpose_bytes_kernel(uint8_t *outT, const uint8_t *in,
                                                              int rows, int cols) {
    __shared__ uint32_t tile[64][17];
    const int r0 = blockIdx.y * 64, c0 = blockIdx.x * 64;
    const int r = threadIdx.x / 4, piece = threadIdx.x % 4;
    if (r0 + r < rows && c0 + piece * 16 < cols) {
        const uint4 v = *(const uint4 *)(in + (size_t)(r0 + r) * cols + c0 + piece * 16);
        tile[r][piece * 4 + 0] = v.x, tile[r][piece * 4 + 1] = v.y;
        tile[r][piece * 4 + 2] = v.z, tile[r][piece * 4 + 3] = v.w;
    }
    __syncthreads();
    const int c = threadIdx.x / 4;  // the column this thread writes, rows piece * 16 ...
    if (c0 + c >= cols || r0 + piece * 16 >= rows) return;
    uint32_t word[4];
    for (int w = 0; w < 4; w++) {
        word[w] = 0;
        for (int k = 0; k < 4; k++) {
            const uint32_t b = (tile[piece * 16 + w * 4 + k][c / 4] >> (8 * (c % 4))) & 0xFFu;
            word[w] |= b << (8 * k);
        }
    }
    *(uint4 *)(outT + (size_t)(c0 + c) * rows + r0 + piece * 16) =
        make_uint4(word[0], word[1], word[2], word[3]);
}

/* Column strips of 64 on x, at most CAST_ROW_SPLITS blocks down each strip on y, layers on z. */
dim3 cast_grid(int rows, int cols, int layers) {
    return dim3(ceil_div(cols, TILE), std::min(ceil_div(rows, TILE_ROWS), CAST_ROW_SPLITS), layers);
}

}  // namespace

void fp8_reset(const fp8_scaling &s, cudaStream_t st) {
    reset_kernel<<<ceil_div(s.slots(), 256), 256, 0, st>>>(s.scale, s.descale, s.amax, s.history,
                                                           s.slots());
}

template <bool amax_only>
void (*cast_kernel(const fp8_transform &t))(uint8_t *, uint8_t *, const bf16 *,
                                            const fp8_transform, int, int, size_t, size_t,
                                            const float *, float *, float *, int, bool, bool) {
    if (t.kind == FP8_GELU_GRAD)
        return !amax_only && t.geluT ? quantize_kernel<amax_only, FP8_GELU_GRAD, true>
                                     : quantize_kernel<amax_only, FP8_GELU_GRAD>;
    return t.kind == FP8_GELU ? quantize_kernel<amax_only, FP8_GELU>
                              : quantize_kernel<amax_only, FP8_AS_IS>;
}

void fp8_quantize(void *out, void *outT, const bf16 *in, const fp8_transform &t, int rows,
                  int cols, int layers, size_t in_stride, size_t out_stride, const fp8_scaling &s,
                  int first_slot, bool record, float *dbias, float *partial, cudaStream_t st) {
    const bool e5m2 = first_slot >= s.slot(FP8_G, 0, 0);
    const auto kernel = cast_kernel<false>(t);
    const dim3 grid = cast_grid(rows, cols, layers);
    kernel<<<grid, CAST_THREADS, 0, st>>>(
        (uint8_t *)out, (uint8_t *)outT, in, t, rows, cols, in_stride, out_stride, s.scale, s.amax,
        dbias ? partial : nullptr, first_slot, record, e5m2);
    if (dbias) add_partials(dbias, dbias, partial, grid.y, cols, cols, cols, st);
}

void fp8_amax(const bf16 *in, const fp8_transform &t, int rows, int cols, int layers,
              size_t in_stride, const fp8_scaling &s, int first_slot, cudaStream_t st) {
    const auto kernel = cast_kernel<true>(t);
    kernel<<<cast_grid(rows, cols, layers), CAST_THREADS, 0, st>>>(
        nullptr, nullptr, in, t, rows, cols, in_stride, 0, s.scale, s.amax, nullptr, first_slot,
        true, false);
}

void fp8_current_scale(const bf16 *in, int rows, int cols, const fp8_scaling &s, int slot,
                       cudaStream_t st) {
    cudaMemsetAsync(s.amax + slot, 0, sizeof(float), st);
    fp8_amax(in, {}, rows, cols, 1, 0, s, slot, st);
    fp8_set_scales(s, slot, 1, 1, false, st);
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

void fp8_transpose(uint8_t *outT, const uint8_t *in, int rows, int cols, cudaStream_t st) {
    transpose_bytes_kernel<<<dim3(ceil_div(cols, 64), ceil_div(rows, 64)), 256, 0, st>>>(
        outT, in, rows, cols);
}
