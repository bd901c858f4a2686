/* safetensors.h: memory-mapped, validated reader of .safetensors files (never pickle). */
#ifndef SG_SAFETENSORS_H
#define SG_SAFETENSORS_H

#include "tensor.h"

/* Largest JSON header accepted: 16 MiB. A 2B-parameter model's header is well under 1 MiB, and
 * json-glib builds a tree several times the header's size before anything is checked. */
#define SG_SAFETENSORS_MAX_HEADER (16u * 1024u * 1024u)

typedef struct {
  const char *name;
  sg_dtype dtype;
  int ndim;
  int64_t dims[SG_MAX_DIMS];
  const void *data; /* inside the mapping, read-only */
  size_t nbytes;
} sg_st_entry;

typedef struct sg_safetensors sg_safetensors;

/* Maps and validates the whole file: header length bound, JSON syntax (json-glib), known dtypes
 * (F32, F16, BF16), shape × dtype size = byte size, offsets inside the data area, no overlaps.
 * Errors name the file and, where one is at fault, the tensor. */
sg_status sg_safetensors_open(const char *path, sg_safetensors **out, sg_error *error);
void sg_safetensors_close(sg_safetensors *file);
const char *sg_safetensors_path(const sg_safetensors *file);
int sg_safetensors_count(const sg_safetensors *file);
const sg_st_entry *sg_safetensors_entry(const sg_safetensors *file, int index); /* data order */
const sg_st_entry *sg_safetensors_find(const sg_safetensors *file, const char *name);
/* A value from the header's "__metadata__" string map, or NULL. */
const char *sg_safetensors_metadata(const sg_safetensors *file, const char *key);

/* Writes tensors (f32/f16/bf16 as given, plain layout) to a safetensors file, atomically (temp +
 * rename). metadata_key_values: NULL, or "key", "value", ..., NULL for "__metadata__". */
sg_status sg_safetensors_write(const char *path, int count, const char *const *names,
                               const sg_tensor *tensors, const char *const *metadata_key_values,
                               sg_error *error);

#endif
