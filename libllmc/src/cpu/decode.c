/*
 * decode.c: the CPU backend's generation: the key/value cache and the
 * forward pass of rows that are single tokens of cached sequences (prompt
 * tokens being prefilled, or each live sequence's newest token), one
 * composition per model family. fp32, the same kernels as training, so a
 * row's logits match llmc_logits over the whole prefix to rounding.
 *
 * Memory, planned and checked at creation: every layer's keys and values
 * for S slots of T positions, the activations of R rows (one layer at a
 * time, as eval's forward) and, for Llama, RoPE's table of T positions.
 */
#include <stdlib.h>
#include <string.h>

#include "../config.h"
#include "decode.h"
#include "layers.h"

typedef struct {
    int S, T, R, threads;
    float *mem;
    size_t bytes;
    float *keys, *values;      /* (L, S, NKV, T, hs) each */
    float *x;                  /* (R, C) residual stream */
    float *ln, *mean, *rstd;   /* (R, C), (R), (R); RMSNorm: no mean */
    float *qkv;                /* (R, (NH + 2 NKV) hs) */
    float *atty;               /* (R, C) */
    float *fch, *fch_act;      /* (R, 4C) GELU's input and output; Llama (R, 2F), (R, F) */
    float *scores;             /* T per thread */
    float *rope_cos, *rope_sin; /* Llama: (T, hs/2) */
} cpu_cache;

/* The buffers in allocation order: sizes in floats, each padded to 64 bytes. */
#define CACHE_BUFFERS 13
static void cache_sizes(const llmc_model *m, int S, int T, int R, int threads,
                        double sizes[CACHE_BUFFERS]) {
    const llmc_config *c = &m->config;
    const double L = c->num_layers, C = c->channels, hs = C / c->num_heads;
    const double kv = L * S * (double)T * llmc_kv_heads(c) * hs;
    const double QKV = llmc_qkv_width(c), FC = llmc_fc_width(c), ACT = llmc_fc_act_width(c);
    const double rope = llmc_is_llama(c) ? (double)T * (hs / 2) : 0.0;
    const double rows[] = {kv,      kv,     R * C,  R * C, R, R, R * QKV, R * C, R * FC, R * ACT,
                           (double)threads * T, rope, rope};
    for (int i = 0; i < CACHE_BUFFERS; i++) sizes[i] = rows[i];
}

static double padded_floats(double n) { return n + 16; }

static int cache_threads(llmc_model *m) {
    int threads;
    cpu_decode_params(m, &threads);
    return threads;
}

static llmc_status check_cache(const llmc_model *m, int S, int T, int R, int threads,
                               double *floats) {
    *floats = 0.0;
    double sizes[CACHE_BUFFERS];
    cache_sizes(m, S, T, R, threads, sizes);
    const double V = m->config.vocab_size, FC = llmc_fc_width(&m->config);
    const struct { const char *name; double elements; } limits[] = {
        {"(rows, MLP width) activation", R * FC}, {"(sequences, V) logits", S * V},
    };
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++)
        if (limits[i].elements > (double)LLMC_TENSOR_LIMIT)
            return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                              "the CPU backend's %s tensor would hold %.3g elements for %d "
                              "sequences, more than %llu", limits[i].name, limits[i].elements, S,
                              (unsigned long long)LLMC_TENSOR_LIMIT);
    for (int i = 0; i < CACHE_BUFFERS; i++) *floats += padded_floats(sizes[i]);
    if (*floats * sizeof(float) > 0x1p60)
        return llmc_error(LLMC_ERR_OUT_OF_MEMORY,
                          "a key/value cache of %d sequences x %d positions would need %.3g GiB",
                          S, T, *floats * sizeof(float) / (1 << 30));
    return LLMC_OK;
}

static llmc_status cpu_cache_plan_bytes(const llmc_model *m, int S, int T, int R, size_t *bytes) {
    double floats;
    llmc_status st = check_cache(m, S, T, R, cache_threads((llmc_model *)m), &floats);
    if (st == LLMC_OK) *bytes = (size_t)(floats * sizeof(float));
    return st;
}

static llmc_status cpu_cache_create(llmc_model *m, int S, int T, int R, void **out) {
    const int threads = cache_threads(m);
    double floats;
    llmc_status st = check_cache(m, S, T, R, threads, &floats);
    if (st != LLMC_OK) return st;
    const size_t bytes = (size_t)floats * sizeof(float);
    if ((st = llmc_host_memory_check(bytes, "key/value cache")) != LLMC_OK) return st;
    cpu_cache *c = calloc(1, sizeof *c);
    float *mem = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (c == NULL || mem == NULL) {
        free(c);
        free(mem);
        return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory for the key/value cache "
                          "(%.2f GiB)", (double)bytes / (1 << 30));
    }
    *c = (cpu_cache){.S = S, .T = T, .R = R, .threads = threads, .mem = mem, .bytes = bytes};
    float **bufs[CACHE_BUFFERS] = {&c->keys,  &c->values, &c->x,     &c->ln,       &c->mean,
                                   &c->rstd,  &c->qkv,    &c->atty,  &c->fch,      &c->fch_act,
                                   &c->scores, &c->rope_cos, &c->rope_sin};
    double sizes[CACHE_BUFFERS];
    cache_sizes(m, S, T, R, threads, sizes);
    size_t offset = 0;
    for (int i = 0; i < CACHE_BUFFERS; i++) {
        *bufs[i] = mem + offset;
        offset += (size_t)padded_floats(sizes[i]);
    }
    if (llmc_is_llama(&m->config)) {
        const int half = m->config.channels / m->config.num_heads / 2;
        float *inv_freq = c->ln; /* C >= hs/2 floats, free until the first forward */
        llmc_rope_inv_freq(&m->config, inv_freq);
        rope_table(c->rope_cos, c->rope_sin, inv_freq, T, half);
    }
    *out = c;
    return LLMC_OK;
}

static void cpu_cache_destroy(llmc_model *m, void *cache) {
    cpu_cache *c = cache;
    if (c == NULL) return;
    free(c->mem);
    free(c);
}

/* out (n, OC) = residual + inp (n, C) @ weight^T + bias (both may be NULL;
 * residual may be out): a decode step of a few sequences reads each weight
 * once, without the BLAS. */
static void linear(float *out, const float *inp, const float *weight, const float *bias,
                   const float *residual, int n, int C, int OC) {
    if (n <= MATMUL_FEW_ROWS) matmul_forward_few(out, inp, weight, bias, residual, n, C, OC);
    else matmul_forward(out, inp, weight, bias, residual, n, C, OC);
}

/* The rows out_rows[0..n_out) of the last block's output gathered into
 * c->atty (free by then), for the final norm and the LM head. */
static void gather_out_rows(cpu_cache *c, int C, int n_out, const int32_t *out_rows) {
    for (int j = 0; j < n_out; j++)
        memcpy(c->atty + (size_t)j * C, c->x + (size_t)out_rows[j] * C, C * sizeof(float));
}

/* GPT-2: learned positions, pre-LayerNorm blocks, tied LM head. */
static void gpt2_decode_forward(llmc_model *m, cpu_cache *c, float *const *p, int n,
                                const int32_t *slot, const int32_t *pos, const int32_t *tokens,
                                int n_out, const int32_t *out_rows, float *logits) {
    const int L = m->config.num_layers, C = m->config.channels, NH = m->config.num_heads;
    const int V = m->config.vocab_size;
    const size_t layer_kv = (size_t)c->S * c->T * C;
    for (int i = 0; i < n; i++) {
        const float *te = p[P_WTE] + (size_t)tokens[i] * C, *pe = p[P_WPE] + (size_t)pos[i] * C;
        float *x = c->x + (size_t)i * C;
        for (int k = 0; k < C; k++) x[k] = te[k] + pe[k];
    }
    for (int l = 0; l < L; l++) {
        const size_t lC = (size_t)l * C;
        float *keys = c->keys + l * layer_kv, *values = c->values + l * layer_kv;
        layernorm_forward(c->ln, c->mean, c->rstd, c->x, p[P_LN1W] + lC, p[P_LN1B] + lC, n, C);
        linear(c->qkv, c->ln, p[P_QKVW] + lC * 3 * C, p[P_QKVB] + 3 * lC, NULL, n, C, 3 * C);
        kv_store(keys, values, c->qkv, slot, pos, n, C, NH, NH, c->T);
        attention_cached(c->atty, c->scores, c->qkv, keys, values, slot, pos, n, C, NH, NH, c->T);
        linear(c->x, c->atty, p[P_ATTPROJW] + lC * C, p[P_ATTPROJB] + lC, c->x, n, C, C);
        layernorm_forward(c->ln, c->mean, c->rstd, c->x, p[P_LN2W] + lC, p[P_LN2B] + lC, n, C);
        linear(c->fch, c->ln, p[P_FCW] + lC * 4 * C, p[P_FCB] + 4 * lC, NULL, n, C, 4 * C);
        gelu_forward(c->fch_act, c->fch, (size_t)n * 4 * C);
        linear(c->x, c->fch_act, p[P_FCPROJW] + lC * 4 * C, p[P_FCPROJB] + lC, c->x, n, 4 * C, C);
    }
    /* the final LayerNorm and the LM head for the rows asked for only */
    if (n_out == 0) return;
    gather_out_rows(c, C, n_out, out_rows);
    layernorm_forward(c->ln, c->mean, c->rstd, c->atty, p[P_LNFW], p[P_LNFB], n_out, C);
    linear(logits, c->ln, p[P_WTE], NULL, NULL, n_out, C, V);
}

/* Llama: RMSNorm, RoPE on the new rows' q and k at their positions before
 * the keys enter the cache, grouped-query attention, SwiGLU, an output
 * layer or (tied) wte as the head. */
static void llama_decode_forward(llmc_model *m, cpu_cache *c, float *const *p, int n,
                                 const int32_t *slot, const int32_t *pos, const int32_t *tokens,
                                 int n_out, const int32_t *out_rows, float *logits) {
    const llmc_config *cf = &m->config;
    const int L = cf->num_layers, C = cf->channels, NH = cf->num_heads, NKV = cf->num_kv_heads;
    const int V = cf->vocab_size, F = cf->ffn_hidden, QKV = (int)llmc_qkv_width(cf);
    const int hs = C / NH;
    const float eps = cf->norm_eps;
    const size_t layer_kv = (size_t)c->S * c->T * NKV * hs;
    for (int i = 0; i < n; i++)
        memcpy(c->x + (size_t)i * C, p[P_WTE] + (size_t)tokens[i] * C, C * sizeof(float));
    for (int l = 0; l < L; l++) {
        const size_t lC = (size_t)l * C;
        float *keys = c->keys + l * layer_kv, *values = c->values + l * layer_kv;
        rmsnorm_forward(c->ln, c->rstd, c->x, p[P_LN1W] + lC, n, C, eps);
        linear(c->qkv, c->ln, p[P_QKVW] + lC * QKV, NULL, NULL, n, C, QKV);
        rope_rotate_at(c->qkv, c->rope_cos, c->rope_sin, pos, n, NH, NKV, hs);
        kv_store(keys, values, c->qkv, slot, pos, n, C, NH, NKV, c->T);
        attention_cached(c->atty, c->scores, c->qkv, keys, values, slot, pos, n, C, NH, NKV, c->T);
        linear(c->x, c->atty, p[P_ATTPROJW] + lC * C, NULL, c->x, n, C, C);
        rmsnorm_forward(c->ln, c->rstd, c->x, p[P_LN2W] + lC, n, C, eps);
        linear(c->fch, c->ln, p[P_FCW] + lC * 2 * F, NULL, NULL, n, C, 2 * F);
        swiglu_forward(c->fch_act, c->fch, n, F);
        linear(c->x, c->fch_act, p[P_FCPROJW] + lC * F, NULL, c->x, n, F, C);
    }
    if (n_out == 0) return;
    gather_out_rows(c, C, n_out, out_rows);
    rmsnorm_forward(c->ln, c->rstd, c->atty, p[P_LNFW], n_out, C, eps);
    linear(logits, c->ln, p[llmc_head_tensor(cf)], NULL, NULL, n_out, C, V);
}

static llmc_status cpu_cache_forward(llmc_model *m, void *cache, int n, const int32_t *slot,
                                     const int32_t *pos, const int32_t *tokens, int n_out,
                                     const int32_t *out_rows, float *logits) {
    int threads;
    float *const *p = cpu_decode_params(m, &threads);
    if (llmc_is_llama(&m->config))
        llama_decode_forward(m, cache, p, n, slot, pos, tokens, n_out, out_rows, logits);
    else
        gpt2_decode_forward(m, cache, p, n, slot, pos, tokens, n_out, out_rows, logits);
    return LLMC_OK;
}

const llmc_decode_ops cpu_decode_ops = {
    .plan_bytes = cpu_cache_plan_bytes,
    .create = cpu_cache_create,
    .destroy = cpu_cache_destroy,
    .forward = cpu_cache_forward,
};
