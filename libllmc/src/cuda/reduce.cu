/*
 * reduce.cu: deterministic reductions. Each is two passes: a fixed grid of
 * REDUCE_BLOCKS blocks writes partial sums, then one pass adds them in a fixed
 * order. No atomics, so the same inputs always give the same bits.
 */
#include "kernels.cuh"

__global__ void add_partials_kernel(float *out0, float *out1, const float *partial, int n,
                                    int split) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= n) return;
    float s = 0.0f;
    for (int k = 0; k < REDUCE_BLOCKS; k++) s += partial[(size_t)k * n + c];
    if (c < split)
        out0[c] += s;
    else
        out1[c - split] += s;
}

void add_partials(float *out0, float *out1, const float *partial, int n, int split, cudaStream_t s) {
    add_partials_kernel<<<ceil_div(n, 256), 256, 0, s>>>(out0, out1, partial, n, split);
}

/* Column sums of dout (N, OC): each thread sums 8 columns over a fixed
 * stride of rows into its block's partial row. */
__global__ void bias_backward_kernel(float *partial, const bf16 *dout, int N, int OC) {
    const int c = (blockIdx.y * blockDim.x + threadIdx.x) * 8;
    if (c >= OC) return;
    float acc[8] = {0};
    for (int row = blockIdx.x; row < N; row += gridDim.x) {
        Vec16<bf16> d = load16(dout + (size_t)row * OC + c);
        for (int k = 0; k < 8; k++) acc[k] += __bfloat162float(d.v[k]);
    }
    for (int k = 0; k < 8; k++) partial[(size_t)blockIdx.x * OC + c + k] = acc[k];
}

void bias_backward(float *dbias, float *partial, const bf16 *dout, int N, int OC, cudaStream_t s) {
    dim3 grid(REDUCE_BLOCKS, ceil_div(OC / 8, 128));
    bias_backward_kernel<<<grid, 128, 0, s>>>(partial, dout, N, OC);
    add_partials(dbias, dbias, partial, OC, OC, s);
}

__device__ float block_sum(float v, float *shared32) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    v = warp_sum(v);
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x / 32) ? shared32[lane] : 0.0f;
        v = warp_sum(v);
    }
    return v;  // valid in thread 0
}

__global__ void sum_squares_kernel(float *partial, const float *x, size_t n) {
    __shared__ float shared32[32];
    float acc = 0.0f;
    for (size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4; i < n;
         i += (size_t)gridDim.x * blockDim.x * 4) {
        Vec16<float> v = load16(x + i);  // n is a multiple of 4
        for (int k = 0; k < 4; k++) acc += v.v[k] * v.v[k];
    }
    acc = block_sum(acc, shared32);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sum_partials_kernel(float *out, const float *partial) {
    if (threadIdx.x != 0) return;
    float s = 0.0f;
    for (int k = 0; k < REDUCE_BLOCKS; k++) s += partial[k];
    *out = s;
}

void sum_squares(float *out, float *partial, const float *x, size_t n, cudaStream_t s) {
    sum_squares_kernel<<<REDUCE_BLOCKS, 512, 0, s>>>(partial, x, n);
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
