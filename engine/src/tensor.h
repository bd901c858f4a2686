/* tensor.h: dense tensors (shape, dtype, memory format) and the activation arena. */
#ifndef SG_TENSOR_H
#define SG_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "snapgen.h"

#define SG_MAX_DIMS 4

/* SG_I8: a weight matrix [N,K] of int8 codes with one f32 scale per row (sg_tensor.scales).
 * The ops take f32, except sg_linear's weight, which may also be SG_I8 or SG_BF16 (widened to
 * f32 a block of rows at a time). */
typedef enum { SG_F32 = 0, SG_F16 = 1, SG_BF16 = 2, SG_I8 = 3 } sg_dtype;

/* Activations are row-major over dims: images are [C, H, W] (batch 1, NCHW), token sequences are
 * [tokens, channels]. SG_FORMAT_NHWC marks an image stored channels-last, dims still [C, H, W];
 * SG_FORMAT_BLOCKED8 one stored in blocks of 8 channels, [C/8][H][W][8] (oneDNN's nChw8c; C a
 * multiple of 8): the layout of oneDNN's AVX2 kernels, which run the decoder's convolutions
 * faster than channels-last. */
typedef enum { SG_FORMAT_PLAIN = 0, SG_FORMAT_NHWC = 1, SG_FORMAT_BLOCKED8 = 2 } sg_format;

/* What a backend that has packed a weight tensor (reordered into its own layout, see
 * constant_id) may do with the memory of the plain values. */
typedef enum {
  SG_WEIGHT_KEEP = 0, /* leave it: activations, or weights that others may still read */
  /* Pages of a read-only private file mapping: they may be dropped (madvise) after packing; the
   * kernel reads them from the file again if they are touched later. */
  SG_WEIGHT_FILE_PAGES,
  /* Anonymous pages of their own (a page-aligned mapping of sg_weight_mapping_bytes) that only
   * the one backend running this model reads: it may replace them by an inaccessible mapping
   * after packing (the address stays reserved; the owner unmaps it) and then works from its
   * packed copy alone. */
  SG_WEIGHT_HANDOFF
} sg_weight_memory;

typedef struct {
  sg_dtype dtype;
  sg_format format;
  int ndim;
  int64_t dims[SG_MAX_DIMS];
  void *data;
  /* Nonzero for model weights: their values stay unchanged at this address for as long as this id
   * lives (one id per sg_weights object, never reused), so a backend may keep copies of them
   * reordered into its preferred layout, keyed by (data, constant_id). 0 for activations. */
  uint64_t constant_id;
  sg_weight_memory memory; /* SG_WEIGHT_KEEP unless constant_id is set */
  const float *scales;     /* SG_I8 only: row r's values are data[r][k] * scales[r] */
} sg_tensor;

/* Bytes of the page-aligned mapping that holds an SG_WEIGHT_HANDOFF tensor of nbytes. */
size_t sg_weight_mapping_bytes(size_t nbytes);

/* A zero-filled, page-aligned mapping of its own for a large buffer (packed weights, arena blocks,
 * scratch), that goes back to the system when freed; NULL when memory is exhausted. Asks for
 * 2 MiB pages where the system allows them (transparent huge pages in "madvise" mode, Debian's
 * default): on the virtual machines measured here a 4 KiB page fault costs about 10 µs, and the
 * first pass over 700 MiB of packed weights spent about 2 s in them. Free with the same nbytes. */
void *sg_pages_alloc(size_t nbytes);
void sg_pages_free(void *memory, size_t nbytes);

size_t sg_dtype_size(sg_dtype dtype);
const char *sg_dtype_name(sg_dtype dtype);
int64_t sg_tensor_numel(const sg_tensor *t);
size_t sg_tensor_nbytes(const sg_tensor *t);
/* A tensor header over existing memory (no allocation). */
sg_tensor sg_tensor_view(void *data, sg_dtype dtype, int ndim, const int64_t *dims);
sg_tensor sg_tensor_1d(float *data, int64_t d0);
sg_tensor sg_tensor_2d(float *data, int64_t d0, int64_t d1);
sg_tensor sg_tensor_3d(float *data, int64_t d0, int64_t d1, int64_t d2);
int sg_tensor_same_shape(const sg_tensor *a, const sg_tensor *b);
/* "[256, 3, 3]" into buf */
const char *sg_shape_string(const sg_tensor *t, char *buf, size_t size);

/* Converts half-precision storage to f32. */
float sg_bf16_to_f32(uint16_t v);
/* A bf16 is Inf or NaN when its exponent bits are all ones (an f32's top half). */
static inline int sg_bf16_is_nonfinite(uint16_t v) {
  return (v & 0x7f80u) == 0x7f80u;
}
uint16_t sg_f32_to_bf16(float v); /* round to nearest even */
float sg_f16_to_f32(uint16_t v);
/* Symmetric int8 per row of a [rows, cols] matrix: scales[r] = max|w[r][:]| / 127 (1 for an
 * all-zero row) and q = round-to-nearest-even(w / scales[r]), so |w - q·scale| <= scale / 2. */
void sg_quantize_rows_int8(const float *w, int64_t rows, int64_t cols, int8_t *q, float *scales);
/* The same from bf16 values, exactly as if they were widened first, without an f32 copy of the
 * matrix. Returns how many values are NaN/Inf (then q and scales mean nothing), or -1 when a
 * thread's row buffer could not be allocated. */
int64_t sg_quantize_bf16_rows_int8(const uint16_t *w, int64_t rows, int64_t cols, int8_t *q,
                                   float *scales);
/* out[r][k] = q[r][k] * scales[r] (OpenMP over rows). */
void sg_dequantize_rows_int8(const int8_t *q, const float *scales, int64_t rows, int64_t cols,
                             float *out);

/* Activation arena: a stack of f32 buffers for one forward pass. sg_arena_mark/sg_arena_reset
 * free everything allocated after a mark. The first pass grows it in chunks and records the peak;
 * sg_arena_settle then makes one block of the peak size, so later passes allocate nothing. */
typedef struct sg_arena sg_arena;

sg_arena *sg_arena_new(void);
void sg_arena_free(sg_arena *arena);
/* NULL when memory is exhausted (error filled). Memory is 64-byte aligned, not zeroed. */
float *sg_arena_alloc(sg_arena *arena, int64_t count, sg_error *error);
size_t sg_arena_mark(const sg_arena *arena);
void sg_arena_reset(sg_arena *arena, size_t mark);
void sg_arena_settle(sg_arena *arena);
size_t sg_arena_peak_bytes(const sg_arena *arena);
/* An f32 activation tensor from the arena; returns SG_OK or SG_ERR_OUT_OF_MEMORY. */
sg_status sg_arena_tensor(sg_arena *arena, int ndim, const int64_t *dims, sg_tensor *out,
                          sg_error *error);

#endif
