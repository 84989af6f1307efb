/*
 * matmul.c: matrix products through OpenBLAS (the scipy-openblas32 wheel),
 * and the linear layers built on them.
 *
 * OpenBLAS runs single-threaded and we share each product among our own
 * OpenMP threads: one pool of threads instead of two fighting over the
 * cores, and the attention kernels can call it from inside their parallel
 * loops.
 */
#include <omp.h>
#include <string.h>

#include <cblas.h>

#include "layers.h"

void cpu_blas_init(void) { scipy_openblas_set_num_threads(1); }

void gemm_serial(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                 int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                      trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta,
                      C, ldc);
}

/* The output is cut into parts that depend on the shape alone (at most
 * GEMM_MAX_PARTS, each a multiple of GEMM_MIN_PART rows or columns but the
 * last): the BLAS call for each part, and so every element's rounding, is
 * the same for any thread count. Threads take parts as they come free,
 * which also evens out a core slowed by other work. */
#define GEMM_MAX_PARTS 8
#define GEMM_MIN_PART 128

void gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
          const float *B, int ldb, float beta, float *C, int ldc) {
    const int split_rows = M > N; /* split the longer side of the output */
    const int extent = split_rows ? M : N;
    int part = (extent + GEMM_MAX_PARTS - 1) / GEMM_MAX_PARTS;
    part = (part + GEMM_MIN_PART - 1) / GEMM_MIN_PART * GEMM_MIN_PART;
    const int parts = (extent + part - 1) / part;
#pragma omp parallel for schedule(dynamic, 1) if (parts > 1 && (double)M * N * K >= PARALLEL_MIN_MACS)
    for (int i = 0; i < parts; i++) {
        const int start = i * part, len = extent - start < part ? extent - start : part;
        if (split_rows) {
            /* rows of op(A) are rows of A, or columns of A when transposed */
            const float *a = trans_a ? A + start : A + (size_t)start * lda;
            gemm_serial(trans_a, trans_b, len, N, K, alpha, a, lda, B, ldb, beta,
                        C + (size_t)start * ldc, ldc);
        } else {
            const float *b = trans_b ? B + (size_t)start * ldb : B + start;
            gemm_serial(trans_a, trans_b, M, len, K, alpha, A, lda, b, ldb, beta, C + start, ldc);
        }
    }
}

void matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                    const float *residual, int N, int C, int OC) {
    /* start from residual + bias, then let the product accumulate onto it */
    if (bias) {
#pragma omp parallel for if ((size_t)N * OC >= PARALLEL_MIN_FLOATS)
        for (int n = 0; n < N; n++) {
            float *o = out + (size_t)n * OC;
            const float *r = residual ? residual + (size_t)n * OC : NULL;
            for (int j = 0; j < OC; j++) o[j] = (r ? r[j] : 0.0f) + bias[j];
        }
    } else if (residual && residual != out) {
        memcpy(out, residual, (size_t)N * OC * sizeof(float));
    }
    gemm(0, 1, N, OC, C, 1.0f, inp, C, weight, C, bias || residual ? 1.0f : 0.0f, out, OC);
}

void column_sums_add(float *dst, const float *src, int N, int C) {
    /* each thread owns a slice of columns and walks every row in order */
#pragma omp parallel if ((size_t)N * C >= PARALLEL_MIN_FLOATS)
    {
        int id = omp_get_thread_num(), nt = omp_get_num_threads();
        int c0 = (int)((long)C * id / nt), c1 = (int)((long)C * (id + 1) / nt);
        for (int n = 0; n < N; n++) {
            const float *row = src + (size_t)n * C;
            for (int c = c0; c < c1; c++) dst[c] += row[c];
        }
    }
}

void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, int N, int C, int OC) {
    gemm(0, 0, N, C, OC, 1.0f, dout, OC, weight, C, 0.0f, dinp, C);
    gemm(1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
    if (dbias) column_sums_add(dbias, dout, N, OC);
}

void matmul_forward_few(float *out, const float *inp, const float *weight, const float *bias,
                        const float *residual, int N, int C, int OC) {
    /* each output is one thread's dot product, summed in a fixed order that
     * does not depend on N: a row's result is the same in any batch */
#pragma omp parallel for schedule(static) if ((size_t)N * C * OC >= PARALLEL_MIN_MACS)
    for (int o = 0; o < OC; o++) {
        const float *w = weight + (size_t)o * C;
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C;
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int c = 0; c < C; c++) dot += w[c] * x[c];
            const size_t at = (size_t)n * OC + o;
            out[at] = dot + (bias ? bias[o] : 0.0f) + (residual ? residual[at] : 0.0f);
        }
    }
}
