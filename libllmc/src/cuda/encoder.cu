/*
 * encoder.cu: out[b,t] = wte[token] + wpe[t] (Llama: wte[token], wpe NULL),
 * and the gradients of both tables. The backward pass is deterministic without atomics: wpe's gradient
 * sums over the batch in order, and wte's is gathered from rows the host
 * sorted by token, in fixed chunks of them.
 */
#include "kernels.cuh"

__global__ void encoder_forward_kernel(bf16 *out, const int *tokens, const bf16 *wte,
                                       const bf16 *wpe, int N, int T, int C) {
    const int vecs = C / 8;
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * vecs) return;
    const int row = (int)(i / vecs), c = (int)(i % vecs) * 8;
    const int t = row % T;
    Vec16<bf16> a = load16(wte + (size_t)tokens[row] * C + c);
    if (wpe == nullptr) {
        store16(out + (size_t)row * C + c, a);
        return;
    }
    Vec16<bf16> p = load16(wpe + (size_t)t * C + c);
    Vec16<bf16> o;
    for (int k = 0; k < 8; k++)
        o.v[k] = __float2bfloat16(__bfloat162float(a.v[k]) + __bfloat162float(p.v[k]));
    store16(out + (size_t)row * C + c, o);
}

void encoder_forward(bf16 *out, const int *tokens, const bf16 *wte, const bf16 *wpe, int B, int T,
                     int C, cudaStream_t s) {
    const long n = (long)B * T * (C / 8);
    encoder_forward_kernel<<<ceil_div(n, 256), 256, 0, s>>>(out, tokens, wte, wpe, B * T, T, C);
}

/* dwpe[t, c] += sum over b of dout[b, t, c]. */
__global__ void wpe_backward_kernel(float *dwpe, const bf16 *dout, int B, int T, int C) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)T * C) return;
    float acc = 0.0f;
    for (int b = 0; b < B; b++) acc += __bfloat162float(dout[(size_t)b * T * C + i]);
    dwpe[i] += acc;
}

/* wte's gradient, deterministic without atomics, from the rows sorted by
 * token (order; bucket b = the rows of token[b], positions start[b] ..
 * start[b+1] - 1 in order). One block per WTE_CHUNK consecutive sorted
 * positions, so a frequent token (thousands of rows of real text) is summed
 * by many blocks: a token whose rows lie within one chunk is added to dwte
 * there; the pieces of one that crosses chunks go to partial, two rows of C
 * floats a chunk (0: the piece that ends in it, 1: the piece that goes on
 * past it), and wte_combine_kernel adds them up in chunk order. The sums'
 * order depends only on the tokens. */
#define WTE_CHUNK 32

__device__ void add_rows(float acc[8], const bf16 *dout, const int *order, int from, int to,
                         int C, int c) {
#pragma unroll 4
    for (int j = from; j < to; j++) {
        const Vec16<bf16> v = load16(dout + (size_t)order[j] * C + c);
        for (int k = 0; k < 8; k++) acc[k] += __bfloat162float(v.v[k]);
    }
}

__global__ void wte_backward_kernel(float *dwte, float *partial, const bf16 *dout,
                                    const int *order, const int *start, const int *token,
                                    int num_buckets, int N, int C) {
    const int begin = blockIdx.x * WTE_CHUNK, end = min(begin + WTE_CHUNK, N);
    int lo = 0, hi = num_buckets - 1;  // the bucket holding position begin
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (start[mid] <= begin) lo = mid; else hi = mid - 1;
    }
    for (int b = lo; b < num_buckets && start[b] < end; b++) {
        const int from = max(start[b], begin), to = min(start[b + 1], end);
        const bool before = start[b] < begin, after = start[b + 1] > end;
        float *dst = !before && !after ? dwte + (size_t)token[b] * C
                                       : partial + (size_t)(2 * blockIdx.x + after) * C;
        for (int c = threadIdx.x * 8; c < C; c += blockDim.x * 8) {
            float acc[8] = {};
            add_rows(acc, dout, order, from, to, C, c);
            for (int k = 0; k < 8; k++) dst[c + k] = (!before && !after ? dst[c + k] : 0.0f) + acc[k];
        }
    }
}

/* One block per bucket; those that span chunks add their pieces in chunk order. */
__global__ void wte_combine_kernel(float *dwte, const float *partial, const int *start,
                                   const int *token, int C) {
    const int b = blockIdx.x;
    const int first = start[b] / WTE_CHUNK, last = (start[b + 1] - 1) / WTE_CHUNK;
    if (first == last) return;
    float *dst = dwte + (size_t)token[b] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = 0.0f;
        for (int k = first; k < last; k++) acc += partial[(size_t)(2 * k + 1) * C + c];
        dst[c] += acc + partial[(size_t)(2 * last) * C + c];
    }
}

void encoder_backward(float *dwte, float *dwpe, float *partial, const bf16 *dout,
                      const int *order, const int *bucket_start, const int *bucket_token,
                      int num_buckets, int B, int T, int C, cudaStream_t s) {
    if (dwpe) wpe_backward_kernel<<<ceil_div((long)T * C, 256), 256, 0, s>>>(dwpe, dout, B, T, C);
    if (num_buckets == 0) return;
    const int N = B * T, threads = std::min(256, ceil_div(C / 8, 32) * 32);
    wte_backward_kernel<<<ceil_div(N, WTE_CHUNK), threads, 0, s>>>(
        dwte, partial, dout, order, bucket_start, bucket_token, num_buckets, N, C);
    wte_combine_kernel<<<num_buckets, 256, 0, s>>>(dwte, partial, bucket_start, bucket_token, C);
}
