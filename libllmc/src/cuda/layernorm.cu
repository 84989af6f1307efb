/*
 * layernorm.cu: LayerNorm forward (optionally fused with the residual add
 * before it) and backward. One warp per row; each lane owns 8 consecutive
 * channels per 256-channel slice, so that every access is 16 bytes wide.
 */
#include "kernels.cuh"

#define LN_EPS 1e-5f
#define ROWS_PER_BLOCK 8  // warps per block

/* Normalizes row x (already in memory) into out. Shared by both forward
 * kernels so that a recomputed LayerNorm is bit-identical to the original. */
__device__ __forceinline__ void normalize_row(bf16 *out, float *mean_out, float *rstd_out,
                                              const bf16 *x, const bf16 *w, const bf16 *b, int C,
                                              int lane) {
    float sum = 0.0f;
    for (int c = lane * 8; c < C; c += 256) {
        Vec16<bf16> v = load16(x + c);
        for (int k = 0; k < 8; k++) sum += __bfloat162float(v.v[k]);
    }
    const float mean = warp_sum(sum) / C;
    float var = 0.0f;
    for (int c = lane * 8; c < C; c += 256) {
        Vec16<bf16> v = load16(x + c);
        for (int k = 0; k < 8; k++) {
            float d = __bfloat162float(v.v[k]) - mean;
            var += d * d;
        }
    }
    const float rstd = rsqrtf(warp_sum(var) / C + LN_EPS);
    for (int c = lane * 8; c < C; c += 256) {
        Vec16<bf16> v = load16(x + c), wv = load16(w + c), bv = load16(b + c), o;
        for (int k = 0; k < 8; k++)
            o.v[k] = __float2bfloat16((__bfloat162float(v.v[k]) - mean) * rstd *
                                          __bfloat162float(wv.v[k]) +
                                      __bfloat162float(bv.v[k]));
        store16(out + c, o);
    }
    if (lane == 0) {
        *mean_out = mean;
        *rstd_out = rstd;
    }
}

__global__ void layernorm_forward_kernel(bf16 *out, float *mean, float *rstd, const bf16 *inp,
                                         const bf16 *w, const bf16 *b, int N, int C) {
    const int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    normalize_row(out + (size_t)row * C, mean + row, rstd + row, inp + (size_t)row * C, w, b, C,
                  lane);
}

__global__ void residual_layernorm_forward_kernel(bf16 *res_out, bf16 *out, float *mean,
                                                  float *rstd, const bf16 *res_in,
                                                  const bf16 *branch, const bf16 *w, const bf16 *b,
                                                  int N, int C) {
    const int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const size_t off = (size_t)row * C;
    for (int c = lane * 8; c < C; c += 256) {
        Vec16<bf16> r = load16(res_in + off + c), x = load16(branch + off + c), o;
        for (int k = 0; k < 8; k++)
            o.v[k] = __float2bfloat16(__bfloat162float(r.v[k]) + __bfloat162float(x.v[k]));
        store16(res_out + off + c, o);
    }
    __syncwarp();
    normalize_row(out + off, mean + row, rstd + row, res_out + off, w, b, C, lane);
}

void layernorm_forward(bf16 *out, float *mean, float *rstd, const bf16 *inp, const bf16 *w,
                       const bf16 *b, int N, int C, cudaStream_t s) {
    layernorm_forward_kernel<<<ceil_div(N, ROWS_PER_BLOCK), 32 * ROWS_PER_BLOCK, 0, s>>>(
        out, mean, rstd, inp, w, b, N, C);
}

void residual_layernorm_forward(bf16 *res_out, bf16 *out, float *mean, float *rstd,
                                const bf16 *res_in, const bf16 *branch, const bf16 *w,
                                const bf16 *b, int N, int C, cudaStream_t s) {
    residual_layernorm_forward_kernel<<<ceil_div(N, ROWS_PER_BLOCK), 32 * ROWS_PER_BLOCK, 0, s>>>(
        res_out, out, mean, rstd, res_in, branch, w, b, N, C);
}

/* Each warp takes rows in a fixed stride and keeps its own dw/db sums in
 * shared memory (2C floats per warp); the block then adds its warps' sums in
 * order into partial[blockIdx.x]. */
__global__ void layernorm_backward_kernel(bf16 *dinp, float *partial, const bf16 *dout,
                                          const bf16 *inp, const bf16 *w, const float *mean,
                                          const float *rstd, int N, int C) {
    extern __shared__ float smem[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float *acc = smem + (size_t)warp * 2 * C;  // [dw | db] of this warp
    for (int c = lane; c < 2 * C; c += 32) acc[c] = 0.0f;
    __syncwarp();
    for (int row = blockIdx.x * ROWS_PER_BLOCK + warp; row < N; row += gridDim.x * ROWS_PER_BLOCK) {
        const size_t off = (size_t)row * C;
        const float mu = mean[row], rs = rstd[row];
        float sum_dn = 0.0f, sum_dn_xhat = 0.0f;
        for (int c = lane * 8; c < C; c += 256) {
            Vec16<bf16> x = load16(inp + off + c), dy = load16(dout + off + c), wv = load16(w + c);
            for (int k = 0; k < 8; k++) {
                const float xhat = (__bfloat162float(x.v[k]) - mu) * rs;
                const float g = __bfloat162float(dy.v[k]);
                const float dn = g * __bfloat162float(wv.v[k]);
                sum_dn += dn;
                sum_dn_xhat += dn * xhat;
                acc[c + k] += g * xhat;
                acc[C + c + k] += g;
            }
        }
        sum_dn = warp_sum(sum_dn) / C;
        sum_dn_xhat = warp_sum(sum_dn_xhat) / C;
        for (int c = lane * 8; c < C; c += 256) {
            Vec16<bf16> x = load16(inp + off + c), dy = load16(dout + off + c), wv = load16(w + c),
                        d = load16(dinp + off + c);
            for (int k = 0; k < 8; k++) {
                const float xhat = (__bfloat162float(x.v[k]) - mu) * rs;
                const float dn = __bfloat162float(dy.v[k]) * __bfloat162float(wv.v[k]);
                const float dx = (dn - sum_dn - xhat * sum_dn_xhat) * rs;
                d.v[k] = __float2bfloat16(__bfloat162float(d.v[k]) + dx);
            }
            store16(dinp + off + c, d);
        }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) {
        float s = 0.0f;
        for (int k = 0; k < ROWS_PER_BLOCK; k++) s += smem[(size_t)k * 2 * C + c];
        partial[(size_t)blockIdx.x * 2 * C + c] = s;
    }
}

void layernorm_backward(bf16 *dinp, float *dw, float *db, float *partial, const bf16 *dout,
                        const bf16 *inp, const bf16 *w, const float *mean, const float *rstd,
                        int N, int C, cudaStream_t s) {
    const size_t smem = (size_t)ROWS_PER_BLOCK * 2 * C * sizeof(float);
    static size_t smem_set = 48 * 1024;
    if (smem > smem_set) {
        cudaFuncSetAttribute(layernorm_backward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             (int)smem);
        smem_set = smem;
    }
    layernorm_backward_kernel<<<LN_BACKWARD_BLOCKS, 32 * ROWS_PER_BLOCK, smem, s>>>(
        dinp, partial, dout, inp, w, mean, rstd, N, C);
    add_partials(dw, db, partial, LN_BACKWARD_BLOCKS, 2 * C, C, s);
}
