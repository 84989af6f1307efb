/*
 * greedy.cu: greedy decoding's choice on the device (decode.cuh), so that a
 * greedy step brings back a token and a log-probability per row instead of
 * the row's logits: the argmax (the lowest id on a tie, generate.c's rule)
 * and log-softmax at it, -log(sum of e^(logit - max)).
 *
 * One block per row; each thread keeps its own max, the lowest id holding
 * it and the sum of e^(logit - max) (rescaled when the max grows), merged
 * across the block in a fixed order: deterministic.
 */
#include "decode.cuh"

#define GREEDY_THREADS 512

/* Running (max, its lowest id, sum of e^(x - max)); sum 0: nothing seen. */
struct Pick {
    float max, sum;
    int id;
};

__device__ __forceinline__ Pick merge(Pick a, Pick b) {
    if (b.sum == 0.0f) return a;
    if (a.sum == 0.0f) return b;
    const float m = fmaxf(a.max, b.max);
    const float sum = a.sum * expf(a.max - m) + b.sum * expf(b.max - m);
    const bool take_b = b.max > a.max || (b.max == a.max && b.id < a.id);
    return {m, sum, take_b ? b.id : a.id};
}

__device__ __forceinline__ Pick warp_merge(Pick p) {
    for (int o = 16; o > 0; o >>= 1) {
        const Pick q = {__shfl_xor_sync(0xFFFFFFFFu, p.max, o),
                        __shfl_xor_sync(0xFFFFFFFFu, p.sum, o),
                        __shfl_xor_sync(0xFFFFFFFFu, p.id, o)};
        p = merge(p, q);
    }
    return p;
}

__global__ void __launch_bounds__(GREEDY_THREADS)
    greedy_kernel(greedy_pick *out, const float *logits, int V, int Vp, int *next_pos,
                  int *next_tok) {
    const float *x = logits + (size_t)blockIdx.x * Vp;
    Pick p = {-INFINITY, 0.0f, 0};
    for (int i = threadIdx.x; i < V; i += blockDim.x) {  // ids rising: a tie keeps the first
        const float v = x[i];
        if (p.sum == 0.0f || v > p.max) {
            p.sum = p.sum * expf(p.max - v) + 1.0f;  // 0 * e^-inf = 0 on the first
            p.max = v;
            p.id = i;
        } else {
            p.sum += expf(v - p.max);
        }
    }
    p = warp_merge(p);
    __shared__ Pick warps[GREEDY_THREADS / 32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) warps[warp] = p;
    __syncthreads();
    if (threadIdx.x == 0) {
        Pick all = warps[0];
        for (int w = 1; w < (int)blockDim.x / 32; w++) all = merge(all, warps[w]);
        out[blockIdx.x] = {all.id, x[all.id] - all.max - logf(all.sum)};
        if (next_pos) {
            next_pos[blockIdx.x]++;
            next_tok[blockIdx.x] = all.id;
        }
    }
}

void greedy_rows(greedy_pick *out, const float *logits, int n, int V, int Vp, int *next_pos,
                 int *next_tok, cudaStream_t s) {
    greedy_kernel<<<n, GREEDY_THREADS, 0, s>>>(out, logits, V, Vp, next_pos, next_tok);
}
