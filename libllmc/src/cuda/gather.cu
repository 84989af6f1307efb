/*
 * gather.cu: moving rows by index, for evals that score only some positions:
 * the rows to score are gathered before the classifier and their losses
 * scattered back.
 */
#include "kernels.cuh"

/* out[i] = in[rows[i]], rows of C bf16 (C a multiple of 8). */
__global__ void gather_rows_kernel(bf16 *out, const bf16 *in, const int *rows, int n, int C) {
    const int vecs = C / 8;
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n * vecs) return;
    const int r = (int)(i / vecs), c = (int)(i % vecs) * 8;
    store16(out + (size_t)r * C + c, load16(in + (size_t)rows[r] * C + c));
}

void gather_rows(bf16 *out, const bf16 *in, const int *rows, int n, int C, cudaStream_t s) {
    const long work = (long)n * (C / 8);
    gather_rows_kernel<<<ceil_div(work, 256), 256, 0, s>>>(out, in, rows, n, C);
}

/* out[rows[i]] = in[i]. */
__global__ void scatter_floats_kernel(float *out, const float *in, const int *rows, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[rows[i]] = in[i];
}

void scatter_floats(float *out, const float *in, const int *rows, int n, cudaStream_t s) {
    scatter_floats_kernel<<<ceil_div(n, 256), 256, 0, s>>>(out, in, rows, n);
}
