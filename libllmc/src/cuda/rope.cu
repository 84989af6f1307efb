/*
 * rope.cu: rotary position embeddings (Llama) on the NH query and NKV key
 * heads at the start of each fused qkv row, in place; channels 2i and 2i+1
 * of a head turn by t * inv_freq[i] (Meta's and llm.c's pairing), in fp32.
 * The inverse rotation is the backward pass. Training rotates rows of whole
 * sequences (row r at position r % T), generation single tokens at their
 * own positions; both read a table made by rope_upload_table.
 */
#include <math.h>
#include <stdlib.h>

#include "kernels.cuh"
extern "C" {
#include "config.h"
}

/* pos NULL: row r is at position r % T; else at pos[r]. Launched as a
 * programmatic dependent (common.cuh's launch_pdl): in a generation step it
 * sits between the qkv GEMV and the cache. */
__global__ void rope_kernel(bf16 *qkv, const float *cos_t, const float *sin_t, const int *pos,
                            int N, int T, int heads, int width, int half, float sign) {
    pdl_launch_dependents();
    pdl_wait();
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * heads * half) return;
    const int row = (int)(i / ((long)heads * half)), rest = (int)(i % ((long)heads * half));
    const int h = rest / half, j = rest % half, t = pos ? pos[row] : row % T;
    __nv_bfloat162 *x = reinterpret_cast<__nv_bfloat162 *>(qkv + (size_t)row * width +
                                                           (size_t)h * 2 * half + 2 * j);
    const float c = cos_t[(size_t)t * half + j], s = sign * sin_t[(size_t)t * half + j];
    const float2 v = __bfloat1622float2(*x);
    *x = __floats2bfloat162_rn(v.x * c - v.y * s, v.x * s + v.y * c);
}

static void rope_launch(bf16 *qkv, const float *cos_t, const float *sin_t, const int *pos, int N,
                        int T, int NH, int NKV, int hs, float sign, cudaStream_t s) {
    const int heads = NH + NKV, half = hs / 2;
    const long n = (long)N * heads * half;
    launch_pdl(rope_kernel, dim3(ceil_div(n, 256)), dim3(256), s, qkv, cos_t, sin_t, pos, N, T,
               heads, (NH + 2 * NKV) * hs, half, sign);
}

void rope_rotate(bf16 *qkv, const float *cos_t, const float *sin_t, int B, int T, int NH, int NKV,
                 int hs, bool inverse, cudaStream_t s) {
    rope_launch(qkv, cos_t, sin_t, nullptr, B * T, T, NH, NKV, hs, inverse ? -1.0f : 1.0f, s);
}

void rope_rotate_at(bf16 *qkv, const float *cos_t, const float *sin_t, const int *pos, int n,
                    int NH, int NKV, int hs, cudaStream_t s) {
    rope_launch(qkv, cos_t, sin_t, pos, n, 1, NH, NKV, hs, 1.0f, s);
}

llmc_status rope_upload_table(float *cos_t, float *sin_t, const llmc_config *c, int T,
                              cudaStream_t s) {
    const int half = c->channels / c->num_heads / 2;
    const size_t count = (size_t)T * half;
    /* malloc, not a vector: no C++ exception may leave the backend */
    float *inv_freq = (float *)malloc(half * sizeof(float));
    float *table = (float *)malloc(2 * count * sizeof(float));
    if (!inv_freq || !table) {
        free(inv_freq);
        free(table);
        return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory for RoPE's table of %d "
                          "positions", T);
    }
    llmc_rope_inv_freq(c, inv_freq);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            /* the angle rounded to fp32, then its cosine and sine correctly
             * rounded: the CPU backend's table (cpu/rope.c) */
            const float angle = (float)t * inv_freq[i];
            table[(size_t)t * half + i] = (float)cos((double)angle);
            table[count + (size_t)t * half + i] = (float)sin((double)angle);
        }
    cudaError_t e = cudaMemcpyAsync(cos_t, table, count * sizeof(float), cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(sin_t, table + count, count * sizeof(float), cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);  // before the host table is freed
    free(inv_freq);
    free(table);
    if (e != cudaSuccess) return cuda_status(e, "uploading RoPE's table", __FILE__, __LINE__);
    return LLMC_OK;
}
