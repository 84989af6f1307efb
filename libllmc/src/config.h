/* config.h: model shapes, shared by the API layer and the file readers, and
 * every size limit of the library, stated here once. */
#ifndef LLMC_CONFIG_H
#define LLMC_CONFIG_H

#include "model.h"

/* Largest value of any one dimension (max_seq_len, vocab sizes, layers,
 * heads, channels): big enough for any GPT-2 class model. */
#define LLMC_DIM_LIMIT (1 << 24)
/* Parameters of a model: 2^38 floats = 1 TiB, beyond any host here. */
#define LLMC_PARAM_LIMIT ((uint64_t)1 << 38)
/* Tokens of one micro-batch (max_batch_size x max_seq_len); the kernels
 * count rows in int. */
#define LLMC_TOKEN_LIMIT (1 << 24)
/* Elements of any one activation tensor or operand: the CPU kernels and the
 * BLAS index them with int. */
#define LLMC_TENSOR_LIMIT ((uint64_t)INT32_MAX)
/* Optimizer steps: the count stays exact in a double (bias correction). */
#define LLMC_STEP_LIMIT ((int64_t)1 << 53)
/* Learning rate: 0 is allowed (schedules decay to it); the bound is far
 * above any useful rate (tests use 1e30 to force a divergence) yet keeps
 * lr times an update of up to 1e8 finite in float32 (max 3.4e38). */
#define LLMC_LR_LIMIT 1e30f

/* *out = a * b, or 0 when the product does not fit in size_t. */
static inline int llmc_mul(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}

/* Checks every field (and that the parameter count fits the limits); fills
 * a zero padded_vocab_size. source names the origin ("config", a file path)
 * in the error message, bad is the status returned on a bad field. */
llmc_status llmc_config_check(llmc_config *c, const char *source, llmc_status bad);

/* Checks that `bytes` more host memory can be had (available memory, the
 * cgroup's limit, RLIMIT_AS) before allocating it, so that a plan too big
 * for the machine is refused with LLMC_ERR_OUT_OF_MEMORY naming `what`
 * instead of the OS killing the process when the pages are touched. */
llmc_status llmc_host_memory_check(size_t bytes, const char *what);

/* Shapes of a checked config's blocks, for both families. */
static inline int llmc_is_llama(const llmc_config *c) { return c->family == LLMC_FAMILY_LLAMA; }
static inline int llmc_kv_heads(const llmc_config *c) {
    return llmc_is_llama(c) ? c->num_kv_heads : c->num_heads;
}
/* Columns of the fused q, k, v projection: 3C for GPT-2. */
static inline size_t llmc_qkv_width(const llmc_config *c) {
    return (size_t)(c->num_heads + 2 * llmc_kv_heads(c)) * (c->channels / c->num_heads);
}
/* Columns of the MLP's first projection (GPT-2 4C; Llama 2F: up, then gate)
 * and of its activation (4C; F). */
static inline size_t llmc_fc_width(const llmc_config *c) {
    return llmc_is_llama(c) ? 2 * (size_t)c->ffn_hidden : 4 * (size_t)c->channels;
}
static inline size_t llmc_fc_act_width(const llmc_config *c) {
    return llmc_is_llama(c) ? (size_t)c->ffn_hidden : 4 * (size_t)c->channels;
}

/* RoPE's inverse frequencies of a Llama config, head_size/2 floats, as
 * transformers computes them in fp32 (with Llama 3.1's scaling when set). */
void llmc_rope_inv_freq(const llmc_config *c, float *out);

/* GPT-2's initialisation of elements start..start+count-1 of parameter
 * tensor `tensor`, a pure function of the config, the seed and the
 * element's index (so it can be produced a piece at a time). */
void llmc_random_init(const llmc_model *m, int tensor, size_t start, size_t count, float *out);

#endif /* LLMC_CONFIG_H */
