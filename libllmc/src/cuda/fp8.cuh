/*
 * fp8.cuh: the operands of the FP8 block products (Hopper, LLMC_PRECISION_FP8):
 * per-tensor scaling state and the casts from bf16.
 *
 * Each product of a block (qkv, attention projection, fc, fc projection)
 * has three scaled operands: its input X and weight W in E4M3 and its output
 * gradient G in E5M2. A slot holds one operand's scale (a power of two, so
 * that scaling is exact), its inverse (what cuBLASLt multiplies the product
 * by), the largest magnitude seen since the scales were last set, and for X
 * and G a history of the last FP8_HISTORY steps' largest magnitudes.
 * Delayed scaling: a step casts with scales derived from the history of the
 * steps before it, recording its own largest magnitudes as a side effect
 * of the cast; fp8_update_scales then moves them into the history. Weights
 * are scaled from their own current largest magnitude (they are small, and
 * cast once per step).
 */
#ifndef LLMC_CUDA_FP8_CUH
#define LLMC_CUDA_FP8_CUH

#include <cuda_fp8.h>

#include "common.cuh"

typedef __nv_fp8_e4m3 fp8e4;
typedef __nv_fp8_e5m2 fp8e5;

#define FP8_HISTORY 16
#define FP8_E4M3_MAX 448.0f   // the largest finite values
#define FP8_E5M2_MAX 57344.0f

/* The scale of a tensor whose largest magnitude is amax > 0: the largest power
 * of two s with amax * s <= fp8_max (2^-126..2^126), so that scaling is exact. */
__host__ __device__ inline float fp8_pow2_scale(float amax, float fp8_max) {
    int e;
    frexpf(fp8_max / amax, &e);  // fp8_max / amax = f * 2^e, f in [0.5, 1)
    e = e - 1 < -126 ? -126 : e - 1 > 126 ? 126 : e - 1;
    return ldexpf(1.0f, e);
}
/* x[0..7] scaled and cast, two per instruction: x[j] in byte j % 4 of q[j / 4]. */
__device__ __forceinline__ void to_fp8x8(uint32_t q[2], const float x[8], float s, bool e5m2) {
    q[0] = q[1] = 0;
    for (int j = 0; j < 8; j += 2) {
        const uint32_t pair = __nv_cvt_float2_to_fp8x2(
            make_float2(x[j] * s, x[j + 1] * s), __NV_SATFINITE, e5m2 ? __NV_E5M2 : __NV_E4M3);
        q[j / 4] |= pair << (j % 4 * 8);  // x[j] in the low byte
    }
}
enum { FP8_X = 0, FP8_W = 1, FP8_G = 2, FP8_ROLES = 3 };
enum { FP8_QKV = 0, FP8_ATTPROJ = 1, FP8_FC = 2, FP8_FCPROJ = 3, FP8_PRODUCTS = 4 };

/* Device arrays of L * FP8_ROLES * FP8_PRODUCTS slots, role-major: the slot
 * of (role, layer, product) is (role * L + layer) * FP8_PRODUCTS + product. */
/* cuBLASLt refuses (CUBLAS_STATUS_NOT_SUPPORTED, at run time) scale
 * pointers that are not 16-byte aligned: each slot's descale has its own 16
 * bytes. */
#define FP8_DESCALE_STRIDE 4

struct fp8_scaling {
    float *scale = nullptr, *amax = nullptr;
    float *descale = nullptr;  // FP8_DESCALE_STRIDE floats per slot
    const float *descale_of(int slot) const { return descale + (size_t)slot * FP8_DESCALE_STRIDE; }
    float *history = nullptr;  // FP8_HISTORY per slot
    int L = 0;
    int slot(int role, int layer, int product) const {
        return (role * L + layer) * FP8_PRODUCTS + product;
    }
    int slots() const { return FP8_ROLES * L * FP8_PRODUCTS; }
};

/* Sets every scale to 1 and clears amax and history (a model without
 * history: its first step scales from the current tensors). */
void fp8_reset(const fp8_scaling &s, cudaStream_t st);

/* What a cast applies to each value first: nothing; GELU (fcproj's input
 * from fc's pre-activation, so that the bf16 GELU output is never
 * written); the gradient through GELU, in * GELU'(gelu_pre), rounded to
 * bf16 as the bf16 path's DGELU epilogue rounds (fc's output gradient). */
enum { FP8_AS_IS = 0, FP8_GELU = 1, FP8_GELU_GRAD = 2 };
struct fp8_transform {
    int kind = FP8_AS_IS;
    const bf16 *gelu_pre = nullptr;  // GELU_GRAD: GELU's input, laid out as the cast's input
    /* GELU_GRAD, may be NULL: also GELU(gelu_pre), transposed (cols x rows) in
     * E4M3 at *gelu_scale, the bytes an FP8_GELU cast of gelu_pre writes there
     * (amax not recorded). fcproj's input where recompute dropped it: fc's
     * gradient cast reads gelu_pre anyway, a cast of its own would read it again. */
    uint8_t *geluT = nullptr;
    const float *gelu_scale = nullptr;
};

/* Quantizes `layers` matrices of rows x cols bf16 (layer z at in + z *
 * in_stride, its slot at first_slot + z * FP8_PRODUCTS), transformed, into
 * out (row-major, may be NULL) and outT (its transpose, cols x rows, may be
 * NULL), E5M2 for G slots, else E4M3, saturating. record: the slot's amax
 * takes the largest magnitude cast. dbias (may be NULL; layers 1): the
 * column sums of the values cast are added to it (a bias gradient), through
 * partial (CAST_ROW_SPLITS x cols floats). rows and cols must be multiples
 * of 8 where outT is written (cols a multiple of 8 always). */
#ifndef CAST_ROW_SPLITS  // a knob of bench/fp8_cast_probe.sh, as fp8.cu's
#define CAST_ROW_SPLITS 128  // 256 was up to 16% slower on GELU_GRAD, no faster elsewhere
#endif
void fp8_quantize(void *out, void *outT, const bf16 *in, const fp8_transform &t, int rows,
                  int cols, int layers, size_t in_stride, size_t out_stride, const fp8_scaling &s,
                  int first_slot, bool record, float *dbias, float *partial, cudaStream_t st);
/* Only the amax of the same matrices (into the slots), for scaling from the
 * current tensors. */
void fp8_amax(const bf16 *in, const fp8_transform &t, int rows, int cols, int layers,
              size_t in_stride, const fp8_scaling &s, int first_slot, cudaStream_t st);
/* Current scaling of one matrix: slot's amax cleared, taken from in (rows x
 * cols, as is) and its scale set from it. */
void fp8_current_scale(const bf16 *in, int rows, int cols, const fp8_scaling &s, int slot,
                       cudaStream_t st);
/* outT (cols x rows) = the transpose of the E4M3 matrix in (rows x cols);
 * rows and cols multiples of 16, both pointers 16-byte aligned. */
void fp8_transpose(uint8_t *outT, const uint8_t *in, int rows, int cols, cudaStream_t st);
/* One slot's scale, a power of two, and its descale. */
void fp8_set_scale(const fp8_scaling &s, int slot, float scale, cudaStream_t st);
/* Scales of `count` slots (first_slot, first_slot + stride, ...):
 * delayed: amax joins the history, the scale follows the history's largest
 * value and amax is cleared; else the scale follows amax alone (kept). A slot
 * that has seen only zeros keeps its scale. */
void fp8_set_scales(const fp8_scaling &s, int first_slot, int count, int stride, bool delayed,
                    cudaStream_t st);

#endif
