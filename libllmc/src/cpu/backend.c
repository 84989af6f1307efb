/*
 * backend.c: the CPU fp32 backend: memory, the GPT-2 forward and backward
 * passes over the kernels of layers.h (Llama's are in llama.c), and the
 * optimizer step.
 *
 * Memory is planned from options.max_batch_size x options.max_seq_len and
 * allocated in tiers, as llm.c does, so that a model used only for
 * evaluation never pays for training state:
 *   - at create: the parameters and the activations of one block, reused by
 *     every block, which is all that eval and logits need;
 *   - at the first backward: the gradients, the activations of every block
 *     (kept for the backward pass) and one block's activation gradients;
 *   - at the first update (or optimizer-state load): the AdamW moments.
 * The classifier's logits exist for CLASSIFIER_CHUNK_ROWS rows at a time.
 *
 * Distributed mode (world_size >= 1): the gradients are summed across ranks
 * over MPI after the last micro-step. With ZeRO-1 each rank keeps the AdamW
 * moments of its shard of the parameter vector, updates that shard and
 * all-gathers the parameters, which are allocated padded to whole shards.
 *
 * Threads: each entry point sets the calling thread's OpenMP thread count to
 * options.num_threads (0 = every core) before any kernel runs.
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../comm.h"
#include "../config.h"
#include "../model.h"
#include "backend.h"
#include "decode.h"
#include "layers.h"

/* ---- distribution ---------------------------------------------------------- */

static int distributed(const llmc_model *m) { return m->options.world_size >= 1; }
static int sharded(const llmc_model *m) { return m->options.zero_stage == 1; }
static size_t shard_floats(const llmc_model *m) {
    return llmc_shard_size(m->num_params, m->options.world_size);
}
/* Floats of the parameter buffer: padded to whole shards in distributed mode. */
static size_t param_floats(const llmc_model *m) {
    return distributed(m) ? shard_floats(m) * m->options.world_size : m->num_params;
}
static size_t moment_floats(const llmc_model *m) {
    return sharded(m) ? shard_floats(m) : m->num_params;
}

static llmc_status cpu_allreduce(llmc_model *m, double *values, size_t n, llmc_reduce_op op) {
    const llmc_mpi_api *mpi = llmc_mpi();
    return mpi ? mpi->allreduce(values, n, LLMC_F64, op) : LLMC_ERR_UNSUPPORTED;
}

/* ---- memory ---------------------------------------------------------------- */

typedef struct {
    float **ptr;
    size_t count;
} buffer;

static size_t padded(size_t count) { return (count + 15) & ~(size_t)15; } /* 64 bytes */

/* Allocates the buffers in one block (zeroed if asked); LLMC_ERR_OUT_OF_MEMORY
 * naming `what` when the host has no room. */
static llmc_status arena_alloc(arena *a, buffer *bufs, int n, int zeroed, const char *what) {
    size_t total = 0; /* every count is bounded by cpu_create's plan check: no wrap */
    for (int i = 0; i < n; i++) total += padded(bufs[i].count);
    llmc_status st = llmc_host_memory_check(total * sizeof(float), what);
    if (st != LLMC_OK) return st;
    float *mem = aligned_alloc(64, (total ? total : 16) * sizeof(float));
    if (mem == NULL)
        return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory for the %s (%.2f GiB)", what,
                          (double)total * sizeof(float) / (1 << 30));
    if (zeroed) memset(mem, 0, total * sizeof(float));
    size_t offset = 0;
    for (int i = 0; i < n; i++) {
        *bufs[i].ptr = mem + offset;
        offset += padded(bufs[i].count);
    }
    a->mem = mem;
    a->bytes = total * sizeof(float);
    return LLMC_OK;
}

static void arena_free(arena *a) {
    free(a->mem);
    a->mem = NULL;
    a->bytes = 0;
}

/* Points tensors[i] at the i-th parameter tensor inside base. */
static void split_tensors(const llmc_model *m, float *base, float *tensors[LLMC_NUM_PARAM_TENSORS]) {
    for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; i++) tensors[i] = base + m->param_offsets[i];
}

/* Forward activations with `blocks` blocks stored; on failure the old ones stay. */
static llmc_status alloc_activations(llmc_model *m, int blocks) {
    cpu_state *s = m->impl;
    const llmc_config *c = &m->config;
    const size_t B = m->options.max_batch_size, T = m->options.max_seq_len, N = B * T;
    const size_t C = c->channels, NH = c->num_heads, V = c->vocab_size;
    const size_t QKV = llmc_qkv_width(c), FC = llmc_fc_width(c), ACT = llmc_fc_act_width(c);
    const size_t chunk_rows = N < CLASSIFIER_CHUNK_ROWS ? N : CLASSIFIER_CHUNK_ROWS;
    /* RMSNorm keeps no means; RoPE's table covers the planned positions */
    const size_t means = llmc_is_llama(c) ? 0 : N;
    const size_t rope = llmc_is_llama(c) ? T * (C / NH / 2) : 0;
    block_acts *ba = calloc(blocks, sizeof *ba);
    if (ba == NULL) return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory");
    float *ln1, *ln1_mean, *ln1_rstd, *qkv, *att, *atty, *res2, *ln2, *ln2_mean, *ln2_rstd, *fch,
        *fch_act, *res3;
    const size_t L = blocks;
    buffer bufs[] = {
        {&ln1, L * N * C},          {&ln1_mean, L * means}, {&ln1_rstd, L * N},
        {&qkv, L * N * QKV},        {&att, L * B * NH * T * T},
        {&atty, L * N * C},         {&res2, L * N * C},  {&ln2, L * N * C},
        {&ln2_mean, L * means},     {&ln2_rstd, L * N},  {&fch, L * N * FC},
        {&fch_act, L * N * ACT},    {&res3, L * N * C},
        {&s->encoded, N * C},       {&s->lnf, N * C},    {&s->lnf_mean, means},
        {&s->lnf_rstd, N},          {&s->losses, N},     {&s->logits, chunk_rows * V},
        {&s->head_rows, chunk_rows * C}, {&s->rope_cos, rope}, {&s->rope_sin, rope},
    };
    arena mem;
    /* the buffers above are written only if the allocation succeeds */
    llmc_status st = arena_alloc(&mem, bufs, sizeof bufs / sizeof bufs[0], 0, "activations");
    if (st != LLMC_OK) {
        free(ba);
        return st;
    }
    for (size_t l = 0; l < L; l++) {
        ba[l] = (block_acts){
            .ln1 = ln1 + l * N * C,         .ln1_mean = ln1_mean + l * means,
            .ln1_rstd = ln1_rstd + l * N,   .qkv = qkv + l * N * QKV,
            .att = att + l * B * NH * T * T, .atty = atty + l * N * C,
            .res2 = res2 + l * N * C,       .ln2 = ln2 + l * N * C,
            .ln2_mean = ln2_mean + l * means, .ln2_rstd = ln2_rstd + l * N,
            .fch = fch + l * N * FC,        .fch_act = fch_act + l * N * ACT,
            .res3 = res3 + l * N * C,
        };
    }
    if (rope) {
        float *inv_freq = malloc(C / NH / 2 * sizeof(float));
        if (inv_freq == NULL) {
            free(ba);
            free(mem.mem);
            return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory");
        }
        llmc_rope_inv_freq(c, inv_freq);
        rope_table(s->rope_cos, s->rope_sin, inv_freq, (int)T, (int)(C / NH / 2));
        free(inv_freq);
    }
    arena_free(&s->acts_mem);
    free(s->blocks);
    s->acts_mem = mem;
    s->blocks = ba;
    s->stored_blocks = blocks;
    return LLMC_OK;
}

/* Gradients, every block's activations and the activation gradients. */
static llmc_status ensure_training_state(llmc_model *m) {
    cpu_state *s = m->impl;
    if (s->grads_mem.mem) return LLMC_OK;
    const llmc_config *c = &m->config;
    const size_t N = (size_t)m->options.max_batch_size * m->options.max_seq_len;
    const size_t C = c->channels, T = m->options.max_seq_len;
    const size_t dact = llmc_is_llama(c) ? N * llmc_fc_act_width(c) : 0; /* GELU's is in place */
    float *grads = NULL;
    buffer bufs[] = {
        {&grads, m->num_params},   {&s->dres, N * C},     {&s->dln, N * C},
        {&s->datty, N * C},        {&s->dqkv, N * llmc_qkv_width(c)},
        {&s->dfch, N * llmc_fc_width(c)}, {&s->dact, dact},
        {&s->att_scratch, s->threads * attention_scratch_floats(T)},
    };
    llmc_status st = arena_alloc(&s->grads_mem, bufs, sizeof bufs / sizeof bufs[0], 0, "gradients");
    if (st != LLMC_OK) return st;
    split_tensors(m, grads, s->grad);
    if (s->stored_blocks < m->config.num_layers) {
        st = alloc_activations(m, m->config.num_layers);
        if (st != LLMC_OK) {
            arena_free(&s->grads_mem);
            return st;
        }
    }
    return LLMC_OK;
}

static llmc_status ensure_moments(llmc_model *m) {
    cpu_state *s = m->impl;
    if (s->moments_mem.mem) return LLMC_OK;
    buffer bufs[] = {{&s->mom1, moment_floats(m)}, {&s->mom2, moment_floats(m)}};
    return arena_alloc(&s->moments_mem, bufs, 2, 1, "AdamW moments");
}

static llmc_status cpu_alloc(llmc_model *m, int threads);
static void cpu_destroy(llmc_model *m);

/* Every tensor a kernel or the BLAS indexes with int must stay within
 * LLMC_TENSOR_LIMIT elements; checked before anything is allocated. */
static llmc_status check_tensor_limits(const llmc_model *m) {
    const double B = m->options.max_batch_size, T = m->options.max_seq_len, N = B * T;
    const double C = m->config.channels, NH = m->config.num_heads;
    const double chunk = N < CLASSIFIER_CHUNK_ROWS ? N : CLASSIFIER_CHUNK_ROWS;
    const double widest = (double)llmc_fc_width(&m->config) > (double)llmc_qkv_width(&m->config)
                              ? (double)llmc_fc_width(&m->config) : (double)llmc_qkv_width(&m->config);
    const struct { const char *name; double elements; } tensors[] = {
        {"(B*T, 4C) MLP activation", N * widest}, {"(B, NH, T, T) attention", B * NH * T * T},
        {"(rows, V) logits chunk", chunk * m->config.vocab_size}, {"(T, C) row stride", T * C},
        {"(Vp, C) token embedding", (double)m->config.padded_vocab_size * C},
    };
    for (size_t i = 0; i < sizeof tensors / sizeof tensors[0]; i++)
        if (tensors[i].elements > (double)LLMC_TENSOR_LIMIT)
            return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                              "the CPU backend's %s tensor would hold %.3g elements for "
                              "max_batch_size %d x max_seq_len %d, more than %llu",
                              tensors[i].name, tensors[i].elements, m->options.max_batch_size,
                              m->options.max_seq_len, (unsigned long long)LLMC_TENSOR_LIMIT);
    return LLMC_OK;
}

/* Floats of the whole training plan, in double: an upper bound for every
 * buffer size computed later, checked once so that none can wrap around. */
static double training_plan_floats(const llmc_model *m, int threads) {
    const llmc_config *c = &m->config;
    const double B = m->options.max_batch_size, T = m->options.max_seq_len, N = B * T;
    const double C = c->channels, NH = c->num_heads, L = c->num_layers;
    const double QKV = (double)llmc_qkv_width(c), FC = (double)llmc_fc_width(c);
    const double ACT = (double)llmc_fc_act_width(c), dact = llmc_is_llama(c) ? ACT : 0.0;
    /* GPT-2: 16C + 4 floats per row (Llama's RMSNorm keeps no means: an
     * upper bound), and the RoPE table */
    const double per_block = N * (5 * C + QKV + FC + ACT + 4) + B * NH * T * T;
    const double others = N * (3 * C + 3) + CLASSIFIER_CHUNK_ROWS * ((double)c->vocab_size + C) +
                          (llmc_is_llama(c) ? T * C / NH : 0.0);
    const double grads = N * (3 * C + QKV + FC + dact) + threads * (T * T + 16);
    return (double)param_floats(m) + m->num_params + 2.0 * moment_floats(m) + L * per_block +
           others + grads + 1024.0 * 16;
}

static int cpu_threads(const llmc_model *m) {
    return m->options.num_threads > 0 ? m->options.num_threads : omp_get_num_procs();
}

/* The floats a model trained with `threads` threads holds, or an error when
 * its tensors or that total are beyond what can be addressed. */
static llmc_status check_plan(const llmc_model *m, int threads, double *floats) {
    llmc_status st = check_tensor_limits(m);
    if (st != LLMC_OK) return st;
    *floats = training_plan_floats(m, threads);
    if (*floats * sizeof(float) > 0x1p60)
        return llmc_error(LLMC_ERR_OUT_OF_MEMORY,
                          "max_batch_size %d x max_seq_len %d would need %.3g GiB of host memory",
                          m->options.max_batch_size, m->options.max_seq_len,
                          *floats * sizeof(float) / (1 << 30));
    return LLMC_OK;
}

static llmc_status cpu_plan_bytes(const llmc_model *m, size_t *bytes) {
    double floats;
    llmc_status st = check_plan(m, cpu_threads(m), &floats);
    if (st == LLMC_OK) *bytes = (size_t)(floats * sizeof(float));
    return st;
}

static llmc_status cpu_create(llmc_model *m) {
    const int threads = cpu_threads(m);
    if (distributed(m)) {
        const llmc_mpi_api *mpi = llmc_mpi();
        if (mpi == NULL) return LLMC_ERR_UNSUPPORTED;
        llmc_status st = mpi->init(m->options.rank, m->options.world_size);
        if (st != LLMC_OK) return st;
    }
    llmc_status st = llmc_agree(m, cpu_alloc(m, threads));
    if (st != LLMC_OK) cpu_destroy(m);
    return st;
}

static llmc_status cpu_alloc(llmc_model *m, int threads) {
    double plan;
    llmc_status st = check_plan(m, threads, &plan);
    if (st != LLMC_OK) return st;
    cpu_state *s = calloc(1, sizeof *s);
    if (s == NULL) return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory");
    m->impl = s;
    s->threads = threads;
    cpu_blas_init();
    float *params = NULL;
    buffer bufs[] = {{&params, param_floats(m)}};
    st = arena_alloc(&s->params_mem, bufs, 1, 0, "parameters");
    if (st == LLMC_OK) st = alloc_activations(m, 1);
    if (st != LLMC_OK) {
        arena_free(&s->params_mem);
        free(s);
        m->impl = NULL;
        return st;
    }
    split_tensors(m, params, s->param);
    return LLMC_OK;
}

static void cpu_destroy(llmc_model *m) {
    cpu_state *s = m->impl;
    if (s == NULL) return;
    arena_free(&s->params_mem);
    arena_free(&s->acts_mem);
    arena_free(&s->grads_mem);
    arena_free(&s->moments_mem);
    free(s->blocks);
    free(s);
    m->impl = NULL;
}

static size_t cpu_memory_bytes(const llmc_model *m) {
    const cpu_state *s = m->impl;
    return s->params_mem.bytes + s->acts_mem.bytes + s->grads_mem.bytes + s->moments_mem.bytes;
}

/* Every entry point starts here. */
static cpu_state *enter(llmc_model *m) {
    cpu_state *s = m->impl;
    omp_set_num_threads(s->threads);
    return s;
}

float *const *cpu_decode_params(llmc_model *m, int *threads) {
    cpu_state *s = enter(m);
    *threads = s->threads;
    return s->param;
}

/* ---- parameters and optimizer state ------------------------------------------ */

static llmc_status cpu_write_params(llmc_model *m, int tensor, size_t start, size_t count,
                                    const float *src) {
    cpu_state *s = enter(m);
    memcpy(s->param[tensor] + start, src, count * sizeof(float));
    return LLMC_OK;
}

static llmc_status cpu_params_written(llmc_model *m) { return LLMC_OK; }

static llmc_status cpu_get_params(llmc_model *m, float *out) {
    cpu_state *s = enter(m);
    if (out) memcpy(out, s->params_mem.mem, m->num_params * sizeof(float));
    return LLMC_OK;
}

static llmc_status cpu_get_grads(llmc_model *m, float *out) {
    cpu_state *s = enter(m);
    if (s->grads_mem.mem) memcpy(out, s->grad[0], m->num_params * sizeof(float));
    else memset(out, 0, m->num_params * sizeof(float));
    return LLMC_OK;
}

/* Rank 0's buffer of world_size whole shards, for a scatter or a gather
 * (NULL elsewhere); every rank learns whether rank 0 got it. */
static llmc_status root_shards_buffer(llmc_model *m, float **whole) {
    const int root = m->options.rank == 0;
    *whole = root ? calloc(shard_floats(m) * m->options.world_size, sizeof(float)) : NULL;
    return llmc_agree(m, root && !*whole ? llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory")
                                        : LLMC_OK);
}

/* Rank 0's moments (NULL elsewhere) to every rank: whole, or its shard. */
static llmc_status cpu_set_opt_state(llmc_model *m, const float *mom1, const float *mom2) {
    cpu_state *s = enter(m);
    llmc_status st = ensure_moments(m);
    if (st != LLMC_OK) return st;
    const float *src[2] = {mom1, mom2};
    float *dst[2] = {s->mom1, s->mom2};
    if (!sharded(m)) {
        for (int k = 0; k < 2 && st == LLMC_OK; k++) {
            if (src[k]) memcpy(dst[k], src[k], m->num_params * sizeof(float));
            if (distributed(m)) st = llmc_mpi()->bcast(dst[k], m->num_params * sizeof(float), 0);
        }
        return st;
    }
    float *whole; /* the scatter reads whole shards: rank 0 pads a copy */
    if ((st = root_shards_buffer(m, &whole)) != LLMC_OK) return st;
    for (int k = 0; k < 2 && st == LLMC_OK; k++) {
        if (whole) memcpy(whole, src[k], m->num_params * sizeof(float));
        st = llmc_mpi()->scatter(whole, dst[k], shard_floats(m), 0);
    }
    free(whole);
    return st;
}

/* Every rank's moments onto rank 0 (mom1/mom2 NULL elsewhere). */
static llmc_status cpu_get_opt_state(llmc_model *m, float *mom1, float *mom2) {
    cpu_state *s = enter(m);
    float *out[2] = {mom1, mom2};
    if (!sharded(m)) {
        if (out[0] == NULL) return LLMC_OK;
        for (int k = 0; k < 2; k++) {
            if (s->moments_mem.mem) memcpy(out[k], k ? s->mom2 : s->mom1, m->num_params * sizeof(float));
            else memset(out[k], 0, m->num_params * sizeof(float)); /* no update yet */
        }
        return LLMC_OK;
    }
    float *whole;
    llmc_status st = llmc_agree(m, ensure_moments(m)); /* zero before the first update */
    if (st == LLMC_OK) st = root_shards_buffer(m, &whole);
    if (st != LLMC_OK) return st;
    for (int k = 0; k < 2 && st == LLMC_OK; k++) {
        st = llmc_mpi()->gather(k ? s->mom2 : s->mom1, whole, shard_floats(m), 0);
        if (st == LLMC_OK && whole) memcpy(out[k], whole, m->num_params * sizeof(float));
    }
    free(whole);
    return st;
}

/* ---- forward and backward ------------------------------------------------------- */

/* GPT-2 up to the final LayerNorm (s->lnf), for B x T tokens. */
static void gpt2_forward(llmc_model *m, const int32_t *tokens, int B, int T) {
    cpu_state *s = m->impl;
    const int L = m->config.num_layers, C = m->config.channels, NH = m->config.num_heads;
    const int N = B * T;
    float **p = s->param;
    encoder_forward(s->encoded, tokens, p[P_WTE], p[P_WPE], B, T, C);
    for (int l = 0; l < L; l++) {
        const block_acts *a = block_at(s, l);
        /* with one stored block, the input is a->res3 of the block before:
         * consumed by ln1 and the attention residual before res3 is rewritten */
        const float *x = block_input(s, l);
        const size_t lC = (size_t)l * C;
        layernorm_forward(a->ln1, a->ln1_mean, a->ln1_rstd, x, p[P_LN1W] + lC, p[P_LN1B] + lC, N, C);
        matmul_forward(a->qkv, a->ln1, p[P_QKVW] + lC * 3 * C, p[P_QKVB] + 3 * lC, NULL, N, C, 3 * C);
        attention_forward(a->atty, a->att, a->qkv, B, T, C, NH, NH);
        matmul_forward(a->res2, a->atty, p[P_ATTPROJW] + lC * C, p[P_ATTPROJB] + lC, x, N, C, C);
        layernorm_forward(a->ln2, a->ln2_mean, a->ln2_rstd, a->res2, p[P_LN2W] + lC, p[P_LN2B] + lC,
                          N, C);
        matmul_forward(a->fch, a->ln2, p[P_FCW] + lC * 4 * C, p[P_FCB] + 4 * lC, NULL, N, C, 4 * C);
        gelu_forward(a->fch_act, a->fch, (size_t)N * 4 * C);
        matmul_forward(a->res3, a->fch_act, p[P_FCPROJW] + lC * 4 * C, p[P_FCPROJB] + lC, a->res2,
                       N, 4 * C, C);
    }
    layernorm_forward(s->lnf, s->lnf_mean, s->lnf_rstd, block_input(s, L), p[P_LNFW], p[P_LNFB], N, C);
}

/* GPT-2's backward of one micro-batch, gradients accumulating; returns the loss sum. */
static double gpt2_backward_micro(llmc_model *m, const int32_t *tokens, const int32_t *targets,
                                  int B, int T, float dloss) {
    cpu_state *s = m->impl;
    const int L = m->config.num_layers, C = m->config.channels, NH = m->config.num_heads;
    const int N = B * T, V = m->config.vocab_size;
    float **p = s->param, **g = s->grad;
    gpt2_forward(m, tokens, B, T);
    /* the LM head's input gradient goes to dln, its weight gradient into wte's */
    classifier_forward_backward(s->losses, s->dln, g[P_WTE], s->logits, s->lnf, p[P_WTE], targets,
                                N, C, V, dloss);
    double loss_sum = 0.0;
    for (int i = 0; i < N; i++) loss_sum += s->losses[i];

    /* dres is the gradient of the residual stream, carried down the blocks */
    memset(s->dres, 0, (size_t)N * C * sizeof(float));
    layernorm_backward(s->dres, g[P_LNFW], g[P_LNFB], s->dln, block_input(s, L), p[P_LNFW],
                       s->lnf_mean, s->lnf_rstd, N, C);
    for (int l = L - 1; l >= 0; l--) {
        const block_acts *a = block_at(s, l);
        const size_t lC = (size_t)l * C;
        /* res3 = res2 + fcproj(gelu(fc(ln2(res2)))) */
        matmul_backward(s->dfch, g[P_FCPROJW] + lC * 4 * C, g[P_FCPROJB] + lC, s->dres, a->fch_act,
                        p[P_FCPROJW] + lC * 4 * C, N, 4 * C, C);
        gelu_backward(s->dfch, a->fch, s->dfch, (size_t)N * 4 * C);
        matmul_backward(s->dln, g[P_FCW] + lC * 4 * C, g[P_FCB] + 4 * lC, s->dfch, a->ln2,
                        p[P_FCW] + lC * 4 * C, N, C, 4 * C);
        layernorm_backward(s->dres, g[P_LN2W] + lC, g[P_LN2B] + lC, s->dln, a->res2, p[P_LN2W] + lC,
                           a->ln2_mean, a->ln2_rstd, N, C);
        /* res2 = x + attproj(attention(qkv(ln1(x)))) */
        matmul_backward(s->datty, g[P_ATTPROJW] + lC * C, g[P_ATTPROJB] + lC, s->dres, a->atty,
                        p[P_ATTPROJW] + lC * C, N, C, C);
        attention_backward(s->dqkv, s->att_scratch, s->datty, a->qkv, a->att, B, T, C, NH, NH);
        matmul_backward(s->dln, g[P_QKVW] + lC * 3 * C, g[P_QKVB] + 3 * lC, s->dqkv, a->ln1,
                        p[P_QKVW] + lC * 3 * C, N, C, 3 * C);
        layernorm_backward(s->dres, g[P_LN1W] + lC, g[P_LN1B] + lC, s->dln, block_input(s, l),
                           p[P_LN1W] + lC, a->ln1_mean, a->ln1_rstd, N, C);
    }
    encoder_backward(g[P_WTE], g[P_WPE], s->dres, tokens, B, T, C);
    return loss_sum;
}

/* The family's composition: up to the final norm (s->lnf) ... */
static void forward(llmc_model *m, const int32_t *tokens, int B, int T) {
    if (llmc_is_llama(&m->config)) llama_forward(m, tokens, B, T);
    else gpt2_forward(m, tokens, B, T);
}

/* ... and one micro-batch's forward and backward. */
static double backward_micro(llmc_model *m, const int32_t *tokens, const int32_t *targets, int B,
                             int T, float dloss) {
    return llmc_is_llama(&m->config) ? llama_backward_micro(m, tokens, targets, B, T, dloss)
                                     : gpt2_backward_micro(m, tokens, targets, B, T, dloss);
}

static llmc_status cpu_backward(llmc_model *m, const int32_t *inputs, const int32_t *targets,
                                int micro_steps, int B, int T, float loss_scale, double *loss_sum) {
    cpu_state *s = enter(m);
    llmc_status st = ensure_training_state(m);
    if (st != LLMC_OK) return st;
    memset(s->grad[0], 0, m->num_params * sizeof(float));
    double sum = 0.0;
    const size_t tokens = (size_t)B * T;
    for (int i = 0; i < micro_steps; i++)
        sum += backward_micro(m, inputs + i * tokens, targets + i * tokens, B, T, loss_scale);
    *loss_sum = sum;
    if (distributed(m)) return llmc_mpi()->allreduce(s->grad[0], m->num_params, LLMC_F32, LLMC_REDUCE_SUM);
    return LLMC_OK;
}

static llmc_status cpu_grad_norm(llmc_model *m, float *norm) {
    cpu_state *s = enter(m);
    *norm = s->grads_mem.mem ? (float)sqrt(sum_squares(s->grad[0], m->num_params)) : 0.0f;
    return LLMC_OK;
}

static llmc_status cpu_update(llmc_model *m, const llmc_adamw *hp, float grad_scale, int64_t t) {
    cpu_state *s = enter(m);
    llmc_status st = ensure_moments(m);
    if (st != LLMC_OK) return st;
    if (s->grads_mem.mem == NULL)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "update without gradients");
    /* [lo, hi): the part of the parameter vector this rank updates */
    const size_t lo = sharded(m) ? m->options.rank * shard_floats(m) : 0;
    const size_t hi = sharded(m) ? lo + shard_floats(m) : m->num_params;
    for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; i++) {
        const size_t off = m->param_offsets[i], end = off + m->param_sizes[i];
        const size_t a = off > lo ? off : lo, b = end < hi ? end : hi;
        if (a >= b) continue;
        adamw_update(s->param[0] + a, s->grad[0] + a, s->mom1 + (a - lo), s->mom2 + (a - lo), b - a,
                     hp->lr, hp->beta1, hp->beta2, hp->eps,
                     llmc_param_is_decayed(i) ? hp->weight_decay : 0.0f, grad_scale, t);
    }
    return sharded(m) ? llmc_mpi()->allgather(s->param[0], shard_floats(m)) : LLMC_OK;
}

static llmc_status cpu_eval(llmc_model *m, const int32_t *inputs, const int32_t *targets, int B,
                            int T, float *per_token_losses) {
    cpu_state *s = enter(m);
    forward(m, inputs, B, T);
    classifier_losses(per_token_losses, s->logits, s->head_rows, s->lnf,
                      s->param[llmc_head_tensor(&m->config)], targets, B * T, m->config.channels,
                      m->config.vocab_size);
    return LLMC_OK;
}

static llmc_status cpu_logits(llmc_model *m, const int32_t *inputs, int B, int T, int last_only,
                              float *out) {
    cpu_state *s = enter(m);
    const int C = m->config.channels, V = m->config.vocab_size;
    const float *head = s->param[llmc_head_tensor(&m->config)];
    forward(m, inputs, B, T);
    if (last_only) /* row T-1 of each sequence: a stride of T rows */
        gemm(0, 1, B, V, C, 1.0f, s->lnf + (size_t)(T - 1) * C, T * C, head, C, 0.0f, out, V);
    else
        gemm(0, 1, B * T, V, C, 1.0f, s->lnf, C, head, C, 0.0f, out, V);
    return LLMC_OK;
}

const llmc_backend llmc_cpu_backend = {
    .name = "cpu",
    .create = cpu_create,
    .destroy = cpu_destroy,
    .write_params = cpu_write_params,
    .params_written = cpu_params_written,
    .get_params = cpu_get_params,
    .get_grads = cpu_get_grads,
    .set_opt_state = cpu_set_opt_state,
    .get_opt_state = cpu_get_opt_state,
    .backward = cpu_backward,
    .grad_norm = cpu_grad_norm,
    .update = cpu_update,
    .eval = cpu_eval,
    .logits = cpu_logits,
    .memory_bytes = cpu_memory_bytes,
    .allreduce = cpu_allreduce,
    .plan_bytes = cpu_plan_bytes,
    .decode = &cpu_decode_ops,
};
