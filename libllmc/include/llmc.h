/*
 * llmc.h: the whole public C API of libllmc.
 *
 * libllmc holds one GPT-2 model (weights, gradients, AdamW state and the
 * activation memory for a planned batch shape) behind an opaque handle and
 * trains it. Every function returns an llmc_status; on failure
 * llmc_last_error() gives a message naming the problem. The library never
 * exits or aborts on anything a caller can get wrong.
 *
 * Model files are llm.c's format (magic 20240326; version 3 = fp32,
 * version 5 = bf16), so checkpoints move freely between llm.c and llmc.
 *
 * Typical use:
 *   llmc_options opt = llmc_default_options();
 *   opt.max_batch_size = 4; opt.max_seq_len = 256;
 *   llmc_config cfg; llmc_config_preset("d12", &cfg);
 *   llmc_model *m;
 *   if (llmc_init(&cfg, &opt, &m) != LLMC_OK) puts(llmc_last_error());
 *   llmc_adamw hp = llmc_default_adamw(); hp.lr = 6e-4f;
 *   float loss, norm;
 *   llmc_step(m, inputs, targets, 1, 4, 256, &hp, &loss, &norm);
 *   llmc_save(m, "model.bin", LLMC_DTYPE_FP32);
 *   llmc_free(m);
 */
#ifndef LLMC_H
#define LLMC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define LLMC_API __declspec(dllexport)
#else
#define LLMC_API __attribute__((visibility("default")))
#endif

/* Bumped whenever a signature or struct below changes; pyllmc checks it. */
#define LLMC_ABI_VERSION 2

typedef enum llmc_status {
    LLMC_OK = 0,
    LLMC_ERR_INVALID_ARGUMENT = 1, /* a value the caller passed is out of range */
    LLMC_ERR_IO = 2,               /* a file could not be opened, read or written */
    LLMC_ERR_FORMAT = 3,           /* a file is not what it claims to be */
    LLMC_ERR_OUT_OF_MEMORY = 4,    /* host or device memory ran out */
    LLMC_ERR_UNSUPPORTED = 5,      /* not built in (e.g. no CUDA backend) */
    LLMC_ERR_DEVICE = 6,           /* the accelerator reported an error */
    LLMC_ERR_NUMERIC = 7,          /* a non-finite loss or gradient norm */
} llmc_status;

typedef enum llmc_device {
    LLMC_DEVICE_CPU = 0,
    LLMC_DEVICE_CUDA = 1,
} llmc_device;

typedef enum llmc_dtype {
    LLMC_DTYPE_FP32 = 0, /* llm.c version 3 */
    LLMC_DTYPE_BF16 = 1, /* llm.c version 5 */
} llmc_dtype;

/* Model shape; the same fields as llm.c's checkpoint header. */
typedef struct llmc_config {
    int32_t max_seq_len;       /* learned positions, e.g. 1024 */
    int32_t vocab_size;        /* e.g. 50257 */
    int32_t padded_vocab_size; /* vocab_size rounded up (0 in llmc_init: to a multiple of 128) */
    int32_t num_layers;
    int32_t num_heads;
    int32_t channels;          /* must be divisible by num_heads */
} llmc_config;

/* How a model is placed and how much activation memory is planned. */
typedef struct llmc_options {
    llmc_device device;
    int32_t device_index;      /* which GPU for LLMC_DEVICE_CUDA */
    int32_t max_batch_size;    /* B the activations are planned for (default 4) */
    int32_t max_seq_len;       /* T planned; 0 = the model's max_seq_len */
    uint64_t seed;             /* weight init and stochastic rounding */
    int32_t num_threads;       /* CPU threads; 0 = all cores */
    int32_t recompute;         /* CUDA: 0 none, 1 recompute GELU, 2 also LayerNorm */
    int32_t reserved[8];       /* zero */
} llmc_options;

/* AdamW hyper-parameters of one optimizer step. Weight decay applies to the
 * 2-D weights only (wte, wpe and the four matmul weights of each block).
 * grad_clip <= 0 disables clipping. */
typedef struct llmc_adamw {
    float lr;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;
    float grad_clip;
} llmc_adamw;

typedef struct llmc_model llmc_model;

LLMC_API int llmc_abi_version(void);
/* Thread-local message of the last failed call on this thread. */
LLMC_API const char *llmc_last_error(void);
/* 1 when the CUDA backend was built in and a GPU is visible. */
LLMC_API int llmc_cuda_available(void);

LLMC_API llmc_options llmc_default_options(void);
LLMC_API llmc_adamw llmc_default_adamw(void);
/* "d12", "d24", "d36", "d48" (GPT-2 124M, 350M, 774M, 1558M). */
LLMC_API llmc_status llmc_config_preset(const char *name, llmc_config *out);

/* The shape in a model file's header, checked (with the file's size) as
 * llmc_init_from_file checks it, without reading the weights. */
LLMC_API llmc_status llmc_read_config(const char *path, llmc_config *out);

/* A fresh model with GPT-2's random init, deterministic for options->seed. */
LLMC_API llmc_status llmc_init(const llmc_config *config, const llmc_options *options,
                               llmc_model **out);
/* A model from an llm.c-format file (fp32 or bf16). */
LLMC_API llmc_status llmc_init_from_file(const char *path, const llmc_options *options,
                                         llmc_model **out);
LLMC_API void llmc_free(llmc_model *model);

LLMC_API llmc_status llmc_get_config(const llmc_model *model, llmc_config *out);
LLMC_API llmc_status llmc_get_options(const llmc_model *model, llmc_options *out);
/* Number of floats in the parameter vector (padded vocabulary included). */
LLMC_API size_t llmc_num_parameters(const llmc_model *model);
/* Optimizer steps taken so far (restored by llmc_load_optimizer). */
LLMC_API int64_t llmc_step_count(const llmc_model *model);

/*
 * One optimizer step over micro_steps micro-batches of B x T tokens each.
 * inputs/targets hold micro_steps*B*T int32 token ids, micro-batch major.
 * A target of -1 is ignored (no loss, no gradient). loss_out receives the
 * mean loss over all counted targets before the update, grad_norm_out the
 * global gradient norm before clipping. Either output may be NULL.
 */
LLMC_API llmc_status llmc_step(llmc_model *model, const int32_t *inputs, const int32_t *targets,
                               int micro_steps, int B, int T, const llmc_adamw *hp,
                               float *loss_out, float *grad_norm_out);

/* Forward and backward without an update: leaves the gradients of the mean
 * loss in the model (read them with llmc_get_gradients). */
LLMC_API llmc_status llmc_backward(llmc_model *model, const int32_t *inputs,
                                   const int32_t *targets, int micro_steps, int B, int T,
                                   float *loss_out);

/* The AdamW update for the gradients left by llmc_backward (clipped to
 * hp->grad_clip). If their norm is not finite nothing changes and
 * LLMC_ERR_NUMERIC is returned, so a caller can skip a bad step. */
LLMC_API llmc_status llmc_update(llmc_model *model, const llmc_adamw *hp, float *grad_norm_out);

/* Loss without gradients. per_token_losses (B*T floats, may be NULL) gets
 * each position's loss (0 where the target is -1). */
LLMC_API llmc_status llmc_eval(llmc_model *model, const int32_t *inputs, const int32_t *targets,
                               int B, int T, float *mean_loss_out, float *per_token_losses);

/* Logits over the real vocabulary (vocab_size, not the padded size).
 * last_only = 0: out holds B*T*vocab_size floats; 1: B*vocab_size, the last
 * position of each row only (for sampling). */
LLMC_API llmc_status llmc_logits(llmc_model *model, const int32_t *inputs, int B, int T,
                                 int last_only, float *out);

/* Parameters, gradients, in llm.c's tensor order, as one fp32 vector of
 * llmc_num_parameters() floats. For the CUDA backend these are the fp32
 * master weights. */
LLMC_API llmc_status llmc_get_parameters(llmc_model *model, float *out);
LLMC_API llmc_status llmc_set_parameters(llmc_model *model, const float *params);
LLMC_API llmc_status llmc_get_gradients(llmc_model *model, float *out);

/* Model file in llm.c's format, written atomically (temp file, fsync, rename). */
LLMC_API llmc_status llmc_save(llmc_model *model, const char *path, llmc_dtype dtype);

/* AdamW state (first and second moments, step count), for exact resume.
 * Written atomically; loading checks it matches this model's shape. */
LLMC_API llmc_status llmc_save_optimizer(llmc_model *model, const char *path);
LLMC_API llmc_status llmc_load_optimizer(llmc_model *model, const char *path);

/* Bytes the model holds now: device memory on CUDA (all planned at init),
 * host memory on CPU (gradients and activations for training are allocated
 * by the first llmc_backward, AdamW moments by the first update). */
LLMC_API size_t llmc_memory_bytes(const llmc_model *model);

#ifdef __cplusplus
}
#endif
#endif /* LLMC_H */
