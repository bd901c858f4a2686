/* ops.c: the backend object, argument checks with messages in words, and dispatch of every op to
 * the oneDNN or the plain-C implementation. */
#include "ops.h"

#include <math.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "error.h"
#include "ops_internal.h"

sg_backend *sg_backend_new(sg_backend_kind kind, int threads, sg_error *error) {
  if (kind != SG_BACKEND_ONEDNN && kind != SG_BACKEND_REFERENCE) {
    sg_fail(error, SG_ERR_INVALID_ARGUMENT, "unknown backend kind %d", (int)kind);
    return NULL;
  }
  if (threads < 0) {
    sg_fail(error, SG_ERR_INVALID_ARGUMENT, "thread count %d is negative", threads);
    return NULL;
  }
  sg_backend *be = calloc(1, sizeof *be);
  if (!be) {
    sg_fail(error, SG_ERR_OUT_OF_MEMORY, "out of memory creating the backend");
    return NULL;
  }
  be->kind = kind;
#ifdef _OPENMP
  be->threads = threads > 0 ? threads : omp_get_num_procs();
#else
  be->threads = 1;
#endif
  if (kind == SG_BACKEND_ONEDNN) {
    be->dnnl = sg_dnnl_new(error);
    if (!be->dnnl) {
      free(be);
      return NULL;
    }
  }
  return be;
}

void sg_backend_free(sg_backend *backend) {
  if (!backend) return;
  sg_dnnl_free(backend->dnnl);
  sg_pages_free(backend->widened, (size_t)backend->widened_capacity * sizeof(float));
  sg_pages_free(backend->block_out, (size_t)backend->block_out_capacity * sizeof(float));
  free(backend);
}

sg_backend_kind sg_backend_kind_of(const sg_backend *backend) { return backend->kind; }

size_t sg_backend_packed_weight_bytes(const sg_backend *backend) {
  return backend->dnnl ? sg_dnnl_packed_weight_bytes(backend->dnnl) : 0;
}

size_t sg_backend_released_weight_bytes(const sg_backend *backend) {
  return backend->dnnl ? sg_dnnl_released_weight_bytes(backend->dnnl) : 0;
}

void sg_backend_drop_packed_weights(sg_backend *backend) {
  if (backend->dnnl) sg_dnnl_drop_packed_weights(backend->dnnl);
}

const char *sg_backend_name(const sg_backend *backend) {
  return backend->kind == SG_BACKEND_ONEDNN ? "onednn" : "reference";
}

int sg_backend_prefers_channels_last(sg_backend *backend) {
  return backend->kind == SG_BACKEND_ONEDNN && sg_dnnl_prefers_channels_last(backend->dnnl);
}

int sg_backend_convolutions_checked(sg_backend *backend) {
  return backend->kind != SG_BACKEND_ONEDNN || sg_dnnl_convolutions_right(backend->dnnl);
}

int sg_backend_prefers_blocked8(sg_backend *backend) {
  return backend->kind == SG_BACKEND_ONEDNN && sg_dnnl_prefers_blocked8(backend->dnnl);
}

sg_status sg_backend_set_bf16(sg_backend *backend, int on, sg_error *error) {
  if (backend->kind != SG_BACKEND_ONEDNN) {
    if (!on) return SG_OK;
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "the reference backend computes in f32 only; bf16 needs the oneDNN backend");
  }
  return sg_dnnl_set_bf16(backend->dnnl, on, error);
}

float sg_activation_apply(sg_activation act, float x) {
  double v = x;
  switch (act) {
    case SG_ACT_NONE: return x;
    case SG_ACT_SILU: return (float)(v / (1.0 + exp(-v)));
    case SG_ACT_GELU_ERF: return (float)(0.5 * v * (1.0 + erf(v * M_SQRT1_2)));
    case SG_ACT_GELU_TANH: {
      double inner = sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v);
      return (float)(0.5 * v * (1.0 + tanh(inner)));
    }
    case SG_ACT_QUICK_GELU: return (float)(v / (1.0 + exp(-1.702 * v)));
    case SG_ACT_RELU: return x > 0.0f ? x : 0.0f;
    case SG_ACT_TANH: return (float)tanh(v);
  }
  return x;
}

/* ---- argument checks ---- */

/* Each op first sets the thread count: OpenMP (and so oneDNN) reads it per calling thread. */
static void use_threads(const sg_backend *be) {
#ifdef _OPENMP
  omp_set_num_threads(be->threads);
#else
  (void)be;
#endif
}

static sg_status check_backend(const char *op, const sg_backend *be, sg_error *error) {
  if (!be) return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: no backend given", op);
  return SG_OK;
}

/* Which image layouts an op takes besides the plain one (tensor.h). */
enum { IMAGES_PLAIN = 0, IMAGES_NHWC = 1, IMAGES_ANY = 3 /* channels-last or blocked */ };

/* A present f32 tensor with between min_ndim and max_ndim dims, in the plain layout (or an image
 * [C,H,W] in one of the layouts `images` allows). */
static sg_status check_tensor_layout(const char *op, const char *what, const sg_tensor *t,
                                     int min_ndim, int max_ndim, int images, sg_error *error) {
  if (!t) return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: %s is missing", op, what);
  if (!t->data) return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: %s has no data", op, what);
  if (t->dtype != SG_F32) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: %s is %s, the ops take f32", op, what,
                   sg_dtype_name(t->dtype));
  }
  if (t->format == SG_FORMAT_NHWC && (images & IMAGES_NHWC) && t->ndim == 3) {
    /* an image stored channels-last */
  } else if (t->format == SG_FORMAT_BLOCKED8 && images == IMAGES_ANY && t->ndim == 3) {
    if (t->dims[0] % 8 != 0) {
      return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                     "%s: %s is stored in blocks of 8 channels but has %lld channels", op, what,
                     (long long)t->dims[0]);
    }
  } else if (t->format != SG_FORMAT_PLAIN) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: %s is stored %s; this op takes %s", op,
                   what,
                   t->format == SG_FORMAT_NHWC ? "channels-last (NHWC)" : "in blocks of 8 channels",
                   images == IMAGES_NHWC ? "plain or channels-last images" : "the plain layout");
  }
  if (t->ndim < min_ndim || t->ndim > max_ndim) {
    char shape[96];
    if (min_ndim == max_ndim) {
      return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: %s %s has %d dims, expected %d", op, what,
                     sg_shape_string(t, shape, sizeof shape), t->ndim, min_ndim);
    }
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: %s %s has %d dims, expected %d to %d", op,
                   what, sg_shape_string(t, shape, sizeof shape), t->ndim, min_ndim, max_ndim);
  }
  for (int i = 0; i < t->ndim; i++) {
    if (t->dims[i] <= 0) {
      char shape[96];
      return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: %s %s has an empty dimension", op, what,
                     sg_shape_string(t, shape, sizeof shape));
    }
  }
  return SG_OK;
}

static sg_status check_tensor(const char *op, const char *what, const sg_tensor *t, int min_ndim,
                              int max_ndim, sg_error *error) {
  return check_tensor_layout(op, what, t, min_ndim, max_ndim, IMAGES_PLAIN, error);
}

/* An image [C,H,W], plain, channels-last or blocked. */
static sg_status check_image(const char *op, const char *what, const sg_tensor *t,
                             sg_error *error) {
  return check_tensor_layout(op, what, t, 3, 3, IMAGES_ANY, error);
}

/* The output y must have exactly the given shape (an image output in a layout `images` allows). */
static sg_status check_output_layout(const char *op, const sg_tensor *y, int ndim,
                                     const int64_t *dims, int images, sg_error *error) {
  sg_status status = check_tensor_layout(op, "output y", y, 1, SG_MAX_DIMS, images, error);
  if (status != SG_OK) return status;
  int same = y->ndim == ndim;
  for (int i = 0; same && i < ndim; i++) same = y->dims[i] == dims[i];
  if (!same) {
    sg_tensor expected = {.ndim = ndim};
    for (int i = 0; i < ndim; i++) expected.dims[i] = dims[i];
    char got[96], want[96];
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: output y is %s, expected %s", op,
                   sg_shape_string(y, got, sizeof got),
                   sg_shape_string(&expected, want, sizeof want));
  }
  return SG_OK;
}

static sg_status check_output(const char *op, const sg_tensor *y, int ndim, const int64_t *dims,
                              sg_error *error) {
  return check_output_layout(op, y, ndim, dims, IMAGES_PLAIN, error);
}

static sg_status check_not_aliased(const char *op, const sg_tensor *y, const sg_tensor *x,
                                   const char *what, sg_error *error) {
  if (x && x->data == y->data) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: output y may not share memory with %s", op,
                   what);
  }
  return SG_OK;
}

static sg_status check_activation(const char *op, sg_activation act, sg_error *error) {
  if ((int)act < SG_ACT_NONE || (int)act > SG_ACT_TANH) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: unknown activation %d", op, (int)act);
  }
  return SG_OK;
}

/* A per-channel vector (gamma, beta, bias) of length n; absent is allowed when optional. */
static sg_status check_vector(const char *op, const char *what, const sg_tensor *t, int64_t n,
                              int optional, sg_error *error) {
  if (!t && optional) return SG_OK;
  sg_status status = check_tensor(op, what, t, 1, 1, error);
  if (status != SG_OK) return status;
  if (t->dims[0] != n) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: %s has %lld elements, expected %lld", op,
                   what, (long long)t->dims[0], (long long)n);
  }
  return SG_OK;
}

#define CHECK(call)                                 \
  do {                                              \
    sg_status check_status = (call);                \
    if (check_status != SG_OK) return check_status; \
  } while (0)

/* ---- ops ---- */

/* A residual must have y's shape; it may share y's memory (not x's). */
static sg_status check_residual(const char *op, const sg_tensor *residual, const sg_tensor *y,
                                const sg_tensor *x, sg_error *error) {
  if (!residual) return SG_OK;
  CHECK(check_tensor_layout(op, "residual", residual, y->ndim, y->ndim,
                            y->ndim == 3 ? IMAGES_ANY : IMAGES_PLAIN, error));
  if (residual->format != y->format) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "%s: residual and output y must have the same layout", op);
  }
  if (!sg_tensor_same_shape(residual, y)) {
    char rs[96], ys[96];
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: residual %s does not match output y %s",
                   op, sg_shape_string(residual, rs, sizeof rs), sg_shape_string(y, ys, sizeof ys));
  }
  if (residual->data == x->data) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: residual may not share memory with input x",
                   op);
  }
  return SG_OK;
}

sg_status sg_conv2d(sg_backend *be, const sg_tensor *x, const sg_tensor *w, const sg_tensor *b,
                    int stride, int padding, int groups, sg_activation act, sg_tensor *y,
                    sg_error *error) {
  return sg_conv2d_residual(be, x, w, b, stride, padding, groups, act, NULL, y, error);
}

sg_status sg_conv2d_residual(sg_backend *be, const sg_tensor *x, const sg_tensor *w,
                             const sg_tensor *b, int stride, int padding, int groups,
                             sg_activation act, const sg_tensor *residual, sg_tensor *y,
                             sg_error *error) {
  const char *op = "conv2d";
  CHECK(check_backend(op, be, error));
  CHECK(check_image(op, "input x", x, error));
  CHECK(check_tensor(op, "weight", w, 4, 4, error));
  CHECK(check_activation(op, act, error));
  char xs[96], ws[96];
  sg_shape_string(x, xs, sizeof xs);
  sg_shape_string(w, ws, sizeof ws);
  if (stride < 1 || padding < 0) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: stride %d / padding %d out of range", op,
                   stride, padding);
  }
  int64_t in_channels = x->dims[0], out_channels = w->dims[0];
  if (groups < 1 || in_channels % groups || out_channels % groups) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "%s: groups %d does not divide input channels %lld and output channels %lld", op,
                   groups, (long long)in_channels, (long long)out_channels);
  }
  if (w->dims[1] * groups != in_channels) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "%s: weight %s does not match input channels %lld (groups %d)", op, ws,
                   (long long)in_channels, groups);
  }
  CHECK(check_vector(op, "bias", b, out_channels, 1, error));
  int64_t out_h = sg_conv_out_size(x->dims[1], w->dims[2], stride, padding);
  int64_t out_w = sg_conv_out_size(x->dims[2], w->dims[3], stride, padding);
  if (out_h < 1 || out_w < 1) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "%s: kernel of weight %s is larger than the padded input %s", op, ws, xs);
  }
  int64_t out_dims[3] = {out_channels, out_h, out_w};
  CHECK(check_output_layout(op, y, 3, out_dims, IMAGES_ANY, error));
  CHECK(check_not_aliased(op, y, x, "input x", error));
  CHECK(check_residual(op, residual, y, x, error));
  use_threads(be);
  if (be->kind == SG_BACKEND_REFERENCE) {
    return sg_ref_conv2d(x, w, b, stride, padding, groups, act, residual, y);
  }
  return sg_dnnl_conv2d(be->dnnl, x, w, b, stride, padding, groups, act, residual, y, error);
}

sg_status sg_pointwise_depthwise(sg_backend *be, const sg_tensor *x, const sg_tensor *w,
                                 const sg_tensor *b, sg_activation act, const sg_tensor *dw,
                                 sg_tensor *mid, sg_tensor *y, sg_error *error) {
  const char *op = "pointwise_depthwise";
  CHECK(check_backend(op, be, error));
  CHECK(check_image(op, "input x", x, error));
  CHECK(check_tensor(op, "weight", w, 4, 4, error));
  CHECK(check_tensor(op, "depthwise weight", dw, 4, 4, error));
  CHECK(check_activation(op, act, error));
  const int64_t channels = w->dims[0];
  if (w->dims[1] != x->dims[0] || w->dims[2] != 1 || w->dims[3] != 1) {
    char ws[96], xs[96];
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "%s: weight %s is not a 1x1 convolution of input x %s", op,
                   sg_shape_string(w, ws, sizeof ws), sg_shape_string(x, xs, sizeof xs));
  }
  if (dw->dims[0] != channels || dw->dims[1] != 1 || dw->dims[2] != 3 || dw->dims[3] != 3) {
    char ds[96];
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: depthwise weight %s is not [%lld, 1, 3, 3]",
                   op, sg_shape_string(dw, ds, sizeof ds), (long long)channels);
  }
  CHECK(check_vector(op, "bias", b, channels, 1, error));
  const int64_t out_dims[3] = {channels, x->dims[1], x->dims[2]};
  CHECK(check_output_layout(op, y, 3, out_dims, IMAGES_ANY, error));
  if (!mid) return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: mid is missing", op);
  CHECK(check_tensor_layout(op, "mid", mid, 3, 3, IMAGES_ANY, error));
  if (!sg_tensor_same_shape(mid, y)) {
    char ms[96], ys[96];
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: mid %s does not match output y %s", op,
                   sg_shape_string(mid, ms, sizeof ms), sg_shape_string(y, ys, sizeof ys));
  }
  CHECK(check_not_aliased(op, y, x, "input x", error));
  CHECK(check_not_aliased(op, y, mid, "mid", error));
  CHECK(check_not_aliased(op, mid, x, "input x", error));
  use_threads(be);
  if (be->kind == SG_BACKEND_REFERENCE) {
    sg_status status = sg_ref_conv2d(x, w, b, 1, 0, 1, act, NULL, mid);
    if (status != SG_OK) return status;
    return sg_ref_conv2d(mid, dw, NULL, 1, 1, (int)channels, SG_ACT_NONE, NULL, y);
  }
  return sg_dnnl_pointwise_depthwise(be->dnnl, x, w, b, act, dw, mid, y, error);
}

sg_status sg_linear(sg_backend *be, const sg_tensor *x, const sg_tensor *w, const sg_tensor *b,
                    sg_activation act, sg_tensor *y, sg_error *error) {
  return sg_linear_residual(be, x, w, b, act, NULL, y, error);
}

/* The checks of a linear layer; w is f32 (or an f32 header with a compressed weight's shape). */
static sg_status check_linear(const sg_tensor *x, const sg_tensor *w, const sg_tensor *b,
                              sg_activation act, const sg_tensor *residual, const sg_tensor *y,
                              sg_error *error) {
  const char *op = "linear";
  CHECK(check_tensor(op, "input x", x, 2, 2, error));
  CHECK(check_tensor(op, "weight", w, 2, 2, error));
  CHECK(check_activation(op, act, error));
  if (w->dims[1] != x->dims[1]) {
    char xs[96], ws[96];
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "%s: weight %s does not match input %s (%lld features)", op,
                   sg_shape_string(w, ws, sizeof ws), sg_shape_string(x, xs, sizeof xs),
                   (long long)x->dims[1]);
  }
  CHECK(check_vector(op, "bias", b, w->dims[0], 1, error));
  int64_t out_dims[2] = {x->dims[0], w->dims[0]};
  CHECK(check_output(op, y, 2, out_dims, error));
  CHECK(check_not_aliased(op, y, x, "input x", error));
  return check_residual(op, residual, y, x, error);
}

/* The product of a linear layer with f32 weights. */
static sg_status linear_f32(sg_backend *be, const sg_tensor *x, const sg_tensor *w,
                            const sg_tensor *b, sg_activation act, const sg_tensor *residual,
                            sg_tensor *y, sg_error *error) {
  CHECK(check_linear(x, w, b, act, residual, y, error));
  use_threads(be);
  if (be->kind == SG_BACKEND_REFERENCE) return sg_ref_linear(x, w, b, act, residual, y);
  return sg_dnnl_linear(be->dnnl, x, w, b, act, residual, y, error);
}

/* ---- linear layers with compressed weights: SG_I8 codes, SG_BF16 values in the file ----
 * The matrix is widened to f32 a block of rows at a time (the whole matrix when it fits in a
 * block), and each block's product runs as for f32 weights. On the AVX2 machine of sessions 1-10
 * blocks of 4 MiB, which stay in cache, were the fastest; on the AVX-512 one of sessions 11-12
 * one product over the whole widened matrix is: f32 text encoders with 4 MiB blocks against
 * whole matrices, alternating (`snapgen bench --model /tmp/full --size 128`): CLIP-L 0.111-0.134
 * vs 0.097-0.098 s, bigG 0.92-1.01 vs 0.56-0.62 s, Gemma-2-2b 1.95-2.23 vs 1.75-1.82 s. The
 * widened matrix is kept for the next one: 85 MB for Gemma-2-2b's largest. */

/* Bytes of f32 rows widened at a time (SNAPGEN_WIDEN_BLOCK_KB overrides, for measurements). */
#define WIDEN_BLOCK_BYTES ((int64_t)128 << 20)

static int64_t widen_block_bytes(void) {
  const char *kb = getenv("SNAPGEN_WIDEN_BLOCK_KB");
  return kb && atoll(kb) > 0 ? atoll(kb) * 1024 : WIDEN_BLOCK_BYTES;
}

/* A scratch buffer of at least count floats, grown as needed; NULL when out of memory. */
static float *scratch_floats(float **buffer, int64_t *capacity, int64_t count) {
  if (count > *capacity) {
    float *grown = sg_pages_alloc((size_t)count * sizeof(float));
    if (!grown) return NULL;
    sg_pages_free(*buffer, (size_t)*capacity * sizeof(float));
    *buffer = grown;
    *capacity = count;
  }
  return *buffer;
}

/* Rows [first, first + count) of a compressed matrix w as f32 into out. */
static void widen_rows(const sg_tensor *w, int64_t first, int64_t count, float *out) {
  const int64_t cols = w->dims[1];
  if (w->dtype == SG_I8) {
    sg_dequantize_rows_int8((const int8_t *)w->data + first * cols, w->scales + first, count, cols,
                            out);
    return;
  }
  const uint16_t *values = (const uint16_t *)w->data + first * cols;
  uint32_t *bits = (uint32_t *)out; /* a bf16 is the top half of an f32 */
  const int64_t n = count * cols;
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
  for (int64_t i = 0; i < n; i++) bits[i] = (uint32_t)values[i] << 16;
}

static sg_status linear_compressed(sg_backend *be, const sg_tensor *x, const sg_tensor *w,
                                   const sg_tensor *b, sg_activation act, const sg_tensor *residual,
                                   sg_tensor *y, sg_error *error) {
  const char *op = "linear";
  if (w->ndim != 2 || !w->data || w->dims[0] <= 0 || w->dims[1] <= 0 ||
      (w->dtype == SG_I8 && !w->scales))
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: a %s weight needs 2 dims and data%s", op,
                   sg_dtype_name(w->dtype), w->dtype == SG_I8 ? " and row scales" : "");
  const int64_t rows = w->dims[0], cols = w->dims[1];
  int64_t block = widen_block_bytes() / (cols * (int64_t)sizeof(float));
  if (block < 1) block = 1;
  if (block > rows) block = rows;
  float *wide = scratch_floats(&be->widened, &be->widened_capacity, block * cols);
  if (!wide)
    return sg_fail(error, SG_ERR_OUT_OF_MEMORY,
                   "%s: out of memory widening %lld rows of a %s weight", op, (long long)block,
                   sg_dtype_name(w->dtype));
  use_threads(be);
  if (block == rows) { /* the whole matrix at once */
    widen_rows(w, 0, rows, wide);
    sg_tensor whole = sg_tensor_view(wide, SG_F32, 2, w->dims); /* constant_id 0: never cached */
    return linear_f32(be, x, &whole, b, act, residual, y, error);
  }
  /* Check the whole product once with an f32 header of w's shape, then run it block by block
   * into a scratch [M, block] and move each block into its columns of y (adding the residual);
   * the activation comes last, over all of y. */
  sg_tensor shape = sg_tensor_view(wide, SG_F32, 2, w->dims);
  CHECK(check_linear(x, &shape, b, act, residual, y, error));
  const int64_t m = x->dims[0];
  float *part = scratch_floats(&be->block_out, &be->block_out_capacity, m * block);
  if (!part)
    return sg_fail(error, SG_ERR_OUT_OF_MEMORY, "%s: out of memory for a [%lld, %lld] block", op,
                   (long long)m, (long long)block);
  float *out = y->data;
  const float *add = residual ? residual->data : NULL;
  for (int64_t first = 0; first < rows; first += block) {
    const int64_t count = rows - first < block ? rows - first : block;
    widen_rows(w, first, count, wide);
    sg_tensor w_block = sg_tensor_2d(wide, count, cols);
    sg_tensor b_block = b ? sg_tensor_1d((float *)b->data + first, count) : (sg_tensor){0};
    sg_tensor y_block = sg_tensor_2d(part, m, count);
    CHECK(linear_f32(be, x, &w_block, b ? &b_block : NULL, SG_ACT_NONE, NULL, &y_block, error));
#pragma omp parallel for schedule(static) if (m * count >= (1 << 14))
    for (int64_t r = 0; r < m; r++) {
      for (int64_t c = 0; c < count; c++) {
        const int64_t at = r * rows + first + c;
        out[at] = part[r * count + c] + (add ? add[at] : 0.0f);
      }
    }
  }
  if (act != SG_ACT_NONE) return sg_eltwise(be, act, y, y, error);
  return SG_OK;
}

sg_status sg_linear_residual(sg_backend *be, const sg_tensor *x, const sg_tensor *w,
                             const sg_tensor *b, sg_activation act, const sg_tensor *residual,
                             sg_tensor *y, sg_error *error) {
  CHECK(check_backend("linear", be, error));
  if (w && w->dtype == SG_BF16 && w->ndim == 2 && w->data && be->kind != SG_BACKEND_REFERENCE &&
      sg_dnnl_reads_bf16_weights(be->dnnl)) {
    /* bf16 mode: the products read bf16 weights where they are (a mapped file), no f32 copy */
    const sg_tensor header = sg_tensor_view(w->data, SG_F32, 2, w->dims);
    CHECK(check_linear(x, &header, b, act, residual, y, error));
    use_threads(be);
    return sg_dnnl_linear(be->dnnl, x, w, b, act, residual, y, error);
  }
  if (w && (w->dtype == SG_I8 || w->dtype == SG_BF16))
    return linear_compressed(be, x, w, b, act, residual, y, error);
  return linear_f32(be, x, w, b, act, residual, y, error);
}

sg_status sg_eltwise(sg_backend *be, sg_activation act, const sg_tensor *x, sg_tensor *y,
                     sg_error *error) {
  const char *op = "eltwise";
  CHECK(check_backend(op, be, error));
  CHECK(check_tensor(op, "input x", x, 1, SG_MAX_DIMS, error));
  CHECK(check_activation(op, act, error));
  CHECK(check_output(op, y, x->ndim, x->dims, error));
  use_threads(be);
  if (be->kind == SG_BACKEND_REFERENCE) return sg_ref_eltwise(act, x, y);
  return sg_dnnl_eltwise(be->dnnl, act, x, y, error);
}

sg_status sg_binary(sg_backend *be, sg_binary_op op_kind, const sg_tensor *a, const sg_tensor *b,
                    sg_tensor *y, sg_error *error) {
  const char *op = "binary";
  CHECK(check_backend(op, be, error));
  CHECK(check_tensor(op, "input a", a, 1, SG_MAX_DIMS, error));
  CHECK(check_tensor(op, "input b", b, 1, SG_MAX_DIMS, error));
  if (op_kind != SG_BINARY_ADD && op_kind != SG_BINARY_MUL) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: unknown operation %d", op, (int)op_kind);
  }
  int64_t b_dims[SG_MAX_DIMS];
  if (!sg_binary_b_dims(a, b, b_dims)) {
    char as[96], bs[96];
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: b %s does not broadcast to a %s", op,
                   sg_shape_string(b, bs, sizeof bs), sg_shape_string(a, as, sizeof as));
  }
  CHECK(check_output(op, y, a->ndim, a->dims, error));
  if (b->data == y->data && !sg_tensor_same_shape(a, b)) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: output y may not share memory with b", op);
  }
  use_threads(be);
  if (be->kind == SG_BACKEND_REFERENCE) return sg_ref_binary(op_kind, a, b, y);
  return sg_dnnl_binary(be->dnnl, op_kind, a, b, y, error);
}

sg_status sg_group_norm(sg_backend *be, const sg_tensor *x, int groups, const sg_tensor *gamma,
                        const sg_tensor *beta, float eps, sg_activation act, sg_tensor *y,
                        sg_error *error) {
  const char *op = "group_norm";
  CHECK(check_backend(op, be, error));
  CHECK(check_tensor_layout(op, "input x", x, 2, 3, IMAGES_NHWC, error));
  CHECK(check_activation(op, act, error));
  int64_t channels = x->dims[0];
  if (groups < 1 || channels % groups) {
    char xs[96];
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "%s: %d groups do not divide the %lld channels of %s", op, groups,
                   (long long)channels, sg_shape_string(x, xs, sizeof xs));
  }
  if (!(eps >= 0.0f)) return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: eps %g < 0", op, eps);
  CHECK(check_vector(op, "gamma", gamma, channels, 1, error));
  CHECK(check_vector(op, "beta", beta, channels, 1, error));
  CHECK(check_output_layout(op, y, x->ndim, x->dims, IMAGES_NHWC, error));
  if (y->format != x->format) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: output y must have the layout of input x",
                   op);
  }
  use_threads(be);
  if (be->kind == SG_BACKEND_REFERENCE) {
    return sg_ref_group_norm(x, groups, gamma, beta, eps, act, y);
  }
  return sg_dnnl_group_norm(be->dnnl, x, groups, gamma, beta, eps, act, y, error);
}

sg_status sg_layer_norm(sg_backend *be, const sg_tensor *x, const sg_tensor *gamma,
                        const sg_tensor *beta, float eps, sg_tensor *y, sg_error *error) {
  const char *op = "layer_norm";
  CHECK(check_backend(op, be, error));
  CHECK(check_tensor(op, "input x", x, 1, SG_MAX_DIMS, error));
  if (!(eps >= 0.0f)) return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: eps %g < 0", op, eps);
  int64_t channels = x->dims[x->ndim - 1];
  CHECK(check_vector(op, "gamma", gamma, channels, 1, error));
  CHECK(check_vector(op, "beta", beta, channels, 1, error));
  CHECK(check_output(op, y, x->ndim, x->dims, error));
  use_threads(be);
  if (be->kind == SG_BACKEND_REFERENCE) return sg_ref_layer_norm(x, gamma, beta, eps, y);
  return sg_dnnl_layer_norm(be->dnnl, x, gamma, beta, eps, y, error);
}

sg_status sg_rms_norm(sg_backend *be, const sg_tensor *x, const sg_tensor *w, float eps,
                      float weight_offset, sg_tensor *y, sg_error *error) {
  const char *op = "rms_norm";
  CHECK(check_backend(op, be, error));
  CHECK(check_tensor(op, "input x", x, 1, SG_MAX_DIMS, error));
  if (!(eps >= 0.0f)) return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: eps %g < 0", op, eps);
  CHECK(check_vector(op, "weight", w, x->dims[x->ndim - 1], 0, error));
  CHECK(check_output(op, y, x->ndim, x->dims, error));
  use_threads(be);
  if (be->kind == SG_BACKEND_REFERENCE) return sg_ref_rms_norm(x, w, eps, weight_offset, y);
  return sg_dnnl_rms_norm(be->dnnl, x, w, eps, weight_offset, y, error);
}

sg_status sg_softmax(sg_backend *be, const sg_tensor *x, sg_tensor *y, sg_error *error) {
  const char *op = "softmax";
  CHECK(check_backend(op, be, error));
  CHECK(check_tensor(op, "input x", x, 1, SG_MAX_DIMS, error));
  CHECK(check_output(op, y, x->ndim, x->dims, error));
  use_threads(be);
  if (be->kind == SG_BACKEND_REFERENCE) return sg_ref_softmax(x, y);
  return sg_dnnl_softmax(be->dnnl, x, y, error);
}

sg_status sg_sum_taps3x3(sg_backend *be, const sg_tensor *z, const sg_tensor *b, sg_tensor *y,
                         sg_error *error) {
  const char *op = "sum_taps3x3";
  CHECK(check_backend(op, be, error));
  CHECK(check_image(op, "input z", z, error));
  CHECK(check_tensor(op, "output y", y, 3, 3, error));
  const int64_t outputs = y->dims[0];
  if (z->dims[0] < 9 * outputs || z->dims[1] != y->dims[1] || z->dims[2] != y->dims[2]) {
    char zs[96], ys[96];
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "%s: input z %s needs 9 planes per output of y %s, each of y's size", op,
                   sg_shape_string(z, zs, sizeof zs), sg_shape_string(y, ys, sizeof ys));
  }
  CHECK(check_vector(op, "bias", b, outputs, 1, error));
  CHECK(check_not_aliased(op, y, z, "input z", error));
  use_threads(be);
  if (be->kind == SG_BACKEND_REFERENCE) return sg_ref_sum_taps3x3(z, b, y);
  sg_fast_sum_taps3x3(z, b ? (const float *)b->data : NULL, y);
  return SG_OK;
}

sg_status sg_upsample_nearest2x(sg_backend *be, const sg_tensor *x, sg_tensor *y,
                                sg_error *error) {
  const char *op = "upsample_nearest2x";
  CHECK(check_backend(op, be, error));
  CHECK(check_image(op, "input x", x, error));
  int64_t out_dims[3] = {x->dims[0], 2 * x->dims[1], 2 * x->dims[2]};
  CHECK(check_output_layout(op, y, 3, out_dims, IMAGES_ANY, error));
  if (y->format != x->format) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: output y must have the layout of input x",
                   op);
  }
  CHECK(check_not_aliased(op, y, x, "input x", error));
  use_threads(be);
  if (be->kind == SG_BACKEND_REFERENCE) return sg_ref_upsample_nearest2x(x, y);
  return sg_dnnl_upsample_nearest2x(be->dnnl, x, y, error);
}

sg_status sg_concat(sg_backend *be, const sg_tensor *a, const sg_tensor *b, sg_tensor *y,
                    sg_error *error) {
  const char *op = "concat";
  CHECK(check_backend(op, be, error));
  CHECK(check_tensor(op, "input a", a, 2, 3, error));
  CHECK(check_tensor(op, "input b", b, 2, 3, error));
  int axis = a->ndim == 3 ? 0 : 1;
  int fits = a->ndim == b->ndim;
  for (int i = 0; fits && i < a->ndim; i++) fits = i == axis || a->dims[i] == b->dims[i];
  if (!fits) {
    char as[96], bs[96];
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "%s: a %s and b %s differ outside the concatenation axis %d", op,
                   sg_shape_string(a, as, sizeof as), sg_shape_string(b, bs, sizeof bs), axis);
  }
  int64_t out_dims[3] = {a->dims[0], a->dims[1], a->ndim == 3 ? a->dims[2] : 0};
  out_dims[axis] += b->dims[axis];
  CHECK(check_output(op, y, a->ndim, out_dims, error));
  CHECK(check_not_aliased(op, y, a, "input a", error));
  CHECK(check_not_aliased(op, y, b, "input b", error));
  use_threads(be);
  if (be->kind == SG_BACKEND_REFERENCE) return sg_ref_concat(a, b, y);
  return sg_dnnl_concat(be->dnnl, a, b, y, error);
}

sg_status sg_transpose(sg_backend *be, const sg_tensor *x, sg_tensor *y, sg_error *error) {
  const char *op = "transpose";
  CHECK(check_backend(op, be, error));
  CHECK(check_tensor(op, "input x", x, 2, 2, error));
  int64_t out_dims[2] = {x->dims[1], x->dims[0]};
  CHECK(check_output(op, y, 2, out_dims, error));
  CHECK(check_not_aliased(op, y, x, "input x", error));
  use_threads(be);
  if (be->kind == SG_BACKEND_REFERENCE) return sg_ref_transpose(x, y);
  return sg_dnnl_transpose(be->dnnl, x, y, error);
}

sg_status sg_attention(sg_backend *be, const sg_tensor *q, const sg_tensor *k, const sg_tensor *v,
                       const sg_attention_params *params, sg_tensor *y, sg_error *error) {
  const char *op = "attention";
  CHECK(check_backend(op, be, error));
  if (!params) return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: no parameters given", op);
  CHECK(check_tensor(op, "query q", q, 2, 2, error));
  CHECK(check_tensor(op, "key k", k, 2, 2, error));
  CHECK(check_tensor(op, "value v", v, 2, 2, error));
  const sg_attention_params *p = params;
  if (p->heads < 1 || p->kv_heads < 1 || p->head_dim < 1 || p->heads % p->kv_heads) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "%s: heads %d, kv_heads %d, head_dim %d: need positive values with kv_heads "
                   "dividing heads", op, p->heads, p->kv_heads, p->head_dim);
  }
  if (p->window < 0 || !(p->softcap >= 0.0f) || !isfinite(p->scale)) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: window %d, softcap %g or scale %g invalid",
                   op, p->window, p->softcap, p->scale);
  }
  char s1[96], s2[96];
  if (q->dims[1] != (int64_t)p->heads * p->head_dim) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: query %s does not hold %d heads of %d", op,
                   sg_shape_string(q, s1, sizeof s1), p->heads, p->head_dim);
  }
  if (k->dims[1] != (int64_t)p->kv_heads * p->head_dim) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: key %s does not hold %d heads of %d", op,
                   sg_shape_string(k, s1, sizeof s1), p->kv_heads, p->head_dim);
  }
  if (!sg_tensor_same_shape(k, v)) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: value %s differs from key %s", op,
                   sg_shape_string(v, s1, sizeof s1), sg_shape_string(k, s2, sizeof s2));
  }
  CHECK(check_output(op, y, 2, q->dims, error));
  CHECK(check_not_aliased(op, y, q, "query q", error));
  CHECK(check_not_aliased(op, y, k, "key k", error));
  CHECK(check_not_aliased(op, y, v, "value v", error));
  use_threads(be);
  if (be->kind == SG_BACKEND_REFERENCE) return sg_ref_attention(q, k, v, p, y, error);
  return sg_dnnl_attention(be->dnnl, q, k, v, p, y, error);
}

sg_status sg_gated(sg_backend *be, const sg_tensor *x, sg_activation act, sg_tensor *y,
                   sg_error *error) {
  const char *op = "gated";
  CHECK(check_backend(op, be, error));
  CHECK(check_tensor(op, "input x", x, 2, 2, error));
  CHECK(check_activation(op, act, error));
  if (x->dims[1] % 2) {
    char xs[96];
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: input x %s has an odd last dim", op,
                   sg_shape_string(x, xs, sizeof xs));
  }
  int64_t out_dims[2] = {x->dims[0], x->dims[1] / 2};
  CHECK(check_output(op, y, 2, out_dims, error));
  CHECK(check_not_aliased(op, y, x, "input x", error));
  use_threads(be);
  if (be->kind == SG_BACKEND_REFERENCE) return sg_ref_gated(x, act, y);
  return sg_dnnl_gated(be->dnnl, x, act, y, error);
}
