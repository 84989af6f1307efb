/*
 * backend.cu: the CUDA backend's llmc_backend: memory plan, the GPT-2 and
 * Llama forward and backward passes over the kernels of this folder (one
 * composition per family), the fused classifier + loss, and AdamW. Built as
 * the plugin build/libllmc_cuda.so, which api.c loads when a model asks for
 * LLMC_DEVICE_CUDA.
 *
 * Precision: bf16 weights, activations and activation gradients; fp32 weight
 * gradients (accumulated across micro-steps), fp32 master weights and AdamW
 * moments. Every reduction is ordered, so a run repeats bit for bit.
 *
 * Parameters live in llm.c's tensor order, each tensor starting on a 64-element
 * boundary so that every kernel and cuBLASLt sees aligned pointers; the API's
 * packed fp32 vector is converted tensor by tensor on the way in and out.
 *
 * FP8 (options.precision): the four block products take FP8 operands
 * (fp8.cuh), in both families through the same helpers (block_forward and
 * the backward parts after it), with each family's product widths. Forward
 * casts each product's input (keeping, when training, its transpose for the
 * weight gradient, per layer unless recomputed like the bf16 activation it
 * replaces, or from recompute 2 on, cast again from the attention output
 * attention's backward keeps anyway); backward casts each output gradient,
 * both ways, summing GPT-2's qkv and fc bias gradients on the way; the
 * weights are cast, both ways, after every update. The bf16 norm outputs
 * (and Llama's SwiGLU output) are then scratch of one layer; GPT-2's GELU
 * output is never written: fcproj's cast applies GELU to fc's pre-activation.
 *
 * Distributed mode (world_size >= 1): during the last micro-step's backward,
 * each layer's gradients are summed across ranks by NCCL on a stream of
 * their own as soon as that layer is done (one bucket per layer, then one
 * for wte, wpe and the final LayerNorm), so the reduction overlaps the rest
 * of the backward pass. With ZeRO-1 each rank keeps the fp32 masters and
 * AdamW moments of one shard of the padded parameter vector, updates it and
 * all-gathers the bf16 weights; the weights and gradients are allocated
 * padded to whole shards.
 */
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <iterator>
#include <new>
#include <vector>

#include "attention.h"
#include "comm_nccl.cuh"
extern "C" {
#include "config.h"
}
#include "decode.cuh"
#include "fp8.cuh"
#include "kernels.cuh"
#include "matmul.cuh"

#define PARAM_ALIGN 64             // elements
#define CLASSIFIER_CHUNK_ROWS 4096 // rows of logits that exist at once, or multiples of it

namespace {

struct cuda_state {
    cudaStream_t stream = nullptr;
    mm_ctx *mm = nullptr;
    attn_ctx *attn = nullptr;
    int Bmax = 0, Tmax = 0, L = 0, C = 0, NH = 0, V = 0, Vp = 0;
    /* The family's shape: GPT-2 NKV = NH, QKV = 3C, FC = ACT = 4C; Llama
     * (llama) NKV key/value heads, FC = 2F (up | gate), ACT = F; the tensor
     * the LM head reads. */
    bool llama = false;
    int NKV = 0, QKV = 0, FC = 0, ACT = 0, head = P_WTE;
    float eps = 0.0f;
    size_t Nmax = 0;  // Bmax * Tmax rows
    int recompute = 0;
    uint64_t seed = 0;

    /* Parameters (bf16 working copy, fp32 master, AdamW moments, fp32 gradients),
     * all in the same padded layout, but for the bf16 copy without the block
     * weights in w8_only mode: tensor i's bf16 copy is at params_of[i] (nullptr:
     * none). */
    size_t off[LLMC_NUM_PARAM_TENSORS] = {}, size[LLMC_NUM_PARAM_TENSORS] = {}, total = 0;
    /* Distributed mode: total padded to world_size shards of `shard`
     * elements; with ZeRO-1 masters and moments hold [lo, lo + shard) only. */
    nccl_ctx *comm = nullptr;
    bool zero1 = false;
    size_t shard = 0, lo = 0, padded_total = 0;
    bool dry_run = false;  // llmc_plan_memory: count the bytes, allocate nothing
    bf16 *params = nullptr, *params_of[LLMC_NUM_PARAM_TENSORS] = {};
    float *master = nullptr, *mom1 = nullptr, *mom2 = nullptr, *grads = nullptr;

    /* Activations kept for backward; a per-layer array unless recomputed, in
     * which case the name points at one shared buffer. */
    bf16 *encoded = nullptr, *lnf = nullptr;
    float *rope_cos = nullptr, *rope_sin = nullptr;  // Llama: (Tmax, HS/2)
    bf16 *ln1 = nullptr, *ln2 = nullptr, *qkv = nullptr, *atty = nullptr, *res2 = nullptr,
         *res3 = nullptr, *fch = nullptr, *fch_gelu = nullptr;
    float *ln1_mean = nullptr, *ln1_rstd = nullptr, *ln2_mean = nullptr, *ln2_rstd = nullptr,
          *lnf_mean = nullptr, *lnf_rstd = nullptr, *lse = nullptr;
    size_t ln_stride = 0, gelu_stride = 0;  // 0 when the buffer is shared (recomputed)

    /* Scratch: gradient of the residual stream, a C-wide and a 4C-wide buffer,
     * one chunk of logits, reduction partials, device scalars. */
    bf16 *dres = nullptr, *dC = nullptr, *d4C = nullptr, *logits = nullptr;
    bf16 *dact = nullptr;  // Llama: (N, F) gradient of the SwiGLU output (GELU's is fused)
    float *partial = nullptr, *norm = nullptr;
    double *loss = nullptr;

    /* Token staging, grown to the largest call seen. */
    int *tokens = nullptr, *tokens_host = nullptr;
    size_t tokens_cap = 0;
    float *losses = nullptr;
    size_t losses_cap = 0;
    std::vector<int> next;  // counting sort of tokens, Vp entries

    /* FP8: scaling state, E4M3 block weights and their transposes (product
     * p's, all layers, from w8_off[p]), the scratch operands of one product
     * (input, output gradient and its transpose: N x widest_operand bytes
     * each), and each product's transposed inputs for the weight gradient
     * (xT_stride apart per layer; one shared layer where recomputed). */
    bool fp8 = false;
    bool fp8_warm = false;  // the scales have a history: delayed scaling
    fp8_scaling f8;
    /* w8_only (FP8 without ZeRO-1): the block weights exist only in E4M3,
     * quantized from the fp32 masters a matrix at a time through the bf16
     * scratch w16 (with the rounding the bf16 copy would have had), their
     * transposes made per layer in backward into wT8 (one matrix). Saves 3
     * bytes a block parameter: what FP8 needs to fit in bf16's memory. */
    bool w8_only = false;
    bf16 *w16 = nullptr;
    bf16 *decode_w16 = nullptr;  // w8_only: the block weights as generation reads them
    uint8_t *w8 = nullptr, *wT8 = nullptr, *x8 = nullptr, *g8 = nullptr, *gT8 = nullptr;
    /* GPT-2: fcproj's transposed output gradient, kept past fc's gradient
     * cast, which writes fcproj's transposed input where it was not saved */
    uint8_t *fcproj_gT8 = nullptr;
    size_t w8_off[FP8_PRODUCTS] = {};
    uint8_t *xT8[FP8_PRODUCTS] = {};
    size_t xT_stride[FP8_PRODUCTS] = {};
    bool xT_saved[FP8_PRODUCTS] = {};
    /* The LM head's three products when training: the head weight in E4M3
     * both ways; per chunk of rows, the final norm's output and the logits'
     * gradients (E4M3, which the cross-entropy writes row-major) both ways;
     * their scales (slots of product 0), all set afresh, so nothing is saved:
     * the norm's output scaled from its own amax, the weight from its own,
     * the gradients from their bound |softmax - onehot| * dloss <= dloss. */
    fp8_scaling head_scaling;
    uint8_t *head8 = nullptr, *headT8 = nullptr, *lnfT8 = nullptr, *dlogits8 = nullptr,
            *dlogitsT8 = nullptr;

    /* Training micro-steps as a CUDA graph (micro_step_graphed): the executable
     * graph, the B and T of the last micro-step (a shape runs eagerly once before
     * it is captured), and graphs_off: LLMC_CUDA_GRAPHS=0, or a capture failed. */
    cudaGraphExec_t step_graph = nullptr;
    int step_B = 0, step_T = 0;
    bool graphs_off = false;

    std::vector<void *> allocations;
    size_t bytes = 0;
};

/* The parameters and shape of block product p: qkv C -> QKV, attention
 * projection C -> C, fc C -> FC, fc projection ACT -> C (GPT-2: 3C, 4C, 4C;
 * Llama: grouped q|k|v, 2F = up|gate, F). */
const int PRODUCT_WEIGHT[FP8_PRODUCTS] = {P_QKVW, P_ATTPROJW, P_FCW, P_FCPROJW};
const int PRODUCT_BIAS[FP8_PRODUCTS] = {P_QKVB, P_ATTPROJB, P_FCB, P_FCPROJB};
bool is_product_weight(int i) {
    return std::find(std::begin(PRODUCT_WEIGHT), std::end(PRODUCT_WEIGHT), i) !=
           std::end(PRODUCT_WEIGHT);
}
const char *const PRODUCT_NAME[FP8_PRODUCTS] = {"qkv", "attention projection", "fc",
                                                "fc projection"};
int product_in(const cuda_state *g, int p) { return p == FP8_FCPROJ ? g->ACT : g->C; }
int product_out(const cuda_state *g, int p) {
    return p == FP8_QKV ? g->QKV : p == FP8_FC ? g->FC : g->C;
}
/* Elements of d4C: the MLP's input gradient (GPT-2 4C, Llama 2F) or attention's dqkv. */
size_t d4C_elems(const cuda_state *g) { return g->Nmax * std::max(g->FC, g->QKV); }

/* The widest input or output of any block product (GPT-2 4C; Llama the
 * largest of QKV and 2F): the width of the FP8 scratch operands. */
size_t widest_operand(const cuda_state *g) {
    int w = 0;
    for (int p = 0; p < FP8_PRODUCTS; p++) w = std::max({w, product_in(g, p), product_out(g, p)});
    return w;
}
/* Rows of logits the classifier computes at once: CLASSIFIER_CHUNK_ROWS, or
 * for micro-batches of 16 such chunks or more, whole multiples of it making
 * an eighth of the rows. Each chunk reads and writes the LM head's fp32
 * weight gradient once (at d12 a 154 MB sum), so fewer chunks save that
 * traffic for ~200 KB of logits and their gradients per row, a share of the
 * activations that stays under ~10% (d12 at 64 x 1024: 8,192 rows, +0.8 GB,
 * -1.3% a FP8 step on an H200; d24's 32 x 1024 keeps 4,096). */
size_t classifier_chunk(const cuda_state *g) {
    const size_t eighths = g->Nmax / (8 * CLASSIFIER_CHUNK_ROWS);
    return std::min<size_t>(g->Nmax, CLASSIFIER_CHUNK_ROWS * std::max<size_t>(1, eighths));
}

cuda_state *impl(const llmc_model *m) { return (cuda_state *)m->impl; }

llmc_status dev_alloc(cuda_state *g, void **p, size_t bytes, const char *what) {
    *p = nullptr;
    if (g->dry_run) {
        g->bytes += bytes;
        return LLMC_OK;
    }
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        if (e == cudaErrorMemoryAllocation) {
            size_t free_b = 0, total_b = 0;
            cudaMemGetInfo(&free_b, &total_b);
            return llmc_error(LLMC_ERR_OUT_OF_MEMORY,
                              "CUDA out of memory allocating %s (%.2f GB; %.2f GB free of %.2f "
                              "GB; planned so far %.2f GB): lower max_batch_size or max_seq_len, "
                              "or set recompute",
                              what, bytes / 1e9, free_b / 1e9, total_b / 1e9, g->bytes / 1e9);
        }
        return cuda_status(e, what, __FILE__, __LINE__);
    }
    g->allocations.push_back(*p);
    g->bytes += bytes;
    return LLMC_OK;
}

template <class T>
llmc_status alloc_n(cuda_state *g, T **p, size_t n, const char *what) {
    return dev_alloc(g, (void **)p, std::max<size_t>(n, 1) * sizeof(T), what);
}

/* Offset of layer l's slice of parameter tensor i (wte, wpe, lnfw, lnfb are whole). */
size_t slice(const cuda_state *g, int i, int l) {
    const bool per_layer = llmc_param_is_per_layer(i);
    return g->off[i] + (per_layer ? (size_t)l * (g->size[i] / g->L) : 0);
}
bf16 *P(cuda_state *g, int i, int l = 0) {
    return g->params_of[i] ? g->params_of[i] + (slice(g, i, l) - g->off[i]) : nullptr;
}
float *G(cuda_state *g, int i, int l = 0) { return g->grads + slice(g, i, l); }

void free_all(cuda_state *g) {
    if (g->stream) cudaStreamSynchronize(g->stream);
    nccl_destroy(g->comm);
    if (g->attn) attn_destroy(g->attn);
    if (g->mm) mm_destroy(g->mm);
    for (void *p : g->allocations) cudaFree(p);
    if (g->tokens_host) cudaFreeHost(g->tokens_host);
    if (g->step_graph) cudaGraphExecDestroy(g->step_graph);
    if (g->stream) cudaStreamDestroy(g->stream);
    delete g;
}

llmc_status set_device(const llmc_model *m) {
    CUDA_TRY(cudaSetDevice(m->options.device_index));
    return LLMC_OK;
}

llmc_status attn_status(int rc, const char *err) {
    return rc == 0 ? LLMC_OK : llmc_error((llmc_status)rc, "%s", err);
}

/* The FP8 buffers (see cuda_state). */
llmc_status plan_fp8(cuda_state *g) {
    const size_t N = g->Nmax, L = g->L;
    size_t w_total = 0, w_largest = 0;
    for (int p = 0; p < FP8_PRODUCTS; p++) {
        g->w8_off[p] = w_total;
        w_total += g->size[PRODUCT_WEIGHT[p]];
        w_largest = std::max(w_largest, (size_t)product_in(g, p) * product_out(g, p));
    }
    TRY(alloc_n(g, &g->w8, w_total, "FP8 weights"));
    TRY(alloc_n(g, &g->wT8, g->w8_only ? w_largest : w_total, "FP8 weights (transposed)"));
    if (g->w8_only) TRY(alloc_n(g, &g->w16, w_largest, "bf16 weight scratch"));
    for (uint8_t **scratch : {&g->x8, &g->g8, &g->gT8})
        TRY(alloc_n(g, scratch, N * widest_operand(g), "FP8 operands"));
    if (!g->llama)
        TRY(alloc_n(g, &g->fcproj_gT8, N * product_out(g, FP8_FCPROJ), "FP8 operands"));
    for (int p = 0; p < FP8_PRODUCTS; p++) {
        /* kept per layer unless the bf16 input is recomputed in backward anyway (the
         * GELU output from recompute 1 on, the norms' from 2); the attention output
         * (kept in bf16 for attention's backward) is cast again from recompute 2 on */
        g->xT_saved[p] = p == FP8_FCPROJ ? g->recompute < 1 : g->recompute < 2;
        g->xT_stride[p] = g->xT_saved[p] ? N * product_in(g, p) : 0;
        TRY(alloc_n(g, &g->xT8[p], (g->xT_saved[p] ? L : 1) * N * product_in(g, p),
                    "FP8 activations (transposed)"));
    }
    g->f8.L = g->L;
    const size_t slots = g->f8.slots();
    TRY(alloc_n(g, &g->f8.scale, slots, "FP8 scales"));
    TRY(alloc_n(g, &g->f8.descale, slots * FP8_DESCALE_STRIDE, "FP8 scales"));
    TRY(alloc_n(g, &g->f8.amax, slots, "FP8 scales"));
    TRY(alloc_n(g, &g->f8.history, slots * FP8_HISTORY, "FP8 scale history"));
    fp8_scaling &h = g->head_scaling;
    h.L = 1;
    TRY(alloc_n(g, &h.scale, h.slots(), "FP8 scales"));
    TRY(alloc_n(g, &h.descale, h.slots() * FP8_DESCALE_STRIDE, "FP8 scales"));
    TRY(alloc_n(g, &h.amax, h.slots(), "FP8 scales"));
    TRY(alloc_n(g, &h.history, h.slots() * FP8_HISTORY, "FP8 scale history"));
    TRY(alloc_n(g, &g->head8, (size_t)g->Vp * g->C, "FP8 LM head"));
    TRY(alloc_n(g, &g->headT8, (size_t)g->Vp * g->C, "FP8 LM head"));
    const size_t chunk = classifier_chunk(g);
    TRY(alloc_n(g, &g->lnfT8, chunk * g->C, "FP8 LM head"));
    /* The logits' gradients exist only inside the classifier, between the
     * layers' forward and backward passes: row-major in d4C, the backward's
     * scratch, where it holds them; transposed in the logits chunk, whose
     * bf16 logits are dead once the cross-entropy has written the gradients. */
    const size_t dlogits_bytes = chunk * g->Vp;
    if (dlogits_bytes <= d4C_elems(g) * sizeof(bf16))
        g->dlogits8 = (uint8_t *)g->d4C;
    else
        TRY(alloc_n(g, &g->dlogits8, dlogits_bytes, "FP8 logit gradients"));
    g->dlogitsT8 = (uint8_t *)g->logits;
    return LLMC_OK;
}

llmc_status plan(llmc_model *m, cuda_state *g) {
    const llmc_config &c = m->config;
    g->L = c.num_layers;
    g->C = c.channels;
    g->NH = c.num_heads;
    g->V = c.vocab_size;
    g->Vp = c.padded_vocab_size;
    g->Bmax = m->options.max_batch_size;
    g->Tmax = m->options.max_seq_len;
    g->Nmax = (size_t)g->Bmax * g->Tmax;
    g->recompute = m->options.recompute;
    g->seed = m->options.seed;
    g->llama = llmc_is_llama(&c);
    g->NKV = llmc_kv_heads(&c);
    g->QKV = (int)llmc_qkv_width(&c);
    g->FC = (int)llmc_fc_width(&c);
    g->ACT = (int)llmc_fc_act_width(&c);
    g->head = llmc_head_tensor(&c);
    g->eps = c.norm_eps;
    const int HS = g->C / g->NH;
    /* LayerNorm's kernels hold a row in registers; RMSNorm's loop over it */
    const int max_channels = g->llama ? LLMC_DIM_LIMIT : LN_MAX_CHANNELS;
    if (g->C % 8 || g->C > max_channels || HS % 8 || HS > 128 || g->Vp % 8 || g->ACT % 8)
        return llmc_error(LLMC_ERR_UNSUPPORTED,
                          "the CUDA backend needs channels, head size and MLP width multiples of "
                          "8, channels <= %d, head size <= 128 and padded_vocab_size a multiple "
                          "of 8 (got C=%d, head size %d, MLP width %d, padded vocab %d)",
                          max_channels, g->C, HS, g->ACT, g->Vp);
    if (g->recompute < 0 || g->recompute > 2)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "recompute must be 0, 1 or 2 (got %d)",
                          g->recompute);
    g->fp8 = m->options.precision == LLMC_PRECISION_FP8;
    for (int p = 0; g->fp8 && p < FP8_PRODUCTS; p++)  // cuBLASLt's FP8 leading dimensions
        if (product_in(g, p) % 16 || product_out(g, p) % 16)
            return llmc_error(LLMC_ERR_UNSUPPORTED, "precision fp8 needs every block product's "
                              "widths multiples of 16 (channels %d, qkv width %d, fc width %d, "
                              "MLP width %d): the %s product is %d -> %d",
                              g->C, g->QKV, g->FC, g->ACT, PRODUCT_NAME[p], product_in(g, p),
                              product_out(g, p));
    if (g->fp8 && g->Vp % 16)  // the LM head's FP8 products (and its byte transposes)
        return llmc_error(LLMC_ERR_UNSUPPORTED, "precision fp8 needs padded_vocab_size a multiple "
                          "of 16 (got %d)", g->Vp);
    if (g->fp8 && !g->dry_run) {
        int major = 0, minor = 0;
        CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor,
                                        m->options.device_index));
        CUDA_TRY(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor,
                                        m->options.device_index));
        if (major < 9)
            return llmc_error(LLMC_ERR_UNSUPPORTED, "precision fp8 needs a GPU of compute "
                              "capability 9.0 or newer (Hopper); device %d is %d.%d",
                              m->options.device_index, major, minor);
    }

    const llmc_options &o = m->options;
    if (!g->dry_run) {
        CUDA_TRY(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking));
        const char *graphs = getenv("LLMC_CUDA_GRAPHS");
        g->graphs_off = graphs && strcmp(graphs, "0") == 0;
        /* first, so that every rank meets the others before the long part */
        if (o.world_size >= 1)
            TRY(nccl_create(&g->comm, o.nccl_id, o.rank, o.world_size, o.comm_timeout_s, g->stream));
        TRY(mm_create(&g->mm, g->stream));
    }

    size_t pos = 0;
    for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; i++) {
        g->off[i] = pos;
        g->size[i] = m->param_sizes[i];
        pos += (g->size[i] + PARAM_ALIGN - 1) / PARAM_ALIGN * PARAM_ALIGN;
    }
    g->total = g->padded_total = pos;
    if (o.world_size >= 1) {
        g->shard = llmc_shard_size(g->total, o.world_size);
        g->padded_total = g->shard * o.world_size;
        g->lo = (size_t)o.rank * g->shard;
        g->zero1 = o.zero_stage == 1;
    }
    const size_t whole = g->padded_total, owned = g->zero1 ? g->shard : g->total;
    g->w8_only = g->fp8 && !g->zero1;
    size_t bf16_at[LLMC_NUM_PARAM_TENSORS], bf16_total = 0;  // w8_only: without the block weights
    for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; i++) {
        bf16_at[i] = g->w8_only ? bf16_total : g->off[i];
        if (!(g->w8_only && is_product_weight(i)))
            bf16_total += (g->size[i] + PARAM_ALIGN - 1) / PARAM_ALIGN * PARAM_ALIGN;
    }
    if (!g->w8_only) bf16_total = whole;
    TRY(alloc_n(g, &g->params, bf16_total, "bf16 weights"));
    for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; i++)
        g->params_of[i] = g->w8_only && is_product_weight(i) ? nullptr : g->params + bf16_at[i];
    TRY(alloc_n(g, &g->master, owned, "fp32 master weights"));
    TRY(alloc_n(g, &g->mom1, owned, "AdamW first moments"));
    TRY(alloc_n(g, &g->mom2, owned, "AdamW second moments"));
    TRY(alloc_n(g, &g->grads, whole, "gradients"));
    if (!g->dry_run) {
        CUDA_TRY(cudaMemsetAsync(g->params, 0, bf16_total * sizeof(bf16), g->stream));
        CUDA_TRY(cudaMemsetAsync(g->grads, 0, whole * sizeof(float), g->stream));
        for (float *p : {g->master, g->mom1, g->mom2})
            CUDA_TRY(cudaMemsetAsync(p, 0, owned * sizeof(float), g->stream));
    }

    const size_t N = g->Nmax, C = g->C, L = g->L;
    const size_t QKV = g->QKV, FC = g->FC, ACT = g->ACT;
    /* recomputed in backward, or in FP8 needed there only as their FP8 transposes */
    const size_t ln_layers = g->recompute >= 2 || g->fp8 ? 1 : L;
    const size_t gelu_layers = g->recompute >= 1 || g->fp8 ? 1 : L;
    g->ln_stride = ln_layers == 1 ? 0 : N * C;
    g->gelu_stride = gelu_layers == 1 ? 0 : N * ACT;
    TRY(alloc_n(g, &g->encoded, N * C, "activations (embeddings)"));
    TRY(alloc_n(g, &g->lnf, N * C, "activations (final LayerNorm)"));
    TRY(alloc_n(g, &g->ln1, ln_layers * N * C, "activations (LayerNorm 1)"));
    TRY(alloc_n(g, &g->ln2, ln_layers * N * C, "activations (LayerNorm 2)"));
    TRY(alloc_n(g, &g->qkv, L * N * QKV, "activations (QKV)"));
    TRY(alloc_n(g, &g->atty, L * N * C, "activations (attention)"));
    TRY(alloc_n(g, &g->res2, L * N * C, "activations (residual)"));
    TRY(alloc_n(g, &g->res3, L * N * C, "activations (residual)"));
    TRY(alloc_n(g, &g->fch, L * N * FC, "activations (MLP)"));
    TRY(alloc_n(g, &g->ln1_mean, L * N, "LayerNorm statistics"));
    TRY(alloc_n(g, &g->ln1_rstd, L * N, "LayerNorm statistics"));
    TRY(alloc_n(g, &g->ln2_mean, L * N, "LayerNorm statistics"));
    TRY(alloc_n(g, &g->ln2_rstd, L * N, "LayerNorm statistics"));
    TRY(alloc_n(g, &g->lnf_mean, N, "LayerNorm statistics"));
    TRY(alloc_n(g, &g->lnf_rstd, N, "LayerNorm statistics"));
    TRY(alloc_n(g, &g->lse, L * N * g->NH, "attention statistics"));
    TRY(alloc_n(g, &g->dres, N * C, "gradient scratch"));
    TRY(alloc_n(g, &g->dC, N * C, "gradient scratch"));
    TRY(alloc_n(g, &g->d4C, d4C_elems(g), "gradient scratch"));
    if (g->llama) {
        TRY(alloc_n(g, &g->dact, N * ACT, "gradient scratch"));
        TRY(alloc_n(g, &g->rope_cos, (size_t)g->Tmax * (HS / 2), "RoPE table"));
        TRY(alloc_n(g, &g->rope_sin, (size_t)g->Tmax * (HS / 2), "RoPE table"));
    }
    /* Recomputed, the GELU (SwiGLU) output of a layer lives only from its
     * recomputation to the fcproj weight gradient that reads it, before the
     * next write of d4C (the gradient of the MLP's first product): the two
     * share memory. */
    if (gelu_layers == 1)
        g->fch_gelu = g->d4C;
    else
        TRY(alloc_n(g, &g->fch_gelu, gelu_layers * N * ACT, "activations (GELU)"));
    /* at least two rows: logits() reuses it for one row of fp32 */
    TRY(alloc_n(g, &g->logits, std::max<size_t>(2, classifier_chunk(g)) * g->Vp,
                "logits chunk"));
    if (g->fp8) TRY(plan_fp8(g));
    TRY(alloc_n(g, &g->partial, PARTIAL_FLOATS(C), "reduction scratch"));
    TRY(alloc_n(g, &g->norm, 1, "scalars"));
    TRY(alloc_n(g, &g->loss, 1, "scalars"));
    if (g->dry_run) return LLMC_OK;
    g->next.assign(g->Vp, 0);
    if (g->llama) TRY(rope_upload_table(g->rope_cos, g->rope_sin, &c, g->Tmax, g->stream));

    if (g->fp8) {
        fp8_reset(g->f8, g->stream);
        fp8_reset(g->head_scaling, g->stream);
    }
    char err[512] = "";
    TRY(attn_status(attn_create(&g->attn, g->Bmax, g->Tmax, g->NH, g->NKV, HS, g->stream, err,
                                sizeof err), err));
    CUDA_TRY(cudaStreamSynchronize(g->stream));
    return LLMC_OK;
}

/* No C++ exception may cross into api.c's C: a container's std::bad_alloc,
 * or std::system_error from the thread that joins NCCL, becomes a status.
 * Every entry point of the table at the end that can allocate goes through it. */
template <auto F>
struct guarded;
template <class... A, llmc_status (*F)(A...)>
struct guarded<F> {
    static llmc_status call(A... a) noexcept {
        try {
            return F(a...);
        } catch (const std::bad_alloc &) {
            return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "CUDA backend: out of host memory");
        } catch (const std::exception &e) {
            return llmc_error(LLMC_ERR_DEVICE, "CUDA backend: %s", e.what());
        } catch (...) {
            return llmc_error(LLMC_ERR_DEVICE, "CUDA backend: unexpected C++ exception");
        }
    }
};

llmc_status cuda_plan_bytes(const llmc_model *m, size_t *bytes);

/* A plan beyond the GPU's free memory is refused before anything is
 * allocated, with the sizes (an 8B model's AdamW state alone is 64 GB). */
llmc_status check_fits(const llmc_model *m) {
    size_t need = 0, free_b = 0, total_b = 0;
    TRY(cuda_plan_bytes(m, &need));
    CUDA_TRY(cudaMemGetInfo(&free_b, &total_b));
    if (need <= free_b) return LLMC_OK;
    return llmc_error(LLMC_ERR_OUT_OF_MEMORY,
                      "CUDA out of memory: this model needs %.2f GB of GPU memory to train at "
                      "max_batch_size %d x max_seq_len %d (%zu parameters: bf16 weights, fp32 "
                      "masters, gradients and AdamW moments, then activations), GPU %d has %.2f "
                      "GB free of %.2f GB: lower max_batch_size or max_seq_len, set recompute, "
                      "or split the AdamW state over more ranks (zero_stage 1)",
                      need / 1e9, m->options.max_batch_size, m->options.max_seq_len,
                      m->num_params, m->options.device_index, free_b / 1e9, total_b / 1e9);
}

llmc_status cuda_create(llmc_model *m) {
    m->impl = nullptr;
    TRY(set_device(m));
    TRY(guarded<check_fits>::call(m));
    cuda_state *g = new (std::nothrow) cuda_state;
    if (!g) return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory");
    m->impl = g;  // for llmc_agree's all-reduce
    llmc_status st = guarded<plan>::call(m, g);  // here, so that a throw still frees g
    if (g->comm) st = llmc_agree(m, st);
    if (st != LLMC_OK) {
        free_all(g);
        m->impl = nullptr;
    }
    return st;
}

llmc_status cuda_plan_bytes(const llmc_model *m, size_t *bytes) {
    cuda_state g;
    g.dry_run = true;
    TRY(plan(const_cast<llmc_model *>(m), &g));
    *bytes = g.bytes;
    return LLMC_OK;
}

/* Waits for the stream's work; with collectives queued, at most the
 * communicator's timeout. */
llmc_status sync(cuda_state *g) {
    if (g->comm) return nccl_sync(g->comm, g->stream);
    CUDA_TRY(cudaStreamSynchronize(g->stream));
    return LLMC_OK;
}

llmc_status cuda_allreduce(llmc_model *m, double *values, size_t n, llmc_reduce_op op) {
    cuda_state *g = impl(m);
    if (!g || !g->comm)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "this model has no communicator");
    TRY(set_device(m));
    return nccl_allreduce_host(g->comm, values, n, op, g->stream);
}

/* Gradient buckets: the slices of layer l (complete once its backward is
 * done), or with l = -1 the whole-model tensors (after the embeddings'). */
llmc_status reduce_bucket(cuda_state *g, int l) {
    float *bufs[LLMC_NUM_PARAM_TENSORS];
    size_t counts[LLMC_NUM_PARAM_TENSORS];
    int n = 0;
    for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; i++) {
        const bool per_layer = llmc_param_is_per_layer(i);
        if (per_layer != (l >= 0) || g->size[i] == 0) continue;  // Llama's empty biases
        bufs[n] = G(g, i, l >= 0 ? l : 0);
        counts[n++] = per_layer ? g->size[i] / g->L : g->size[i];
    }
    return nccl_allreduce_group(g->comm, bufs, counts, n, g->stream);
}

void cuda_destroy(llmc_model *m) {
    if (!m->impl) return;
    cudaSetDevice(m->options.device_index);
    cudaStreamSynchronize(impl(m)->stream);
    free_all(impl(m));
    m->impl = nullptr;
}

/* ---- token staging ---------------------------------------------------- */

/* Per training micro-step: inputs, targets, then the rows sorted by token,
 * bucket starts and bucket tokens for the deterministic wte gradient. For
 * eval and logits: inputs, then the scored rows and their targets. */
size_t staging_ints(size_t N, bool buckets) { return (buckets ? 5 * N + 1 : 3 * N) + 3 & ~(size_t)3; }

void dev_free(cuda_state *g, void *p, size_t bytes) {
    if (!p) return;
    cudaFree(p);
    g->allocations.erase(std::find(g->allocations.begin(), g->allocations.end(), p));
    g->bytes -= bytes;
}

llmc_status reserve_tokens(cuda_state *g, size_t ints, size_t losses) {
    if (ints > g->tokens_cap) {
        CUDA_TRY(cudaStreamSynchronize(g->stream));
        dev_free(g, g->tokens, g->tokens_cap * sizeof(int));
        if (g->tokens_host) cudaFreeHost(g->tokens_host);
        g->tokens = g->tokens_host = nullptr;
        g->tokens_cap = 0;
        CUDA_TRY(cudaMallocHost(&g->tokens_host, ints * sizeof(int)));
        TRY(alloc_n(g, &g->tokens, ints, "token buffers"));
        g->tokens_cap = ints;
    }
    if (losses > g->losses_cap) {
        CUDA_TRY(cudaStreamSynchronize(g->stream));
        dev_free(g, g->losses, g->losses_cap * sizeof(float));
        g->losses = nullptr;
        g->losses_cap = 0;
        TRY(alloc_n(g, &g->losses, losses, "per-token losses"));
        g->losses_cap = losses;
    }
    return LLMC_OK;
}

/* Counting sort of one micro-step's tokens; returns the number of buckets. */
int sort_tokens(cuda_state *g, const int32_t *tok, int N, int *order, int *start, int *token) {
    std::vector<int> &next = g->next;
    for (int r = 0; r < N; r++) next[tok[r]]++;
    int nb = 0, pos = 0;
    for (int v = 0; v < g->Vp; v++) {
        if (!next[v]) continue;
        start[nb] = pos;
        token[nb] = v;
        nb++;
        const int count = next[v];
        next[v] = pos;
        pos += count;
    }
    start[nb] = pos;
    for (int r = 0; r < N; r++) order[next[tok[r]]++] = r;
    for (int b = 0; b < nb; b++) next[token[b]] = 0;
    return nb;
}

/* ---- forward ---------------------------------------------------------- */

struct Layer {
    bf16 *ln1, *ln2, *qkv, *atty, *res2, *res3, *fch, *fch_gelu;
    float *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd, *lse;
};

Layer layer(cuda_state *g, int l) {
    const size_t N = g->Nmax, C = g->C;
    return {g->ln1 + l * g->ln_stride,  g->ln2 + l * g->ln_stride,  g->qkv + l * N * g->QKV,
            g->atty + l * N * C,        g->res2 + l * N * C,        g->res3 + l * N * C,
            g->fch + l * N * g->FC,     g->fch_gelu + l * g->gelu_stride,
            g->ln1_mean + l * N,        g->ln1_rstd + l * N,        g->ln2_mean + l * N,
            g->ln2_rstd + l * N,        g->lse + l * N * g->NH};
}

/* ---- FP8 operands --------------------------------------------------- */

uint8_t *W8(cuda_state *g, int p, int l) {
    return g->w8 + g->w8_off[p] + (size_t)l * product_in(g, p) * product_out(g, p);
}
uint8_t *kept_WT8(cuda_state *g, int p, int l) {
    return g->wT8 + g->w8_off[p] + (size_t)l * product_in(g, p) * product_out(g, p);
}
/* The transposed E4M3 weight of product p, layer l: kept, or in w8_only mode
 * transposed now into the one-matrix scratch. */
const uint8_t *WT8(cuda_state *g, int p, int l) {
    if (!g->w8_only) return kept_WT8(g, p, l);
    fp8_transpose(g->wT8, W8(g, p, l), product_out(g, p), product_in(g, p), g->stream);
    return g->wT8;
}
uint8_t *XT8(cuda_state *g, int p, int l) { return g->xT8[p] + l * g->xT_stride[p]; }
/* Where product p's transposed output gradient goes (grad_operand). */
uint8_t *GT8(cuda_state *g, int p) {
    return p == FP8_FCPROJ && g->fcproj_gT8 ? g->fcproj_gT8 : g->gT8;
}
const float *descale(cuda_state *g, int role, int l, int p) {
    return g->f8.descale_of(g->f8.slot(role, l, p));
}

/* The E4M3 weights (and unless w8_only their transposes) from the bf16
 * weights, each matrix scaled from its own largest magnitude. In w8_only mode
 * each matrix is first rounded from its masters into w16 as the bf16 copy
 * would have been after the step whose rounding seed is seed, so that both
 * modes compute with the same bits. */
void quantize_weights(cuda_state *g, uint32_t seed) {
    if (!g->fp8) return;
    cudaStream_t s = g->stream;
    for (int p = 0; p < FP8_PRODUCTS; p++) {
        const int IC = product_in(g, p), OC = product_out(g, p), w = PRODUCT_WEIGHT[p];
        for (int l = 0; l < g->L; l++) {
            const bf16 *weight = P(g, w, l);
            if (g->w8_only) {
                const size_t at = slice(g, w, l);
                round_params(g->w16, g->master + at, (size_t)OC * IC, seed, at, s);
                weight = g->w16;
            }
            const int slot = g->f8.slot(FP8_W, l, p);
            fp8_current_scale(weight, OC, IC, g->f8, slot, s);
            fp8_quantize(W8(g, p, l), g->w8_only ? nullptr : kept_WT8(g, p, l), weight, {},
                         OC, IC, 1, 0, 0, g->f8, slot, false, nullptr, nullptr, s);
        }
    }
    const fp8_scaling &h = g->head_scaling;
    const int w = h.slot(FP8_W, 0, 0);
    fp8_current_scale(P(g, g->head), g->Vp, g->C, h, w, s);
    fp8_quantize(g->head8, g->headT8, P(g, g->head), {}, g->Vp, g->C, 1, 0, 0, h, w, false,
                 nullptr, nullptr, s);
}

/* rows x cols of x, transformed (fp8.cuh), into out and/or outT for slot:
 * with the step's delayed scale, or before the scales have a history,
 * scaled from x itself (its amax is recorded first). record: a training
 * pass (the step's amax). dbias (may be NULL): the column sums are added
 * to it. */
void quantize_operand(cuda_state *g, int slot, const bf16 *x, const fp8_transform &t, int rows,
                      int cols, void *out, void *outT, bool record, float *dbias = nullptr) {
    if (!g->fp8_warm) {
        fp8_amax(x, t, rows, cols, 1, 0, g->f8, slot, g->stream);
        fp8_set_scales(g->f8, slot, 1, 1, false, g->stream);
        record = false;  // amax holds it already
    }
    fp8_quantize(out, outT, x, t, rows, cols, 1, 0, 0, g->f8, slot, record, dbias, g->partial,
                 g->stream);
}

/* Product p's input as its FP8 cast reads it, from the bf16 input inp: GPT-2's
 * fcproj casts GELU(fc's pre-activation), so that in FP8 the bf16 GELU output
 * is never written (nor recomputed). */
void quantize_input(cuda_state *g, int p, int l, const bf16 *inp, int N, void *out, void *outT,
                    bool record) {
    const bool gelu = p == FP8_FCPROJ && !g->llama;
    quantize_operand(g, g->f8.slot(FP8_X, l, p), gelu ? layer(g, l).fch : inp,
                     {gelu ? FP8_GELU : FP8_AS_IS}, N, product_in(g, p), out, outT, record);
}

/* After a step's backward: its largest magnitudes (the largest of every
 * rank's) join the history and set the next step's scales. */
llmc_status update_activation_scales(cuda_state *g) {
    if (g->comm) {
        float *amax = g->f8.amax;
        const size_t n = g->f8.slots();
        TRY(nccl_allreduce_group(g->comm, &amax, &n, 1, g->stream, LLMC_REDUCE_MAX));
        TRY(nccl_join(g->comm, g->stream));
    }
    const int per_role = g->L * FP8_PRODUCTS;
    fp8_set_scales(g->f8, g->f8.slot(FP8_X, 0, 0), per_role, 1, true, g->stream);
    fp8_set_scales(g->f8, g->f8.slot(FP8_G, 0, 0), per_role, 1, true, g->stream);
    g->fp8_warm = true;
    return LLMC_OK;
}

/* Where a LayerNorm writes the input of block product p of layer l: in FP8
 * once the scales have a history, straight into the product's E4M3 operand
 * x8 at its delayed scale (recording its amax when training), so that the
 * bf16 output is neither written nor cast; else (empty) its bf16 buffer.
 * GPT-2 only (Llama's RMSNorm writes bf16). */
ln_fp8_out ln_into_x8(cuda_state *g, int p, int l, bool record) {
    if (!g->fp8 || !g->fp8_warm || g->llama) return {};
    const int slot = g->f8.slot(FP8_X, l, p);
    return {g->x8, g->f8.scale + slot, record ? g->f8.amax + slot : nullptr};
}

/* Block product p of layer l: out (N, OC) = inp @ w^T + bias (Llama: no
 * bias), with GELU and its input into gelu_pre for GPT-2's fc. In FP8 inp is
 * cast first (quantize_input; in x8 already if x8_ready: ln_into_x8), and
 * when training its transpose is kept for the weight gradient; GPT-2's fc
 * then writes only its pre-activation, gelu_pre, which fcproj's cast reads. */
llmc_status block_forward(cuda_state *g, int p, int l, bf16 *out, const bf16 *inp, int N,
                          bf16 *gelu_pre, bool training, bool x8_ready = false) {
    const int IC = product_in(g, p), OC = product_out(g, p);
    const bf16 *w = P(g, PRODUCT_WEIGHT[p], l);
    const bf16 *bias = g->size[PRODUCT_BIAS[p]] ? P(g, PRODUCT_BIAS[p], l) : nullptr;
    if (!g->fp8) return matmul_forward(g->mm, out, inp, IC, w, bias, N, IC, OC, gelu_pre);
    uint8_t *xT = training && g->xT_saved[p] ? XT8(g, p, l) : nullptr;
    if (!x8_ready)
        quantize_input(g, p, l, inp, N, g->x8, xT, training);
    else if (xT)
        fp8_transpose(xT, g->x8, N, IC, g->stream);
    return matmul_forward_fp8(g->mm, gelu_pre ? gelu_pre : out, g->x8, W8(g, p, l),
                              descale(g, FP8_X, l, p), descale(g, FP8_W, l, p), bias, N, IC, OC);
}

/* Backward of block product p of layer l, in parts called in this order
 * around the caller's recomputations:
 * grad_operand: FP8 casts dout (N, OC), both ways; with gelu_pre, dout is
 *   taken through GELU' on the way (the bf16 path does that in the
 *   epilogue of the product before, input_grad's gelu_pre), and where
 *   fcproj's transposed input was not saved, the cast writes it too,
 *   GELU(gelu_pre), from the gelu_pre it reads anyway;
 * bias_grad (qkv and fc; the projections' bias gradients come from the
 *   LayerNorm backward): in FP8 grad_operand's cast has summed it already;
 * input_operand: FP8 casts a recomputed bf16 input, inp, into its transpose;
 * weight_grad and input_grad: dw += dout^T inp and dinp = dout @ w. */
bool cast_sums_bias(const cuda_state *g, int p) {
    return g->size[PRODUCT_BIAS[p]] && (p == FP8_QKV || p == FP8_FC);
}
void grad_operand(cuda_state *g, int p, int l, const bf16 *dout, const bf16 *gelu_pre, int N) {
    if (!g->fp8) return;
    fp8_transform t{gelu_pre ? FP8_GELU_GRAD : FP8_AS_IS, gelu_pre};
    if (gelu_pre && !g->xT_saved[FP8_FCPROJ]) {
        t.geluT = XT8(g, FP8_FCPROJ, l);
        t.gelu_scale = g->f8.scale + g->f8.slot(FP8_X, l, FP8_FCPROJ);
    }
    quantize_operand(g, g->f8.slot(FP8_G, l, p), dout, t, N, product_out(g, p), g->g8, GT8(g, p),
                     true, cast_sums_bias(g, p) ? G(g, PRODUCT_BIAS[p], l) : nullptr);
}
void bias_grad(cuda_state *g, int p, int l, const bf16 *dout, int N) {
    if (!g->fp8)
        bias_backward(G(g, PRODUCT_BIAS[p], l), g->partial, dout, N, product_out(g, p), g->stream);
}
void input_operand(cuda_state *g, int p, int l, const bf16 *inp, int N, bool x8_ready = false) {
    if (!g->fp8 || g->xT_saved[p]) return;
    if (x8_ready)
        fp8_transpose(XT8(g, p, l), g->x8, N, product_in(g, p), g->stream);
    else
        quantize_input(g, p, l, inp, N, nullptr, XT8(g, p, l), false);
}
llmc_status weight_grad(cuda_state *g, int p, int l, const bf16 *dout, const bf16 *inp, int N) {
    const int IC = product_in(g, p), OC = product_out(g, p);
    float *dw = G(g, PRODUCT_WEIGHT[p], l);
    if (!g->fp8) return matmul_backward_weight(g->mm, dw, dout, inp, N, IC, OC);
    return matmul_backward_weight_fp8(g->mm, dw, GT8(g, p), XT8(g, p, l), descale(g, FP8_G, l, p),
                                      descale(g, FP8_X, l, p), N, IC, OC);
}
llmc_status input_grad(cuda_state *g, int p, int l, bf16 *dinp, const bf16 *dout,
                       const bf16 *gelu_pre, int N) {
    const int IC = product_in(g, p), OC = product_out(g, p);
    if (!g->fp8)
        return matmul_backward_input(g->mm, dinp, dout, P(g, PRODUCT_WEIGHT[p], l), N, IC, OC,
                                     gelu_pre);
    return matmul_backward_input_fp8(g->mm, dinp, g->g8, WT8(g, p, l), descale(g, FP8_G, l, p),
                                     descale(g, FP8_W, l, p), N, IC, OC);
}

llmc_status llama_forward(cuda_state *g, const int *tokens, int B, int T, bool training);

llmc_status forward(cuda_state *g, const int *tokens, int B, int T, bool training) {
    if (g->llama) return llama_forward(g, tokens, B, T, training);
    const int N = B * T, C = g->C, L = g->L;
    cudaStream_t s = g->stream;
    char err[512] = "";
    encoder_forward(g->encoded, tokens, P(g, P_WTE), P(g, P_WPE), B, T, C, s);
    Layer first = layer(g, 0);
    ln_fp8_out ln1_x8 = ln_into_x8(g, FP8_QKV, 0, training);
    layernorm_forward(first.ln1, first.ln1_mean, first.ln1_rstd, g->encoded, P(g, P_LN1W),
                      P(g, P_LN1B), N, C, s, ln1_x8);
    for (int l = 0; l < L; l++) {
        Layer a = layer(g, l);
        const bf16 *res_in = l == 0 ? g->encoded : layer(g, l - 1).res3;
        TRY(block_forward(g, FP8_QKV, l, a.qkv, a.ln1, N, nullptr, training, ln1_x8.out));
        TRY(attn_status(attn_forward(g->attn, a.atty, training ? a.lse : nullptr, a.qkv, B, T, err,
                                     sizeof err), err));
        TRY(block_forward(g, FP8_ATTPROJ, l, g->dC, a.atty, N, nullptr, training));
        const ln_fp8_out ln2_x8 = ln_into_x8(g, FP8_FC, l, training);
        residual_layernorm_forward(a.res2, a.ln2, a.ln2_mean, a.ln2_rstd, res_in, g->dC,
                                   P(g, P_LN2W, l), P(g, P_LN2B, l), N, C, s, ln2_x8);
        TRY(block_forward(g, FP8_FC, l, a.fch_gelu, a.ln2, N, a.fch, training, ln2_x8.out));
        TRY(block_forward(g, FP8_FCPROJ, l, g->dC, a.fch_gelu, N, nullptr, training));
        if (l + 1 < L) {
            Layer b = layer(g, l + 1);
            ln1_x8 = ln_into_x8(g, FP8_QKV, l + 1, training);
            residual_layernorm_forward(a.res3, b.ln1, b.ln1_mean, b.ln1_rstd, a.res2, g->dC,
                                       P(g, P_LN1W, l + 1), P(g, P_LN1B, l + 1), N, C, s, ln1_x8);
        } else {
            residual_layernorm_forward(a.res3, g->lnf, g->lnf_mean, g->lnf_rstd, a.res2, g->dC,
                                       P(g, P_LNFW), P(g, P_LNFB), N, C, s);
        }
    }
    CUDA_CHECK_LAUNCH();
    return LLMC_OK;
}

/* Loss of each of the N rows of x, the final LayerNorm's output (and with
 * backward, the gradient of x into dC and the classifier's into wte's
 * gradient), CLASSIFIER_CHUNK_ROWS rows of logits at a time. Every chunk
 * runs the matmul algorithm of a full one, so a row's loss does not depend on
 * the rows beside it (an eval scores a gather of rows).
 * FP8 training runs the three products in FP8 (see head_scaling): the
 * cross-entropy kernel leaves the logits and gives each row's log-sum-exp,
 * from which the cast of the logits writes their gradients, both ways, with
 * no bf16 gradient written. Evals stay bf16: their rows must not depend on
 * the rows beside them through a scale. */
llmc_status classifier(cuda_state *g, const bf16 *lnf, const int *targets, float *losses, int N,
                       float dloss, bool backward) {
    const int C = g->C, chunk = (int)classifier_chunk(g);
    cudaStream_t s = g->stream;
    const bool fp8 = g->fp8 && backward;
    const fp8_scaling &h = g->head_scaling;
    const int xs = h.slot(FP8_X, 0, 0), ws = h.slot(FP8_W, 0, 0), gs = h.slot(FP8_G, 0, 0);
    const float dlogits_scale = dloss > 0.0f ? fp8_pow2_scale(dloss, FP8_E4M3_MAX) : 1.0f;
    if (fp8) {
        fp8_current_scale(lnf, N, C, h, xs, s);
        fp8_set_scale(h, gs, dlogits_scale, s);
    }
    for (int r0 = 0; r0 < N; r0 += chunk) {
        const int rows = std::min(chunk, N - r0);
        const bf16 *x = lnf + (size_t)r0 * C;
        if (fp8) {
            fp8_quantize(g->x8, g->lnfT8, x, {}, rows, C, 1, 0, 0, h, xs, false, nullptr, nullptr,
                         s);
            TRY(matmul_forward_fp8(g->mm, g->logits, g->x8, g->head8, h.descale_of(xs),
                                   h.descale_of(ws), nullptr, rows, C, g->Vp, chunk));
        } else {
            TRY(matmul_forward(g->mm, g->logits, x, C, P(g, g->head), nullptr, rows, C, g->Vp,
                               nullptr, chunk));
        }
        crossentropy_forward_backward(g->logits, losses + r0, targets + r0, rows, g->V, g->Vp,
                                      dloss, backward, s, fp8 ? g->dlogits8 : nullptr,
                                      dlogits_scale);
        if (!backward) continue;
        if (fp8) {
            fp8_transpose(g->dlogitsT8, g->dlogits8, rows, g->Vp, s);
            TRY(matmul_backward_input_fp8(g->mm, g->dC + (size_t)r0 * C, g->dlogits8, g->headT8,
                                          h.descale_of(gs), h.descale_of(ws), rows, C, g->Vp,
                                          true));
            TRY(matmul_backward_weight_fp8(g->mm, G(g, g->head), g->dlogitsT8, g->lnfT8,
                                           h.descale_of(gs), h.descale_of(xs), rows, C, g->Vp,
                                           true));
        } else {
            TRY(matmul_backward_input(g->mm, g->dC + (size_t)r0 * C, g->logits, P(g, g->head),
                                      rows, C, g->Vp, nullptr));
            TRY(matmul_backward_weight(g->mm, G(g, g->head), g->logits, x, rows, C, g->Vp));
        }
    }
    CUDA_CHECK_LAUNCH();
    return LLMC_OK;
}

/* ---- backward --------------------------------------------------------- */

/* With reduce, each layer's gradients (then the rest) are summed across
 * ranks as soon as they are complete. */
llmc_status llama_backward_layers(cuda_state *g, const int *staged, int num_buckets, int B, int T,
                                  bool reduce);

llmc_status backward_layers(cuda_state *g, const int *staged, int num_buckets, int B, int T,
                            bool reduce) {
    if (g->llama) return llama_backward_layers(g, staged, num_buckets, B, T, reduce);
    const int N = B * T, C = g->C, L = g->L;
    cudaStream_t s = g->stream;
    char err[512] = "";
    CUDA_TRY(cudaMemsetAsync(g->dres, 0, (size_t)N * C * sizeof(bf16), s));
    layernorm_backward(g->dres, G(g, P_LNFW), G(g, P_LNFB), G(g, P_FCPROJB, L - 1), g->partial, g->dC,
                       layer(g, L - 1).res3, P(g, P_LNFW), g->lnf_mean, g->lnf_rstd, N, C, s);
    for (int l = L - 1; l >= 0; l--) {
        Layer a = layer(g, l);
        const bf16 *res_in = l == 0 ? g->encoded : layer(g, l - 1).res3;
        /* MLP. fcproj's weight gradient: in bf16 before d4C, where the
         * recomputed GELU output lives, is written; in FP8 after fc's
         * gradient cast, which writes fcproj's input where it was not saved */
        grad_operand(g, FP8_FCPROJ, l, g->dres, nullptr, N);
        if (!g->fp8) {
            if (g->recompute >= 1) gelu_forward(a.fch_gelu, a.fch, (size_t)N * 4 * C, s);
            TRY(weight_grad(g, FP8_FCPROJ, l, g->dres, a.fch_gelu, N));
        }
        TRY(input_grad(g, FP8_FCPROJ, l, g->d4C, g->dres, a.fch, N));
        grad_operand(g, FP8_FC, l, g->d4C, a.fch, N);
        if (g->fp8) TRY(weight_grad(g, FP8_FCPROJ, l, g->dres, a.fch_gelu, N));
        const ln_fp8_out ln2_x8 = ln_into_x8(g, FP8_FC, l, false);
        if (g->recompute >= 2)
            layernorm_forward(a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, P(g, P_LN2W, l),
                              P(g, P_LN2B, l), N, C, s, ln2_x8);
        input_operand(g, FP8_FC, l, a.ln2, N, ln2_x8.out);
        TRY(weight_grad(g, FP8_FC, l, g->d4C, a.ln2, N));
        bias_grad(g, FP8_FC, l, g->d4C, N);
        TRY(input_grad(g, FP8_FC, l, g->dC, g->d4C, nullptr, N));
        layernorm_backward(g->dres, G(g, P_LN2W, l), G(g, P_LN2B, l), G(g, P_ATTPROJB, l),
                           g->partial, g->dC, a.res2,
                           P(g, P_LN2W, l), a.ln2_mean, a.ln2_rstd, N, C, s);
        /* attention */
        grad_operand(g, FP8_ATTPROJ, l, g->dres, nullptr, N);
        input_operand(g, FP8_ATTPROJ, l, a.atty, N);
        TRY(weight_grad(g, FP8_ATTPROJ, l, g->dres, a.atty, N));
        TRY(input_grad(g, FP8_ATTPROJ, l, g->dC, g->dres, nullptr, N));
        bf16 *dqkv = g->d4C;
        TRY(attn_status(attn_backward(g->attn, dqkv, g->dC, a.qkv, a.atty, a.lse, B, T, err,
                                      sizeof err), err));
        grad_operand(g, FP8_QKV, l, dqkv, nullptr, N);
        const ln_fp8_out ln1_x8 = ln_into_x8(g, FP8_QKV, l, false);
        if (g->recompute >= 2)
            layernorm_forward(a.ln1, a.ln1_mean, a.ln1_rstd, res_in, P(g, P_LN1W, l),
                              P(g, P_LN1B, l), N, C, s, ln1_x8);
        input_operand(g, FP8_QKV, l, a.ln1, N, ln1_x8.out);
        TRY(weight_grad(g, FP8_QKV, l, dqkv, a.ln1, N));
        bias_grad(g, FP8_QKV, l, dqkv, N);
        TRY(input_grad(g, FP8_QKV, l, g->dC, dqkv, nullptr, N));
        layernorm_backward(g->dres, G(g, P_LN1W, l), G(g, P_LN1B, l),
                           l > 0 ? G(g, P_FCPROJB, l - 1) : nullptr, g->partial, g->dC, res_in,
                           P(g, P_LN1W, l), a.ln1_mean, a.ln1_rstd, N, C, s);
        if (reduce) TRY(reduce_bucket(g, l));
    }
    const int *order = staged + 2 * N, *start = staged + 3 * N, *token = staged + 4 * N + 1;
    // d4C is free again after layer 0's backward
    encoder_backward(G(g, P_WTE), G(g, P_WPE), (float *)g->d4C, g->dres, order, start, token,
                     num_buckets, B, T, C, s);
    CUDA_CHECK_LAUNCH();
    if (reduce) {
        TRY(reduce_bucket(g, -1));
        TRY(nccl_join(g->comm, s));
    }
    return LLMC_OK;
}

/* ---- Llama ------------------------------------------------------------ */

/* A block, pre-norm, no biases (RMSNorm w, RoPE, grouped-query attention):
 *   h = x + attproj(attention(rope(qkv(rms1(x))))),  y = h + fcproj(swiglu(fc(rms2(h)))) */
llmc_status llama_forward(cuda_state *g, const int *tokens, int B, int T, bool training) {
    const int N = B * T, C = g->C, L = g->L, HS = g->C / g->NH;
    cudaStream_t s = g->stream;
    char err[512] = "";
    encoder_forward(g->encoded, tokens, P(g, P_WTE), nullptr, B, T, C, s);
    Layer first = layer(g, 0);
    rmsnorm_forward(first.ln1, first.ln1_rstd, g->encoded, P(g, P_LN1W), N, C, g->eps, s);
    for (int l = 0; l < L; l++) {
        Layer a = layer(g, l);
        const bf16 *res_in = l == 0 ? g->encoded : layer(g, l - 1).res3;
        TRY(block_forward(g, FP8_QKV, l, a.qkv, a.ln1, N, nullptr, training));
        rope_rotate(a.qkv, g->rope_cos, g->rope_sin, B, T, g->NH, g->NKV, HS, false, s);
        TRY(attn_status(attn_forward(g->attn, a.atty, training ? a.lse : nullptr, a.qkv, B, T, err,
                                     sizeof err), err));
        TRY(block_forward(g, FP8_ATTPROJ, l, g->dC, a.atty, N, nullptr, training));
        residual_rmsnorm_forward(a.res2, a.ln2, a.ln2_rstd, res_in, g->dC, P(g, P_LN2W, l), N, C,
                                 g->eps, s);
        TRY(block_forward(g, FP8_FC, l, a.fch, a.ln2, N, nullptr, training));
        swiglu_forward(a.fch_gelu, a.fch, N, g->ACT, s);
        TRY(block_forward(g, FP8_FCPROJ, l, g->dC, a.fch_gelu, N, nullptr, training));
        const bool last = l + 1 == L;
        residual_rmsnorm_forward(a.res3, last ? g->lnf : layer(g, l + 1).ln1,
                                 last ? g->lnf_rstd : layer(g, l + 1).ln1_rstd, a.res2, g->dC,
                                 last ? P(g, P_LNFW) : P(g, P_LN1W, l + 1), N, C, g->eps, s);
    }
    CUDA_CHECK_LAUNCH();
    return LLMC_OK;
}

/* As backward_layers, for Llama: dC holds the final norm's output gradient. */
llmc_status llama_backward_layers(cuda_state *g, const int *staged, int num_buckets, int B, int T,
                                  bool reduce) {
    const int N = B * T, C = g->C, L = g->L, HS = g->C / g->NH, F = g->ACT;
    cudaStream_t s = g->stream;
    char err[512] = "";
    CUDA_TRY(cudaMemsetAsync(g->dres, 0, (size_t)N * C * sizeof(bf16), s));
    rmsnorm_backward(g->dres, G(g, P_LNFW), g->partial, g->dC, layer(g, L - 1).res3, P(g, P_LNFW),
                     g->lnf_rstd, N, C, s);
    for (int l = L - 1; l >= 0; l--) {
        Layer a = layer(g, l);
        const bf16 *res_in = l == 0 ? g->encoded : layer(g, l - 1).res3;
        /* MLP */
        grad_operand(g, FP8_FCPROJ, l, g->dres, nullptr, N);
        if (g->recompute >= 1) swiglu_forward(a.fch_gelu, a.fch, N, F, s);
        input_operand(g, FP8_FCPROJ, l, a.fch_gelu, N);
        TRY(weight_grad(g, FP8_FCPROJ, l, g->dres, a.fch_gelu, N));
        TRY(input_grad(g, FP8_FCPROJ, l, g->dact, g->dres, nullptr, N));
        swiglu_backward(g->d4C, g->dact, a.fch, N, F, s);
        grad_operand(g, FP8_FC, l, g->d4C, nullptr, N);
        if (g->recompute >= 2)
            rmsnorm_forward(a.ln2, a.ln2_rstd, a.res2, P(g, P_LN2W, l), N, C, g->eps, s);
        input_operand(g, FP8_FC, l, a.ln2, N);
        TRY(weight_grad(g, FP8_FC, l, g->d4C, a.ln2, N));
        TRY(input_grad(g, FP8_FC, l, g->dC, g->d4C, nullptr, N));
        rmsnorm_backward(g->dres, G(g, P_LN2W, l), g->partial, g->dC, a.res2, P(g, P_LN2W, l),
                         a.ln2_rstd, N, C, s);
        /* attention */
        grad_operand(g, FP8_ATTPROJ, l, g->dres, nullptr, N);
        input_operand(g, FP8_ATTPROJ, l, a.atty, N);
        TRY(weight_grad(g, FP8_ATTPROJ, l, g->dres, a.atty, N));
        TRY(input_grad(g, FP8_ATTPROJ, l, g->dC, g->dres, nullptr, N));
        bf16 *dqkv = g->d4C;
        TRY(attn_status(attn_backward(g->attn, dqkv, g->dC, a.qkv, a.atty, a.lse, B, T, err,
                                      sizeof err), err));
        rope_rotate(dqkv, g->rope_cos, g->rope_sin, B, T, g->NH, g->NKV, HS, true, s);
        grad_operand(g, FP8_QKV, l, dqkv, nullptr, N);
        if (g->recompute >= 2)
            rmsnorm_forward(a.ln1, a.ln1_rstd, res_in, P(g, P_LN1W, l), N, C, g->eps, s);
        input_operand(g, FP8_QKV, l, a.ln1, N);
        TRY(weight_grad(g, FP8_QKV, l, dqkv, a.ln1, N));
        TRY(input_grad(g, FP8_QKV, l, g->dC, dqkv, nullptr, N));
        rmsnorm_backward(g->dres, G(g, P_LN1W, l), g->partial, g->dC, res_in, P(g, P_LN1W, l),
                         a.ln1_rstd, N, C, s);
        if (reduce) TRY(reduce_bucket(g, l));
    }
    const int *order = staged + 2 * N, *start = staged + 3 * N, *token = staged + 4 * N + 1;
    encoder_backward(G(g, P_WTE), nullptr, (float *)g->d4C, g->dres, order, start, token,
                     num_buckets, B, T, C, s);  // d4C is free again after layer 0's backward
    CUDA_CHECK_LAUNCH();
    if (reduce) {
        TRY(reduce_bucket(g, -1));
        TRY(nccl_join(g->comm, s));
    }
    return LLMC_OK;
}

/* ---- entry points ----------------------------------------------------- */

/* A training micro-step once its tokens are staged: forward, loss, backward. */
llmc_status micro_step(cuda_state *g, const int *staged, float *losses, int buckets, int B, int T,
                       float loss_scale, bool reduce) {
    TRY(forward(g, staged, B, T, true));
    TRY(classifier(g, g->lnf, staged + (size_t)B * T, losses, B * T, loss_scale, true));
    return backward_layers(g, staged, buckets, B, T, reduce);
}

/* micro_step launched as one CUDA graph: a d24 FP8 micro-step is ~1,700
 * kernels and memsets, and their launch gaps left an H200 idle 2.7% of it
 * (bench/CUDA_NOTES.md). The work is captured afresh every time (the host's
 * calls cost it a few ms against ~100 ms of GPU work) and moved into the one
 * executable graph by an update, so whatever differs between micro-steps
 * (token slots, bucket counts, loss scale, FP8 path) is taken as captured;
 * an update the graph's shape refuses instantiates it anew. Run eagerly
 * instead: a shape's first micro-step (its products time cuBLASLt's
 * candidates and cuDNN builds its graphs, both synchronising), distributed
 * mode (NCCL's own stream), and everything after a failed capture. The
 * kernels and their arguments are the same either way, so are the results. */
llmc_status micro_step_graphed(cuda_state *g, const int *staged, float *losses, int buckets,
                               int B, int T, float loss_scale, bool reduce) {
    if (g->graphs_off || g->comm || B != g->step_B || T != g->step_T) {
        TRY(micro_step(g, staged, losses, buckets, B, T, loss_scale, reduce));
        g->step_B = B;
        g->step_T = T;
        return LLMC_OK;
    }
    CUDA_TRY(cudaStreamBeginCapture(g->stream, cudaStreamCaptureModeThreadLocal));
    const llmc_status st = micro_step(g, staged, losses, buckets, B, T, loss_scale, reduce);
    cudaGraph_t graph = nullptr;
    cudaError_t e = cudaStreamEndCapture(g->stream, &graph);
    if (st != LLMC_OK || e != cudaSuccess) {  // nothing ran: run it eagerly, from now on
        if (graph) cudaGraphDestroy(graph);
        cudaGetLastError();
        g->graphs_off = true;
        return micro_step(g, staged, losses, buckets, B, T, loss_scale, reduce);
    }
    if (g->step_graph) {
        cudaGraphExecUpdateResultInfo info;
        if (cudaGraphExecUpdate(g->step_graph, graph, &info) != cudaSuccess) {
            cudaGetLastError();
            cudaGraphExecDestroy(g->step_graph);  // freed once its launches are done
            g->step_graph = nullptr;
        }
    }
    if (!g->step_graph) e = cudaGraphInstantiate(&g->step_graph, graph, 0);
    cudaGraphDestroy(graph);
    CUDA_TRY(e);
    CUDA_TRY(cudaGraphLaunch(g->step_graph, g->stream));
    return LLMC_OK;
}

llmc_status cuda_backward(llmc_model *m, const int32_t *inputs, const int32_t *targets,
                          int micro_steps, int B, int T, float loss_scale, double *loss_sum) {
    TRY(set_device(m));
    cuda_state *g = impl(m);
    const size_t N = (size_t)B * T, per = staging_ints(N, true);
    if (g->fp8 && N % 16)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "precision fp8 trains on B*T a multiple of 16 "
                          "(the FP8 products' layout needs it); got B=%d, T=%d", B, T);
    TRY(reserve_tokens(g, per * micro_steps, N * micro_steps));
    CUDA_TRY(cudaMemsetAsync(g->grads, 0, g->total * sizeof(float), g->stream));
    /* Each micro-step's tokens are sorted on the host and copied up just
     * before its work is queued, so the host sorts the next while the GPU runs. */
    for (int k = 0; k < micro_steps; k++) {
        int *h = g->tokens_host + k * per;
        const int *staged = g->tokens + k * per;
        memcpy(h, inputs + k * N, N * sizeof(int));
        memcpy(h + N, targets + k * N, N * sizeof(int));
        const int buckets = sort_tokens(g, inputs + k * N, (int)N, h + 2 * N, h + 3 * N, h + 4 * N + 1);
        CUDA_TRY(cudaMemcpyAsync((void *)staged, h, per * sizeof(int), cudaMemcpyHostToDevice,
                                 g->stream));
        TRY(micro_step_graphed(g, staged, g->losses + k * N, buckets, B, T, loss_scale,
                               g->comm && k == micro_steps - 1));
    }
    if (g->fp8) TRY(update_activation_scales(g));
    sum_losses(g->loss, g->losses, N * micro_steps, g->stream);
    CUDA_CHECK_LAUNCH();
    CUDA_TRY(cudaMemcpyAsync(loss_sum, g->loss, sizeof(double), cudaMemcpyDeviceToHost, g->stream));
    return sync(g);
}

llmc_status cuda_grad_norm(llmc_model *m, float *norm) {
    TRY(set_device(m));
    cuda_state *g = impl(m);
    float sq = 0.0f;
    sum_squares(g->norm, g->partial, g->grads, g->total, g->stream);
    CUDA_CHECK_LAUNCH();
    CUDA_TRY(cudaMemcpyAsync(&sq, g->norm, sizeof(float), cudaMemcpyDeviceToHost, g->stream));
    CUDA_TRY(cudaStreamSynchronize(g->stream));
    *norm = sqrtf(sq);
    return LLMC_OK;
}

llmc_status cuda_update(llmc_model *m, const llmc_adamw *hp, float grad_scale, int64_t t) {
    TRY(set_device(m));
    cuda_state *g = impl(m);
    const float bias_corr1 = (float)(1.0 - pow((double)hp->beta1, (double)t));
    const float bias_corr2 = (float)(1.0 - pow((double)hp->beta2, (double)t));
    const uint32_t seed = rounding_seed(g->seed, t);
    /* [lo, hi): the elements whose masters this rank holds */
    const size_t lo = g->zero1 ? g->lo : 0, hi = g->zero1 ? g->lo + g->shard : g->total;
    for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; i++) {
        const size_t a = std::max(g->off[i], lo), b = std::min(g->off[i] + g->size[i], hi);
        if (a >= b) continue;
        bf16 *rounded = g->params_of[i] ? g->params_of[i] + (a - g->off[i]) : nullptr;
        adamw_update(g->master + (a - lo), rounded, g->mom1 + (a - lo), g->mom2 + (a - lo),
                     g->grads + a, b - a, hp->lr, hp->beta1, hp->beta2, bias_corr1, bias_corr2,
                     hp->eps, llmc_param_is_decayed(i) ? hp->weight_decay : 0.0f, grad_scale, seed,
                     a, g->stream);
    }
    CUDA_CHECK_LAUNCH();
    if (g->zero1) TRY(nccl_allgather(g->comm, g->params, g->shard, true, g->stream));
    quantize_weights(g, seed);
    CUDA_CHECK_LAUNCH();
    return sync(g);  // api.c advances m->step to t
}

/* Uploads one batch's inputs for eval/logits, and with targets, the rows
 * whose target is not -1 and those targets (staging_ints' eval layout).
 * Returns the number of such rows. */
llmc_status stage_batch(cuda_state *g, const int32_t *inputs, const int32_t *targets, size_t N,
                        int *scored) {
    TRY(reserve_tokens(g, staging_ints(N, false), 2 * N));
    int *h = g->tokens_host;
    memcpy(h, inputs, N * sizeof(int));
    int M = 0;
    if (targets) {
        for (size_t r = 0; r < N; r++)
            if (targets[r] >= 0) h[N + M++] = (int)r;
        for (int i = 0; i < M; i++) h[N + M + i] = targets[h[N + i]];
    }
    CUDA_TRY(cudaMemcpyAsync(g->tokens, h, (N + 2 * (size_t)M) * sizeof(int),
                             cudaMemcpyHostToDevice, g->stream));
    if (scored) *scored = M;
    return LLMC_OK;
}

/* Classifier and loss only for the rows with a target: their final LayerNorm
 * outputs are gathered into dC (free once the forward is done), their losses
 * scattered back; the other rows' losses are 0. HellaSwag's batches are
 * mostly context and padding, whose logits would be wasted work. */
llmc_status cuda_eval(llmc_model *m, const int32_t *inputs, const int32_t *targets, int B, int T,
                      float *per_token_losses) {
    TRY(set_device(m));
    cuda_state *g = impl(m);
    const size_t N = (size_t)B * T;
    int M = 0;
    TRY(stage_batch(g, inputs, targets, N, &M));
    const int *rows = g->tokens + N, *row_targets = g->tokens + N + M;
    if (M == (int)N) {  // every row scored: no gather needed
        TRY(forward(g, g->tokens, B, T, false));
        TRY(classifier(g, g->lnf, row_targets, g->losses, M, 0.0f, false));
    } else {
        CUDA_TRY(cudaMemsetAsync(g->losses, 0, N * sizeof(float), g->stream));
        if (M > 0) {
            TRY(forward(g, g->tokens, B, T, false));
            gather_rows(g->dC, g->lnf, rows, M, g->C, g->stream);
            TRY(classifier(g, g->dC, row_targets, g->losses + N, M, 0.0f, false));
            scatter_floats(g->losses, g->losses + N, rows, M, g->stream);
            CUDA_CHECK_LAUNCH();
        }
    }
    CUDA_TRY(cudaMemcpyAsync(per_token_losses, g->losses, N * sizeof(float),
                             cudaMemcpyDeviceToHost, g->stream));
    CUDA_TRY(cudaStreamSynchronize(g->stream));
    return LLMC_OK;
}

llmc_status cuda_logits(llmc_model *m, const int32_t *inputs, int B, int T, int last_only,
                        float *out) {
    TRY(set_device(m));
    cuda_state *g = impl(m);
    const size_t N = (size_t)B * T;
    const int C = g->C;
    TRY(stage_batch(g, inputs, nullptr, N, nullptr));
    TRY(forward(g, g->tokens, B, T, false));
    /* fp32 logits in the bf16 chunk buffer: half as many rows at a time. */
    const int chunk = (int)std::max<size_t>(2, classifier_chunk(g)) / 2;
    const int rows_total = last_only ? B : (int)N;
    const int stride = last_only ? T * C : C;  // between consecutive rows of lnf
    const bf16 *first = g->lnf + (last_only ? (size_t)(T - 1) * C : 0);
    float *buf = (float *)g->logits;
    for (int r0 = 0; r0 < rows_total; r0 += chunk) {
        const int rows = std::min(chunk, rows_total - r0);
        TRY(matmul_forward_fp32(g->mm, buf, first + (size_t)r0 * stride, stride, P(g, g->head), rows,
                                C, g->Vp));
        CUDA_TRY(cudaMemcpy2DAsync(out + (size_t)r0 * g->V, g->V * sizeof(float), buf,
                                   g->Vp * sizeof(float), g->V * sizeof(float), rows,
                                   cudaMemcpyDeviceToHost, g->stream));
        CUDA_TRY(cudaStreamSynchronize(g->stream));  // buf is reused by the next chunk
    }
    return LLMC_OK;
}

/* Copies between the API's packed fp32 vector and a padded device array. */
llmc_status copy_params(cuda_state *g, const llmc_model *m, float *dev, const float *host_in,
                        float *host_out) {
    for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; i++) {
        const size_t bytes = g->size[i] * sizeof(float);
        if (host_in)
            CUDA_TRY(cudaMemcpyAsync(dev + g->off[i], host_in + m->param_offsets[i], bytes,
                                     cudaMemcpyHostToDevice, g->stream));
        else
            CUDA_TRY(cudaMemcpyAsync(host_out + m->param_offsets[i], dev + g->off[i], bytes,
                                     cudaMemcpyDeviceToHost, g->stream));
    }
    return sync(g);
}

/* ZeRO-1: this rank's shard of a whole fp32 vector (padded layout, in the
 * gradient memory) moves between `whole` and the shard array. */
llmc_status shard_to_whole(cuda_state *g, const float *shard_arr) {
    CUDA_TRY(cudaMemcpyAsync(g->grads + g->lo, shard_arr, g->shard * sizeof(float),
                             cudaMemcpyDeviceToDevice, g->stream));
    return nccl_allgather(g->comm, g->grads, g->shard, false, g->stream);
}
llmc_status whole_to_shard(cuda_state *g, float *shard_arr) {
    CUDA_TRY(cudaMemcpyAsync(shard_arr, g->grads + g->lo, g->shard * sizeof(float),
                             cudaMemcpyDeviceToDevice, g->stream));
    return sync(g);
}

/* bf16 weights from the masters with the rounding of the current step
 * (each rank rounds its shard and all-gathers them with ZeRO-1: the same
 * bits, since the random bits depend on the element's index only). */
llmc_status rederive_bf16(llmc_model *m) {
    cuda_state *g = impl(m);
    const uint32_t seed = rounding_seed(g->seed, m->step);
    if (!g->zero1) {
        for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; i++)
            if (g->params_of[i] && g->size[i])  // a launch of no blocks is an error (Llama's biases)
                round_params(g->params_of[i], g->master + g->off[i], g->size[i], seed, g->off[i],
                             g->stream);
    } else {
        if (g->lo < g->total)
            round_params(g->params + g->lo, g->master, std::min(g->shard, g->total - g->lo), seed,
                         g->lo, g->stream);
        TRY(nccl_allgather(g->comm, g->params, g->shard, true, g->stream));
    }
    quantize_weights(g, seed);
    CUDA_CHECK_LAUNCH();
    return sync(g);
}

/* Pieces of the fp32 masters; the bf16 copy follows in cuda_params_written.
 * With ZeRO-1 the whole vector is staged in the gradient memory (every rank
 * is given all of it) and each rank keeps its shard. */
llmc_status cuda_write_params(llmc_model *m, int tensor, size_t start, size_t count,
                              const float *src) {
    TRY(set_device(m));
    cuda_state *g = impl(m);
    float *dst = g->zero1 ? g->grads : g->master;
    CUDA_TRY(cudaMemcpyAsync(dst + g->off[tensor] + start, src, count * sizeof(float),
                             cudaMemcpyHostToDevice, g->stream));
    CUDA_TRY(cudaStreamSynchronize(g->stream)); /* src may be reused as soon as this returns */
    return LLMC_OK;
}

llmc_status cuda_params_written(llmc_model *m) {
    TRY(set_device(m));
    cuda_state *g = impl(m);
    if (!g->zero1) return rederive_bf16(m);
    const uint32_t seed = rounding_seed(g->seed, m->step);
    round_params(g->params, g->grads, g->total, seed, 0, g->stream);
    quantize_weights(g, seed);
    CUDA_CHECK_LAUNCH();
    return whole_to_shard(g, g->master);
}

llmc_status cuda_get_params(llmc_model *m, float *out) {
    TRY(set_device(m));
    cuda_state *g = impl(m);
    if (!g->zero1) return out ? copy_params(g, m, g->master, nullptr, out) : LLMC_OK;
    TRY(shard_to_whole(g, g->master));
    if (out) return copy_params(g, m, g->grads, nullptr, out);
    return sync(g);
}

llmc_status cuda_get_grads(llmc_model *m, float *out) {
    TRY(set_device(m));
    return copy_params(impl(m), m, impl(m)->grads, nullptr, out);
}

/* The moments arrive on rank 0 only (NULL elsewhere) in distributed mode. */
llmc_status cuda_set_opt_state(llmc_model *m, const float *mom1, const float *mom2) {
    TRY(set_device(m));
    cuda_state *g = impl(m);
    const float *host[2] = {mom1, mom2};
    float *dev[2] = {g->mom1, g->mom2};
    for (int k = 0; k < 2; k++) {
        float *dst = g->zero1 ? g->grads : dev[k];
        if (host[k]) TRY(copy_params(g, m, dst, host[k], nullptr));
        if (g->comm) TRY(nccl_broadcast(g->comm, dst, g->total, 0, g->stream));
        if (g->zero1) TRY(whole_to_shard(g, dev[k]));
    }
    return rederive_bf16(m);
}

/* Onto rank 0 (mom1/mom2 NULL elsewhere). */
llmc_status cuda_get_opt_state(llmc_model *m, float *mom1, float *mom2) {
    TRY(set_device(m));
    cuda_state *g = impl(m);
    float *host[2] = {mom1, mom2};
    const float *dev[2] = {g->mom1, g->mom2};
    for (int k = 0; k < 2; k++) {
        const float *src = dev[k];
        if (g->zero1) {
            TRY(shard_to_whole(g, dev[k]));
            src = g->grads;
        }
        if (host[k]) TRY(copy_params(g, m, const_cast<float *>(src), nullptr, host[k]));
        else TRY(sync(g));
    }
    return LLMC_OK;
}

/* The FP8 scaling state as saved: a flag (the scales have a history), then
 * every slot's scale, then every slot's history. Weight slots are saved too
 * (their scales are set from the weights again when the weights are). */
size_t cuda_scaling_floats(const llmc_model *m) {
    const cuda_state *g = impl(m);
    return g && g->fp8 ? 1 + (size_t)g->f8.slots() * (1 + FP8_HISTORY) : 0;
}

llmc_status cuda_get_scaling(llmc_model *m, float *out) {
    TRY(set_device(m));
    cuda_state *g = impl(m);
    const size_t n = g->f8.slots();
    TRY(sync(g));
    if (!out) return LLMC_OK;  // the state is the same on every rank
    out[0] = g->fp8_warm;
    CUDA_TRY(cudaMemcpy(out + 1, g->f8.scale, n * sizeof(float), cudaMemcpyDeviceToHost));
    CUDA_TRY(cudaMemcpy(out + 1 + n, g->f8.history, n * FP8_HISTORY * sizeof(float),
                        cudaMemcpyDeviceToHost));
    return LLMC_OK;
}

/* Each scale must be a power of two (a scale from fp8_set_scales). */
__global__ void check_scales_kernel(const float *scale, int n, int *bad) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        int e;
        if (!(scale[i] > 0.0f) || frexpf(scale[i], &e) != 0.5f) atomicMax(bad, i + 1);
    }
}

__global__ void descales_kernel(float *descale, const float *scale, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) descale[(size_t)i * FP8_DESCALE_STRIDE] = 1.0f / scale[i];
}

llmc_status cuda_set_scaling(llmc_model *m, const float *state, int present) {
    TRY(set_device(m));
    cuda_state *g = impl(m);
    const int n = g->f8.slots();
    if (!present) {
        fp8_reset(g->f8, g->stream);
        g->fp8_warm = false;
        quantize_weights(g, rounding_seed(g->seed, m->step));
        CUDA_CHECK_LAUNCH();
        return sync(g);
    }
    if (state) {
        g->fp8_warm = state[0] != 0.0f;
        CUDA_TRY(cudaMemcpyAsync(g->f8.scale, state + 1, n * sizeof(float), cudaMemcpyHostToDevice,
                                 g->stream));
        CUDA_TRY(cudaMemcpyAsync(g->f8.history, state + 1 + n, (size_t)n * FP8_HISTORY * sizeof(float),
                                 cudaMemcpyHostToDevice, g->stream));
    }
    if (g->comm) {
        double warm = g->fp8_warm;
        TRY(nccl_allreduce_host(g->comm, &warm, 1, LLMC_REDUCE_MAX, g->stream));
        g->fp8_warm = warm != 0.0;
        TRY(nccl_broadcast(g->comm, g->f8.scale, n, 0, g->stream));
        TRY(nccl_broadcast(g->comm, g->f8.history, (size_t)n * FP8_HISTORY, 0, g->stream));
    }
    int *bad = (int *)g->partial, found = 0;
    CUDA_TRY(cudaMemsetAsync(bad, 0, sizeof(int), g->stream));
    check_scales_kernel<<<ceil_div(n, 256), 256, 0, g->stream>>>(g->f8.scale, n, bad);
    CUDA_TRY(cudaMemcpyAsync(&found, bad, sizeof(int), cudaMemcpyDeviceToHost, g->stream));
    TRY(sync(g));
    if (found) {  // llmc_read_optimizer_file checked finiteness; this is the rest
        fp8_reset(g->f8, g->stream);
        g->fp8_warm = false;
        quantize_weights(g, rounding_seed(g->seed, m->step));
        CUDA_CHECK_LAUNCH();
        TRY(sync(g));
        return llmc_error(LLMC_ERR_FORMAT, "FP8 scaling state: scale %d is not a positive power of "
                          "two", found - 1);
    }
    descales_kernel<<<ceil_div(n, 256), 256, 0, g->stream>>>(g->f8.descale, g->f8.scale, n);
    CUDA_TRY(cudaMemsetAsync(g->f8.amax, 0, n * sizeof(float), g->stream));
    quantize_weights(g, rounding_seed(g->seed, m->step));
    CUDA_CHECK_LAUNCH();
    return sync(g);
}

size_t cuda_memory_bytes(const llmc_model *m) {
    const cuda_state *g = impl(m);
    return g ? g->bytes + mm_memory_bytes(g->mm) + attn_memory_bytes(g->attn) : 0;
}

}  // namespace

/* In w8_only mode generation reads bf16 block weights that training does
 * not keep: decode_w16 (the block weights one after the other), allocated on
 * the first call and kept with the model, rounded from the masters (as the
 * bf16 copy would have been) by every call, i.e. whenever a generator is made. */
llmc_status cuda_decode_round_weights(llmc_model *m) {
    TRY(set_device(m));
    cuda_state *g = impl(m);
    if (!g->w8_only) return LLMC_OK;
    size_t block_total = 0;
    for (int w : PRODUCT_WEIGHT) block_total += g->size[w];
    if (!g->decode_w16)
        TRY(alloc_n(g, &g->decode_w16, block_total, "bf16 block weights for generation"));
    const uint32_t seed = rounding_seed(g->seed, m->step);
    size_t at = 0;
    for (int w : PRODUCT_WEIGHT) {
        round_params(g->decode_w16 + at, g->master + g->off[w], g->size[w], seed, g->off[w],
                     g->stream);
        at += g->size[w];
    }
    CUDA_TRY(cudaGetLastError());
    return LLMC_OK;
}

llmc_status cuda_decode_weights(llmc_model *m, cuda_weights *out) {
    TRY(set_device(m));
    cuda_state *g = impl(m);
    out->stream = g->stream;
    out->mm = g->mm;
    size_t at = 0;  // w8_only: where each block weight lies in decode_w16
    for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; i++) {
        out->tensor[i] = P(g, i);
        out->layer_stride[i] = llmc_param_is_per_layer(i) ? g->size[i] / g->L : 0;
        if (!out->tensor[i]) {
            out->tensor[i] = g->decode_w16 + at;
            at += g->size[i];
        }
    }
    return LLMC_OK;
}

extern "C" {

LLMC_API extern const llmc_backend llmc_cuda_backend;
/* cuda_destroy and cuda_memory_bytes neither allocate nor throw */
const llmc_backend llmc_cuda_backend = {
    "cuda",
    guarded<cuda_create>::call,
    cuda_destroy,
    guarded<cuda_write_params>::call,
    guarded<cuda_params_written>::call,
    guarded<cuda_get_params>::call,
    guarded<cuda_get_grads>::call,
    guarded<cuda_set_opt_state>::call,
    guarded<cuda_get_opt_state>::call,
    guarded<cuda_backward>::call,
    guarded<cuda_grad_norm>::call,
    guarded<cuda_update>::call,
    guarded<cuda_eval>::call,
    guarded<cuda_logits>::call,
    cuda_memory_bytes,
    guarded<cuda_allreduce>::call,
    guarded<cuda_plan_bytes>::call,
    cuda_scaling_floats,
    guarded<cuda_get_scaling>::call,
    guarded<cuda_set_scaling>::call,
    &cuda_decode_ops,
};

/* Visible GPUs, 0 on any error (no driver, no device). */
LLMC_API int llmc_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

}  // extern "C"
