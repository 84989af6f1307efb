/*
 * rmsnorm.cu: RMSNorm (Llama): y = w * x * rstd, rstd = 1/sqrt(mean(x^2) + eps),
 * a warp per row (any C that is a multiple of 8), and its backward pass:
 * the input gradient a warp per row, the weight gradient as bias_backward's
 * fixed grid of column partial sums added in order (deterministic).
 */
#include "kernels.cuh"

#define RMS_ROWS_PER_BLOCK 4

/* One row by one warp: out and rstd from x (lane owns channels lane*8 + 256j). */
__device__ void rms_normalize_row(bf16 *out, float *rstd, const bf16 *x, const bf16 *w, int C,
                                  float eps, int lane) {
    float sq = 0.0f;
    for (int c = lane * 8; c < C; c += 256) {
        Vec16<bf16> v = load16(x + c);
        for (int k = 0; k < 8; k++) {
            const float f = __bfloat162float(v.v[k]);
            sq += f * f;
        }
    }
    const float s = rsqrtf(warp_sum(sq) / C + eps);
    for (int c = lane * 8; c < C; c += 256) {
        Vec16<bf16> v = load16(x + c), wv = load16(w + c), o;
        for (int k = 0; k < 8; k++)
            o.v[k] = __float2bfloat16(__bfloat162float(wv.v[k]) * (__bfloat162float(v.v[k]) * s));
        store16(out + c, o);
    }
    if (lane == 0) *rstd = s;
}

__global__ void rmsnorm_forward_kernel(bf16 *out, float *rstd, const bf16 *inp, const bf16 *w,
                                       int N, int C, float eps) {
    const int row = blockIdx.x * RMS_ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const size_t off = (size_t)row * C;
    rms_normalize_row(out + off, rstd + row, inp + off, w, C, eps, lane);
}

__global__ void residual_rmsnorm_forward_kernel(bf16 *res_out, bf16 *out, float *rstd,
                                                const bf16 *res_in, const bf16 *branch,
                                                const bf16 *w, int N, int C, float eps) {
    const int row = blockIdx.x * RMS_ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const size_t off = (size_t)row * C;
    residual_add_row(res_out + off, res_in + off, branch + off, C, lane);
    /* normalised from the rounded sum, which is what the backward pass sees */
    rms_normalize_row(out + off, rstd + row, res_out + off, w, C, eps, lane);
}

void rmsnorm_forward(bf16 *out, float *rstd, const bf16 *inp, const bf16 *w, int N, int C,
                     float eps, cudaStream_t s) {
    rmsnorm_forward_kernel<<<ceil_div(N, RMS_ROWS_PER_BLOCK), 32 * RMS_ROWS_PER_BLOCK, 0, s>>>(
        out, rstd, inp, w, N, C, eps);
}

void residual_rmsnorm_forward(bf16 *res_out, bf16 *out, float *rstd, const bf16 *res_in,
                              const bf16 *branch, const bf16 *w, int N, int C, float eps,
                              cudaStream_t s) {
    residual_rmsnorm_forward_kernel<<<ceil_div(N, RMS_ROWS_PER_BLOCK), 32 * RMS_ROWS_PER_BLOCK, 0,
                                      s>>>(res_out, out, rstd, res_in, branch, w, N, C, eps);
}

/* dinp += rstd * (g - xhat * mean(g * xhat)), g = dout * w, xhat = x * rstd. */
__global__ void rmsnorm_backward_input_kernel(bf16 *dinp, const bf16 *dout, const bf16 *inp,
                                              const bf16 *w, const float *rstd, int N, int C) {
    const int row = blockIdx.x * RMS_ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const size_t off = (size_t)row * C;
    const float s = rstd[row];
    float gx = 0.0f;
    for (int c = lane * 8; c < C; c += 256) {
        Vec16<bf16> d = load16(dout + off + c), x = load16(inp + off + c), wv = load16(w + c);
        for (int k = 0; k < 8; k++)
            gx += __bfloat162float(d.v[k]) * __bfloat162float(wv.v[k]) * __bfloat162float(x.v[k]) * s;
    }
    const float gx_mean = warp_sum(gx) / C;
    for (int c = lane * 8; c < C; c += 256) {
        Vec16<bf16> d = load16(dout + off + c), x = load16(inp + off + c), wv = load16(w + c),
                    di = load16(dinp + off + c);
        for (int k = 0; k < 8; k++) {
            const float g = __bfloat162float(d.v[k]) * __bfloat162float(wv.v[k]);
            const float xhat = __bfloat162float(x.v[k]) * s;
            di.v[k] = __float2bfloat16(__bfloat162float(di.v[k]) + s * (g - xhat * gx_mean));
        }
        store16(dinp + off + c, di);
    }
}

/* Column partial sums of dout * xhat, as bias_backward_kernel: block (32, 8)
 * covers 256 columns and 8 rows at a time, grid.y blocks stride the rows. */
__global__ void rmsnorm_backward_weight_kernel(float *partial, const bf16 *dout, const bf16 *inp,
                                               const float *rstd, int N, int C) {
    __shared__ float sums[8][256];
    const int c = (blockIdx.x * 32 + threadIdx.x) * 8;
    float acc[8] = {0};
    if (c < C) {
        for (int row = blockIdx.y * 8 + threadIdx.y; row < N; row += gridDim.y * 8) {
            Vec16<bf16> d = load16(dout + (size_t)row * C + c), x = load16(inp + (size_t)row * C + c);
            const float s = rstd[row];
            for (int k = 0; k < 8; k++)
                acc[k] += __bfloat162float(d.v[k]) * (__bfloat162float(x.v[k]) * s);
        }
    }
    for (int k = 0; k < 8; k++) sums[threadIdx.y][threadIdx.x * 8 + k] = acc[k];
    __syncthreads();
    const int t = threadIdx.y * 32 + threadIdx.x, col = blockIdx.x * 256 + t;
    if (col >= C) return;
    float sum = 0.0f;
    for (int y = 0; y < 8; y++) sum += sums[y][t];
    partial[(size_t)blockIdx.y * C + col] = sum;
}

void rmsnorm_backward(bf16 *dinp, float *dw, float *partial, const bf16 *dout, const bf16 *inp,
                      const bf16 *w, const float *rstd, int N, int C, cudaStream_t s) {
    rmsnorm_backward_weight_kernel<<<dim3(ceil_div(C, 256), BIAS_ROW_SPLITS), dim3(32, 8), 0, s>>>(
        partial, dout, inp, rstd, N, C);
    add_partials(dw, nullptr, partial, BIAS_ROW_SPLITS, C, C, C, s);
    rmsnorm_backward_input_kernel<<<ceil_div(N, RMS_ROWS_PER_BLOCK), 32 * RMS_ROWS_PER_BLOCK, 0, s>>>(
        dinp, dout, inp, w, rstd, N, C);
}
