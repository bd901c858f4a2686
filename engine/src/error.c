/* error.c: filling sg_error, status names, and freeing memory handed out by the public API. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

sg_status sg_fail(sg_error *error, sg_status status, const char *format, ...) {
  if (error) {
    va_list args;
    va_start(args, format);
    vsnprintf(error->message, sizeof error->message, format, args);
    va_end(args);
    error->status = status;
  }
  return status;
}

const char *sg_status_name(sg_status status) {
  switch (status) {
    case SG_OK: return "ok";
    case SG_ERR_INVALID_ARGUMENT: return "invalid argument";
    case SG_ERR_IO: return "input/output error";
    case SG_ERR_FORMAT: return "format error";
    case SG_ERR_OUT_OF_MEMORY: return "out of memory";
    case SG_ERR_CANCELLED: return "cancelled";
    case SG_ERR_BACKEND: return "backend error";
  }
  return "unknown status";
}

void sg_free(void *pointer) { free(pointer); }
