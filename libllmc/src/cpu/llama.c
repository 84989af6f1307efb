/*
 * llama.c: the Llama forward and backward passes on the CPU backend, over
 * the kernels of layers.h, in the buffers backend.c plans for the family
 * (backend.h). A block, pre-norm, no biases:
 *   h = x + attproj(attention(rope(qkv(rmsnorm1(x)))))   grouped-query
 *   y = h + fcproj(swiglu(fc(rmsnorm2(h))))
 * and the head reads rmsnorm_f of the last block's output.
 */
#include <string.h>

#include "../config.h"
#include "backend.h"
#include "layers.h"

void llama_forward(llmc_model *m, const int32_t *tokens, int B, int T) {
    cpu_state *s = m->impl;
    const llmc_config *c = &m->config;
    const int L = c->num_layers, C = c->channels, NH = c->num_heads, NKV = c->num_kv_heads;
    const int N = B * T, hs = C / NH, QKV = (int)llmc_qkv_width(c), F = c->ffn_hidden;
    const float eps = c->norm_eps;
    float **p = s->param;
    encoder_forward(s->encoded, tokens, p[P_WTE], NULL, B, T, C);
    for (int l = 0; l < L; l++) {
        const block_acts *a = block_at(s, l);
        /* with one stored block, x is a->res3 of the block before: consumed
         * by rmsnorm1 and the attention residual before res3 is rewritten */
        const float *x = block_input(s, l);
        const size_t lC = (size_t)l * C;
        rmsnorm_forward(a->ln1, a->ln1_rstd, x, p[P_LN1W] + lC, N, C, eps);
        matmul_forward(a->qkv, a->ln1, p[P_QKVW] + lC * QKV, NULL, NULL, N, C, QKV);
        rope_rotate(a->qkv, s->rope_cos, s->rope_sin, B, T, NH, NKV, hs, 0);
        attention_forward(a->atty, a->att, a->qkv, B, T, C, NH, NKV);
        matmul_forward(a->res2, a->atty, p[P_ATTPROJW] + lC * C, NULL, x, N, C, C);
        rmsnorm_forward(a->ln2, a->ln2_rstd, a->res2, p[P_LN2W] + lC, N, C, eps);
        matmul_forward(a->fch, a->ln2, p[P_FCW] + lC * 2 * F, NULL, NULL, N, C, 2 * F);
        swiglu_forward(a->fch_act, a->fch, N, F);
        matmul_forward(a->res3, a->fch_act, p[P_FCPROJW] + lC * F, NULL, a->res2, N, F, C);
    }
    rmsnorm_forward(s->lnf, s->lnf_rstd, block_input(s, L), p[P_LNFW], N, C, eps);
}

double llama_backward_micro(llmc_model *m, const int32_t *tokens, const int32_t *targets, int B,
                            int T, float dloss) {
    cpu_state *s = m->impl;
    const llmc_config *c = &m->config;
    const int L = c->num_layers, C = c->channels, NH = c->num_heads, NKV = c->num_kv_heads;
    const int N = B * T, hs = C / NH, QKV = (int)llmc_qkv_width(c), F = c->ffn_hidden;
    const int V = c->vocab_size, head = llmc_head_tensor(c);
    float **p = s->param, **g = s->grad;
    llama_forward(m, tokens, B, T);
    /* the head's input gradient goes to dln, its weight gradient to the
     * output layer's (or wte's, tied) */
    classifier_forward_backward(s->losses, s->dln, g[head], s->logits, s->lnf, p[head], targets, N,
                                C, V, dloss);
    double loss_sum = 0.0;
    for (int i = 0; i < N; i++) loss_sum += s->losses[i];

    /* dres is the gradient of the residual stream, carried down the blocks */
    memset(s->dres, 0, (size_t)N * C * sizeof(float));
    rmsnorm_backward(s->dres, g[P_LNFW], s->dln, block_input(s, L), p[P_LNFW], s->lnf_rstd, N, C);
    for (int l = L - 1; l >= 0; l--) {
        const block_acts *a = block_at(s, l);
        const size_t lC = (size_t)l * C;
        /* y = h + fcproj(swiglu(fc(rmsnorm2(h)))) */
        matmul_backward(s->dact, g[P_FCPROJW] + lC * F, NULL, s->dres, a->fch_act,
                        p[P_FCPROJW] + lC * F, N, F, C);
        swiglu_backward(s->dfch, s->dact, a->fch, N, F);
        matmul_backward(s->dln, g[P_FCW] + lC * 2 * F, NULL, s->dfch, a->ln2, p[P_FCW] + lC * 2 * F,
                        N, C, 2 * F);
        rmsnorm_backward(s->dres, g[P_LN2W] + lC, s->dln, a->res2, p[P_LN2W] + lC, a->ln2_rstd, N, C);
        /* h = x + attproj(attention(rope(qkv(rmsnorm1(x))))) */
        matmul_backward(s->datty, g[P_ATTPROJW] + lC * C, NULL, s->dres, a->atty,
                        p[P_ATTPROJW] + lC * C, N, C, C);
        attention_backward(s->dqkv, s->att_scratch, s->datty, a->qkv, a->att, B, T, C, NH, NKV);
        rope_rotate(s->dqkv, s->rope_cos, s->rope_sin, B, T, NH, NKV, hs, 1);
        matmul_backward(s->dln, g[P_QKVW] + lC * QKV, NULL, s->dqkv, a->ln1, p[P_QKVW] + lC * QKV,
                        N, C, QKV);
        rmsnorm_backward(s->dres, g[P_LN1W] + lC, s->dln, block_input(s, l), p[P_LN1W] + lC,
                         a->ln1_rstd, N, C);
    }
    encoder_backward(g[P_WTE], NULL, s->dres, tokens, B, T, C);
    return loss_sum;
}
