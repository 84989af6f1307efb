/*
 * encoder.cu: out[b,t] = wte[token] + wpe[t] (Llama: wte[token], wpe NULL),
 * and the gradients of both tables. The backward pass is deterministic without atomics: wpe's gradient
 * sums over the batch in order, and wte's is gathered one distinct token at a
 * time from rows the host sorted by token.
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

/* One block per distinct token: dwte[token, c] += sum of its rows, in row order. */
__global__ void wte_backward_kernel(float *dwte, const bf16 *dout, const int *order,
                                    const int *bucket_start, const int *bucket_token, int C) {
    const int bucket = blockIdx.x;
    const int begin = bucket_start[bucket], end = bucket_start[bucket + 1];
    float *dst = dwte + (size_t)bucket_token[bucket] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = 0.0f;
        for (int j = begin; j < end; j++) acc += __bfloat162float(dout[(size_t)order[j] * C + c]);
        dst[c] += acc;
    }
}

void encoder_backward(float *dwte, float *dwpe, const bf16 *dout, const int *order,
                      const int *bucket_start, const int *bucket_token, int num_buckets, int B,
                      int T, int C, cudaStream_t s) {
    if (dwpe) wpe_backward_kernel<<<ceil_div((long)T * C, 256), 256, 0, s>>>(dwpe, dout, B, T, C);
    if (num_buckets > 0)
        wte_backward_kernel<<<num_buckets, 256, 0, s>>>(dwte, dout, order, bucket_start,
                                                        bucket_token, C);
}
