/*
 * layernorm.cu: LayerNorm forward (optionally fused with the residual add
 * before it) and backward. One warp per row; each lane owns 8 consecutive
 * channels per 256-channel slice, so that every access is 16 bytes wide.
 */
#include <algorithm>

#include "fp8.cuh"
#include "kernels.cuh"

#define ROWS_PER_BLOCK 8  // warps per block

/* Normalizes row `row` of x (already in memory) into out, or into fp8.out
 * (kernels.cuh), returning the lane's largest magnitude written there.
 * Shared by both forward kernels so that a recomputed LayerNorm is
 * bit-identical to the original. */
__device__ __forceinline__ float normalize_row(bf16 *out, float *mean_out, float *rstd_out,
                                               const bf16 *x, const bf16 *w, const bf16 *b,
                                               int row, int C, int lane, const ln_fp8_out &fp8) {
    x += (size_t)row * C;
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
    const float scale = fp8.out ? *fp8.scale : 0.0f;
    float amax = 0.0f;
    for (int c = lane * 8; c < C; c += 256) {
        Vec16<bf16> v = load16(x + c), wv = load16(w + c), bv = load16(b + c), o;
        for (int k = 0; k < 8; k++)
            o.v[k] = __float2bfloat16((__bfloat162float(v.v[k]) - mean) * rstd *
                                          __bfloat162float(wv.v[k]) +
                                      __bfloat162float(bv.v[k]));
        if (!fp8.out) {
            store16(out + (size_t)row * C + c, o);
            continue;
        }
        float y[8];
        for (int k = 0; k < 8; k++) {
            y[k] = __bfloat162float(o.v[k]);
            amax = fmaxf(amax, fabsf(y[k]));
        }
        uint32_t q[2];
        to_fp8x8(q, y, scale, false);
        *(uint2 *)(fp8.out + (size_t)row * C + c) = make_uint2(q[0], q[1]);
    }
    if (lane == 0) {
        *mean_out = mean;
        *rstd_out = rstd;
    }
    return amax;
}

/* The block's largest magnitude into *amax (atomicMax on the float's bits,
 * order-free for non-negative floats, so deterministic). */
__device__ __forceinline__ void record_amax(float *amax, float lane_amax) {
    __shared__ float warp_amax[ROWS_PER_BLOCK];
    const float m = warp_max(lane_amax);
    if (threadIdx.x % 32 == 0) warp_amax[threadIdx.x / 32] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        float block = warp_amax[0];
        for (int w = 1; w < ROWS_PER_BLOCK; w++) block = fmaxf(block, warp_amax[w]);
        atomicMax(reinterpret_cast<unsigned int *>(amax), __float_as_uint(block));
    }
}

__global__ void layernorm_forward_kernel(bf16 *out, float *mean, float *rstd, const bf16 *inp,
                                         const bf16 *w, const bf16 *b, int N, int C,
                                         const ln_fp8_out fp8) {
    const int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    float amax = 0.0f;
    if (row < N) amax = normalize_row(out, mean + row, rstd + row, inp, w, b, row, C, lane, fp8);
    if (fp8.amax) record_amax(fp8.amax, amax);
}

__global__ void residual_layernorm_forward_kernel(bf16 *res_out, bf16 *out, float *mean,
                                                  float *rstd, const bf16 *res_in,
                                                  const bf16 *branch, const bf16 *w, const bf16 *b,
                                                  int N, int C, const ln_fp8_out fp8) {
    const int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    float amax = 0.0f;
    if (row < N) {
        const size_t off = (size_t)row * C;
        residual_add_row(res_out + off, res_in + off, branch + off, C, lane);
        amax = normalize_row(out, mean + row, rstd + row, res_out, w, b, row, C, lane, fp8);
    }
    if (fp8.amax) record_amax(fp8.amax, amax);
}

void layernorm_forward(bf16 *out, float *mean, float *rstd, const bf16 *inp, const bf16 *w,
                       const bf16 *b, int N, int C, cudaStream_t s, const ln_fp8_out &fp8) {
    layernorm_forward_kernel<<<ceil_div(N, ROWS_PER_BLOCK), 32 * ROWS_PER_BLOCK, 0, s>>>(
        out, mean, rstd, inp, w, b, N, C, fp8);
}

void residual_layernorm_forward(bf16 *res_out, bf16 *out, float *mean, float *rstd,
                                const bf16 *res_in, const bf16 *branch, const bf16 *w,
                                const bf16 *b, int N, int C, cudaStream_t s,
                                const ln_fp8_out &fp8) {
    residual_layernorm_forward_kernel<<<ceil_div(N, ROWS_PER_BLOCK), 32 * ROWS_PER_BLOCK, 0, s>>>(
        res_out, out, mean, rstd, res_in, branch, w, b, N, C, fp8);
}

/* Decode rows (decode_norm), both families' norms (RMSNorm: LayerNorm
 * without the mean or a bias): a block per row, each thread holding K
 * 16-byte slices (threadIdx.x + k blockDim.x) in registers, so that a row
 * costs one round of loads and one block sum per statistic, not a warp's
 * serial passes over memory (~7 us for one row of 1600 in the training
 * kernel). */
template <int K, int NORM>
__global__ void __launch_bounds__(1024)
    decode_norm_kernel(bf16 *res_out, bf16 *out, const bf16 *res_in, const bf16 *branch,
                       row_norm norm, int C) {
    pdl_launch_dependents();  // the GEMV that follows (gemv.cu) may start loading its weights
    __shared__ float shared32[32];
    const size_t off = (size_t)blockIdx.x * C;
    float x[K][8];
    Vec16<bf16> wv[K], bv[K];
#pragma unroll
    for (int k = 0; k < K; k++) {  // the weights do not depend on the kernel before
        const int c = (threadIdx.x + k * blockDim.x) * 8;
        if (c >= C) continue;
        wv[k] = load16(norm.w + c);
        for (int e = 0; e < 8; e++) bv[k].v[e] = __float2bfloat16(0.0f);
        if (NORM == NORM_LAYER) bv[k] = load16(norm.b + c);
    }
    pdl_wait();  // the residual branch does
    float sum = 0.0f;  // LayerNorm: of x; RMSNorm: of x^2
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int c = (threadIdx.x + k * blockDim.x) * 8;
        if (c >= C) continue;
        residual_slice(x[k], res_out + off, res_in + off, branch ? branch + off : nullptr, c);
        for (int e = 0; e < 8; e++) sum += NORM == NORM_LAYER ? x[k][e] : x[k][e] * x[k][e];
    }
    float mean = 0.0f, squares = block_sum(sum, shared32);
    if (NORM == NORM_LAYER) {
        mean = squares / C;
        float var = 0.0f;
#pragma unroll
        for (int k = 0; k < K; k++) {
            if ((threadIdx.x + k * blockDim.x) * 8 >= C) continue;
            for (int e = 0; e < 8; e++) var += (x[k][e] - mean) * (x[k][e] - mean);
        }
        squares = block_sum(var, shared32);
    }
    const float rstd = rsqrtf(squares / C + norm.eps);
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int c = (threadIdx.x + k * blockDim.x) * 8;
        if (c >= C) continue;
        Vec16<bf16> o;
        for (int e = 0; e < 8; e++) {  // as the training kernels compute each element
            const float w = __bfloat162float(wv[k].v[e]), b = __bfloat162float(bv[k].v[e]);
            o.v[e] = __float2bfloat16(NORM == NORM_LAYER ? (x[k][e] - mean) * rstd * w + b
                                                         : w * (x[k][e] * rstd));
        }
        store16(out + off + c, o);
    }
}

void decode_norm(bf16 *res_out, bf16 *out, const bf16 *res_in, const bf16 *branch,
                 const row_norm &norm, int n, int C, cudaStream_t s) {
    const int threads = decode_norm_threads(C);
    const bool one = ceil_div(C / 8, threads) == 1;
    auto kernel = norm.kind == NORM_RMS ? (one ? decode_norm_kernel<1, NORM_RMS>
                                               : decode_norm_kernel<2, NORM_RMS>)
                                        : (one ? decode_norm_kernel<1, NORM_LAYER>
                                               : decode_norm_kernel<2, NORM_LAYER>);
    launch_pdl(kernel, dim3(n), dim3(threads), s, res_out, out, res_in, branch, norm, C);
}

/* Each warp takes rows in a fixed stride. A lane owns channels
 * lane*8 + 256*j (+0..7) for j < K and keeps their running dw, db (and
 * column-sum) terms in registers while they fit (K <= LN_REGISTER_K), else in
 * its warp's slice of shared memory: at C = 1280 and 1600 the 3 x 8K
 * accumulators beside the row's 4 x 8K inputs spilled, and the kernel took a
 * third of a d48 micro-step. The same additions in the same order either way.
 * A warp's slice holds term (j, k) of lane l at (j*8 + k)*32 + l, so that the
 * 32 lanes of one access hit 32 different banks (by channel, lanes 8 floats
 * apart would share 4 banks: 8-way conflicts on every add). At the end the
 * block adds its warps' sums in order into partial[blockIdx.x] (3C wide:
 * dw | db | column sums of the new dinp). */
#define LN_REGISTER_K 4
template <int K>
__global__ void __launch_bounds__(32 * ROWS_PER_BLOCK)
    layernorm_backward_kernel(bf16 *dinp, float *partial, const bf16 *dout, const bf16 *inp,
                              const bf16 *w, const float *mean, const float *rstd, int N, int C) {
    extern __shared__ float smem[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    constexpr bool in_registers = K <= LN_REGISTER_K;
    constexpr int R = in_registers ? K : 1, KC = K * 256;
    float acc_w[R][8] = {}, acc_b[R][8] = {}, acc_s[R][8] = {};
    /* this warp's dw | db | column sums, KC slots each; term (j, k) of this lane */
    float *mine = smem + (size_t)warp * 3 * KC + lane;
#define SLOT(j, k) (((j) * 8 + (k)) * 32)
    if constexpr (!in_registers) {
        for (int i = 0; i < 3 * KC; i += 32) mine[i] = 0.0f;
    }
    Vec16<bf16> wv[K];
#pragma unroll
    for (int j = 0; j < K; j++)
        if (lane * 8 + j * 256 < C) wv[j] = load16(w + lane * 8 + j * 256);
    for (int row = blockIdx.x * ROWS_PER_BLOCK + warp; row < N; row += gridDim.x * ROWS_PER_BLOCK) {
        const size_t off = (size_t)row * C;
        const float mu = mean[row], rs = rstd[row];
        Vec16<bf16> x[K], dy[K], d[K];
#pragma unroll
        for (int j = 0; j < K; j++) {
            const int c = lane * 8 + j * 256;
            if (c < C) {
                x[j] = load16(inp + off + c);
                dy[j] = load16(dout + off + c);
                d[j] = load16(dinp + off + c);
            }
        }
        float sum_dn = 0.0f, sum_dn_xhat = 0.0f;
#pragma unroll
        for (int j = 0; j < K; j++) {
            if (lane * 8 + j * 256 >= C) continue;
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const float xhat = (__bfloat162float(x[j].v[k]) - mu) * rs;
                const float g = __bfloat162float(dy[j].v[k]);
                const float dn = g * __bfloat162float(wv[j].v[k]);
                sum_dn += dn;
                sum_dn_xhat += dn * xhat;
                if constexpr (in_registers) {
                    acc_w[j][k] += g * xhat;
                    acc_b[j][k] += g;
                } else {
                    mine[SLOT(j, k)] += g * xhat;
                    mine[KC + SLOT(j, k)] += g;
                }
            }
        }
        sum_dn = warp_sum(sum_dn) / C;
        sum_dn_xhat = warp_sum(sum_dn_xhat) / C;
#pragma unroll
        for (int j = 0; j < K; j++) {
            const int c = lane * 8 + j * 256;
            if (c >= C) continue;
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const float xhat = (__bfloat162float(x[j].v[k]) - mu) * rs;
                const float dn = __bfloat162float(dy[j].v[k]) * __bfloat162float(wv[j].v[k]);
                const float dx = (dn - sum_dn - xhat * sum_dn_xhat) * rs;
                d[j].v[k] = __float2bfloat16(__bfloat162float(d[j].v[k]) + dx);
                if constexpr (in_registers) acc_s[j][k] += __bfloat162float(d[j].v[k]);
                else mine[2 * KC + SLOT(j, k)] += __bfloat162float(d[j].v[k]);
            }
            store16(dinp + off + c, d[j]);
        }
    }
    if constexpr (in_registers) {
#pragma unroll
        for (int j = 0; j < K; j++) {
            for (int k = 0; k < 8; k++) {
                mine[SLOT(j, k)] = acc_w[j][k];
                mine[KC + SLOT(j, k)] = acc_b[j][k];
                mine[2 * KC + SLOT(j, k)] = acc_s[j][k];
            }
        }
    }
#undef SLOT
    __syncthreads();
    /* slot i of each third -> channel lane*8 + j*256 + k; slots past C are padding */
    for (int i = threadIdx.x; i < 3 * KC; i += blockDim.x) {
        const int part = i / KC, r = i % KC, j = r / 256, k = r % 256 / 32, l = r % 32;
        const int c = l * 8 + j * 256 + k;
        if (c >= C) continue;
        float s = 0.0f;
        for (int w = 0; w < ROWS_PER_BLOCK; w++) s += smem[(size_t)w * 3 * KC + i];
        partial[(size_t)blockIdx.x * 3 * C + part * C + c] = s;
    }
}

/* Launches with as many blocks as fit the GPU at once (at most
 * LN_BACKWARD_BLOCKS): a fixed number for a given device and C, so the
 * partial sums, and the result, are always the same. */
template <int K>
int launch_layernorm_backward(bf16 *dinp, float *partial, const bf16 *dout, const bf16 *inp,
                              const bf16 *w, const float *mean, const float *rstd, int N, int C,
                              cudaStream_t s) {
    const int smem = ROWS_PER_BLOCK * 3 * 256 * K * (int)sizeof(float);
    static int blocks = 0, blocks_C = 0;
    if (C != blocks_C) {
        cudaFuncSetAttribute(layernorm_backward_kernel<K>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
        int device = 0, sms = 0, per_sm = 0;
        cudaGetDevice(&device);
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, layernorm_backward_kernel<K>,
                                                      32 * ROWS_PER_BLOCK, smem);
        blocks = std::max(1, std::min(LN_BACKWARD_BLOCKS, sms * per_sm));
        blocks_C = C;
    }
    layernorm_backward_kernel<K><<<blocks, 32 * ROWS_PER_BLOCK, smem, s>>>(
        dinp, partial, dout, inp, w, mean, rstd, N, C);
    return blocks;
}

void layernorm_backward(bf16 *dinp, float *dw, float *db, float *dsum, float *partial,
                        const bf16 *dout, const bf16 *inp, const bf16 *w, const float *mean,
                        const float *rstd, int N, int C, cudaStream_t s) {
    int blocks = 0;
    switch (ceil_div(C, 256)) {
#define LN_CASE(K)                                                                         \
    case K:                                                                                \
        blocks = launch_layernorm_backward<K>(dinp, partial, dout, inp, w, mean, rstd, N, C, s); \
        break;
        LN_CASE(1) LN_CASE(2) LN_CASE(3) LN_CASE(4) LN_CASE(5) LN_CASE(6) LN_CASE(7) LN_CASE(8)
#undef LN_CASE
        default: return;  // C > LN_MAX_CHANNELS is refused when the model is created
    }
    add_partials(dw, db, partial, blocks, 3 * C, 2 * C, C, s);
    if (dsum) add_partials(dsum, dsum, partial + 2 * C, blocks, 3 * C, C, C, s);
}
