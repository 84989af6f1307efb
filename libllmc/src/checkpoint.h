/* checkpoint.h: model and optimizer files (see checkpoint.c for the layouts). */
#ifndef LLMC_CHECKPOINT_H
#define LLMC_CHECKPOINT_H

#include <stdio.h>

#include "model.h"

/* A model file opened for reading, its header checked against its size. */
typedef struct {
    const char *path;
    FILE *f;
    llmc_config config;
    size_t bytes_per; /* 4 (fp32) or 2 (bf16) */
} llmc_model_file;

llmc_status llmc_open_model_file(const char *path, llmc_model_file *mf);
/* Streams the parameters into m's backend a chunk at a time (no whole host
 * copy), checking that every value is finite; m was created from
 * mf->config. */
llmc_status llmc_read_model_params(llmc_model_file *mf, llmc_model *m);
void llmc_close_model_file(llmc_model_file *mf);

llmc_status llmc_write_model_file(const char *path, const llmc_config *config, const float *params,
                                  size_t n, llmc_dtype dtype);

/* mom1/mom2 hold n floats each; the file must match config exactly, every
 * moment be finite (the second >= 0) and the step in 0..LLMC_STEP_LIMIT-1.
 * scaling holds the model's n_scaling floats of FP8 scaling state (0 for a
 * model without): *has_scaling says whether the file gave them. */
llmc_status llmc_read_optimizer_file(const char *path, const llmc_config *config, size_t n,
                                     int64_t *step, float *mom1, float *mom2, size_t n_scaling,
                                     float *scaling, int *has_scaling);
llmc_status llmc_write_optimizer_file(const char *path, const llmc_config *config, int64_t step,
                                      const float *mom1, const float *mom2, size_t n,
                                      const float *scaling, size_t n_scaling);

#endif /* LLMC_CHECKPOINT_H */
