/*
 * checkpoint.c: model files in llm.c's format and llmc's AdamW state files.
 *
 * GPT-2 model file: 256 int32 header (magic 20240326; version 3 = fp32, 5 =
 * bf16; max_seq_len, vocab_size, num_layers, num_heads, channels,
 * padded_vocab_size), then the 16 tensors in llm.c's order.
 * Llama model file, llm.c's llama3 branch (train_llama3.py's write_model):
 * 256 int32 (magic 20240803, version, max_seq_len, vocab_size, num_layers,
 * num_heads, num_kv_heads, channels, multiple_of, use_scaled_rope, major and
 * minor version) and 256 float32 (ffn_dim_multiplier, norm_eps, rope_theta),
 * then the 16 tensors of GPT-2's order with Llama's shapes: wte (V, C), the
 * output layer (V, C) in wpe's place, the biases and lnfb present but zero,
 * fcw the up projection then the gate. llmc adds what that header cannot
 * say, where llm.c's branch reads nothing (0 in its files): int 12 the
 * padded vocabulary, 13 tied (the output layer is then written as a copy of
 * wte and skipped on reading), 14 ffn_hidden, 15 the RoPE scaling's original
 * length, floats 3-5 its factor, low and high frequency factors (llm.c's
 * branch applies its fixed 8, 1, 4, 8192 whenever use_scaled_rope is set).
 * Optimizer file: 256 int32 header (magic 20261121, version 2, the same six
 * shape fields, step as two int32 halves, the number of scaling-state
 * floats, then the family fields of llmc_config, zero for GPT-2), then the
 * first and second moments as fp32 vectors, then the FP8 scaling state (none
 * for bf16 models). Version 1 (no scaling state, its header word 10 unused,
 * GPT-2 only) still loads.
 * Writes go to a temporary file that is fsynced and renamed over the
 * target, so a crash leaves either the old file or the new one.
 */
#define _GNU_SOURCE /* O_CLOEXEC, fdopen, fsync under -std=c11 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "config.h"

#define HEADER_INTS 256
#define HEADER_BYTES (HEADER_INTS * sizeof(int32_t))
#define MODEL_MAGIC 20240326
#define LLAMA_MAGIC 20240803
#define MODEL_VERSION_FP32 3
#define MODEL_VERSION_BF16 5
#define OPTIMIZER_MAGIC 20261121
#define OPTIMIZER_VERSION 2 /* 1: without the scaling-state count and data */

/* The float fields of llmc_config stored bit for bit in int32 slots. */
static int32_t float_bits(float x) {
    int32_t i;
    memcpy(&i, &x, sizeof i);
    return i;
}
static float bits_float(int32_t i) {
    float x;
    memcpy(&x, &i, sizeof x);
    return x;
}

/* GPT-2 model files and optimizer files; the family fields (h[11..20]) are
 * zero for GPT-2, as in the files written before they existed (h[10] is the
 * optimizer file's scaling-state count). */
static void header_put_config(int32_t *h, const llmc_config *c) {
    h[2] = c->max_seq_len;
    h[3] = c->vocab_size;
    h[4] = c->num_layers;
    h[5] = c->num_heads;
    h[6] = c->channels;
    h[7] = c->padded_vocab_size;
    h[11] = c->family;
    h[12] = c->num_kv_heads;
    h[13] = c->ffn_hidden;
    h[14] = c->untied_head;
    h[15] = float_bits(c->rope_theta);
    h[16] = float_bits(c->norm_eps);
    h[17] = float_bits(c->rope_scaling_factor);
    h[18] = float_bits(c->rope_low_freq_factor);
    h[19] = float_bits(c->rope_high_freq_factor);
    h[20] = c->rope_original_max_seq_len;
}

static llmc_config header_get_config(const int32_t *h) {
    llmc_config c = {h[2], h[3], h[7], h[4], h[5], h[6], h[11], h[12], h[13], h[14],
                     bits_float(h[15]), bits_float(h[16]), bits_float(h[17]), bits_float(h[18]),
                     bits_float(h[19]), h[20]};
    return c;
}

/* llm.c's llama3 branch sizes the SwiGLU from multiple_of and
 * ffn_dim_multiplier (its fill_in_parameter_sizes, float arithmetic and
 * all); 0 when the values give no size. */
static int64_t llama_ffn_from_header(int64_t C, int32_t multiple_of, float multiplier) {
    if (multiple_of < 1 || !(multiplier > 0.0f && multiplier < 1e6f)) return 0;
    int64_t hidden = (int64_t)(multiplier * (float)(2 * (4 * C) / 3));
    return (hidden + multiple_of - 1) / multiple_of * multiple_of;
}

static void llama_header_put_config(int32_t *h, float *hf, const llmc_config *c) {
    h[2] = c->max_seq_len;
    h[3] = c->vocab_size;
    h[4] = c->num_layers;
    h[5] = c->num_heads;
    h[6] = c->num_kv_heads;
    h[7] = c->channels;
    /* multiple_of and ffn_dim_multiplier that give ffn_hidden in llm.c's sizing */
    const int64_t base = 2 * (4 * (int64_t)c->channels) / 3;
    h[8] = c->ffn_hidden;
    hf[0] = base <= c->ffn_hidden ? 1.0f : (float)c->ffn_hidden / (float)base;
    h[9] = c->rope_scaling_factor != 0.0f;
    h[10] = 3;
    h[11] = 1;
    hf[1] = c->norm_eps;
    hf[2] = c->rope_theta;
    h[12] = c->padded_vocab_size;
    h[13] = !c->untied_head;
    h[14] = c->ffn_hidden;
    h[15] = c->rope_original_max_seq_len;
    hf[3] = c->rope_scaling_factor;
    hf[4] = c->rope_low_freq_factor;
    hf[5] = c->rope_high_freq_factor;
}

/* A Llama header's config (llmc_config_check does the range checks). */
static llmc_status llama_header_get_config(const int32_t *h, const float *hf, const char *path,
                                           llmc_config *c) {
    memset(c, 0, sizeof *c);
    c->family = LLMC_FAMILY_LLAMA;
    c->max_seq_len = h[2];
    c->vocab_size = h[3];
    c->num_layers = h[4];
    c->num_heads = h[5];
    c->num_kv_heads = h[6];
    c->channels = h[7];
    c->norm_eps = hf[1];
    c->rope_theta = hf[2];
    /* llm.c's files have no padding (0): llmc's default rounding, rows zero */
    c->padded_vocab_size = h[12] ? h[12] : (h[3] > 0 && h[3] <= LLMC_DIM_LIMIT ? (h[3] + 127) / 128 * 128 : h[3]);
    c->untied_head = !h[13];
    if (h[13] != 0 && h[13] != 1)
        return llmc_error(LLMC_ERR_FORMAT, "'%s': tied flag (header int 13) = %d, expected 0 or 1",
                          path, h[13]);
    const int64_t ffn = h[7] > 0 ? llama_ffn_from_header(h[7], h[8], hf[0]) : 0;
    if (ffn < 1 || ffn > LLMC_DIM_LIMIT || (h[14] != 0 && h[14] != ffn))
        return llmc_error(LLMC_ERR_FORMAT, "'%s': multiple_of = %d and ffn_dim_multiplier = %g give "
                          "a SwiGLU size of %lld%s, expected 1..%d%s", path, h[8], hf[0],
                          (long long)ffn, h[14] ? " but the header says" : "", LLMC_DIM_LIMIT,
                          h[14] ? " and equal" : "");
    c->ffn_hidden = (int32_t)ffn;
    if (h[9] != 0 && h[9] != 1)
        return llmc_error(LLMC_ERR_FORMAT, "'%s': use_scaled_rope = %d, expected 0 or 1", path, h[9]);
    if (h[9] && hf[3] == 0.0f) { /* llm.c's branch: its fixed Llama 3.1 scaling */
        c->rope_scaling_factor = 8.0f;
        c->rope_low_freq_factor = 1.0f;
        c->rope_high_freq_factor = 4.0f;
        c->rope_original_max_seq_len = 8192;
    } else if (h[9]) {
        c->rope_scaling_factor = hf[3];
        c->rope_low_freq_factor = hf[4];
        c->rope_high_freq_factor = hf[5];
        c->rope_original_max_seq_len = h[15];
    }
    return LLMC_OK;
}

/* Elements of each tensor in a Llama file (llm.c's layout, see the top). */
static void llama_file_counts(const llmc_config *c, size_t counts[LLMC_NUM_PARAM_TENSORS]) {
    llmc_config as_file = *c; /* the unpadded vocabulary, and the output layer always there */
    as_file.padded_vocab_size = c->vocab_size;
    as_file.untied_head = 1;
    size_t offsets[LLMC_NUM_PARAM_TENSORS], total;
    llmc_param_layout(&as_file, counts, offsets, &total);
    const size_t L = c->num_layers, C = c->channels;
    counts[P_LN1B] = counts[P_ATTPROJB] = counts[P_LN2B] = counts[P_FCPROJB] = L * C;
    counts[P_QKVB] = L * llmc_qkv_width(c);
    counts[P_FCB] = L * llmc_fc_width(c);
    counts[P_LNFB] = C;
}

/* ---- reading -------------------------------------------------------------- */

/* Opens path (open(2) flags, fdopen mode) as a regular file or fails:
 * O_NONBLOCK keeps the open itself from waiting on a FIFO's other end, and
 * fstat then tells a FIFO, device or directory apart before any I/O. `verb`
 * names the attempt in errors ("open", "write"). */
static llmc_status open_regular(const char *path, int flags, const char *mode, const char *verb,
                                FILE **f, size_t *size) {
    *f = NULL;
    int fd = open(path, flags | O_NONBLOCK | O_CLOEXEC, 0644);
    if (fd < 0) {
        int err = errno;
        llmc_status status = llmc_error(LLMC_ERR_IO, "cannot %s '%s': %s", verb, path, strerror(err));
        errno = err; /* atomic_open draws another name on EEXIST */
        return status;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return llmc_error(LLMC_ERR_IO, "cannot %s '%s': not a regular file", verb, path);
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0 || (*f = fdopen(fd, mode)) == NULL) {
        llmc_status status = llmc_error(LLMC_ERR_IO, "cannot %s '%s': %s", verb, path, strerror(errno));
        close(fd);
        if (flags & O_CREAT) unlink(path);  /* the regular file this call made */
        return status;
    }
    if (size) *size = (size_t)st.st_size;
    return LLMC_OK;
}

static llmc_status open_for_read(const char *path, FILE **f, size_t *size) {
    return open_regular(path, O_RDONLY, "rb", "open", f, size);
}

static llmc_status read_header(FILE *f, const char *path, size_t file_size, int32_t *h) {
    if (file_size < HEADER_BYTES || fread(h, sizeof(int32_t), HEADER_INTS, f) != HEADER_INTS)
        return llmc_error(LLMC_ERR_FORMAT, "'%s' is %zu bytes, too short for a %zu-byte header",
                          path, file_size, (size_t)HEADER_BYTES);
    return LLMC_OK;
}

static llmc_status read_failed(FILE *f, const char *path) {
    return llmc_error(LLMC_ERR_IO, "'%s': read failed: %s", path,
                      ferror(f) ? strerror(errno) : "unexpected end of file");
}

static float bf16_to_float(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float x;
    memcpy(&x, &bits, sizeof x);
    return x;
}

static uint16_t float_to_bf16(float x) { /* round to nearest even; NaN stays NaN */
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

/* Reads n values stored as fp32 (bytes_per 4) or bf16 (2) into dst as fp32;
 * scratch holds n uint16 for the bf16 conversion. */
static llmc_status read_values(FILE *f, const char *path, size_t bytes_per, float *dst, size_t n,
                               uint16_t *scratch) {
    if (bytes_per == 4) return fread(dst, sizeof(float), n, f) == n ? LLMC_OK : read_failed(f, path);
    if (fread(scratch, sizeof(uint16_t), n, f) != n) return read_failed(f, path);
    for (size_t i = 0; i < n; i++) dst[i] = bf16_to_float(scratch[i]);
    return LLMC_OK;
}

/* Fails naming the first element of x (elements start.. of parameter tensor
 * `tensor`) that is not finite, or negative when nonneg; `vector` says
 * which vector they belong to ("" for the weights). */
static llmc_status check_values(const char *path, const char *vector, const llmc_config *c,
                                int tensor, size_t tensor_size, size_t start, const float *x,
                                size_t n, int nonneg) {
    for (size_t i = 0; i < n; i++) {
        if (isfinite(x[i]) && !(nonneg && x[i] < 0.0f)) continue;
        size_t index = start + i;
        char where[64] = "";
        if (llmc_param_is_per_layer(tensor)) {
            size_t per_layer = tensor_size / (size_t)c->num_layers;
            snprintf(where, sizeof where, " (layer %zu)", index / per_layer);
            index %= per_layer;
        }
        const char *what = isnan(x[i]) ? "a NaN" : isinf(x[i]) ? "an infinity" : "a negative value";
        return llmc_error(LLMC_ERR_FORMAT, "'%s': %stensor %s%s holds %s at element %zu%s", path,
                          vector, llmc_param_name(c, tensor), where, what, index,
                          nonneg ? " (expected finite and >= 0)" : " (expected finite)");
    }
    return LLMC_OK;
}

/* Checks a model file's header and size; *bytes_per is 4 (fp32) or 2 (bf16).
 * The file is left at its first parameter. */
static llmc_status read_model_header(FILE *f, const char *path, size_t file_size, llmc_config *config,
                                     size_t *bytes_per) {
    int32_t h[HEADER_INTS];
    float hf[HEADER_INTS];
    llmc_status st = read_header(f, path, file_size, h);
    if (st != LLMC_OK) return st;
    const int llama = h[0] == LLAMA_MAGIC;
    if (h[0] != MODEL_MAGIC && !llama)
        return llmc_error(LLMC_ERR_FORMAT, "'%s' is not an llm.c model file: magic %d, expected %d "
                          "(GPT-2) or %d (Llama 3)", path, h[0], MODEL_MAGIC, LLAMA_MAGIC);
    if (h[1] != MODEL_VERSION_FP32 && h[1] != MODEL_VERSION_BF16)
        return llmc_error(LLMC_ERR_FORMAT, "'%s': model file version %d, expected 3 (fp32) or 5 (bf16)",
                          path, h[1]);
    const size_t header_bytes = llama ? 2 * HEADER_BYTES : HEADER_BYTES;
    if (llama) {
        if (file_size < header_bytes || fread(hf, sizeof(float), HEADER_INTS, f) != HEADER_INTS)
            return llmc_error(LLMC_ERR_FORMAT, "'%s' is %zu bytes, too short for a %zu-byte Llama "
                              "header", path, file_size, header_bytes);
        if ((st = llama_header_get_config(h, hf, path, config)) != LLMC_OK) return st;
    } else {
        *config = header_get_config(h);
        /* bytes past llm.c's six fields are not llmc's to read in a GPT-2 file */
        memset((char *)config + 6 * sizeof(int32_t), 0, sizeof *config - 6 * sizeof(int32_t));
    }
    if (config->padded_vocab_size == 0) /* zero would mean "choose one" to llmc_config_check */
        return llmc_error(LLMC_ERR_FORMAT, "'%s': padded_vocab_size = 0 in the header", path);
    if ((st = llmc_config_check(config, path, LLMC_ERR_FORMAT)) != LLMC_OK) return st;
    size_t sizes[LLMC_NUM_PARAM_TENSORS], offsets[LLMC_NUM_PARAM_TENSORS], num_params;
    llmc_param_layout(config, sizes, offsets, &num_params); /* fits: llmc_config_check said so */
    if (llama) { /* the file's tensors are at most the model's plus the biases and a head */
        llama_file_counts(config, sizes);
        num_params = 0;
        for (int t = 0; t < LLMC_NUM_PARAM_TENSORS; t++) num_params += sizes[t];
    }
    *bytes_per = h[1] == MODEL_VERSION_FP32 ? 4 : 2;
    /* num_params <= LLMC_PARAM_LIMIT (+ Llama's biases and head), so this cannot wrap */
    size_t expected = header_bytes + num_params * *bytes_per;
    if (file_size != expected)
        return llmc_error(LLMC_ERR_FORMAT,
                          "'%s' is %zu bytes but its header (L=%d, C=%d, V=%d, maxT=%d, %s) needs "
                          "exactly %zu (truncated or corrupted?)", path, file_size,
                          config->num_layers, config->channels, config->padded_vocab_size,
                          config->max_seq_len, *bytes_per == 4 ? "fp32" : "bf16", expected);
    return LLMC_OK;
}

llmc_status llmc_read_config(const char *path, llmc_config *out) {
    if (path == NULL || out == NULL)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_read_config: NULL argument");
    FILE *f;
    size_t file_size = 0, bytes_per;
    llmc_config c;
    llmc_status st = open_for_read(path, &f, &file_size);
    if (st != LLMC_OK) return st;
    st = read_model_header(f, path, file_size, &c, &bytes_per);
    fclose(f);
    if (st == LLMC_OK) *out = c;
    return st;
}

llmc_status llmc_open_model_file(const char *path, llmc_model_file *mf) {
    size_t file_size = 0;
    mf->path = path;
    llmc_status st = open_for_read(path, &mf->f, &file_size);
    if (st != LLMC_OK) return st;
    st = read_model_header(mf->f, path, file_size, &mf->config, &mf->bytes_per);
    if (st != LLMC_OK) llmc_close_model_file(mf);
    return st;
}

void llmc_close_model_file(llmc_model_file *mf) {
    if (mf->f) fclose(mf->f);
    mf->f = NULL;
}

typedef struct {
    llmc_model_file *mf;
    uint16_t *scratch;  /* LLMC_CHUNK_FLOATS values as stored, for bf16 files */
    /* Llama files: elements of each file tensor, and the next one not yet read */
    size_t file_counts[LLMC_NUM_PARAM_TENSORS];
    int next_file_tensor;
} file_source;

/* Llama: moves past the file's tensors before `tensor` that the model does
 * not hold: the zero biases (checked: llmc's Llama has none, so a nonzero
 * value cannot be kept) and a tied model's copy of wte. */
static llmc_status llama_skip_to(file_source *src, const llmc_model *m, int tensor, float *buf) {
    llmc_model_file *mf = src->mf;
    for (; src->next_file_tensor < tensor; src->next_file_tensor++) {
        const int t = src->next_file_tensor;
        const size_t n = src->file_counts[t];
        if (t == P_LMHEAD) { /* tied: wte's copy for llm.c's branch */
            if (fseek(mf->f, (long)(n * mf->bytes_per), SEEK_CUR) != 0) return read_failed(mf->f, mf->path);
            continue;
        }
        for (size_t start = 0; start < n; start += LLMC_CHUNK_FLOATS) {
            const size_t k = n - start < LLMC_CHUNK_FLOATS ? n - start : LLMC_CHUNK_FLOATS;
            llmc_status st = read_values(mf->f, mf->path, mf->bytes_per, buf, k, src->scratch);
            if (st != LLMC_OK) return st;
            for (size_t i = 0; i < k; i++)
                if (buf[i] != 0.0f)
                    return llmc_error(LLMC_ERR_FORMAT, "'%s': bias tensor %s holds %g at element "
                                      "%zu: llmc's Llama has no biases (expected 0)", mf->path,
                                      llmc_param_name(&m->config, t), buf[i], start + i);
        }
    }
    return LLMC_OK;
}

static llmc_status file_values(void *ctx, const llmc_model *m, int tensor, size_t start,
                               size_t count, float *out) {
    file_source *src = ctx;
    size_t stored = count; /* values in the file; the rest are padded vocabulary rows (zero) */
    if (llmc_is_llama(&m->config)) {
        if (start == 0) {
            llmc_status st = llama_skip_to(src, m, tensor, out);
            if (st != LLMC_OK) return st;
        }
        const size_t in_file = src->file_counts[tensor];
        stored = start >= in_file ? 0 : (in_file - start < count ? in_file - start : count);
        if (start + count == m->param_sizes[tensor]) src->next_file_tensor = tensor + 1;
    }
    llmc_status st = read_values(src->mf->f, src->mf->path, src->mf->bytes_per, out, stored,
                                 src->scratch);
    memset(out + stored, 0, (count - stored) * sizeof(float));
    return st != LLMC_OK ? st
                         : check_values(src->mf->path, "", &m->config, tensor, m->param_sizes[tensor],
                                        start, out, count, 0);
}

llmc_status llmc_read_model_params(llmc_model_file *mf, llmc_model *m) {
    file_source src = {mf, malloc(LLMC_CHUNK_FLOATS * sizeof(uint16_t)), {0}, 0};
    float *tail = NULL; /* Llama: lnfb, after the model's last tensor */
    if (llmc_is_llama(&m->config)) {
        llama_file_counts(&m->config, src.file_counts);
        tail = malloc(LLMC_CHUNK_FLOATS * sizeof(float));
    }
    llmc_status st = src.scratch == NULL || (llmc_is_llama(&m->config) && tail == NULL)
                         ? llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory reading '%s'", mf->path)
                         : llmc_fill_params(m, file_values, &src);
    if (st == LLMC_OK && tail) st = llama_skip_to(&src, m, LLMC_NUM_PARAM_TENSORS, tail);
    free(tail);
    free(src.scratch);
    return st;
}

/* Reads one moment vector (n floats, llm.c's order) and checks every value. */
static llmc_status read_moment(FILE *f, const char *path, const llmc_config *c, const char *vector,
                               int nonneg, float *dst) {
    size_t sizes[LLMC_NUM_PARAM_TENSORS], offsets[LLMC_NUM_PARAM_TENSORS], n;
    llmc_param_layout(c, sizes, offsets, &n);
    for (int t = 0; t < LLMC_NUM_PARAM_TENSORS; t++) {
        float *x = dst + offsets[t];
        if (fread(x, sizeof(float), sizes[t], f) != sizes[t]) return read_failed(f, path);
        llmc_status st = check_values(path, vector, c, t, sizes[t], 0, x, sizes[t], nonneg);
        if (st != LLMC_OK) return st;
    }
    return LLMC_OK;
}

llmc_status llmc_read_optimizer_file(const char *path, const llmc_config *config, size_t n,
                                     int64_t *step, float *mom1, float *mom2, size_t n_scaling,
                                     float *scaling, int *has_scaling) {
    FILE *f;
    size_t file_size = 0;
    llmc_status st = open_for_read(path, &f, &file_size);
    if (st != LLMC_OK) return st;
    int32_t h[HEADER_INTS];
    if ((st = read_header(f, path, file_size, h)) != LLMC_OK) goto done;
    if (h[0] != OPTIMIZER_MAGIC || h[1] < 1 || h[1] > OPTIMIZER_VERSION) {
        st = llmc_error(LLMC_ERR_FORMAT,
                        "'%s' is not an llmc optimizer file: magic %d version %d, expected %d "
                        "version 1..%d", path, h[0], h[1], OPTIMIZER_MAGIC, OPTIMIZER_VERSION);
        goto done;
    }
    /* the scaling state: none, or exactly what this model holds (skipped by a
     * model that has none, such as a bf16 one resuming an FP8 run) */
    const size_t file_scaling = h[1] >= 2 ? (size_t)(uint32_t)h[10] : 0;
    if (file_scaling != 0 && n_scaling != 0 && file_scaling != n_scaling) {
        st = llmc_error(LLMC_ERR_FORMAT, "'%s' holds %zu floats of FP8 scaling state, but this model "
                        "has %zu", path, file_scaling, n_scaling);
        goto done;
    }
    llmc_config c = header_get_config(h);
    if (memcmp(&c, config, sizeof c) != 0) {
        st = llmc_error(LLMC_ERR_FORMAT,
                        "'%s' holds optimizer state for L=%d H=%d C=%d V=%d maxT=%d (family %d, "
                        "KV heads %d, MLP %d, tied %d), but the model is L=%d H=%d C=%d V=%d "
                        "maxT=%d (family %d, KV heads %d, MLP %d, tied %d)", path, c.num_layers,
                        c.num_heads, c.channels, c.padded_vocab_size, c.max_seq_len, c.family,
                        c.num_kv_heads, c.ffn_hidden, !c.untied_head, config->num_layers,
                        config->num_heads, config->channels, config->padded_vocab_size,
                        config->max_seq_len, config->family, config->num_kv_heads,
                        config->ffn_hidden, !config->untied_head);
        goto done;
    }
    /* n <= LLMC_PARAM_LIMIT (the model exists), so this cannot wrap */
    size_t expected = HEADER_BYTES + (2 * n + file_scaling) * sizeof(float);
    if (file_size != expected) {
        st = llmc_error(LLMC_ERR_FORMAT, "'%s' is %zu bytes, expected exactly %zu (truncated or "
                        "corrupted?)", path, file_size, expected);
        goto done;
    }
    *step = (int64_t)(((uint64_t)(uint32_t)h[9] << 32) | (uint32_t)h[8]);
    if (*step < 0 || *step >= LLMC_STEP_LIMIT) {
        st = llmc_error(LLMC_ERR_FORMAT, "'%s': step count %lld, expected 0..%lld", path,
                        (long long)*step, (long long)LLMC_STEP_LIMIT - 1);
        goto done;
    }
    if ((st = read_moment(f, path, config, "first moment of ", 0, mom1)) != LLMC_OK) goto done;
    if ((st = read_moment(f, path, config, "second moment of ", 1, mom2)) != LLMC_OK) goto done;
    *has_scaling = file_scaling != 0 && n_scaling != 0;
    if (!*has_scaling) goto done;
    if (fread(scaling, sizeof(float), n_scaling, f) != n_scaling) {
        st = read_failed(f, path);
        goto done;
    }
    for (size_t i = 0; i < n_scaling; i++)
        if (!isfinite(scaling[i]) || scaling[i] < 0.0f) {
            st = llmc_error(LLMC_ERR_FORMAT, "'%s': FP8 scaling state element %zu is %g, expected a "
                            "finite value >= 0", path, i, scaling[i]);
            goto done;
        }
done:
    fclose(f);
    return st;
}

/* ---- atomic writing ------------------------------------------------------- */

typedef struct {
    FILE *f;
    char tmp[4096];
    const char *path;
} atomic_file;

/* The temporary file is PATH.tmp.<16 random hex digits> (as pyllmc's
 * write_atomic names its own), created new: O_EXCL|O_NOFOLLOW, so a file,
 * symlink or FIFO planted under a name is never written through; the name is
 * unpredictable, so planting one cannot make the write fail either (a clash
 * draws a new name). */
#define ATOMIC_NAME_TRIES 8

static llmc_status atomic_open(atomic_file *a, const char *path) {
    a->path = path;
    for (int attempt = 0; attempt < ATOMIC_NAME_TRIES; attempt++) {
        uint64_t r;
        if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
            return llmc_error(LLMC_ERR_IO, "cannot draw a temporary name for '%s': %s", path,
                              strerror(errno));
        int len = snprintf(a->tmp, sizeof a->tmp, "%s.tmp.%016llx", path, (unsigned long long)r);
        if (len < 0 || (size_t)len >= sizeof a->tmp)
            return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "path too long: '%s'", path);
        llmc_status st = open_regular(a->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, "wb",
                                      "write", &a->f, NULL);
        if (st == LLMC_OK || errno != EEXIST) return st;
    }
    return llmc_error(LLMC_ERR_IO, "cannot create a temporary file beside '%s': %d random names "
                      "were all taken", path, ATOMIC_NAME_TRIES);
}

static llmc_status atomic_write(atomic_file *a, const void *data, size_t size, size_t count) {
    if (fwrite(data, size, count, a->f) != count)
        return llmc_error(LLMC_ERR_IO, "writing '%s' failed: %s", a->tmp, strerror(errno));
    return LLMC_OK;
}

/* On success the data is durable under a->path; on failure (or when status
 * is already a failure) the temporary file is removed and the target is
 * untouched. */
static llmc_status atomic_close(atomic_file *a, llmc_status status) {
    if (status == LLMC_OK && (fflush(a->f) != 0 || fsync(fileno(a->f)) != 0))
        status = llmc_error(LLMC_ERR_IO, "writing '%s' failed: %s", a->tmp, strerror(errno));
    if (fclose(a->f) != 0 && status == LLMC_OK)
        status = llmc_error(LLMC_ERR_IO, "writing '%s' failed: %s", a->tmp, strerror(errno));
    if (status == LLMC_OK && rename(a->tmp, a->path) != 0)
        status = llmc_error(LLMC_ERR_IO, "cannot rename '%s' to '%s': %s", a->tmp, a->path,
                            strerror(errno));
    if (status != LLMC_OK) {
        unlink(a->tmp);
        return status;
    }
    /* make the rename itself durable */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", a->path);
    int fd = open(dirname(dir), O_RDONLY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    return LLMC_OK;
}

/* n values of src (zeros when src is NULL) as fp32 or bf16. */
static llmc_status write_values(atomic_file *a, const float *src, size_t n, llmc_dtype dtype,
                                uint16_t *chunk) {
    static const float zeros[1024];
    llmc_status st = LLMC_OK;
    for (size_t done = 0; st == LLMC_OK && done < n;) {
        size_t k = n - done < LLMC_CHUNK_FLOATS ? n - done : LLMC_CHUNK_FLOATS;
        if (src == NULL && k > 1024) k = 1024;
        const float *x = src ? src + done : zeros;
        if (dtype == LLMC_DTYPE_FP32) {
            st = atomic_write(a, x, sizeof(float), k);
        } else {
            for (size_t i = 0; i < k; i++) chunk[i] = float_to_bf16(x[i]);
            st = atomic_write(a, chunk, sizeof(uint16_t), k);
        }
        done += k;
    }
    return st;
}

/* Llama's tensors in llm.c's layout: the real vocabulary rows, the output
 * layer always (wte's rows when tied), zero biases. */
static llmc_status write_llama_tensors(atomic_file *a, const llmc_config *c, const float *params,
                                       llmc_dtype dtype, uint16_t *chunk) {
    size_t sizes[LLMC_NUM_PARAM_TENSORS], offsets[LLMC_NUM_PARAM_TENSORS], total;
    size_t counts[LLMC_NUM_PARAM_TENSORS];
    llmc_param_layout(c, sizes, offsets, &total);
    llama_file_counts(c, counts);
    llmc_status st = LLMC_OK;
    for (int t = 0; st == LLMC_OK && t < LLMC_NUM_PARAM_TENSORS; t++) {
        const int from = t == P_LMHEAD ? llmc_head_tensor(c) : t;
        st = write_values(a, sizes[from] ? params + offsets[from] : NULL, counts[t], dtype, chunk);
    }
    return st;
}

llmc_status llmc_write_model_file(const char *path, const llmc_config *config, const float *params,
                                  size_t n, llmc_dtype dtype) {
    const int llama = llmc_is_llama(config);
    int32_t h[HEADER_INTS] = {0};
    float hf[HEADER_INTS] = {0};
    h[0] = llama ? LLAMA_MAGIC : MODEL_MAGIC;
    h[1] = dtype == LLMC_DTYPE_BF16 ? MODEL_VERSION_BF16 : MODEL_VERSION_FP32;
    if (llama) llama_header_put_config(h, hf, config);
    else header_put_config(h, config);
    uint16_t *chunk = malloc(LLMC_CHUNK_FLOATS * sizeof(uint16_t));
    if (chunk == NULL) return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory writing '%s'", path);
    atomic_file a;
    llmc_status st = atomic_open(&a, path);
    if (st != LLMC_OK) {
        free(chunk);
        return st;
    }
    st = atomic_write(&a, h, sizeof(int32_t), HEADER_INTS);
    if (st == LLMC_OK && llama) st = atomic_write(&a, hf, sizeof(float), HEADER_INTS);
    if (st == LLMC_OK) st = llama ? write_llama_tensors(&a, config, params, dtype, chunk)
                                  : write_values(&a, params, n, dtype, chunk);
    free(chunk);
    return atomic_close(&a, st);
}

llmc_status llmc_write_optimizer_file(const char *path, const llmc_config *config, int64_t step,
                                      const float *mom1, const float *mom2, size_t n,
                                      const float *scaling, size_t n_scaling) {
    int32_t h[HEADER_INTS] = {0};
    h[0] = OPTIMIZER_MAGIC;
    h[1] = OPTIMIZER_VERSION;
    header_put_config(h, config);
    h[8] = (int32_t)(uint32_t)((uint64_t)step & 0xffffffffu);
    h[9] = (int32_t)(uint32_t)((uint64_t)step >> 32);
    h[10] = (int32_t)(uint32_t)n_scaling;
    atomic_file a;
    llmc_status st = atomic_open(&a, path);
    if (st != LLMC_OK) return st;
    st = atomic_write(&a, h, sizeof(int32_t), HEADER_INTS);
    if (st == LLMC_OK) st = atomic_write(&a, mom1, sizeof(float), n);
    if (st == LLMC_OK) st = atomic_write(&a, mom2, sizeof(float), n);
    if (st == LLMC_OK && n_scaling) st = atomic_write(&a, scaling, sizeof(float), n_scaling);
    return atomic_close(&a, st);
}
