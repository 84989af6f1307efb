/*
 * rope.cu: rotary position embeddings (Llama) on the NH query and NKV key
 * heads at the start of each fused qkv row, in place; channels 2i and 2i+1
 * of a head turn by t * inv_freq[i] (Meta's and llm.c's pairing), in fp32.
 * The inverse rotation is the backward pass.
 */
#include "kernels.cuh"

__global__ void rope_kernel(bf16 *qkv, const float *cos_t, const float *sin_t, int N, int T,
                            int heads, int width, int half, float sign) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * heads * half) return;
    const int row = (int)(i / ((long)heads * half)), rest = (int)(i % ((long)heads * half));
    const int h = rest / half, j = rest % half, t = row % T;
    __nv_bfloat162 *x = reinterpret_cast<__nv_bfloat162 *>(qkv + (size_t)row * width +
                                                           (size_t)h * 2 * half + 2 * j);
    const float c = cos_t[(size_t)t * half + j], s = sign * sin_t[(size_t)t * half + j];
    const float2 v = __bfloat1622float2(*x);
    *x = __floats2bfloat162_rn(v.x * c - v.y * s, v.x * s + v.y * c);
}

void rope_rotate(bf16 *qkv, const float *cos_t, const float *sin_t, int B, int T, int NH, int NKV,
                 int hs, bool inverse, cudaStream_t s) {
    const int heads = NH + NKV, half = hs / 2;
    const long n = (long)B * T * heads * half;
    rope_kernel<<<ceil_div(n, 256), 256, 0, s>>>(qkv, cos_t, sin_t, B * T, T, heads,
                                                  (NH + 2 * NKV) * hs, half, inverse ? -1.0f : 1.0f);
}
