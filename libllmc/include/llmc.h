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
#define LLMC_ABI_VERSION 3

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
    /* Data-parallel training (see "Distributed mode" below). world_size 0:
     * this process alone, no communication library is touched. world_size
     * >= 1: this process is rank `rank` (0..world_size-1) of a run whose
     * ranks each hold a copy of the model; on CUDA device_index is the
     * rank's local GPU. */
    int32_t rank;
    int32_t world_size;
    int32_t zero_stage;        /* 0: every rank keeps the whole AdamW state; 1: ZeRO-1,
                                * the fp32 master weights (CUDA) and both AdamW moments
                                * are split across the ranks */
    int32_t comm_timeout_s;    /* a collective that makes no progress for this long fails
                                * with LLMC_ERR_DEVICE instead of hanging (0: 300 s) */
    /* CUDA with world_size >= 1: the NCCL unique id made by llmc_nccl_unique_id
     * on rank 0 and handed to every rank by the caller (a TCP or file
     * rendezvous); all zero: the library sends it from rank 0 over MPI. */
    uint8_t nccl_id[128];
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

typedef enum llmc_reduce_op {
    LLMC_REDUCE_SUM = 0,
    LLMC_REDUCE_MAX = 1,
    LLMC_REDUCE_MIN = 2,
} llmc_reduce_op;

/*
 * Distributed mode (options.world_size >= 1).
 *
 * Every rank creates its model with the same config, seed and options
 * except rank (and device_index). The CPU backend talks over MPI (the
 * plugin libllmc_mpi.so beside this library, built when an MPI compiler
 * wrapper is found; the process must be started by mpirun, srun or another
 * MPI launcher); the CUDA backend over NCCL (libnccl.so.2, loaded when first
 * needed). A process that never asks for world_size >= 1 never loads either.
 *
 * Collective calls: in distributed mode these must be made by every rank, in
 * the same order, or they wait for the missing rank until comm_timeout_s:
 *   llmc_init, llmc_init_from_file, llmc_backward, llmc_update, llmc_step,
 *   llmc_get_parameters, llmc_set_parameters, llmc_save, llmc_save_optimizer,
 *   llmc_load_optimizer, llmc_allreduce, llmc_free.
 * llmc_eval, llmc_logits and llmc_get_gradients are local to the rank.
 *
 * A step: each rank passes its own share of the global batch to
 * llmc_backward; the loss is the mean over the counted targets of all ranks,
 * and the gradients are summed across ranks (the reduction overlaps the
 * backward pass on CUDA), so every rank ends with the same gradients and,
 * after llmc_update, the same weights: the step equals one process's step
 * over the whole batch, up to the order of floating-point additions, and
 * repeats bit for bit for a given world size.
 *
 * Files: llmc_save and llmc_save_optimizer gather onto rank 0, which alone
 * writes (the same single file a one-process run writes, so a run can resume
 * on any number of ranks); llmc_load_optimizer is read by rank 0 and handed
 * out. With zero_stage 1 on CUDA, llmc_get_parameters and llmc_save gather
 * the split master weights through the gradient memory, so gradients not yet
 * applied by llmc_update are lost.
 */

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

/* Collective: combines n doubles across the ranks in place (every rank gets
 * the result). In a model without distributed mode it leaves them as they
 * are. The trainer reduces validation losses and HellaSwag counts with it. */
LLMC_API llmc_status llmc_allreduce(llmc_model *model, double *values, size_t n,
                                    llmc_reduce_op op);

/* A fresh NCCL unique id (128 bytes) for options.nccl_id, made on rank 0
 * and sent to the other ranks by the caller. LLMC_ERR_UNSUPPORTED when the
 * CUDA backend or NCCL is missing. */
LLMC_API llmc_status llmc_nccl_unique_id(uint8_t out[128]);

/* Bytes of device (CUDA) or host (CPU, all tiers) memory a model of this
 * config and these options would hold per rank for training, from the same
 * plan llmc_init allocates, without allocating anything. */
LLMC_API llmc_status llmc_plan_memory(const llmc_config *config, const llmc_options *options,
                                      size_t *bytes_out);

/* Bytes the model holds now: device memory on CUDA (all planned at init),
 * host memory on CPU (gradients and activations for training are allocated
 * by the first llmc_backward, AdamW moments by the first update). */
LLMC_API size_t llmc_memory_bytes(const llmc_model *model);

#ifdef __cplusplus
}
#endif
#endif /* LLMC_H */
