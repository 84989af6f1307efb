/*
 * decode.cu: the CUDA backend's generation (model.h's llmc_decode_ops): a
 * bf16 key/value cache and the forward pass of rows that are single tokens
 * of cached sequences, one composition per model family over the training
 * kernels (cuBLASLt products with fused bias and GELU, SwiGLU, RoPE), the
 * decode norms (layernorm.cu's decode_norm, both families': the residual
 * add fused, a block per row) and the cache kernels of kvcache.cu.
 *
 * A decode step (every live sequence's newest token, logits for each) of n
 * rows runs as a CUDA graph, captured the second time n is seen (the first
 * run picks and times the products' algorithms, which cannot happen inside
 * a capture); only the rows' slots, positions and tokens are uploaded
 * before it, and the logits copied back after (into page-locked memory, the
 * generator's logits buffer: host_logits), or for a greedy step only each
 * row's argmax and log-probability (greedy.cu). Prefill chunks run eagerly.
 * When the generator expects another greedy step of the same rows (model.h's
 * greedy, `more`), the greedy kernel also writes that step's rows on the
 * device and its graph is launched before the picks are waited for: the
 * host's turn between steps (the graph launch alone is ~0.2 ms of host time
 * for d48's ~400 kernels) then overlaps the step it queued, and a forward
 * that asks for exactly those rows, the weights unchanged, finds them
 * already running. A step queued for rows that then differ (a sequence
 * stopped on its stop token, was cancelled or a new one started) is wasted
 * work, not wrong results: it writes only the cache's rows of its own
 * positions, which a later step writes again before any reads them.
 * Products of steps of up to GEMV_MAX_ROWS rows run through gemv.cu, which
 * streams each weight once for all rows; larger ones through cuBLASLt.
 *
 * Memory, planned and checked against the free device memory at creation:
 * every layer's keys and values for S slots of T positions (NKV heads),
 * the activations of R rows, the cache attention's partials and counters
 * of R rows, the fp32 logits of S rows and, for Llama, RoPE's table of T
 * positions; page-locked host memory for the rows' metadata, the greedy
 * picks and the logits of S rows.
 */
#include <cstring>
#include <new>
#include <vector>

#include "decode.cuh"
#include "kernels.cuh"
extern "C" {
#include "config.h"
}

namespace {

struct cuda_cache;
/* A family's forward of n rows (metadata already on the device), with the
 * logits of n_out rows; step: the rows are of distinct slots and their
 * logits are all wanted, in row order (a generator's step). */
typedef llmc_status (*decode_forward_fn)(cuda_cache *c, const cuda_weights &w, int n, int n_out,
                                         bool step);

struct cuda_cache {
    int S, T, R, L, C, NH, NKV, hs, V, Vp;
    int F;        // Llama: the MLP's hidden width (SwiGLU's output)
    int norm;     // NORM_LAYER (GPT-2) or NORM_RMS (Llama)
    float eps;    // the norms' epsilon
    int head;     // the LM head's tensor
    decode_forward_fn forward;
    void *mem = nullptr;
    size_t bytes = 0;
    bf16 *keys, *values;             // (L, S, NKV, T, hs) each
    bf16 *x, *ln, *qkv, *atty, *branch, *fch, *fch_act;  // (R, C | QKV | FC | ACT)
    float *logits;                   // (S, Vp)
    int *rows;                       // slot, pos, token (R each), out_rows (S)
    float *attn_partial;             // (R, NH, ATTN_MAX_SPLITS, hs + 2)
    int *attn_done;                  // (R, NH), zero between steps
    float *rope_cos, *rope_sin;      // Llama: (T, hs/2)
    greedy_pick *picks;              // (S)
    void *host = nullptr;            // page-locked: rows_host, picks_host, logits_host
    int *rows_host;                  // staging of rows (3R + S)
    greedy_pick *picks_host;         // (S)
    float *logits_host;              // (S, V): the generator's logits (host_logits)
    bool in_flight = false;          // a forward's work left for greedy to wait for
    int stepped = 0;                 // rows of the last forward when it was a step, else 0
    int ahead = 0;                   // rows of the step greedy queued (rows_host's), else 0
    uint64_t ahead_weights = 0;      // the model's weights_version when it was queued
    cudaEvent_t picks_ready = nullptr;  // greedy's picks are in picks_host
    std::vector<cudaGraphExec_t> graphs;  // per step size n (1..S): captured graph
    std::vector<char> seen;               // per n: ran once eagerly
    std::vector<char> slot_taken;         // per slot: scratch of cuda_cache_forward's step test
};

/* Buffers in allocation order (the order of cuda_cache's pointers), bytes
 * each (256-byte aligned); a family's unused buffers take 0 bytes. */
enum { B_KEYS, B_VALUES, B_X, B_LN, B_QKV, B_ATTY, B_BRANCH, B_FCH, B_FCH_ACT, B_LOGITS, B_ROWS,
       B_ATTN_PARTIAL, B_ATTN_DONE, B_ROPE_COS, B_ROPE_SIN, B_PICKS, NUM_BUFFERS };
struct Layout {
    size_t bytes[NUM_BUFFERS];
};

Layout layout(const llmc_model *m, int S, int T, int R) {
    const llmc_config *c = &m->config;
    const bool llama = llmc_is_llama(c);
    const size_t L = c->num_layers, C = c->channels, Vp = c->padded_vocab_size;
    const size_t hs = C / c->num_heads, QKV = llmc_qkv_width(c), FC = llmc_fc_width(c);
    const size_t ACT = llmc_fc_act_width(c);
    const size_t kv = L * S * (size_t)T * llmc_kv_heads(c) * hs * sizeof(bf16);
    const size_t row = (size_t)R * sizeof(bf16);
    const size_t rope = llama ? (size_t)T * (hs / 2) * sizeof(float) : 0;
    const size_t heads = (size_t)R * c->num_heads;
    return {{kv, kv, row * C, row * C, row * QKV, row * C, row * C, row * FC, row * ACT,
             (size_t)S * Vp * sizeof(float),
             (3 * (size_t)R + S) * sizeof(int), heads * ATTN_MAX_SPLITS * (hs + 2) * sizeof(float),
             heads * sizeof(int), rope, rope, (size_t)S * sizeof(greedy_pick)}};
}

size_t aligned(size_t b) { return (b + 255) & ~(size_t)255; }

size_t total_bytes(const Layout &l) {
    size_t t = 0;
    for (size_t b : l.bytes) t += aligned(b);
    return t;
}

llmc_status cuda_cache_plan_bytes(const llmc_model *m, int S, int T, int R, size_t *bytes) {
    *bytes = total_bytes(layout(m, S, T, R));
    return LLMC_OK;
}

void release(cuda_cache *c) {
    for (cudaGraphExec_t g : c->graphs)
        if (g) cudaGraphExecDestroy(g);
    if (c->picks_ready) cudaEventDestroy(c->picks_ready);
    if (c->host) cudaFreeHost(c->host);
    cudaFree(c->mem);
    delete c;
}

llmc_status gpt2_decode_forward(cuda_cache *c, const cuda_weights &w, int n, int n_out,
                                bool step);
llmc_status llama_decode_forward(cuda_cache *c, const cuda_weights &w, int n, int n_out,
                                 bool step);

llmc_status cuda_cache_create(llmc_model *m, int S, int T, int R, void **out) {
    TRY(cuda_decode_round_weights(m));
    cuda_weights w;
    TRY(cuda_decode_weights(m, &w));
    const llmc_config *cf = &m->config;
    if (cf->channels > DECODE_NORM_MAX_CHANNELS)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                          "generation on CUDA needs channels <= %d (got %d)",
                          DECODE_NORM_MAX_CHANNELS, cf->channels);
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
    c->S = S, c->T = T, c->R = R, c->L = cf->num_layers, c->C = cf->channels;
    c->NH = cf->num_heads, c->NKV = llmc_kv_heads(cf), c->hs = cf->channels / cf->num_heads;
    c->V = cf->vocab_size, c->Vp = cf->padded_vocab_size;
    c->F = (int)llmc_fc_act_width(cf), c->head = llmc_head_tensor(cf);
    c->norm = llmc_is_llama(cf) ? NORM_RMS : NORM_LAYER;
    c->eps = llmc_is_llama(cf) ? cf->norm_eps : LN_EPS;
    c->forward = llmc_is_llama(cf) ? llama_decode_forward : gpt2_decode_forward;
    c->bytes = bytes;
    try {
        c->graphs.assign(S + 1, nullptr);
        c->seen.assign(S + 1, 0);
        c->slot_taken.assign(S, 0);
    } catch (const std::bad_alloc &) {  // no C++ exception may reach api.c
        delete c;
        return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory");
    }
    /* host: 4-byte words all (ints, then picks, then floats) */
    const size_t rows_words = 3 * (size_t)R + S, picks_words = (size_t)S * 2;
    const size_t host_words = rows_words + picks_words + (size_t)S * c->V;
    cudaError_t e = cudaMalloc(&c->mem, bytes);
    if (e != cudaSuccess) {
        release(c);
        return cuda_status(e, "key/value cache", __FILE__, __LINE__);
    }
    if ((e = cudaMallocHost(&c->host, host_words * 4)) != cudaSuccess) {
        release(c);
        return cuda_status(e, "page-locked host memory for the logits", __FILE__, __LINE__);
    }
    if ((e = cudaEventCreateWithFlags(&c->picks_ready, cudaEventDisableTiming)) != cudaSuccess) {
        release(c);
        return cuda_status(e, "an event for the greedy picks", __FILE__, __LINE__);
    }
    void *bufs[NUM_BUFFERS] = {};
    char *p = (char *)c->mem;
    for (int i = 0; i < NUM_BUFFERS; i++) {
        bufs[i] = p;
        p += aligned(l.bytes[i]);
    }
    c->keys = (bf16 *)bufs[B_KEYS], c->values = (bf16 *)bufs[B_VALUES];
    c->x = (bf16 *)bufs[B_X], c->ln = (bf16 *)bufs[B_LN], c->qkv = (bf16 *)bufs[B_QKV];
    c->atty = (bf16 *)bufs[B_ATTY], c->branch = (bf16 *)bufs[B_BRANCH];
    c->fch = (bf16 *)bufs[B_FCH], c->fch_act = (bf16 *)bufs[B_FCH_ACT];
    c->logits = (float *)bufs[B_LOGITS], c->rows = (int *)bufs[B_ROWS];
    c->attn_partial = (float *)bufs[B_ATTN_PARTIAL], c->attn_done = (int *)bufs[B_ATTN_DONE];
    c->rope_cos = (float *)bufs[B_ROPE_COS], c->rope_sin = (float *)bufs[B_ROPE_SIN];
    c->picks = (greedy_pick *)bufs[B_PICKS];
    c->rows_host = (int *)c->host;
    c->picks_host = (greedy_pick *)(c->rows_host + rows_words);
    c->logits_host = (float *)(c->rows_host + rows_words + picks_words);
    if ((e = cudaMemsetAsync(c->attn_done, 0, l.bytes[B_ATTN_DONE], w.stream)) != cudaSuccess) {
        release(c);
        return cuda_status(e, "zeroing the attention's counters", __FILE__, __LINE__);
    }
    if (llmc_is_llama(cf)) {
        const llmc_status st = rope_upload_table(c->rope_cos, c->rope_sin, cf, T, w.stream);
        if (st != LLMC_OK) {
            release(c);
            return st;
        }
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

/* What both families share around their blocks: the rows' metadata (on the
 * device), a layer's attention through the cache, the LM head. */
struct Rows {
    const int *slot, *pos, *tok, *out;
};
Rows rows_of(const cuda_cache *c) {
    return {c->rows, c->rows + c->R, c->rows + 2 * c->R, c->rows + 3 * c->R};
}

/* The new rows' keys and values (in c->qkv) into layer l's cache, then
 * their attention over it into c->atty; in a step (rows of distinct slots)
 * the attention kernel stores them itself. */
void cached_attention(cuda_cache *c, const Rows &r, int l, int n, bool step, cudaStream_t s) {
    const size_t layer_kv = (size_t)c->S * c->T * c->NKV * c->hs;
    bf16 *keys = c->keys + l * layer_kv, *values = c->values + l * layer_kv;
    if (!step) kv_store(keys, values, c->qkv, r.slot, r.pos, n, c->NH, c->NKV, c->hs, c->T, s);
    attention_cached(c->atty, c->attn_partial, c->attn_done, c->qkv, keys, values, r.slot, r.pos, n,
                     c->NH, c->NKV, c->hs, c->T, step, s);
}

/* out (n, OC) = inp @ weight^T + bias (NULL: none), GELU of it with gelu:
 * gemv.cu for steps of few rows, else cuBLASLt (its GELU epilogue saves the
 * pre-activation, into c->fch). */
llmc_status linear(cuda_cache *c, const cuda_weights &w, bf16 *out, const bf16 *inp,
                   const bf16 *weight, const bf16 *bias, int n, int IC, int OC, bool gelu) {
    if (gemv_fits(n, IC, inp, weight)) {
        gemv_forward(out, inp, weight, bias, n, IC, OC, gelu, w.stream);
        return LLMC_OK;
    }
    return matmul_forward(w.mm, out, inp, IC, weight, bias, n, IC, OC, gelu ? c->fch : nullptr);
}

/* c->ln = the family's norm (weight, bias: LayerNorm's, NULL for RMSNorm) of
 * n rows of x, after x += branch when branch is not NULL. */
void norm_rows(cuda_cache *c, const bf16 *branch, const bf16 *weight, const bf16 *bias, int n,
               cudaStream_t s) {
    const row_norm nm = {c->norm, weight, bias, c->eps};
    decode_norm(c->x, c->ln, c->x, branch, nm, n, c->C, s);
}

/* fp32 logits of rows r.out[0..n_out) of the final norm's output (c->ln),
 * gathered into c->atty (free by then) unless a step's, through the LM head. */
llmc_status head_logits(cuda_cache *c, const cuda_weights &w, const Rows &r, int n_out,
                        bool step) {
    if (n_out > 0) {
        const bf16 *inp = step ? c->ln : c->atty, *head = W(w, c->head);
        if (!step) gather_rows(c->atty, c->ln, r.out, n_out, c->C, w.stream);
        if (gemv_fits(n_out, c->C, inp, head))
            gemv_forward_fp32(c->logits, inp, head, n_out, c->C, c->Vp, w.stream);
        else
            TRY(matmul_forward_fp32(w.mm, c->logits, inp, c->C, head, n_out, c->C, c->Vp));
    }
    CUDA_CHECK_LAUNCH();
    return LLMC_OK;
}

/* GPT-2: learned positions, pre-LayerNorm blocks, tied LM head. */
llmc_status gpt2_decode_forward(cuda_cache *c, const cuda_weights &w, int n, int n_out,
                                bool step) {
    const int C = c->C, L = c->L;
    cudaStream_t s = w.stream;
    const Rows r = rows_of(c);
    decode_embed(c->x, r.tok, r.pos, W(w, P_WTE), W(w, P_WPE), n, C, s);
    norm_rows(c, nullptr, W(w, P_LN1W), W(w, P_LN1B), n, s);
    for (int l = 0; l < L; l++) {
        TRY(linear(c, w, c->qkv, c->ln, W(w, P_QKVW, l), W(w, P_QKVB, l), n, C, 3 * C, false));
        cached_attention(c, r, l, n, step, s);
        TRY(linear(c, w, c->branch, c->atty, W(w, P_ATTPROJW, l), W(w, P_ATTPROJB, l), n, C, C,
                   false));
        norm_rows(c, c->branch, W(w, P_LN2W, l), W(w, P_LN2B, l), n, s);
        TRY(linear(c, w, c->fch_act, c->ln, W(w, P_FCW, l), W(w, P_FCB, l), n, C, 4 * C, true));
        TRY(linear(c, w, c->branch, c->fch_act, W(w, P_FCPROJW, l), W(w, P_FCPROJB, l), n, 4 * C,
                   C, false));
        const bool last = l + 1 == L;
        norm_rows(c, c->branch, last ? W(w, P_LNFW) : W(w, P_LN1W, l + 1),
                  last ? W(w, P_LNFB) : W(w, P_LN1B, l + 1), n, s);
    }
    return head_logits(c, w, r, n_out, step);
}

/* Llama, as backend.cu's llama_forward: RMSNorm, no biases, RoPE on the new
 * rows' q and k at their own positions before the keys enter the cache,
 * grouped-query attention, SwiGLU, the output layer or (tied) wte as head. */
llmc_status llama_decode_forward(cuda_cache *c, const cuda_weights &w, int n, int n_out,
                                 bool step) {
    const int C = c->C, L = c->L, F = c->F, QKV = (c->NH + 2 * c->NKV) * c->hs;
    cudaStream_t s = w.stream;
    const Rows r = rows_of(c);
    gather_rows(c->x, W(w, P_WTE), r.tok, n, C, s);
    norm_rows(c, nullptr, W(w, P_LN1W), nullptr, n, s);
    for (int l = 0; l < L; l++) {
        TRY(linear(c, w, c->qkv, c->ln, W(w, P_QKVW, l), nullptr, n, C, QKV, false));
        rope_rotate_at(c->qkv, c->rope_cos, c->rope_sin, r.pos, n, c->NH, c->NKV, c->hs, s);
        cached_attention(c, r, l, n, step, s);
        TRY(linear(c, w, c->branch, c->atty, W(w, P_ATTPROJW, l), nullptr, n, C, C, false));
        norm_rows(c, c->branch, W(w, P_LN2W, l), nullptr, n, s);
        TRY(linear(c, w, c->fch, c->ln, W(w, P_FCW, l), nullptr, n, C, 2 * F, false));
        swiglu_forward(c->fch_act, c->fch, n, F, s);
        TRY(linear(c, w, c->branch, c->fch_act, W(w, P_FCPROJW, l), nullptr, n, F, C, false));
        const bool last = l + 1 == L;
        norm_rows(c, c->branch, last ? W(w, P_LNFW) : W(w, P_LN1W, l + 1), nullptr, n, s);
    }
    return head_logits(c, w, r, n_out, step);
}

/* A step of n rows through its graph: captured on the second sight of n. */
llmc_status run_step(cuda_cache *c, const cuda_weights &w, int n) {
    if (c->graphs[n]) {
        CUDA_TRY(cudaGraphLaunch(c->graphs[n], w.stream));
        return LLMC_OK;
    }
    if (!c->seen[n]) {
        c->seen[n] = 1;
        return c->forward(c, w, n, n, true);
    }
    cudaGraph_t graph = nullptr;
    CUDA_TRY(cudaStreamBeginCapture(w.stream, cudaStreamCaptureModeThreadLocal));
    llmc_status st = c->forward(c, w, n, n, true);
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

/* After a forward's work is queued: greedy() follows and waits (logits
 * NULL), or the logits are copied into logits and waited for. */
llmc_status finish_forward(cuda_cache *c, const cuda_weights &w, int n_out, float *logits) {
    if (n_out > 0 && logits == nullptr) {
        c->in_flight = true;
        return LLMC_OK;
    }
    if (n_out > 0)
        CUDA_TRY(cudaMemcpy2DAsync(logits, c->V * sizeof(float), c->logits, c->Vp * sizeof(float),
                                   c->V * sizeof(float), n_out, cudaMemcpyDeviceToHost, w.stream));
    CUDA_TRY(cudaStreamSynchronize(w.stream));
    return LLMC_OK;
}

llmc_status cuda_cache_forward(llmc_model *m, void *cache, int n, const int32_t *slot,
                               const int32_t *pos, const int32_t *tokens, int n_out,
                               const int32_t *out_rows, float *logits) {
    cuda_cache *c = (cuda_cache *)cache;
    cuda_weights w;
    TRY(cuda_decode_weights(m, &w));
    if (c->in_flight) {  // a forward whose greedy never came: its upload may still read h
        c->in_flight = false;
        CUDA_TRY(cudaStreamSynchronize(w.stream));
    }
    int *h = c->rows_host;
    bool step = n_out == n;  // rows of distinct slots, each with its logits in row order
    for (int i = 0; i < n_out && step; i++) step = out_rows[i] == i;
    int marked = 0;
    for (; marked < n && step; marked++) {
        step = !c->slot_taken[slot[marked]];
        c->slot_taken[slot[marked]] = 1;
    }
    for (int i = 0; i < marked; i++) c->slot_taken[slot[i]] = 0;
    const int ahead = c->ahead;  // the step greedy queued: these rows?
    c->ahead = 0;
    bool queued = step && ahead == n && c->ahead_weights == m->weights_version;
    for (int i = 0; i < n && queued; i++)
        queued = slot[i] == h[i] && pos[i] == h[c->R + i] && tokens[i] == h[2 * c->R + i];
    if (queued) {
        c->stepped = n;
        return finish_forward(c, w, n_out, logits);
    }
    memcpy(h, slot, n * sizeof(int));
    memcpy(h + c->R, pos, n * sizeof(int));
    memcpy(h + 2 * c->R, tokens, n * sizeof(int));
    if (n_out > 0) memcpy(h + 3 * c->R, out_rows, n_out * sizeof(int));
    CUDA_TRY(cudaMemcpyAsync(c->rows, h, (3 * (size_t)c->R + n_out) * sizeof(int),
                             cudaMemcpyHostToDevice, w.stream));
    c->stepped = 0;
    TRY(step ? run_step(c, w, n) : c->forward(c, w, n, n_out, false));
    c->stepped = step ? n : 0;
    return finish_forward(c, w, n_out, logits);
}

float *cuda_cache_host_logits(void *cache) { return ((cuda_cache *)cache)->logits_host; }

llmc_status cuda_cache_greedy(llmc_model *m, void *cache, int n_out, int more,
                              llmc_token_event *events) {
    cuda_cache *c = (cuda_cache *)cache;
    cuda_weights w;
    TRY(cuda_decode_weights(m, &w));
    c->in_flight = false;
    /* the next step of these rows queued now (the file's comment), once its
     * graph exists */
    const bool ahead = more && c->stepped == n_out && c->graphs[n_out];
    c->stepped = 0;
    int *next_pos = ahead ? c->rows + c->R : nullptr;
    int *next_tok = ahead ? c->rows + 2 * c->R : nullptr;
    greedy_rows(c->picks, c->logits, n_out, c->V, c->Vp, next_pos, next_tok, w.stream);
    CUDA_CHECK_LAUNCH();
    CUDA_TRY(cudaMemcpyAsync(c->picks_host, c->picks, n_out * sizeof(greedy_pick),
                             cudaMemcpyDeviceToHost, w.stream));
    CUDA_TRY(cudaEventRecord(c->picks_ready, w.stream));
    if (ahead) CUDA_TRY(cudaGraphLaunch(c->graphs[n_out], w.stream));
    CUDA_TRY(cudaEventSynchronize(c->picks_ready));
    int *h = c->rows_host;  // the step's rows, then with ahead the queued step's
    for (int i = 0; i < n_out; i++) {
        events[i].token = c->picks_host[i].token;
        events[i].logprob = c->picks_host[i].logprob;
        if (ahead) {
            h[c->R + i]++;
            h[2 * c->R + i] = events[i].token;
        }
    }
    c->ahead = ahead ? n_out : 0;
    c->ahead_weights = m->weights_version;
    return LLMC_OK;
}

}  // namespace

const llmc_decode_ops cuda_decode_ops = {
    cuda_cache_plan_bytes,
    cuda_cache_create,
    cuda_cache_destroy,
    cuda_cache_forward,
    cuda_cache_host_logits,
    cuda_cache_greedy,
};
