/* check_ops.c: `sgcheck op CASE.safetensors OUT.safetensors` runs one op of engine/src/ops.h on a
 * case written by tests/ref/test_ops.py and writes its output as tensor "y".
 *
 * Case metadata: "op", "backend" (onednn | onednn-bf16 | reference) and the op's parameters;
 * onednn-bf16 is the oneDNN backend with bf16 compute (sg_backend_set_bf16): where the CPU has no
 * bf16 instructions the case is not run and sgcheck exits with 3, saying why. Tensors per op:
 *   conv2d      x [Ci,H,W], w [Co,Ci/groups,kh,kw], b [Co] (optional), r [Co,Ho,Wo] (optional
 *               residual); stride, padding, groups, act, residual_in_y
 *   linear      x [M,K], w [N,K], b [N] (optional), r [M,N] (optional residual); act,
 *               residual_in_y
 *   eltwise     x (any shape); act
 *   binary      a, b (b broadcast as sg_binary says); binary = add | mul
 *   group_norm  x [C,H,W] or [C,L], gamma, beta [C] (optional); groups, eps, act
 *   layer_norm  x [M,C], gamma, beta [C] (optional); eps
 *   rms_norm    x [M,C], w [C]; eps, weight_offset
 *   softmax     x [M,N]
 *   upsample    x [C,H,W]
 *   concat      a, b ([Ca,H,W] + [Cb,H,W], or [M,Ka] + [M,Kb])
 *   transpose   x [A,B]
 *   attention   q [T,heads*head_dim], k, v [S,kv_heads*head_dim], key_mask [S] (optional);
 *               heads, kv_heads, head_dim, scale, softcap, causal, window
 *   gated       x [M,2N]; act
 * act is none | silu | gelu_erf | gelu_tanh | quick_gelu | relu | tanh (default none).
 * Optional: "inplace" = 1 runs with y sharing the first input's memory (eltwise, binary, norms,
 * softmax); "repeat" = n runs the op n times (the later runs use cached primitives);
 * "constant_weights" = 0 passes conv2d/linear weights as activations would come (no constant_id,
 * so the oneDNN backend reorders them at every run instead of keeping a packed copy);
 * "residual_in_y" = 1 passes the residual r as y itself (y starts as a copy of r);
 * "weights_memory" (conv2d, linear) = handoff copies w into a mapping of its own marked
 * SG_WEIGHT_HANDOFF, which the oneDNN backend releases once packed; file marks w (in the case
 * file's mapping) SG_WEIGHT_FILE_PAGES. With handoff, linear runs a second time on the first M-1
 * rows (a new primitive, made after the release), which then give y's first M-1 rows;
 * conv2d with a tensor "x2" also runs on x2 (same weights, no residual, plain) into output "y2";
 * "x_nhwc" / "y_nhwc" = 1 (conv2d, upsample; x_nhwc also group_norm) run the op on x / y (and the
 * residual) stored channels-last, = 2 (conv2d, upsample, pointwise_depthwise; x_nhwc also
 * sum_taps3x3, whose input is z) in blocks of 8 channels: the case's
 * tensors stay plain, converted here before and after the op; "w_int8" = 1 (linear) passes w
 * quantized by sg_quantize_rows_int8 (an SG_I8 tensor); "w_bf16" = 1 (linear) passes w rounded to
 * bf16 (an SG_BF16 tensor); "widen_block_kb" = n (linear) widens such weights n KiB of f32 rows at
 * a time (SNAPGEN_WIDEN_BLOCK_KB). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "error.h"
#include "ops.h"
#include "safetensors.h"

typedef struct {
  sg_safetensors *file;
  const char *path;
} case_file;

static const char *meta(const case_file *c, const char *key, const char *fallback) {
  const char *value = sg_safetensors_metadata(c->file, key);
  return value ? value : fallback;
}

static int meta_int(const case_file *c, const char *key, int fallback) {
  const char *value = sg_safetensors_metadata(c->file, key);
  return value ? atoi(value) : fallback;
}

static float meta_float(const case_file *c, const char *key, float fallback) {
  const char *value = sg_safetensors_metadata(c->file, key);
  return value ? strtof(value, NULL) : fallback;
}

static sg_status parse_activation(const case_file *c, sg_activation *act, sg_error *error) {
  static const char *const names[] = {"none", "silu", "gelu_erf", "gelu_tanh",
                                      "quick_gelu", "relu", "tanh"};
  const char *name = meta(c, "act", "none");
  for (int i = 0; i < (int)(sizeof names / sizeof names[0]); i++) {
    if (!strcmp(name, names[i])) {
      *act = (sg_activation)i;
      return SG_OK;
    }
  }
  return sg_fail(error, SG_ERR_FORMAT, "%s: unknown activation \"%s\"", c->path, name);
}

/* Tensor `name` as an f32 view into the mapping; a missing optional one gives NULL. */
static sg_status input(const case_file *c, const char *name, int optional, sg_tensor *storage,
                       const sg_tensor **out, sg_error *error) {
  const sg_st_entry *entry = sg_safetensors_find(c->file, name);
  *out = NULL;
  if (!entry) {
    if (optional) return SG_OK;
    return sg_fail(error, SG_ERR_FORMAT, "%s: tensor \"%s\" is missing", c->path, name);
  }
  if (entry->dtype != SG_F32) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: tensor \"%s\" is %s, expected F32", c->path, name,
                   sg_dtype_name(entry->dtype));
  }
  *storage = sg_tensor_view((void *)entry->data, SG_F32, entry->ndim, entry->dims);
  *out = storage;
  return SG_OK;
}

/* Allocates y with the given shape. */
static sg_status make_output(int ndim, const int64_t *dims, sg_tensor *y, sg_error *error) {
  *y = sg_tensor_view(NULL, SG_F32, ndim, dims);
  size_t bytes = sg_tensor_nbytes(y);
  y->data = malloc(bytes ? bytes : 1);
  if (!y->data) return sg_fail(error, SG_ERR_OUT_OF_MEMORY, "out of memory for the output");
  return SG_OK;
}

/* The residual of conv2d/linear: r as given, or y itself holding a copy of r (residual_in_y). */
static sg_status residual_input(const case_file *c, sg_tensor *storage, sg_tensor *y,
                                const sg_tensor **residual, sg_error *error) {
  sg_status status = input(c, "r", 1, storage, residual, error);
  if (status != SG_OK || !*residual || !meta_int(c, "residual_in_y", 0)) return status;
  if (sg_tensor_nbytes(*residual) != sg_tensor_nbytes(y)) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: residual r does not have y's size", c->path);
  }
  memcpy(y->data, (*residual)->data, sg_tensor_nbytes(y));
  *residual = y;
  return SG_OK;
}

/* Where value (channel ch, pixel i of H*W) of a [C,H,W] image sits in a layout: written out
 * here, independent of the engine's own offsets, so the tests check those. */
static int64_t layout_index(sg_format format, int64_t C, int64_t HW, int64_t ch, int64_t i) {
  if (format == SG_FORMAT_NHWC) return i * C + ch;
  if (format == SG_FORMAT_BLOCKED8) return ((ch / 8) * HW + i) * 8 + ch % 8;
  return ch * HW + i;
}

/* A copy of image t (malloc'd into *owned) stored channels-last (flag value 1) or in blocks of 8
 * channels (2) when the metadata flag is set. */
static sg_status maybe_nhwc(const case_file *c, const char *flag, sg_tensor *t, float **owned,
                            sg_error *error) {
  *owned = NULL;
  const int layout = meta_int(c, flag, 0);
  if (!layout || t->ndim != 3) return SG_OK;
  const sg_format format = layout == 2 ? SG_FORMAT_BLOCKED8 : SG_FORMAT_NHWC;
  const int64_t C = t->dims[0], HW = t->dims[1] * t->dims[2];
  *owned = malloc(sg_tensor_nbytes(t));
  if (!*owned) return sg_fail(error, SG_ERR_OUT_OF_MEMORY, "out of memory for a relayout");
  const float *plain = t->data;
  for (int64_t ch = 0; ch < C; ch++)
    for (int64_t i = 0; i < HW; i++)
      (*owned)[layout_index(format, C, HW, ch, i)] = plain[ch * HW + i];
  t->data = *owned;
  t->format = format;
  return SG_OK;
}

/* Turns a channels-last or blocked y back into the plain layout in place. */
static void plain_again(sg_tensor *y) {
  if (y->format == SG_FORMAT_PLAIN) return;
  const int64_t C = y->dims[0], HW = y->dims[1] * y->dims[2];
  float *copy = malloc(sg_tensor_nbytes(y)), *data = y->data;
  if (!copy) return;
  memcpy(copy, data, sg_tensor_nbytes(y));
  for (int64_t ch = 0; ch < C; ch++)
    for (int64_t i = 0; i < HW; i++)
      data[ch * HW + i] = copy[layout_index(y->format, C, HW, ch, i)];
  free(copy);
  y->format = SG_FORMAT_PLAIN;
}

/* The memory of conv2d/linear weights as "weights_memory" says (see the top); a handoff copy is
 * *mapping, to unmap with sg_weight_mapping_bytes. */
static sg_status weights_memory(const case_file *c, sg_tensor *w, void **mapping,
                                sg_error *error) {
  const char *kind = meta(c, "weights_memory", "keep");
  if (!strcmp(kind, "file")) {
    w->memory = SG_WEIGHT_FILE_PAGES;
  } else if (!strcmp(kind, "handoff")) {
    *mapping = mmap(NULL, sg_weight_mapping_bytes(sg_tensor_nbytes(w)), PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (*mapping == MAP_FAILED) {
      *mapping = NULL;
      return sg_fail(error, SG_ERR_OUT_OF_MEMORY, "out of memory for the weights");
    }
    memcpy(*mapping, w->data, sg_tensor_nbytes(w));
    w->data = *mapping;
    w->memory = SG_WEIGHT_HANDOFF;
  } else if (strcmp(kind, "keep")) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: unknown weights_memory \"%s\"", c->path, kind);
  }
  return SG_OK;
}

/* For in-place runs: y becomes a copy of x, and x then points at y's memory. */
static sg_status make_inplace(const sg_tensor **x, sg_tensor *x_storage, sg_tensor *y,
                              sg_error *error) {
  sg_status status = make_output((*x)->ndim, (*x)->dims, y, error);
  if (status != SG_OK) return status;
  memcpy(y->data, (*x)->data, sg_tensor_nbytes(*x));
  *x_storage = *y;
  *x = x_storage;
  return SG_OK;
}

#define TRY(call)                     \
  do {                                \
    status = (call);                  \
    if (status != SG_OK) goto done;   \
  } while (0)

static sg_status run_case(const case_file *c, const char *out_path, int *unavailable,
                          sg_error *error) {
  const char *op = meta(c, "op", "");
  const char *backend_name = meta(c, "backend", "onednn");
  sg_backend_kind kind;
  const int bf16 = !strcmp(backend_name, "onednn-bf16");
  if (!strcmp(backend_name, "onednn") || bf16) {
    kind = SG_BACKEND_ONEDNN;
  } else if (!strcmp(backend_name, "reference")) {
    kind = SG_BACKEND_REFERENCE;
  } else {
    return sg_fail(error, SG_ERR_FORMAT, "%s: unknown backend \"%s\"", c->path, backend_name);
  }
  const int inplace = meta_int(c, "inplace", 0);
  const int repeat = inplace ? 1 : meta_int(c, "repeat", 1);
  /* The case file stays mapped until the end: its weights are constant for this process. */
  const uint64_t constant_id = meta_int(c, "constant_weights", 1) ? 1 : 0;
  sg_activation act = SG_ACT_NONE;
  sg_status status = parse_activation(c, &act, error);
  if (status != SG_OK) return status;
  sg_backend *be = sg_backend_new(kind, 0, error);
  if (!be) return error->status;
  if (bf16 && sg_backend_set_bf16(be, 1, error) != SG_OK) {
    *unavailable = 1;
    sg_backend_free(be);
    return error->status;
  }

  sg_tensor storage[6], y = {0}, y2 = {0}, mid = {0}, residual_storage;
  const sg_tensor *residual = NULL;
  float *x_owned = NULL, *y_owned = NULL, *r_owned = NULL; /* channels-last copies (y's: y.data) */
  void *w_mapping = NULL; /* weights_memory = handoff */
  void *w_codes = NULL;   /* w_int8 codes, or w_bf16 values */
  float *w_scales = NULL;
  size_t w_bytes = 0;
  const sg_tensor *x = NULL, *w = NULL, *b = NULL, *a = NULL, *gamma = NULL, *beta = NULL;
  if (!strcmp(op, "conv2d")) {
    TRY(input(c, "x", 0, &storage[0], &x, error));
    TRY(input(c, "w", 0, &storage[1], &w, error));
    storage[1].constant_id = constant_id;
    w_bytes = sg_tensor_nbytes(w);
    TRY(weights_memory(c, &storage[1], &w_mapping, error));
    TRY(input(c, "b", 1, &storage[2], &b, error));
    const int stride = meta_int(c, "stride", 1), padding = meta_int(c, "padding", 0);
    const int groups = meta_int(c, "groups", 1);
    if (x->ndim != 3 || w->ndim != 4) {
      status = sg_fail(error, SG_ERR_FORMAT, "%s: conv2d needs x [C,H,W] and w [O,I,kh,kw]",
                       c->path);
      goto done;
    }
    int64_t dims[3] = {w->dims[0], (x->dims[1] + 2 * padding - w->dims[2]) / stride + 1,
                       (x->dims[2] + 2 * padding - w->dims[3]) / stride + 1};
    TRY(make_output(3, dims, &y, error));
    TRY(residual_input(c, &storage[3], &y, &residual, error));
    TRY(maybe_nhwc(c, "x_nhwc", &storage[0], &x_owned, error));
    if (residual && residual != &y) {
      residual_storage = *residual;
      TRY(maybe_nhwc(c, "y_nhwc", &residual_storage, &r_owned, error));
      residual = &residual_storage;
    }
    float *y_plain = y.data;
    TRY(maybe_nhwc(c, "y_nhwc", &y, &y_owned, error)); /* keeps the residual held in y */
    if (y_owned) free(y_plain); /* y's memory is now the channels-last copy */
    for (int i = 0; i < repeat; i++) {
      TRY(sg_conv2d_residual(be, x, w, b, stride, padding, groups, act, residual, &y, error));
    }
    plain_again(&y);
    const sg_tensor *x2;
    TRY(input(c, "x2", 1, &storage[4], &x2, error));
    if (x2) {
      /* The same weights on another input (a new primitive, perhaps another packed layout). */
      int64_t dims2[3] = {w->dims[0], (x2->dims[1] + 2 * padding - w->dims[2]) / stride + 1,
                          (x2->dims[2] + 2 * padding - w->dims[3]) / stride + 1};
      TRY(make_output(3, dims2, &y2, error));
      TRY(sg_conv2d(be, x2, w, b, stride, padding, groups, act, &y2, error));
    }
  } else if (!strcmp(op, "linear")) {
    TRY(input(c, "x", 0, &storage[0], &x, error));
    TRY(input(c, "w", 0, &storage[1], &w, error));
    storage[1].constant_id = constant_id;
    w_bytes = sg_tensor_nbytes(w);
    TRY(weights_memory(c, &storage[1], &w_mapping, error));
    if (meta_int(c, "w_int8", 0)) {
      const int64_t rows = w->dims[0], cols = w->dims[1];
      w_codes = malloc((size_t)(rows * cols));
      w_scales = malloc((size_t)rows * sizeof(float));
      if (!w_codes || !w_scales) {
        status = sg_fail(error, SG_ERR_OUT_OF_MEMORY, "out of memory for int8 weights");
        goto done;
      }
      sg_quantize_rows_int8(w->data, rows, cols, w_codes, w_scales);
      sg_tensor quantized = sg_tensor_view(w_codes, SG_I8, 2, w->dims);
      quantized.scales = w_scales;
      storage[1] = quantized;
    } else if (meta_int(c, "w_bf16", 0)) {
      const int64_t count = w->dims[0] * w->dims[1];
      uint16_t *values = malloc((size_t)count * sizeof *values);
      if (!values) {
        status = sg_fail(error, SG_ERR_OUT_OF_MEMORY, "out of memory for bf16 weights");
        goto done;
      }
      for (int64_t i = 0; i < count; i++) values[i] = sg_f32_to_bf16(((const float *)w->data)[i]);
      w_codes = values;
      storage[1] = sg_tensor_view(values, SG_BF16, 2, w->dims);
      storage[1].constant_id = constant_id;
    }
    char block_kb[32] = "";
    if (meta_int(c, "widen_block_kb", 0) > 0)
      snprintf(block_kb, sizeof block_kb, "%d", meta_int(c, "widen_block_kb", 0));
    if (block_kb[0]) setenv("SNAPGEN_WIDEN_BLOCK_KB", block_kb, 1);
    TRY(input(c, "b", 1, &storage[2], &b, error));
    int64_t dims[2] = {x->dims[0], w->dims[0]};
    TRY(make_output(2, dims, &y, error));
    TRY(residual_input(c, &storage[3], &y, &residual, error));
    for (int i = 0; i < repeat; i++) TRY(sg_linear_residual(be, x, w, b, act, residual, &y, error));
    if (w_mapping && x->dims[0] > 1) {
      /* The first M-1 rows again, on a primitive made after the weights were released. */
      const int64_t rows = x->dims[0] - 1, n = w->dims[0];
      sg_tensor x_rows = sg_tensor_2d(x->data, rows, x->dims[1]);
      sg_tensor y_rows = sg_tensor_2d(y.data, rows, n), r_rows;
      const sg_tensor *r = NULL;
      if (residual == &y) {
        memcpy(y.data, storage[3].data, (size_t)(rows * n) * sizeof(float));
        r = &y_rows;
      } else if (residual) {
        r_rows = sg_tensor_2d(residual->data, rows, n);
        r = &r_rows;
      }
      TRY(sg_linear_residual(be, &x_rows, w, b, act, r, &y_rows, error));
    }
  } else if (!strcmp(op, "eltwise") || !strcmp(op, "softmax")) {
    TRY(input(c, "x", 0, &storage[0], &x, error));
    if (inplace) {
      TRY(make_inplace(&x, &storage[1], &y, error));
    } else {
      TRY(make_output(x->ndim, x->dims, &y, error));
    }
    for (int i = 0; i < repeat; i++) {
      TRY(op[0] == 'e' ? sg_eltwise(be, act, x, &y, error) : sg_softmax(be, x, &y, error));
    }
  } else if (!strcmp(op, "binary")) {
    TRY(input(c, "a", 0, &storage[0], &a, error));
    TRY(input(c, "b", 0, &storage[1], &b, error));
    const char *name = meta(c, "binary", "add");
    sg_binary_op kind_of_op = !strcmp(name, "mul") ? SG_BINARY_MUL : SG_BINARY_ADD;
    if (strcmp(name, "mul") && strcmp(name, "add")) {
      status = sg_fail(error, SG_ERR_FORMAT, "%s: unknown binary op \"%s\"", c->path, name);
      goto done;
    }
    if (inplace) {
      TRY(make_inplace(&a, &storage[2], &y, error));
    } else {
      TRY(make_output(a->ndim, a->dims, &y, error));
    }
    for (int i = 0; i < repeat; i++) TRY(sg_binary(be, kind_of_op, a, b, &y, error));
  } else if (!strcmp(op, "group_norm") || !strcmp(op, "layer_norm") ||
             !strcmp(op, "rms_norm")) {
    TRY(input(c, "x", 0, &storage[0], &x, error));
    const float eps = meta_float(c, "eps", 1e-5f);
    if (!strcmp(op, "rms_norm")) {
      TRY(input(c, "w", 0, &storage[1], &w, error));
    } else {
      TRY(input(c, "gamma", 1, &storage[1], &gamma, error));
      TRY(input(c, "beta", 1, &storage[2], &beta, error));
    }
    if (op[0] == 'g') TRY(maybe_nhwc(c, "x_nhwc", &storage[0], &x_owned, error));
    const sg_format x_format = x->format;
    if (inplace) {
      TRY(make_inplace(&x, &storage[3], &y, error));
    } else {
      TRY(make_output(x->ndim, x->dims, &y, error));
    }
    y.format = storage[3].format = x_format; /* group norm: y in x's layout */
    for (int i = 0; i < repeat; i++) {
      if (op[0] == 'g') {
        TRY(sg_group_norm(be, x, meta_int(c, "groups", 32), gamma, beta, eps, act, &y, error));
      } else if (op[0] == 'l') {
        TRY(sg_layer_norm(be, x, gamma, beta, eps, &y, error));
      } else {
        TRY(sg_rms_norm(be, x, w, eps, meta_float(c, "weight_offset", 0.0f), &y, error));
      }
    }
    plain_again(&y);
  } else if (!strcmp(op, "pointwise_depthwise")) {
    const sg_tensor *dw = NULL;
    TRY(input(c, "x", 0, &storage[0], &x, error));
    TRY(input(c, "w", 0, &storage[1], &w, error));
    TRY(input(c, "b", 1, &storage[2], &b, error));
    TRY(input(c, "dw", 0, &storage[3], &dw, error));
    storage[1].constant_id = storage[3].constant_id = constant_id;
    if (x->ndim != 3 || w->ndim != 4) {
      status = sg_fail(error, SG_ERR_FORMAT,
                       "%s: pointwise_depthwise needs x [C,H,W] and w "
                       "[O,C,1,1]",
                       c->path);
      goto done;
    }
    int64_t dims[3] = {w->dims[0], x->dims[1], x->dims[2]};
    TRY(make_output(3, dims, &y, error));
    TRY(make_output(3, dims, &mid, error)); /* in y's layout */
    TRY(maybe_nhwc(c, "x_nhwc", &storage[0], &x_owned, error));
    float *y_plain = y.data;
    TRY(maybe_nhwc(c, "y_nhwc", &y, &y_owned, error));
    if (y_owned) free(y_plain);
    mid.format = y.format;
    for (int i = 0; i < repeat; i++)
      TRY(sg_pointwise_depthwise(be, x, w, b, act, dw, &mid, &y, error));
    plain_again(&y);
  } else if (!strcmp(op, "sum_taps3x3")) {
    TRY(input(c, "z", 0, &storage[0], &x, error));
    TRY(input(c, "b", 1, &storage[2], &b, error));
    if (x->ndim != 3) {
      status = sg_fail(error, SG_ERR_FORMAT, "%s: sum_taps3x3 needs z [C,H,W]", c->path);
      goto done;
    }
    int64_t dims[3] = {meta_int(c, "outputs", 1), x->dims[1], x->dims[2]};
    TRY(make_output(3, dims, &y, error));
    TRY(maybe_nhwc(c, "x_nhwc", &storage[0], &x_owned, error));
    for (int i = 0; i < repeat; i++) TRY(sg_sum_taps3x3(be, x, b, &y, error));
  } else if (!strcmp(op, "upsample")) {
    TRY(input(c, "x", 0, &storage[0], &x, error));
    int64_t dims[3] = {x->dims[0], 2 * x->dims[1], x->ndim == 3 ? 2 * x->dims[2] : 0};
    TRY(make_output(x->ndim, dims, &y, error));
    TRY(maybe_nhwc(c, "x_nhwc", &storage[0], &x_owned, error));
    if (meta_int(c, "x_nhwc", 0)) y.format = x->format;
    for (int i = 0; i < repeat; i++) TRY(sg_upsample_nearest2x(be, x, &y, error));
    plain_again(&y);
  } else if (!strcmp(op, "concat")) {
    TRY(input(c, "a", 0, &storage[0], &a, error));
    TRY(input(c, "b", 0, &storage[1], &b, error));
    int64_t dims[SG_MAX_DIMS];
    memcpy(dims, a->dims, sizeof dims);
    const int axis = a->ndim == 3 ? 0 : a->ndim - 1;
    dims[axis] += b->ndim == a->ndim ? b->dims[axis] : 0;
    TRY(make_output(a->ndim, dims, &y, error));
    for (int i = 0; i < repeat; i++) TRY(sg_concat(be, a, b, &y, error));
  } else if (!strcmp(op, "transpose")) {
    TRY(input(c, "x", 0, &storage[0], &x, error));
    int64_t dims[2] = {x->dims[1], x->dims[0]};
    TRY(make_output(2, dims, &y, error));
    for (int i = 0; i < repeat; i++) TRY(sg_transpose(be, x, &y, error));
  } else if (!strcmp(op, "attention")) {
    const sg_tensor *q, *k, *v, *mask;
    TRY(input(c, "q", 0, &storage[0], &q, error));
    TRY(input(c, "k", 0, &storage[1], &k, error));
    TRY(input(c, "v", 0, &storage[2], &v, error));
    TRY(input(c, "key_mask", 1, &storage[3], &mask, error));
    sg_attention_params params = {
        .heads = meta_int(c, "heads", 1),
        .kv_heads = meta_int(c, "kv_heads", 1),
        .head_dim = meta_int(c, "head_dim", (int)q->dims[q->ndim - 1]),
        .scale = meta_float(c, "scale", 1.0f),
        .softcap = meta_float(c, "softcap", 0.0f),
        .causal = meta_int(c, "causal", 0),
        .window = meta_int(c, "window", 0),
        .key_mask = mask ? mask->data : NULL,
    };
    if (mask && sg_tensor_numel(mask) != k->dims[0]) {
      status = sg_fail(error, SG_ERR_FORMAT, "%s: key_mask has %lld values for %lld keys",
                       c->path, (long long)sg_tensor_numel(mask), (long long)k->dims[0]);
      goto done;
    }
    TRY(make_output(q->ndim, q->dims, &y, error));
    for (int i = 0; i < repeat; i++) TRY(sg_attention(be, q, k, v, &params, &y, error));
  } else if (!strcmp(op, "gated")) {
    TRY(input(c, "x", 0, &storage[0], &x, error));
    int64_t dims[2] = {x->dims[0], x->dims[1] / 2};
    TRY(make_output(2, dims, &y, error));
    for (int i = 0; i < repeat; i++) TRY(sg_gated(be, x, act, &y, error));
  } else {
    status = sg_fail(error, SG_ERR_FORMAT, "%s: unknown op \"%s\"", c->path, op);
    goto done;
  }
  const char *names[2] = {"y", "y2"};
  const char *metadata[] = {"op", op, "backend", backend_name, NULL};
  sg_tensor outputs[2] = {y, y2};
  status = sg_safetensors_write(out_path, y2.data ? 2 : 1, names, outputs, metadata, error);
done:
  unsetenv("SNAPGEN_WIDEN_BLOCK_KB"); /* widen_block_kb */
  free(y.data);
  free(y2.data);
  free(mid.data);
  free(x_owned);
  free(r_owned);
  if (w_mapping) munmap(w_mapping, sg_weight_mapping_bytes(w_bytes));
  free(w_codes);
  free(w_scales);
  sg_backend_free(be);
  return status;
}

int check_ops_main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: sgcheck op CASE.safetensors OUT.safetensors\n");
    return 2;
  }
  sg_error error = {0};
  case_file c = {.path = argv[1]};
  int unavailable = 0;
  sg_status status = sg_safetensors_open(c.path, &c.file, &error);
  if (status == SG_OK) {
    status = run_case(&c, argv[2], &unavailable, &error);
    sg_safetensors_close(c.file);
  }
  if (status != SG_OK) {
    fprintf(stderr, "sgcheck op: %s\n", error.message);
    return unavailable ? 3 : 1;
  }
  return 0;
}
