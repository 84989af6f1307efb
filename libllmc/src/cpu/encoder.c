/*
 * encoder.c: token embedding plus learned position embedding (GPT-2), or
 * the token embedding alone (Llama: wpe and dwpe NULL).
 */
#include <omp.h>
#include <string.h>

#include "layers.h"

void encoder_forward(float *out, const int32_t *tokens, const float *wte, const float *wpe, int B,
                     int T, int C) {
#pragma omp parallel for if ((size_t)B * T * C >= PARALLEL_MIN_FLOATS)
    for (int bt = 0; bt < B * T; bt++) {
        const float *te = wte + (size_t)tokens[bt] * C;
        float *o = out + (size_t)bt * C;
        if (wpe == NULL) {
            memcpy(o, te, (size_t)C * sizeof(float));
            continue;
        }
        const float *pe = wpe + (size_t)(bt % T) * C;
        for (int c = 0; c < C; c++) o[c] = te[c] + pe[c];
    }
}

void encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tokens, int B,
                      int T, int C) {
    /* A token can appear many times, so rows of dwte take several updates.
     * Each thread owns a slice of channels and walks the tokens in order:
     * no two threads touch the same float, and every sum runs in token
     * order whatever the thread count. */
#pragma omp parallel if ((size_t)B * T * C >= PARALLEL_MIN_FLOATS)
    {
        int id = omp_get_thread_num(), nt = omp_get_num_threads();
        int c0 = (int)((long)C * id / nt), c1 = (int)((long)C * (id + 1) / nt);
        for (int bt = 0; bt < B * T; bt++) {
            float *dte = dwte + (size_t)tokens[bt] * C;
            const float *d = dout + (size_t)bt * C;
            if (dwpe == NULL) {
                for (int c = c0; c < c1; c++) dte[c] += d[c];
                continue;
            }
            float *dpe = dwpe + (size_t)(bt % T) * C;
            for (int c = c0; c < c1; c++) {
                dte[c] += d[c];
                dpe[c] += d[c];
            }
        }
    }
}
