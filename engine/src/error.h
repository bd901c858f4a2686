/* error.h: filling sg_error with a status and a formatted message. */
#ifndef SG_ERROR_H
#define SG_ERROR_H

#include "snapgen.h"

/* Sets error (may be NULL) and returns status, so callers can write `return sg_fail(...)`. */
sg_status sg_fail(sg_error *error, sg_status status, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

/* Returns the status of expr from the calling function when it is not SG_OK. */
#define SG_TRY(expr)                      \
  do {                                    \
    sg_status sg_try_ = (expr);           \
    if (sg_try_ != SG_OK) return sg_try_; \
  } while (0)

#endif
