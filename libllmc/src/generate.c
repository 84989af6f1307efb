/*
 * generate.c: llmc_generator (llmc.h, "Generation"): sequence slots over a
 * backend's key/value cache (model.h's llmc_decode_ops), prefill, the step
 * loop and sampling, all on the host in C so that a caller is never called
 * per token.
 *
 * A live slot holds its tokens in the cache but the newest one (`pending`):
 * a step runs every live slot's pending token as one row of one forward
 * pass, samples the next token from that row's logits, and makes it the new
 * pending token unless the sequence ends. A sequence of max_len tokens (its
 * prompt included) ends, so its last cache position is never written. A prompt of P tokens is P - 1
 * prefilled rows then one step row, so a sequence's last token never costs
 * a forward pass.
 */
#define _GNU_SOURCE /* qsort_r */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "cpu/layers.h" /* vec_expf */
#include "model.h"

/* Rows of one prefill forward at least (more when max_sequences is larger):
 * enough for the products to run at full speed, small beside the cache. */
#define PREFILL_ROWS 256
/* Candidates top-p ranks (without top-k); when its nucleus is wider, the
 * nucleus is found by a weight threshold instead (flat distributions), to
 * NUCLEUS_BISECTIONS halvings of the weight range. */
#define TOP_P_FIRST_CANDIDATES 256
#define NUCLEUS_BISECTIONS 32

struct llmc_generator {
    llmc_model *model;
    void *cache;
    int S, T, R, V, threads;
    size_t cache_bytes, host_bytes;
    /* per slot */
    unsigned char *live;
    int32_t *len;       /* tokens in the cache */
    int32_t *pending;   /* newest token, next step's input */
    int32_t *generated; /* tokens sampled so far */
    llmc_sampling *sampling;
    /* one forward's rows (R) and the logits of a step's rows (S, V): the
     * backend's host_logits, or owned (own_logits) */
    int32_t *row_slot, *row_pos, *row_token, *out_rows;
    float *logits;
    int own_logits;
    /* sampling scratch, V of each per thread */
    int32_t *order;
    float *weights;
};

llmc_sampling llmc_default_sampling(void) {
    llmc_sampling s = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 0,
                       .max_new_tokens = 256, .stop_token = LLMC_GPT2_EOT};
    return s;
}

/* ---- sampling ------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Uniform in [0, 1), a pure function of (seed, index). */
static double uniform(uint64_t seed, uint64_t index) {
    return (double)(splitmix64(seed ^ splitmix64(index)) >> 11) * 0x1p-53;
}

/* Token a ranks before token b: a higher value, the lower id on a tie. */
static int ranks_before(const float *z, int32_t a, int32_t b) {
    return z[a] > z[b] || (z[a] == z[b] && a < b);
}

static int compare_ranks(const void *pa, const void *pb, void *z) {
    const int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    return ranks_before(z, a, b) ? -1 : ranks_before(z, b, a) ? 1 : 0;
}

static void swap_ids(int32_t *a, int32_t *b) {
    int32_t t = *a;
    *a = *b;
    *b = t;
}

/* Moves the k best-ranked of order[0..n) to the front, sorted (quickselect
 * with a median-of-three pivot, then a sort of the k). */
static void select_best(int32_t *order, int n, int k, const float *z) {
    int lo = 0, hi = n - 1;
    while (lo < hi && k < n) {
        const int mid = lo + (hi - lo) / 2;
        if (ranks_before(z, order[mid], order[lo])) swap_ids(&order[mid], &order[lo]);
        if (ranks_before(z, order[hi], order[lo])) swap_ids(&order[hi], &order[lo]);
        if (ranks_before(z, order[hi], order[mid])) swap_ids(&order[hi], &order[mid]);
        const int32_t pivot = order[mid];
        int i = lo, j = hi;
        while (i <= j) {
            while (ranks_before(z, order[i], pivot)) i++;
            while (ranks_before(z, pivot, order[j])) j--;
            if (i <= j) swap_ids(&order[i++], &order[j--]);
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
    qsort_r(order, k, sizeof *order, compare_ranks, (void *)z);
}

/* sum of e^(scale * (x_i - max)) over n values, the terms into w. */
static float exp_weights(const float *x, int n, float max, float scale, float *w) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int i = 0; i < n; i++) {
        w[i] = vec_expf(scale * (x[i] - max));
        sum += w[i];
    }
    return sum;
}

/* The weight threshold of top-p's nucleus when it is wider than the
 * candidates ranked: the largest found (by bisection below `below`, whose
 * tokens hold less than target) at which the tokens at or above it hold at
 * least target of the mass. */
static float nucleus_threshold(const float *w, int V, double target, float below) {
    float lo = 0.0f, hi = below;
    for (int iter = 0; iter < NUCLEUS_BISECTIONS; iter++) {
        const float mid = 0.5f * (lo + hi);
        float mass = 0.0f; /* float: enough to place the threshold, and vectorised */
#pragma omp simd reduction(+ : mass)
        for (int i = 0; i < V; i++) mass += w[i] >= mid ? w[i] : 0.0f;
        if (mass >= target) lo = mid;
        else hi = mid;
    }
    return lo;
}

/* The sampled token of one row of logits; *logprob its log-probability
 * under the model. order and weights: V entries of scratch. Weights are
 * e^((logit - max) / temperature): the tokens' probabilities up to a common
 * factor, which is all that ranking, top-p and the draw need. */
static int32_t sample(const float *logits, int V, const llmc_sampling *sp, uint64_t index,
                      int32_t *order, float *weights, float *logprob) {
    int32_t best = 0;
    for (int32_t i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    const float max = logits[best];
    const float total = exp_weights(logits, V, max, 1.0f, weights); /* for the log-probability */
    int32_t token = best;
    if (sp->temperature > 0.0f) {
        /* the kept candidates are order[0..kept), or every token in id order when nothing is cut */
        const double u = uniform(sp->seed, index);
        const float all = sp->temperature == 1.0f ? total
                                                  : exp_weights(logits, V, max, 1.0f / sp->temperature, weights);
        const int top_k = sp->top_k > 0 && sp->top_k < V ? sp->top_k : 0;
        /* kept: order[0..kept) (best first), or every token in id order whose
         * weight is at least `threshold` */
        int kept = 0, by_rank = top_k > 0 || sp->top_p < 1.0f;
        float threshold = 0.0f;
        if (by_rank) {
            for (int32_t i = 0; i < V; i++) order[i] = i;
            const int k = top_k ? top_k : (V < TOP_P_FIRST_CANDIDATES ? V : TOP_P_FIRST_CANDIDATES);
            select_best(order, V, k, weights);
            kept = k;
            if (sp->top_p < 1.0f) {
                /* top-p cuts from the distribution top-k left (or the whole one) */
                double mass = 0.0, cum = 0.0;
                if (top_k)
                    for (int j = 0; j < k; j++) mass += weights[order[j]];
                else
                    mass = all;
                int reached = 0;
                for (int j = 0; j < k && !reached; j++) {
                    cum += weights[order[j]];
                    if (cum >= sp->top_p * mass) kept = j + 1, reached = 1;
                }
                if (!reached) { /* a flat distribution: its nucleus is past the candidates */
                    threshold = nucleus_threshold(weights, V, sp->top_p * mass,
                                                  weights[order[k - 1]]);
                    by_rank = 0;
                }
            }
        }
        const int n = by_rank ? kept : V;
        double sum = 0.0;
        for (int j = 0; j < n; j++) {
            const float w = weights[by_rank ? order[j] : j];
            sum += w >= threshold ? w : 0.0f;
        }
        const double target = u * sum;
        double cum = 0.0;
        token = by_rank ? order[kept - 1] : best; /* if rounding (or NaN) never crosses target */
        for (int j = 0; j < n; j++) {
            const int32_t id = by_rank ? order[j] : j;
            cum += weights[id] >= threshold ? weights[id] : 0.0f;
            if (cum > target) {
                token = id;
                break;
            }
        }
    }
    *logprob = logits[token] - max - logf(total);
    return token;
}

/* ---- the generator ---------------------------------------------------------- */

static const llmc_decode_ops *decode_ops(const llmc_model *m) {
    const llmc_decode_ops *ops = m->backend->decode;
    if (ops == NULL)
        llmc_error(LLMC_ERR_UNSUPPORTED, "the %s backend has no generation", m->backend->name);
    return ops;
}

static llmc_status check_shape(const llmc_model *m, int S, int *T) {
    if (S < 1)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "max_sequences = %d, expected >= 1", S);
    if (*T == 0) *T = m->config.max_seq_len;
    if (*T < 2 || *T > m->config.max_seq_len)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                          "max_len = %d, expected 2..%d (the model's max_seq_len) or 0", *T,
                          m->config.max_seq_len);
    if ((int64_t)S * *T > LLMC_TOKEN_LIMIT)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                          "max_sequences %d x max_len %d = %lld cached tokens, expected at most %d",
                          S, *T, (long long)S * *T, LLMC_TOKEN_LIMIT);
    return LLMC_OK;
}

static int forward_rows(int S, int T) {
    const int64_t rows = S > PREFILL_ROWS ? S : PREFILL_ROWS;
    return rows < (int64_t)S * T ? (int)rows : S * T;
}

static int sampling_threads(int S) {
    const int procs = omp_get_num_procs();
    return S < procs ? S : procs;
}

/* Host bytes of a generator's own buffers (double: no wrap-around). */
static double host_floats(int S, int R, int V, int threads) {
    return (double)S * (4 + sizeof(llmc_sampling) / 4 + V) + 4.0 * R + 2.0 * threads * V;
}

static llmc_status plan_locked(llmc_model *m, int S, int T, size_t *bytes) {
    llmc_status st = check_shape(m, S, &T);
    const llmc_decode_ops *ops = st == LLMC_OK ? decode_ops(m) : NULL;
    if (ops == NULL) return st != LLMC_OK ? st : LLMC_ERR_UNSUPPORTED;
    size_t cache;
    if ((st = ops->plan_bytes(m, S, T, forward_rows(S, T), &cache)) != LLMC_OK) return st;
    const double host = host_floats(S, forward_rows(S, T), m->config.vocab_size, sampling_threads(S));
    *bytes = cache + (size_t)(host * 4);
    return LLMC_OK;
}

llmc_status llmc_generator_plan_memory(llmc_model *m, int S, int T, size_t *bytes_out) {
    if (m == NULL || bytes_out == NULL)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_generator_plan_memory: NULL argument");
    LOCKED(m, llmc_status, plan_locked(m, S, T, bytes_out));
}

static void free_locked(llmc_generator *g) {
    if (g->cache) g->model->backend->decode->destroy(g->model, g->cache);
    free(g->live);
    free(g->len);
    free(g->pending);
    free(g->generated);
    free(g->sampling);
    free(g->row_slot);
    free(g->row_pos);
    free(g->row_token);
    free(g->out_rows);
    if (g->own_logits) free(g->logits);
    free(g->order);
    free(g->weights);
    free(g);
}

static llmc_status create_locked(llmc_model *m, int S, int T, llmc_generator **out) {
    llmc_status st = check_shape(m, S, &T);
    const llmc_decode_ops *ops = st == LLMC_OK ? decode_ops(m) : NULL;
    if (ops == NULL) return st != LLMC_OK ? st : LLMC_ERR_UNSUPPORTED;
    const int R = forward_rows(S, T), V = m->config.vocab_size, threads = sampling_threads(S);
    const double host = host_floats(S, R, V, threads) * 4;
    if ((st = llmc_host_memory_check((size_t)host, "generator's logits and sampling buffers")) != LLMC_OK)
        return st;
    llmc_generator *g = calloc(1, sizeof *g);
    if (g == NULL) return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory");
    *g = (llmc_generator){.model = m, .S = S, .T = T, .R = R, .V = V, .threads = threads,
                          .host_bytes = (size_t)host};
    g->live = calloc(S, 1);
    g->len = calloc(S, sizeof(int32_t));
    g->pending = calloc(S, sizeof(int32_t));
    g->generated = calloc(S, sizeof(int32_t));
    g->sampling = calloc(S, sizeof(llmc_sampling));
    g->row_slot = calloc(R, sizeof(int32_t));
    g->row_pos = calloc(R, sizeof(int32_t));
    g->row_token = calloc(R, sizeof(int32_t));
    g->out_rows = calloc(S, sizeof(int32_t));
    g->order = calloc((size_t)threads * V, sizeof(int32_t));
    g->weights = calloc((size_t)threads * V, sizeof(float));
    if (!g->live || !g->len || !g->pending || !g->generated || !g->sampling || !g->row_slot ||
        !g->row_pos || !g->row_token || !g->out_rows || !g->order || !g->weights) {
        free_locked(g);
        return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory for a generator");
    }
    if ((st = ops->plan_bytes(m, S, T, R, &g->cache_bytes)) != LLMC_OK ||
        (st = ops->create(m, S, T, R, &g->cache)) != LLMC_OK) {
        g->cache = NULL;
        free_locked(g);
        return st;
    }
    g->own_logits = ops->host_logits == NULL;
    g->logits = g->own_logits ? calloc((size_t)S * V, sizeof(float)) : ops->host_logits(g->cache);
    if (g->logits == NULL) {
        free_locked(g);
        return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory for a generator's logits");
    }
    *out = g;
    return LLMC_OK;
}

llmc_status llmc_generator_create(llmc_model *m, int S, int T, llmc_generator **out) {
    if (m == NULL || out == NULL)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_generator_create: NULL argument");
    *out = NULL;
    LOCKED(m, llmc_status, create_locked(m, S, T, out));
}

void llmc_generator_free(llmc_generator *g) {
    if (g == NULL) return;
    llmc_model *m = g->model;
    pthread_mutex_lock(&m->lock);
    free_locked(g);
    pthread_mutex_unlock(&m->lock);
}

static llmc_status check_sampling(const llmc_sampling *s, int i, int V) {
    if (!(s->temperature >= 0.0f && isfinite(s->temperature)) || s->top_k < 0 ||
        !(s->top_p > 0.0f && s->top_p <= 1.0f) || s->max_new_tokens < 1 ||
        s->stop_token < -1 || s->stop_token >= V)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                          "sampling[%d]: temperature=%g top_k=%d top_p=%g max_new_tokens=%d "
                          "stop_token=%d (expected temperature >= 0 and finite, top_k >= 0, "
                          "0 < top_p <= 1, max_new_tokens >= 1, stop_token -1..%d)", i,
                          s->temperature, s->top_k, s->top_p, s->max_new_tokens, s->stop_token,
                          V - 1);
    return LLMC_OK;
}

/* The checks of llmc_generator_start, before anything changes. */
static llmc_status check_start(const llmc_generator *g, int n, const int32_t *tokens,
                               const int32_t *lengths, const llmc_sampling *sampling) {
    if (n < 1) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "n = %d sequences, expected >= 1", n);
    int free_slots = 0;
    for (int s = 0; s < g->S; s++) free_slots += !g->live[s];
    if (n > free_slots)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                          "%d sequences to start but %d of the generator's %d slots are free", n,
                          free_slots, g->S);
    size_t offset = 0;
    for (int i = 0; i < n; i++) {
        if (lengths[i] < 1 || lengths[i] >= g->T)
            return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                              "lengths[%d] = %d, expected 1..%d (the generator's max_len - 1)", i,
                              lengths[i], g->T - 1);
        llmc_status st = check_sampling(&sampling[i], i, g->V);
        if (st != LLMC_OK) return st;
        for (int j = 0; j < lengths[i]; j++)
            if (tokens[offset + j] < 0 || tokens[offset + j] >= g->V)
                return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                                  "prompt %d, token %d = %d, expected 0..%d (vocab_size %d)", i,
                                  j, tokens[offset + j], g->V - 1, g->V);
        offset += lengths[i];
    }
    return LLMC_OK;
}

static llmc_status start_locked(llmc_generator *g, int n, const int32_t *tokens,
                                const int32_t *lengths, const llmc_sampling *sampling,
                                int32_t *ids) {
    llmc_status st = check_start(g, n, tokens, lengths, sampling);
    if (st != LLMC_OK) return st;
    const llmc_decode_ops *ops = g->model->backend->decode;
    int slot = 0, rows = 0;
    size_t offset = 0;
    for (int i = 0; i < n && st == LLMC_OK; i++) {
        while (g->live[slot]) slot++;
        ids[i] = slot;
        g->live[slot] = 1;
        g->len[slot] = lengths[i] - 1;
        g->pending[slot] = tokens[offset + lengths[i] - 1];
        g->generated[slot] = 0;
        g->sampling[slot] = sampling[i];
        /* the prompt but its last token, through the cache R rows at a time */
        for (int j = 0; j < lengths[i] - 1 && st == LLMC_OK; j++) {
            g->row_slot[rows] = slot;
            g->row_pos[rows] = j;
            g->row_token[rows++] = tokens[offset + j];
            if (rows == g->R) {
                st = ops->forward(g->model, g->cache, rows, g->row_slot, g->row_pos, g->row_token,
                                  0, NULL, NULL);
                rows = 0;
            }
        }
        offset += lengths[i];
    }
    if (st == LLMC_OK && rows > 0)
        st = ops->forward(g->model, g->cache, rows, g->row_slot, g->row_pos, g->row_token, 0, NULL,
                          NULL);
    if (st != LLMC_OK)
        for (int i = 0; i < n; i++) g->live[ids[i]] = 0;
    return st;
}

llmc_status llmc_generator_start(llmc_generator *g, int n, const int32_t *tokens,
                                 const int32_t *lengths, const llmc_sampling *sampling,
                                 int32_t *ids_out) {
    if (g == NULL || tokens == NULL || lengths == NULL || sampling == NULL || ids_out == NULL)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_generator_start: NULL argument");
    LOCKED(g->model, llmc_status, start_locked(g, n, tokens, lengths, sampling, ids_out));
}

/* The host's sampling of a step's k rows of logits (g->logits). */
static void sample_rows(llmc_generator *g, int k, llmc_token_event *events) {
    const int V = g->V;
    /* no more threads than the rows, the scratch, or the caller's OpenMP
     * setting (the CPU backend's num_threads) */
    int threads = k < g->threads ? k : g->threads;
    if (threads > omp_get_max_threads()) threads = omp_get_max_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
    for (int i = 0; i < k; i++) {
        const int s = g->row_slot[i], t = omp_get_thread_num();
        float logprob;
        const int32_t token = sample(g->logits + (size_t)i * V, V, &g->sampling[s],
                                     (uint64_t)g->generated[s], g->order + (size_t)t * V,
                                     g->weights + (size_t)t * V, &logprob);
        events[i] = (llmc_token_event){.sequence = s, .token = token, .logprob = logprob};
    }
}

/* The step's tokens become the slots' pending ones; sequences that end stop. */
static void finish_step(llmc_generator *g, int k, llmc_token_event *events) {
    for (int i = 0; i < k; i++) {
        const int s = g->row_slot[i];
        const llmc_sampling *sp = &g->sampling[s];
        g->len[s]++;
        g->generated[s]++;
        g->pending[s] = events[i].token;
        events[i].finish = events[i].token == sp->stop_token         ? LLMC_FINISH_STOP
                           : g->generated[s] >= sp->max_new_tokens ? LLMC_FINISH_BUDGET
                           : g->len[s] + 1 >= g->T                  ? LLMC_FINISH_LENGTH
                                                                    : LLMC_FINISH_NONE;
        if (events[i].finish != LLMC_FINISH_NONE) g->live[s] = 0;
    }
}

/* One step over the k live slots: a forward of their pending tokens, then
 * one sampled token (and event) each. When every row is greedy and the
 * backend picks greedy tokens itself (CUDA: on the device), only the tokens
 * and their log-probabilities come back, not the logits; and when no row
 * can end by its budget or length with this step, the backend may queue
 * the next step of the same rows at once (in this run or the caller's
 * next), so that the device need not wait for the host between steps. */
static llmc_status step(llmc_generator *g, int k, llmc_token_event *events) {
    const llmc_decode_ops *ops = g->model->backend->decode;
    int r = 0, greedy = ops->greedy != NULL, more = 1;
    for (int s = 0; s < g->S; s++) {
        if (!g->live[s]) continue;
        g->row_slot[r] = s;
        g->row_pos[r] = g->len[s];
        g->row_token[r] = g->pending[s];
        g->out_rows[r] = r;
        greedy &= g->sampling[s].temperature == 0.0f;
        more &= g->generated[s] + 1 < g->sampling[s].max_new_tokens && g->len[s] + 2 < g->T;
        r++;
    }
    llmc_status st = ops->forward(g->model, g->cache, k, g->row_slot, g->row_pos, g->row_token, k,
                                  g->out_rows, greedy ? NULL : g->logits);
    if (st == LLMC_OK && greedy) st = ops->greedy(g->model, g->cache, k, more, events);
    if (st != LLMC_OK) return st;
    if (greedy)
        for (int i = 0; i < k; i++) events[i].sequence = g->row_slot[i];
    else
        sample_rows(g, k, events);
    finish_step(g, k, events);
    return LLMC_OK;
}

static int live_count(const llmc_generator *g) {
    int k = 0;
    for (int s = 0; s < g->S; s++) k += g->live[s];
    return k;
}

static llmc_status run_locked(llmc_generator *g, int max_steps, llmc_token_event *events,
                              int capacity, int *n_events) {
    *n_events = 0;
    if (max_steps < 1)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "max_steps = %d, expected >= 1", max_steps);
    if (capacity < g->S)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                          "capacity = %d events, expected at least max_sequences = %d", capacity,
                          g->S);
    for (int i = 0; i < max_steps; i++) {
        const int k = live_count(g);
        if (k == 0 || *n_events + k > capacity) break;
        llmc_status st = step(g, k, events + *n_events);
        if (st != LLMC_OK) return st;
        *n_events += k;
    }
    return LLMC_OK;
}

llmc_status llmc_generator_run(llmc_generator *g, int max_steps, llmc_token_event *events,
                               int capacity, int *n_events) {
    if (g == NULL || events == NULL || n_events == NULL)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_generator_run: NULL argument");
    LOCKED(g->model, llmc_status, run_locked(g, max_steps, events, capacity, n_events));
}

llmc_status llmc_generator_cancel(llmc_generator *g, int32_t id) {
    if (g == NULL) return llmc_error(LLMC_ERR_INVALID_ARGUMENT, "llmc_generator_cancel: NULL generator");
    pthread_mutex_lock(&g->model->lock);
    const int live = id >= 0 && id < g->S && g->live[id];
    if (live) g->live[id] = 0;
    pthread_mutex_unlock(&g->model->lock);
    return live ? LLMC_OK
                : llmc_error(LLMC_ERR_INVALID_ARGUMENT, "sequence %d is not live (ids 0..%d)", id,
                             g->S - 1);
}

int llmc_generator_live(llmc_generator *g) {
    if (g == NULL) return 0;
    LOCKED(g->model, int, live_count(g));
}

size_t llmc_generator_memory_bytes(llmc_generator *g) {
    return g ? g->cache_bytes + g->host_bytes : 0;
}
