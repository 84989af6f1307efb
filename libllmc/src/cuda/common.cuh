/*
 * common.cuh: what every CUDA source of the backend shares: the bf16 type,
 * 16-byte vector access, the random hash behind stochastic rounding, and the
 * turning of CUDA errors into llmc_status values (the backend never aborts).
 */
#ifndef LLMC_CUDA_COMMON_CUH
#define LLMC_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "comm.h"
#include "model.h"
}

typedef __nv_bfloat16 bf16;

/* 16 bytes of T: 8 bf16 or 4 floats, loaded and stored in one instruction. */
template <class T>
struct alignas(16) Vec16 {
    static constexpr int n = 16 / sizeof(T);
    T v[n];
};

template <class T>
__device__ __forceinline__ Vec16<T> load16(const T *p) {
    return *reinterpret_cast<const Vec16<T> *>(p);
}
template <class T>
__device__ __forceinline__ void store16(T *p, const Vec16<T> &x) {
    *reinterpret_cast<Vec16<T> *>(p) = x;
}

/* A well-mixed 32-bit hash of two words (a murmur-style finalizer), so that
 * random bits come from (seed, index) alone: deterministic and stateless. */
__host__ __device__ __forceinline__ uint32_t hash2(uint32_t a, uint32_t b) {
    uint32_t h = a * 0x9E3779B1u ^ (b + 0x7F4A7C15u + (a << 6) + (a >> 2));
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}

/* The seed of the stochastic rounding after optimizer step `step`. */
static inline uint32_t rounding_seed(uint64_t seed, int64_t step) {
    return hash2(hash2((uint32_t)seed, (uint32_t)(seed >> 32)), (uint32_t)step);
}

/* fp32 -> bf16 rounding up with probability equal to the dropped fraction:
 * unbiased, so that small AdamW updates are not lost to round-to-nearest. */
__device__ __forceinline__ bf16 bf16_stochastic(float x, uint32_t random) {
    uint32_t bits = __float_as_uint(x);
    if ((bits & 0x7F800000u) == 0x7F800000u) return __float2bfloat16(x);  // inf, nan
    bits = (bits + (random & 0xFFFFu)) & 0xFFFF0000u;
    return __ushort_as_bfloat16((unsigned short)(bits >> 16));
}

/* One row's residual add, res_out = res_in + branch (C channels, rounded to
 * bf16 as stored), by the 32 lanes of a warp in 16-byte slices; the fused
 * residual + normalization kernels then normalize res_out. */
__device__ __forceinline__ void residual_add_row(bf16 *res_out, const bf16 *res_in,
                                                 const bf16 *branch, int C, int lane) {
    for (int c = lane * 8; c < C; c += 256) {
        Vec16<bf16> r = load16(res_in + c), x = load16(branch + c), o;
        for (int k = 0; k < 8; k++)
            o.v[k] = __float2bfloat16(__bfloat162float(r.v[k]) + __bfloat162float(x.v[k]));
        store16(res_out + c, o);
    }
    __syncwarp();
}

/* tanh in one instruction (max error ~2^-11), for results rounded coarser than that. */
__device__ __forceinline__ float tanh_approx(float x) {
    float y;
    asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* GELU, the tanh form GPT-2 uses; approx: with tanh_approx (FP8's casts). */
template <bool approx = false>
__device__ __forceinline__ float gelu_tanh(float v) {
    const float k = 0.7978845608028654f;  // sqrt(2 / pi)
    const float u = k * (v + 0.044715f * v * v * v);
    return 0.5f * v * (1.0f + (approx ? tanh_approx(u) : tanhf(u)));
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
    return v;
}

/* The sum of v over the block (blockDim.x a multiple of 32), in every
 * thread: each warp's sum, then the warps' sums added by every warp in the
 * same tree, so that all threads hold the same bits. shared32: 32 floats of
 * shared memory; calls may follow each other with the same shared32. */
__device__ __forceinline__ float block_sum(float v, float *shared32) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    v = warp_sum(v);
    __syncthreads();  // a previous call's reads of shared32 are done
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    return warp_sum(lane < (int)(blockDim.x / 32) ? shared32[lane] : 0.0f);
}

/* Slice c..c+7 of a decode row as floats: res_in, or with a branch
 * res_in + branch rounded to bf16 as stored into res_out (the residual
 * stream), so that the norm that follows sees what the next layer reads. */
__device__ __forceinline__ void residual_slice(float (&x)[8], bf16 *res_out, const bf16 *res_in,
                                               const bf16 *branch, int c) {
    Vec16<bf16> r = load16(res_in + c);
    if (branch) {
        const Vec16<bf16> b = load16(branch + c);
        for (int k = 0; k < 8; k++)
            r.v[k] = __float2bfloat16(__bfloat162float(r.v[k]) + __bfloat162float(b.v[k]));
        store16(res_out + c, r);
    }
    for (int k = 0; k < 8; k++) x[k] = __bfloat162float(r.v[k]);
}

/* Programmatic dependent launch (Hopper): a kernel launched with
 * cudaLaunchAttributeProgrammaticStreamSerialization may start once every block of
 * the kernel before it has called pdl_launch_dependents (or exited), and must
 * pdl_wait before it reads what that kernel writes or writes what it reads;
 * pdl_wait returns once that kernel has completed and its writes are visible.
 * Both are no-ops for a kernel launched plainly, and before sm_90. */
__device__ __forceinline__ void pdl_launch_dependents() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

#ifndef LLMC_PDL
#define LLMC_PDL 1  // CUDA_DEFS=-DLLMC_PDL=0: plain launches (to measure what PDL gains)
#endif
/* Launches kernel on s as a programmatic dependent of the kernel before it
 * where the device has PDL (sm_90 on), else plainly; kernel must pdl_wait as
 * above. Generation's step kernels launch this way, so that each one's blocks
 * are resident, and a GEMV's weight loads in flight, while the one before
 * finishes: at batch 1 a step is hundreds of kernels of a few microseconds. */
template <typename... Params, typename... Args>
void launch_pdl_shared(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                       cudaStream_t s, Args... args) {
    int device = 0, major = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaLaunchAttribute attrs[2];
    attrs[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[0].val.programmaticStreamSerializationAllowed = LLMC_PDL && major >= 9;
    /* One split of L1 and shared memory for every step kernel, the most shared memory,
     * which the cache attention's ring needs (kvcache.cu). Without it d48 batch 1 ran 8%
     * slower with the ring (H200: 544.5 against 591.7 tokens/s; with it 585), likely as
     * an SM switched splits between the GEMVs and the attention instead of overlapping
     * them; the GEMVs alone lose ~1% with the smaller L1. */
    attrs[1].id = cudaLaunchAttributePreferredSharedMemoryCarveout;
    attrs[1].val.sharedMemCarveout = cudaSharedmemCarveoutMaxShared;
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = shared_bytes;
    config.stream = s;
    config.attrs = attrs;
    config.numAttrs = 2;
    cudaLaunchKernelEx(&config, kernel, args...);
}
/* The same without dynamic shared memory. */
template <typename... Params, typename... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t s,
                Args... args) {
    launch_pdl_shared(kernel, grid, block, 0, s, args...);
}

static inline int ceil_div(long a, long b) { return (int)((a + b - 1) / b); }
/* The least power of two >= x. */
__host__ __device__ constexpr int pow2_ceil(int x) {
    return x <= 1 ? 1 : 2 * pow2_ceil((x + 1) / 2);
}

/* CUDA error -> llmc_status with a message naming the call and place. */
static inline llmc_status cuda_status(cudaError_t e, const char *what, const char *file, int line) {
    cudaGetLastError();  // clear a non-sticky error so that the handle stays usable
    if (e == cudaErrorMemoryAllocation)
        return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "CUDA out of memory (%s at %s:%d)", what, file,
                          line);
    return llmc_error(LLMC_ERR_DEVICE, "CUDA error %s: %s (%s at %s:%d)", cudaGetErrorName(e),
                      cudaGetErrorString(e), what, file, line);
}

#define CUDA_TRY(call)                                                        \
    do {                                                                      \
        cudaError_t e_ = (call);                                              \
        if (e_ != cudaSuccess) return cuda_status(e_, #call, __FILE__, __LINE__); \
    } while (0)

/* After a series of kernel launches: reports a bad launch configuration. */
#define CUDA_CHECK_LAUNCH() CUDA_TRY(cudaGetLastError())

#define TRY(call)                               \
    do {                                        \
        llmc_status s_ = (call);                \
        if (s_ != LLMC_OK) return s_;           \
    } while (0)

#endif
