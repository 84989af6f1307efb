/*
 * adamw.cu: AdamW on fp32 master weights and moments; the bf16 weights the
 * model computes with are re-derived from the masters by stochastic rounding
 * whose random bits depend only on (seed, element index). Calling
 * round_params with the same seed therefore reproduces the bf16 weights of a
 * step exactly, which is what makes a resumed run bit-identical. A tensor
 * without a bf16 copy (param NULL: FP8's block weights) is rounded later, a
 * matrix at a time, by the same rule.
 */
#include "kernels.cuh"

__global__ void adamw_kernel(float *master, bf16 *param, float *m, float *v, const float *grad,
                             size_t n, float lr, float beta1, float beta2, float bias_corr1,
                             float bias_corr2, float eps, float weight_decay, float grad_scale,
                             uint32_t seed, size_t index0) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = grad[i] * grad_scale;
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    const float mhat = mi / bias_corr1, vhat = vi / bias_corr2;
    float w = master[i];
    w -= lr * (mhat / (sqrtf(vhat) + eps) + weight_decay * w);
    m[i] = mi;
    v[i] = vi;
    master[i] = w;
    if (param) param[i] = bf16_stochastic(w, hash2(seed, (uint32_t)(index0 + i)));
}

void adamw_update(float *master, bf16 *param, float *m, float *v, const float *grad, size_t n,
                  float lr, float beta1, float beta2, float bias_corr1, float bias_corr2,
                  float eps, float weight_decay, float grad_scale, uint32_t seed, size_t index0,
                  cudaStream_t s) {
    adamw_kernel<<<ceil_div((long)n, 256), 256, 0, s>>>(master, param, m, v, grad, n, lr, beta1,
                                                        beta2, bias_corr1, bias_corr2, eps,
                                                        weight_decay, grad_scale, seed, index0);
}

__global__ void round_params_kernel(bf16 *param, const float *master, size_t n, uint32_t seed,
                                    size_t index0) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    param[i] = bf16_stochastic(master[i], hash2(seed, (uint32_t)(index0 + i)));
}

void round_params(bf16 *param, const float *master, size_t n, uint32_t seed, size_t index0,
                  cudaStream_t s) {
    round_params_kernel<<<ceil_div((long)n, 256), 256, 0, s>>>(param, master, n, seed, index0);
}
