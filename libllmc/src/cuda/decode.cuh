/*
 * decode.cuh: generation on the CUDA backend: what decode.cu takes from
 * backend.cu, the key/value cache kernels (kvcache.cu) and the greedy
 * choice (greedy.cu).
 */
#ifndef LLMC_CUDA_DECODE_CUH
#define LLMC_CUDA_DECODE_CUH

#include "matmul.cuh"

extern const llmc_decode_ops cuda_decode_ops;

/* The model's bf16 weights and the stream and cuBLASLt context its work
 * runs on; the model's device is made current. */
struct cuda_weights {
    cudaStream_t stream;
    mm_ctx *mm;
    const bf16 *tensor[LLMC_NUM_PARAM_TENSORS]; /* layer 0's slice of each */
    size_t layer_stride[LLMC_NUM_PARAM_TENSORS]; /* elements between layers (0: whole tensor) */
};
/* The weights every generator call reads (and the CUDA device made current);
 * cuda_decode_round_weights, called when a generator is made, first rounds
 * the bf16 block weights that FP8 training does not keep (backend.cu). */
llmc_status cuda_decode_weights(llmc_model *m, cuda_weights *out);
llmc_status cuda_decode_round_weights(llmc_model *m);

/* kvcache.cu. Rows are single tokens: row i is position pos[i] of sequence
 * slot slot[i]; a qkv row is (NH + 2 NKV) hs wide: queries, keys, values.
 * One layer's cache: keys and values (S, NKV, T, hs) bf16. */
/* x[i] = wte[tokens[i]] + wpe[pos[i]] (GPT-2). */
void decode_embed(bf16 *x, const int *tokens, const int *pos, const bf16 *wte, const bf16 *wpe,
                  int n, int C, cudaStream_t s);
/* The keys and values of qkv's n rows into the cache. */
void kv_store(bf16 *keys, bf16 *values, const bf16 *qkv, const int *slot, const int *pos, int n,
              int NH, int NKV, int hs, int T, cudaStream_t s);
/* out (n, NH hs): each row's queries (in qkv) over positions 0..pos[i] of
 * its slot, query head h over key/value head h / (NH / NKV); fp32 softmax
 * and sums. hs <= 128, a multiple of 8. Scratch: partial, n NH
 * ATTN_MAX_SPLITS (hs + 2) floats; done, n NH ints, zero before the first
 * call (each call leaves them zero). With store (rows of distinct slots
 * only), each row's key and value also go into the cache, as kv_store;
 * without, they must be there already. */
#define ATTN_MAX_SPLITS 16  // position ranges per (row, head) at most
void attention_cached(bf16 *out, float *partial, int *done, const bf16 *qkv, bf16 *keys,
                      bf16 *values, const int *slot, const int *pos, int n, int NH, int NKV,
                      int hs, int T, bool store, cudaStream_t s);

/* greedy.cu: for each of n rows of logits (Vp apart, the first V counted):
 * the argmax (the lowest id on a tie) and its log-probability; with next_pos
 * and next_tok (not NULL), row i's position next_pos[i] is advanced by one
 * and its token next_tok[i] becomes the argmax: the next step's rows. */
struct greedy_pick {
    int token;
    float logprob;
};
void greedy_rows(greedy_pick *out, const float *logits, int n, int V, int Vp, int *next_pos,
                 int *next_tok, cudaStream_t s);

#endif
