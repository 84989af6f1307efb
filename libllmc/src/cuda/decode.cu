/*
 * decode.cu: the CUDA backend's generation (model.h's llmc_decode_ops): a
 * bf16 key/value cache and the forward pass of rows that are single tokens
 * of cached sequences, over the training kernels (LayerNorm fused with the
 * residual add, cuBLASLt products with fused bias and GELU) and the cache
 * kernels of kvcache.cu.
 *
 * A decode step (every live sequence's newest token, logits for each) of n
 * rows runs as a CUDA graph, captured the second time n is seen (the first
 * run picks and times the products' algorithms, which cannot happen inside
 * a capture); only the rows' slots, positions and tokens are uploaded
 * before it, and the logits copied back after. Prefill chunks run eagerly.
 *
 * Memory, planned and checked against the free device memory at creation:
 * every layer's keys and values for S slots of T positions, the activations
 * of R rows and the fp32 logits of S rows.
 */
#include <cstring>
#include <new>
#include <vector>

#include "decode.cuh"
#include "kernels.cuh"

namespace {

struct cuda_cache {
    int S, T, R, L, C, NH, V, Vp;
    void *mem = nullptr;
    size_t bytes = 0;
    bf16 *keys, *values;             // (L, S, NH, T, hs) each
    bf16 *x, *ln, *qkv, *atty, *branch, *fch, *fch_gelu;
    float *mean, *rstd, *logits;     // (R), (R), (S, Vp)
    int *rows;                       // slot, pos, token (R each), out_rows (S)
    int *rows_host = nullptr;        // pinned staging of rows
    std::vector<cudaGraphExec_t> graphs;  // per step size n (1..S): captured graph
    std::vector<char> seen;               // per n: ran once eagerly
};

/* Buffers in allocation order, bytes each (256-byte aligned). */
struct Layout {
    size_t bytes[14];
};

Layout layout(const llmc_model *m, int S, int T, int R) {
    const size_t L = m->config.num_layers, C = m->config.channels, Vp = m->config.padded_vocab_size;
    const size_t kv = L * S * (size_t)T * C * sizeof(bf16), row = (size_t)R * C * sizeof(bf16);
    return {{kv, kv, row, row, 3 * row, row, row, 4 * row, 4 * row, R * sizeof(float),
             R * sizeof(float), (size_t)S * Vp * sizeof(float), (3 * (size_t)R + S) * sizeof(int),
             0}};
}

size_t aligned(size_t b) { return (b + 255) & ~(size_t)255; }

size_t total_bytes(const Layout &l) {
    size_t t = 0;
    for (size_t b : l.bytes) t += aligned(b);
    return t;
}

/* The families decode_forward composes. */
llmc_status check_family(const llmc_model *m) {
    if (m->config.family != LLMC_FAMILY_GPT2)
        return llmc_error(LLMC_ERR_UNSUPPORTED, "generation on the CUDA backend is for GPT-2 "
                          "models; load this Llama on the CPU backend to generate");
    return LLMC_OK;
}

llmc_status cuda_cache_plan_bytes(const llmc_model *m, int S, int T, int R, size_t *bytes) {
    TRY(check_family(m));
    *bytes = total_bytes(layout(m, S, T, R));
    return LLMC_OK;
}

void release(cuda_cache *c) {
    for (cudaGraphExec_t g : c->graphs)
        if (g) cudaGraphExecDestroy(g);
    if (c->rows_host) cudaFreeHost(c->rows_host);
    cudaFree(c->mem);
    delete c;
}

llmc_status cuda_cache_create(llmc_model *m, int S, int T, int R, void **out) {
    TRY(check_family(m));
    cuda_weights w;
    TRY(cuda_decode_weights(m, &w));
    const Layout l = layout(m, S, T, R);
    const size_t bytes = total_bytes(l);
    size_t free_b = 0, total_b = 0;
    CUDA_TRY(cudaMemGetInfo(&free_b, &total_b));
    if (bytes > free_b)
        return llmc_error(LLMC_ERR_OUT_OF_MEMORY,
                          "the key/value cache of %d sequences x %d positions needs %.2f GB of "
                          "GPU memory; %.2f GB are free of %.2f GB", S, T, bytes / 1e9,
                          free_b / 1e9, total_b / 1e9);
    cuda_cache *c = new (std::nothrow) cuda_cache;
    if (!c) return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory");
    c->S = S, c->T = T, c->R = R, c->L = m->config.num_layers, c->C = m->config.channels;
    c->NH = m->config.num_heads, c->V = m->config.vocab_size, c->Vp = m->config.padded_vocab_size;
    c->bytes = bytes;
    try {
        c->graphs.assign(S + 1, nullptr);
        c->seen.assign(S + 1, 0);
    } catch (const std::bad_alloc &) {  // no C++ exception may reach api.c
        delete c;
        return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory");
    }
    cudaError_t e = cudaMalloc(&c->mem, bytes);
    if (e == cudaSuccess) e = cudaMallocHost(&c->rows_host, (3 * (size_t)R + S) * sizeof(int));
    if (e != cudaSuccess) {
        release(c);
        return cuda_status(e, "key/value cache", __FILE__, __LINE__);
    }
    void **bufs[] = {(void **)&c->keys, (void **)&c->values, (void **)&c->x, (void **)&c->ln,
                     (void **)&c->qkv, (void **)&c->atty, (void **)&c->branch, (void **)&c->fch,
                     (void **)&c->fch_gelu, (void **)&c->mean, (void **)&c->rstd,
                     (void **)&c->logits, (void **)&c->rows};
    char *p = (char *)c->mem;
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        *bufs[i] = p;
        p += aligned(l.bytes[i]);
    }
    *out = c;
    return LLMC_OK;
}

void cuda_cache_destroy(llmc_model *m, void *cache) {
    if (!cache) return;
    cuda_weights w;
    if (cuda_decode_weights(m, &w) == LLMC_OK) cudaStreamSynchronize(w.stream);
    release((cuda_cache *)cache);
}

const bf16 *W(const cuda_weights &w, int tensor, int l = 0) {
    return w.tensor[tensor] + (size_t)l * w.layer_stride[tensor];
}

/* GPT-2: learned positions, pre-LayerNorm blocks, tied LM head. Queues the
 * n rows (metadata already on the device) and the logits of n_out rows. */
llmc_status gpt2_decode_forward(cuda_cache *c, const cuda_weights &w, int n, int n_out) {
    const int C = c->C, L = c->L, NH = c->NH;
    cudaStream_t s = w.stream;
    const int *slot = c->rows, *pos = c->rows + c->R, *tok = c->rows + 2 * c->R;
    const int *out_rows = c->rows + 3 * c->R;
    const size_t layer_kv = (size_t)c->S * c->T * C;
    decode_embed(c->x, tok, pos, W(w, P_WTE), W(w, P_WPE), n, C, s);
    layernorm_forward(c->ln, c->mean, c->rstd, c->x, W(w, P_LN1W), W(w, P_LN1B), n, C, s);
    for (int l = 0; l < L; l++) {
        bf16 *keys = c->keys + l * layer_kv, *values = c->values + l * layer_kv;
        TRY(matmul_forward(w.mm, c->qkv, c->ln, C, W(w, P_QKVW, l), W(w, P_QKVB, l), n, C, 3 * C,
                           nullptr));
        kv_store(keys, values, c->qkv, slot, pos, n, C, NH, c->T, s);
        attention_cached(c->atty, c->qkv, keys, values, slot, pos, n, C, NH, c->T, s);
        TRY(matmul_forward(w.mm, c->branch, c->atty, C, W(w, P_ATTPROJW, l), W(w, P_ATTPROJB, l),
                           n, C, C, nullptr));
        residual_layernorm_forward(c->x, c->ln, c->mean, c->rstd, c->x, c->branch, W(w, P_LN2W, l),
                                   W(w, P_LN2B, l), n, C, s);
        TRY(matmul_forward(w.mm, c->fch_gelu, c->ln, C, W(w, P_FCW, l), W(w, P_FCB, l), n, C,
                           4 * C, c->fch));
        TRY(matmul_forward(w.mm, c->branch, c->fch_gelu, 4 * C, W(w, P_FCPROJW, l),
                           W(w, P_FCPROJB, l), n, 4 * C, C, nullptr));
        const bool last = l + 1 == L;
        residual_layernorm_forward(c->x, c->ln, c->mean, c->rstd, c->x, c->branch,
                                   last ? W(w, P_LNFW) : W(w, P_LN1W, l + 1),
                                   last ? W(w, P_LNFB) : W(w, P_LN1B, l + 1), n, C, s);
    }
    if (n_out > 0) {
        gather_rows(c->atty, c->ln, out_rows, n_out, C, s);
        TRY(matmul_forward_fp32(w.mm, c->logits, c->atty, C, W(w, P_WTE), n_out, C, c->Vp));
    }
    CUDA_CHECK_LAUNCH();
    return LLMC_OK;
}

/* A step of n rows through its graph: captured on the second sight of n. */
llmc_status run_step(cuda_cache *c, const cuda_weights &w, int n) {
    if (c->graphs[n]) {
        CUDA_TRY(cudaGraphLaunch(c->graphs[n], w.stream));
        return LLMC_OK;
    }
    if (!c->seen[n]) {
        c->seen[n] = 1;
        return gpt2_decode_forward(c, w, n, n);
    }
    cudaGraph_t graph = nullptr;
    CUDA_TRY(cudaStreamBeginCapture(w.stream, cudaStreamCaptureModeThreadLocal));
    llmc_status st = gpt2_decode_forward(c, w, n, n);
    cudaError_t e = cudaStreamEndCapture(w.stream, &graph);
    if (st != LLMC_OK) {
        if (graph) cudaGraphDestroy(graph);
        return st;
    }
    if (e == cudaSuccess) e = cudaGraphInstantiate(&c->graphs[n], graph, 0);
    if (graph) cudaGraphDestroy(graph);
    if (e != cudaSuccess) {
        c->graphs[n] = nullptr;
        return cuda_status(e, "capturing the decode step", __FILE__, __LINE__);
    }
    CUDA_TRY(cudaGraphLaunch(c->graphs[n], w.stream));
    return LLMC_OK;
}

llmc_status cuda_cache_forward(llmc_model *m, void *cache, int n, const int32_t *slot,
                               const int32_t *pos, const int32_t *tokens, int n_out,
                               const int32_t *out_rows, float *logits) {
    cuda_cache *c = (cuda_cache *)cache;
    cuda_weights w;
    TRY(cuda_decode_weights(m, &w));
    int *h = c->rows_host;
    memcpy(h, slot, n * sizeof(int));
    memcpy(h + c->R, pos, n * sizeof(int));
    memcpy(h + 2 * c->R, tokens, n * sizeof(int));
    if (n_out > 0) memcpy(h + 3 * c->R, out_rows, n_out * sizeof(int));
    CUDA_TRY(cudaMemcpyAsync(c->rows, h, (3 * (size_t)c->R + n_out) * sizeof(int),
                             cudaMemcpyHostToDevice, w.stream));
    bool step = n_out == n;
    for (int i = 0; i < n_out && step; i++) step = out_rows[i] == i;
    TRY(step ? run_step(c, w, n) : gpt2_decode_forward(c, w, n, n_out));
    if (n_out > 0)
        CUDA_TRY(cudaMemcpy2DAsync(logits, c->V * sizeof(float), c->logits, c->Vp * sizeof(float),
                                   c->V * sizeof(float), n_out, cudaMemcpyDeviceToHost, w.stream));
    CUDA_TRY(cudaStreamSynchronize(w.stream));
    return LLMC_OK;
}

}  // namespace

const llmc_decode_ops cuda_decode_ops = {
    cuda_cache_plan_bytes,
    cuda_cache_create,
    cuda_cache_destroy,
    cuda_cache_forward,
};
