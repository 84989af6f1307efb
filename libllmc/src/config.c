/* config.c: model shapes: presets, validation, the parameter layout and
 * GPT-2's random initialisation. */
#define _GNU_SOURCE /* sysconf */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

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
    /* elements per layer of each tensor (whole-model tensors: L = 1) */
    const struct { size_t layers, a, b; } shape[LLMC_NUM_PARAM_TENSORS] = {
        [P_WTE] = {1, Vp, C},         [P_WPE] = {1, maxT, C},
        [P_LN1W] = {L, 1, C},         [P_LN1B] = {L, 1, C},
        [P_QKVW] = {L, 3 * C, C},     [P_QKVB] = {L, 1, 3 * C},
        [P_ATTPROJW] = {L, C, C},     [P_ATTPROJB] = {L, 1, C},
        [P_LN2W] = {L, 1, C},         [P_LN2B] = {L, 1, C},
        [P_FCW] = {L, 4 * C, C},      [P_FCB] = {L, 1, 4 * C},
        [P_FCPROJW] = {L, C, 4 * C},  [P_FCPROJB] = {L, 1, C},
        [P_LNFW] = {1, 1, C},         [P_LNFB] = {1, 1, C},
    };
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

const char *llmc_param_name(int tensor) {
    static const char *names[LLMC_NUM_PARAM_TENSORS] = {
        "wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
        "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb",
    };
    return tensor >= 0 && tensor < LLMC_NUM_PARAM_TENSORS ? names[tensor] : "?";
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
    case P_WTE: {
        /* padded rows stay zero: no input selects them and the loss masks them */
        const size_t real = (size_t)c->vocab_size * c->channels;
        const size_t normal = start >= real ? 0 : (real - start < count ? real - start : count);
        fill_normal(out, start, normal, std, key);
        fill_constant(out + normal, count - normal, 0.0f);
        break;
    }
    case P_WPE: case P_QKVW: case P_FCW:
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
