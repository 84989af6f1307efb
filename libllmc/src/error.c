/* error.c: the thread-local message of the last failed call, and the names
 * of the status codes. */
#include <stdarg.h>
#include <stdio.h>

#include "error.h"

static _Thread_local char last_error[2048];

llmc_status llmc_error(llmc_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

const char *llmc_last_error(void) { return last_error; }

const char *llmc_status_string(llmc_status status) {
    switch (status) {
    case LLMC_OK: return "ok";
    case LLMC_ERR_INVALID_ARGUMENT: return "invalid argument";
    case LLMC_ERR_IO: return "i/o error";
    case LLMC_ERR_FORMAT: return "bad file format";
    case LLMC_ERR_OUT_OF_MEMORY: return "out of memory";
    case LLMC_ERR_UNSUPPORTED: return "unsupported";
    case LLMC_ERR_DEVICE: return "device error";
    case LLMC_ERR_NUMERIC: return "numeric error";
    }
    return "unknown status";
}
