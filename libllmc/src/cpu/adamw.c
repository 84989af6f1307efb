/*
 * adamw.c: the global gradient norm and the AdamW update.
 */
#include <math.h>
#include <omp.h>

#include "layers.h"

/* Blocks of a fixed size are summed in parallel, a round of up to
 * SUM_ROUND_BLOCKS at a time, and their sums then added in order: the result
 * depends on n only, never on the thread count. */
#define SUM_BLOCK 65536
#define SUM_ROUND_BLOCKS 256

double sum_squares(const float *x, size_t n) {
    double total = 0.0;
    for (size_t round = 0; round < n; round += (size_t)SUM_BLOCK * SUM_ROUND_BLOCKS) {
        const size_t left = n - round;
        const int blocks = left >= (size_t)SUM_BLOCK * SUM_ROUND_BLOCKS
                               ? SUM_ROUND_BLOCKS
                               : (int)((left + SUM_BLOCK - 1) / SUM_BLOCK);
        double partial[SUM_ROUND_BLOCKS];
#pragma omp parallel for schedule(static) if (blocks > 1)
        for (int blk = 0; blk < blocks; blk++) {
            const size_t start = round + (size_t)blk * SUM_BLOCK;
            const size_t end = start + SUM_BLOCK < n ? start + SUM_BLOCK : n;
            double s = 0.0;
#pragma omp simd reduction(+ : s)
            for (size_t i = start; i < end; i++) s += (double)x[i] * x[i];
            partial[blk] = s;
        }
        for (int blk = 0; blk < blocks; blk++) total += partial[blk];
    }
    return total;
}

void adamw_update(float *params, const float *grads, float *mom1, float *mom2, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, float grad_scale,
                  int64_t t) {
    /* the same steps as torch.optim.AdamW, so that runs can be compared */
    const float decay = (float)(1.0 - (double)lr * weight_decay);
    const float step_size = (float)(lr / (1.0 - pow(beta1, (double)t)));
    const float bias_correction2_sqrt = (float)sqrt(1.0 - pow(beta2, (double)t));
#pragma omp parallel for simd schedule(static) if (n >= PARALLEL_MIN_FLOATS)
    for (size_t i = 0; i < n; i++) {
        const float g = grads[i] * grad_scale;
        const float m = mom1[i] + (1.0f - beta1) * (g - mom1[i]); /* lerp toward g */
        const float v = beta2 * mom2[i] + (1.0f - beta2) * g * g;
        mom1[i] = m;
        mom2[i] = v;
        params[i] = params[i] * decay - step_size * m / (sqrtf(v) / bias_correction2_sqrt + eps);
    }
}
