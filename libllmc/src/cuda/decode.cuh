/*
 * decode.cuh: generation on the CUDA backend: what decode.cu takes from
 * backend.cu, the key/value cache kernels (kvcache.cu) and the greedy
 * choice (greedy.cu).
 */
#ifndef LLMC_CUDA_DECODE_CUH
#define LLMC_CUDA_DECODE_CUH

#include "matmul.cuh"

extern const llmc_decode_ops cuda_decode_ops;

/* The model's bf16 weights: at(tensor, l) is layer l's slice of a tensor. */
struct weight_table {
    const bf16 *tensor[LLMC_NUM_PARAM_TENSORS]; /* layer 0's slice of each */
    size_t layer_stride[LLMC_NUM_PARAM_TENSORS]; /* elements between layers (0: whole tensor) */
    __host__ __device__ const bf16 *at(int t, int l = 0) const {
        return tensor[t] + (size_t)l * layer_stride[t];
    }
};
/* The model's bf16 weights and the stream and cuBLASLt context its work
 * runs on; the model's device is made current. */
struct cuda_weights {
    cudaStream_t stream;
    mm_ctx *mm;
    weight_table table;
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
__device__ __forceinline__ void embed_slice(bf16 *x, const int *tokens, const int *pos,
                                            const bf16 *wte, const bf16 *wpe, int i, int c, int C) {
    const Vec16<bf16> a = load16(wte + (size_t)tokens[i] * C + c);
    const Vec16<bf16> p = load16(wpe + (size_t)pos[i] * C + c);
    Vec16<bf16> o;
    for (int k = 0; k < 8; k++)
        o.v[k] = __float2bfloat16(__bfloat162float(a.v[k]) + __bfloat162float(p.v[k]));
    store16(x + (size_t)i * C + c, o);
}
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

/* decode_step.cu: a GPT-2 step of n <= GEMV_MAX_ROWS rows (distinct slots,
 * the logits of every row) as one persistent kernel: embedding, every layer
 * (keys and values into the cache as attention_cached with store) and the
 * LM head's fp32 logits (n, Vp). The rows' results do not depend on n.
 * Scratch: partial, n NH max_ranges (hs + 2) floats with max_ranges >=
 * ceil(T / 32); done as attention_cached's; sync, one word, zeroed by
 * decode_step before its launch. */
struct step_args {
    int n, C, NH, hs, T, L, Vp, max_ranges;
    float eps;
    const int *slot, *pos, *tok;
    bf16 *x, *qkv, *atty, *fch, *keys, *values;  // x (n, C), qkv (n, 3C), atty (n, C), fch (n, 4C)
    size_t layer_kv;                             // elements of a layer's keys (or values)
    float *partial, *logits;
    int *done;
    unsigned *sync;
    weight_table weights;
};
/* Whether this device and model can run decode_step for up to max_n rows:
 * sm_90 or newer with cooperative launches, C and hs multiples of 8, hs <= 64,
 * max_n rows of 4C in shared memory, every weight row 16-byte aligned. */
bool decode_step_fits(const step_args &a, int max_n);
#define STEP_RANGE 32  // positions of an attention item of decode_step
llmc_status decode_step(const step_args &a, cudaStream_t s);

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
