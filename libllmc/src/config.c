/* config.c: model shapes: presets, validation, the parameter layout and
 * GPT-2's random initialisation. */
#define _GNU_SOURCE /* sysconf, M_PI */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "config.h"

/* Llama 3's RoPE scaling (transformers' "llama3" rope type) of the 3.1 and
 * 3.2 releases: factor, low and high frequency factors, original length. */
#define LLAMA31_ROPE_SCALING 8.0f, 1.0f, 4.0f, 8192
#define LLAMA32_ROPE_SCALING 32.0f, 1.0f, 4.0f, 8192

llmc_status llmc_config_preset(const char *name, llmc_config *out) {
    static const struct { const char *name; int layers, heads, channels; } presets[] = {
        {"d12", 12, 12, 768},   /* GPT-2 124M */
        {"d24", 24, 16, 1024},  /* GPT-2 350M */
        {"d36", 36, 20, 1280},  /* GPT-2 774M */
        {"d48", 48, 25, 1600},  /* GPT-2 1558M */
    };
    /* Llama shapes as their config.json files give them */
    static const struct { const char *name; llmc_config c; } llama[] = {
        /* GPT-2 124M's width and depth, GPT-2's vocabulary: 3 KV heads of 4
         * queries, the MLP widened so that a block holds GPT-2's 12 C^2 weights
         * (1.67 + 1 + 3 F/C = 12 at F = 3.11 C, rounded to 2304 = 9 x 256) */
        {"llama-124m", {1024, 50257, 50304, 12, 12, 768, LLMC_FAMILY_LLAMA, 4, 2304, 0,
                        10000.0f, 1e-5f, 0.0f, 0.0f, 0.0f, 0}},
        {"llama3.2-1b", {131072, 128256, 128256, 16, 32, 2048, LLMC_FAMILY_LLAMA, 8, 8192, 0,
                         500000.0f, 1e-5f, LLAMA32_ROPE_SCALING}},
        {"llama3.2-3b", {131072, 128256, 128256, 28, 24, 3072, LLMC_FAMILY_LLAMA, 8, 8192, 0,
                         500000.0f, 1e-5f, LLAMA32_ROPE_SCALING}},
        {"llama3.1-8b", {131072, 128256, 128256, 32, 32, 4096, LLMC_FAMILY_LLAMA, 8, 14336, 1,
                         500000.0f, 1e-5f, LLAMA31_ROPE_SCALING}},
    };
    if (name == NULL || out == NULL)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_config_preset: NULL argument");
    for (size_t i = 0; i < sizeof(presets) / sizeof(presets[0]); i++) {
        if (strcmp(name, presets[i].name) == 0) {
            memset(out, 0, sizeof *out);
            out->max_seq_len = 1024;
            out->vocab_size = 50257;
            out->padded_vocab_size = 50304;
            out->num_layers = presets[i].layers;
            out->num_heads = presets[i].heads;
            out->channels = presets[i].channels;
            return LLMC_OK;
        }
    }
    for (size_t i = 0; i < sizeof(llama) / sizeof(llama[0]); i++) {
        if (strcmp(name, llama[i].name) == 0) {
            *out = llama[i].c;
            return LLMC_OK;
        }
    }
    return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                      "unknown model preset '%s' (expected d12, d24, d36, d48, llama-124m, "
                      "llama3.2-1b, llama3.2-3b or llama3.1-8b)", name);
}

/* The family fields: all zero for GPT-2; for Llama, zeros take their
 * defaults (llmc.h) and every value is checked. */
static llmc_status check_family(llmc_config *c, const char *source, llmc_status bad) {
    if (c->family == LLMC_FAMILY_GPT2) {
        if (c->num_kv_heads || c->ffn_hidden || c->untied_head || c->rope_theta != 0.0f ||
            c->norm_eps != 0.0f || c->rope_scaling_factor != 0.0f || c->rope_low_freq_factor != 0.0f ||
            c->rope_high_freq_factor != 0.0f || c->rope_original_max_seq_len)
            return llmc_error(bad, "%s: a GPT-2 config (family 0) has no num_kv_heads, ffn_hidden, "
                              "untied_head, rope or norm_eps fields: they must be 0", source);
        return LLMC_OK;
    }
    if (c->family != LLMC_FAMILY_LLAMA)
        return llmc_error(bad, "%s: family = %d, expected 0 (GPT-2) or 1 (Llama)", source, c->family);
    if (c->num_kv_heads == 0) c->num_kv_heads = c->num_heads;
    if (c->ffn_hidden == 0) c->ffn_hidden = ((int32_t)((int64_t)c->channels * 8 / 3) + 255) / 256 * 256;
    if (c->rope_theta == 0.0f) c->rope_theta = 10000.0f;
    if (c->norm_eps == 0.0f) c->norm_eps = 1e-5f;
    if (c->num_kv_heads < 1 || c->num_heads % c->num_kv_heads != 0)
        return llmc_error(bad, "%s: num_kv_heads = %d must divide num_heads = %d", source,
                          c->num_kv_heads, c->num_heads);
    if ((c->channels / c->num_heads) % 2 != 0)
        return llmc_error(bad, "%s: head size %d (channels %d / num_heads %d) must be even for RoPE",
                          source, c->channels / c->num_heads, c->channels, c->num_heads);
    if (c->ffn_hidden < 1 || c->ffn_hidden > LLMC_DIM_LIMIT)
        return llmc_error(bad, "%s: ffn_hidden = %d, expected 1..%d", source, c->ffn_hidden,
                          LLMC_DIM_LIMIT);
    if (c->untied_head != 0 && c->untied_head != 1)
        return llmc_error(bad, "%s: untied_head = %d, expected 0 (tied) or 1", source, c->untied_head);
    if (!(c->rope_theta > 1.0f && isfinite(c->rope_theta)) ||
        !(c->norm_eps > 0.0f && c->norm_eps < 1.0f))
        return llmc_error(bad, "%s: rope_theta = %g, norm_eps = %g (expected rope_theta > 1 and "
                          "finite, 0 < norm_eps < 1)", source, c->rope_theta, c->norm_eps);
    const int no_scaling = c->rope_scaling_factor == 0.0f && c->rope_low_freq_factor == 0.0f &&
                           c->rope_high_freq_factor == 0.0f && c->rope_original_max_seq_len == 0;
    const int scaling = c->rope_scaling_factor >= 1.0f && isfinite(c->rope_scaling_factor) &&
                        c->rope_low_freq_factor > 0.0f &&
                        c->rope_high_freq_factor > c->rope_low_freq_factor &&
                        isfinite(c->rope_high_freq_factor) && c->rope_original_max_seq_len > 0;
    if (!no_scaling && !scaling)
        return llmc_error(bad, "%s: RoPE scaling factor %g, low_freq_factor %g, high_freq_factor %g, "
                          "original_max_seq_len %d: expected all 0 (no scaling), or factor >= 1, "
                          "0 < low < high (finite) and original_max_seq_len > 0", source,
                          c->rope_scaling_factor, c->rope_low_freq_factor, c->rope_high_freq_factor,
                          c->rope_original_max_seq_len);
    return LLMC_OK;
}

llmc_status llmc_config_check(llmc_config *c, const char *source, llmc_status bad) {
    const struct { const char *name; int32_t value; } dims[] = {
        {"max_seq_len", c->max_seq_len}, {"vocab_size", c->vocab_size},
        {"num_layers", c->num_layers},   {"num_heads", c->num_heads},
        {"channels", c->channels},
    };
    for (size_t i = 0; i < sizeof(dims) / sizeof(dims[0]); i++) {
        if (dims[i].value <= 0 || dims[i].value > LLMC_DIM_LIMIT)
            return llmc_error(bad, "%s: %s = %d, expected 1..%d", source,
                              dims[i].name, dims[i].value, LLMC_DIM_LIMIT);
    }
    if (c->channels % c->num_heads != 0)
        return llmc_error(bad, "%s: channels = %d is not divisible by num_heads = %d",
                          source, c->channels, c->num_heads);
    llmc_status st = check_family(c, source, bad);
    if (st != LLMC_OK) return st;
    if (c->padded_vocab_size == 0)
        c->padded_vocab_size = (c->vocab_size + 127) / 128 * 128;
    if (c->padded_vocab_size < c->vocab_size || c->padded_vocab_size > LLMC_DIM_LIMIT)
        return llmc_error(bad, "%s: padded_vocab_size = %d, expected %d..%d", source,
                          c->padded_vocab_size, c->vocab_size, LLMC_DIM_LIMIT);
    size_t sizes[LLMC_NUM_PARAM_TENSORS], offsets[LLMC_NUM_PARAM_TENSORS], total;
    if (!llmc_param_layout(c, sizes, offsets, &total) || (uint64_t)total > LLMC_PARAM_LIMIT)
        return llmc_error(bad, "%s: the shape (L=%d, C=%d, Vp=%d, maxT=%d) asks for more than "
                          "%llu parameters", source, c->num_layers, c->channels,
                          c->padded_vocab_size, c->max_seq_len,
                          (unsigned long long)LLMC_PARAM_LIMIT);
    return LLMC_OK;
}

int llmc_param_layout(const llmc_config *c, size_t sizes[LLMC_NUM_PARAM_TENSORS],
                      size_t offsets[LLMC_NUM_PARAM_TENSORS], size_t *total) {
    const size_t Vp = (size_t)c->padded_vocab_size, C = (size_t)c->channels;
    const size_t L = (size_t)c->num_layers, maxT = (size_t)c->max_seq_len;
    const size_t QKV = llmc_qkv_width(c), FC = llmc_fc_width(c), ACT = llmc_fc_act_width(c);
    /* elements per layer of each tensor (whole-model tensors: L = 1) */
    const struct { size_t layers, a, b; } gpt2[LLMC_NUM_PARAM_TENSORS] = {
        [P_WTE] = {1, Vp, C},         [P_WPE] = {1, maxT, C},
        [P_LN1W] = {L, 1, C},         [P_LN1B] = {L, 1, C},
        [P_QKVW] = {L, QKV, C},       [P_QKVB] = {L, 1, QKV},
        [P_ATTPROJW] = {L, C, C},     [P_ATTPROJB] = {L, 1, C},
        [P_LN2W] = {L, 1, C},         [P_LN2B] = {L, 1, C},
        [P_FCW] = {L, FC, C},         [P_FCB] = {L, 1, FC},
        [P_FCPROJW] = {L, C, ACT},    [P_FCPROJB] = {L, 1, C},
        [P_LNFW] = {1, 1, C},         [P_LNFB] = {1, 1, C},
    }, llama[LLMC_NUM_PARAM_TENSORS] = { /* no biases; unlisted tensors are empty */
        [P_WTE] = {1, Vp, C},         [P_LMHEAD] = {c->untied_head ? 1 : 0, Vp, C},
        [P_LN1W] = {L, 1, C},         [P_QKVW] = {L, QKV, C},
        [P_ATTPROJW] = {L, C, C},     [P_LN2W] = {L, 1, C},
        [P_FCW] = {L, FC, C},         [P_FCPROJW] = {L, C, ACT},
        [P_LNFW] = {1, 1, C},
    };
    const __typeof__(gpt2[0]) *shape = llmc_is_llama(c) ? llama : gpt2;
    size_t offset = 0;
    for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; i++) {
        size_t per_layer, end;
        if (!llmc_mul(shape[i].a, shape[i].b, &per_layer) ||
            !llmc_mul(per_layer, shape[i].layers, &sizes[i]) ||
            __builtin_add_overflow(offset, sizes[i], &end))
            return 0;
        offsets[i] = offset;
        offset = end;
    }
    *total = offset;
    return 1;
}

/* Bytes named by `key` in /proc/meminfo (given there in kB); 0 if absent. */
static uint64_t meminfo_bytes(const char *key) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (f == NULL) return 0;
    char line[256];
    unsigned long long kb = 0;
    size_t key_len = strlen(key);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, key_len) == 0 && line[key_len] == ':') {
            sscanf(line + key_len + 1, "%llu", &kb);
            break;
        }
    fclose(f);
    return (uint64_t)kb * 1024;
}

/* A number from a one-line file (cgroup v2 memory.max / memory.current);
 * UINT64_MAX when absent or "max". */
static uint64_t file_number(const char *path) {
    FILE *f = fopen(path, "r");
    if (f == NULL) return UINT64_MAX;
    unsigned long long v;
    int got = fscanf(f, "%llu", &v);
    fclose(f);
    return got == 1 ? (uint64_t)v : UINT64_MAX;
}

/* This process's mapped address space, from /proc/self/statm (pages). */
static uint64_t address_space_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL) return 0;
    unsigned long long pages = 0;
    int got = fscanf(f, "%llu", &pages);
    fclose(f);
    return got == 1 ? (uint64_t)pages * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

llmc_status llmc_host_memory_check(size_t bytes, const char *what) {
    uint64_t available = UINT64_MAX;
    const char *limit = "";
    uint64_t mem = meminfo_bytes("MemAvailable");
    if (mem) {
        available = mem + meminfo_bytes("SwapFree");
        limit = "available memory";
    }
    uint64_t cg_max = file_number("/sys/fs/cgroup/memory.max");
    uint64_t cg_used = file_number("/sys/fs/cgroup/memory.current");
    if (cg_max != UINT64_MAX && cg_used != UINT64_MAX) {
        uint64_t cg_left = cg_max > cg_used ? cg_max - cg_used : 0;
        if (cg_left < available) available = cg_left, limit = "the cgroup's memory.max";
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        uint64_t used = address_space_bytes();
        uint64_t as_left = rl.rlim_cur > used ? rl.rlim_cur - used : 0;
        if (as_left < available) available = as_left, limit = "the address-space limit (RLIMIT_AS)";
    }
    if ((uint64_t)bytes > available)
        return llmc_error(LLMC_ERR_OUT_OF_MEMORY,
                          "out of host memory: the %s need %.3f GiB, %s leaves %.3f GiB", what,
                          (double)bytes / (1 << 30), limit, (double)available / (1 << 30));
    return LLMC_OK;
}

const char *llmc_param_name(const llmc_config *c, int tensor) {
    static const char *names[LLMC_NUM_PARAM_TENSORS] = {
        "wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
        "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb",
    };
    if (llmc_is_llama(c) && tensor == P_LMHEAD) return "lm_head";
    return tensor >= 0 && tensor < LLMC_NUM_PARAM_TENSORS ? names[tensor] : "?";
}

int llmc_head_tensor(const llmc_config *c) {
    return llmc_is_llama(c) && c->untied_head ? P_LMHEAD : P_WTE;
}

void llmc_rope_inv_freq(const llmc_config *c, float *out) {
    /* fp32 throughout, in transformers' order of operations, so that the
     * angles match its to the last bit or two */
    const int hs = c->channels / c->num_heads;
    const float factor = c->rope_scaling_factor, low = c->rope_low_freq_factor;
    const float high = c->rope_high_freq_factor, old_len = (float)c->rope_original_max_seq_len;
    for (int i = 0; i < hs / 2; i++) {
        const float inv = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)hs);
        out[i] = inv;
        if (factor == 0.0f) continue;
        const float wavelen = (float)(2.0 * M_PI) / inv;
        if (wavelen < old_len / high) continue;  /* high frequencies stay */
        if (wavelen > old_len / low) {           /* low ones are divided by the factor */
            out[i] = inv / factor;
        } else {                                 /* in between: interpolated */
            const float smooth = (old_len / wavelen - low) / (high - low);
            out[i] = (1.0f - smooth) * inv / factor + smooth * inv;
        }
    }
}

int llmc_param_is_per_layer(int tensor) { return tensor >= P_LN1W && tensor <= P_FCPROJB; }

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

static void fill_normal(float *x, size_t start, size_t n, float std, uint64_t key) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        uint64_t h = mix64(key ^ mix64(start + i));
        double u1 = uniform_open01(h), u2 = uniform_open01(mix64(h));
        x[i] = (float)(std * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
    }
}

static void fill_constant(float *x, size_t n, float value) {
    for (size_t i = 0; i < n; i++) x[i] = value;
}

void llmc_random_init(const llmc_model *m, int tensor, size_t start, size_t count, float *out) {
    const llmc_config *c = &m->config;
    const float std = 0.02f;
    /* GPT-2 scales the projections into the residual stream by 1/sqrt(2L). */
    const float residual_std = std / sqrtf(2.0f * (float)c->num_layers);
    uint64_t key = mix64(m->options.seed * 0x100 + (uint64_t)tensor);
    switch (tensor) {
    case P_WPE: /* Llama: the output layer (P_LMHEAD), with wte's padded rows */
        if (!llmc_is_llama(c)) {
            fill_normal(out, start, count, std, key);
            break;
        }
        /* fall through */
    case P_WTE: {
        /* padded rows stay zero: no input selects them and the loss masks them */
        const size_t real = (size_t)c->vocab_size * c->channels;
        const size_t normal = start >= real ? 0 : (real - start < count ? real - start : count);
        fill_normal(out, start, normal, std, key);
        fill_constant(out + normal, count - normal, 0.0f);
        break;
    }
    case P_QKVW: case P_FCW:
        fill_normal(out, start, count, std, key);
        break;
    case P_ATTPROJW: case P_FCPROJW:
        fill_normal(out, start, count, residual_std, key);
        break;
    case P_LN1W: case P_LN2W: case P_LNFW:
        fill_constant(out, count, 1.0f);
        break;
    default: /* biases */
        fill_constant(out, count, 0.0f);
    }
}
