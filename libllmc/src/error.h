/* error.h: the thread-local error message behind llmc_last_error(). Its own
 * unit so that api.c, config.c, checkpoint.c and the backends can all set it
 * without depending on one another. */
#ifndef LLMC_ERROR_H
#define LLMC_ERROR_H

#include "llmc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sets the thread-local message and returns status, so that callers can
 * write `return llmc_error(LLMC_ERR_IO, "cannot open %s", path);`. */
llmc_status llmc_error(llmc_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
}
#endif
#endif /* LLMC_ERROR_H */
