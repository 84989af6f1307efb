/*
 * llmc.h: the whole public C API of libllmc.
 *
 * libllmc holds one model of a family (GPT-2 or Llama 3: weights, gradients,
 * AdamW state and the activation memory for a planned batch shape) behind an
 * opaque handle and trains it. Every function returns an llmc_status; on failure
 * llmc_last_error() gives a message naming the problem. The library never
 * exits or aborts on anything a caller can get wrong.
 *
 * Model files are llm.c's formats (GPT-2: magic 20240326, Llama 3: magic
 * 20240803 of llm.c's llama3 branch; version 3 = fp32, version 5 = bf16), so
 * checkpoints move freely between llm.c and llmc.
 *
 * Typical use (tests/c_api_example.c runs exactly this, with B = 2, T = 16
 * and inputs/targets of B*T token ids; `make test` builds and runs it):
 *   llmc_config cfg = {.max_seq_len = 64, .vocab_size = 256, .padded_vocab_size = 0,
 *                      .num_layers = 2, .num_heads = 2, .channels = 32};
 *   llmc_options opt = llmc_default_options();
 *   opt.max_batch_size = B; opt.max_seq_len = T;
 *   llmc_model *m;
 *   llmc_status st = llmc_init(&cfg, &opt, &m);
 *   if (st != LLMC_OK) return fail("llmc_init", st);
 *   llmc_adamw hp = llmc_default_adamw(); hp.lr = 1e-2f;
 *   float loss, norm;
 *   for (int step = 0; step < 20; step++) {
 *       st = llmc_step(m, inputs, targets, 1, B, T, &hp, &loss, &norm);
 *       if (st != LLMC_OK) return fail("llmc_step", st);
 *   }
 *   st = llmc_save(m, path, LLMC_DTYPE_FP32);
 *   if (st != LLMC_OK) return fail("llmc_save", st);
 *   llmc_free(m);
 * where fail() prints llmc_status_string(st) and llmc_last_error().
 *
 * The contract, for every function below unless its comment says otherwise:
 *  - Ownership: the caller owns every pointer it passes and keeps it valid
 *    for the call only; the library keeps none of them. A model handle is
 *    owned by the caller from llmc_init/llmc_init_from_file until
 *    llmc_free. Strings returned (llmc_last_error, llmc_status_string) belong
 *    to the library.
 *  - NULL: a NULL model, config, path or required output is refused with
 *    LLMC_ERR_INVALID_ARGUMENT; outputs documented "may be NULL" are skipped.
 *  - Failure: on any status other than LLMC_OK, outputs hold unspecified
 *    values (a *out handle is set to NULL), and the model is unchanged and
 *    usable, except where a comment says what a failed call leaves.
 *  - Threads: calls on one model may come from any threads; they run one at
 *    a time (each holds the model's lock for its whole call). Calls on
 *    different models run in parallel. llmc_free must not race with any
 *    other call on the same handle (the caller guarantees that no call is in
 *    flight; pyllmc.Model does). Functions without a model are thread-safe.
 *  - Files: paths name regular files; a FIFO, device or directory is refused
 *    before any read that could block. Loaded files are checked completely
 *    (sizes exact, every weight and moment finite) before they change a
 *    model.
 *  - Limits: every dimension 1..2^24, at most 2^38 parameters,
 *    max_batch_size x max_seq_len at most 2^24 tokens (the CPU backend also
 *    keeps each activation tensor under 2^31 elements; the CUDA backend's
 *    attention needs T >= 2 per call: T = 1 is LLMC_ERR_UNSUPPORTED, though
 *    a model planned at max_seq_len 1 initialises), step counts below 2^53;
 *    memory is checked against what the host can give before it is
 *    allocated, so a plan too big fails with LLMC_ERR_OUT_OF_MEMORY.
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

/* Bumped whenever a signature or struct below changes; pyllmc checks it.
 * 4: llmc_status_string; reserved options must be zero.
 * 5: llmc_options.precision (taken from the reserved words); generation
 *    (llmc_generator, llmc_sampling, llmc_token_event); llmc_config's model
 *    family (Llama 3) fields. */
#define LLMC_ABI_VERSION 5

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

/* Arithmetic of the training step (llmc_options.precision).
 * DEFAULT: fp32 on the CPU; on CUDA bf16 weights, activations and products.
 * FP8 (CUDA, GPUs of compute capability 9.0 or newer): the four matrix
 * products of every block (qkv, attention projection, fc, fc projection),
 * forward and both backward products, take FP8 operands through cuBLASLt:
 * inputs and weights E4M3, output gradients E5M2, each tensor with its own
 * power-of-two scale, fp32 accumulation. Scales are delayed: a step uses
 * the largest magnitudes of the 16 steps before it (a model's first step
 * scales from its current tensors); a tensor that jumps above its history
 * saturates at the format's largest value for that step. While training,
 * the LM head's three products are FP8 too (its weight and input scaled from
 * their current largest magnitudes, the logits' gradients E4M3 scaled from
 * the loss's scale, their bound); evaluation and logits keep a bf16 head.
 * Embeddings, attention, the norms, RoPE, the activations (GELU, SwiGLU) and
 * the loss stay bf16, and the master weights and AdamW moments fp32, so
 * model files are the same as in bf16. Both families (GPT-2 and Llama).
 * Without ZeRO-1 the block weights are kept in E4M3 only (no bf16 copy):
 * a generator (llmc_generator_create) rounds bf16 ones from the masters
 * when it is created, so generation sees the weights as they were when the
 * latest generator was created.
 * The scaling state is part of the optimizer file (llmc_save_optimizer), so
 * a resumed FP8 run is bit-exact. FP8 needs every block product's widths
 * (channels, the qkv width, the MLP widths: GPT-2's 4C, Llama's 2F and F)
 * multiples of 16, and FP8 training B*T a multiple of 16. On the CPU
 * backend or an older GPU, FP8 is LLMC_ERR_UNSUPPORTED. */
typedef enum llmc_precision {
    LLMC_PRECISION_DEFAULT = 0,
    LLMC_PRECISION_FP8 = 1,
} llmc_precision;

typedef enum llmc_dtype {
    LLMC_DTYPE_FP32 = 0, /* llm.c version 3 */
    LLMC_DTYPE_BF16 = 1, /* llm.c version 5 */
} llmc_dtype;

typedef enum llmc_family {
    LLMC_FAMILY_GPT2 = 0,  /* LayerNorm, learned positions, GELU MLP, biases, tied head */
    LLMC_FAMILY_LLAMA = 1, /* Llama 3 as transformers' LlamaForCausalLM: RMSNorm, RoPE,
                            * grouped-query attention, SwiGLU MLP, no biases */
} llmc_family;

/* Model shape. The first six fields are llm.c's GPT-2 checkpoint header; the
 * rest describe the family and are all zero for GPT-2 (a config written
 * before they existed, zero-filled, is the same GPT-2). For Llama a zero
 * field takes the default in its comment when a model is created, and
 * llmc_get_config returns the filled-in value. */
typedef struct llmc_config {
    int32_t max_seq_len;       /* GPT-2: learned positions; Llama: longest sequence */
    int32_t vocab_size;        /* e.g. 50257 */
    int32_t padded_vocab_size; /* vocab_size rounded up (0 in llmc_init: to a multiple of 128) */
    int32_t num_layers;
    int32_t num_heads;
    int32_t channels;          /* must be divisible by num_heads */
    int32_t family;            /* llmc_family */
    int32_t num_kv_heads;      /* Llama: key/value heads, dividing num_heads (0: num_heads) */
    int32_t ffn_hidden;        /* Llama: SwiGLU hidden size (0: 8C/3 rounded up to 256) */
    int32_t untied_head;       /* Llama: 1 = the output layer has its own weights, 0 = wte's */
    float rope_theta;          /* Llama: RoPE base (0: 10000) */
    float norm_eps;            /* Llama: RMSNorm epsilon (0: 1e-5) */
    /* Llama 3.1's RoPE frequency scaling: factor 0 = none; else all four set
     * (Llama 3.1: 8, 1, 4, 8192; Llama 3.2: 32, 1, 4, 8192) */
    float rope_scaling_factor;
    float rope_low_freq_factor;
    float rope_high_freq_factor;
    int32_t rope_original_max_seq_len;
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
    int32_t precision;         /* llmc_precision (0: the backend's default) */
    int32_t reserved[7];       /* must be zero (LLMC_ERR_INVALID_ARGUMENT otherwise) */
} llmc_options;

/* AdamW hyper-parameters of one optimizer step. Weight decay applies to the
 * 2-D weights only (wte, wpe or Llama's output layer, and the four matmul
 * weights of each block).
 * All must be finite: 0 <= lr <= 1e30, 0 <= beta1, beta2 < 1, eps > 0,
 * weight_decay >= 0; grad_clip <= 0 disables clipping. */
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

/* LLMC_ABI_VERSION of the built library. */
LLMC_API int llmc_abi_version(void);
/* Thread-local message of the last failed call on this thread (never NULL;
 * valid until this thread's next call into the library). */
LLMC_API const char *llmc_last_error(void);
/* A short static name of a status ("invalid argument", ...; "unknown
 * status" for a value outside the enum). Never NULL. */
LLMC_API const char *llmc_status_string(llmc_status status);
/* 1 when the CUDA backend was built in and a GPU is visible. The first call
 * (from any thread) loads the CUDA plugin. */
LLMC_API int llmc_cuda_available(void);

/* Defaults to start from (CPU, max_batch_size 4, seed 42, every other field
 * zero); set fields on the copy. */
LLMC_API llmc_options llmc_default_options(void);
LLMC_API llmc_adamw llmc_default_adamw(void);
/* "d12", "d24", "d36", "d48" (GPT-2 124M, 350M, 774M, 1558M), "llama-124m"
 * (a Llama of GPT-2 124M's size on GPT-2's vocabulary), "llama3.2-1b",
 * "llama3.2-3b", "llama3.1-8b" (those models' shapes) into *out; an unknown
 * name is LLMC_ERR_INVALID_ARGUMENT and *out is unchanged. */
LLMC_API llmc_status llmc_config_preset(const char *name, llmc_config *out);

/* The shape in a model file's header, checked (with the file's size) as
 * llmc_init_from_file checks it, without reading the weights. *out is
 * written only on success. */
LLMC_API llmc_status llmc_read_config(const char *path, llmc_config *out);

/* A fresh model with GPT-2's random init (N(0, 0.02), residual projections
 * scaled by 1/sqrt(2L), norms 1, biases 0; the same for Llama), deterministic
 * for options->seed.
 * options NULL: llmc_default_options(). *out gets the handle (NULL on
 * failure, when nothing stays allocated). */
LLMC_API llmc_status llmc_init(const llmc_config *config, const llmc_options *options,
                               llmc_model **out);
/* A model from an llm.c-format file (fp32 or bf16), streamed into the
 * backend a chunk at a time (no whole host copy). The file must be exactly
 * header + parameters long and every weight finite: else LLMC_ERR_FORMAT
 * naming the tensor, layer and element. *out as for llmc_init. */
LLMC_API llmc_status llmc_init_from_file(const char *path, const llmc_options *options,
                                         llmc_model **out);
/* Frees the model and everything it holds; NULL is a no-op. Must not race
 * with any other call on the same handle (see "Threads" above). */
LLMC_API void llmc_free(llmc_model *model);

/* The model's shape and options (max_seq_len filled in), fixed at creation. */
LLMC_API llmc_status llmc_get_config(const llmc_model *model, llmc_config *out);
LLMC_API llmc_status llmc_get_options(const llmc_model *model, llmc_options *out);
/* Number of floats in the parameter vector (padded vocabulary included);
 * 0 for a NULL model. */
LLMC_API size_t llmc_num_parameters(const llmc_model *model);
/* Optimizer steps taken so far (restored by llmc_load_optimizer); 0 for a
 * NULL model. */
LLMC_API int64_t llmc_step_count(const llmc_model *model);

/*
 * One optimizer step over micro_steps micro-batches of B x T tokens each.
 * inputs/targets hold micro_steps*B*T int32 token ids, micro-batch major.
 * A target of -1 is ignored (no loss, no gradient). loss_out receives the
 * mean loss over all counted targets before the update, grad_norm_out the
 * global gradient norm before clipping. Either output may be NULL.
 * The hyper-parameters are checked before anything runs. On failure during
 * the update (LLMC_ERR_NUMERIC: non-finite gradient norm) the weights are
 * unchanged and the gradients stay (as after llmc_backward).
 */
LLMC_API llmc_status llmc_step(llmc_model *model, const int32_t *inputs, const int32_t *targets,
                               int micro_steps, int B, int T, const llmc_adamw *hp,
                               float *loss_out, float *grad_norm_out);

/* Forward and backward without an update: leaves the gradients of the mean
 * loss in the model (read them with llmc_get_gradients). loss_out may be
 * NULL. Bad arguments change nothing; a failure in the pass itself leaves
 * no gradients (llmc_update then refuses). The CUDA backend launches each
 * micro-step after a shape's first as one CUDA graph (the same kernels, the
 * same results); the environment variable LLMC_CUDA_GRAPHS=0, read when a
 * model is made, launches them one by one. */
LLMC_API llmc_status llmc_backward(llmc_model *model, const int32_t *inputs,
                                   const int32_t *targets, int micro_steps, int B, int T,
                                   float *loss_out);

/* The AdamW update for the gradients left by llmc_backward (clipped to
 * hp->grad_clip). If their norm is not finite nothing changes and
 * LLMC_ERR_NUMERIC is returned, so a caller can skip a bad step. */
LLMC_API llmc_status llmc_update(llmc_model *model, const llmc_adamw *hp, float *grad_norm_out);

/* Loss without gradients. per_token_losses (B*T floats, may be NULL) gets
 * each position's loss (0 where the target is -1); mean_loss_out may be
 * NULL. Leaves the gradients and weights as they were. A loss that is not
 * finite (finite weights too large for the input) is LLMC_ERR_NUMERIC. */
LLMC_API llmc_status llmc_eval(llmc_model *model, const int32_t *inputs, const int32_t *targets,
                               int B, int T, float *mean_loss_out, float *per_token_losses);

/* Logits over the real vocabulary (vocab_size, not the padded size).
 * last_only = 0: out holds B*T*vocab_size floats; 1: B*vocab_size, the last
 * position of each row only (for sampling). out must not be NULL. */
LLMC_API llmc_status llmc_logits(llmc_model *model, const int32_t *inputs, int B, int T,
                                 int last_only, float *out);

/* Parameters, gradients, in llm.c's tensor order, as one fp32 vector of
 * llmc_num_parameters() floats. Llama holds, in that order: wte (Vp, C), the
 * output layer (Vp, C; in wpe's place, as llm.c's llama3 files; absent when
 * tied), and per layer ln1w, qkvw ((NH + 2 NKV) hs rows: q, k, v), attprojw,
 * ln2w, fcw (2F rows: the up projection, then the gate), fcprojw, then lnfw;
 * no biases. q and k rows are in Meta's order (RoPE rotates the pairs 2i,
 * 2i+1 of a head), as llm.c's files; transformers' order differs by a
 * permutation within each head (pyllmc.hf converts). For the CUDA backend these are the fp32
 * master weights. llmc_set_parameters drops gradients not yet applied and
 * does not check the values (a caller may set anything); a failed
 * set_parameters on CUDA may leave the weights partly written. */
LLMC_API llmc_status llmc_get_parameters(llmc_model *model, float *out);
LLMC_API llmc_status llmc_set_parameters(llmc_model *model, const float *params);
LLMC_API llmc_status llmc_get_gradients(llmc_model *model, float *out);

/* Model file in llm.c's format, written atomically (temp file "<path>.tmp.<pid>",
 * fsync, rename, folder fsync): on failure the old file (if any) is intact
 * and the temporary file removed. Needs a host copy of the parameters. */
LLMC_API llmc_status llmc_save(llmc_model *model, const char *path, llmc_dtype dtype);

/* AdamW state (first and second moments, step count; with FP8, the scaling
 * state too), for exact resume. A file written by a bf16 model loads into an
 * FP8 one (whose next step then scales from its current tensors) and the
 * other way round (the scaling state is skipped).
 * Written atomically (as llmc_save). Loading checks that the file matches
 * this model's shape exactly, that every moment is finite, every second
 * moment >= 0 and the step count in 0..2^53-1 (LLMC_ERR_FORMAT naming the
 * tensor and element otherwise), before it changes the model. Both need
 * two host vectors of llmc_num_parameters() floats. */
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
LLMC_API size_t llmc_memory_bytes(const llmc_model *model); /* 0 for NULL */

/*
 * Generation.
 *
 * An llmc_generator holds a key/value cache for up to max_sequences
 * sequences of up to max_len tokens each (prompt and generated tokens
 * together), planned and allocated at creation: asking for more than the
 * device (or host) can hold is LLMC_ERR_OUT_OF_MEMORY then, never later.
 * Sequences come and go independently: llmc_generator_start prefills the
 * prompts of new sequences into free slots (any lengths, while others are
 * running), and each step of llmc_generator_run samples one token for every
 * live sequence from the logits of its newest token, then runs one forward
 * pass over all of them (a batch of one row per sequence) through the cache.
 * Sampling runs in the library: temperature, top-k and top-p (in that order,
 * as Hugging Face's samplers), the random draw a pure function of the
 * sequence's seed and the token's index, so a sequence's tokens depend on
 * its prompt, sampling settings and seed alone, not on what else runs in
 * the batch (up to the rounding of batched products: a near-tie between two
 * tokens can go either way between batch shapes; on CUDA, steps of up to 8
 * sequences round alike whatever the batch).
 *
 * On CUDA, a step whose sequences are all greedy picks its tokens on the
 * device (only tokens and log-probabilities come back): the same argmax
 * (the lowest id on a tie) as the host's for finite logits, the
 * log-probability the same up to float rounding; any sampled sequence in
 * the step sends every row's logits to the host, sampled there.
 *
 * A generator uses its model (the weights at each call: changing them in
 * between leaves the cache holding keys of the old weights) and must be
 * freed before it. Its calls take the model's lock, like every call on the
 * model; one generator's calls must not race with each other's free.
 *
 * Typical use, streaming (the Python package wraps exactly this):
 *   llmc_generator *g;
 *   llmc_generator_create(model, 8, 0, &g);
 *   llmc_sampling s = llmc_default_sampling(); s.max_new_tokens = 100;
 *   int32_t id;
 *   llmc_generator_start(g, 1, prompt, &prompt_len, &s, &id);
 *   llmc_token_event ev[8 * 16];
 *   int n;
 *   do { llmc_generator_run(g, 16, ev, 8 * 16, &n); ... print ev[0..n) ... } while (n > 0);
 *   llmc_generator_free(g);
 */
typedef struct llmc_generator llmc_generator;

/* <|endoftext|> of GPT-2's tokenizer. */
#define LLMC_GPT2_EOT 50256

/* How one sequence is sampled. */
typedef struct llmc_sampling {
    float temperature;      /* 0: greedy (the likeliest token; the lowest id on a tie); else > 0 */
    int32_t top_k;          /* keep the k likeliest tokens (0: all) */
    float top_p;            /* keep the likeliest tokens whose probabilities sum to >= top_p
                             * (0 < top_p <= 1; 1: all) */
    uint64_t seed;          /* the sequence's random draws */
    int32_t max_new_tokens; /* >= 1: the sequence ends after this many tokens */
    int32_t stop_token;     /* the sequence ends after emitting it; -1: none */
} llmc_sampling;

/* Why a token event ends its sequence (llmc_token_event.finish). */
typedef enum llmc_finish {
    LLMC_FINISH_NONE = 0,     /* the sequence goes on */
    LLMC_FINISH_STOP = 1,     /* this token is stop_token */
    LLMC_FINISH_BUDGET = 2,   /* max_new_tokens reached */
    LLMC_FINISH_LENGTH = 3,   /* the sequence (prompt included) holds max_len tokens */
    LLMC_FINISH_CANCELLED = 4 /* never in an event: see llmc_generator_cancel */
} llmc_finish;

/* One generated token. */
typedef struct llmc_token_event {
    int32_t sequence; /* the id llmc_generator_start gave the sequence */
    int32_t token;
    float logprob;    /* log-probability of token under the model (temperature 1, before
                       * top-k/top-p), whatever the sampling settings */
    int32_t finish;   /* an llmc_finish: not 0 for the sequence's last token */
} llmc_token_event;

/* temperature 1, top_k 0, top_p 1, seed 0, max_new_tokens 256,
 * stop_token LLMC_GPT2_EOT. */
LLMC_API llmc_sampling llmc_default_sampling(void);

/* Bytes a generator for max_sequences x max_len (0: the model's
 * max_seq_len) would allocate, without allocating: its cache and scratch
 * (device memory on CUDA) plus its host buffers (logits, sampling). */
LLMC_API llmc_status llmc_generator_plan_memory(llmc_model *model, int max_sequences, int max_len,
                                                size_t *bytes_out);
/* A generator for up to max_sequences (>= 1) sequences at once of up to
 * max_len tokens each (2..the model's config.max_seq_len; 0: all of it).
 * Local to the rank in distributed mode. *out as for llmc_init. */
LLMC_API llmc_status llmc_generator_create(llmc_model *model, int max_sequences, int max_len,
                                           llmc_generator **out);
/* Frees the generator; NULL is a no-op. */
LLMC_API void llmc_generator_free(llmc_generator *gen);

/* Starts n sequences: prompt i is lengths[i] (1..max_len - 1) tokens of
 * `tokens` (the prompts one after another), sampled by sampling[i]. Their
 * prompts are prefilled into the cache now (all but the last token, which
 * the next step runs); ids_out[i] (n ints) gets each sequence's id, its slot
 * 0..max_sequences-1, free for a later start once the sequence finished.
 * Every argument is checked before anything starts: too few free slots is
 * LLMC_ERR_INVALID_ARGUMENT and starts none. */
LLMC_API llmc_status llmc_generator_start(llmc_generator *gen, int n, const int32_t *tokens,
                                          const int32_t *lengths, const llmc_sampling *sampling,
                                          int32_t *ids_out);
/* Runs up to max_steps steps (>= 1), each giving one event per live
 * sequence (in id order), written to events (capacity entries, at least
 * max_sequences); stops early when no sequence is live or when the next
 * step's events would not fit. *n_events gets the number written (0: none
 * was live). A sequence's last event has finish != 0; its slot is free after
 * it. On an error the live sequences stay as they were before the step that
 * failed (the events of the steps before it are written and counted). */
LLMC_API llmc_status llmc_generator_run(llmc_generator *gen, int max_steps,
                                        llmc_token_event *events, int capacity, int *n_events);
/* Ends a live sequence now (no event), freeing its slot: a client that went
 * away. An id that is not live is LLMC_ERR_INVALID_ARGUMENT. */
LLMC_API llmc_status llmc_generator_cancel(llmc_generator *gen, int32_t id);
/* Live sequences (0 for NULL). */
LLMC_API int llmc_generator_live(llmc_generator *gen);
/* Bytes the generator holds: its cache and scratch (0 for NULL). */
LLMC_API size_t llmc_generator_memory_bytes(llmc_generator *gen);

#ifdef __cplusplus
}
#endif
#endif /* LLMC_H */
