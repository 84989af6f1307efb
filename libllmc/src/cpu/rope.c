/*
 * rope.c: rotary position embeddings (Llama) on the q and k heads of the
 * fused qkv rows, in place. Meta's (and llm.c's) pairing: channels 2i and
 * 2i+1 of a head turn together by the angle t * inv_freq[i] of position t.
 */
#include <math.h>

#include "layers.h"

void rope_table(float *cos_t, float *sin_t, const float *inv_freq, int T, int half) {
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            /* the angle rounded to fp32 as transformers forms it, then its
             * cosine and sine correctly rounded */
            const float angle = (float)t * inv_freq[i];
            cos_t[(size_t)t * half + i] = (float)cos((double)angle);
            sin_t[(size_t)t * half + i] = (float)sin((double)angle);
        }
}

/* The q and k heads (heads of hs channels from row) turned by the angles
 * whose cosines and sines are c and s (sign -1: turned back). */
static void rotate_row(float *row, const float *c, const float *s, int heads, int hs, float sign) {
    const int half = hs / 2;
    for (int h = 0; h < heads; h++) {
        float *x = row + (size_t)h * hs;
        for (int i = 0; i < half; i++) {
            const float x0 = x[2 * i], x1 = x[2 * i + 1], si = sign * s[i];
            x[2 * i] = x0 * c[i] - x1 * si;
            x[2 * i + 1] = x0 * si + x1 * c[i];
        }
    }
}

void rope_rotate(float *qkv, const float *cos_t, const float *sin_t, int B, int T, int NH, int NKV,
                 int hs, int inverse) {
    const int heads = NH + NKV; /* the q heads, then the k heads, side by side */
    const size_t width = (size_t)(NH + 2 * NKV) * hs, half = hs / 2;
#pragma omp parallel for if ((size_t)B * T * heads * hs >= PARALLEL_MIN_FLOATS)
    for (int bt = 0; bt < B * T; bt++)
        rotate_row(qkv + bt * width, cos_t + (bt % T) * half, sin_t + (bt % T) * half, heads, hs,
                   inverse ? -1.0f : 1.0f);
}

void rope_rotate_at(float *qkv, const float *cos_t, const float *sin_t, const int32_t *pos, int n,
                    int NH, int NKV, int hs) {
    const size_t width = (size_t)(NH + 2 * NKV) * hs, half = hs / 2;
    for (int i = 0; i < n; i++)
        rotate_row(qkv + i * width, cos_t + pos[i] * half, sin_t + pos[i] * half, NH + NKV, hs,
                   1.0f);
}
