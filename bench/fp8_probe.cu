// fp8_probe.cu: times one transformer block's matrix products through cuBLASLt in bf16 and in
// FP8 (E4M3 activations and weights, E5M2 gradients) at a model's shapes, and says which
// epilogues cuBLASLt accepts with FP8 inputs. The ceiling FP8 can give a step, before any cast.
//   nvcc -O2 -arch=sm_90 -o /tmp/fp8_probe bench/fp8_probe.cu -lcublasLt
//   /tmp/fp8_probe N C   (N = B*T rows, C channels; d12 at B=64: 65536 768)
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                            \
    do {                                                                                 \
        auto e_ = (x);                                                                   \
        if ((int)e_ != 0) { fprintf(stderr, "%s:%d %s -> %d\n", __FILE__, __LINE__, #x, (int)e_); exit(1); } \
    } while (0)

__global__ void fill(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 13; h *= 0x5bd1e995u; h ^= h >> 15;
        p[i] = (unsigned char)(h & 0x77);  // finite, moderate values for bf16 and both fp8 kinds
    }
}

static cublasLtHandle_t lt;
static void *ws;
static const size_t WS = 32u << 20;

struct Prod { const char *name; int m, n, k; bool ta, tb; cublasLtEpilogue_t epi; bool acc; };

// D (m, n) col-major = op(A) op(B); returns median ms or -1 when cuBLASLt has no algorithm
static float run(const Prod &p, cudaDataType_t at, cudaDataType_t bt, cudaDataType_t dt,
                 void *A, void *B, void *D, void *bias, void *aux, float *scale, bool fast) {
    cublasLtMatmulDesc_t op;
    CK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = p.ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = p.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &p.epi, sizeof p.epi));
    if (p.epi == CUBLASLT_EPILOGUE_BIAS || p.epi == CUBLASLT_EPILOGUE_GELU_AUX_BIAS)
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    if (p.epi == CUBLASLT_EPILOGUE_GELU_AUX_BIAS || p.epi == CUBLASLT_EPILOGUE_DGELU) {
        int64_t ld = p.m;
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux));
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof ld));
        cudaDataType_t auxt = CUDA_R_16BF;
        if (at != CUDA_R_16BF)
            CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, &auxt, sizeof auxt));
    }
    if (at != CUDA_R_16BF) {
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &scale, sizeof scale));
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &scale, sizeof scale));
        int8_t f = fast;
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &f, sizeof f));
        if (bias) {
            cudaDataType_t bt16 = CUDA_R_16BF;
            CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt16, sizeof bt16));
        }
    }
    cublasLtMatrixLayout_t la, lb, ld;
    CK(cublasLtMatrixLayoutCreate(&la, at, p.ta ? p.k : p.m, p.ta ? p.m : p.k, p.ta ? p.k : p.m));
    CK(cublasLtMatrixLayoutCreate(&lb, bt, p.tb ? p.n : p.k, p.tb ? p.k : p.n, p.tb ? p.n : p.k));
    CK(cublasLtMatrixLayoutCreate(&ld, dt, p.m, p.n, p.m));
    cublasLtMatmulPreference_t pref;
    CK(cublasLtMatmulPreferenceCreate(&pref));
    CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &WS, sizeof WS));
    cublasLtMatmulHeuristicResult_t r[8];
    int found = 0;
    cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, ld, ld, pref, 8, r, &found);
    float best = -1;
    const float alpha = 1, beta = p.acc ? 1 : 0;
    for (int c = 0; c < found; c++) {  // the fastest of the heuristic's candidates
        cudaEvent_t e0, e1;
        cudaEventCreate(&e0); cudaEventCreate(&e1);
        std::vector<float> t;
        bool ok = true;
        for (int rep = 0; rep < 12 && ok; rep++) {
            cudaEventRecord(e0);
            ok = cublasLtMatmul(lt, op, &alpha, A, la, B, lb, &beta, D, ld, D, ld, &r[c].algo, ws, WS, 0) == CUBLAS_STATUS_SUCCESS;
            cudaEventRecord(e1);
            cudaEventSynchronize(e1);
            float ms; cudaEventElapsedTime(&ms, e0, e1);
            if (rep >= 2) t.push_back(ms);
        }
        if (ok) {
            std::sort(t.begin(), t.end());
            if (best < 0 || t[t.size() / 2] < best) best = t[t.size() / 2];
        }
        cudaEventDestroy(e0); cudaEventDestroy(e1);
    }
    cudaGetLastError();
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la); cublasLtMatrixLayoutDestroy(lb); cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatmulDescDestroy(op);
    return best;
}

int main(int argc, char **argv) {
    const int N = argc > 1 ? atoi(argv[1]) : 65536, C = argc > 2 ? atoi(argv[2]) : 768;
    CK(cublasLtCreate(&lt));
    CK(cudaMalloc(&ws, WS));
    size_t big = (size_t)N * 4 * C * 4 + (size_t)16 * C * C * 4;
    unsigned char *A, *B, *D, *aux, *bias;
    CK(cudaMalloc(&A, big)); CK(cudaMalloc(&B, big)); CK(cudaMalloc(&D, big)); CK(cudaMalloc(&aux, big));
    CK(cudaMalloc(&bias, 16 * C));
    fill<<<1024, 256>>>(A, big, 1); fill<<<1024, 256>>>(B, big, 2); fill<<<1024, 256>>>(aux, big, 3);
    CK(cudaMemset(bias, 0, 16 * C));
    float *scale; CK(cudaMalloc(&scale, 4)); float one = 1; CK(cudaMemcpy(scale, &one, 4, cudaMemcpyHostToDevice));
    // the block's products as the backend writes them (column-major view); FP8 needs op(A)=T, op(B)=N
    const cublasLtEpilogue_t DEF = CUBLASLT_EPILOGUE_DEFAULT, BIAS = CUBLASLT_EPILOGUE_BIAS;
    Prod fwd[] = {{"fwd qkv", 3 * C, N, C, true, false, BIAS, false},
                  {"fwd attproj", C, N, C, true, false, BIAS, false},
                  {"fwd fc+gelu", 4 * C, N, C, true, false, CUBLASLT_EPILOGUE_GELU_AUX_BIAS, false},
                  {"fwd fcproj", C, N, 4 * C, true, false, BIAS, false}};
    Prod bin[] = {{"dinp qkv", C, N, 3 * C, true, false, DEF, false},
                  {"dinp attproj", C, N, C, true, false, DEF, false},
                  {"dinp fc", C, N, 4 * C, true, false, DEF, false},
                  {"dinp fcproj+dgelu", 4 * C, N, C, true, false, CUBLASLT_EPILOGUE_DGELU, false}};
    // weight gradients, fp32 accumulate: dW^T (IC, OC) += X^T (IC,N) dY (N,OC); bf16 as the backend
    // (A = X stored (IC,N), op N; B = dY stored (OC,N), op T); FP8 with transposed copies (TN)
    Prod wg[] = {{"dw qkv", C, 3 * C, N, false, true, DEF, true},
                 {"dw attproj", C, C, N, false, true, DEF, true},
                 {"dw fc", C, 4 * C, N, false, true, DEF, true},
                 {"dw fcproj", 4 * C, C, N, false, true, DEF, true}};
    double tot_bf = 0, tot_f8 = 0;
    printf("N=%d C=%d: product, bf16 ms, fp8 ms (fast accum / split accum), speed-up\n", N, C);
    auto row = [&](Prod p, cudaDataType_t a8, cudaDataType_t b8, cudaDataType_t dt) {
        float bf = run(p, CUDA_R_16BF, CUDA_R_16BF, dt, A, B, D, bias, aux, scale, false);
        Prod q = p; q.ta = true; q.tb = false;
        float f8 = run(q, a8, b8, dt, A, B, D, bias, aux, scale, true);
        float f8s = run(q, a8, b8, dt, A, B, D, bias, aux, scale, false);
        double fl = 2.0 * p.m * p.n * p.k;
        printf("%-18s bf16 %7.3f ms (%4.0f TF)  fp8 fast %7.3f (%4.0f TF)  split %7.3f  x%.2f\n", p.name, bf,
               fl / bf / 1e9, f8, f8 > 0 ? fl / f8 / 1e9 : 0, f8s, f8 > 0 ? bf / f8 : 0);
        tot_bf += bf; tot_f8 += f8 > 0 ? std::min(f8, f8s > 0 ? f8s : f8) : bf;
    };
    for (auto &p : fwd) row(p, CUDA_R_8F_E4M3, CUDA_R_8F_E4M3, CUDA_R_16BF);
    for (auto &p : bin) row(p, CUDA_R_8F_E4M3, CUDA_R_8F_E5M2, CUDA_R_16BF);
    for (auto &p : wg) row(p, CUDA_R_8F_E4M3, CUDA_R_8F_E5M2, CUDA_R_32F);
    printf("block total: bf16 %.3f ms, fp8 %.3f ms per layer and micro-step\n", tot_bf, tot_f8);
    return 0;
}
