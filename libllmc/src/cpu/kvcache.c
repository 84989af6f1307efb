/*
 * kvcache.c: the key/value cache of generation and causal attention over
 * it, for rows that are single tokens of cached sequences.
 *
 * Layout of one layer's keys (and alike its values): (S, NKV, T, hs), so
 * that the keys a query reads (one slot, one key/value head, positions
 * 0..pos) are one contiguous run of (pos + 1) * hs floats. A qkv row holds
 * the NH query heads, then the NKV key heads, then the NKV value heads
 * (GPT-2: NKV = NH); query head h reads key/value head h / (NH / NKV).
 */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "layers.h"

void kv_store(float *keys, float *values, const float *qkv, const int32_t *slot,
              const int32_t *pos, int n, int C, int NH, int NKV, int T) {
    const int hs = C / NH;
    const size_t width = (size_t)(NH + 2 * NKV) * hs;
    for (int i = 0; i < n; i++) {
        const float *k = qkv + i * width + C, *v = k + (size_t)NKV * hs;
        for (int h = 0; h < NKV; h++) {
            const size_t at = (((size_t)slot[i] * NKV + h) * T + pos[i]) * hs;
            memcpy(keys + at, k + h * hs, hs * sizeof(float));
            memcpy(values + at, v + h * hs, hs * sizeof(float));
        }
    }
}

void attention_cached(float *out, float *scratch, const float *qkv, const float *keys,
                      const float *values, const int32_t *slot, const int32_t *pos, int n, int C,
                      int NH, int NKV, int T) {
    const int hs = C / NH, group = NH / NKV;
    const size_t width = (size_t)(NH + 2 * NKV) * hs;
    const float scale = 1.0f / sqrtf((float)hs);
    double work = 0.0;
    for (int i = 0; i < n; i++) work += (double)(pos[i] + 1) * C;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (work * 2 >= PARALLEL_MIN_FLOATS)
    for (int i = 0; i < n; i++) {
        for (int h = 0; h < NH; h++) {
            float *score = scratch + (size_t)omp_get_thread_num() * T;
            const float *q = qkv + i * width + h * hs;
            const size_t base = ((size_t)slot[i] * NKV + h / group) * T * hs;
            const float *k = keys + base, *v = values + base;
            const int len = pos[i] + 1;
            float max = -INFINITY;
            for (int t = 0; t < len; t++) {
                float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                for (int c = 0; c < hs; c++) dot += q[c] * k[(size_t)t * hs + c];
                score[t] = dot * scale;
                max = score[t] > max ? score[t] : max;
            }
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (int t = 0; t < len; t++) {
                score[t] = vec_expf(score[t] - max);
                sum += score[t];
            }
            const float inv = 1.0f / sum;
            float *o = out + (size_t)i * C + h * hs;
            memset(o, 0, hs * sizeof(float));
            for (int t = 0; t < len; t++) {
                const float p = score[t] * inv;
#pragma omp simd
                for (int c = 0; c < hs; c++) o[c] += p * v[(size_t)t * hs + c];
            }
        }
    }
}
