/*
 * decode_step.cu: a GPT-2 decode step of up to GEMV_MAX_ROWS rows as one
 * persistent kernel (decode.cuh, decode_step).
 *
 * A step of few rows reads every weight once and does little else, but as
 * kernels of its own each layer paid its products' block launches, ramps and
 * tails and the attention's and norms' dependent round trips between them
 * (d48 batch 1: ~340 kernels, 1.72 ms a token where its weights take 0.65 ms
 * at the H200's bandwidth). Here one cooperative launch, a block an SM,
 * walks the whole step in phases with a grid-wide barrier between each and
 * the next: the embedding; per layer the qkv product (its LayerNorm
 * recomputed by every block into shared memory), the cache attention, the
 * attention projection (+ residual), the fc product (LayerNorm again, then
 * GELU), the fc projection (+ residual); then the final norm and the LM head
 * (fp32 logits). Each warp issues its first weight copies of a phase before
 * it waits at the phase's barrier, so that the barrier's latency hides
 * behind theirs, and from then on keeps STEP_RING - 1 units in flight
 * through a ring in shared memory while it multiplies one.
 *
 * Opt-in (LLMC_FUSED_DECODE=1, decode.cu): its first two forms ran 2.4-2.6x
 * slower than the kernels on the H200 (bench/CUDA_NOTES.md: products
 * spilling registers to L2 inside their loops); this one, whose in-flight
 * weights take no registers, has not yet run on a GPU.
 *
 * Products: a warp owns whole output rows (rows gw, gw + warps, ..., warps
 * numbered across the SMs first), its lanes 16-byte slices of a row,
 * STEP_SLICES slices a unit; each lane sums in IC order, the lanes in
 * warp_sum's tree, for every row whatever n is: a row's result is the same
 * alone or in a batch, as gemv.cu's (whose sums it does not repeat bit for
 * bit: steps of more rows or prefill chunks round differently).
 * Attention: an item is (row, head, STEP_RANGE positions), a lane a
 * position, softmax over the item; the last of a (row, head)'s items to
 * finish (a counter) merges them in item order, as kvcache.cu's kernel
 * merges its ranges. Data written inside the launch is read through L2 only
 * (ld.cg), since an SM's L1 is not kept coherent with the others'.
 */
#ifdef STEP_CLOCKS
#include <cstdio>
#endif

#include "decode.cuh"
#include "kernels.cuh"

#ifndef STEP_THREADS
#define STEP_THREADS 512               // 16 warps, one block an SM
#endif
#define STEP_WARPS (STEP_THREADS / 32)
#ifndef STEP_SLICES
#define STEP_SLICES 4                  // 16-byte slices of a weight row a lane copies a unit
#endif
#ifndef STEP_RING
#define STEP_RING 3                    // units of a warp's ring in shared memory
#endif
#define STEP_UNIT (STEP_SLICES * 256)  // elements of a row a warp covers a unit
#ifndef STEP_MAX_HS
#define STEP_MAX_HS 64                 // head size at most: a lane's key and value in registers
#endif

namespace {

/* ---- the grid-wide barrier: a counter every block adds one to a phase ---- */

__device__ __forceinline__ void grid_arrive(unsigned *sync) {
    __syncthreads();  // the block's writes of the phase are done
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(sync, 1u);
    }
}

/* Until every block has arrived `phases` times. */
__device__ __forceinline__ void grid_wait(const unsigned *sync, unsigned phases) {
    if (threadIdx.x == 0) {
        const unsigned target = phases * gridDim.x;
        unsigned seen;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(sync) : "memory");
        } while (seen < target);
        __threadfence();
    }
    __syncthreads();
}

__device__ __forceinline__ uint4 ldcg16(const bf16 *p) {
    return __ldcg(reinterpret_cast<const uint4 *>(p));
}

/* n rows of width W written in this launch (contiguous) into shared xs. */
__device__ void stage_rows(bf16 *xs, const bf16 *src, int n, int W) {
    const int vecs = n * W / 8;
    for (int i = threadIdx.x; i < vecs; i += STEP_THREADS)
        reinterpret_cast<uint4 *>(xs)[i] = ldcg16(src + (size_t)i * 8);
    __syncthreads();
}

/* LayerNorm of the n rows staged in xs (C wide), in place, each element as
 * decode_norm computes it; warp j takes row j (a lane touches only its own
 * slices, so the passes need no barrier). */
__device__ void layernorm_staged(bf16 *xs, const bf16 *w, const bf16 *b, int n, int C, float eps) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int j = warp; j < n; j += STEP_WARPS) {
        bf16 *row = xs + (size_t)j * C;
        float sum = 0.0f;
        for (int c = lane * 8; c < C; c += 256) {
            const Vec16<bf16> v = load16(row + c);
            for (int e = 0; e < 8; e++) sum += __bfloat162float(v.v[e]);
        }
        const float mean = warp_sum(sum) / C;
        float var = 0.0f;
        for (int c = lane * 8; c < C; c += 256) {
            const Vec16<bf16> v = load16(row + c);
            for (int e = 0; e < 8; e++) {
                const float d = __bfloat162float(v.v[e]) - mean;
                var += d * d;
            }
        }
        const float rstd = rsqrtf(warp_sum(var) / C + eps);
        for (int c = lane * 8; c < C; c += 256) {
            const Vec16<bf16> v = load16(row + c), wv = load16(w + c), bv = load16(b + c);
            Vec16<bf16> o;
            for (int e = 0; e < 8; e++)
                o.v[e] = __float2bfloat16((__bfloat162float(v.v[e]) - mean) * rstd *
                                              __bfloat162float(wv.v[e]) +
                                          __bfloat162float(bv.v[e]));
            store16(row + c, o);
        }
    }
    __syncthreads();
}

/* ---- products: out (n, OC) = xs (n, IC) @ w^T, with the kind's epilogue ---- */

enum { OUT_BF16, OUT_GELU, OUT_RESIDUAL, OUT_FP32 };

struct product {
    const bf16 *w, *bias;  // (OC, IC); (OC) or NULL
    int IC, OC, kind;
    void *out;  // (n, OC): bf16 (OUT_RESIDUAL: the residual stream, added to), or fp32
};

/* A warp's walk over p: unit t is part t % units of row gw + GW (t / units),
 * a part being STEP_SLICES 16-byte slices a lane. The weights go through a
 * ring of STEP_RING units of the warp's own in shared memory, each lane
 * copying (cp.async) and later reading its own slots, so that STEP_RING - 1
 * units are in flight while one is multiplied, without registers holding
 * them. What a row's epilogue reads (bias; with OUT_RESIDUAL the residual)
 * is loaded once for the warp's first 32 / N rows, before the phase's
 * barrier, lane i N + j holding row slot i's for row j (the residual stream
 * is last written two barriers or more before a phase). */
struct product_walk {
    int units, gw, GW;
    __device__ __forceinline__ int row(int t) const { return gw + GW * (t / units); }
};

template <int N>
struct row_extras {
    float bias, res;  // for row slot lane / N and row lane % N
    __device__ __forceinline__ void load(const product &p, const product_walk &w, int n, int lane) {
        const int row = w.gw + w.GW * (lane / N), j = lane % N;
        bias = p.bias && row < p.OC ? __bfloat162float(p.bias[row]) : 0.0f;
        res = p.kind == OUT_RESIDUAL && row < p.OC && j < n ? residual_at(p, j, row) : 0.0f;
    }
    __device__ __forceinline__ static float residual_at(const product &p, int j, int row) {
        return __bfloat162float(__ushort_as_bfloat16(__ldcg(
            reinterpret_cast<const unsigned short *>((bf16 *)p.out + (size_t)j * p.OC + row))));
    }
};

__device__ __forceinline__ void issue_unit(uint4 *ring, const product &p, const product_walk &w,
                                           int t, int lane) {
    const int row = w.row(t), part = t % w.units;
    if (row < p.OC) {
        const bf16 *r = p.w + (size_t)row * p.IC;
        uint4 *stage = ring + t % STEP_RING * STEP_SLICES * 32 + lane;
#pragma unroll
        for (int i = 0; i < STEP_SLICES; i++) {
            const int k = part * STEP_UNIT + (i * 32 + lane) * 8;
            copy16_async(stage + i * 32, k < p.IC ? r + k : r, k < p.IC);
        }
    }
    copy_commit();  // a group for every unit, empty past the warp's last
}

template <int N>
__device__ __forceinline__ void product_prefetch(uint4 *ring, row_extras<N> &extras,
                                                 const product &p, const product_walk &w, int n,
                                                 int lane) {
    for (int t = 0; t < STEP_RING - 1; t++) issue_unit(ring, p, w, t, lane);
    extras.load(p, w, n, lane);
}

__device__ __forceinline__ void store_output(const product &p, int j, int row, float sum,
                                             float bias, float res) {
    const size_t at = (size_t)j * p.OC + row;
    if (p.kind == OUT_FP32) {
        ((float *)p.out)[at] = sum;
        return;
    }
    sum += bias;
    bf16 *out = (bf16 *)p.out;
    if (p.kind == OUT_GELU)
        out[at] = __float2bfloat16(gelu_tanh(sum));
    else if (p.kind == OUT_RESIDUAL)  // the branch rounded to bf16 first, as decode_norm sees it
        out[at] = __float2bfloat16(res + __bfloat162float(__float2bfloat16(sum)));
    else
        out[at] = __float2bfloat16(sum);
}

/* The warp's units of p for rows j < n of the N its sums are kept for: each
 * lane sums in IC order, a row's last part reduces them over the lanes in
 * warp_sum's tree whatever N is, and lane j (32 / N) stores row j's. */
template <int N>
__device__ __forceinline__ void product_run(uint4 *ring, const row_extras<N> &extras,
                                            const product &p, const product_walk &w,
                                            const bf16 *xs, int n, int lane) {
    float acc[N];
#pragma unroll
    for (int j = 0; j < N; j++) acc[j] = 0.0f;
    for (int t = 0;; t++) {
        const int row = w.row(t), part = t % w.units;
        if (row >= p.OC) break;
        issue_unit(ring, p, w, t + STEP_RING - 1, lane);
        copy_wait<STEP_RING - 1>();  // unit t's group is done
        const uint4 *stage = ring + t % STEP_RING * STEP_SLICES * 32 + lane;
#pragma unroll
        for (int i = 0; i < STEP_SLICES; i++) {
            const int k = part * STEP_UNIT + (i * 32 + lane) * 8;
            if (k >= p.IC) break;
            const uint4 wv = stage[i * 32];
#pragma unroll
            for (int j = 0; j < N; j++)
                if (j < n)
                    acc[j] = dot8(wv, *reinterpret_cast<const uint4 *>(xs + (size_t)j * p.IC + k),
                                  acc[j]);
        }
        if (part < w.units - 1) continue;
        warp_sum_scatter<N>(acc, lane);  // lane l holds row l / (32 / N)'s sum
        const int slot = t / w.units, j = lane / (32 / N), from = slot * N + j;
        float bias = __shfl_sync(0xFFFFFFFFu, extras.bias, from % 32);
        float res = __shfl_sync(0xFFFFFFFFu, extras.res, from % 32);
        if (lane % (32 / N) == 0 && j < n) {
            if (from >= 32) {  // past the rows loaded before the barrier
                bias = p.bias ? __bfloat162float(p.bias[row]) : 0.0f;
                res = p.kind == OUT_RESIDUAL ? row_extras<N>::residual_at(p, j, row) : 0.0f;
            }
            store_output(p, j, row, acc[0], bias, res);
        }
#pragma unroll
        for (int q = 0; q < N; q++) acc[q] = 0.0f;
    }
    copy_wait<0>();  // the empty groups past the last unit
}

/* ---- the cache attention: items of (row, head, STEP_RANGE positions) ---- */

struct att_item {
    int j, h, r, ranges;
};

/* Item t: rows in order, each row's heads, each head's ranges; false past the last. */
__device__ __forceinline__ bool item_at(const step_args &a, int t, att_item &it) {
    for (int j = 0; j < a.n; j++) {
        const int ranges = (a.pos[j] + STEP_RANGE) / STEP_RANGE;  // ceil((pos + 1) / RANGE)
        if (t < a.NH * ranges) {
            it = {j, t / ranges, t % ranges, ranges};
            return true;
        }
        t -= a.NH * ranges;
    }
    return false;
}

__device__ __forceinline__ size_t cache_at(const step_args &a, const att_item &it, int l, int p) {
    return (size_t)l * a.layer_kv + (((size_t)a.slot[it.j] * a.NH + it.h) * a.T + p) * a.hs;
}

/* The lane's position's cached key and value (zeros where the position is
 * the new one, whose come from qkv once its product is done, or past it). */
__device__ __forceinline__ void item_load(const step_args &a, const att_item &it, int l,
                                          uint4 (&k)[STEP_MAX_HS / 8], uint4 (&v)[STEP_MAX_HS / 8],
                                          int lane) {
    const int p = it.r * STEP_RANGE + lane;
    const bool cached = p < a.pos[it.j];
    const size_t at = cached ? cache_at(a, it, l, p) : 0;
#pragma unroll
    for (int s = 0; s < STEP_MAX_HS / 8; s++) {
        const bool load = cached && s * 8 < a.hs;
        k[s] = load ? ldcg16(a.keys + at + s * 8) : make_uint4(0, 0, 0, 0);
        v[s] = load ? ldcg16(a.values + at + s * 8) : make_uint4(0, 0, 0, 0);
    }
}

__device__ __forceinline__ float bf16_at(const uint4 (&v)[STEP_MAX_HS / 8], int d) {
    return __bfloat162float(reinterpret_cast<const bf16 *>(&v[d / 8])[d % 8]);
}

__device__ __forceinline__ void item_run(const step_args &a, const att_item &it, int l,
                         uint4 (&k)[STEP_MAX_HS / 8], uint4 (&v)[STEP_MAX_HS / 8], int lane) {
    const int hs = a.hs, C = a.C, pos = a.pos[it.j], p = it.r * STEP_RANGE + lane;
    const bf16 *qkv = a.qkv + (size_t)it.j * 3 * C;
    if (p == pos) {  // the new position: its key and value from qkv, and into the cache
        const size_t at = cache_at(a, it, l, p);
#pragma unroll
        for (int s = 0; s < STEP_MAX_HS / 8; s++) {
            if (s * 8 >= hs) break;
            k[s] = ldcg16(qkv + C + it.h * hs + s * 8);
            v[s] = ldcg16(qkv + 2 * C + it.h * hs + s * 8);
            *reinterpret_cast<uint4 *>(a.keys + at + s * 8) = k[s];
            *reinterpret_cast<uint4 *>(a.values + at + s * 8) = v[s];
        }
    }
    const float scale = rsqrtf((float)hs);
    float score = 0.0f;
#pragma unroll
    for (int s = 0; s < STEP_MAX_HS / 8; s++) {
        if (s * 8 >= hs) break;
        const uint4 q = ldcg16(qkv + it.h * hs + s * 8);
        const bf16 *qe = reinterpret_cast<const bf16 *>(&q), *ke = reinterpret_cast<const bf16 *>(&k[s]);
        for (int e = 0; e < 8; e++)
            score += __bfloat162float(qe[e]) * scale * __bfloat162float(ke[e]);
    }
    const bool valid = p <= pos;
    const float m = warp_max(valid ? score : -INFINITY);  // lane 0's position is always valid
    const float e = valid ? __expf(score - m) : 0.0f;
    const float sum = warp_sum(e);
    float *rec = a.partial + (((size_t)it.j * a.NH + it.h) * a.max_ranges + it.r) * (hs + 2);
#pragma unroll
    for (int d0 = 0; d0 < STEP_MAX_HS; d0 += 16) {  // 16 dims at a time: fewer registers
        if (d0 >= hs) break;
        float part[16];  // this lane's weighted value; summed over lanes, lane l holds dim l / 2's
#pragma unroll
        for (int d = 0; d < 16; d++) part[d] = d0 + d < hs ? e * bf16_at(v, d0 + d) : 0.0f;
        warp_sum_scatter<16>(part, lane);
        if (lane % 2 == 0 && d0 + lane / 2 < hs) rec[2 + d0 + lane / 2] = part[0];
    }
    if (lane == 0) rec[0] = m, rec[1] = sum;
    __syncwarp();
    __threadfence();  // the record before the count
    int *done = a.done + it.j * a.NH + it.h;
    int prior = 0;
    if (lane == 0) prior = atomicAdd(done, 1);
    if (__shfl_sync(0xFFFFFFFFu, prior, 0) != it.ranges - 1) return;
    __threadfence();  // the last: every record is visible
    /* the records' maxima and sums a lane a record, then the weighted sums in
     * record order, 16 records' loads in flight at a time */
    const float *recs = rec - (size_t)it.r * (hs + 2);
    float top = -INFINITY;
    for (int r = lane; r < it.ranges; r += 32) top = fmaxf(top, __ldcg(recs + (size_t)r * (hs + 2)));
    top = warp_max(top);
    float total = 0.0f, o[STEP_MAX_HS / 32] = {};
    for (int r0 = 0; r0 < it.ranges; r0 += 32) {
        const int r = r0 + lane;
        const float *q = recs + (size_t)r * (hs + 2);
        const float f = r < it.ranges ? __expf(__ldcg(q) - top) : 0.0f;
        if (r < it.ranges) total += __ldcg(q + 1) * f;
        const int count = min(32, it.ranges - r0);
#pragma unroll 16
        for (int i = 0; i < count; i++) {
            const float fi = __shfl_sync(0xFFFFFFFFu, f, i);
            const float *qi = recs + (size_t)(r0 + i) * (hs + 2) + 2;
#pragma unroll
            for (int h = 0; h < STEP_MAX_HS / 32; h++)
                if (h * 32 + lane < hs) o[h] += __ldcg(qi + h * 32 + lane) * fi;
        }
    }
    total = warp_sum(total);
    bf16 *out = a.atty + (size_t)it.j * C + it.h * hs;
#pragma unroll
    for (int h = 0; h < STEP_MAX_HS / 32; h++)
        if (h * 32 + lane < hs) out[h * 32 + lane] = __float2bfloat16(o[h] / total);
    if (lane == 0) *done = 0;  // for the next layer
}

/* ---- the step ---- */

#define RING_WORDS (STEP_RING * STEP_SLICES * 32)  // uint4 words of a warp's ring

__device__ __forceinline__ product_walk walk_of(const product &p, int gw, int GW) {
    return {(p.IC + STEP_UNIT - 1) / STEP_UNIT, gw, GW};
}

/* A measurement build (CUDA_DEFS=-DSTEP_CLOCKS) sums block 0's time from
 * each phase's start to the next's by kind of phase over launches and
 * prints the means every 256 launches; otherwise mark() does nothing. */
enum { PH_EMBED, PH_QKV, PH_ATTENTION, PH_ATTPROJ, PH_FC, PH_FCPROJ, PH_HEAD, PH_KINDS };
#ifdef STEP_CLOCKS
__device__ unsigned long long clock_sums[PH_KINDS];
__device__ unsigned clock_launches;
#endif
struct phase_clock {
    unsigned long long last = 0;
    int kind = -1;
    __device__ __forceinline__ void mark(int next) {
#ifdef STEP_CLOCKS
        if (blockIdx.x || threadIdx.x) return;
        unsigned long long now;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
        if (kind >= 0) clock_sums[kind] += now - last;
        last = now, kind = next;
        if (next >= 0 || ++clock_launches % 256) return;
        printf("decode_step, us a launch by phase (embed qkv attention attproj fc fcproj head):");
        for (int k = 0; k < PH_KINDS; k++) {
            printf(" %.2f", clock_sums[k] / 256.0 / 1000.0);
            clock_sums[k] = 0;
        }
        printf("\n");
#endif
    }
};

/* A thread's view of the step: its warp's ring and place, the barrier's count. */
template <int N>
struct step_thread {
    const step_args &a;
    uint4 *ring;  // the warp's weight ring
    bf16 *xs;     // the block's staged input rows
    int gw, GW, lane;
    unsigned phases = 0;
    phase_clock clock;
    row_extras<N> extras;

    __device__ __forceinline__ void wait(int kind) {
        grid_wait(a.sync, phases);
        clock.mark(kind);
    }
    __device__ __forceinline__ void arrive() { grid_arrive(a.sync), phases++; }
    /* p's first units in flight, the barrier, p's input rows (IC wide) from
     * src staged and, with a norm's weight nw (and bias nb), LayerNorm'd, then p. */
    __device__ __forceinline__ void product_phase(const product &p, int kind, const bf16 *src,
                                                  const bf16 *nw, const bf16 *nb) {
        const product_walk w = walk_of(p, gw, GW);
        product_prefetch<N>(ring, extras, p, w, a.n, lane);
        wait(kind);
        stage_rows(xs, src, a.n, p.IC);
        if (nw) layernorm_staged(xs, nw, nb, a.n, p.IC, a.eps);
        product_run<N>(ring, extras, p, w, xs, a.n, lane);
    }
};

/* N: the rows the products' sums are kept for (1, 2, 4 or 8 >= a.n). */
template <int N>
__global__ void __launch_bounds__(STEP_THREADS, 1) decode_step_kernel(const step_args a) {
    extern __shared__ uint4 shared_words[];
    const int lane = threadIdx.x % 32, n = a.n, C = a.C;
    const int GW = gridDim.x * STEP_WARPS, gw = threadIdx.x / 32 * gridDim.x + blockIdx.x;
    step_thread<N> st = {a, shared_words + threadIdx.x / 32 * RING_WORDS,
                         reinterpret_cast<bf16 *>(shared_words + STEP_WARPS * RING_WORDS), gw, GW,
                         lane};
    const weight_table &wt = a.weights;

    st.clock.mark(PH_EMBED);
    for (int i = blockIdx.x * STEP_THREADS + threadIdx.x; i < n * C / 8; i += GW * 32)
        embed_slice(a.x, a.tok, a.pos, wt.at(P_WTE), wt.at(P_WPE), i / (C / 8), i % (C / 8) * 8, C);
    st.arrive();

    for (int l = 0; l < a.L; l++) {
        st.product_phase({wt.at(P_QKVW, l), wt.at(P_QKVB, l), C, 3 * C, OUT_BF16, a.qkv}, PH_QKV,
                         a.x, wt.at(P_LN1W, l), wt.at(P_LN1B, l));
        st.arrive();

        att_item it;
        uint4 k[STEP_MAX_HS / 8], v[STEP_MAX_HS / 8];
        int t = gw;
        bool have = item_at(a, t, it);
        if (have) item_load(a, it, l, k, v, lane);
        st.wait(PH_ATTENTION);
        while (have) {
            item_run(a, it, l, k, v, lane);
            t += GW;
            if ((have = item_at(a, t, it))) item_load(a, it, l, k, v, lane);
        }
        st.arrive();

        st.product_phase({wt.at(P_ATTPROJW, l), wt.at(P_ATTPROJB, l), C, C, OUT_RESIDUAL, a.x},
                         PH_ATTPROJ, a.atty, nullptr, nullptr);
        st.arrive();
        st.product_phase({wt.at(P_FCW, l), wt.at(P_FCB, l), C, 4 * C, OUT_GELU, a.fch}, PH_FC,
                         a.x, wt.at(P_LN2W, l), wt.at(P_LN2B, l));
        st.arrive();
        st.product_phase({wt.at(P_FCPROJW, l), wt.at(P_FCPROJB, l), 4 * C, C, OUT_RESIDUAL, a.x},
                         PH_FCPROJ, a.fch, nullptr, nullptr);
        st.arrive();
    }
    st.product_phase({wt.at(P_WTE), nullptr, C, a.Vp, OUT_FP32, a.logits}, PH_HEAD, a.x,
                     wt.at(P_LNFW), wt.at(P_LNFB));
    st.clock.mark(-1);
}

/* The warps' rings, then n rows of 4C (the widest input a phase stages). */
size_t shared_bytes(int n, int C) {
    return STEP_WARPS * RING_WORDS * sizeof(uint4) + (size_t)n * 4 * C * sizeof(bf16);
}

}  // namespace

bool decode_step_fits(const step_args &a, int max_n) {
    int device = 0, major = 0, cooperative = 0, optin = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return false;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device);
    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (major < 9 || !cooperative || a.C % 8 || a.hs % 8 || a.hs > STEP_MAX_HS ||
        shared_bytes(max_n, a.C) > (size_t)optin)
        return false;
    static const int used[] = {P_WTE, P_WPE, P_LN1W, P_LN1B, P_QKVW, P_QKVB, P_ATTPROJW,
                               P_ATTPROJB, P_LN2W, P_LN2B, P_FCW, P_FCB, P_FCPROJW, P_FCPROJB,
                               P_LNFW, P_LNFB};
    for (int t : used)  // 16-byte slices of every row of every layer
        if ((uintptr_t)a.weights.tensor[t] % 16 || a.weights.layer_stride[t] % 8) return false;
    return true;
}

llmc_status decode_step(const step_args &a, cudaStream_t s) {
    void (*kernel)(const step_args) = a.n == 1   ? decode_step_kernel<1>
                                      : a.n == 2 ? decode_step_kernel<2>
                                      : a.n <= 4 ? decode_step_kernel<4>
                                                 : decode_step_kernel<8>;
    const size_t smem = shared_bytes(a.n, a.C);
    CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    int device = 0, sms = 0, per_sm = 0;
    CUDA_TRY(cudaGetDevice(&device));
    CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, STEP_THREADS, smem));
    if (per_sm < 1)
        return llmc_error(LLMC_ERR_DEVICE, "the fused decode step does not fit on an SM "
                                           "(%zu bytes of shared memory)", smem);
    CUDA_TRY(cudaMemsetAsync(a.sync, 0, sizeof(unsigned), s));
    cudaLaunchAttribute attrs[2];
    attrs[0].id = cudaLaunchAttributeCooperative;  // all blocks resident, or an error: no hang
    attrs[0].val.cooperative = 1;
    attrs[1].id = cudaLaunchAttributePreferredSharedMemoryCarveout;
    attrs[1].val.sharedMemCarveout = cudaSharedmemCarveoutMaxShared;
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(sms * per_sm);
    config.blockDim = dim3(STEP_THREADS);
    config.dynamicSmemBytes = smem;
    config.stream = s;
    config.attrs = attrs;
    config.numAttrs = 2;
    CUDA_TRY(cudaLaunchKernelEx(&config, kernel, a));
    return LLMC_OK;
}
