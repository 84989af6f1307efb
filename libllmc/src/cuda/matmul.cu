/*
 * matmul.cu: cuBLASLt calls with fused epilogues (bias, GELU with its
 * pre-activation saved, GELU derivative). cuBLASLt is column-major; a
 * row-major (R, C) matrix is its column-major (C, R) transpose, so every
 * product below is written for the transposes.
 *
 * The heuristic's choice is cached per shape: asking costs tens of
 * microseconds, and a fixed choice keeps results bit-reproducible.
 */
#include <cublasLt.h>

#include <map>
#include <new>
#include <tuple>

#include "matmul.cuh"

#define WORKSPACE_BYTES (32u << 20)  // what cuBLAS recommends for Hopper

typedef std::tuple<int, int, int, int, int, int, int, int, int, int, int> AlgoKey;

struct mm_ctx {
    cublasLtHandle_t handle = nullptr;
    cudaStream_t stream = nullptr;
    void *workspace = nullptr;
    std::map<AlgoKey, cublasLtMatmulAlgo_t> algos;
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
    *out = ctx;
    return LLMC_OK;
}

void mm_destroy(mm_ctx *ctx) {
    if (!ctx) return;
    cudaFree(ctx->workspace);
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

/* The heuristic's first algorithm for ds.op, ds.a and the layouts b, d,
 * cached under key. */
static llmc_status find_algo(mm_ctx *ctx, const AlgoKey &key, Descs &ds, cublasLtMatrixLayout_t b,
                             cublasLtMatrixLayout_t d, const cublasLtMatmulAlgo_t **out) {
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
        cublasLtMatmulHeuristicResult_t result;
        int found = 0;
        LT_TRY(cublasLtMatmulAlgoGetHeuristic(ctx->handle, ds.op, ds.a, b, d, d, ds.pref, 1,
                                              &result, &found));
        if (found == 0)
            return llmc_error(LLMC_ERR_DEVICE,
                              "cuBLASLt has no algorithm for a %dx%dx%d product (epilogue %d)",
                              std::get<0>(key), std::get<1>(key), std::get<2>(key),
                              std::get<9>(key));
        it = ctx->algos.emplace(key, result.algo).first;
    }
    *out = &it->second;
    return LLMC_OK;
}

/* D (m, n) = op(A) (m, k) @ op(B) (k, n) [+ D if accumulate], column-major.
 * With n_plan > n, the algorithm is the one chosen for n_plan columns where
 * it runs this product too: then each column's result is the one it gets
 * among n_plan columns, whatever columns come with it. */
static llmc_status lt_matmul(mm_ctx *ctx, void *D, cudaDataType_t d_type, const bf16 *A,
                             const bf16 *B, int m, int n, int n_plan, int k, bool trans_a,
                             bool trans_b, int lda, int ldb, int ldd, bool accumulate,
                             cublasLtEpilogue_t epilogue, const bf16 *bias, const void *aux,
                             int aux_ld) {
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
    LT_TRY(cublasLtMatrixLayoutCreate(&ds.a, CUDA_R_16BF, trans_a ? k : m, trans_a ? m : k, lda));
    LT_TRY(cublasLtMatrixLayoutCreate(&ds.b, CUDA_R_16BF, trans_b ? n : k, trans_b ? k : n, ldb));
    LT_TRY(cublasLtMatrixLayoutCreate(&ds.d, d_type, m, n, ldd));

    const AlgoKey key{m, n, k, trans_a, trans_b, lda, ldb, ldd, (int)d_type, (int)epilogue,
                      accumulate};
    const cublasLtMatmulAlgo_t *algo = nullptr;
    if (n_plan > n && ctx->algos.find(key) == ctx->algos.end()) {
        LT_TRY(cublasLtMatrixLayoutCreate(&ds.b_plan, CUDA_R_16BF, trans_b ? n_plan : k,
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
    TRY(find_algo(ctx, key, ds, ds.b, ds.d, &algo));
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
