/* ops_internal.h: what ops.c (validation, dispatch) shares with the two backends, ops_ref.c and
 * ops_dnnl.c (with its fallbacks ops_fast.c and ops_blas.c). The backends get arguments that
 * ops.c has already checked. */
#ifndef SG_OPS_INTERNAL_H
#define SG_OPS_INTERNAL_H

#include "ops.h"

/* oneDNN engine, stream and primitive cache (defined in ops_dnnl.c). */
typedef struct sg_dnnl sg_dnnl;

struct sg_backend {
  sg_backend_kind kind;
  int threads;   /* OpenMP threads used by both backends (> 0) */
  sg_dnnl *dnnl; /* NULL for the reference backend */
  float *widened; /* rows of an int8 or bf16 weight matrix widened to f32 (sg_linear) */
  int64_t widened_capacity;
  float *block_out; /* a linear layer's output for one block of widened rows */
  int64_t block_out_capacity;
};

/* Where the values of an image [C,H,W] are: channel c starts at sg_image_channel_offset(t, c),
 * and from there rows and columns are *row and *column elements apart (plain, channels-last or
 * in blocks of 8 channels). */
static inline void sg_image_strides(const sg_tensor *t, int64_t *row, int64_t *column) {
  const int64_t c = t->dims[0], w = t->dims[2];
  *row = t->format == SG_FORMAT_NHWC ? w * c : t->format == SG_FORMAT_BLOCKED8 ? w * 8 : w;
  *column = t->format == SG_FORMAT_NHWC ? c : t->format == SG_FORMAT_BLOCKED8 ? 8 : 1;
}

static inline int64_t sg_image_channel_offset(const sg_tensor *t, int64_t c) {
  const int64_t plane = t->dims[1] * t->dims[2];
  if (t->format == SG_FORMAT_NHWC) return c;
  if (t->format == SG_FORMAT_BLOCKED8) return (c / 8) * plane * 8 + c % 8;
  return c * plane;
}

/* Output height or width of a convolution (kernel k, square stride/padding). */
static inline int64_t sg_conv_out_size(int64_t in, int64_t k, int stride, int padding) {
  return (in + 2 * (int64_t)padding - k) / stride + 1;
}

/* True when key j is excluded for query i (key mask, causal, window). */
static inline int sg_attention_excluded(const sg_attention_params *p, int64_t i, int64_t j) {
  if (p->key_mask && p->key_mask[j] == 0.0f) return 1;
  if (p->causal && j > i) return 1;
  if (p->causal && p->window > 0 && i - j >= p->window) return 1;
  return 0;
}

/* b's dims expanded to a's rank (the broadcast rules of sg_binary); 0 when b does not fit a. */
static inline int sg_binary_b_dims(const sg_tensor *a, const sg_tensor *b, int64_t *dims) {
  int n = a->ndim;
  for (int i = 0; i < n; i++) dims[i] = 1;
  if (sg_tensor_numel(b) == 1) return 1;
  if (b->ndim == n) {
    for (int i = 0; i < n; i++) {
      dims[i] = b->dims[i];
      if (dims[i] != 1 && dims[i] != a->dims[i]) return 0;
    }
    return 1;
  }
  if (b->ndim != 1) return 0;
  int axis = n >= 3 ? n - 3 : n - 1; /* images [C,H,W]: per channel; [M,C]: along the last dim */
  if (b->dims[0] != a->dims[axis]) return 0;
  dims[axis] = b->dims[0];
  return 1;
}

/* Plain-C reference (ops_ref.c). residual (NULL: none) is added before the activation; it may
 * be y. */
sg_status sg_ref_conv2d(const sg_tensor *x, const sg_tensor *w, const sg_tensor *b, int stride,
                        int padding, int groups, sg_activation act, const sg_tensor *residual,
                        sg_tensor *y);
sg_status sg_ref_linear(const sg_tensor *x, const sg_tensor *w, const sg_tensor *b,
                        sg_activation act, const sg_tensor *residual, sg_tensor *y);
sg_status sg_ref_eltwise(sg_activation act, const sg_tensor *x, sg_tensor *y);
sg_status sg_ref_binary(sg_binary_op op, const sg_tensor *a, const sg_tensor *b, sg_tensor *y);
sg_status sg_ref_group_norm(const sg_tensor *x, int groups, const sg_tensor *gamma,
                            const sg_tensor *beta, float eps, sg_activation act, sg_tensor *y);
sg_status sg_ref_layer_norm(const sg_tensor *x, const sg_tensor *gamma, const sg_tensor *beta,
                            float eps, sg_tensor *y);
sg_status sg_ref_rms_norm(const sg_tensor *x, const sg_tensor *w, float eps, float weight_offset,
                          sg_tensor *y);
sg_status sg_ref_softmax(const sg_tensor *x, sg_tensor *y);
sg_status sg_ref_upsample_nearest2x(const sg_tensor *x, sg_tensor *y);
sg_status sg_ref_sum_taps3x3(const sg_tensor *z, const sg_tensor *b, sg_tensor *y);
sg_status sg_ref_concat(const sg_tensor *a, const sg_tensor *b, sg_tensor *y);
sg_status sg_ref_transpose(const sg_tensor *x, sg_tensor *y);
sg_status sg_ref_attention(const sg_tensor *q, const sg_tensor *k, const sg_tensor *v,
                           const sg_attention_params *params, sg_tensor *y, sg_error *error);
sg_status sg_ref_gated(const sg_tensor *x, sg_activation act, sg_tensor *y);

/* The engine's own f32 loops (ops_fast.c), which the oneDNN backend runs where oneDNN itself only
 * has a reference kernel (NEON-only arm64 cores). Arguments are checked as for the backends. */
void sg_fast_activate(float *v, int64_t n, sg_activation act); /* in place */
void sg_fast_eltwise(sg_activation act, const float *x, float *y, int64_t count);
void sg_fast_binary(sg_binary_op op, const sg_tensor *a, const sg_tensor *b, sg_tensor *y);
void sg_fast_softmax(const float *x, float *y, int64_t rows, int64_t cols); /* y may be x */
/* groups == channels of x == channels of y */
void sg_fast_depthwise_conv2d(const sg_tensor *x, const sg_tensor *w, const sg_tensor *b,
                              int stride, int padding, sg_activation act, sg_tensor *y);
/* sg_sum_taps3x3 (ops.h) on the oneDNN backend: rows of y added up from shifted rows of z. */
void sg_fast_sum_taps3x3(const sg_tensor *z, const float *bias, sg_tensor *y);
/* Copies image from into to, which has its shape, converting between its layouts (tensor.h). */
void sg_fast_relayout(const sg_tensor *from, sg_tensor *to);
/* sg_fast_depthwise_conv2d on channels-last images; taps: room for kh * kw * channels floats.
 * Kernels of at most SG_DEPTHWISE_NHWC_MAX_KERNEL rows. */
#define SG_DEPTHWISE_NHWC_MAX_KERNEL 7
void sg_fast_depthwise_conv2d_nhwc(const sg_tensor *x, const sg_tensor *w, const sg_tensor *b,
                                   int stride, int padding, sg_activation act, float *taps,
                                   sg_tensor *y);
/* Group norm (no activation) of x [pixels, channels] into y (may be x), using scratch of
 * sg_fast_group_norm_nhwc_scratch(channels) doubles (the caller keeps it: no per-call allocation).
 */
int64_t sg_fast_group_norm_nhwc_scratch(int64_t channels);
void sg_fast_group_norm_nhwc(const float *x, int64_t pixels, int64_t channels, int groups,
                             const float *gamma, const float *beta, float eps, float *y,
                             double *scratch);

/* Floats for a convolution's patches (im2col columns), grown on demand, freed with the oneDNN
 * backend. */
typedef struct {
  float *data;
  size_t count;
} sg_blas_scratch;
/* scratch->data with room for count floats (ops_fast.c); NULL when memory is exhausted. */
float *sg_scratch_reserve(sg_blas_scratch *scratch, int64_t count, sg_error *error);

/* OpenBLAS path (ops_blas.c, built where OpenBLAS is found; SG_HAVE_BLAS is then defined): the
 * oneDNN backend runs convolutions and matrix products here where oneDNN only has a reference
 * kernel for them. */

/* "OpenBLAS sgemm (neoversen1 kernels)": the library and the kernel set it chose for this CPU. */
const char *sg_blas_describe(char *buf, size_t size);
sg_status sg_blas_conv2d(const sg_tensor *x, const sg_tensor *w, const sg_tensor *b, int stride,
                         int padding, int groups, sg_activation act, sg_tensor *y,
                         sg_blas_scratch *scratch, sg_error *error);
sg_status sg_blas_linear(const sg_tensor *x, const sg_tensor *w, const sg_tensor *b,
                         sg_activation act, sg_tensor *y);
/* The two products of sg_dnnl_attention for a block of `block` queries, in its score layout:
 * rows (query, head) when kv_heads == 1, else (head, query). q and y point at the block's first
 * query row; k and v are whole. */
void sg_blas_attention_scores(const sg_attention_params *p, int64_t block, int64_t keys,
                              const float *q, const float *k, float *scores);
void sg_blas_attention_values(const sg_attention_params *p, int64_t block, int64_t keys,
                              const float *scores, const float *v, float *y);

/* oneDNN backend (ops_dnnl.c). */
sg_dnnl *sg_dnnl_new(sg_error *error);
int sg_dnnl_prefers_channels_last(sg_dnnl *dnnl);
int sg_dnnl_prefers_blocked8(sg_dnnl *dnnl);
int sg_dnnl_convolutions_right(sg_dnnl *dnnl);
sg_status sg_dnnl_set_bf16(sg_dnnl *dnnl, int on, sg_error *error);
void sg_dnnl_free(sg_dnnl *dnnl);
size_t sg_dnnl_packed_weight_bytes(const sg_dnnl *dnnl);
size_t sg_dnnl_released_weight_bytes(const sg_dnnl *dnnl);
void sg_dnnl_drop_packed_weights(sg_dnnl *dnnl);
sg_status sg_dnnl_conv2d(sg_dnnl *dnnl, const sg_tensor *x, const sg_tensor *w, const sg_tensor *b,
                         int stride, int padding, int groups, sg_activation act,
                         const sg_tensor *residual, sg_tensor *y, sg_error *error);
sg_status sg_dnnl_pointwise_depthwise(sg_dnnl *dnnl, const sg_tensor *x, const sg_tensor *w,
                                      const sg_tensor *b, sg_activation act, const sg_tensor *dw,
                                      sg_tensor *mid, sg_tensor *y, sg_error *error);
/* w is f32, or SG_BF16 (read in place, never packed) when sg_dnnl_reads_bf16_weights. */
sg_status sg_dnnl_linear(sg_dnnl *dnnl, const sg_tensor *x, const sg_tensor *w, const sg_tensor *b,
                         sg_activation act, const sg_tensor *residual, sg_tensor *y,
                         sg_error *error);
/* Whether sg_dnnl_linear takes bf16 weights as they are: in bf16 mode, unless every op is asked
 * to take its fallback (SNAPGEN_FALLBACK=always; the fallbacks read f32 weights). */
int sg_dnnl_reads_bf16_weights(const sg_dnnl *dnnl);
sg_status sg_dnnl_eltwise(sg_dnnl *dnnl, sg_activation act, const sg_tensor *x, sg_tensor *y,
                          sg_error *error);
sg_status sg_dnnl_binary(sg_dnnl *dnnl, sg_binary_op op, const sg_tensor *a, const sg_tensor *b,
                         sg_tensor *y, sg_error *error);
sg_status sg_dnnl_group_norm(sg_dnnl *dnnl, const sg_tensor *x, int groups, const sg_tensor *gamma,
                             const sg_tensor *beta, float eps, sg_activation act, sg_tensor *y,
                             sg_error *error);
sg_status sg_dnnl_layer_norm(sg_dnnl *dnnl, const sg_tensor *x, const sg_tensor *gamma,
                             const sg_tensor *beta, float eps, sg_tensor *y, sg_error *error);
sg_status sg_dnnl_rms_norm(sg_dnnl *dnnl, const sg_tensor *x, const sg_tensor *w, float eps,
                           float weight_offset, sg_tensor *y, sg_error *error);
sg_status sg_dnnl_softmax(sg_dnnl *dnnl, const sg_tensor *x, sg_tensor *y, sg_error *error);
sg_status sg_dnnl_upsample_nearest2x(sg_dnnl *dnnl, const sg_tensor *x, sg_tensor *y,
                                     sg_error *error);
sg_status sg_dnnl_concat(sg_dnnl *dnnl, const sg_tensor *a, const sg_tensor *b, sg_tensor *y,
                         sg_error *error);
sg_status sg_dnnl_transpose(sg_dnnl *dnnl, const sg_tensor *x, sg_tensor *y, sg_error *error);
sg_status sg_dnnl_attention(sg_dnnl *dnnl, const sg_tensor *q, const sg_tensor *k,
                            const sg_tensor *v, const sg_attention_params *params, sg_tensor *y,
                            sg_error *error);
sg_status sg_dnnl_gated(sg_dnnl *dnnl, const sg_tensor *x, sg_activation act, sg_tensor *y,
                        sg_error *error);

#endif
