/*
 * gelu.c: GELU with GPT-2's tanh approximation,
 *   gelu(x) = x/2 (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3),
 * computed as x * sigmoid(2u), the same function written so that it needs
 * one vectorised exponential and no cancellation near 0.
 */
#include "layers.h"

#define GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_CUBIC 0.044715f

void gelu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= PARALLEL_MIN_FLOATS)
    for (size_t i = 0; i < n; i++) {
        const float x = inp[i];
        const float u = GELU_SCALE * (x + GELU_CUBIC * x * x * x);
        out[i] = x / (1.0f + vec_expf(-2.0f * u));
    }
}

void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
    /* d/dx [x s(2u)] = s + x * 2 s (1 - s) * du/dx, s = sigmoid(2u) */
#pragma omp parallel for simd schedule(static) if (n >= PARALLEL_MIN_FLOATS)
    for (size_t i = 0; i < n; i++) {
        const float x = inp[i];
        const float u = GELU_SCALE * (x + GELU_CUBIC * x * x * x);
        const float s = 1.0f / (1.0f + vec_expf(-2.0f * u));
        const float du = GELU_SCALE * (1.0f + 3.0f * GELU_CUBIC * x * x);
        dinp[i] = dout[i] * (s + 2.0f * x * s * (1.0f - s) * du);
    }
}
