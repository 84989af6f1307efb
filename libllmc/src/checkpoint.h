/* checkpoint.h: model and optimizer files (see checkpoint.c for the layouts). */
#ifndef LLMC_CHECKPOINT_H
#define LLMC_CHECKPOINT_H

#include "model.h"

/* Reads and checks a model file; *params_out (malloc'ed, fp32, the caller
 * frees it) holds every parameter whatever the file's dtype. */
llmc_status llmc_read_model_file(const char *path, llmc_config *config, float **params_out);
llmc_status llmc_write_model_file(const char *path, const llmc_config *config, const float *params,
                                  size_t n, llmc_dtype dtype);

/* mom1/mom2 hold n floats each; the file must match config exactly. */
llmc_status llmc_read_optimizer_file(const char *path, const llmc_config *config, size_t n,
                                     int64_t *step, float *mom1, float *mom2);
llmc_status llmc_write_optimizer_file(const char *path, const llmc_config *config, int64_t step,
                                      const float *mom1, const float *mom2, size_t n);

#endif /* LLMC_CHECKPOINT_H */
