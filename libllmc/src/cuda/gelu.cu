/*
 * gelu.cu: GELU, tanh approximation as GPT-2 uses. Forward only: the
 * training path fuses GELU and its derivative into cuBLASLt epilogues; this
 * kernel recomputes the activation in backward when options.recompute >= 1.
 */
#include "kernels.cuh"

__global__ void gelu_forward_kernel(bf16 *out, const bf16 *inp, size_t n) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    Vec16<bf16> x = load16(inp + i), y;
    for (int j = 0; j < 8; j++) y.v[j] = __float2bfloat16(gelu_tanh(__bfloat162float(x.v[j])));
    store16(out + i, y);
}

void gelu_forward(bf16 *out, const bf16 *inp, size_t n, cudaStream_t s) {
    gelu_forward_kernel<<<ceil_div((long)(n / 8), 256), 256, 0, s>>>(out, inp, n);
}
