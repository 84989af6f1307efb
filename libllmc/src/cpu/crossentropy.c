/*
 * crossentropy.c: the LM head (logits = x wte^T over the real vocabulary)
 * fused with softmax cross-entropy and its backward pass.
 *
 * Rows go through in chunks of CLASSIFIER_CHUNK_ROWS, so the only
 * vocabulary-sized buffer is one chunk's logits, turned in place into the
 * chunk's logit gradients; B*T x V probabilities never exist. Only the
 * first V rows of wte take part: the padded rows neither enter the softmax
 * nor receive a gradient.
 */
#include <math.h>
#include <string.h>

#include "layers.h"

/* One row: returns the loss -log softmax(logits)[target]; with want_grad,
 * logits becomes dloss * (softmax - onehot(target)). */
static float softmax_crossentropy_row(float *logits, int V, int target, float dloss, int want_grad) {
    const float target_logit = logits[target];
    float max = -INFINITY;
#pragma omp simd reduction(max : max)
    for (int j = 0; j < V; j++) max = logits[j] > max ? logits[j] : max;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; j++) {
        logits[j] = vec_expf(logits[j] - max);
        sum += logits[j];
    }
    if (want_grad) {
        const float scale = dloss / sum;
        for (int j = 0; j < V; j++) logits[j] *= scale;
        logits[target] -= dloss;
    }
    return logf(sum) + max - target_logit;
}

void classifier_forward_backward(float *losses, float *dx, float *dwte, float *logits_buf,
                                 const float *x, const float *wte, const int32_t *targets, int N,
                                 int C, int V, float dloss) {
    for (int r0 = 0; r0 < N; r0 += CLASSIFIER_CHUNK_ROWS) {
        const int rows = N - r0 < CLASSIFIER_CHUNK_ROWS ? N - r0 : CLASSIFIER_CHUNK_ROWS;
        const float *xc = x + (size_t)r0 * C;
        gemm(0, 1, rows, V, C, 1.0f, xc, C, wte, C, 0.0f, logits_buf, V);
#pragma omp parallel for schedule(dynamic, 8) if ((size_t)rows * V >= PARALLEL_MIN_FLOATS)
        for (int i = 0; i < rows; i++) {
            float *row = logits_buf + (size_t)i * V;
            const int target = targets[r0 + i];
            if (target < 0) { /* ignored position: no loss, no gradient */
                losses[r0 + i] = 0.0f;
                if (dx) memset(row, 0, (size_t)V * sizeof(float));
            } else {
                losses[r0 + i] = softmax_crossentropy_row(row, V, target, dloss, dx != NULL);
            }
        }
        if (dx) {
            gemm(0, 0, rows, C, V, 1.0f, logits_buf, V, wte, C, 0.0f, dx + (size_t)r0 * C, C);
            gemm(1, 0, V, C, rows, 1.0f, logits_buf, V, xc, C, 1.0f, dwte, C);
        }
    }
}
