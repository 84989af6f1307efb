/*
 * comm_mpi.c: the MPI plugin (build/libllmc_mpi.so), loaded by libllmc only
 * when a model asks for world_size >= 1, so that one-process use never needs
 * an MPI library. Errors return (MPI_ERRORS_RETURN) and become a status; a
 * rank that dies is noticed by the launcher (mpirun, srun), which ends the
 * others.
 */
#include <limits.h>
#include <mpi.h>
#include <stdlib.h>

#include "../comm.h"
#include "../model.h"

static llmc_status mpi_status(int rc, const char *what) {
    if (rc == MPI_SUCCESS) return LLMC_OK;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    return llmc_error(LLMC_ERR_DEVICE, "MPI %s failed: %.*s", what, len, text);
}

/* MPI counts are ints: larger transfers would need chunking no CPU model needs. */
static llmc_status check_count(size_t n, const char *what) {
    if (n > INT_MAX)
        return llmc_error(LLMC_ERR_UNSUPPORTED, "MPI %s of %zu elements: more than %d per call",
                          what, n, INT_MAX);
    return LLMC_OK;
}

static void finalize(void) {
    int done = 0;
    MPI_Finalized(&done);
    if (!done) MPI_Finalize();
}

static llmc_status mpi_init(int rank, int world_size) {
    int started = 0;
    MPI_Initialized(&started);
    if (!started) {
        int provided;
        int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
        if (rc != MPI_SUCCESS) return mpi_status(rc, "MPI_Init");
        atexit(finalize);
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    int mpi_rank, mpi_size;
    MPI_Comm_rank(MPI_COMM_WORLD, &mpi_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &mpi_size);
    if (mpi_size != world_size || mpi_rank != rank)
        return llmc_error(LLMC_ERR_INVALID_ARGUMENT,
                          "rank %d of world_size %d asked for, but MPI started this process as "
                          "rank %d of %d (start one process per rank with mpirun -np %d)",
                          rank, world_size, mpi_rank, mpi_size, world_size);
    return LLMC_OK;
}

static MPI_Op op_of(llmc_reduce_op op) {
    return op == LLMC_REDUCE_MAX ? MPI_MAX : op == LLMC_REDUCE_MIN ? MPI_MIN : MPI_SUM;
}

static llmc_status mpi_allreduce(void *buf, size_t n, llmc_comm_dtype type, llmc_reduce_op op) {
    llmc_status st = check_count(n, "allreduce");
    if (st != LLMC_OK) return st;
    return mpi_status(MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, type == LLMC_F64 ? MPI_DOUBLE : MPI_FLOAT,
                                    op_of(op), MPI_COMM_WORLD), "allreduce");
}

static llmc_status mpi_allgather(float *buf, size_t shard) {
    llmc_status st = check_count(shard, "allgather");
    if (st != LLMC_OK) return st;
    return mpi_status(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, (int)shard, MPI_FLOAT,
                                    MPI_COMM_WORLD), "allgather");
}

static llmc_status mpi_gather(const float *send, float *recv, size_t shard, int root) {
    llmc_status st = check_count(shard, "gather");
    if (st != LLMC_OK) return st;
    return mpi_status(MPI_Gather(send, (int)shard, MPI_FLOAT, recv, (int)shard, MPI_FLOAT, root,
                                 MPI_COMM_WORLD), "gather");
}

static llmc_status mpi_scatter(const float *send, float *recv, size_t shard, int root) {
    llmc_status st = check_count(shard, "scatter");
    if (st != LLMC_OK) return st;
    return mpi_status(MPI_Scatter(send, (int)shard, MPI_FLOAT, recv, (int)shard, MPI_FLOAT, root,
                                  MPI_COMM_WORLD), "scatter");
}

static llmc_status mpi_bcast(void *buf, size_t bytes, int root) {
    llmc_status st = check_count(bytes, "broadcast");
    if (st != LLMC_OK) return st;
    return mpi_status(MPI_Bcast(buf, (int)bytes, MPI_BYTE, root, MPI_COMM_WORLD), "broadcast");
}

LLMC_API extern const llmc_mpi_api llmc_mpi_plugin;
const llmc_mpi_api llmc_mpi_plugin = {
    .init = mpi_init,
    .allreduce = mpi_allreduce,
    .allgather = mpi_allgather,
    .gather = mpi_gather,
    .scatter = mpi_scatter,
    .bcast = mpi_bcast,
};
