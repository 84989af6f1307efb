/*
 * rmsnorm.c: RMSNorm over the channels of each row (Llama; no bias, no
 * mean subtracted): y = w * x * rstd, rstd = 1 / sqrt(mean(x^2) + eps).
 */
#include <math.h>
#include <omp.h>

#include "layers.h"

void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C,
                     float eps) {
#pragma omp parallel for if ((size_t)N * C >= PARALLEL_MIN_FLOATS)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
        for (int c = 0; c < C; c++) sq += x[c] * x[c];
        const float s = 1.0f / sqrtf(sq / C + eps);
        for (int c = 0; c < C; c++) o[c] = weight[c] * (x[c] * s);
        rstd[n] = s;
    }
}

void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                      const float *weight, const float *rstd, int N, int C) {
    /* dx = rstd * (g - xhat * mean(g * xhat)), g = dout * weight, xhat = x * rstd */
#pragma omp parallel for if ((size_t)N * C >= PARALLEL_MIN_FLOATS)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *d = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        const float s = rstd[n];
        float gx_sum = 0.0f;
#pragma omp simd reduction(+ : gx_sum)
        for (int c = 0; c < C; c++) gx_sum += d[c] * weight[c] * x[c] * s;
        const float gx_mean = gx_sum / C;
        for (int c = 0; c < C; c++) dx[c] += s * (d[c] * weight[c] - x[c] * s * gx_mean);
    }
    /* the weight gradient sums over rows: each thread owns a slice of
     * channels and walks the rows in order (thread-count independent) */
#pragma omp parallel if ((size_t)N * C >= PARALLEL_MIN_FLOATS)
    {
        int id = omp_get_thread_num(), nt = omp_get_num_threads();
        int c0 = (int)((long)C * id / nt), c1 = (int)((long)C * (id + 1) / nt);
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C, *d = dout + (size_t)n * C;
            const float s = rstd[n];
            for (int c = c0; c < c1; c++) dweight[c] += d[c] * (x[c] * s);
        }
    }
}
