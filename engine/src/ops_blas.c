/* ops_blas.c: convolutions and matrix products on OpenBLAS sgemm (im2col in bounded chunks, 1x1 as
 * one product), for CPUs where oneDNN has no JIT kernel for them (NEON-only arm64 cores). */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "ops_internal.h"

/* im2col works on whole output rows, at most this many floats of columns at a time (16 MiB), so a
 * large 3x3 convolution does not need its full 9x-sized column matrix at once. */
#define COLUMN_BUDGET ((int64_t)1 << 22)

const char *sg_blas_describe(char *buf, size_t size) {
  snprintf(buf, size, "OpenBLAS sgemm (%s kernels)", openblas_get_corename());
  return buf;
}

/* y[c, :] = act(y[c, :] + bias[c]) for an image [channels, pixels]; bias may be NULL. */
static void channel_epilogue(float *y, int64_t channels, int64_t pixels, const float *bias,
                             sg_activation act) {
  if (!bias && act == SG_ACT_NONE) return;
#pragma omp parallel for
  for (int64_t c = 0; c < channels; c++) {
    float *row = y + c * pixels;
    if (bias) {
      for (int64_t i = 0; i < pixels; i++) row[i] += bias[c];
    }
    sg_fast_activate(row, pixels, act);
  }
}

/* Columns for output rows [first_row, first_row + rows) of one group: row r = (c, ky, kx) holds
 * the input pixel under tap (ky, kx) of channel c for each output pixel, or 0 in the padding. */
static void im2col(const float *x, int64_t channels, int64_t in_h, int64_t in_w, int64_t kh,
                   int64_t kw, int stride, int padding, int64_t out_w, int64_t first_row,
                   int64_t rows, float *columns) {
  const int64_t taps = channels * kh * kw, width = rows * out_w;
#pragma omp parallel for
  for (int64_t r = 0; r < taps; r++) {
    const int64_t c = r / (kh * kw), ky = (r / kw) % kh, kx = r % kw;
    const float *xc = x + c * in_h * in_w;
    for (int64_t oy = first_row; oy < first_row + rows; oy++) {
      float *dst = columns + r * width + (oy - first_row) * out_w;
      const int64_t iy = oy * stride + ky - padding;
      if (iy < 0 || iy >= in_h) {
        memset(dst, 0, (size_t)out_w * sizeof(float));
        continue;
      }
      const float *src = xc + iy * in_w;
      for (int64_t ox = 0; ox < out_w; ox++) {
        const int64_t ix = ox * stride + kx - padding;
        dst[ox] = ix >= 0 && ix < in_w ? src[ix] : 0.0f;
      }
    }
  }
}

sg_status sg_blas_conv2d(const sg_tensor *x, const sg_tensor *w, const sg_tensor *b, int stride,
                         int padding, int groups, sg_activation act, sg_tensor *y,
                         sg_blas_scratch *scratch, sg_error *error) {
  const int64_t in_c = x->dims[0], in_h = x->dims[1], in_w = x->dims[2];
  const int64_t out_c = y->dims[0], out_h = y->dims[1], out_w = y->dims[2];
  const int64_t kh = w->dims[2], kw = w->dims[3], pixels = out_h * out_w;
  const int64_t group_in = in_c / groups, group_out = out_c / groups, taps = group_in * kh * kw;
  const float *xd = x->data, *wd = w->data, *bias = b ? (const float *)b->data : NULL;
  float *yd = y->data;
  const int pointwise = kh == 1 && kw == 1 && stride == 1 && padding == 0;
  int64_t chunk_rows = out_h;
  float *columns = NULL;
  if (!pointwise) {
    chunk_rows = COLUMN_BUDGET / (taps * out_w);
    if (chunk_rows < 1) chunk_rows = 1;
    if (chunk_rows > out_h) chunk_rows = out_h;
    columns = sg_scratch_reserve(scratch, taps * chunk_rows * out_w, error);
    if (!columns) return SG_ERR_OUT_OF_MEMORY;
  }
  for (int64_t g = 0; g < groups; g++) {
    const float *xg = xd + g * group_in * in_h * in_w, *wg = wd + g * group_out * taps;
    float *yg = yd + g * group_out * pixels;
    if (pointwise) { /* y_g [out, pixels] = w_g [out, in] · x_g [in, pixels] */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)group_out, (int)pixels,
                  (int)group_in, 1.0f, wg, (int)group_in, xg, (int)pixels, 0.0f, yg, (int)pixels);
      continue;
    }
    for (int64_t first = 0; first < out_h; first += chunk_rows) {
      const int64_t rows = out_h - first < chunk_rows ? out_h - first : chunk_rows;
      const int64_t width = rows * out_w;
      im2col(xg, group_in, in_h, in_w, kh, kw, stride, padding, out_w, first, rows, columns);
      /* y_g[:, chunk] [out, width] = w_g [out, taps] · columns [taps, width] */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)group_out, (int)width,
                  (int)taps, 1.0f, wg, (int)taps, columns, (int)width, 0.0f, yg + first * out_w,
                  (int)pixels);
    }
  }
  channel_epilogue(yd, out_c, pixels, bias, act);
  return SG_OK;
}

sg_status sg_blas_linear(const sg_tensor *x, const sg_tensor *w, const sg_tensor *b,
                         sg_activation act, sg_tensor *y) {
  const int64_t rows = x->dims[0], in = x->dims[1], out = w->dims[0];
  const float *bias = b ? (const float *)b->data : NULL;
  float *yd = y->data;
  /* y [rows, out] = x [rows, in] · w [out, in]ᵀ */
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)out, (int)in, 1.0f,
              x->data, (int)in, w->data, (int)in, 0.0f, yd, (int)out);
  if (!bias && act == SG_ACT_NONE) return SG_OK;
#pragma omp parallel for
  for (int64_t m = 0; m < rows; m++) {
    float *row = yd + m * out;
    if (bias) {
      for (int64_t n = 0; n < out; n++) row[n] += bias[n];
    }
    sg_fast_activate(row, out, act);
  }
  return SG_OK;
}

void sg_blas_attention_scores(const sg_attention_params *p, int64_t block, int64_t keys,
                              const float *q, const float *k, float *scores) {
  const int64_t heads = p->heads, kv_heads = p->kv_heads, dim = p->head_dim;
  const int64_t ratio = heads / kv_heads;
  /* With a softcap: softcap * tanh(q·k * scale / softcap), as oneDNN's post-op chain does. */
  const float alpha = p->softcap > 0.0f ? p->scale / p->softcap : p->scale;
  if (kv_heads == 1) { /* one product: [block*heads, dim] · k [keys, dim]ᵀ */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(block * heads), (int)keys,
                (int)dim, alpha, q, (int)dim, k, (int)dim, 0.0f, scores, (int)keys);
  } else { /* per query head h = g * ratio + r: rows of q with stride heads*dim, kv head g */
    for (int64_t h = 0; h < heads; h++) {
      const int64_t g = h / ratio;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)block, (int)keys, (int)dim,
                  alpha, q + h * dim, (int)(heads * dim), k + g * dim, (int)(kv_heads * dim),
                  0.0f, scores + h * block * keys, (int)keys);
    }
  }
  if (p->softcap > 0.0f) {
    const int64_t count = block * heads * keys;
    const float softcap = p->softcap;
#pragma omp parallel for
    for (int64_t i = 0; i < count; i++) scores[i] = softcap * tanhf(scores[i]);
  }
}

void sg_blas_attention_values(const sg_attention_params *p, int64_t block, int64_t keys,
                              const float *scores, const float *v, float *y) {
  const int64_t heads = p->heads, kv_heads = p->kv_heads, dim = p->head_dim;
  const int64_t ratio = heads / kv_heads;
  if (kv_heads == 1) { /* y [block*heads, dim] = scores [block*heads, keys] · v [keys, dim] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(block * heads), (int)dim,
                (int)keys, 1.0f, scores, (int)keys, v, (int)dim, 0.0f, y, (int)dim);
  } else {
    for (int64_t h = 0; h < heads; h++) {
      const int64_t g = h / ratio;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)block, (int)dim, (int)keys,
                  1.0f, scores + h * block * keys, (int)keys, v + g * dim, (int)(kv_heads * dim),
                  0.0f, y + h * dim, (int)(heads * dim));
    }
  }
}
