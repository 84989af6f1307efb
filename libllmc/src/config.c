/* config.c: model shapes: presets, validation, the parameter layout and
 * GPT-2's random initialisation. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "config.h"

llmc_status llmc_config_preset(const char *name, llmc_config *out) {
    static const struct { const char *name; int layers, heads, channels; } presets[] = {
        {"d12", 12, 12, 768},   /* GPT-2 124M */
        {"d24", 24, 16, 1024},  /* GPT-2 350M */
        {"d36", 36, 20, 1280},  /* GPT-2 774M */
        {"d48", 48, 25, 1600},  /* GPT-2 1558M */
    };
    if (name == NULL || out == NULL)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_config_preset: NULL argument");
    for (size_t i = 0; i < sizeof(presets) / sizeof(presets[0]); i++) {
        if (strcmp(name, presets[i].name) == 0) {
            out->max_seq_len = 1024;
            out->vocab_size = 50257;
            out->padded_vocab_size = 50304;
            out->num_layers = presets[i].layers;
            out->num_heads = presets[i].heads;
            out->channels = presets[i].channels;
            return LLMC_OK;
        }
    }
    return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                      "unknown model preset '%s' (expected d12, d24, d36 or d48)", name);
}

/* Largest value any single dimension may take: big enough for any GPT-2
 * class model, small enough that every product below fits in 64 bits. */
#define DIM_LIMIT (1 << 24)
/* 2^38 floats = 1 TiB: far beyond any model this library can hold. */
#define PARAM_LIMIT ((uint64_t)1 << 38)

llmc_status llmc_config_check(llmc_config *c, const char *source, llmc_status bad) {
    const struct { const char *name; int32_t value; } dims[] = {
        {"max_seq_len", c->max_seq_len}, {"vocab_size", c->vocab_size},
        {"num_layers", c->num_layers},   {"num_heads", c->num_heads},
        {"channels", c->channels},
    };
    for (size_t i = 0; i < sizeof(dims) / sizeof(dims[0]); i++) {
        if (dims[i].value <= 0 || dims[i].value > DIM_LIMIT)
            return llmc_error(bad, "%s: %s = %d, expected 1..%d", source,
                              dims[i].name, dims[i].value, DIM_LIMIT);
    }
    if (c->channels % c->num_heads != 0)
        return llmc_error(bad, "%s: channels = %d is not divisible by num_heads = %d",
                          source, c->channels, c->num_heads);
    if (c->padded_vocab_size == 0)
        c->padded_vocab_size = (c->vocab_size + 127) / 128 * 128;
    if (c->padded_vocab_size < c->vocab_size || c->padded_vocab_size > DIM_LIMIT)
        return llmc_error(bad, "%s: padded_vocab_size = %d, expected %d..%d", source,
                          c->padded_vocab_size, c->vocab_size, DIM_LIMIT);
    size_t sizes[LLMC_NUM_PARAM_TENSORS], offsets[LLMC_NUM_PARAM_TENSORS], total;
    llmc_param_layout(c, sizes, offsets, &total);
    if ((uint64_t)total > PARAM_LIMIT)
        return llmc_error(bad, "%s: the shape asks for %llu parameters, more than %llu",
                          source, (unsigned long long)total, (unsigned long long)PARAM_LIMIT);
    return LLMC_OK;
}

void llmc_param_layout(const llmc_config *c, size_t sizes[LLMC_NUM_PARAM_TENSORS],
                       size_t offsets[LLMC_NUM_PARAM_TENSORS], size_t *total) {
    size_t Vp = (size_t)c->padded_vocab_size, C = (size_t)c->channels;
    size_t L = (size_t)c->num_layers, maxT = (size_t)c->max_seq_len;
    sizes[P_WTE] = Vp * C;
    sizes[P_WPE] = maxT * C;
    sizes[P_LN1W] = L * C;
    sizes[P_LN1B] = L * C;
    sizes[P_QKVW] = L * 3 * C * C;
    sizes[P_QKVB] = L * 3 * C;
    sizes[P_ATTPROJW] = L * C * C;
    sizes[P_ATTPROJB] = L * C;
    sizes[P_LN2W] = L * C;
    sizes[P_LN2B] = L * C;
    sizes[P_FCW] = L * 4 * C * C;
    sizes[P_FCB] = L * 4 * C;
    sizes[P_FCPROJW] = L * C * 4 * C;
    sizes[P_FCPROJB] = L * C;
    sizes[P_LNFW] = C;
    sizes[P_LNFB] = C;
    size_t offset = 0;
    for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; i++) {
        offsets[i] = offset;
        offset += sizes[i];
    }
    *total = offset;
}

int llmc_param_is_decayed(int tensor) {
    return tensor == P_WTE || tensor == P_WPE || tensor == P_QKVW || tensor == P_ATTPROJW ||
           tensor == P_FCW || tensor == P_FCPROJW;
}

/* splitmix64: a counter-based generator, so element i of a tensor gets the
 * same value whatever the thread count. */
static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static double uniform_open01(uint64_t bits) { /* in (0, 1) */
    return ((double)(bits >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static void fill_normal(float *x, size_t n, float std, uint64_t key) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        uint64_t h = mix64(key ^ mix64(i));
        double u1 = uniform_open01(h), u2 = uniform_open01(mix64(h));
        x[i] = (float)(std * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
    }
}

static void fill_constant(float *x, size_t n, float value) {
    for (size_t i = 0; i < n; i++) x[i] = value;
}

void llmc_random_init(const llmc_model *m, float *params) {
    const llmc_config *c = &m->config;
    const float std = 0.02f;
    /* GPT-2 scales the projections into the residual stream by 1/sqrt(2L). */
    const float residual_std = std / sqrtf(2.0f * (float)c->num_layers);
    for (int t = 0; t < LLMC_NUM_PARAM_TENSORS; t++) {
        float *x = params + m->param_offsets[t];
        size_t n = m->param_sizes[t];
        uint64_t key = mix64(m->options.seed * 0x100 + (uint64_t)t);
        switch (t) {
        case P_WTE:
            /* padded rows stay zero: no input selects them and the loss masks them */
            fill_normal(x, (size_t)c->vocab_size * c->channels, std, key);
            fill_constant(x + (size_t)c->vocab_size * c->channels,
                          n - (size_t)c->vocab_size * c->channels, 0.0f);
            break;
        case P_WPE: case P_QKVW: case P_FCW:
            fill_normal(x, n, std, key);
            break;
        case P_ATTPROJW: case P_FCPROJW:
            fill_normal(x, n, residual_std, key);
            break;
        case P_LN1W: case P_LN2W: case P_LNFW:
            fill_constant(x, n, 1.0f);
            break;
        default: /* biases */
            fill_constant(x, n, 0.0f);
        }
    }
}
