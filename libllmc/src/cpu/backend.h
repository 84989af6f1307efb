/*
 * backend.h: the CPU backend's state, shared by the memory and entry points
 * (backend.c) and each family's forward and backward composition (GPT-2 in
 * backend.c, Llama in llama.c). Internal to libllmc/src/cpu.
 */
#ifndef LLMC_CPU_BACKEND_H
#define LLMC_CPU_BACKEND_H

#include <stdint.h>

#include "../model.h"

/* Activations of one transformer block for the planned batch (N = B*T rows). */
typedef struct {
    float *ln1, *ln1_mean, *ln1_rstd; /* (N, C), (N), (N); RMSNorm: no mean */
    float *qkv;                       /* (N, 3C); Llama (N, (NH + 2 NKV) hs) after RoPE */
    float *att;                       /* (B, NH, T, T) softmax probabilities */
    float *atty;                      /* (N, C) the heads' outputs */
    float *res2;                      /* (N, C) residual stream after attention */
    float *ln2, *ln2_mean, *ln2_rstd;
    float *fch;                       /* (N, 4C); Llama (N, 2F) up and gate */
    float *fch_act;                   /* (N, 4C) GELU; Llama (N, F) SwiGLU */
    float *res3;                      /* (N, C) residual stream after the MLP */
} block_acts;

/* One aligned allocation carved into named buffers. */
typedef struct {
    float *mem;
    size_t bytes;
} arena;

typedef struct {
    int threads;

    arena params_mem;
    float *param[LLMC_NUM_PARAM_TENSORS]; /* each tensor inside params_mem */

    /* forward activations */
    arena acts_mem;
    int stored_blocks;    /* 1 (shared by every block) before training, L after */
    block_acts *blocks;   /* stored_blocks of them */
    float *encoded;       /* (N, C) */
    float *lnf, *lnf_mean, *lnf_rstd;
    float *rope_cos, *rope_sin; /* Llama: (max_seq_len, hs/2) */
    float *losses;        /* (N) */
    float *logits;        /* (chunk rows, V) */
    float *head_rows;     /* (chunk rows, C) counted rows gathered for eval's LM head */

    /* training state */
    arena grads_mem;
    float *grad[LLMC_NUM_PARAM_TENSORS];
    float *dres, *dln, *datty, *dqkv, *dfch; /* one block's activation gradients */
    float *dact;                             /* Llama: (N, F) the SwiGLU output's */
    float *att_scratch;                      /* per thread, see attention_backward */
    arena moments_mem;
    float *mom1, *mom2; /* the whole vector, or this rank's shard with ZeRO-1 */
} cpu_state;

/* The block whose activations serve layer l (one shared before training). */
static inline const block_acts *block_at(const cpu_state *s, int l) {
    return &s->blocks[s->stored_blocks == 1 ? 0 : l];
}

/* The residual stream entering block l. */
static inline const float *block_input(const cpu_state *s, int l) {
    return l == 0 ? s->encoded : block_at(s, l - 1)->res3;
}

/* llama.c: the forward pass up to the final RMSNorm (s->lnf) for B x T
 * tokens, and one micro-batch's backward (gradients accumulate; returns the
 * loss sum), as backend.c's GPT-2 forward and backward_micro. */
void llama_forward(llmc_model *m, const int32_t *tokens, int B, int T);
double llama_backward_micro(llmc_model *m, const int32_t *tokens, const int32_t *targets, int B,
                            int T, float dloss);

#endif /* LLMC_CPU_BACKEND_H */
