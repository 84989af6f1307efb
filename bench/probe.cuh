// probe.cuh: what the CUDA probes in bench/ share (fp8_cast_probe.cu, gemv_probe.cu): the error
// check, the median, random normal bf16. Included after the library source under test, whose
// common.cuh gives bf16 and hash2.
#pragma once
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                                  \
    do {                                                                                       \
        cudaError_t e_ = (x);                                                                  \
        if (e_ != cudaSuccess) {                                                               \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

static float median(std::vector<float> t) {
    std::sort(t.begin(), t.end());
    return 0.5f * (t[(t.size() - 1) / 2] + t[t.size() / 2]);
}

// standard normal bf16 from a hash of the index (Box-Muller)
__global__ void fill_normal(bf16 *p, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const uint32_t a = hash2(seed, (uint32_t)i), b = hash2(a, (uint32_t)(i >> 32) + 1u);
        const float u = (a + 1.0f) * 2.3283064e-10f, v = b * 2.3283064e-10f;  // (0, 1], [0, 1)
        p[i] = __float2bfloat16(sqrtf(-2.0f * logf(u)) * cospif(2.0f * v));
    }
}
