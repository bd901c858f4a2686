/* weights.c: model parameters by name from a folder of safetensors files, or seeded random ones. */
#include "weights.h"

#include <glib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "error.h"
#include "rng.h"
#include "vector_clones.h"

/* Random weights use Philox stream 1 (stream 0 is the initial latent) with the key
 * seed XOR fnv1a64(name), so each tensor's values depend only on the seed and its name. */
#define SG_WEIGHTS_RANDOM_STREAM 1u

typedef struct {
  sg_safetensors *file;
  const sg_st_entry *entry;
} located_tensor;

/* A tensor already handed out: its f32 values (owned: an anonymous mapping of
 * sg_weight_mapping_bytes of its size, so a backend may release its pages; or in a file mapping)
 * and shape. */
typedef struct {
  float *data; /* dtype's values: f32, int8 codes (with scales) or the file's bf16 values */
  sg_dtype dtype;
  int owned;
  size_t nbytes;
  int ndim;
  int64_t dims[SG_MAX_DIMS];
  float *scales; /* g_malloc'd, one per row; NULL for f32 values */
} fetched_tensor;

struct sg_weights {
  char *source; /* folder path, or "random weights (seed N)", for messages */
  int random;
  uint64_t seed;
  sg_safetensors **files;
  int file_count;
  GHashTable *located; /* name -> located_tensor* (names owned by the files) */
  GHashTable *fetched; /* name (owned) -> fetched_tensor* */
  GHashTable *tables;  /* names (owned) handed out by sg_weights_get_table in their stored dtype */
  int64_t parameter_count;
  size_t owned_bytes;
  uint64_t constant_id; /* stamped on every tensor handed out (tensor.h): random, never 0 */
  int handoff;          /* sg_weights_hand_off_to_backend was called */
  int int8_linears;     /* sg_weights_store_linears_int8 was called */
  int bf16_linears;     /* sg_weights_keep_bf16_linears was called */
};

/* The form sg_weights_get_linear hands a matrix out in (fetched_tensor.dtype). */
typedef enum { FORM_F32 = 0, FORM_INT8, FORM_FILE_BF16 } stored_form;

static void free_owned(float *data, size_t nbytes) {
  sg_pages_free(data, nbytes);
}

static void free_fetched(gpointer pointer) {
  fetched_tensor *tensor = pointer;
  if (tensor->owned) free_owned(tensor->data, tensor->nbytes);
  g_free(tensor->scales);
  g_free(tensor);
}

static sg_weights *weights_new(const char *source) {
  sg_weights *weights = g_new0(sg_weights, 1);
  weights->source = g_strdup(source);
  weights->located = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, g_free);
  weights->fetched = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, free_fetched);
  weights->tables = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  /* Random rather than counted: a later sg_weights at the same addresses must get another id. */
  do {
    weights->constant_id = ((uint64_t)g_random_int() << 32) | g_random_int();
  } while (weights->constant_id == 0);
  return weights;
}

static int compare_strings(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The variant a safetensors file name is of ("bf16" for NAME.bf16.safetensors), NULL for none. */
static const char *file_variant(const char *name) {
  static const char *const variants[] = {"bf16", "fp16"};
  for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
    char suffix[32];
    g_snprintf(suffix, sizeof suffix, ".%s.safetensors", variants[i]);
    if (g_str_has_suffix(name, suffix)) return variants[i];
  }
  return NULL;
}

sg_status sg_weights_open_folder(const char *folder, sg_weights **out, sg_error *error) {
  return sg_weights_open_folder_variant(folder, NULL, out, error);
}

sg_status sg_weights_open_folder_variant(const char *folder, const char *variant, sg_weights **out,
                                         sg_error *error) {
  *out = NULL;
  GError *gerror = NULL;
  GDir *dir = g_dir_open(folder, 0, &gerror);
  if (!dir) {
    sg_fail(error, SG_ERR_IO, "%s: cannot open folder: %s", folder, gerror->message);
    g_error_free(gerror);
    return SG_ERR_IO;
  }
  GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
  GPtrArray *variant_names = g_ptr_array_new_with_free_func(g_free);
  const char *name;
  while ((name = g_dir_read_name(dir))) {
    if (!g_str_has_suffix(name, ".safetensors")) continue;
    const char *of = file_variant(name);
    if (!of)
      g_ptr_array_add(names, g_strdup(name));
    else if (variant && !strcmp(of, variant))
      g_ptr_array_add(variant_names, g_strdup(name));
  }
  g_dir_close(dir);
  if (variant_names->len > 0) {
    GPtrArray *plain = names;
    names = variant_names;
    variant_names = plain;
  }
  g_ptr_array_free(variant_names, TRUE);
  if (names->len == 0) {
    g_ptr_array_free(names, TRUE);
    return sg_fail(error, SG_ERR_FORMAT,
                   "%s: no .safetensors files in the folder (besides .bf16/.fp16 variants)",
                   folder);
  }
  qsort(names->pdata, names->len, sizeof(char *), compare_strings);

  sg_weights *weights = weights_new(folder);
  weights->files = g_new0(sg_safetensors *, names->len);
  sg_status status = SG_OK;
  for (guint i = 0; i < names->len && status == SG_OK; i++) {
    char *path = g_build_filename(folder, names->pdata[i], NULL);
    sg_safetensors *file;
    status = sg_safetensors_open(path, &file, error);
    g_free(path);
    if (status != SG_OK) break;
    weights->files[weights->file_count++] = file;
    for (int e = 0; e < sg_safetensors_count(file) && status == SG_OK; e++) {
      const sg_st_entry *entry = sg_safetensors_entry(file, e);
      located_tensor *earlier = g_hash_table_lookup(weights->located, entry->name);
      if (earlier) {
        status = sg_fail(error, SG_ERR_FORMAT, "%s: tensor '%s' appears in both %s and %s",
                         folder, entry->name, sg_safetensors_path(earlier->file),
                         sg_safetensors_path(file));
        break;
      }
      located_tensor *located = g_new(located_tensor, 1);
      located->file = file;
      located->entry = entry;
      g_hash_table_insert(weights->located, (gpointer)entry->name, located);
    }
  }
  g_ptr_array_free(names, TRUE);
  if (status != SG_OK) {
    sg_weights_free(weights);
    return status;
  }
  *out = weights;
  return SG_OK;
}

sg_weights *sg_weights_new_random(uint64_t seed) {
  char source[64];
  g_snprintf(source, sizeof source, "random weights (seed %llu)", (unsigned long long)seed);
  sg_weights *weights = weights_new(source);
  weights->random = 1;
  weights->seed = seed;
  return weights;
}

void sg_weights_hand_off_to_backend(sg_weights *weights) { weights->handoff = 1; }

void sg_weights_store_linears_int8(sg_weights *weights) { weights->int8_linears = 1; }

void sg_weights_keep_bf16_linears(sg_weights *weights) {
  weights->bf16_linears = 1;
}

void sg_weights_free(sg_weights *weights) {
  if (!weights) return;
  g_hash_table_destroy(weights->fetched);
  g_hash_table_destroy(weights->tables);
  g_hash_table_destroy(weights->located);
  for (int i = 0; i < weights->file_count; i++) sg_safetensors_close(weights->files[i]);
  g_free(weights->files);
  g_free(weights->source);
  g_free(weights);
}

static uint64_t fnv1a64(const char *text) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
    hash ^= *p;
    hash *= 0x100000001b3ull;
  }
  return hash;
}

/* 1-D tensors named "...norm*.weight" or "...gamma" are scales: ones. */
static int is_norm_scale(const char *name) {
  if (g_str_has_suffix(name, "gamma")) return 1;
  if (!g_str_has_suffix(name, ".weight")) return 0;
  size_t stem_length = strlen(name) - strlen(".weight");
  const char *segment = name;
  for (size_t i = 0; i < stem_length; i++) {
    if (name[i] == '.') segment = name + i + 1;
  }
  return strncmp(segment, "norm", 4) == 0;
}

static void format_shape(int ndim, const int64_t *dims, char *buf, size_t size) {
  sg_tensor view = sg_tensor_view(NULL, SG_F32, ndim, dims);
  sg_shape_string(&view, buf, size);
}

static int64_t shape_numel(int ndim, const int64_t *dims) {
  int64_t numel = 1;
  for (int i = 0; i < ndim; i++) numel *= dims[i];
  return numel;
}

/* Owned values get a mapping of their own (page-aligned, zero-filled), which a backend may
 * release page by page (tensor.h, SG_WEIGHT_HANDOFF) and which goes back to the system when freed. */
static float *alloc_floats(int64_t count) {
  return sg_pages_alloc((size_t)count * sizeof(float));
}

/* Widens f16/bf16 values to f32 and says whether all are finite, in one pass on all cores (the
 * full-size text encoders widen 3.2 billion values at load). The bf16 loop is written out so that
 * it vectorizes: a bf16 is the top half of an f32, Inf/NaN when its exponent is all ones. */
static int widen_to_f32(const uint8_t *bytes, sg_dtype dtype, int64_t numel, float *out) {
  int64_t nonfinite = 0;
  if (dtype == SG_BF16) {
    uint32_t *bits = (uint32_t *)out;
#pragma omp parallel for reduction(+ : nonfinite) schedule(static) if (numel >= (1 << 20))
    for (int64_t i = 0; i < numel; i++) {
      uint16_t half;
      memcpy(&half, bytes + 2 * i, 2);
      bits[i] = (uint32_t)half << 16;
      nonfinite += sg_bf16_is_nonfinite(half);
    }
  } else {
#pragma omp parallel for reduction(+ : nonfinite) schedule(static) if (numel >= (1 << 20))
    for (int64_t i = 0; i < numel; i++) {
      float v;
      if (dtype == SG_F32) {
        memcpy(&v, bytes + 4 * i, 4);
      } else {
        uint16_t half;
        memcpy(&half, bytes + 2 * i, 2);
        v = sg_f16_to_f32(half);
      }
      out[i] = v;
      nonfinite += !isfinite(v);
    }
  }
  return nonfinite == 0;
}

/* Gives back the resident pages wholly inside a tensor in a read-only file mapping: the kernel
 * reads them from the file again when touched. */
static void drop_file_pages(const void *data, size_t nbytes) {
  const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  uintptr_t start = ((uintptr_t)data + page - 1) / page * page;
  uintptr_t end = ((uintptr_t)data + nbytes) / page * page;
  if (end > start) madvise((void *)start, end - start, MADV_DONTNEED);
}

static sg_status make_random(sg_weights *weights, const char *name, int ndim, const int64_t *dims,
                             fetched_tensor *out, sg_error *error) {
  int64_t numel = shape_numel(ndim, dims);
  float *data = alloc_floats(numel);
  if (!data) {
    return sg_fail(error, SG_ERR_OUT_OF_MEMORY, "%s: out of memory for tensor '%s'",
                   weights->source, name);
  }
  if (ndim >= 2) {
    int64_t fan_in = dims[0] > 0 ? numel / dims[0] : 0;
    float bound = fan_in > 0 ? (float)(1.0 / sqrt((double)fan_in)) : 0.0f;
    sg_uniform_fill(weights->seed ^ fnv1a64(name), SG_WEIGHTS_RANDOM_STREAM, -bound, bound, data,
                    numel);
  } else {
    float value = is_norm_scale(name) ? 1.0f : 0.0f;
    for (int64_t i = 0; i < numel; i++) data[i] = value;
  }
  out->data = data;
  out->owned = 1;
  out->nbytes = (size_t)numel * sizeof(float);
  weights->owned_bytes += out->nbytes;
  return SG_OK;
}

/* f32 values of a file tensor: the mapping itself when f32 and aligned, else a converted copy. */
static sg_status load_from_file(sg_weights *weights, const located_tensor *located,
                                const char *name, fetched_tensor *out, sg_error *error) {
  const sg_st_entry *entry = located->entry;
  int64_t numel = (int64_t)(entry->nbytes / sg_dtype_size(entry->dtype));
  const void *source = entry->data;
  if (entry->dtype == SG_F32 && ((uintptr_t)source % sizeof(float)) == 0) {
    out->data = (float *)source; /* read-only mapping: callers never write weights */
    out->owned = 0;
  } else {
    float *data = alloc_floats(numel);
    if (!data) {
      return sg_fail(error, SG_ERR_OUT_OF_MEMORY, "%s: out of memory converting tensor '%s'",
                     sg_safetensors_path(located->file), name);
    }
    int finite = widen_to_f32(source, entry->dtype, numel, data);
    drop_file_pages(source, entry->nbytes); /* the file's copy is read once, for the widening */
    if (!finite) {
      free_owned(data, (size_t)numel * sizeof(float));
      return sg_fail(error, SG_ERR_FORMAT, "%s: tensor '%s' contains NaN/Inf values",
                     sg_safetensors_path(located->file), name);
    }
    out->data = data;
    out->owned = 1;
    weights->owned_bytes += (size_t)numel * sizeof(float);
  }
  out->nbytes = (size_t)numel * sizeof(float);
  if (!out->owned) { /* a widened copy was checked while it was made */
    for (int64_t i = 0; i < numel; i++) {
      if (!isfinite(out->data[i])) {
        return sg_fail(error, SG_ERR_FORMAT, "%s: tensor '%s' contains NaN/Inf values",
                       sg_safetensors_path(located->file), name);
      }
    }
  }
  /* The check read every page; until a backend packs or reads them they need not stay resident. */
  if (!out->owned) drop_file_pages(out->data, out->nbytes);
  return SG_OK;
}

static sg_status check_shape(const char *where, const char *name, int have_ndim,
                             const int64_t *have_dims, int ndim, const int64_t *dims,
                             sg_error *error) {
  int same = have_ndim == ndim;
  for (int i = 0; same && i < ndim; i++) same = have_dims[i] == dims[i];
  if (same) return SG_OK;
  char have[128], want[128];
  format_shape(have_ndim, have_dims, have, sizeof have);
  format_shape(ndim, dims, want, sizeof want);
  return sg_fail(error, SG_ERR_FORMAT, "%s: tensor '%s' has shape %s, expected %s", where, name,
                 have, want);
}

/* Replaces a fetched tensor's f32 values by int8 codes and row scales (sg_quantize_rows_int8);
 * the f32 values go (an owned copy is unmapped, file pages are dropped). With bf16_file set, the
 * tensor has no values yet: they are quantized straight from that file entry's bf16 values
 * (checked for NaN/Inf on the way), with no f32 copy of the whole matrix. */
static sg_status quantize_fetched(sg_weights *weights, const char *where, const char *name,
                                  const sg_st_entry *bf16_file, fetched_tensor *tensor,
                                  sg_error *error) {
  const int64_t rows = tensor->dims[0], cols = tensor->dims[1];
  int8_t *codes = (int8_t *)alloc_floats((rows * cols + 3) / 4);
  float *scales = g_try_new(float, rows > 0 ? rows : 1);
  if (!codes || !scales) {
    if (codes) free_owned((float *)codes, (size_t)(rows * cols));
    g_free(scales);
    return sg_fail(error, SG_ERR_OUT_OF_MEMORY, "%s: out of memory quantizing tensor '%s'",
                   where, name);
  }
  if (bf16_file) {
    const int64_t nonfinite =
        sg_quantize_bf16_rows_int8(bf16_file->data, rows, cols, codes, scales);
    drop_file_pages(bf16_file->data, bf16_file->nbytes); /* read once, for the quantization */
    if (nonfinite != 0) {
      free_owned((float *)codes, (size_t)(rows * cols));
      g_free(scales);
      if (nonfinite < 0)
        return sg_fail(error, SG_ERR_OUT_OF_MEMORY, "%s: out of memory quantizing tensor '%s'",
                       where, name);
      return sg_fail(error, SG_ERR_FORMAT, "%s: tensor '%s' contains NaN/Inf values", where, name);
    }
  } else {
    sg_quantize_rows_int8(tensor->data, rows, cols, codes, scales);
    if (tensor->owned) {
      free_owned(tensor->data, tensor->nbytes);
      weights->owned_bytes -= tensor->nbytes;
    } else {
      drop_file_pages(tensor->data, tensor->nbytes);
    }
  }
  tensor->data = (float *)codes;
  tensor->owned = 1;
  tensor->nbytes = (size_t)(rows * cols);
  tensor->scales = scales;
  tensor->dtype = SG_I8;
  weights->owned_bytes += tensor->nbytes + (size_t)rows * sizeof(float);
  return SG_OK;
}

/* Nonzero when one of n bf16 values is NaN/Inf. An OR of 16-bit flags, which vectorizes as it
 * is (a count widened every flag to 64 bits: 0.091 against 0.019 s for a 768 MB file). */
SG_VECTOR_CLONES
static unsigned bf16_any_nonfinite(const uint8_t *bytes, int64_t n) {
  uint16_t any = 0;
  for (int64_t i = 0; i < n; i++) {
    uint16_t half;
    memcpy(&half, bytes + 2 * i, 2);
    any |= (uint16_t)sg_bf16_is_nonfinite(half);
  }
  return any;
}

/* Whether every bf16 value is finite (exponent not all ones), in one pass on all cores: the
 * full-size text encoders and UNet are 7.3 GB of them, checked at each load. */
static int bf16_all_finite(const uint8_t *bytes, int64_t numel) {
  const int64_t chunk = (int64_t)1 << 16;
  unsigned any = 0;
#pragma omp parallel for reduction(| : any) schedule(static) if (numel >= (1 << 20))
  for (int64_t first = 0; first < numel; first += chunk)
    any |= bf16_any_nonfinite(bytes + 2 * first, numel - first < chunk ? numel - first : chunk);
  return any == 0;
}

/* A bf16 file tensor left in the file mapping (FORM_FILE_BF16), once checked for NaN/Inf. */
static sg_status keep_file_bf16(const located_tensor *located, const char *name,
                                fetched_tensor *out, sg_error *error) {
  const sg_st_entry *entry = located->entry;
  if (!bf16_all_finite(entry->data, (int64_t)(entry->nbytes / 2)))
    return sg_fail(error, SG_ERR_FORMAT, "%s: tensor '%s' contains NaN/Inf values",
                   sg_safetensors_path(located->file), name);
  out->data = (float *)entry->data; /* read-only mapping: callers never write weights */
  out->dtype = SG_BF16;
  out->owned = 0;
  out->nbytes = entry->nbytes;
  return SG_OK;
}

/* The fetched tensor `name` (made on first use, in the given form), or *out NULL when a file has
 * no such tensor. FORM_FILE_BF16 falls back to f32 for random weights and for a tensor that is
 * not stored as bf16 (or not 2-byte aligned). */
static sg_status fetch(sg_weights *weights, const char *name, int ndim, const int64_t *dims,
                       stored_form form, fetched_tensor **out, sg_error *error) {
  *out = NULL;
  if (ndim < 0 || ndim > SG_MAX_DIMS) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: tensor '%s' asked with %d dimensions",
                   weights->source, name, ndim);
  }
  int64_t numel = 1;
  for (int i = 0; i < ndim; i++) {
    if (dims[i] < 0 || (dims[i] > 0 && numel > INT64_MAX / 4 / dims[i])) {
      return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: tensor '%s' asked with an invalid size",
                     weights->source, name);
    }
    numel *= dims[i];
  }
  located_tensor *located = NULL;
  const char *where = weights->source;
  if (!weights->random) {
    located = g_hash_table_lookup(weights->located, name);
    if (!located) return SG_OK;
    where = sg_safetensors_path(located->file);
  }
  fetched_tensor *fetched = g_hash_table_lookup(weights->fetched, name);
  if (fetched) {
    SG_TRY(check_shape(where, name, fetched->ndim, fetched->dims, ndim, dims, error));
    /* FORM_FILE_BF16 may have fallen back to f32; otherwise a form gives one dtype. */
    const int same_form = form == FORM_F32    ? fetched->dtype == SG_F32
                          : form == FORM_INT8 ? fetched->dtype == SG_I8
                                              : fetched->dtype != SG_I8;
    if (!same_form) {
      return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                     "%s: tensor '%s' asked for in another form than before (held as %s)", where,
                     name, sg_dtype_name(fetched->dtype));
    }
    *out = fetched;
    return SG_OK;
  }
  fetched_tensor made = {0};
  const sg_st_entry *bf16_file = NULL;
  sg_status status;
  if (weights->random) {
    made.ndim = ndim;
    memcpy(made.dims, dims, (size_t)ndim * sizeof *dims);
    status = make_random(weights, name, ndim, dims, &made, error);
  } else {
    const sg_st_entry *entry = located->entry;
    made.ndim = entry->ndim;
    memcpy(made.dims, entry->dims, sizeof made.dims);
    status = check_shape(where, name, entry->ndim, entry->dims, ndim, dims, error);
    const int bf16 = entry->dtype == SG_BF16 && (uintptr_t)entry->data % 2 == 0;
    if (status == SG_OK && bf16 && form == FORM_FILE_BF16)
      status = keep_file_bf16(located, name, &made, error);
    else if (status == SG_OK && bf16 && form == FORM_INT8)
      bf16_file = entry; /* quantized straight from the file below */
    else if (status == SG_OK)
      status = load_from_file(weights, located, name, &made, error);
  }
  if (status == SG_OK && form == FORM_INT8) {
    status = quantize_fetched(weights, where, name, bf16_file, &made, error);
    if (status != SG_OK && made.owned) free_owned(made.data, made.nbytes);
  }
  if (status != SG_OK) return status;
  fetched = g_new(fetched_tensor, 1);
  *fetched = made;
  g_hash_table_insert(weights->fetched, g_strdup(name), fetched);
  weights->parameter_count += numel;
  *out = fetched;
  return SG_OK;
}

sg_status sg_weights_get_optional(sg_weights *weights, const char *name, int ndim,
                                  const int64_t *dims, sg_tensor *out, int *found,
                                  sg_error *error) {
  *found = 0;
  fetched_tensor *fetched;
  SG_TRY(fetch(weights, name, ndim, dims, FORM_F32, &fetched, error));
  if (!fetched) return SG_OK;
  *out = sg_tensor_view(fetched->data, SG_F32, ndim, dims);
  out->constant_id = weights->constant_id;
  out->memory = !fetched->owned ? SG_WEIGHT_FILE_PAGES
                                : weights->handoff ? SG_WEIGHT_HANDOFF : SG_WEIGHT_KEEP;
  *found = 1;
  return SG_OK;
}

sg_status sg_weights_get_linear(sg_weights *weights, const char *name, int64_t out_features,
                                int64_t in_features, sg_tensor *out, sg_error *error) {
  int64_t dims[2] = {out_features, in_features};
  const stored_form form = weights->int8_linears   ? FORM_INT8
                           : weights->bf16_linears ? FORM_FILE_BF16
                                                   : FORM_F32;
  if (form == FORM_F32) return sg_weights_get(weights, name, 2, dims, out, error);
  fetched_tensor *fetched;
  SG_TRY(fetch(weights, name, 2, dims, form, &fetched, error));
  if (!fetched) return sg_fail(error, SG_ERR_FORMAT, "%s: missing tensor '%s'", weights->source,
                               name);
  if (fetched->dtype == SG_F32) return sg_weights_get(weights, name, 2, dims, out, error);
  *out = sg_tensor_view(fetched->data, fetched->dtype, 2, dims);
  out->scales = fetched->scales;
  out->constant_id = weights->constant_id;
  out->memory = SG_WEIGHT_KEEP; /* widened at each use, never packed */
  return SG_OK;
}

sg_status sg_weights_get(sg_weights *weights, const char *name, int ndim, const int64_t *dims,
                         sg_tensor *out, sg_error *error) {
  int found;
  sg_status status = sg_weights_get_optional(weights, name, ndim, dims, out, &found, error);
  if (status == SG_OK && !found) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: missing tensor '%s'", weights->source, name);
  }
  return status;
}

sg_status sg_weights_get_table(sg_weights *weights, const char *name, int64_t rows, int64_t cols,
                               sg_tensor *out, int *found, sg_error *error) {
  int64_t dims[2] = {rows, cols};
  located_tensor *located = weights->random ? NULL : g_hash_table_lookup(weights->located, name);
  const sg_st_entry *entry = located ? located->entry : NULL;
  /* f32 files are used in place anyway; random weights and odd addresses take the f32 path. */
  if (!entry || entry->dtype == SG_F32 || (uintptr_t)entry->data % 2 != 0) {
    int here = 0;
    sg_status status = sg_weights_get_optional(weights, name, 2, dims, out, &here, error);
    if (found) *found = here;
    if (status == SG_OK && !here && !found)
      return sg_fail(error, SG_ERR_FORMAT, "%s: missing tensor '%s'", weights->source, name);
    return status;
  }
  SG_TRY(check_shape(sg_safetensors_path(located->file), name, entry->ndim, entry->dims, 2, dims,
                     error));
  *out = sg_tensor_view((void *)entry->data, entry->dtype, 2, dims);
  if (g_hash_table_add(weights->tables, g_strdup(name))) weights->parameter_count += rows * cols;
  if (found) *found = 1;
  return SG_OK;
}

sg_status sg_weights_table_row(const sg_tensor *table, const char *name, int64_t row, float *out,
                               sg_error *error) {
  int64_t cols = table->dims[1];
  if (row < 0 || row >= table->dims[0]) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "row %lld of '%s' asked; it has %lld",
                   (long long)row, name, (long long)table->dims[0]);
  }
  if (table->dtype == SG_F32) {
    memcpy(out, (const float *)table->data + row * cols, (size_t)cols * sizeof(float));
  } else {
    const uint16_t *halves = (const uint16_t *)table->data + row * cols;
    for (int64_t j = 0; j < cols; j++)
      out[j] = table->dtype == SG_F16 ? sg_f16_to_f32(halves[j]) : sg_bf16_to_f32(halves[j]);
  }
  for (int64_t j = 0; j < cols; j++) {
    if (!isfinite(out[j])) {
      return sg_fail(error, SG_ERR_FORMAT, "tensor '%s' contains NaN/Inf values (row %lld)", name,
                     (long long)row);
    }
  }
  return SG_OK;
}

int64_t sg_weights_parameter_count(const sg_weights *weights) { return weights->parameter_count; }

size_t sg_weights_owned_bytes(const sg_weights *weights) { return weights->owned_bytes; }

char **sg_weights_unused_names(const sg_weights *weights) {
  GPtrArray *unused = g_ptr_array_new();
  GHashTableIter iter;
  gpointer key;
  g_hash_table_iter_init(&iter, weights->located);
  while (g_hash_table_iter_next(&iter, &key, NULL)) {
    if (!g_hash_table_contains(weights->fetched, key) &&
        !g_hash_table_contains(weights->tables, key))
      g_ptr_array_add(unused, g_strdup(key));
  }
  if (unused->len > 1) qsort(unused->pdata, unused->len, sizeof(char *), compare_strings);
  g_ptr_array_add(unused, NULL);
  return (char **)g_ptr_array_free(unused, FALSE);
}

void sg_weights_free_names(char **names) { g_strfreev(names); }
