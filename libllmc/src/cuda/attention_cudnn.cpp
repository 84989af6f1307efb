/*
 * attention_cudnn.cpp: causal self-attention forward and backward through
 * cuDNN's fused flash attention, built with cudnn-frontend graphs.
 *
 * One graph per (kind, B, T) is built on first use and cached: building asks
 * cuDNN's heuristics and compiles kernels, far too slow for every call. The
 * backward asks for cuDNN's deterministic algorithm so that training runs are
 * bit-identical.
 */
#include "attention.h"

#include <cudnn_frontend.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <tuple>

namespace fe = cudnn_frontend;

namespace {

enum Uid : int64_t { Q = 1, K, V, O, LSE, DO, DQ, DK, DV };
enum Kind { FORWARD_TRAIN, FORWARD_INFER, BACKWARD };
enum { OK = 0, OOM = 4, UNSUPPORTED = 5, DEVICE = 6 };

using GraphKey = std::tuple<int, int, int>;  // kind, B, T

}  // namespace

struct attn_ctx {
    cudnnHandle_t handle = nullptr;
    cudaStream_t stream = nullptr;
    int NH = 0, NKV = 0, HS = 0;
    void *workspace = nullptr;
    size_t workspace_bytes = 0;
    std::map<GraphKey, std::shared_ptr<fe::graph::Graph>> graphs;
};

static int fail(char *err, size_t errlen, int code, const char *what, const std::string &msg) {
    snprintf(err, errlen, "cuDNN attention: %s: %s", what, msg.c_str());
    return code;
}

/* A (B, NH, T, HS) view of rows of row_width elements: the heads sit side by
 * side in each row (row_width = (NH + 2 NKV) HS for the packed QKV, C for O
 * and dO). */
static std::shared_ptr<fe::graph::Tensor_attributes>
head_tensor(fe::graph::Graph &g, const char *name, int64_t uid, int B, int T, int NH, int HS,
            int64_t row_width) {
    return g.tensor(fe::graph::Tensor_attributes()
                        .set_name(name)
                        .set_uid(uid)
                        .set_dim({B, NH, T, HS})
                        .set_stride({row_width * T, HS, row_width, 1}));
}

static std::shared_ptr<fe::graph::Graph> new_graph() {
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    return g;
}

static void define_forward(fe::graph::Graph &g, bool train, int B, int T, int NH, int NKV, int HS) {
    const int64_t C = (int64_t)NH * HS, W = (int64_t)(NH + 2 * NKV) * HS;
    auto q = head_tensor(g, "Q", Q, B, T, NH, HS, W);
    auto k = head_tensor(g, "K", K, B, T, NKV, HS, W);
    auto v = head_tensor(g, "V", V, B, T, NKV, HS, W);
    auto opts = fe::graph::SDPA_attributes()
                    .set_name("sdpa")
                    .set_generate_stats(train)
                    .set_attn_scale(1.0f / sqrtf((float)HS))
                    .set_causal_mask(true);
    auto [o, lse] = g.sdpa(q, k, v, opts);
    o->set_output(true).set_uid(O).set_dim({B, NH, T, HS}).set_stride({C * T, HS, C, 1});
    if (train) {
        lse->set_output(true)
            .set_uid(LSE)
            .set_data_type(fe::DataType_t::FLOAT)
            .set_dim({B, NH, T, 1})
            .set_stride({(int64_t)NH * T, T, 1, 1});
    }
}

static void define_backward(fe::graph::Graph &g, int B, int T, int NH, int NKV, int HS,
                            bool deterministic) {
    const int64_t W = (int64_t)(NH + 2 * NKV) * HS;
    auto q = head_tensor(g, "Q", Q, B, T, NH, HS, W);
    auto k = head_tensor(g, "K", K, B, T, NKV, HS, W);
    auto v = head_tensor(g, "V", V, B, T, NKV, HS, W);
    auto o = head_tensor(g, "O", O, B, T, NH, HS, (int64_t)NH * HS);
    auto dout = head_tensor(g, "dO", DO, B, T, NH, HS, (int64_t)NH * HS);
    auto lse = g.tensor(fe::graph::Tensor_attributes()
                            .set_name("LSE")
                            .set_uid(LSE)
                            .set_dim({B, NH, T, 1})
                            .set_stride({(int64_t)NH * T, T, 1, 1})
                            .set_data_type(fe::DataType_t::FLOAT));
    auto opts = fe::graph::SDPA_backward_attributes()
                    .set_name("sdpa_backward")
                    .set_attn_scale(1.0f / sqrtf((float)HS))
                    .set_causal_mask(true)
                    .set_deterministic_algorithm(deterministic);
    auto [dq, dk, dv] = g.sdpa_backward(q, k, v, o, dout, lse, opts);
    const int64_t uids[3] = {DQ, DK, DV};
    const int heads[3] = {NH, NKV, NKV};
    std::shared_ptr<fe::graph::Tensor_attributes> outs[3] = {dq, dk, dv};
    for (int i = 0; i < 3; i++)
        outs[i]->set_output(true).set_uid(uids[i]).set_dim({B, heads[i], T, HS}).set_stride(
            {W * T, HS, W, 1});
}

/* Builds (or finds) the graph for (kind, B, T) and makes sure the workspace fits it. */
static int get_graph(attn_ctx *ctx, Kind kind, int B, int T, fe::graph::Graph **out, char *err,
                     size_t errlen) {
    if (T < 2)  // cuDNN's fused attention: "s_q = s_kv = 1 is not supported"
        return fail(err, errlen, UNSUPPORTED, "sequence length",
                    "T=1 is not supported (cuDNN has no single-position graph); use T >= 2, "
                    "or the CPU backend");
    GraphKey key{kind, B, T};
    auto it = ctx->graphs.find(key);
    if (it == ctx->graphs.end()) {
        /* The backward asks for the deterministic algorithm first; should this
         * cuDNN lack it for the shape, the fast one is taken and noted. */
        std::shared_ptr<fe::graph::Graph> g;
        fe::error_t st;
        for (int attempt = 0; attempt < (kind == BACKWARD ? 2 : 1); attempt++) {
            g = new_graph();
            if (kind == BACKWARD)
                define_backward(*g, B, T, ctx->NH, ctx->NKV, ctx->HS, attempt == 0);
            else
                define_forward(*g, kind == FORWARD_TRAIN, B, T, ctx->NH, ctx->NKV, ctx->HS);
            st = g->validate();
            if (st.is_good()) st = g->build_operation_graph(ctx->handle);
            if (st.is_good()) st = g->create_execution_plans({fe::HeurMode_t::A});
            if (st.is_good()) st = g->check_support(ctx->handle);
            if (st.is_good()) st = g->build_plans(ctx->handle);
            if (st.is_good()) break;
            if (kind == BACKWARD && attempt == 0)
                fprintf(stderr, "llmc: cuDNN has no deterministic attention backward for B=%d "
                        "T=%d (%s); using the non-deterministic one\n", B, T,
                        st.get_message().c_str());
        }
        if (st.is_bad()) return fail(err, errlen, DEVICE, "building the graph", st.get_message());
        it = ctx->graphs.emplace(key, g).first;
    }
    int64_t need = 0;
    fe::error_t st = it->second->get_workspace_size(need);
    if (st.is_bad()) return fail(err, errlen, DEVICE, "workspace size", st.get_message());
    if ((size_t)need > ctx->workspace_bytes) {
        void *ws = nullptr;
        cudaError_t ce = cudaMalloc(&ws, (size_t)need);
        if (ce != cudaSuccess) {
            cudaGetLastError();
            return fail(err, errlen, ce == cudaErrorMemoryAllocation ? OOM : DEVICE,
                        "allocating the workspace", cudaGetErrorString(ce));
        }
        cudaStreamSynchronize(ctx->stream);  // the old workspace may still be in use
        cudaFree(ctx->workspace);
        ctx->workspace = ws;
        ctx->workspace_bytes = (size_t)need;
    }
    *out = it->second.get();
    return OK;
}

static int execute(attn_ctx *ctx, fe::graph::Graph *g, std::unordered_map<int64_t, void *> &pack,
                   char *err, size_t errlen) {
    fe::error_t st = g->execute(ctx->handle, pack, ctx->workspace);
    if (st.is_bad()) return fail(err, errlen, DEVICE, "execute", st.get_message());
    return OK;
}

int attn_create(attn_ctx **out, int max_B, int max_T, int NH, int NKV, int HS,
                cudaStream_t stream, char *err, size_t errlen) {
    *out = nullptr;
    attn_ctx *ctx = new (std::nothrow) attn_ctx;
    if (!ctx) return fail(err, errlen, OOM, "create", "out of host memory");
    ctx->NH = NH;
    ctx->NKV = NKV;
    ctx->HS = HS;
    ctx->stream = stream;
    cudnnStatus_t cs = cudnnCreate(&ctx->handle);
    if (cs == CUDNN_STATUS_SUCCESS) cs = cudnnSetStream(ctx->handle, stream);
    if (cs != CUDNN_STATUS_SUCCESS) {
        int rc = fail(err, errlen, DEVICE, "cudnnCreate", cudnnGetErrorString(cs));
        attn_destroy(ctx);
        return rc;
    }
    /* Plan the workspace for the largest shape now, so that a training run
     * does not discover it is out of memory later (at T >= 2: a model made
     * with max_seq_len 1, e.g. only to be saved, still initialises). */
    if (max_T < 2) max_T = 2;
    fe::graph::Graph *g;
    const Kind kinds[3] = {FORWARD_TRAIN, BACKWARD, FORWARD_INFER};
    for (Kind kind : kinds) {
        int rc = get_graph(ctx, kind, max_B, max_T, &g, err, errlen);
        if (rc != OK) {
            attn_destroy(ctx);
            return rc;
        }
    }
    *out = ctx;
    return OK;
}

void attn_destroy(attn_ctx *ctx) {
    if (!ctx) return;
    ctx->graphs.clear();
    cudaFree(ctx->workspace);
    if (ctx->handle) cudnnDestroy(ctx->handle);
    delete ctx;
}

size_t attn_memory_bytes(const attn_ctx *ctx) { return ctx ? ctx->workspace_bytes : 0; }

int attn_forward(attn_ctx *ctx, __nv_bfloat16 *out, float *lse, const __nv_bfloat16 *qkv, int B,
                 int T, char *err, size_t errlen) {
    fe::graph::Graph *g;
    int rc = get_graph(ctx, lse ? FORWARD_TRAIN : FORWARD_INFER, B, T, &g, err, errlen);
    if (rc != OK) return rc;
    const size_t C = (size_t)ctx->NH * ctx->HS, KV = (size_t)ctx->NKV * ctx->HS;
    void *base = const_cast<__nv_bfloat16 *>(qkv);
    std::unordered_map<int64_t, void *> pack = {
        {Q, base},
        {K, (void *)((__nv_bfloat16 *)base + C)},
        {V, (void *)((__nv_bfloat16 *)base + C + KV)},
        {O, out},
    };
    if (lse) pack[LSE] = lse;
    return execute(ctx, g, pack, err, errlen);
}

int attn_backward(attn_ctx *ctx, __nv_bfloat16 *dqkv, const __nv_bfloat16 *dout,
                  const __nv_bfloat16 *qkv, const __nv_bfloat16 *out, const float *lse, int B, int T,
                  char *err, size_t errlen) {
    fe::graph::Graph *g;
    int rc = get_graph(ctx, BACKWARD, B, T, &g, err, errlen);
    if (rc != OK) return rc;
    const size_t C = (size_t)ctx->NH * ctx->HS, KV = (size_t)ctx->NKV * ctx->HS;
    __nv_bfloat16 *base = const_cast<__nv_bfloat16 *>(qkv);
    std::unordered_map<int64_t, void *> pack = {
        {Q, base},              {K, base + C},
        {V, base + C + KV},     {O, const_cast<__nv_bfloat16 *>(out)},
        {DO, const_cast<__nv_bfloat16 *>(dout)},
        {LSE, const_cast<float *>(lse)},
        {DQ, dqkv},             {DK, dqkv + C},
        {DV, dqkv + C + KV},
    };
    return execute(ctx, g, pack, err, errlen);
}
