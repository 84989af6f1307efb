/*
 * gemv.cu: the linear layers of decode steps of few rows (kernels.cuh,
 * gemv_forward): out (n, OC) = inp (n, IC) @ w^T (+ bias) (GELU), n <= 8.
 *
 * A step of a few tokens reads every weight once and does almost no
 * arithmetic with it, so its products are bound by the weights' bandwidth;
 * cuBLASLt's GEMM tiles waste most of their work and launch latency there.
 * Here each block owns GEMV_OUT_ROWS rows of w, its warps split IC between
 * them, each lane streaming 16-byte slices of those rows (GEMV_UNROLL
 * slices per row in flight: the whole of the block's rows at once up to IC =
 * GEMV_MAX_WARPS x GEMV_UNROLL x 256, so even the long rows of 6400/8192 take
 * one round trip) against all n input rows, which the L1 cache serves to
 * every block; so w is read once per step for all n rows.
 *
 * Staged (GEMV_STAGED, sm_90): a block's rows of w are contiguous, so one
 * thread copies them into shared memory with a single bulk asynchronous copy
 * (Hopper's TMA, completing on an mbarrier) instead of every lane holding its
 * slices in registers: no register budget bounds the bytes in flight, a block
 * needs few registers, and the next kernel's blocks fit beside it. The lanes
 * then read the same slices from shared memory in the same order, so a row's
 * sums are the same bits either way. The copy adds latency, so a product is
 * staged only where that saves it a second wave of blocks (gemv_launch).
 *
 * Launched as a programmatic dependent (Hopper's PDL, common.cuh's
 * launch_pdl): a block issues its weight loads before waiting for the
 * previous kernel, whose output is its input, and lets the next kernel start
 * the same way; so a product's first round trip overlaps the tail of the
 * kernels before it.
 *
 * Sums: fp32, each lane's in IC order, then a fixed tree across the lanes
 * and the warps, whatever n is: a row's result does not depend on the other
 * rows of the step (a sequence decodes the same alone or in a batch of up
 * to 8), and a graph replays the eager step bit for bit.
 */
#include <algorithm>
#include <map>
#include <tuple>

#include "kernels.cuh"

/* Knobs, each overridable with CUDA_DEFS=-D... for a measured variant. A row's
 * sums depend on the warp count alone (chosen from IC, GEMV_UNROLL and
 * GEMV_MAX_WARPS), never on GEMV_OUT_ROWS, LLMC_PDL or n. */
#ifndef GEMV_OUT_ROWS
#define GEMV_OUT_ROWS 4   // rows of w per block
#endif
#ifndef GEMV_MAX_WARPS
#define GEMV_MAX_WARPS 8  // warps splitting IC
#endif
#ifndef GEMV_UNROLL
#define GEMV_UNROLL 4     // 16-byte slices of each row a lane loads before using them
#endif
#ifndef GEMV_STAGED
#define GEMV_STAGED 1     // w through shared memory by a bulk copy (sm_90): 0 never, 1 where
                          // it saves a wave (gemv_launch), 2 wherever it fits
#endif
#define GEMV_SLICE 256    // elements of IC a warp covers per slice (32 lanes x 8)
#define GEMV_STAGE_MAX_BYTES (128 << 10)  // a block's rows of w staged up to this size

/* The bulk copy (sm_90's TMA) of a staged block: bytes (a multiple of 16) from
 * global src to shared dst, completing on the mbarrier ready, which the lanes
 * wait on in phase 0. One thread starts it. */
__device__ __forceinline__ void stage_rows(void *dst, const void *src, unsigned bytes,
                                           uint64_t *ready) {
#if __CUDA_ARCH__ >= 900
    const unsigned bar = (unsigned)__cvta_generic_to_shared(ready);
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bar) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
                 : "memory");
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::
            "r"((unsigned)__cvta_generic_to_shared(dst)),
        "l"(src), "r"(bytes), "r"(bar)
        : "memory");
#endif
}
__device__ __forceinline__ void wait_staged(uint64_t *ready) {
#if __CUDA_ARCH__ >= 900
    const unsigned bar = (unsigned)__cvta_generic_to_shared(ready);
    unsigned done = 0;
    while (!done)
        asm volatile(
            "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], 0; selp.u32 %0, 1, 0, p; }"
            : "=r"(done)
            : "r"(bar)
            : "memory");
#endif
}

/* Sums each of the M values (M a power of two <= 32) over the warp's lanes;
 * afterwards v[0] of lane l holds the total of value l / (32 / M). The pairs
 * added are those of warp_sum (offsets 16, 8, ..., 1) for every value,
 * whatever M is, so a value's total does not depend on M; 31 shuffles for
 * M = 32 instead of warp_sum's 160. */
template <int M>
__device__ __forceinline__ void warp_sum_scatter(float (&v)[M], int lane) {
#pragma unroll
    for (int step = 0; step < 5; step++) {
        const int o = 16 >> step, half = (M >> step) / 2;  // half: values each side keeps
        if (half == 0) {  // one value left: summed as warp_sum does
            v[0] += __shfl_xor_sync(0xFFFFFFFFu, v[0], o);
            continue;
        }
        const bool upper = lane & o;  // keeps the upper half, sends the lower
#pragma unroll
        for (int i = 0; i < M / 2; i++) {
            if (i < half) {
                const float send = upper ? v[i] : v[i + half];
                const float keep = upper ? v[i + half] : v[i];
                v[i] = keep + __shfl_xor_sync(0xFFFFFFFFu, send, o);
            }
        }
    }
}

/* Adds the 8 products of a 16-byte slice of w and one of x to acc, in order. */
__device__ __forceinline__ float dot8(const uint4 &w, const uint4 &x, float acc) {
    const __nv_bfloat162 *w2 = reinterpret_cast<const __nv_bfloat162 *>(&w);
    const __nv_bfloat162 *x2 = reinterpret_cast<const __nv_bfloat162 *>(&x);
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const float2 a = __bfloat1622float2(w2[e]), b = __bfloat1622float2(x2[e]);
        acc = fmaf(a.x, b.x, acc);
        acc = fmaf(a.y, b.y, acc);
    }
    return acc;
}

/* Loads the GEMV_UNROLL slices of each row that a lane uses from k0 on
 * (stride apart); zeros past IC. Streamed: w is read once per step. */
__device__ __forceinline__ void load_slices(uint4 (&ws)[GEMV_UNROLL][GEMV_OUT_ROWS],
                                            const bf16 *const (&wrow)[GEMV_OUT_ROWS], int k0,
                                            int stride, int IC) {
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
        const int k = k0 + u * stride;
#pragma unroll
        for (int r = 0; r < GEMV_OUT_ROWS; r++)
            ws[u][r] = k < IC ? __ldcs(reinterpret_cast<const uint4 *>(wrow[r] + k))
                              : make_uint4(0, 0, 0, 0);
    }
}

/* Block: GEMV_OUT_ROWS rows of w from blockIdx.x * GEMV_OUT_ROWS; blockDim.x
 * / 32 warps over IC. out is bf16, or fp32 with fp32_out. STAGED: w's rows
 * come through shared memory (dynamic, GEMV_OUT_ROWS x IC), else registers. */
template <int N, bool STAGED>
__global__ void __launch_bounds__(GEMV_MAX_WARPS * 32)
    gemv_kernel(void *out, bool fp32_out, const bf16 *inp, const bf16 *w, const bf16 *bias,
                bool gelu, int IC, int OC) {
    constexpr int M = pow2_ceil(GEMV_OUT_ROWS * N);  // values per lane, padded for the tree
    extern __shared__ uint4 staged[];  // STAGED: the block's rows of w
    __shared__ uint64_t staged_ready;
    pdl_launch_dependents();  // the next GEMV may start loading its weights now
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    const int row0 = blockIdx.x * GEMV_OUT_ROWS, rows = min(GEMV_OUT_ROWS, OC - row0);
    const bf16 *wrow[GEMV_OUT_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_OUT_ROWS; r++)  // rows past OC read the last row, never stored
        wrow[r] = STAGED ? reinterpret_cast<const bf16 *>(staged) + (size_t)min(r, rows - 1) * IC
                         : w + (size_t)min(row0 + r, OC - 1) * IC;
    float acc[M];
#pragma unroll
    for (int i = 0; i < M; i++) acc[i] = 0.0f;
    const int stride = warps * GEMV_SLICE;
    int k0 = warp * GEMV_SLICE + lane * 8;
    uint4 ws[STAGED ? 1 : GEMV_UNROLL][GEMV_OUT_ROWS];  // STAGED: a slice at a time
    if constexpr (STAGED) {  // the weights do not depend on the previous kernel
        if (threadIdx.x == 0)
            stage_rows(staged, w + (size_t)row0 * IC, (unsigned)(rows * IC * sizeof(bf16)),
                       &staged_ready);
        __syncthreads();  // the barrier is initialised before any lane waits on it
    } else {
        load_slices(ws, wrow, k0, stride, IC);
    }
    pdl_wait();  // inp (and out's readers) depend on it
    if constexpr (STAGED) wait_staged(&staged_ready);
    while (true) {  // each lane's sums in IC order, however many rounds
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int k = k0 + u * stride;
            if (k >= IC) break;
            const int slot = STAGED ? 0 : u;
            if constexpr (STAGED) {
#pragma unroll
                for (int r = 0; r < GEMV_OUT_ROWS; r++)
                    ws[0][r] = *reinterpret_cast<const uint4 *>(wrow[r] + k);
            }
#pragma unroll
            for (int j = 0; j < N; j++) {
                const uint4 x = *reinterpret_cast<const uint4 *>(inp + (size_t)j * IC + k);
#pragma unroll
                for (int r = 0; r < GEMV_OUT_ROWS; r++)
                    acc[r * N + j] = dot8(ws[slot][r], x, acc[r * N + j]);
            }
        }
        k0 += GEMV_UNROLL * stride;
        if (k0 >= IC) break;
        if constexpr (!STAGED) load_slices(ws, wrow, k0, stride, IC);
    }
    warp_sum_scatter<M>(acc, lane);
    __shared__ float partial[GEMV_MAX_WARPS][M];
    if (lane % (32 / M) == 0) partial[warp][lane / (32 / M)] = acc[0];
    __syncthreads();
    for (int t = threadIdx.x; t < GEMV_OUT_ROWS * N; t += blockDim.x) {
        const int r = t / N, j = t % N, row = row0 + r;
        if (row >= OC) continue;
        float sum = 0.0f;
        for (int q = 0; q < warps; q++) sum += partial[q][t];
        if (bias) sum += __bfloat162float(bias[row]);
        if (gelu) sum = gelu_tanh(sum);
        if (fp32_out) ((float *)out)[(size_t)j * OC + row] = sum;
        else ((bf16 *)out)[(size_t)j * OC + row] = __float2bfloat16(sum);
    }
}

bool gemv_fits(int n, int IC, const void *inp, const void *w) {
    return n >= 1 && n <= GEMV_MAX_ROWS && IC % 8 == 0 && (uintptr_t)inp % 16 == 0 &&
           (uintptr_t)w % 16 == 0;
}

typedef void (*gemv_kernel_fn)(void *, bool, const bf16 *, const bf16 *, const bf16 *, bool, int,
                               int);

/* gemv_kernel<n, STAGED>; staged ones may take GEMV_STAGE_MAX_BYTES of shared memory. */
template <bool STAGED>
static gemv_kernel_fn gemv_kernel_for(int n) {
    static const gemv_kernel_fn kernels[GEMV_MAX_ROWS] = {
        gemv_kernel<1, STAGED>, gemv_kernel<2, STAGED>, gemv_kernel<3, STAGED>,
        gemv_kernel<4, STAGED>, gemv_kernel<5, STAGED>, gemv_kernel<6, STAGED>,
        gemv_kernel<7, STAGED>, gemv_kernel<8, STAGED>};
    static const bool raised = [] {  // beyond the default 48 KB, once, before any capture
        if (STAGED)
            for (gemv_kernel_fn k : kernels) {
                cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     GEMV_STAGE_MAX_BYTES);
                cudaFuncSetAttribute(k, cudaFuncAttributePreferredSharedMemoryCarveout,
                                     cudaSharedmemCarveoutMaxShared);  // as launch_pdl's
            }
        return true;
    }();
    (void)raised;
    return kernels[n - 1];
}

/* Whether grid blocks of kernel fit the GPU at once (one wave); the
 * occupancy of each (device, kernel, block, shared memory) asked once. */
static bool one_wave(gemv_kernel_fn kernel, int grid, int threads, size_t shared_bytes) {
    thread_local std::map<std::tuple<int, gemv_kernel_fn, int, size_t>, int> resident;
    int device = 0;
    cudaGetDevice(&device);
    const auto key = std::make_tuple(device, kernel, threads, shared_bytes);
    auto it = resident.find(key);
    if (it == resident.end()) {
        int sms = 0, per_sm = 0;
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared_bytes);
        it = resident.emplace(key, sms * per_sm).first;
    }
    return grid <= it->second;
}

static void gemv_launch(void *out, bool fp32_out, const bf16 *inp, const bf16 *w,
                        const bf16 *bias, bool gelu, int n, int IC, int OC, cudaStream_t s) {
    /* as many warps as IC has room for, GEMV_UNROLL slices each: one round up to
     * GEMV_MAX_WARPS warps; chosen from IC alone, so that a row's sums are too */
    const int warps = std::min(GEMV_MAX_WARPS, std::max(1, ceil_div(IC, GEMV_UNROLL * GEMV_SLICE)));
    const dim3 grid(ceil_div(OC, GEMV_OUT_ROWS)), block(32 * warps);
    const size_t staged_bytes = (size_t)GEMV_OUT_ROWS * IC * sizeof(bf16);
    int device = 0, major = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    /* Staged where the registers' kernel needs a second wave and the staged one
     * does not (GEMV_STAGED 1): the H100 probe timed the staged kernel slower in
     * a single wave (the bulk copy's added latency) and faster where it removes
     * the second wave's round trip (d48 n = 1: fc, 1600 blocks, and the fc
     * projection, 400 blocks of 224 threads, 396 resident with registers). */
    bool staged = false;
    if (GEMV_STAGED && major >= 9 && staged_bytes <= GEMV_STAGE_MAX_BYTES) {
        staged = GEMV_STAGED == 2 ||
                 (!one_wave(gemv_kernel_for<false>(n), grid.x, block.x, 0) &&
                  one_wave(gemv_kernel_for<true>(n), grid.x, block.x, staged_bytes));
    }
    if (staged)
        launch_pdl_shared(gemv_kernel_for<true>(n), grid, block, staged_bytes, s, out, fp32_out,
                          inp, w, bias, gelu, IC, OC);
    else
        launch_pdl(gemv_kernel_for<false>(n), grid, block, s, out, fp32_out, inp, w, bias, gelu,
                   IC, OC);
}

void gemv_forward(bf16 *out, const bf16 *inp, const bf16 *w, const bf16 *bias, int n, int IC,
                  int OC, bool gelu, cudaStream_t s) {
    gemv_launch(out, false, inp, w, bias, gelu, n, IC, OC, s);
}

void gemv_forward_fp32(float *out, const bf16 *inp, const bf16 *w, int n, int IC, int OC,
                       cudaStream_t s) {
    gemv_launch(out, true, inp, w, nullptr, false, n, IC, OC, s);
}
