/*
 * swiglu.c: Llama's MLP activation. Each input row holds the up projection
 * u (F) then the gate g (F): out = u * silu(g), silu(g) = g * sigmoid(g).
 */
#include "layers.h"

void swiglu_forward(float *out, const float *inp, int N, int F) {
#pragma omp parallel for if ((size_t)N * F >= PARALLEL_MIN_FLOATS)
    for (int n = 0; n < N; n++) {
        const float *u = inp + (size_t)n * 2 * F, *g = u + F;
        float *o = out + (size_t)n * F;
#pragma omp simd
        for (int i = 0; i < F; i++) o[i] = u[i] * (g[i] / (1.0f + vec_expf(-g[i])));
    }
}

void swiglu_backward(float *dinp, const float *dout, const float *inp, int N, int F) {
    /* d/du = silu(g); d/dg = u * s (1 + g (1 - s)), s = sigmoid(g) */
#pragma omp parallel for if ((size_t)N * F >= PARALLEL_MIN_FLOATS)
    for (int n = 0; n < N; n++) {
        const float *u = inp + (size_t)n * 2 * F, *g = u + F, *d = dout + (size_t)n * F;
        float *du = dinp + (size_t)n * 2 * F, *dg = du + F;
#pragma omp simd
        for (int i = 0; i < F; i++) {
            const float s = 1.0f / (1.0f + vec_expf(-g[i]));
            du[i] = d[i] * (g[i] * s);
            dg[i] = d[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
        }
    }
}
