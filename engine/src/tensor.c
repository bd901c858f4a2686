/* tensor.c: tensor headers, shape strings, half-precision conversion and the activation arena. */
#include "tensor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "error.h"

size_t sg_dtype_size(sg_dtype dtype) {
  switch (dtype) {
    case SG_F32: return 4;
    case SG_F16: return 2;
    case SG_BF16: return 2;
    case SG_I8: return 1;
  }
  return 0;
}

const char *sg_dtype_name(sg_dtype dtype) {
  switch (dtype) {
    case SG_F32: return "F32";
    case SG_F16: return "F16";
    case SG_BF16: return "BF16";
    case SG_I8: return "I8";
  }
  return "unknown";
}

int64_t sg_tensor_numel(const sg_tensor *t) {
  int64_t numel = 1;
  for (int i = 0; i < t->ndim; i++) numel *= t->dims[i];
  return numel;
}

size_t sg_tensor_nbytes(const sg_tensor *t) {
  return (size_t)sg_tensor_numel(t) * sg_dtype_size(t->dtype);
}

size_t sg_weight_mapping_bytes(size_t nbytes) {
  const size_t page = (size_t)sysconf(_SC_PAGESIZE);
  return nbytes == 0 ? page : (nbytes + page - 1) / page * page;
}

void *sg_pages_alloc(size_t nbytes) {
  const size_t bytes = sg_weight_mapping_bytes(nbytes);
  void *memory = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
  if (bytes >= ((size_t)2 << 20)) madvise(memory, bytes, MADV_HUGEPAGE); /* a hint only */
#endif
  return memory;
}

void sg_pages_free(void *memory, size_t nbytes) {
  if (memory) munmap(memory, sg_weight_mapping_bytes(nbytes));
}

sg_tensor sg_tensor_view(void *data, sg_dtype dtype, int ndim, const int64_t *dims) {
  sg_tensor t;
  memset(&t, 0, sizeof t);
  t.dtype = dtype;
  t.format = SG_FORMAT_PLAIN;
  t.ndim = ndim < 0 ? 0 : (ndim > SG_MAX_DIMS ? SG_MAX_DIMS : ndim);
  for (int i = 0; i < t.ndim; i++) t.dims[i] = dims[i];
  t.data = data;
  return t;
}

sg_tensor sg_tensor_1d(float *data, int64_t d0) {
  int64_t dims[1] = {d0};
  return sg_tensor_view(data, SG_F32, 1, dims);
}

sg_tensor sg_tensor_2d(float *data, int64_t d0, int64_t d1) {
  int64_t dims[2] = {d0, d1};
  return sg_tensor_view(data, SG_F32, 2, dims);
}

sg_tensor sg_tensor_3d(float *data, int64_t d0, int64_t d1, int64_t d2) {
  int64_t dims[3] = {d0, d1, d2};
  return sg_tensor_view(data, SG_F32, 3, dims);
}

int sg_tensor_same_shape(const sg_tensor *a, const sg_tensor *b) {
  if (a->ndim != b->ndim) return 0;
  for (int i = 0; i < a->ndim; i++) {
    if (a->dims[i] != b->dims[i]) return 0;
  }
  return 1;
}

const char *sg_shape_string(const sg_tensor *t, char *buf, size_t size) {
  if (size == 0) return buf;
  size_t used = 0;
  buf[0] = '\0';
  used += (size_t)snprintf(buf, size, "[");
  for (int i = 0; i < t->ndim && used < size; i++) {
    used += (size_t)snprintf(buf + used, size - used, i ? ", %lld" : "%lld", (long long)t->dims[i]);
  }
  if (used < size) snprintf(buf + used, size - used, "]");
  return buf;
}

float sg_bf16_to_f32(uint16_t v) {
  uint32_t bits = (uint32_t)v << 16;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

uint16_t sg_f32_to_bf16(float v) {
  uint32_t bits;
  memcpy(&bits, &v, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x0040u); /* quiet NaN */
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return (uint16_t)((bits + rounding) >> 16);
}

float sg_f16_to_f32(uint16_t v) {
  uint32_t sign = (uint32_t)(v & 0x8000u) << 16;
  uint32_t exponent = (v >> 10) & 0x1fu;
  uint32_t mantissa = v & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13); /* inf or NaN */
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else {
    /* zero or subnormal: mantissa * 2^-24, exact in f32 */
    float f = ldexpf((float)mantissa, -24);
    memcpy(&bits, &f, sizeof bits);
    bits |= sign;
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* ---- arena ----
 * Offsets are "linear": the bytes in use as if all chunks were one block. Each chunk in use
 * records the linear offset where it starts, so a mark is just a linear offset. Allocation sizes
 * are multiples of SG_ARENA_ALIGN, so the peak is exactly what one block needs to replay a pass. */

#define SG_ARENA_ALIGN 64
#define SG_ARENA_MIN_CHUNK ((size_t)16 << 20)

typedef struct {
  char *memory;
  size_t capacity;
  size_t start; /* linear offset of memory[0] while the chunk is in use */
} sg_arena_chunk;

struct sg_arena {
  sg_arena_chunk *chunks;
  int chunk_count;    /* chunks holding memory */
  int chunk_capacity; /* slots in chunks[] */
  int current;        /* chunk receiving allocations; -1 before the first */
  size_t top;         /* linear bytes in use */
  size_t peak;
};

sg_arena *sg_arena_new(void) {
  sg_arena *arena = calloc(1, sizeof *arena);
  if (arena) arena->current = -1;
  return arena;
}

void sg_arena_free(sg_arena *arena) {
  if (!arena) return;
  for (int i = 0; i < arena->chunk_count; i++)
    sg_pages_free(arena->chunks[i].memory, arena->chunks[i].capacity);
  free(arena->chunks);
  free(arena);
}

/* Page-aligned, so also SG_ARENA_ALIGN-aligned. */
static void *aligned_block(size_t bytes) {
  return sg_pages_alloc(bytes ? bytes : SG_ARENA_ALIGN);
}

/* Makes chunk `index` able to hold `bytes`, adding or replacing it. */
static int arena_prepare_chunk(sg_arena *arena, int index, size_t bytes) {
  if (index < arena->chunk_count && arena->chunks[index].capacity >= bytes) return 1;
  size_t total = 0;
  for (int i = 0; i < arena->chunk_count; i++) total += arena->chunks[i].capacity;
  size_t capacity = bytes;
  if (capacity < SG_ARENA_MIN_CHUNK) capacity = SG_ARENA_MIN_CHUNK;
  if (capacity < total && total <= SIZE_MAX / 2) capacity = total; /* geometric growth */
  char *memory = aligned_block(capacity);
  if (!memory && capacity > bytes) {
    capacity = bytes;
    memory = aligned_block(capacity);
  }
  if (!memory) return 0;
  if (index < arena->chunk_count) {
    /* a free chunk that is too small */
    sg_pages_free(arena->chunks[index].memory, arena->chunks[index].capacity);
  } else {
    if (arena->chunk_count == arena->chunk_capacity) {
      int slots = arena->chunk_capacity ? arena->chunk_capacity * 2 : 8;
      sg_arena_chunk *chunks = realloc(arena->chunks, (size_t)slots * sizeof *chunks);
      if (!chunks) {
        sg_pages_free(memory, capacity);
        return 0;
      }
      arena->chunks = chunks;
      arena->chunk_capacity = slots;
    }
    arena->chunk_count++;
  }
  arena->chunks[index].memory = memory;
  arena->chunks[index].capacity = capacity;
  return 1;
}

float *sg_arena_alloc(sg_arena *arena, int64_t count, sg_error *error) {
  if (count < 0 || (uint64_t)count > (SIZE_MAX - SG_ARENA_ALIGN) / sizeof(float)) {
    sg_fail(error, SG_ERR_OUT_OF_MEMORY, "arena: cannot allocate %lld floats (size out of range)",
            (long long)count);
    return NULL;
  }
  size_t bytes = (size_t)count * sizeof(float);
  bytes = (bytes + SG_ARENA_ALIGN - 1) / SG_ARENA_ALIGN * SG_ARENA_ALIGN;
  if (bytes == 0) bytes = SG_ARENA_ALIGN;
  if (arena->top > SIZE_MAX - bytes) {
    sg_fail(error, SG_ERR_OUT_OF_MEMORY, "arena: size overflow allocating %zu bytes", bytes);
    return NULL;
  }
  if (arena->current >= 0) {
    sg_arena_chunk *chunk = &arena->chunks[arena->current];
    size_t offset = arena->top - chunk->start;
    if (chunk->capacity - offset >= bytes) {
      arena->top += bytes;
      if (arena->top > arena->peak) arena->peak = arena->top;
      return (float *)(void *)(chunk->memory + offset);
    }
  }
  int next = arena->current + 1;
  if (!arena_prepare_chunk(arena, next, bytes)) {
    sg_fail(error, SG_ERR_OUT_OF_MEMORY,
            "arena: out of memory allocating %zu bytes (%zu bytes already in use)", bytes,
            arena->top);
    return NULL;
  }
  arena->current = next;
  arena->chunks[next].start = arena->top;
  arena->top += bytes;
  if (arena->top > arena->peak) arena->peak = arena->top;
  return (float *)(void *)arena->chunks[next].memory;
}

size_t sg_arena_mark(const sg_arena *arena) { return arena->top; }

void sg_arena_reset(sg_arena *arena, size_t mark) {
  if (mark >= arena->top) return;
  arena->top = mark;
  /* The chunk holding the new top is the last one in use that starts at or below it. */
  while (arena->current > 0 && arena->chunks[arena->current].start > mark) arena->current--;
}

void sg_arena_settle(sg_arena *arena) {
  if (arena->top != 0 || arena->peak == 0) return; /* only between passes */
  if (arena->chunk_count == 1 && arena->chunks[0].capacity >= arena->peak) return;
  char *memory = aligned_block(arena->peak);
  if (!memory) return; /* keep the chunks; they still work */
  for (int i = 0; i < arena->chunk_count; i++)
    sg_pages_free(arena->chunks[i].memory, arena->chunks[i].capacity);
  arena->chunks[0].memory = memory;
  arena->chunks[0].capacity = arena->peak;
  arena->chunks[0].start = 0;
  arena->chunk_count = 1;
  arena->current = 0;
}

size_t sg_arena_peak_bytes(const sg_arena *arena) { return arena->peak; }

sg_status sg_arena_tensor(sg_arena *arena, int ndim, const int64_t *dims, sg_tensor *out,
                          sg_error *error) {
  if (ndim < 0 || ndim > SG_MAX_DIMS) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "arena: tensor with %d dimensions (at most %d)",
                   ndim, SG_MAX_DIMS);
  }
  int64_t count = 1;
  for (int i = 0; i < ndim; i++) {
    if (dims[i] < 0) {
      return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "arena: negative dimension %lld",
                     (long long)dims[i]);
    }
    if (dims[i] != 0 && count > INT64_MAX / dims[i]) {
      return sg_fail(error, SG_ERR_OUT_OF_MEMORY, "arena: tensor size overflows");
    }
    count *= dims[i];
  }
  float *data = sg_arena_alloc(arena, count, error);
  if (!data) return error ? error->status : SG_ERR_OUT_OF_MEMORY;
  *out = sg_tensor_view(data, SG_F32, ndim, dims);
  return SG_OK;
}

/* One row of sg_quantize_rows_int8 (finite values). Written so that both loops vectorize: a
 * comparison instead of fmaxf, and rounding to nearest even by adding and taking away 1.5 · 2^23
 * (exact for |v| < 2^22, the same as lrintf in the default rounding mode) instead of a call. */
static void quantize_row_int8(const float *row, int64_t cols, int8_t *q, float *scale_out) {
  const float round_magic = 12582912.0f; /* 1.5 · 2^23 */
  float largest = 0.0f;
  for (int64_t k = 0; k < cols; k++) {
    const float magnitude = fabsf(row[k]);
    largest = magnitude > largest ? magnitude : largest;
  }
  const float scale = largest > 0.0f ? largest / 127.0f : 1.0f;
  *scale_out = scale;
  for (int64_t k = 0; k < cols; k++) {
    /* |row[k] / scale| <= 127 up to rounding; the clamp keeps a rounding slip in range */
    float code = (row[k] / scale + round_magic) - round_magic;
    code = code > 127.0f ? 127.0f : code < -127.0f ? -127.0f : code;
    q[k] = (int8_t)code;
  }
}

void sg_quantize_rows_int8(const float *w, int64_t rows, int64_t cols, int8_t *q, float *scales) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; r++)
    quantize_row_int8(w + r * cols, cols, q + r * cols, &scales[r]);
}

int64_t sg_quantize_bf16_rows_int8(const uint16_t *w, int64_t rows, int64_t cols, int8_t *q,
                                   float *scales) {
  int64_t nonfinite = 0, failed = 0;
#pragma omp parallel reduction(+ : nonfinite, failed)
  {
    float *row = malloc((size_t)(cols > 0 ? cols : 1) * sizeof *row); /* one per thread */
    failed += row == NULL;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
      if (!row) continue;
      for (int64_t k = 0; k < cols; k++) {
        const uint16_t half = w[r * cols + k];
        nonfinite += sg_bf16_is_nonfinite(half);
        row[k] = sg_bf16_to_f32(half);
      }
      quantize_row_int8(row, cols, q + r * cols, &scales[r]);
    }
    free(row);
  }
  return failed ? -1 : nonfinite;
}

void sg_dequantize_rows_int8(const int8_t *q, const float *scales, int64_t rows, int64_t cols,
                             float *out) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const float scale = scales[r];
    for (int64_t k = 0; k < cols; k++) out[r * cols + k] = (float)q[r * cols + k] * scale;
  }
}
