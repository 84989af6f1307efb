// fp8_cast_probe.cu: times the FP8 cast launchers of libllmc/src/cuda/fp8.cu (fp8_quantize, with
// its bias-gradient partials added) at d12's and d48's shapes, on random normal bf16, for one
// variant of the cast kernel's knobs (-D at compile time), and checks its outputs against the
// default variant's. bench/fp8_cast_probe.sh builds the variants and prints the table.
//   fp8_cast_probe NAME SIGNATURES [REFERENCE] [--copy]
// writes NAME's output signatures (fingerprints of the FP8 bytes, amax, the bias sums) to
// SIGNATURES, compares them with REFERENCE's, and prints one "row" line per case:
//   row NAME CASE us TB/s check
// effective TB/s = (bf16 bytes read + FP8 bytes written) / time. --copy adds a bf16 copy of the
// same bytes per case (variant "copy"): the bandwidth a plain streaming kernel gets.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "cuda/fp8.cu"
#include "probe.cuh"

struct Case {
    const char *name;
    int rows, cols, transform;
    bool dbias;
};

static const Case CASES[] = {
    {"d12-768-as_is", 65536, 768, FP8_AS_IS, false},
    {"d12-2304-as_is-dbias", 65536, 2304, FP8_AS_IS, true},
    {"d12-3072-gelu", 65536, 3072, FP8_GELU, false},
    {"d12-3072-gelu_grad-dbias", 65536, 3072, FP8_GELU_GRAD, true},
    {"d48-1600-as_is", 16384, 1600, FP8_AS_IS, false},
    {"d48-6400-gelu_grad-dbias", 16384, 6400, FP8_GELU_GRAD, true},
    // ragged shapes for the checks: rows % 16 == 8, partial tiles and column strips
    {"odd-1000x200-as_is-dbias", 1000, 200, FP8_AS_IS, true},
    {"odd-776x136-gelu_grad-dbias", 776, 136, FP8_GELU_GRAD, true},
    {"odd-1048x72-gelu", 1048, 72, FP8_GELU, false},
};
static const int RUNS = 20, WARMUP = 3;

// order-free fingerprint of n bytes: the sum of a 64-bit mix of (index, byte)
__device__ __forceinline__ unsigned long long mix64(unsigned long long x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
__global__ void fingerprint(unsigned long long *sum, const uint8_t *p, size_t n) {
    unsigned long long s = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        s += mix64(i << 8 | p[i]);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xFFFFFFFFu, s, o);
    if (threadIdx.x % 32 == 0) atomicAdd(sum, s);
}

// the roofline reference: n 16-byte vectors copied, four loads in flight per thread
__global__ void copy16(uint4 *dst, const uint4 *src, size_t n) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    for (; i + 3 * step < n; i += 4 * step) {
        uint4 v[4];
        for (int k = 0; k < 4; k++) v[k] = src[i + k * step];
        for (int k = 0; k < 4; k++) dst[i + k * step] = v[k];
    }
    for (; i < n; i += step) dst[i] = src[i];
}

struct Signature {
    unsigned long long out = 0, outT = 0;
    uint32_t amax = 0, amax_only = 0;
    std::vector<float> dbias;
};

static unsigned long long print_of(unsigned long long *d_sum, const uint8_t *p, size_t n) {
    CK(cudaMemset(d_sum, 0, 8));
    fingerprint<<<1024, 256>>>(d_sum, p, n);
    unsigned long long h = 0;
    CK(cudaMemcpy(&h, d_sum, 8, cudaMemcpyDeviceToHost));
    return h;
}

// median time (us) of RUNS launches of f, each after the L2 is flushed
template <class F>
static float time_us(F f, void *flush, size_t flush_bytes) {
    for (int i = 0; i < WARMUP; i++) f();
    cudaEvent_t e0[RUNS], e1[RUNS];
    for (int i = 0; i < RUNS; i++) {
        CK(cudaEventCreate(&e0[i]));
        CK(cudaEventCreate(&e1[i]));
        CK(cudaMemsetAsync(flush, i, flush_bytes));
        CK(cudaEventRecord(e0[i]));
        f();
        CK(cudaEventRecord(e1[i]));
    }
    CK(cudaDeviceSynchronize());
    CK(cudaGetLastError());
    std::vector<float> t(RUNS);
    for (int i = 0; i < RUNS; i++) {
        CK(cudaEventElapsedTime(&t[i], e0[i], e1[i]));
        cudaEventDestroy(e0[i]);
        cudaEventDestroy(e1[i]);
    }
    return median(t) * 1000.0f;
}

static std::map<std::string, Signature> read_signatures(const char *path) {
    std::map<std::string, Signature> m;
    FILE *f = fopen(path, "r");
    if (!f) return m;
    char name[128];
    Signature s;
    int n;
    while (fscanf(f, "%127s %llx %llx %x %x %d", name, &s.out, &s.outT, &s.amax, &s.amax_only,
                  &n) == 6) {
        s.dbias.resize(n);
        for (int i = 0; i < n; i++)
            if (fscanf(f, "%a", &s.dbias[i]) != 1) return m;
        m[name] = s;
    }
    fclose(f);
    return m;
}

// "same" (bytes, amax and sums bit-identical to the reference), "same-bytes,sums~X" (the sums X
// apart, relative to the largest reference sum: at most 1e-5), else "MISMATCH:" what differs
static std::string compare(const Signature &a, const Signature *ref) {
    if (!ref) return "no-reference";
    double diff = 0, scale = 0;
    for (size_t i = 0; i < a.dbias.size() && a.dbias.size() == ref->dbias.size(); i++) {
        diff = std::max(diff, (double)fabsf(a.dbias[i] - ref->dbias[i]));
        scale = std::max(scale, (double)fabsf(ref->dbias[i]));
    }
    char sums[64];
    snprintf(sums, sizeof sums, "sums~%.1e", scale > 0 ? diff / scale : diff);
    std::string r;
    if (a.out != ref->out) r += ",out-bytes";
    if (a.outT != ref->outT) r += ",outT-bytes";
    if (a.amax != ref->amax || a.amax_only != ref->amax_only) r += ",amax";
    if (a.dbias.size() != ref->dbias.size()) r += ",sums-count";
    if (diff > 1e-5 * scale) r += std::string(",") + sums;
    if (!r.empty()) return "MISMATCH:" + r.substr(1);
    return diff == 0 ? "same" : std::string("same-bytes,") + sums;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s NAME SIGNATURES [REFERENCE] [--copy]\n", argv[0]);
        return 2;
    }
    const char *variant = argv[1], *sig_path = argv[2];
    const char *ref_path = argc > 3 && strcmp(argv[3], "--copy") ? argv[3] : nullptr;
    const bool copy = !strcmp(argv[argc - 1], "--copy");
    const std::map<std::string, Signature> refs =
        ref_path ? read_signatures(ref_path) : std::map<std::string, Signature>();

    // the variant's kernels as compiled
    const void *kernels[3] = {(const void *)quantize_kernel<false, FP8_AS_IS>,
                              (const void *)quantize_kernel<false, FP8_GELU>,
                              (const void *)quantize_kernel<false, FP8_GELU_GRAD>};
    const char *transforms[3] = {"as_is", "gelu", "gelu_grad"};
    for (int t = 0; t < 3; t++) {
        cudaFuncAttributes a;
        int per_sm = 0;
        CK(cudaFuncGetAttributes(&a, kernels[t]));
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernels[t], CAST_THREADS, 0));
        printf("kernel %s %s: %d threads, %d registers, %zu bytes spilled, %zu bytes shared, "
               "%d blocks/SM, tile %d x %d\n",
               variant, transforms[t], CAST_THREADS, a.numRegs, a.localSizeBytes,
               a.sharedSizeBytes, per_sm, TILE_ROWS, TILE);
    }

    size_t max_elems = 0, max_copy = 0;
    for (const Case &c : CASES) {
        const size_t e = (size_t)c.rows * c.cols;
        max_elems = std::max(max_elems, e);
        max_copy = std::max(max_copy, e * (c.transform == FP8_GELU_GRAD ? 3 : 2));
    }
    bf16 *in;  // the input, then the GELU pre-activation right after it (the copy reads both)
    uint8_t *out, *outT, *copy_dst;
    void *flush;
    const size_t flush_bytes = 256u << 20;  // > the H200's 50 MB L2
    float *dbias, *partial;
    unsigned long long *d_sum;
    CK(cudaMalloc(&in, 2 * max_elems * sizeof(bf16)));
    CK(cudaMalloc(&out, max_elems));
    CK(cudaMalloc(&outT, max_elems));
    CK(cudaMalloc(&copy_dst, max_copy));
    CK(cudaMalloc(&flush, flush_bytes));
    CK(cudaMalloc(&dbias, 8192 * sizeof(float)));
    CK(cudaMalloc(&partial, (size_t)CAST_ROW_SPLITS * 8192 * sizeof(float)));
    CK(cudaMalloc(&d_sum, 8));
    bf16 *pre = in + max_elems;
    fill_normal<<<4096, 256>>>(in, 2 * max_elems, 1234u);
    CK(cudaGetLastError());

    // one layer's scaling state: slot 0 an input (E4M3), slot s.slot(FP8_G, 0, 0) a gradient (E5M2)
    fp8_scaling s;
    s.L = 1;
    CK(cudaMalloc(&s.scale, s.slots() * sizeof(float)));
    CK(cudaMalloc(&s.amax, s.slots() * sizeof(float)));
    CK(cudaMalloc(&s.descale, (size_t)s.slots() * FP8_DESCALE_STRIDE * sizeof(float)));
    CK(cudaMalloc(&s.history, (size_t)s.slots() * FP8_HISTORY * sizeof(float)));

    FILE *sig = fopen(sig_path, "w");
    if (!sig) {
        perror(sig_path);
        return 1;
    }
    for (const Case &c : CASES) {
        const size_t n = (size_t)c.rows * c.cols;
        const int slot = c.dbias ? s.slot(FP8_G, 0, FP8_FC) : s.slot(FP8_X, 0, FP8_FCPROJ);
        const fp8_transform t{c.transform, c.transform == FP8_GELU_GRAD ? pre : nullptr};
        // scaled from the tensor's own amax (the amax-only kernel), as before a history exists
        Signature sg;
        fp8_reset(s, 0);
        fp8_amax(in, t, c.rows, c.cols, 1, 0, s, slot, 0);
        CK(cudaMemcpy(&sg.amax_only, s.amax + slot, 4, cudaMemcpyDeviceToHost));
        fp8_set_scales(s, slot, 1, 1, false, 0);
        CK(cudaMemset(s.amax, 0, s.slots() * sizeof(float)));
        CK(cudaMemset(dbias, 0, c.cols * sizeof(float)));
        CK(cudaMemset(out, 0, n));
        CK(cudaMemset(outT, 0, n));
        auto cast = [&]() {
            fp8_quantize(out, outT, in, t, c.rows, c.cols, 1, 0, 0, s, slot, true,
                         c.dbias ? dbias : nullptr, partial, 0);
        };
        cast();
        CK(cudaDeviceSynchronize());
        CK(cudaGetLastError());
        sg.out = print_of(d_sum, out, n);
        sg.outT = print_of(d_sum, outT, n);
        CK(cudaMemcpy(&sg.amax, s.amax + slot, 4, cudaMemcpyDeviceToHost));
        if (c.dbias) {
            sg.dbias.resize(c.cols);
            CK(cudaMemcpy(sg.dbias.data(), dbias, c.cols * sizeof(float), cudaMemcpyDeviceToHost));
        }
        fprintf(sig, "%s %llx %llx %x %x %d", c.name, sg.out, sg.outT, sg.amax, sg.amax_only,
                (int)sg.dbias.size());
        for (float v : sg.dbias) fprintf(sig, " %a", v);
        fprintf(sig, "\n");
        auto ref = refs.find(c.name);
        std::string check = compare(sg, ref == refs.end() ? nullptr : &ref->second);
        if (sg.amax != sg.amax_only) check += ",MISMATCH:fp8_amax-not-fp8_quantize's-amax";

        const double bytes = (double)n * (c.transform == FP8_GELU_GRAD ? 4 : 2) + 2.0 * n;
        const float us = time_us(cast, flush, flush_bytes);
        printf("row %s %s %.1f %.2f %s\n", variant, c.name, us, bytes / us * 1e-6, check.c_str());
        if (copy) {
            const size_t vecs = (size_t)(bytes / 2) / 16;
            const float cu = time_us(
                [&]() { copy16<<<132 * 16, 256>>>((uint4 *)copy_dst, (const uint4 *)in, vecs); },
                flush, flush_bytes);
            printf("row copy %s %.1f %.2f -\n", c.name, cu, 2.0 * vecs * 16 / cu * 1e-6);
        }
        fflush(stdout);
    }
    fclose(sig);
    return 0;
}
