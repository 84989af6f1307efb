/*
 * reduce.cu: deterministic reductions. Each is two passes: a fixed grid of
 * grid of blocks writes partial sums, then one pass adds them in a fixed
 * order. No atomics, so the same inputs always give the same bits.
 */
#include "kernels.cuh"

/* out[c] += sum over k < rows of partial[k * width + c]. Block (32, 8): 32 columns
 * side by side (coalesced), 8 threads splitting the k range; their 8 sums are
 * then added in a fixed order. Loads are unrolled so that many are in flight. */
__global__ void add_partials_kernel(float *out0, float *out1, const float *partial, int rows,
                                    int width, int n, int split) {
    __shared__ float sums[8][32];
    const int c = blockIdx.x * 32 + threadIdx.x;
    float s = 0.0f;
    if (c < n) {
#pragma unroll 8
        for (int k = threadIdx.y; k < rows; k += 8) s += partial[(size_t)k * width + c];
    }
    sums[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y != 0 || c >= n) return;
    float t = 0.0f;
    for (int y = 0; y < 8; y++) t += sums[y][threadIdx.x];
    if (c < split)
        out0[c] += t;
    else
        out1[c - split] += t;
}

void add_partials(float *out0, float *out1, const float *partial, int rows, int width, int n,
                  int split, cudaStream_t s) {
    add_partials_kernel<<<ceil_div(n, 32), dim3(32, 8), 0, s>>>(out0, out1, partial, rows, width,
                                                                 n, split);
}

/* Column sums of dout (N, OC). Block (32, 8) covers 256 columns (8 per
 * thread, 16-byte loads) and 8 rows at a time; grid.y = BIAS_ROW_SPLITS
 * blocks stride down the rows, each writing one row of partial sums. */
__global__ void bias_backward_kernel(float *partial, const bf16 *dout, int N, int OC) {
    __shared__ float sums[8][256];
    const int c = (blockIdx.x * 32 + threadIdx.x) * 8;
    float acc[8] = {0};
    if (c < OC) {
#pragma unroll 4
        for (int row = blockIdx.y * 8 + threadIdx.y; row < N; row += gridDim.y * 8) {
            Vec16<bf16> d = load16(dout + (size_t)row * OC + c);
            for (int k = 0; k < 8; k++) acc[k] += __bfloat162float(d.v[k]);
        }
    }
    for (int k = 0; k < 8; k++) sums[threadIdx.y][threadIdx.x * 8 + k] = acc[k];
    __syncthreads();
    const int t = threadIdx.y * 32 + threadIdx.x, col = blockIdx.x * 256 + t;
    if (col >= OC) return;
    float s = 0.0f;
    for (int y = 0; y < 8; y++) s += sums[y][t];
    partial[(size_t)blockIdx.y * OC + col] = s;
}

void bias_backward(float *dbias, float *partial, const bf16 *dout, int N, int OC, cudaStream_t s) {
    bias_backward_kernel<<<dim3(ceil_div(OC, 256), BIAS_ROW_SPLITS), dim3(32, 8), 0, s>>>(
        partial, dout, N, OC);
    add_partials(dbias, dbias, partial, BIAS_ROW_SPLITS, OC, OC, OC, s);
}

__global__ void sum_squares_kernel(float *partial, const float *x, size_t n) {
    __shared__ float shared32[32];
    float acc = 0.0f;
    for (size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4; i < n;
         i += (size_t)gridDim.x * blockDim.x * 4) {
        Vec16<float> v = load16(x + i);  // n is a multiple of 4
        for (int k = 0; k < 4; k++) acc += v.v[k] * v.v[k];
    }
    acc = block_sum(acc, shared32);  // every thread holds it; thread 0 writes
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sum_partials_kernel(float *out, const float *partial) {
    if (threadIdx.x != 0) return;
    float s = 0.0f;
    for (int k = 0; k < SUM_SQUARES_BLOCKS; k++) s += partial[k];
    *out = s;
}

void sum_squares(float *out, float *partial, const float *x, size_t n, cudaStream_t s) {
    sum_squares_kernel<<<SUM_SQUARES_BLOCKS, 512, 0, s>>>(partial, x, n);
    sum_partials_kernel<<<1, 32, 0, s>>>(out, partial);
}

__global__ void sum_losses_kernel(double *out, const float *x, size_t n) {
    __shared__ double part[1024];
    double acc = 0.0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) acc += x[i];
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if ((int)threadIdx.x < stride) part[threadIdx.x] += part[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) *out = part[0];
}

void sum_losses(double *out, const float *x, size_t n, cudaStream_t s) {
    sum_losses_kernel<<<1, 1024, 0, s>>>(out, x, n);
}
