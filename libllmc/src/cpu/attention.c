/*
 * attention.c: causal multi-head self-attention, each (batch row, head)
 * pair a few matrix products through gemm_serial on one OpenMP thread.
 *
 * For one head, with q, k, v the (T, hs) slices of qkv:
 *   S = q k^T / sqrt(hs), P = causal softmax(S) (stored), y = P v.
 * Backward: dP = dy v^T, dv = P^T dy, dS = P * (dP - rowsum(P * dP)),
 *   dq = dS k / sqrt(hs), dk = dS^T q / sqrt(hs).
 * The products run over the full T x T square; the upper triangle of P and
 * dS is zero, so it adds nothing.
 */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "layers.h"

void attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH) {
    const int hs = C / NH, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)hs);
    const double macs = (double)B * T * T * C;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (macs >= PARALLEL_MIN_MACS)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const float *q = qkv + (size_t)b * T * C3 + h * hs;
            const float *k = q + C, *v = q + 2 * C;
            float *P = att + ((size_t)b * NH + h) * T * T;
            gemm_serial(0, 1, T, T, hs, scale, q, C3, k, C3, 0.0f, P, T);
            for (int i = 0; i < T; i++) {
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
                memset(row + i + 1, 0, (size_t)(T - i - 1) * sizeof(float));
            }
            gemm_serial(0, 0, T, hs, T, 1.0f, P, T, v, C3, 0.0f, out + (size_t)b * T * C + h * hs, C);
        }
    }
}

void attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                        const float *att, int B, int T, int C, int NH) {
    const int hs = C / NH, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)hs);
    const double macs = (double)B * T * T * C;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (macs >= PARALLEL_MIN_MACS)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const float *q = qkv + (size_t)b * T * C3 + h * hs;
            const float *k = q + C, *v = q + 2 * C;
            float *dq = dqkv + (size_t)b * T * C3 + h * hs;
            float *dk = dq + C, *dv = dq + 2 * C;
            const float *dy = dout + (size_t)b * T * C + h * hs;
            const float *P = att + ((size_t)b * NH + h) * T * T;
            float *dS = scratch + omp_get_thread_num() * attention_scratch_floats(T);
            gemm_serial(0, 1, T, T, hs, 1.0f, dy, C, v, C3, 0.0f, dS, T); /* dP */
            gemm_serial(1, 0, T, hs, T, 1.0f, P, T, dy, C, 0.0f, dv, C3);
            for (int i = 0; i < T; i++) {
                const float *p = P + (size_t)i * T;
                float *d = dS + (size_t)i * T;
                float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                for (int j = 0; j <= i; j++) dot += p[j] * d[j];
                for (int j = 0; j <= i; j++) d[j] = p[j] * (d[j] - dot);
                memset(d + i + 1, 0, (size_t)(T - i - 1) * sizeof(float));
            }
            gemm_serial(0, 0, T, hs, T, scale, dS, T, k, C3, 0.0f, dq, C3);
            gemm_serial(1, 0, T, hs, T, scale, dS, T, q, C3, 0.0f, dk, C3);
        }
    }
}
