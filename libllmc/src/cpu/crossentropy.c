/*
 * crossentropy.c: the LM head (logits = x wte^T over the real vocabulary)
 * fused with softmax cross-entropy and its backward pass.
 *
 * Rows go through in chunks of CLASSIFIER_CHUNK_ROWS, so the only
 * vocabulary-sized buffer is one chunk's logits, turned in place into the
 * chunk's logit gradients; B*T x V probabilities never exist. Evaluation
 * (losses only) gathers the rows whose target is counted into the chunks
 * and skips the others, which a HellaSwag batch is mostly made of. Only the
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

/* Cross-entropy of the rows of one chunk of logits (rows x V): losses[i]
 * for targets[i], 0 where targets[i] == -1 (with want_grad, a zero gradient
 * row there). */
static void chunk_crossentropy(float *losses, float *logits, const int32_t *targets, int rows,
                               int V, float dloss, int want_grad) {
#pragma omp parallel for schedule(dynamic, 8) if ((size_t)rows * V >= PARALLEL_MIN_FLOATS)
    for (int i = 0; i < rows; i++) {
        float *row = logits + (size_t)i * V;
        if (targets[i] < 0) { /* ignored position: no loss, no gradient */
            losses[i] = 0.0f;
            if (want_grad) memset(row, 0, (size_t)V * sizeof(float));
        } else {
            losses[i] = softmax_crossentropy_row(row, V, targets[i], dloss, want_grad);
        }
    }
}

void classifier_forward_backward(float *losses, float *dx, float *dwte, float *logits_buf,
                                 const float *x, const float *wte, const int32_t *targets, int N,
                                 int C, int V, float dloss) {
    for (int r0 = 0; r0 < N; r0 += CLASSIFIER_CHUNK_ROWS) {
        const int rows = N - r0 < CLASSIFIER_CHUNK_ROWS ? N - r0 : CLASSIFIER_CHUNK_ROWS;
        const float *xc = x + (size_t)r0 * C;
        gemm(0, 1, rows, V, C, 1.0f, xc, C, wte, C, 0.0f, logits_buf, V);
        chunk_crossentropy(losses + r0, logits_buf, targets + r0, rows, V, dloss, 1);
        gemm(0, 0, rows, C, V, 1.0f, logits_buf, V, wte, C, 0.0f, dx + (size_t)r0 * C, C);
        gemm(1, 0, V, C, rows, 1.0f, logits_buf, V, xc, C, 1.0f, dwte, C);
    }
}

void classifier_losses(float *losses, float *logits_buf, float *rows_buf, const float *x,
                       const float *wte, const int32_t *targets, int N, int C, int V) {
    int row_of[CLASSIFIER_CHUNK_ROWS];
    int32_t chunk_targets[CLASSIFIER_CHUNK_ROWS];
    float chunk_losses[CLASSIFIER_CHUNK_ROWS];
    memset(losses, 0, (size_t)N * sizeof(float));
    for (int next = 0;;) {
        /* the next chunk's worth of counted rows, side by side in rows_buf */
        int rows = 0;
        for (; next < N && rows < CLASSIFIER_CHUNK_ROWS; next++) {
            if (targets[next] < 0) continue;
            row_of[rows] = next;
            chunk_targets[rows] = targets[next];
            memcpy(rows_buf + (size_t)rows * C, x + (size_t)next * C, (size_t)C * sizeof(float));
            rows++;
        }
        if (rows == 0) break;
        gemm(0, 1, rows, V, C, 1.0f, rows_buf, C, wte, C, 0.0f, logits_buf, V);
        chunk_crossentropy(chunk_losses, logits_buf, chunk_targets, rows, V, 0.0f, 0);
        for (int i = 0; i < rows; i++) losses[row_of[i]] = chunk_losses[i];
    }
}
