/*
 * kvcache.cu: the key/value cache of generation and causal attention over
 * it (decode.cuh), bf16 in memory, fp32 arithmetic.
 *
 * A qkv row holds the NH query heads, then the NKV key heads, then the NKV
 * value heads (GPT-2: NKV = NH); one layer's cache is (S, NKV, T, hs) keys
 * and alike values, and query head h reads key/value head h / (NH / NKV), as
 * the CPU backend's cpu/kvcache.c.
 *
 * Attention: one block per (row, head); its warps take every WARPS-th
 * position, each keeping a running max, sum and weighted sum of values
 * (online softmax), merged across warps at the end. At batch 1 a decode
 * step has only NH blocks, so many warps per block keep the reads of a long
 * cache spread over enough threads.
 */
#include "decode.cuh"

#define ATTN_WARPS 16
#define MAX_HEAD_DIMS_PER_LANE 4  // head size <= 128

__global__ void decode_embed_kernel(bf16 *x, const int *tokens, const int *pos, const bf16 *wte,
                                    const bf16 *wpe, int n, int C) {
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
    kv_store_kernel<<<ceil_div(work, 256), 256, 0, s>>>(keys, values, qkv, slot, pos, n, NH, NKV,
                                                        hs, T);
}

__global__ void attention_cached_kernel(bf16 *out, const bf16 *qkv, const bf16 *keys,
                                        const bf16 *values, const int *slot, const int *pos,
                                        int NH, int NKV, int hs, int T) {
    const int r = blockIdx.x, h = blockIdx.y, C = NH * hs;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const float scale = rsqrtf((float)hs);
    const size_t base = ((size_t)slot[r] * NKV + h / (NH / NKV)) * T * hs;
    const bf16 *q = qkv + (size_t)r * (NH + 2 * NKV) * hs + h * hs;
    float qd[MAX_HEAD_DIMS_PER_LANE], acc[MAX_HEAD_DIMS_PER_LANE];
    for (int j = 0; j < MAX_HEAD_DIMS_PER_LANE; j++) {
        const int d = lane + 32 * j;
        qd[j] = d < hs ? __bfloat162float(q[d]) * scale : 0.0f;
        acc[j] = 0.0f;
    }
    float max = -INFINITY, sum = 0.0f;
    const int len = pos[r] + 1;
    for (int t = warp; t < len; t += ATTN_WARPS) {
        const bf16 *k = keys + base + (size_t)t * hs, *v = values + base + (size_t)t * hs;
        float dot = 0.0f;
        for (int j = 0; j < MAX_HEAD_DIMS_PER_LANE; j++) {
            const int d = lane + 32 * j;
            if (d < hs) dot += qd[j] * __bfloat162float(k[d]);
        }
        const float score = warp_sum(dot);
        const float new_max = fmaxf(max, score);
        const float correction = __expf(max - new_max), p = __expf(score - new_max);
        sum = sum * correction + p;
        for (int j = 0; j < MAX_HEAD_DIMS_PER_LANE; j++) {
            const int d = lane + 32 * j;
            acc[j] = acc[j] * correction + (d < hs ? p * __bfloat162float(v[d]) : 0.0f);
        }
        max = new_max;
    }
    __shared__ float warp_max_s[ATTN_WARPS], warp_sum_s[ATTN_WARPS];
    __shared__ float warp_acc[ATTN_WARPS][32 * MAX_HEAD_DIMS_PER_LANE];
    if (lane == 0) {
        warp_max_s[warp] = max;
        warp_sum_s[warp] = sum;
    }
    for (int j = 0; j < MAX_HEAD_DIMS_PER_LANE; j++) warp_acc[warp][lane + 32 * j] = acc[j];
    __syncthreads();
    float total_max = -INFINITY;
    for (int w = 0; w < ATTN_WARPS; w++) total_max = fmaxf(total_max, warp_max_s[w]);
    for (int d = threadIdx.x; d < hs; d += blockDim.x) {
        float num = 0.0f, den = 0.0f;
        for (int w = 0; w < ATTN_WARPS; w++) {
            if (warp_sum_s[w] == 0.0f) continue;  // a warp that saw no position
            const float f = __expf(warp_max_s[w] - total_max);
            num += warp_acc[w][d] * f;
            den += warp_sum_s[w] * f;
        }
        out[(size_t)r * C + h * hs + d] = __float2bfloat16(num / den);
    }
}

void attention_cached(bf16 *out, const bf16 *qkv, const bf16 *keys, const bf16 *values,
                      const int *slot, const int *pos, int n, int NH, int NKV, int hs, int T,
                      cudaStream_t s) {
    attention_cached_kernel<<<dim3(n, NH), 32 * ATTN_WARPS, 0, s>>>(out, qkv, keys, values, slot,
                                                                    pos, NH, NKV, hs, T);
}
