/*
 * swiglu.cu: Llama's MLP activation on rows [up (F) | gate (F)]:
 * out = up * silu(gate), and its gradient into both halves. F is a multiple
 * of 8 (16-byte vectors).
 */
#include "kernels.cuh"

/* Launched as a programmatic dependent (common.cuh's launch_pdl): in a
 * generation step it sits between two GEMVs. */
__global__ void swiglu_forward_kernel(bf16 *out, const bf16 *inp, int N, int F) {
    pdl_launch_dependents();
    pdl_wait();
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    const int vecs = F / 8;
    if (i >= (long)N * vecs) return;
    const size_t row = i / vecs, c = (i % vecs) * 8;
    Vec16<bf16> u = load16(inp + row * 2 * F + c), g = load16(inp + row * 2 * F + F + c), o;
    for (int k = 0; k < 8; k++) {
        const float gk = __bfloat162float(g.v[k]);
        o.v[k] = __float2bfloat16(__bfloat162float(u.v[k]) * (gk / (1.0f + __expf(-gk))));
    }
    store16(out + row * F + c, o);
}

__global__ void swiglu_backward_kernel(bf16 *dinp, const bf16 *dout, const bf16 *inp, int N, int F) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    const int vecs = F / 8;
    if (i >= (long)N * vecs) return;
    const size_t row = i / vecs, c = (i % vecs) * 8;
    Vec16<bf16> u = load16(inp + row * 2 * F + c), g = load16(inp + row * 2 * F + F + c);
    Vec16<bf16> d = load16(dout + row * F + c), du, dg;
    for (int k = 0; k < 8; k++) {
        const float gk = __bfloat162float(g.v[k]), dk = __bfloat162float(d.v[k]);
        const float s = 1.0f / (1.0f + __expf(-gk));
        du.v[k] = __float2bfloat16(dk * gk * s);
        dg.v[k] = __float2bfloat16(dk * __bfloat162float(u.v[k]) * s * (1.0f + gk * (1.0f - s)));
    }
    store16(dinp + row * 2 * F + c, du);
    store16(dinp + row * 2 * F + F + c, dg);
}

void swiglu_forward(bf16 *out, const bf16 *inp, int N, int F, cudaStream_t s) {
    const long n = (long)N * (F / 8);
    launch_pdl(swiglu_forward_kernel, dim3(ceil_div(n, 256)), dim3(256), s, out, inp, N, F);
}

void swiglu_backward(bf16 *dinp, const bf16 *dout, const bf16 *inp, int N, int F, cudaStream_t s) {
    const long n = (long)N * (F / 8);
    swiglu_backward_kernel<<<ceil_div(n, 256), 256, 0, s>>>(dinp, dout, inp, N, F);
}
