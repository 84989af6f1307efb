/*
 * layernorm.c: LayerNorm over the channels of each row (eps 1e-5, as
 * torch.nn.LayerNorm and GPT-2).
 */
#include <math.h>
#include <omp.h>

#include "layers.h"

#define LAYERNORM_EPS 1e-5f

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                       const float *bias, int N, int C) {
#pragma omp parallel for if ((size_t)N * C >= PARALLEL_MIN_FLOATS)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int c = 0; c < C; c++) sum += x[c];
        const float m = sum / C;
        /* two passes: the variance of x - m does not cancel like E[x^2] - m^2 */
        float var = 0.0f;
#pragma omp simd reduction(+ : var)
        for (int c = 0; c < C; c++) var += (x[c] - m) * (x[c] - m);
        const float s = 1.0f / sqrtf(var / C + LAYERNORM_EPS);
        for (int c = 0; c < C; c++) o[c] = (x[c] - m) * s * weight[c] + bias[c];
        mean[n] = m;
        rstd[n] = s;
    }
}

void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, const float *mean,
                        const float *rstd, int N, int C) {
    /* the input gradient, row by row:
     * dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * weight */
#pragma omp parallel for if ((size_t)N * C >= PARALLEL_MIN_FLOATS)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *d = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        const float m = mean[n], s = rstd[n];
        float g_sum = 0.0f, gx_sum = 0.0f;
#pragma omp simd reduction(+ : g_sum, gx_sum)
        for (int c = 0; c < C; c++) {
            const float g = d[c] * weight[c];
            g_sum += g;
            gx_sum += g * (x[c] - m) * s;
        }
        const float g_mean = g_sum / C, gx_mean = gx_sum / C;
        for (int c = 0; c < C; c++) {
            const float xhat = (x[c] - m) * s;
            dx[c] += s * (d[c] * weight[c] - g_mean - xhat * gx_mean);
        }
    }
    /* the parameter gradients sum over rows: each thread owns a slice of
     * channels and walks the rows in order (thread-count independent) */
#pragma omp parallel if ((size_t)N * C >= PARALLEL_MIN_FLOATS)
    {
        int id = omp_get_thread_num(), nt = omp_get_num_threads();
        int c0 = (int)((long)C * id / nt), c1 = (int)((long)C * (id + 1) / nt);
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C, *d = dout + (size_t)n * C;
            const float m = mean[n], s = rstd[n];
            for (int c = c0; c < c1; c++) {
                dweight[c] += d[c] * (x[c] - m) * s;
                dbias[c] += d[c];
            }
        }
    }
}
