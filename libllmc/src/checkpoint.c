/*
 * checkpoint.c: model files in llm.c's format and llmc's AdamW state files.
 *
 * Model file: 256 int32 header (magic 20240326; version 3 = fp32, 5 = bf16;
 * max_seq_len, vocab_size, num_layers, num_heads, channels,
 * padded_vocab_size), then the 16 tensors in llm.c's order.
 * Optimizer file: 256 int32 header (magic 20261121, version 2, the same six
 * shape fields, step as two int32 halves, the number of scaling-state
 * floats), then the first and second moments as fp32 vectors, then the FP8
 * scaling state (none for bf16 models). Version 1 (no scaling state, its
 * header word 10 unused) still loads.
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
#define MODEL_VERSION_FP32 3
#define MODEL_VERSION_BF16 5
#define OPTIMIZER_MAGIC 20261121
#define OPTIMIZER_VERSION 2 /* 1: without the scaling-state count and data */

static void header_put_config(int32_t *h, const llmc_config *c) {
    h[2] = c->max_seq_len;
    h[3] = c->vocab_size;
    h[4] = c->num_layers;
    h[5] = c->num_heads;
    h[6] = c->channels;
    h[7] = c->padded_vocab_size;
}

static llmc_config header_get_config(const int32_t *h) {
    llmc_config c = {h[2], h[3], h[7], h[4], h[5], h[6]};
    return c;
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
                          vector, llmc_param_name(tensor), where, what, index,
                          nonneg ? " (expected finite and >= 0)" : " (expected finite)");
    }
    return LLMC_OK;
}

/* Checks a model file's header and size; *bytes_per is 4 (fp32) or 2 (bf16). */
static llmc_status read_model_header(FILE *f, const char *path, size_t file_size, llmc_config *config,
                                     size_t *bytes_per) {
    int32_t h[HEADER_INTS];
    llmc_status st = read_header(f, path, file_size, h);
    if (st != LLMC_OK) return st;
    if (h[0] != MODEL_MAGIC)
        return llmc_error(LLMC_ERR_FORMAT, "'%s' is not an llm.c model file: magic %d, expected %d",
                          path, h[0], MODEL_MAGIC);
    if (h[1] != MODEL_VERSION_FP32 && h[1] != MODEL_VERSION_BF16)
        return llmc_error(LLMC_ERR_FORMAT, "'%s': model file version %d, expected 3 (fp32) or 5 (bf16)",
                          path, h[1]);
    *config = header_get_config(h);
    if (config->padded_vocab_size == 0) /* zero would mean "choose one" to llmc_config_check */
        return llmc_error(LLMC_ERR_FORMAT, "'%s': padded_vocab_size = 0 in the header", path);
    if ((st = llmc_config_check(config, path, LLMC_ERR_FORMAT)) != LLMC_OK) return st;
    size_t sizes[LLMC_NUM_PARAM_TENSORS], offsets[LLMC_NUM_PARAM_TENSORS], num_params;
    llmc_param_layout(config, sizes, offsets, &num_params); /* fits: llmc_config_check said so */
    *bytes_per = h[1] == MODEL_VERSION_FP32 ? 4 : 2;
    /* num_params <= LLMC_PARAM_LIMIT, so this cannot wrap */
    size_t expected = HEADER_BYTES + num_params * *bytes_per;
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
} file_source;

static llmc_status file_values(void *ctx, const llmc_model *m, int tensor, size_t start,
                               size_t count, float *out) {
    file_source *src = ctx;
    llmc_status st = read_values(src->mf->f, src->mf->path, src->mf->bytes_per, out, count,
                                 src->scratch);
    return st != LLMC_OK ? st
                         : check_values(src->mf->path, "", &m->config, tensor, m->param_sizes[tensor],
                                        start, out, count, 0);
}

llmc_status llmc_read_model_params(llmc_model_file *mf, llmc_model *m) {
    file_source src = {mf, malloc(LLMC_CHUNK_FLOATS * sizeof(uint16_t))};
    llmc_status st = src.scratch == NULL
                         ? llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory reading '%s'", mf->path)
                         : llmc_fill_params(m, file_values, &src);
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
                        "'%s' holds optimizer state for L=%d H=%d C=%d V=%d maxT=%d, but the model is "
                        "L=%d H=%d C=%d V=%d maxT=%d", path, c.num_layers, c.num_heads, c.channels,
                        c.padded_vocab_size, c.max_seq_len, config->num_layers, config->num_heads,
                        config->channels, config->padded_vocab_size, config->max_seq_len);
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

llmc_status llmc_write_model_file(const char *path, const llmc_config *config, const float *params,
                                  size_t n, llmc_dtype dtype) {
    int32_t h[HEADER_INTS] = {0};
    h[0] = MODEL_MAGIC;
    h[1] = dtype == LLMC_DTYPE_BF16 ? MODEL_VERSION_BF16 : MODEL_VERSION_FP32;
    header_put_config(h, config);
    atomic_file a;
    llmc_status st = atomic_open(&a, path);
    if (st != LLMC_OK) return st;
    st = atomic_write(&a, h, sizeof(int32_t), HEADER_INTS);
    if (st == LLMC_OK && dtype == LLMC_DTYPE_FP32) {
        st = atomic_write(&a, params, sizeof(float), n);
    } else if (st == LLMC_OK) {
        uint16_t *chunk = malloc(LLMC_CHUNK_FLOATS * sizeof(uint16_t));
        if (chunk == NULL) st = llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory writing '%s'", path);
        for (size_t done = 0; st == LLMC_OK && done < n;) {
            size_t k = n - done < LLMC_CHUNK_FLOATS ? n - done : LLMC_CHUNK_FLOATS;
            for (size_t i = 0; i < k; i++) chunk[i] = float_to_bf16(params[done + i]);
            st = atomic_write(&a, chunk, sizeof(uint16_t), k);
            done += k;
        }
        free(chunk);
    }
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
