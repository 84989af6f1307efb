/*
 * attention.c: causal multi-head self-attention, each (batch row, head)
 * pair a few matrix products through gemm_serial on one OpenMP thread.
 *
 * For one head, with q, k, v the (T, hs) slices of qkv:
 *   S = q k^T / sqrt(hs), P = causal softmax(S) (stored), y = P v.
 * Backward: dP = dy v^T, dv = P^T dy, dS = P * (dP - rowsum(P * dP)),
 *   dq = dS k / sqrt(hs), dk = dS^T q / sqrt(hs).
 * P and dS are zero above the diagonal, so the products go tile by tile
 * (ATTENTION_TILE rows of P, or columns for dv and dk) over the keys or
 * queries a tile can see: about half the square's work at long T. Only the
 * diagonal tiles multiply zeros, which add nothing. Tiles are cut by the
 * shape alone, so every element comes out the same for any thread count.
 * The backward pass runs a key/value head's query heads in order on one
 * thread, which adds their dk and dv contributions in that fixed order.
 */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "layers.h"

static int min_int(int a, int b) { return a < b ? a : b; }

void attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH,
                       int NKV) {
    const int hs = C / NH, C3 = C + 2 * NKV * hs, group = NH / NKV;
    const float scale = 1.0f / sqrtf((float)hs);
    const double macs = (double)B * T * T * C;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (macs >= PARALLEL_MIN_MACS)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const float *q = qkv + (size_t)b * T * C3 + h * hs;
            const float *k = qkv + (size_t)b * T * C3 + C + (h / group) * hs, *v = k + NKV * hs;
            float *P = att + ((size_t)b * NH + h) * T * T;
            for (int i0 = 0; i0 < T; i0 += ATTENTION_TILE) {
                /* rows i0.. see keys 0..keys-1 at most */
                const int rows = min_int(ATTENTION_TILE, T - i0), keys = i0 + rows;
                float *Pt = P + (size_t)i0 * T;
                gemm_serial(0, 1, rows, keys, hs, scale, q + (size_t)i0 * C3, C3, k, C3, 0.0f, Pt, T);
                for (int i = i0; i < keys; i++) {
                    float *row = P + (size_t)i * T;
                    float max = -INFINITY;
#pragma omp simd reduction(max : max)
                    for (int j = 0; j <= i; j++) max = row[j] > max ? row[j] : max;
                    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
                    for (int j = 0; j <= i; j++) {
                        row[j] = vec_expf(row[j] - max);
                        sum += row[j];
                    }
                    const float inv = 1.0f / sum;
                    for (int j = 0; j <= i; j++) row[j] *= inv;
                    memset(row + i + 1, 0, (size_t)(keys - i - 1) * sizeof(float));
                }
                gemm_serial(0, 0, rows, hs, keys, 1.0f, Pt, T, v, C3, 0.0f,
                            out + ((size_t)b * T + i0) * C + h * hs, C);
            }
        }
    }
}

void attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                        const float *att, int B, int T, int C, int NH, int NKV) {
    const int hs = C / NH, C3 = C + 2 * NKV * hs, group = NH / NKV;
    const float scale = 1.0f / sqrtf((float)hs);
    const double macs = (double)B * T * T * C;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (macs >= PARALLEL_MIN_MACS)
    for (int b = 0; b < B; b++) {
        for (int kvh = 0; kvh < NKV; kvh++) {
            for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                /* the group's first query head writes dk and dv, the others add */
                const float beta_kv = h == kvh * group ? 0.0f : 1.0f;
                const float *q = qkv + (size_t)b * T * C3 + h * hs;
                const float *k = qkv + (size_t)b * T * C3 + C + kvh * hs, *v = k + NKV * hs;
                float *dq = dqkv + (size_t)b * T * C3 + h * hs;
                float *dk = dqkv + (size_t)b * T * C3 + C + kvh * hs, *dv = dk + NKV * hs;
                const float *dy = dout + (size_t)b * T * C + h * hs;
                const float *P = att + ((size_t)b * NH + h) * T * T;
                float *dS = scratch + omp_get_thread_num() * attention_scratch_floats(T);
                /* by rows: dS, then dq = dS k over the keys the rows see */
                for (int i0 = 0; i0 < T; i0 += ATTENTION_TILE) {
                    const int rows = min_int(ATTENTION_TILE, T - i0), keys = i0 + rows;
                    float *dSt = dS + (size_t)i0 * T;
                    gemm_serial(0, 1, rows, keys, hs, 1.0f, dy + (size_t)i0 * C, C, v, C3, 0.0f,
                                dSt, T); /* dP */
                    for (int i = i0; i < keys; i++) {
                        const float *p = P + (size_t)i * T;
                        float *d = dS + (size_t)i * T;
                        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                        for (int j = 0; j <= i; j++) dot += p[j] * d[j];
                        for (int j = 0; j <= i; j++) d[j] = p[j] * (d[j] - dot);
                        memset(d + i + 1, 0, (size_t)(keys - i - 1) * sizeof(float));
                    }
                    gemm_serial(0, 0, rows, hs, keys, scale, dSt, T, k, C3, 0.0f,
                                dq + (size_t)i0 * C3, C3);
                }
                /* by columns: key j gets dv and dk from the queries j.. that see it */
                for (int j0 = 0; j0 < T; j0 += ATTENTION_TILE) {
                    const int cols = min_int(ATTENTION_TILE, T - j0), queries = T - j0;
                    const size_t corner = (size_t)j0 * T + j0;
                    gemm_serial(1, 0, cols, hs, queries, 1.0f, P + corner, T, dy + (size_t)j0 * C,
                                C, beta_kv, dv + (size_t)j0 * C3, C3);
                    gemm_serial(1, 0, cols, hs, queries, scale, dS + corner, T,
                                q + (size_t)j0 * C3, C3, beta_kv, dk + (size_t)j0 * C3, C3);
                }
            }
        }
    }
}
