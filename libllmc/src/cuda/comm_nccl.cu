/*
 * comm_nccl.cu: NCCL for the CUDA backend's distributed mode (see
 * comm_nccl.cuh). NCCL's functions are looked up in libnccl.so.2 at first
 * use: $LLMC_NCCL_LIB, then the loader's search path, then the library the
 * build found (LLMC_NCCL_BUILD_LIB, e.g. the nvidia-nccl wheel's).
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_nccl.cuh"

#ifdef LLMC_NO_NCCL
/* Built without nccl.h: distributed mode on CUDA says so. */
struct nccl_ctx {};
static llmc_status no_nccl() {
    return llmc_error(LLMC_ERR_UNSUPPORTED, "this CUDA backend was built without NCCL's header "
                      "(nccl.h): `pip install nvidia-nccl-cu13` and re-run `make`");
}
llmc_status nccl_create(nccl_ctx **out, const uint8_t *, int, int, int, cudaStream_t) {
    *out = nullptr;
    return no_nccl();
}
void nccl_destroy(nccl_ctx *) {}
llmc_status nccl_allreduce_group(nccl_ctx *, float *const *, const size_t *, int, cudaStream_t,
                                 llmc_reduce_op) { return no_nccl(); }
llmc_status nccl_join(nccl_ctx *, cudaStream_t) { return no_nccl(); }
llmc_status nccl_allgather(nccl_ctx *, void *, size_t, bool, cudaStream_t) { return no_nccl(); }
llmc_status nccl_broadcast(nccl_ctx *, float *, size_t, int, cudaStream_t) { return no_nccl(); }
llmc_status nccl_allreduce_host(nccl_ctx *, double *, size_t, llmc_reduce_op, cudaStream_t) { return no_nccl(); }
llmc_status nccl_sync(nccl_ctx *, cudaStream_t) { return no_nccl(); }
extern "C" LLMC_API llmc_status llmc_cuda_nccl_unique_id(uint8_t *) { return no_nccl(); }
#else
#include <nccl.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

static_assert(sizeof(ncclUniqueId) == 128, "llmc_options.nccl_id holds an ncclUniqueId");

namespace {

struct nccl_fns {
    decltype(&ncclGetUniqueId) GetUniqueId;
    decltype(&ncclCommInitRank) CommInitRank;
    decltype(&ncclCommGetAsyncError) CommGetAsyncError;
    decltype(&ncclCommAbort) CommAbort;
    decltype(&ncclCommDestroy) CommDestroy;
    decltype(&ncclAllReduce) AllReduce;
    decltype(&ncclAllGather) AllGather;
    decltype(&ncclBroadcast) Broadcast;
    decltype(&ncclGroupStart) GroupStart;
    decltype(&ncclGroupEnd) GroupEnd;
    decltype(&ncclGetErrorString) GetErrorString;
    decltype(&ncclGetLastError) GetLastError;
};

nccl_fns nccl;
char nccl_load_error[1024] = "";

bool load_nccl() {
    static std::once_flag once;
    static bool loaded = false;
    std::call_once(once, [] {
        const char *candidates[] = {getenv("LLMC_NCCL_LIB"), "libnccl.so.2",
#ifdef LLMC_NCCL_BUILD_LIB
                                    LLMC_NCCL_BUILD_LIB,
#endif
                                    nullptr};
        void *h = nullptr;
        for (const char *path : candidates) {
            if (path && *path && (h = dlopen(path, RTLD_NOW | RTLD_LOCAL))) break;
            if (path && *path) snprintf(nccl_load_error, sizeof nccl_load_error, "%s", dlerror());
        }
        if (!h) return;
#define LOOKUP(name)                                                                   \
    if (!(nccl.name = (decltype(nccl.name))dlsym(h, "nccl" #name))) {                   \
        snprintf(nccl_load_error, sizeof nccl_load_error, "libnccl lacks nccl" #name);  \
        return;                                                                        \
    }
        LOOKUP(GetUniqueId) LOOKUP(CommInitRank) LOOKUP(CommGetAsyncError) LOOKUP(CommAbort)
        LOOKUP(CommDestroy) LOOKUP(AllReduce) LOOKUP(AllGather) LOOKUP(Broadcast)
        LOOKUP(GroupStart) LOOKUP(GroupEnd) LOOKUP(GetErrorString) LOOKUP(GetLastError)
#undef LOOKUP
        loaded = true;
    });
    if (!loaded)
        llmc_error(LLMC_ERR_UNSUPPORTED,
                   "distributed training on CUDA needs NCCL (libnccl.so.2: %s); `pip install "
                   "nvidia-nccl-cu13` or set LLMC_NCCL_LIB to the library's path",
                   nccl_load_error);
    return loaded;
}

llmc_status nccl_status(ncclResult_t r, ncclComm_t comm, const char *what) {
    if (r == ncclSuccess || r == ncclInProgress) return LLMC_OK;
    return llmc_error(LLMC_ERR_DEVICE, "NCCL %s failed: %s (%s)", what, nccl.GetErrorString(r),
                      nccl.GetLastError(comm));
}

#define NCCL_TRY(c, call, what) TRY(nccl_status((call), (c)->comm, what))

ncclRedOp_t op_of(llmc_reduce_op op) {
    return op == LLMC_REDUCE_MAX ? ncclMax : op == LLMC_REDUCE_MIN ? ncclMin : ncclSum;
}

}  // namespace

struct nccl_ctx {
    ncclComm_t comm = nullptr;
    int rank = 0, world = 0, timeout_s = 300;
    bool aborted = false;
    cudaStream_t stream = nullptr;  // gradient buckets
    cudaEvent_t ready = nullptr, done = nullptr;
    double *scratch = nullptr;      // nccl_allreduce_host
    size_t scratch_cap = 0;
};

/* ncclCommInitRank blocks until every rank has joined: it runs in a thread
 * of its own, so that a rank that never comes costs a timeout, not a hang
 * (the thread is then left behind, blocked). */
static llmc_status init_with_timeout(nccl_ctx *c, const uint8_t id[128], int device) {
    struct shared {
        std::mutex mu;
        std::condition_variable cv;
        bool finished = false;
        ncclResult_t result = ncclSuccess;
        ncclComm_t comm = nullptr;
    };
    auto s = std::make_shared<shared>();
    ncclUniqueId uid;
    memcpy(&uid, id, sizeof uid);
    const int world = c->world, rank = c->rank;
    std::thread([s, uid, world, rank, device] {
        cudaSetDevice(device);
        ncclComm_t comm = nullptr;
        ncclResult_t r = nccl.CommInitRank(&comm, world, uid, rank);
        std::lock_guard<std::mutex> lock(s->mu);
        s->result = r;
        s->comm = comm;
        s->finished = true;
        s->cv.notify_all();
    }).detach();
    std::unique_lock<std::mutex> lock(s->mu);
    if (!s->cv.wait_for(lock, std::chrono::seconds(c->timeout_s), [&] { return s->finished; }))
        return llmc_error(LLMC_ERR_DEVICE,
                          "rank %d of %d: the other ranks did not join NCCL within %d s (a rank "
                          "failed to start, or the ranks were given different NCCL ids)",
                          rank, world, c->timeout_s);
    c->comm = s->comm;
    if (s->result != ncclSuccess)
        return llmc_error(LLMC_ERR_DEVICE, "rank %d of %d: NCCL initialisation failed: %s (%s)",
                          rank, world, nccl.GetErrorString(s->result), nccl.GetLastError(nullptr));
    return LLMC_OK;
}

llmc_status nccl_create(nccl_ctx **out, const uint8_t id[128], int rank, int world, int timeout_s,
                        cudaStream_t compute) {
    *out = nullptr;
    if (!load_nccl()) return LLMC_ERR_UNSUPPORTED;
    nccl_ctx *c = new (std::nothrow) nccl_ctx;
    if (!c) return llmc_error(LLMC_ERR_OUT_OF_MEMORY, "out of host memory");
    c->rank = rank;
    c->world = world;
    c->timeout_s = timeout_s;
    int device = 0;
    cudaError_t e = cudaGetDevice(&device);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&c->ready, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&c->done, cudaEventDisableTiming);
    if (e != cudaSuccess) {
        nccl_destroy(c);
        return cuda_status(e, "NCCL stream and events", __FILE__, __LINE__);
    }
    *out = c;
    /* connect every peer now, inside the timeout, rather than at the first
     * collective, where a missing rank could not be timed out */
    setenv("NCCL_RUNTIME_CONNECT", "0", 0);
    llmc_status st = init_with_timeout(c, id, device);
    if (st != LLMC_OK) {  // no communicator: its error is the one to report
        nccl_destroy(c);
        *out = nullptr;
    }
    return st;
}

void nccl_destroy(nccl_ctx *c) {
    if (!c) return;
    if (c->comm && !c->aborted) nccl.CommDestroy(c->comm);
    if (c->scratch) cudaFree(c->scratch);
    if (c->ready) cudaEventDestroy(c->ready);
    if (c->done) cudaEventDestroy(c->done);
    if (c->stream) cudaStreamDestroy(c->stream);
    delete c;
}

static llmc_status usable(const nccl_ctx *c) {
    if (c->aborted)
        return llmc_error(LLMC_ERR_DEVICE, "the NCCL communicator was aborted after an earlier "
                          "failure: this model cannot take part in collectives any more");
    return LLMC_OK;
}

llmc_status nccl_allreduce_group(nccl_ctx *c, float *const *bufs, const size_t *counts, int n,
                                 cudaStream_t compute, llmc_reduce_op op) {
    TRY(usable(c));
    CUDA_TRY(cudaEventRecord(c->ready, compute));
    CUDA_TRY(cudaStreamWaitEvent(c->stream, c->ready, 0));
    NCCL_TRY(c, nccl.GroupStart(), "group start");
    for (int i = 0; i < n; i++)
        NCCL_TRY(c, nccl.AllReduce(bufs[i], bufs[i], counts[i], ncclFloat32, op_of(op), c->comm,
                                   c->stream), "all-reduce");
    NCCL_TRY(c, nccl.GroupEnd(), "group end");
    return LLMC_OK;
}

llmc_status nccl_join(nccl_ctx *c, cudaStream_t compute) {
    CUDA_TRY(cudaEventRecord(c->done, c->stream));
    CUDA_TRY(cudaStreamWaitEvent(compute, c->done, 0));
    return LLMC_OK;
}

llmc_status nccl_allgather(nccl_ctx *c, void *buf, size_t shard, bool bf16, cudaStream_t compute) {
    TRY(usable(c));
    const size_t bytes = bf16 ? 2 : 4;
    NCCL_TRY(c, nccl.AllGather((char *)buf + (size_t)c->rank * shard * bytes, buf, shard,
                               bf16 ? ncclBfloat16 : ncclFloat32, c->comm, compute),
             "all-gather");
    return LLMC_OK;
}

llmc_status nccl_broadcast(nccl_ctx *c, float *buf, size_t n, int root, cudaStream_t compute) {
    TRY(usable(c));
    NCCL_TRY(c, nccl.Broadcast(buf, buf, n, ncclFloat32, root, c->comm, compute), "broadcast");
    return LLMC_OK;
}

llmc_status nccl_allreduce_host(nccl_ctx *c, double *values, size_t n, llmc_reduce_op op,
                                cudaStream_t compute) {
    TRY(usable(c));
    if (n > c->scratch_cap) {
        TRY(nccl_sync(c, compute));
        if (c->scratch) cudaFree(c->scratch);
        c->scratch = nullptr;
        c->scratch_cap = 0;
        CUDA_TRY(cudaMalloc(&c->scratch, n * sizeof(double)));
        c->scratch_cap = n;
    }
    CUDA_TRY(cudaMemcpyAsync(c->scratch, values, n * sizeof(double), cudaMemcpyHostToDevice, compute));
    NCCL_TRY(c, nccl.AllReduce(c->scratch, c->scratch, n, ncclFloat64, op_of(op), c->comm, compute),
             "all-reduce");
    CUDA_TRY(cudaMemcpyAsync(values, c->scratch, n * sizeof(double), cudaMemcpyDeviceToHost, compute));
    return nccl_sync(c, compute);
}

llmc_status nccl_sync(nccl_ctx *c, cudaStream_t compute) {
    const auto start = std::chrono::steady_clock::now();
    auto pause = std::chrono::microseconds(2);
    for (;;) {
        cudaError_t q = cudaStreamQuery(compute);
        if (q == cudaSuccess) return LLMC_OK;
        if (q != cudaErrorNotReady) return cuda_status(q, "waiting for a collective", __FILE__, __LINE__);
        ncclResult_t async = ncclSuccess;
        nccl.CommGetAsyncError(c->comm, &async);
        const double waited =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if ((async != ncclSuccess && async != ncclInProgress) || waited > c->timeout_s) {
            llmc_status st =
                async != ncclSuccess && async != ncclInProgress
                    ? llmc_error(LLMC_ERR_DEVICE, "rank %d of %d: NCCL failed: %s (%s)", c->rank,
                                 c->world, nccl.GetErrorString(async), nccl.GetLastError(c->comm))
                    : llmc_error(LLMC_ERR_DEVICE,
                                 "rank %d of %d: a collective made no progress for %d s (another "
                                 "rank died or stopped calling); communicator aborted",
                                 c->rank, c->world, c->timeout_s);
            nccl.CommAbort(c->comm);
            c->aborted = true;
            return st;
        }
        std::this_thread::sleep_for(pause);
        if (pause < std::chrono::microseconds(200)) pause *= 2;
    }
}

extern "C" LLMC_API llmc_status llmc_cuda_nccl_unique_id(uint8_t *out) {
    if (!load_nccl()) return LLMC_ERR_UNSUPPORTED;
    ncclUniqueId id;
    ncclResult_t r = nccl.GetUniqueId(&id);
    if (r != ncclSuccess)
        return llmc_error(LLMC_ERR_DEVICE, "ncclGetUniqueId failed: %s", nccl.GetErrorString(r));
    memcpy(out, &id, sizeof id);
    return LLMC_OK;
}
#endif  // LLMC_NO_NCCL
