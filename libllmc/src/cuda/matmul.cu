/*
 * matmul.cu: cuBLASLt calls with fused epilogues (bias, GELU with its
 * pre-activation saved, GELU derivative). cuBLASLt is column-major; a
 * row-major (R, C) matrix is its column-major (C, R) transpose, so every
 * product below is written for the transposes.
 *
 * The algorithm is chosen once per shape and cached: asking the heuristic
 * costs tens of microseconds. Its first choice is not always its fastest
 * (d12 on an H100: 956 -> 938 ms/step with the choice below), so the first
 * time a shape runs, its first 8 candidates are timed on the product's own
 * operands and the fastest is kept among those that add up each element in
 * the first choice's order (same_sums) and give its output bit for bit:
 * which one wins may vary between processes, the numbers do not, so runs
 * and resumed runs stay bit-identical. Products that accumulate into their
 * output are not timed (see fastest_identical).
 */
#include <cublasLt.h>

#include <map>
#include <new>
#include <tuple>

#include "matmul.cuh"

#define WORKSPACE_BYTES (32u << 20)  // what cuBLAS recommends for Hopper

typedef std::tuple<int, int, int, int, int, int, int, int, int, int, int, int, int, int> AlgoKey;

struct mm_ctx {
    cublasLtHandle_t handle = nullptr;
    cudaStream_t stream = nullptr;
    void *workspace = nullptr;
    std::map<AlgoKey, cublasLtMatmulAlgo_t> algos;
    unsigned long long *fingerprint = nullptr;  // 2 device words for fastest_identical
};

static llmc_status lt_status(cublasStatus_t st, const char *what) {
    if (st == CUBLAS_STATUS_ALLOC_FAILED)
        return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "cuBLASLt out of memory (%s)", what);
    return llmc_error(LLMC_ERR_DEVICE, "cuBLASLt %s: %s", what, cublasLtGetStatusString(st));
}

#define LT_TRY(call)                                              \
    do {                                                          \
        cublasStatus_t st_ = (call);                              \
        if (st_ != CUBLAS_STATUS_SUCCESS) return lt_status(st_, #call); \
    } while (0)

llmc_status mm_create(mm_ctx **out, cudaStream_t s) {
    *out = nullptr;
    mm_ctx *ctx = new (std::nothrow) mm_ctx;
    if (!ctx) return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory");
    ctx->stream = s;
    cublasStatus_t st = cublasLtCreate(&ctx->handle);
    if (st != CUBLAS_STATUS_SUCCESS) {
        delete ctx;
        return lt_status(st, "cublasLtCreate");
    }
    cudaError_t e = cudaMalloc(&ctx->workspace, WORKSPACE_BYTES);
    if (e != cudaSuccess) {
        mm_destroy(ctx);
        return cuda_status(e, "cuBLASLt workspace", __FILE__, __LINE__);
    }
    e = cudaMalloc(&ctx->fingerprint, 2 * sizeof(unsigned long long));
    if (e != cudaSuccess) {
        mm_destroy(ctx);
        return cuda_status(e, "cuBLASLt probe scratch", __FILE__, __LINE__);
    }
    *out = ctx;
    return LLMC_OK;
}

void mm_destroy(mm_ctx *ctx) {
    if (!ctx) return;
    cudaFree(ctx->workspace);
    cudaFree(ctx->fingerprint);
    if (ctx->handle) cublasLtDestroy(ctx->handle);
    delete ctx;
}

size_t mm_memory_bytes(const mm_ctx *ctx) { return ctx ? WORKSPACE_BYTES : 0; }

/* Descriptors freed on every path out of lt_matmul. */
struct Descs {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr, b_plan = nullptr, d_plan = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    ~Descs() {
        if (pref) cublasLtMatmulPreferenceDestroy(pref);
        for (cublasLtMatrixLayout_t l : {d_plan, b_plan, d, b, a})
            if (l) cublasLtMatrixLayoutDestroy(l);
        if (op) cublasLtMatmulDescDestroy(op);
    }
};

/* What a product reads and writes, for timing candidate algorithms on it. */
struct Product {
    const void *A, *B;
    void *D;
    size_t d_bytes;
    const void *aux_out;  // written by the GELU_AUX epilogues, else NULL
    size_t aux_bytes;
};

/* Order-independent fingerprint of n 16-bit words: the sum (mod 2^64) of a
 * mix of each word with its index, so equal fingerprints mean, but for a
 * 2^-64 chance, bit-identical buffers. */
__global__ void fingerprint_kernel(unsigned long long *out, const uint16_t *p, size_t n) {
    unsigned long long h = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        unsigned long long z = (i << 16 | p[i]) + 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        h += z ^ (z >> 31);
    }
    for (int o = 16; o > 0; o >>= 1) h += __shfl_xor_sync(0xffffffffu, h, o);
    if ((threadIdx.x & 31) == 0) atomicAdd(out, h);
}

/* Runs candidate algo on p and returns the fingerprints of D and of the aux
 * output. */
static bool run_and_fingerprint(mm_ctx *ctx, Descs &ds, const Product &p,
                                const cublasLtMatmulAlgo_t *algo, unsigned long long fp[2]) {
    const float alpha = 1.0f, beta = 0.0f;
    void *D = p.D;
    if (cublasLtMatmul(ctx->handle, ds.op, &alpha, p.A, ds.a, p.B, ds.b, &beta, D, ds.d, D, ds.d,
                       algo, ctx->workspace, WORKSPACE_BYTES, ctx->stream) != CUBLAS_STATUS_SUCCESS)
        return false;
    cudaMemsetAsync(ctx->fingerprint, 0, 2 * sizeof(unsigned long long), ctx->stream);
    fingerprint_kernel<<<264, 256, 0, ctx->stream>>>(ctx->fingerprint, (const uint16_t *)D,
                                                      p.d_bytes / 2);
    if (p.aux_out)
        fingerprint_kernel<<<264, 256, 0, ctx->stream>>>(ctx->fingerprint + 1,
                                                          (const uint16_t *)p.aux_out,
                                                          p.aux_bytes / 2);
    return cudaMemcpyAsync(fp, ctx->fingerprint, 2 * sizeof(unsigned long long),
                           cudaMemcpyDeviceToHost, ctx->stream) == cudaSuccess &&
           cudaStreamSynchronize(ctx->stream) == cudaSuccess;
}

/* Mean milliseconds of a few runs of algo on p (after a run already made). */
static float time_algo(mm_ctx *ctx, Descs &ds, const Product &p, const cublasLtMatmulAlgo_t *algo) {
    const float alpha = 1.0f, beta = 0.0f;
    const int reps = 3;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    cudaEventRecord(e0, ctx->stream);
    bool ok = true;
    for (int r = 0; r < reps; r++)
        ok &= cublasLtMatmul(ctx->handle, ds.op, &alpha, p.A, ds.a, p.B, ds.b, &beta, p.D, ds.d,
                             p.D, ds.d, algo, ctx->workspace, WORKSPACE_BYTES, ctx->stream) ==
              CUBLAS_STATUS_SUCCESS;
    cudaEventRecord(e1, ctx->stream);
    float ms = -1.0f;
    if (cudaEventSynchronize(e1) == cudaSuccess && ok) cudaEventElapsedTime(&ms, e0, e1);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return ms < 0 ? -1.0f : ms / reps;
}

/* Whether algorithms a and b sum each output element in the same order: the
 * same kernel family (ID, inner shape, custom option) and the same split of
 * the inner dimension (split-K count and how its pieces are reduced), so
 * they differ only in tiles, stages, cluster shape and block order, which
 * change what each block computes, not the order of any element's sums. */
static bool same_sums(const cublasLtMatmulAlgo_t *a, const cublasLtMatmulAlgo_t *b) {
    const cublasLtMatmulAlgoConfigAttributes_t attrs[] = {
        CUBLASLT_ALGO_CONFIG_ID, CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID,
        CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, CUBLASLT_ALGO_CONFIG_SPLITK_NUM,
        CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME};
    for (auto attr : attrs) {
        uint64_t va = 0, vb = 0;  // every one of them is at most 8 bytes
        size_t na = 0, nb = 0;
        if (cublasLtMatmulAlgoConfigGetAttribute(a, attr, &va, sizeof(va), &na) !=
                CUBLAS_STATUS_SUCCESS ||
            cublasLtMatmulAlgoConfigGetAttribute(b, attr, &vb, sizeof(vb), &nb) !=
                CUBLAS_STATUS_SUCCESS ||
            na != nb || va != vb)
            return false;
    }
    return true;
}

/* Index of the fastest of the heuristic's candidates that sum as its first
 * choice does (same_sums) and whose output is bit for bit the first
 * choice's (checked before and after timing, so a candidate that does not
 * repeat itself is out too). Any of them gives the same numbers, so a run is
 * reproducible whichever one the timing picks. The fingerprint alone is not
 * enough: rounded to bf16, the outputs of a candidate that sums in another
 * order (split-K) often match on the probe and differ on later data, which
 * made a resumed run's gradient norm differ in its last bits (fifth session,
 * tests/test_cuda.py's NCCL resume). Only products that overwrite their
 * output are timed: for those adding to it (weight gradients across
 * micro-steps), candidates that agree on one probe were seen to add the old
 * sum differently on other data, so they keep the heuristic's first choice. */
static int fastest_identical(mm_ctx *ctx, Descs &ds, const Product &p,
                             const cublasLtMatmulHeuristicResult_t *cands, int count) {
    int best = 0;
    unsigned long long ref[2], fp[2];
    float best_ms = -1.0f;
    if (run_and_fingerprint(ctx, ds, p, &cands[0].algo, ref))
        best_ms = time_algo(ctx, ds, p, &cands[0].algo);
    for (int i = 1; i < count && best_ms > 0; i++) {
        if (!same_sums(&cands[0].algo, &cands[i].algo) ||
            !run_and_fingerprint(ctx, ds, p, &cands[i].algo, fp) || fp[0] != ref[0] ||
            fp[1] != ref[1])
            continue;
        const float ms = time_algo(ctx, ds, p, &cands[i].algo);
        if (ms <= 0 || !run_and_fingerprint(ctx, ds, p, &cands[i].algo, fp) ||
            fp[0] != ref[0] || fp[1] != ref[1])
            continue;
        if (ms < best_ms) {
            best_ms = ms;
            best = i;
        }
    }
    cudaGetLastError();  // a candidate's failure is not the product's
    return best;
}

/* An algorithm for ds.op, ds.a and the layouts b, d, cached under key: the
 * heuristic's first, or with probe (the product itself, on these layouts),
 * the fastest of its first candidates that computes bit for bit what the
 * first does. */
static llmc_status find_algo(mm_ctx *ctx, const AlgoKey &key, Descs &ds, cublasLtMatrixLayout_t b,
                             cublasLtMatrixLayout_t d, const cublasLtMatmulAlgo_t **out,
                             const Product *probe = nullptr) {
    auto it = ctx->algos.find(key);
    if (it == ctx->algos.end()) {
        if (!ds.pref) {
            LT_TRY(cublasLtMatmulPreferenceCreate(&ds.pref));
            const size_t ws = WORKSPACE_BYTES;
            LT_TRY(cublasLtMatmulPreferenceSetAttribute(
                ds.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
            /* Per-layer weight slices and chunked rows are only 16-byte aligned. */
            const uint32_t align = 16;
            const cublasLtMatmulPreferenceAttributes_t aligns[4] = {
                CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
            for (auto attr : aligns)
                LT_TRY(cublasLtMatmulPreferenceSetAttribute(ds.pref, attr, &align, sizeof(align)));
        }
        const int want = probe ? 8 : 1;
        cublasLtMatmulHeuristicResult_t results[8];
        int found = 0;
        LT_TRY(cublasLtMatmulAlgoGetHeuristic(ctx->handle, ds.op, ds.a, b, d, d, ds.pref, want,
                                              results, &found));
        if (found == 0)
            return llmc_error(LLMC_ERR_DEVICE,
                              "cuBLASLt has no algorithm for a %dx%dx%d product (epilogue %d)",
                              std::get<0>(key), std::get<1>(key), std::get<2>(key),
                              std::get<9>(key));
        const int pick = probe && found > 1 ? fastest_identical(ctx, ds, *probe, results, found) : 0;
        it = ctx->algos.emplace(key, results[pick].algo).first;
    }
    *out = &it->second;
    return LLMC_OK;
}

/* FP8 operands of a product (Hopper): their types and the device scales
 * cuBLASLt multiplies them by; fast_accum: accumulate without cuBLASLt's
 * periodic promotion to fp32 (faster, a little less accurate). */
struct Fp8Operands {
    cudaDataType_t a_type, b_type;
    const float *a_scale, *b_scale;
    bool fast_accum;
};

/* D (m, n) = op(A) (m, k) @ op(B) (k, n) [+ D if accumulate], column-major;
 * bf16 operands, or with f8 the FP8 ones it describes.
 * With n_plan > n, the algorithm is the one chosen for n_plan columns where
 * it runs this product too: then each column's result is the one it gets
 * among n_plan columns, whatever columns come with it. */
static llmc_status lt_matmul(mm_ctx *ctx, void *D, cudaDataType_t d_type, const void *A,
                             const void *B, int m, int n, int n_plan, int k, bool trans_a,
                             bool trans_b, int lda, int ldb, int ldd, bool accumulate,
                             cublasLtEpilogue_t epilogue, const bf16 *bias, const void *aux,
                             int aux_ld, const Fp8Operands *f8 = nullptr) {
    Descs ds;
    const cublasOperation_t ta = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t tb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    LT_TRY(cublasLtMatmulDescCreate(&ds.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT_TRY(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    LT_TRY(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    LT_TRY(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                          sizeof(epilogue)));
    if (bias)
        LT_TRY(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                              sizeof(bias)));
    if (aux) {
        const int64_t ld = aux_ld;
        LT_TRY(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                              &aux, sizeof(aux)));
        LT_TRY(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld,
                                              sizeof(ld)));
    }
    const cudaDataType_t a_type = f8 ? f8->a_type : CUDA_R_16BF, b_type = f8 ? f8->b_type : CUDA_R_16BF;
    if (f8) {
        LT_TRY(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                                              &f8->a_scale, sizeof(f8->a_scale)));
        LT_TRY(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                                              &f8->b_scale, sizeof(f8->b_scale)));
        const int8_t fast = f8->fast_accum;
        LT_TRY(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast,
                                              sizeof(fast)));
        const cudaDataType_t bf16_type = CUDA_R_16BF;  // bias and GELU input stay bf16
        if (bias)
            LT_TRY(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                  &bf16_type, sizeof(bf16_type)));
        if (aux)
            LT_TRY(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE,
                                                  &bf16_type, sizeof(bf16_type)));
    }
    LT_TRY(cublasLtMatrixLayoutCreate(&ds.a, a_type, trans_a ? k : m, trans_a ? m : k, lda));
    LT_TRY(cublasLtMatrixLayoutCreate(&ds.b, b_type, trans_b ? n : k, trans_b ? k : n, ldb));
    LT_TRY(cublasLtMatrixLayoutCreate(&ds.d, d_type, m, n, ldd));

    const AlgoKey key{m, n, k, trans_a, trans_b, lda, ldb, ldd, (int)d_type, (int)epilogue,
                      accumulate, (int)a_type, (int)b_type, f8 && f8->fast_accum};
    const cublasLtMatmulAlgo_t *algo = nullptr;
    if (n_plan > n && ctx->algos.find(key) == ctx->algos.end()) {
        LT_TRY(cublasLtMatrixLayoutCreate(&ds.b_plan, b_type, trans_b ? n_plan : k,
                                          trans_b ? k : n_plan, ldb));
        LT_TRY(cublasLtMatrixLayoutCreate(&ds.d_plan, d_type, m, n_plan, ldd));
        AlgoKey plan_key = key;
        std::get<1>(plan_key) = n_plan;
        TRY(find_algo(ctx, plan_key, ds, ds.b_plan, ds.d_plan, &algo));
        cublasLtMatmulHeuristicResult_t check;
        if (cublasLtMatmulAlgoCheck(ctx->handle, ds.op, ds.a, ds.b, ds.d, ds.d, algo, &check) ==
                CUBLAS_STATUS_SUCCESS &&
            check.workspaceSize <= WORKSPACE_BYTES)
            ctx->algos.emplace(key, *algo);  // else the heuristic's own choice for n, below
    }
    const size_t d_elem = d_type == CUDA_R_32F ? 4 : 2;
    const bool aux_written = epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS ||
                             epilogue == CUBLASLT_EPILOGUE_GELU_AUX;
    const Product probe{A,
                        B,
                        D,
                        ((size_t)ldd * (n - 1) + m) * d_elem,
                        aux_written ? aux : nullptr,
                        aux_written ? ((size_t)aux_ld * (n - 1) + m) * sizeof(bf16) : 0};
    /* products adding to their output keep the heuristic's first choice (see fastest_identical) */
    TRY(find_algo(ctx, key, ds, ds.b, ds.d, &algo, accumulate ? nullptr : &probe));
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    LT_TRY(cublasLtMatmul(ctx->handle, ds.op, &alpha, A, ds.a, B, ds.b, &beta, D, ds.d, D, ds.d,
                          algo, ctx->workspace, WORKSPACE_BYTES, ctx->stream));
    return LLMC_OK;
}

/* Row-major out (N, OC) = inp (N, IC) @ w^T is column-major out^T (OC, N):
 * op(A) = A^T with A = w stored (IC, OC); B = inp^T stored (IC, N). */
llmc_status matmul_forward(mm_ctx *ctx, bf16 *out, const bf16 *inp, int inp_stride, const bf16 *w,
                           const bf16 *bias, int N, int IC, int OC, bf16 *gelu_pre, int plan_rows) {
    cublasLtEpilogue_t epi = gelu_pre ? (bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS
                                              : CUBLASLT_EPILOGUE_GELU_AUX)
                                      : (bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT);
    return lt_matmul(ctx, out, CUDA_R_16BF, w, inp, OC, N, plan_rows, IC, true, false, IC,
                     inp_stride, OC, false, epi, bias, gelu_pre, OC);
}

llmc_status matmul_forward_fp32(mm_ctx *ctx, float *out, const bf16 *inp, int inp_stride,
                                const bf16 *w, int N, int IC, int OC) {
    return lt_matmul(ctx, out, CUDA_R_32F, w, inp, OC, N, N, IC, true, false, IC, inp_stride, OC,
                     false, CUBLASLT_EPILOGUE_DEFAULT, nullptr, nullptr, 0);
}

/* dinp^T (IC, N) = w^T stored (IC, OC) @ dout^T stored (OC, N). */
llmc_status matmul_backward_input(mm_ctx *ctx, bf16 *dinp, const bf16 *dout, const bf16 *w, int N,
                                  int IC, int OC, const bf16 *gelu_pre) {
    return lt_matmul(ctx, dinp, CUDA_R_16BF, w, dout, IC, N, N, OC, false, false, IC, OC, IC, false,
                     gelu_pre ? CUBLASLT_EPILOGUE_DGELU : CUBLASLT_EPILOGUE_DEFAULT, nullptr,
                     gelu_pre, IC);
}

/* dw^T (IC, OC) += inp^T stored (IC, N) @ (dout^T stored (OC, N))^T. */
llmc_status matmul_backward_weight(mm_ctx *ctx, float *dw, const bf16 *dout, const bf16 *inp,
                                   int N, int IC, int OC) {
    return lt_matmul(ctx, dw, CUDA_R_32F, inp, dout, IC, OC, OC, N, false, true, IC, OC, IC, true,
                     CUBLASLT_EPILOGUE_DEFAULT, nullptr, nullptr, 0);
}

/* Whether an FP8 forward or input-gradient product summing over k terms
 * accumulates fast. Hopper's fast accumulation adds each partial product into
 * the running sum at reduced precision, so its error grows with k: the
 * products over a layer's width (k <= 8192) accumulate fast, as Transformer
 * Engine's forward products do; the LM head's input gradient (k = the
 * vocabulary) and every weight gradient (k = the tokens, whatever the batch)
 * with cuBLASLt's periodic promotion to fp32. Input gradients fast: d12 FP8
 * -0.5%, d24 -1.2% a step on an H200 (bench/CUDA_NOTES.md). */
static bool fast_accum(int k) { return k <= 8192; }

/* The FP8 products, all in cuBLASLt's TN form (Hopper takes no other):
 * out^T (OC, N) = w8 (OC, IC) rows . inp8 (N, IC) rows. */
llmc_status matmul_forward_fp8(mm_ctx *ctx, bf16 *out, const void *inp8, const void *w8,
                               const float *inp_descale, const float *w_descale, const bf16 *bias,
                               int N, int IC, int OC, int plan_rows) {
    const Fp8Operands f8{CUDA_R_8F_E4M3, CUDA_R_8F_E4M3, w_descale, inp_descale, fast_accum(IC)};
    return lt_matmul(ctx, out, CUDA_R_16BF, w8, inp8, OC, N, plan_rows, IC, true, false, IC, IC, OC,
                     false,
                     bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT, bias, nullptr, 0, &f8);
}

/* dinp^T (IC, N) = wT8 (IC, OC) rows . dout8 (N, OC) rows. */
llmc_status matmul_backward_input_fp8(mm_ctx *ctx, bf16 *dinp, const void *dout8, const void *wT8,
                                      const float *dout_descale, const float *w_descale, int N,
                                      int IC, int OC, bool dout_e4m3) {
    const Fp8Operands f8{CUDA_R_8F_E4M3, dout_e4m3 ? CUDA_R_8F_E4M3 : CUDA_R_8F_E5M2, w_descale,
                         dout_descale, fast_accum(OC)};
    return lt_matmul(ctx, dinp, CUDA_R_16BF, wT8, dout8, IC, N, N, OC, true, false, OC, OC, IC,
                     false, CUBLASLT_EPILOGUE_DEFAULT, nullptr, nullptr, 0, &f8);
}

/* dw^T (IC, OC) += inpT8 (IC, N) rows . doutT8 (OC, N) rows, fp32. */
llmc_status matmul_backward_weight_fp8(mm_ctx *ctx, float *dw, const void *doutT8,
                                       const void *inpT8, const float *dout_descale,
                                       const float *inp_descale, int N, int IC, int OC,
                                       bool dout_e4m3) {
    const Fp8Operands f8{CUDA_R_8F_E4M3, dout_e4m3 ? CUDA_R_8F_E4M3 : CUDA_R_8F_E5M2, inp_descale,
                         dout_descale, false};
    return lt_matmul(ctx, dw, CUDA_R_32F, inpT8, doutT8, IC, OC, OC, N, true, false, N, N, IC, true,
                     CUBLASLT_EPILOGUE_DEFAULT, nullptr, nullptr, 0, &f8);
}
