/*
 * kvcache.cu: the key/value cache of generation and causal attention over
 * it (decode.cuh), bf16 in memory, fp32 arithmetic.
 *
 * A qkv row holds the NH query heads, then the NKV key heads, then the NKV
 * value heads (GPT-2: NKV = NH); one layer's cache is (S, NKV, T, hs) keys
 * and alike values, and query head h reads key/value head h / (NH / NKV), as
 * the CPU backend's cpu/kvcache.c.
 *
 * Attention (flash-decoding): the len = pos + 1 positions a row sees are cut
 * into ranges of attn_chunk(len) positions, a block per (row, head, range)
 * at batch 1, so that a step of a long cache still fills the GPU, and fewer
 * blocks, each looping over several ranges, at larger batches. For a range,
 * groups of hs/8 lanes (rounded up to a power of two) take one position
 * each, a 16-byte slice of its key and value per lane, ATTN_INFLIGHT
 * positions per group a round, each group keeping a running max, sum and
 * weighted sum of values (online softmax). The slices are copied
 * asynchronously (cp.async) into shared memory, each lane's into slots of
 * its own in a ring of ATTN_STAGES rounds, running that many rounds ahead
 * of the arithmetic through the block's ranges, so that keys and values
 * stay in flight while a round is scored and a range merged (loaded into
 * registers, a block had at most one round in flight, and none while it
 * scored: 2.2 TB/s at d48 batch 64, H200). A warp merges its groups by
 * shuffles in a fixed tree order, the block its warps in warp order, into a
 * partial (max, sum, hs sums). The last of a (row, head)'s
 * blocks to finish (a counter) merges the partials in range order. The
 * ranges depend on len alone and every merge has a fixed order, so a row's
 * result depends neither on its batch nor on which block finishes last.
 *
 * With store (a step: each row the newest position of its own slot), the
 * attention also does kv_store's work: each row's new key and value are
 * read from qkv where the cache would give them, and the last range's block
 * of each key/value head writes them into the cache, so a step's layer has
 * one kernel fewer. Rows of one slot in one call (prefill) need kv_store
 * first: a row reads the keys of the rows before it.
 */
#include <algorithm>

#include "decode.cuh"

#define ATTN_THREADS 128   // >= the largest head size, 128
#define ATTN_INFLIGHT 3    // positions a lane group takes per round
/* positions per range at least: one round of a block's groups at hs = 64 (8 lanes a group) */
#define ATTN_MIN_CHUNK (ATTN_INFLIGHT * ATTN_THREADS / 8)
#ifndef ATTN_STAGES
#define ATTN_STAGES 3      // rounds in flight a block, 12 KB each (4: past 48 KB a block)
#endif
#ifndef ATTN_MIN_BLOCKS
#define ATTN_MIN_BLOCKS 5  // blocks an SM holds at once (45 KB shared memory, <= 96 registers)
#endif
#ifndef ATTN_WAVES
#define ATTN_WAVES 4       // the blocks of a launch, in rounds of what the SMs hold at once
#endif

__global__ void decode_embed_kernel(bf16 *x, const int *tokens, const int *pos, const bf16 *wte,
                                    const bf16 *wpe, int n, int C) {
    pdl_launch_dependents();  // the norm that follows may start
    const int vecs = C / 8;
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n * vecs) return;
    const int r = (int)(i / vecs), c = (int)(i % vecs) * 8;
    Vec16<bf16> a = load16(wte + (size_t)tokens[r] * C + c), p = load16(wpe + (size_t)pos[r] * C + c);
    Vec16<bf16> o;
    for (int k = 0; k < 8; k++)
        o.v[k] = __float2bfloat16(__bfloat162float(a.v[k]) + __bfloat162float(p.v[k]));
    store16(x + (size_t)r * C + c, o);
}

void decode_embed(bf16 *x, const int *tokens, const int *pos, const bf16 *wte, const bf16 *wpe,
                  int n, int C, cudaStream_t s) {
    const long work = (long)n * (C / 8);
    decode_embed_kernel<<<ceil_div(work, 256), 256, 0, s>>>(x, tokens, pos, wte, wpe, n, C);
}

__global__ void kv_store_kernel(bf16 *keys, bf16 *values, const bf16 *qkv, const int *slot,
                                const int *pos, int n, int NH, int NKV, int hs, int T) {
    pdl_launch_dependents();
    pdl_wait();  // qkv is the GEMV's before
    const int kv_width = NKV * hs, vecs = 2 * kv_width / 8;
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n * vecs) return;
    const int r = (int)(i / vecs), c = (int)(i % vecs) * 8;  // c in [0, 2 NKV hs): keys then values
    const int which = c / kv_width, h = (c % kv_width) / hs, d = (c % kv_width) % hs;
    bf16 *dst = (which ? values : keys) + (((size_t)slot[r] * NKV + h) * T + pos[r]) * hs + d;
    store16(dst, load16(qkv + (size_t)r * (NH + 2 * NKV) * hs + NH * hs + c));
}

void kv_store(bf16 *keys, bf16 *values, const bf16 *qkv, const int *slot, const int *pos, int n,
              int NH, int NKV, int hs, int T, cudaStream_t s) {
    const long work = (long)n * (2 * NKV * hs / 8);
    launch_pdl(kv_store_kernel, dim3(ceil_div(work, 256)), dim3(256), s, keys, values, qkv, slot,
               pos, n, NH, NKV, hs, T);
}

/* Positions per range of a row that sees len positions: at least
 * ATTN_MIN_CHUNK (one round of a block's groups at hs = 64), at most
 * ATTN_MAX_SPLITS ranges. */
__device__ __forceinline__ int attn_chunk(int len) {
    return max(ATTN_MIN_CHUNK, (len + ATTN_MAX_SPLITS - 1) / ATTN_MAX_SPLITS);
}

/* 16 bytes from global to shared memory, asynchronously and through L2 only
 * (the cache is read once a step), or 16 zeros without reading src where
 * !valid; the copies a thread issued are waited for by copy_wait, in groups
 * (copy_commit closes one), and are then visible to that thread. The
 * "memory" clobbers keep the compiler's shared memory accesses on their side
 * of each. */
__device__ __forceinline__ void copy16_async(void *dst, const void *src, bool valid) {
    const unsigned shared = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(shared), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void copy_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}
/* waits until at most pending of the thread's groups, the newest, are in flight */
template <int pending>
__device__ __forceinline__ void copy_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(pending) : "memory");
}

/* A lane group's running softmax over its positions (8 dims per lane). */
struct Softmax {
    float max, sum, acc[8];
};

/* Adds a round of U positions (keys k, values v; zeros in the lanes past hs)
 * to a lane group's running softmax, of which the first valid count: their
 * scores first, then one correction of the running sums for the round's max
 * (a correction per position cost d48 batch 64 1.6%, H200). Every lane of
 * the warp calls it (the scores' shuffles). */
template <int LP, int U>
__device__ __forceinline__ void absorb_round(Softmax &m, const float (&q)[8],
                                             const Vec16<bf16> (&k)[U], const Vec16<bf16> (&v)[U],
                                             int valid) {
    float score[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
        score[u] = 0.0f;
        for (int e = 0; e < 8; e++) score[u] += q[e] * __bfloat162float(k[u].v[e]);
    }
#pragma unroll
    for (int o = LP / 2; o > 0; o >>= 1)
#pragma unroll
        for (int u = 0; u < U; u++) score[u] += __shfl_xor_sync(0xFFFFFFFFu, score[u], o);
    if (valid <= 0) return;
    float new_max = m.max;
#pragma unroll
    for (int u = 0; u < U; u++)
        if (u < valid) new_max = fmaxf(new_max, score[u]);
    const float correction = __expf(m.max - new_max);
    m.sum *= correction;
    for (int e = 0; e < 8; e++) m.acc[e] *= correction;
#pragma unroll
    for (int u = 0; u < U; u++) {
        if (u >= valid) break;
        const float p = __expf(score[u] - new_max);
        m.sum += p;
        for (int e = 0; e < 8; e++) m.acc[e] += p * __bfloat162float(v[u].v[e]);
    }
    m.max = new_max;
}

/* Merges the running softmaxes of a warp's lane groups, pairing lanes LP,
 * 2 LP, ... apart in that order, so that group 0's lanes end with the
 * warp's merge, summed in the same order in every launch. */
template <int LP>
__device__ __forceinline__ void merge_warp(Softmax &m) {
#pragma unroll
    for (int o = LP; o < 32; o <<= 1) {
        const float other_max = __shfl_xor_sync(0xFFFFFFFFu, m.max, o);
        const float other_sum = __shfl_xor_sync(0xFFFFFFFFu, m.sum, o);
        float other_acc[8];
        for (int e = 0; e < 8; e++) other_acc[e] = __shfl_xor_sync(0xFFFFFFFFu, m.acc[e], o);
        const float new_max = fmaxf(m.max, other_max);
        if (new_max == -INFINITY) continue;  // neither saw a position
        const float mine = __expf(m.max - new_max), theirs = __expf(other_max - new_max);
        m.sum = m.sum * mine + other_sum * theirs;
        for (int e = 0; e < 8; e++) m.acc[e] = m.acc[e] * mine + other_acc[e] * theirs;
        m.max = new_max;
    }
}

/* Block (r, h, z): LP lanes per position; its ranges are z, z + gridDim.z, ...
 * (gridDim.z <= ATTN_MAX_SPLITS, chosen from the batch: attention_cached), each
 * computed alone as if it had a block of its own, so that a range's record
 * does not depend on the grid; only the copies of keys and values run on
 * from one range into the next (the file's comment). partial: one record
 * of hs + 2 floats (max, sum, hs sums) per (row, head, range); done: a
 * counter of ranges per (row, head), 0 between launches. store: the file's
 * comment; the row's new position, the last, is then taken from qkv after
 * the cached ones, by the block's first group (a loop over cached positions
 * only keeps the registers, and so the blocks an SM holds, of the kernel
 * without store). */
template <int LP>
__global__ void __launch_bounds__(ATTN_THREADS, ATTN_MIN_BLOCKS)
    attention_cached_kernel(bf16 *out, float *partial, int *done, const bf16 *qkv,
                            bf16 *keys, bf16 *values, const int *slot, const int *pos,
                            int NH, int NKV, int hs, int T, bool store) {
    pdl_launch_dependents();  // the GEMV that follows (gemv.cu) may start loading its weights
    constexpr int GROUPS = ATTN_THREADS / LP;
    /* the rows' slots and positions were uploaded (or queued by greedy.cu) before the
     * forward's first kernel, a plain launch: complete before any of this step starts */
    const int r = blockIdx.x, h = blockIdx.y;
    const int len = pos[r] + 1, chunk = attn_chunk(len), ranges = (len + chunk - 1) / chunk;
    int range = blockIdx.z;
    if (range >= ranges) return;  // the whole block: a shorter row than the grid's longest
    const int group = threadIdx.x / LP, d = threadIdx.x % LP * 8;
    const bool owns = d < hs;  // the lanes past hs (hs/8 not a power of two) add zeros
    const int kvh = h / (NH / NKV);
    const size_t head = ((size_t)slot[r] * NKV + kvh) * T * hs, base = head + d;
    /* the cached positions of a range end before the new one, which comes from qkv */
    auto cached_end_of = [&](int rg) {
        const int e = min(len, (rg + 1) * chunk);
        return store ? min(e, len - 1) : e;
    };
    /* The ring: a thread's slices of a round's keys and values in slots of its own, a
     * warp's 32 threads in 32 consecutive ones (no bank conflicts). A thread reads only
     * what it copied itself, so waiting for its own copies is all the ring needs, and a
     * stage it has read into registers takes its next copy at once (its reads come
     * first in program order): ATTN_STAGES rounds in flight while one is scored. */
    constexpr int ROUND = ATTN_INFLIGHT * GROUPS;  // positions a round
    __shared__ Vec16<bf16> ring[ATTN_STAGES][ATTN_INFLIGHT][2][ATTN_THREADS];  // 2: keys, values
    /* The rounds are copied in the order the loop below takes them: a range's from its
     * first position to its cached end, then the block's next range's (one whose
     * positions are all new, store's len - 1 first in it, has none). Past the block's
     * last round a copy is an empty group, so that copy_wait's count holds throughout. */
    int copy_range = range, copy_t0 = range * chunk, copy_end = cached_end_of(range);
    auto copy_round = [&](int stage) {
        while (copy_range < ranges && copy_t0 >= copy_end) {
            copy_range += gridDim.z;
            copy_t0 = copy_range * chunk;
            copy_end = cached_end_of(copy_range);
        }
        if (copy_range < ranges) {
#pragma unroll
            for (int u = 0; u < ATTN_INFLIGHT; u++) {
                const int t = copy_t0 + u * GROUPS + group;
                const bool valid = owns && t < copy_end;  // else zeros, as the lanes past hs add
                const size_t at = valid ? base + (size_t)t * hs : 0;
                copy16_async(&ring[stage][u][0][threadIdx.x], keys + at, valid);
                copy16_async(&ring[stage][u][1][threadIdx.x], values + at, valid);
            }
            copy_t0 += ROUND;
        }
        copy_commit();
    };
    /* In a step the cached positions are earlier steps' (complete, as above), so the
     * first rounds copy while the qkv GEMV before still runs; in a prefill kv_store, the
     * kernel before, writes some of them: they wait for it (the second wait then returns
     * at once). */
    if (!store) pdl_wait();
    for (int stage = 0; stage < ATTN_STAGES; stage++) copy_round(stage);
    pdl_wait();  // qkv
    const float scale = rsqrtf((float)hs);
    const size_t qkv_row = (size_t)r * (NH + 2 * NKV) * hs;
    float q[8] = {};
    if (owns) {
        const Vec16<bf16> qv = load16(qkv + qkv_row + h * hs + d);
        for (int k = 0; k < 8; k++) q[k] = __bfloat162float(qv.v[k]) * scale;
    }
    /* the block's warps, merged in warp order by thread i < hs for dim i */
    constexpr int WARPS = ATTN_THREADS / 32;
    __shared__ float warp_max[WARPS], warp_sum[WARPS];
    /* warp w's dim i at w * LP * 8 + i; then, in a (row, head)'s last block, its records */
    constexpr int MERGE_FLOATS = ATTN_MAX_SPLITS * (ATTN_THREADS + 2);
    static_assert(WARPS * LP * 8 <= MERGE_FLOATS, "a warp's dims fit the records' space");
    __shared__ float merge_acc[MERGE_FLOATS];
    __shared__ bool last;  // this block merges the (row, head)'s records
    /* Static shared memory: at most 48 KB a block (more would need dynamic shared memory,
     * which launch_pdl does not pass), and ATTN_MIN_BLOCKS blocks' of it in an SM (an
     * H200's: 228 KB, 1 KB of it reserved a block), as attention_cached's grid assumes. */
    constexpr size_t SHARED =
        sizeof(ring) + sizeof(warp_max) + sizeof(warp_sum) + sizeof(merge_acc) + sizeof(last);
    static_assert(SHARED <= 48 * 1024, "fewer ATTN_STAGES");
    static_assert(ATTN_MIN_BLOCKS * (SHARED + 1024) <= 228 * 1024, "fewer ATTN_MIN_BLOCKS");
    const int i = threadIdx.x;
    const size_t record = hs + 2, first = ((size_t)r * NH + h) * ATTN_MAX_SPLITS;
    bf16 *o = out + ((size_t)r * NH + h) * hs;
    int counted = 0;  // ranges this block has recorded
    int stage = 0;    // the ring's stage of the next round
    while (true) {
        const int begin = range * chunk, end = min(len, begin + chunk);
        const int cached_end = cached_end_of(range);
        Softmax m = {-INFINITY, 0.0f, {}};
        /* block-uniform trip count: every lane reaches the group's shuffles */
        for (int t0 = begin; t0 < cached_end; t0 += ROUND) {
            copy_wait<ATTN_STAGES - 1>();  // the round's group, the oldest in flight, is in
            Vec16<bf16> kv[ATTN_INFLIGHT], vv[ATTN_INFLIGHT];
#pragma unroll
            for (int u = 0; u < ATTN_INFLIGHT; u++) {
                kv[u] = ring[stage][u][0][threadIdx.x];
                vv[u] = ring[stage][u][1][threadIdx.x];
            }
            copy_round(stage);  // the round ATTN_STAGES on, into the stage just read
            stage = stage + 1 < ATTN_STAGES ? stage + 1 : 0;
            const int left = cached_end - t0 - group;  // positions from this group's first on
            absorb_round<LP, ATTN_INFLIGHT>(
                m, q, kv, vv, left <= 0 ? 0 : min(ATTN_INFLIGHT, (left + GROUPS - 1) / GROUPS));
        }
        if (cached_end < end) {  // store, the last range: the new position, from qkv
            const bf16 *new_key = qkv + qkv_row + (size_t)(NH + kvh) * hs;
            const bf16 *new_value = new_key + NKV * hs;
            Vec16<bf16> k[1] = {}, v[1] = {};
            if (owns && group == 0) {
                k[0] = load16(new_key + d);
                v[0] = load16(new_value + d);
            }
            absorb_round<LP, 1>(m, q, k, v, group == 0);
            if (h % (NH / NKV) == 0)  // one block per key/value head writes them into the cache
                for (int j = threadIdx.x * 8; j < hs; j += ATTN_THREADS * 8) {
                    store16(keys + head + (size_t)(len - 1) * hs + j, load16(new_key + j));
                    store16(values + head + (size_t)(len - 1) * hs + j, load16(new_value + j));
                }
        }
        /* the warp's groups merge by shuffles, then its group 0 lanes hand the
         * warp's record to the block's merge */
        merge_warp<LP>(m);
        const bool writes = threadIdx.x % 32 < LP;
        const int warp = threadIdx.x / 32;
        if (writes) {
            if (threadIdx.x % LP == 0) {
                warp_max[warp] = m.max;
                warp_sum[warp] = m.sum;
            }
            for (int k = 0; k < 8; k++) merge_acc[warp * LP * 8 + d + k] = m.acc[k];
        }
        __syncthreads();
        float block_max = -INFINITY, num = 0.0f, den = 0.0f;
        if (i < hs) {
            for (int w = 0; w < WARPS; w++) block_max = fmaxf(block_max, warp_max[w]);
            for (int w = 0; w < WARPS; w++) {
                if (warp_sum[w] == 0.0f) continue;  // a warp that saw no position
                const float f = __expf(warp_max[w] - block_max);
                num += merge_acc[w * LP * 8 + i] * f;
                den += warp_sum[w] * f;
            }
        }
        if (ranges == 1) {  // the row's only range: no partial to merge
            if (i < hs) o[i] = __float2bfloat16(num / den);
            return;
        }
        float *mine = partial + (first + range) * record;
        if (i < hs) mine[2 + i] = num;
        if (i == 0) {
            mine[0] = block_max;
            mine[1] = den;
        }
        counted++;
        range += gridDim.z;
        if (range >= ranges) break;
        __syncthreads();  // the shared merge arrays serve the next range
    }
    /* publish the records before counting them (the CUDA threadFenceReduction pattern) */
    __threadfence();
    __syncthreads();
    if (i == 0) {
        int *counter = done + (size_t)r * NH + h;
        last = atomicAdd(counter, counted) == ranges - counted;
        if (last) *counter = 0;  // every range has counted: ready for the next launch
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    /* the other blocks' records from L2, all loads in one round, into the shared
     * memory the group merge is done with (every thread passed the barrier above) */
    const float *rec = partial + first * record;
    float *recs = merge_acc;
    for (int k = threadIdx.x; k < ranges * (int)record; k += ATTN_THREADS) recs[k] = __ldcg(rec + k);
    __syncthreads();
    if (i >= hs) return;
    float row_max = -INFINITY;
    for (int j = 0; j < ranges; j++) row_max = fmaxf(row_max, recs[j * record]);
    float num = 0.0f, den = 0.0f;
    for (int j = 0; j < ranges; j++) {
        const float f = __expf(recs[j * record] - row_max);
        num += recs[j * record + 2 + i] * f;
        den += recs[j * record + 1] * f;
    }
    o[i] = __float2bfloat16(num / den);
}

void attention_cached(bf16 *out, float *partial, int *done, const bf16 *qkv, bf16 *keys,
                      bf16 *values, const int *slot, const int *pos, int n, int NH, int NKV,
                      int hs, int T, bool store, cudaStream_t s) {
    /* Blocks a (row, head), at most one a range, enough for ATTN_WAVES rounds of what
     * the SMs hold: a batch-1 step of d48 takes a block a range (25 heads x 16), batch
     * 64 two blocks a (row, head), each looping over its ranges, where a block a range
     * (25,600 blocks of a few KB of keys and values each) ran 5% slower (H200). */
    int device = 0, sms = 132;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    const int resident = ATTN_MIN_BLOCKS * sms;
    const int blocks_per_pair =
        std::min(ATTN_MAX_SPLITS, std::max(1, ceil_div(ATTN_WAVES * resident, n * NH)));
    const dim3 grid(n, NH, blocks_per_pair);
    switch (pow2_ceil(hs / 8)) {  // lanes per position
#define ATTN_CASE(LP)                                                                   \
    case LP:                                                                            \
        launch_pdl(attention_cached_kernel<LP>, grid, dim3(ATTN_THREADS), s, out, partial, \
                   done, qkv, keys, values, slot, pos, NH, NKV, hs, T, store);          \
        break;
        ATTN_CASE(1) ATTN_CASE(2) ATTN_CASE(4) ATTN_CASE(8) ATTN_CASE(16)
#undef ATTN_CASE
    }
}
