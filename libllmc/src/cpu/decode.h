/*
 * decode.h: what the CPU backend's generation (decode.c) takes from the
 * backend proper (backend.c). Internal to libllmc/src/cpu.
 */
#ifndef LLMC_CPU_DECODE_H
#define LLMC_CPU_DECODE_H

#include "../model.h"

extern const llmc_decode_ops cpu_decode_ops;

/* The model's parameter tensors, in llm.c's order, after setting the calling
 * thread's OpenMP thread count as every entry point does; *threads gets it. */
float *const *cpu_decode_params(llmc_model *m, int *threads);

#endif /* LLMC_CPU_DECODE_H */
