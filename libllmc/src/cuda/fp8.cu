/*
 * fp8.cu: casts of bf16 tensors to FP8 for the block products, with their
 * largest magnitudes recorded on the way, and the per-tensor scales.
 *
 * A block of 256 threads casts a 64 x 64 tile: 16-byte loads of 8 bf16,
 * 8-byte stores of 8 FP8 values in the row-major output, and the tile
 * staged in shared memory for the transposed output (Hopper's FP8 products
 * take only the "TN" layout, so a weight gradient needs both operands with
 * the token dimension innermost). Largest magnitudes combine by atomicMax on
 * the float bits (non-negative floats order as their bits do): a max is the
 * same in any order, so runs stay bit-identical.
 */
#include "fp8.cuh"

#define TILE 64
#define QUANT_THREADS 256

namespace {

/* d/dx of GELU's tanh form, the derivative the bf16 path's DGELU epilogue uses. */
__device__ __forceinline__ float gelu_grad(float x) {
    const float k = 0.7978845608028654f, a = 0.044715f;  // sqrt(2/pi)
    const float t = tanhf(k * (x + a * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * a * x * x);
}

__device__ __forceinline__ uint8_t to_fp8(float x, bool e5m2) {
    return __nv_cvt_float_to_fp8(x, __NV_SATFINITE, e5m2 ? __NV_E5M2 : __NV_E4M3);
}

/* amax_only: read (and with gelu_pre multiply) without writing anything but amax. */
template <bool amax_only>
__global__ void __launch_bounds__(QUANT_THREADS)
quantize_kernel(uint8_t *out, uint8_t *outT, bf16 *in, const bf16 *gelu_pre, int rows, int cols,
                size_t in_stride, size_t out_stride, const float *scale, float *amax,
                int first_slot, bool record, bool e5m2) {
    __shared__ uint8_t tile[TILE][TILE + 8];
    __shared__ float warp_amax[QUANT_THREADS / 32];
    const int z = blockIdx.z, slot = first_slot + z * FP8_PRODUCTS;
    in += z * in_stride;
    if (gelu_pre) gelu_pre += z * in_stride;
    if (out) out += z * out_stride;
    if (outT) outT += z * out_stride;
    const int r0 = blockIdx.x * TILE, c0 = blockIdx.y * TILE;
    const float s = amax_only ? 1.0f : scale[slot];
    float m = 0.0f;
    for (int k = threadIdx.x; k < TILE * TILE / 8; k += QUANT_THREADS) {
        const int r = k / (TILE / 8), cc = k % (TILE / 8) * 8, row = r0 + r, col = c0 + cc;
        uint8_t q[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (row < rows && col < cols) {
            const size_t idx = (size_t)row * cols + col;
            Vec16<bf16> v = load16(in + idx);
            float x[8];
            for (int j = 0; j < 8; j++) x[j] = __bfloat162float(v.v[j]);
            if (gelu_pre) {  // the gradient through GELU, rounded to bf16 as stored
                const Vec16<bf16> p = load16(gelu_pre + idx);
                for (int j = 0; j < 8; j++) {
                    v.v[j] = __float2bfloat16(x[j] * gelu_grad(__bfloat162float(p.v[j])));
                    x[j] = __bfloat162float(v.v[j]);
                }
                if (!amax_only) store16(in + idx, v);
            }
            for (int j = 0; j < 8; j++) m = fmaxf(m, fabsf(x[j]));
            if (!amax_only) {
                for (int j = 0; j < 8; j++) q[j] = to_fp8(x[j] * s, e5m2);
                if (out) *reinterpret_cast<uint2 *>(out + idx) = *reinterpret_cast<uint2 *>(q);
            }
        }
        if (outT)
            for (int j = 0; j < 8; j++) tile[r][cc + j] = q[j];
    }
    if (record) {
        m = warp_max(m);
        if (threadIdx.x % 32 == 0) warp_amax[threadIdx.x / 32] = m;
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < QUANT_THREADS / 32; w++) m = fmaxf(m, warp_amax[w]);
            atomicMax(reinterpret_cast<unsigned int *>(amax + slot), __float_as_uint(m));
        }
    }
    if (!outT) return;
    __syncthreads();
    for (int k = threadIdx.x; k < TILE * TILE / 8; k += QUANT_THREADS) {
        const int c = k / (TILE / 8), rr = k % (TILE / 8) * 8, col = c0 + c, row = r0 + rr;
        if (col >= cols || row >= rows) continue;
        uint8_t q[8];
        for (int j = 0; j < 8; j++) q[j] = tile[rr + j][c];
        *reinterpret_cast<uint2 *>(outT + (size_t)col * rows + row) = *reinterpret_cast<uint2 *>(q);
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
    descale[slot] = ldexpf(1.0f, -e);
}

__global__ void reset_kernel(float *scale, float *descale, float *amax, float *history, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    scale[i] = descale[i] = 1.0f;
    amax[i] = 0.0f;
    for (int k = 0; k < FP8_HISTORY; k++) history[(size_t)i * FP8_HISTORY + k] = 0.0f;
}

dim3 tiles(int rows, int cols, int layers) {
    return dim3(ceil_div(rows, TILE), ceil_div(cols, TILE), layers);
}

}  // namespace

void fp8_reset(const fp8_scaling &s, cudaStream_t st) {
    reset_kernel<<<ceil_div(s.slots(), 256), 256, 0, st>>>(s.scale, s.descale, s.amax, s.history,
                                                           s.slots());
}

void fp8_quantize(void *out, void *outT, bf16 *in, const bf16 *gelu_pre, int rows, int cols,
                  int layers, size_t in_stride, size_t out_stride, const fp8_scaling &s,
                  int first_slot, bool record, cudaStream_t st) {
    const bool e5m2 = first_slot >= s.slot(FP8_G, 0, 0);
    quantize_kernel<false><<<tiles(rows, cols, layers), QUANT_THREADS, 0, st>>>(
        (uint8_t *)out, (uint8_t *)outT, in, gelu_pre, rows, cols, in_stride, out_stride, s.scale,
        s.amax, first_slot, record, e5m2);
}

void fp8_amax(const bf16 *in, const bf16 *gelu_pre, int rows, int cols, int layers,
              size_t in_stride, const fp8_scaling &s, int first_slot, cudaStream_t st) {
    quantize_kernel<true><<<tiles(rows, cols, layers), QUANT_THREADS, 0, st>>>(
        nullptr, nullptr, const_cast<bf16 *>(in), gelu_pre, rows, cols, in_stride, 0, s.scale,
        s.amax, first_slot, true, false);
}

void fp8_set_scales(const fp8_scaling &s, int first_slot, int count, int stride, bool delayed,
                    cudaStream_t st) {
    set_scales_kernel<<<ceil_div(count, 128), 128, 0, st>>>(s.scale, s.descale, s.amax, s.history,
                                                            first_slot, count, stride, delayed,
                                                            s.slot(FP8_G, 0, 0));
}
