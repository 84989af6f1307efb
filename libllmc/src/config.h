/* config.h: model shapes, shared by the API layer and the file readers. */
#ifndef LLMC_CONFIG_H
#define LLMC_CONFIG_H

#include "model.h"

/* Checks every field (and that the parameter count cannot overflow); fills a
 * zero padded_vocab_size. source names the origin ("config", a file path)
 * in the error message, bad is the status returned on a bad field. */
llmc_status llmc_config_check(llmc_config *c, const char *source, llmc_status bad);

/* GPT-2's initialisation into params (m->num_params floats), a pure
 * function of the config and m->options.seed. */
void llmc_random_init(const llmc_model *m, float *params);

#endif /* LLMC_CONFIG_H */
