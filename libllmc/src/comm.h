/*
 * comm.h: communication between the ranks of a data-parallel run, as the
 * backends see it (internal). The CPU backend's collectives go through MPI,
 * which lives in the plugin libllmc_mpi.so so that libllmc.so itself never
 * needs an MPI library; the CUDA backend uses NCCL (cuda/comm_nccl.cu) and
 * MPI only to hand out NCCL's unique id when no rendezvous gave one.
 *
 * Shards (ZeRO-1): a vector of n floats is split into world_size equal
 * shards of llmc_shard_size(n, world_size) floats; the last ones may reach
 * past n (the padding is never read as data).
 */
#ifndef LLMC_COMM_H
#define LLMC_COMM_H

#include <stddef.h>

#include "llmc.h"

/* Ranks one run may have. */
#define LLMC_MAX_WORLD_SIZE 65536

typedef enum { LLMC_F32 = 0, LLMC_F64 = 1 } llmc_comm_dtype;

typedef struct llmc_mpi_api {
    /* MPI_Init if nobody has yet; checks that MPI's rank and size are the
     * caller's. */
    llmc_status (*init)(int rank, int world_size);
    /* In place, every rank gets the result. */
    llmc_status (*allreduce)(void *buf, size_t n, llmc_comm_dtype type, llmc_reduce_op op);
    /* buf holds world_size shards of `shard` floats; each rank's own shard is
     * sent to all, in place. */
    llmc_status (*allgather)(float *buf, size_t shard);
    /* Rank r's `shard` floats at send go to recv + r*shard on root. */
    llmc_status (*gather)(const float *send, float *recv, size_t shard, int root);
    /* recv gets send + r*shard of root. */
    llmc_status (*scatter)(const float *send, float *recv, size_t shard, int root);
    llmc_status (*bcast)(void *buf, size_t bytes, int root);
} llmc_mpi_api;

/* The MPI plugin's functions, loaded on first use; NULL (with the error set)
 * when the plugin or the MPI library is missing. */
const llmc_mpi_api *llmc_mpi(void);

/* Floats per shard: ceil(n / world), rounded up to 64 floats (256 bytes)
 * so that every shard starts aligned. */
static inline size_t llmc_shard_size(size_t n, int world) {
    size_t s = (n + (size_t)world - 1) / (size_t)world;
    return (s + 63) & ~(size_t)63;
}

/* Every rank's status combined (the worst one wins), so that all ranks fail
 * together when one fails inside a collective call; the message names the
 * rank that failed where it is not this one. */
llmc_status llmc_agree(const llmc_model *m, llmc_status st);

#endif /* LLMC_COMM_H */
