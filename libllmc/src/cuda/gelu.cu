/*
 * gelu.cu: GELU, tanh approximation as GPT-2 uses. Forward only: the
 * training path fuses GELU and its derivative into cuBLASLt epilogues; this
 * kernel recomputes the activation in backward when options.recompute >= 1.
 */
#include "kernels.cuh"

__global__ void gelu_forward_kernel(bf16 *out, const bf16 *inp, size_t n) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    const float k = 0.7978845608028654f;  // sqrt(2 / pi)
    Vec16<bf16> x = load16(inp + i), y;
    for (int j = 0; j < 8; j++) {
        float v = __bfloat162float(x.v[j]);
        y.v[j] = __float2bfloat16(0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v))));
    }
    store16(out + i, y);
}

void gelu_forward(bf16 *out, const bf16 *inp, size_t n, cudaStream_t s) {
    gelu_forward_kernel<<<ceil_div((long)(n / 8), 256), 256, 0, s>>>(out, inp, n);
}
