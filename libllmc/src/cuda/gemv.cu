/*
 * gemv.cu: the linear layers of decode steps of few rows (kernels.cuh,
 * gemv_forward): out (n, OC) = inp (n, IC) @ w^T (+ bias) (GELU), n <= 8.
 *
 * A step of a few tokens reads every weight once and does almost no
 * arithmetic with it, so its products are bound by the weights' bandwidth;
 * cuBLASLt's GEMM tiles waste most of their work and launch latency there.
 * Here each block owns GEMV_OUT_ROWS rows of w, which it copies whole into
 * shared memory at its start (Hopper's bulk copy: one instruction a row,
 * no registers held while the bytes travel; before sm_90 the threads' own
 * 16-byte loads), then its warps split IC between them, each lane taking
 * 16-byte slices of those rows against all n input rows, which the L1 cache
 * serves to every block; so w is read once per step for all n rows. The
 * copies hold the bytes in flight that registers could not: at d48 the
 * blocks of every product fit on the GPU at once (the register version's
 * 96 registers a thread left the fc projection's 400 blocks one SM's worth
 * short of one wave, and the fc's 1600 of 64 threads 148 short).
 *
 * Launched as a programmatic dependent (Hopper's PDL, common.cuh's
 * launch_pdl): a block starts its copy before waiting for the previous
 * kernel, whose output is its input, and lets the next kernel start the
 * same way; so a product's weights stream in while the kernels before it
 * finish.
 *
 * Sums: fp32, each lane's in IC order, then a fixed tree across the lanes
 * and the warps, whatever n is: a row's result does not depend on the other
 * rows of the step (a sequence decodes the same alone or in a batch of up
 * to 8), and a graph replays the eager step bit for bit.
 */
#include <algorithm>
#include <atomic>

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
#define GEMV_UNROLL 4     // 16-byte slices of each row a lane takes before IC gets more warps
#endif
#define GEMV_SLICE 256    // elements of IC a warp covers per slice (32 lanes x 8)
#define GEMV_MAX_SMEM (200 * 1024)  // the block's rows in shared memory at most

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

/* The block's rows of w (bytes of them, contiguous) into shared memory,
 * loaded: an mbarrier that wait_rows waits on (sm_90 on). The copy does not
 * depend on the previous kernel: it may start before pdl_wait. */
__device__ __forceinline__ void copy_rows(bf16 *rows, const bf16 *src, unsigned bytes,
                                          uint64_t *loaded) {
#if __CUDA_ARCH__ >= 900
    const unsigned bar = (unsigned)__cvta_generic_to_shared(loaded);
    if (threadIdx.x == 0) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bar));
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // the copy sees the init
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar),
                     "r"(bytes) : "memory");
        asm volatile(
            "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
            ::"r"((unsigned)__cvta_generic_to_shared(rows)), "l"(src), "r"(bytes), "r"(bar)
            : "memory");
    }
#else
    for (unsigned i = threadIdx.x * 16; i < bytes; i += blockDim.x * 16)
        *reinterpret_cast<uint4 *>((char *)rows + i) =
            *reinterpret_cast<const uint4 *>((const char *)src + i);
#endif
}

/* Returns once copy_rows's bytes are in shared memory, for every thread. */
__device__ __forceinline__ void wait_rows(uint64_t *loaded) {
#if __CUDA_ARCH__ >= 900
    __syncthreads();  // thread 0 has initialized the barrier
    const unsigned bar = (unsigned)__cvta_generic_to_shared(loaded);
    unsigned done = 0;
    while (!done)
        asm volatile(
            "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], 0; "
            "selp.u32 %0, 1, 0, p; }"
            : "=r"(done) : "r"(bar) : "memory");
#else
    __syncthreads();
#endif
}

/* Block: GEMV_OUT_ROWS rows of w from blockIdx.x * GEMV_OUT_ROWS, copied into
 * dynamic shared memory (GEMV_OUT_ROWS x IC); blockDim.x / 32 warps over IC.
 * out is bf16, or fp32 with fp32_out. */
template <int N>
__global__ void __launch_bounds__(GEMV_MAX_WARPS * 32)
    gemv_kernel(void *out, bool fp32_out, const bf16 *inp, const bf16 *w, const bf16 *bias,
                bool gelu, int IC, int OC) {
    constexpr int M = pow2_ceil(GEMV_OUT_ROWS * N);  // values per lane, padded for the tree
    extern __shared__ uint4 smem[];
    __shared__ uint64_t loaded;
    bf16 *rows = reinterpret_cast<bf16 *>(smem);
    pdl_launch_dependents();  // the next kernel may start (a GEMV: copying its weights)
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    const int row0 = blockIdx.x * GEMV_OUT_ROWS, nrows = min(GEMV_OUT_ROWS, OC - row0);
    copy_rows(rows, w + (size_t)row0 * IC, (unsigned)(nrows * IC * sizeof(bf16)), &loaded);
    pdl_wait();  // inp (and out's readers) are the kernels' before
    wait_rows(&loaded);
    float acc[M];
#pragma unroll
    for (int i = 0; i < M; i++) acc[i] = 0.0f;
    /* each lane's slices in IC order; rows past OC add what shared memory
     * holds there, never stored */
    const int stride = warps * GEMV_SLICE;
    for (int k = warp * GEMV_SLICE + lane * 8; k < IC; k += stride) {
        uint4 ws[GEMV_OUT_ROWS];
#pragma unroll
        for (int r = 0; r < GEMV_OUT_ROWS; r++)
            ws[r] = *reinterpret_cast<const uint4 *>(rows + (size_t)r * IC + k);
#pragma unroll
        for (int j = 0; j < N; j++) {
            const uint4 x = *reinterpret_cast<const uint4 *>(inp + (size_t)j * IC + k);
#pragma unroll
            for (int r = 0; r < GEMV_OUT_ROWS; r++) acc[r * N + j] = dot8(ws[r], x, acc[r * N + j]);
        }
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
           (uintptr_t)w % 16 == 0 && (size_t)GEMV_OUT_ROWS * IC * sizeof(bf16) <= GEMV_MAX_SMEM;
}

/* Lets every gemv_kernel take up to GEMV_MAX_SMEM of dynamic shared memory on
 * the current device, once per device (before any graph capture: a step's
 * first run is eager). */
static void allow_smem() {
    static std::atomic<unsigned long long> done{0};  // a bit per device
    int device = 0;
    cudaGetDevice(&device);
    if (device < 64 && (done.load() >> device & 1)) return;
    auto allow = [](auto kernel) {
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, GEMV_MAX_SMEM);
    };
    allow(gemv_kernel<1>), allow(gemv_kernel<2>), allow(gemv_kernel<3>), allow(gemv_kernel<4>);
    allow(gemv_kernel<5>), allow(gemv_kernel<6>), allow(gemv_kernel<7>), allow(gemv_kernel<8>);
    if (device < 64) done.fetch_or(1ull << device);
}

static void gemv_launch(void *out, bool fp32_out, const bf16 *inp, const bf16 *w,
                        const bf16 *bias, bool gelu, int n, int IC, int OC, cudaStream_t s) {
    /* as many warps as IC has room for, GEMV_UNROLL slices each: one round up to
     * GEMV_MAX_WARPS warps; chosen from IC alone, so that a row's sums are too */
    const int warps = std::min(GEMV_MAX_WARPS, std::max(1, ceil_div(IC, GEMV_UNROLL * GEMV_SLICE)));
    const dim3 grid(ceil_div(OC, GEMV_OUT_ROWS)), block(32 * warps);
    const size_t smem = (size_t)GEMV_OUT_ROWS * IC * sizeof(bf16);
    allow_smem();
    switch (n) {
#define GEMV_CASE(N)                                                                        \
    case N:                                                                                \
        launch_pdl(gemv_kernel<N>, grid, block, smem, s, out, fp32_out, inp, w, bias, gelu, IC, \
                   OC);                                                                    \
        break;
        GEMV_CASE(1) GEMV_CASE(2) GEMV_CASE(3) GEMV_CASE(4)
        GEMV_CASE(5) GEMV_CASE(6) GEMV_CASE(7) GEMV_CASE(8)
#undef GEMV_CASE
    }
}

void gemv_forward(bf16 *out, const bf16 *inp, const bf16 *w, const bf16 *bias, int n, int IC,
                  int OC, bool gelu, cudaStream_t s) {
    gemv_launch(out, false, inp, w, bias, gelu, n, IC, OC, s);
}

void gemv_forward_fp32(float *out, const bf16 *inp, const bf16 *w, int n, int IC, int OC,
                       cudaStream_t s) {
    gemv_launch(out, true, inp, w, nullptr, false, n, IC, OC, s);
}
