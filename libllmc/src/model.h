/*
 * model.h: the handle behind llmc_model and the interface every backend
 * (CPU, CUDA) implements. Internal; not installed.
 *
 * The API layer (api.c) validates every argument, owns the config, options,
 * step counter and file I/O, and calls a backend only with values that are
 * in range. A backend owns its memory (weights, gradients, AdamW moments,
 * activations planned for options.max_batch_size x options.max_seq_len).
 */
#ifndef LLMC_MODEL_H
#define LLMC_MODEL_H

#include <pthread.h>

#include "error.h"
#include "llmc.h"

#define LLMC_NUM_PARAM_TENSORS 16

/* llm.c's tensor order; every weight is (out, in), each tensor whole across layers. */
enum {
    P_WTE,      /* (Vp, C) */
    P_WPE,      /* (maxT, C) */
    P_LN1W,     /* (L, C) */
    P_LN1B,     /* (L, C) */
    P_QKVW,     /* (L, 3C, C) */
    P_QKVB,     /* (L, 3C) */
    P_ATTPROJW, /* (L, C, C) */
    P_ATTPROJB, /* (L, C) */
    P_LN2W,     /* (L, C) */
    P_LN2B,     /* (L, C) */
    P_FCW,      /* (L, 4C, C) */
    P_FCB,      /* (L, 4C) */
    P_FCPROJW,  /* (L, C, 4C) */
    P_FCPROJB,  /* (L, C) */
    P_LNFW,     /* (C) */
    P_LNFB,     /* (C) */
};
/* Llama (llmc_config.family) keeps the same order with its own shapes
 * (llmc.h, llmc_get_parameters): the biases, lnfb and (tied) the output
 * layer are empty; an untied output layer takes wpe's slot, as in llm.c's
 * llama3 files. */
#define P_LMHEAD P_WPE

typedef struct llmc_backend llmc_backend;

/* Generation with a key/value cache (generate.c drives it; llmc.h's
 * llmc_generator). The cache holds every layer's keys and values for S
 * sequence slots of up to T positions; a forward runs up to R rows, each one
 * token of one slot. A model family's decode is one composition per backend
 * (cpu/decode.c, cuda/decode.cu); adding a family adds a composition. */
typedef struct llmc_decode_ops {
    /* Bytes create would allocate (m->impl is set: the model exists). */
    llmc_status (*plan_bytes)(const llmc_model *m, int S, int T, int R, size_t *bytes);
    llmc_status (*create)(llmc_model *m, int S, int T, int R, void **cache);
    void (*destroy)(llmc_model *m, void *cache);
    /* n rows (1..R): token tokens[i] at position pos[i] of slot slot[i].
     * Each row's keys and values are written into the cache, then each row
     * attends over positions 0..pos[i] of its slot (earlier calls' rows or
     * this call's); rows of one slot come in position order. The logits
     * (vocab_size floats) of rows out_rows[0..n_out) go to consecutive rows
     * of logits (host memory). With `greedy`, logits may be NULL: they stay
     * in the backend for the call to greedy that must follow. */
    llmc_status (*forward)(llmc_model *m, void *cache, int n, const int32_t *slot,
                           const int32_t *pos, const int32_t *tokens, int n_out,
                           const int32_t *out_rows, float *logits);
    /* Optional (NULL: the generator allocates its own). Host memory for the
     * logits of S rows (S x vocab_size floats), owned by the cache, that
     * forward copies into fastest (CUDA: page-locked). */
    float *(*host_logits)(void *cache);
    /* Optional (NULL: every row is sampled on the host). After a forward of
     * n_out logit rows given logits NULL: events[i].token = row i's argmax
     * (the lowest id on a tie, as generate.c's sample() for finite logits)
     * and events[i].logprob its log-probability (sample()'s formula, float
     * rounding apart), i < n_out. With `more`, the next forward is likely
     * one of the same rows, each one position on, its token the pick: the
     * backend may start that step before it returns, and use it if that
     * forward asks for exactly those rows, with the same weights
     * (m->weights_version); any other forward gives its own results. */
    llmc_status (*greedy)(llmc_model *m, void *cache, int n_out, int more,
                          llmc_token_event *events);
} llmc_decode_ops;

struct llmc_model {
    llmc_config config;           /* padded_vocab_size always set */
    llmc_options options;         /* max_seq_len always set (<= config.max_seq_len) */
    const llmc_backend *backend;
    void *impl;                   /* the backend's own state */
    size_t param_sizes[LLMC_NUM_PARAM_TENSORS]; /* floats per tensor */
    size_t param_offsets[LLMC_NUM_PARAM_TENSORS];
    size_t num_params;
    int64_t step;                 /* optimizer steps taken */
    int has_grads;                /* gradients of a finished backward are held */
    uint64_t weights_version;     /* changes with every call that may change the weights */
    /* Taken by every API entry that reads or changes the model, so calls
     * from several threads run one at a time. */
    pthread_mutex_t lock;
};

/* Fills param_sizes/offsets/num_params from config; 0 (outputs undefined)
 * if a size does not fit in size_t, else 1. */
int llmc_param_layout(const llmc_config *c, size_t sizes[LLMC_NUM_PARAM_TENSORS],
                      size_t offsets[LLMC_NUM_PARAM_TENSORS], size_t *total);
/* llm.c's name of a parameter tensor of c's family ("wte", "ln1w", ...,
 * "lm_head" for Llama's output layer). */
const char *llmc_param_name(const llmc_config *c, int tensor);
/* The tensor the LM head reads: the output layer, or wte when tied. */
int llmc_head_tensor(const llmc_config *c);
/* 1 for the tensors stacked across layers (ln1w..fcprojb), else 0. */
int llmc_param_is_per_layer(int tensor);
/* 1 for the tensors AdamW decays (the 2-D weights), else 0. */
int llmc_param_is_decayed(int tensor);

/* Pieces in which parameters travel from the host (a file, the random
 * initialisation) into a backend, and in which files are converted. */
#define LLMC_CHUNK_FLOATS ((size_t)1 << 20)
/* Values of elements start..start+count-1 of parameter tensor `tensor`. */
typedef llmc_status (*llmc_param_source)(void *ctx, const llmc_model *m, int tensor, size_t start,
                                         size_t count, float *out);
/* Fills m's parameters from source, LLMC_CHUNK_FLOATS at a time, then calls
 * the backend's params_written (api.c). */
llmc_status llmc_fill_params(llmc_model *m, llmc_param_source source, void *ctx);

struct llmc_backend {
    const char *name;
    /* Allocate all memory for m->config and m->options into m->impl. */
    llmc_status (*create)(llmc_model *m);
    void (*destroy)(llmc_model *m);

    /* Parameters are written a piece at a time (so a file streams into the
     * backend without a whole host copy): elements start..start+count-1 of
     * parameter tensor `tensor`, then params_written once all are in. */
    llmc_status (*write_params)(llmc_model *m, int tensor, size_t start, size_t count,
                                const float *src);
    llmc_status (*params_written)(llmc_model *m);
    /* Whole fp32 parameter vector in llm.c order (num_params floats). */
    llmc_status (*get_params)(llmc_model *m, float *out);
    llmc_status (*get_grads)(llmc_model *m, float *out);
    /* AdamW moments, num_params floats each. set_opt_state is called after
     * m->step has been restored. */
    llmc_status (*set_opt_state)(llmc_model *m, const float *mom1, const float *mom2);
    llmc_status (*get_opt_state)(llmc_model *m, float *mom1, float *mom2);

    /* Zero the gradients, then for each micro-step run forward and backward
     * with dloss = loss_scale for every target != -1, accumulating gradients.
     * *loss_sum gets the sum of the counted per-token losses. */
    llmc_status (*backward)(llmc_model *m, const int32_t *inputs, const int32_t *targets,
                            int micro_steps, int B, int T, float loss_scale, double *loss_sum);
    /* Global gradient norm of the current gradients (before clipping). */
    llmc_status (*grad_norm)(llmc_model *m, float *norm);
    /* One AdamW update with gradients scaled by grad_scale (clipping), bias
     * correction for step t (1-based; m->step == t after this returns). */
    llmc_status (*update)(llmc_model *m, const llmc_adamw *hp, float grad_scale, int64_t t);
    /* Per-token losses (B*T floats, 0 where target == -1), no gradients. */
    llmc_status (*eval)(llmc_model *m, const int32_t *inputs, const int32_t *targets, int B, int T,
                        float *per_token_losses);
    /* Logits over vocab_size columns: B*T rows, or B rows if last_only. */
    llmc_status (*logits)(llmc_model *m, const int32_t *inputs, int B, int T, int last_only,
                          float *out);
    size_t (*memory_bytes)(const llmc_model *m);

    /* Distributed mode (options.world_size >= 1); see llmc.h. The backend
     * reduces the gradients across ranks inside backward; get_params and
     * get_opt_state may be given NULL on ranks other than 0 (they only take
     * part in the gather), set_opt_state gets the moments on rank 0 only
     * (NULL elsewhere) and hands them out. */
    llmc_status (*allreduce)(llmc_model *m, double *values, size_t n, llmc_reduce_op op);
    /* Bytes the training plan of m->config and m->options holds per rank
     * (m->impl is NULL: nothing is allocated). */
    llmc_status (*plan_bytes)(const llmc_model *m, size_t *bytes);

    /* FP8 scaling state, saved with the optimizer state (NULL entries: a
     * backend without). scaling_floats: floats of state (0: none); get
     * copies it onto rank 0 (out NULL elsewhere); set takes rank 0's copy
     * (NULL elsewhere), or with present 0 starts the state afresh. */
    size_t (*scaling_floats)(const llmc_model *m);
    llmc_status (*get_scaling)(llmc_model *m, float *out);
    llmc_status (*set_scaling)(llmc_model *m, const float *state, int present);

    /* Generation; NULL when the backend has none. */
    const llmc_decode_ops *decode;
};

extern const llmc_backend llmc_cpu_backend;
/* NULL when the library was built without CUDA. */
const llmc_backend *llmc_cuda_backend_get(void);

/* Runs `call` (an expression) with the model's lock held and returns its
 * value: the body of an API function (api.c, generate.c). */
#define LOCKED(m, type, call)                                     \
    do {                                                          \
        pthread_mutex_t *lock_ = (pthread_mutex_t *)&(m)->lock;   \
        pthread_mutex_lock(lock_);                                \
        type result_ = (call);                                    \
        pthread_mutex_unlock(lock_);                              \
        return result_;                                           \
    } while (0)

#endif /* LLMC_MODEL_H */
