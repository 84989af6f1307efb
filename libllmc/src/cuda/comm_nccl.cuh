/*
 * comm_nccl.cuh: the CUDA backend's collectives over NCCL, for distributed
 * mode. libnccl.so.2 is loaded with dlopen on first use, so that the plugin
 * loads (and one-GPU training works) where NCCL is absent.
 *
 * Every wait on work that includes a collective goes through nccl_sync,
 * which gives up after the communicator's timeout (a rank died, or never
 * came) and aborts the communicator instead of hanging.
 */
#ifndef LLMC_CUDA_COMM_NCCL_CUH
#define LLMC_CUDA_COMM_NCCL_CUH

#include "common.cuh"

struct nccl_ctx;

/* Joins the communicator of world ranks; waits at most timeout_s for the
 * others. The collectives below run on the context's own stream, ordered
 * after `compute`'s work queued before each call. */
llmc_status nccl_create(nccl_ctx **out, const uint8_t id[128], int rank, int world, int timeout_s,
                        cudaStream_t compute);
void nccl_destroy(nccl_ctx *c);

/* Sums (or combines by op) n float vectors across ranks in place, as one
 * NCCL group, once the work queued so far on compute is done (a gradient
 * bucket; the FP8 largest magnitudes with LLMC_REDUCE_MAX). */
llmc_status nccl_allreduce_group(nccl_ctx *c, float *const *bufs, const size_t *counts, int n,
                                 cudaStream_t compute, llmc_reduce_op op = LLMC_REDUCE_SUM);
/* compute waits for every collective queued so far. */
llmc_status nccl_join(nccl_ctx *c, cudaStream_t compute);
/* In place on compute: buf holds world shards of `shard` elements. */
llmc_status nccl_allgather(nccl_ctx *c, void *buf, size_t shard, bool bf16, cudaStream_t compute);
llmc_status nccl_broadcast(nccl_ctx *c, float *buf, size_t n, int root, cudaStream_t compute);
/* n host doubles combined across ranks (op: llmc_reduce_op). */
llmc_status nccl_allreduce_host(nccl_ctx *c, double *values, size_t n, llmc_reduce_op op,
                                cudaStream_t compute);
/* Waits for compute's work, collectives included, at most the timeout. */
llmc_status nccl_sync(nccl_ctx *c, cudaStream_t compute);

#endif
