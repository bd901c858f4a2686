/* ops_ref.c: the plain-C reference of every op (clear loops, double accumulation): the tests trust
 * it, the engine can run on it anywhere. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "ops_internal.h"

static const float *cdata(const sg_tensor *t) { return (const float *)t->data; }
static float *fdata(sg_tensor *t) { return (float *)t->data; }

/* Rows and row length of a tensor normalized or softmaxed along its last dim. */
static void rows_cols(const sg_tensor *t, int64_t *rows, int64_t *cols) {
  *cols = t->dims[t->ndim - 1];
  *rows = sg_tensor_numel(t) / *cols;
}

/* Each output value is written once, after its residual value was read: residual may be y. */
sg_status sg_ref_conv2d(const sg_tensor *x, const sg_tensor *w, const sg_tensor *b, int stride,
                        int padding, int groups, sg_activation act, const sg_tensor *residual,
                        sg_tensor *y) {
  const int64_t in_c = x->dims[0], in_h = x->dims[1], in_w = x->dims[2];
  const int64_t out_c = y->dims[0], out_h = y->dims[1], out_w = y->dims[2];
  const int64_t kh = w->dims[2], kw = w->dims[3];
  const int64_t group_in = in_c / groups, group_out = out_c / groups;
  const float *xd = cdata(x), *wd = cdata(w), *bd = b ? cdata(b) : NULL;
  const float *rd = residual ? cdata(residual) : NULL;
  float *yd = fdata(y);
  int64_t xs_y, xs_x, ys_y, ys_x; /* plain, channels-last or blocked */
  sg_image_strides(x, &xs_y, &xs_x);
  sg_image_strides(y, &ys_y, &ys_x);
#pragma omp parallel for
  for (int64_t co = 0; co < out_c; co++) {
    const int64_t first_ci = (co / group_out) * group_in;
    const float *wc = wd + co * group_in * kh * kw;
    for (int64_t oy = 0; oy < out_h; oy++) {
      for (int64_t ox = 0; ox < out_w; ox++) {
        double sum = bd ? bd[co] : 0.0;
        for (int64_t ci = 0; ci < group_in; ci++) {
          const float *xc = xd + sg_image_channel_offset(x, first_ci + ci);
          for (int64_t ky = 0; ky < kh; ky++) {
            int64_t iy = oy * stride - padding + ky;
            if (iy < 0 || iy >= in_h) continue;
            for (int64_t kx = 0; kx < kw; kx++) {
              int64_t ix = ox * stride - padding + kx;
              if (ix < 0 || ix >= in_w) continue;
              sum += (double)xc[iy * xs_y + ix * xs_x] * wc[(ci * kh + ky) * kw + kx];
            }
          }
        }
        const int64_t at = sg_image_channel_offset(y, co) + oy * ys_y + ox * ys_x;
        if (rd) sum += rd[at];
        yd[at] = sg_activation_apply(act, (float)sum);
      }
    }
  }
  return SG_OK;
}

sg_status sg_ref_linear(const sg_tensor *x, const sg_tensor *w, const sg_tensor *b,
                        sg_activation act, const sg_tensor *residual, sg_tensor *y) {
  const int64_t rows = x->dims[0], in = x->dims[1], out = w->dims[0];
  const float *xd = cdata(x), *wd = cdata(w), *bd = b ? cdata(b) : NULL;
  const float *rd = residual ? cdata(residual) : NULL;
  float *yd = fdata(y);
#pragma omp parallel for
  for (int64_t m = 0; m < rows; m++) {
    for (int64_t n = 0; n < out; n++) {
      double sum = bd ? bd[n] : 0.0;
      for (int64_t k = 0; k < in; k++) sum += (double)xd[m * in + k] * wd[n * in + k];
      if (rd) sum += rd[m * out + n];
      yd[m * out + n] = sg_activation_apply(act, (float)sum);
    }
  }
  return SG_OK;
}

sg_status sg_ref_eltwise(sg_activation act, const sg_tensor *x, sg_tensor *y) {
  const int64_t count = sg_tensor_numel(x);
  const float *xd = cdata(x);
  float *yd = fdata(y);
#pragma omp parallel for
  for (int64_t i = 0; i < count; i++) yd[i] = sg_activation_apply(act, xd[i]);
  return SG_OK;
}

sg_status sg_ref_binary(sg_binary_op op, const sg_tensor *a, const sg_tensor *b, sg_tensor *y) {
  int64_t b_dims[SG_MAX_DIMS], b_strides[SG_MAX_DIMS];
  sg_binary_b_dims(a, b, b_dims);
  /* Row-major strides of b, zero along broadcast dims. */
  int64_t stride = 1;
  for (int i = a->ndim - 1; i >= 0; i--) {
    b_strides[i] = b_dims[i] == 1 ? 0 : stride;
    stride *= b_dims[i];
  }
  const int64_t count = sg_tensor_numel(a);
  const float *ad = cdata(a), *bd = cdata(b);
  float *yd = fdata(y);
#pragma omp parallel for
  for (int64_t i = 0; i < count; i++) {
    int64_t rest = i, b_index = 0;
    for (int d = a->ndim - 1; d >= 0; d--) {
      b_index += (rest % a->dims[d]) * b_strides[d];
      rest /= a->dims[d];
    }
    yd[i] = op == SG_BINARY_ADD ? ad[i] + bd[b_index] : ad[i] * bd[b_index];
  }
  return SG_OK;
}

sg_status sg_ref_group_norm(const sg_tensor *x, int groups, const sg_tensor *gamma,
                            const sg_tensor *beta, float eps, sg_activation act, sg_tensor *y) {
  const int64_t channels = x->dims[0];
  const int64_t spatial = sg_tensor_numel(x) / channels;
  const int64_t group_channels = channels / groups;
  const int64_t group_size = group_channels * spatial;
  /* Value i of channel c sits at c * channel_step + i * pixel_step (plain or channels-last). */
  const int nhwc = x->format == SG_FORMAT_NHWC;
  const int64_t channel_step = nhwc ? 1 : spatial, pixel_step = nhwc ? channels : 1;
  const float *xd = cdata(x), *gd = gamma ? cdata(gamma) : NULL, *bd = beta ? cdata(beta) : NULL;
  float *yd = fdata(y);
#pragma omp parallel for
  for (int g = 0; g < groups; g++) {
    double mean = 0.0, var = 0.0;
    for (int64_t c = g * group_channels; c < (g + 1) * group_channels; c++)
      for (int64_t i = 0; i < spatial; i++) mean += xd[c * channel_step + i * pixel_step];
    mean /= (double)group_size;
    for (int64_t c = g * group_channels; c < (g + 1) * group_channels; c++) {
      for (int64_t i = 0; i < spatial; i++) {
        const double d = xd[c * channel_step + i * pixel_step] - mean;
        var += d * d;
      }
    }
    var /= (double)group_size;
    const double inv_std = 1.0 / sqrt(var + eps);
    for (int64_t c = g * group_channels; c < (g + 1) * group_channels; c++) {
      const double scale = gd ? gd[c] : 1.0, shift = bd ? bd[c] : 0.0;
      for (int64_t i = 0; i < spatial; i++) {
        const int64_t at = c * channel_step + i * pixel_step;
        yd[at] = sg_activation_apply(act, (float)((xd[at] - mean) * inv_std * scale + shift));
      }
    }
  }
  return SG_OK;
}

sg_status sg_ref_layer_norm(const sg_tensor *x, const sg_tensor *gamma, const sg_tensor *beta,
                            float eps, sg_tensor *y) {
  int64_t rows, cols;
  rows_cols(x, &rows, &cols);
  const float *xd = cdata(x), *gd = gamma ? cdata(gamma) : NULL, *bd = beta ? cdata(beta) : NULL;
  float *yd = fdata(y);
#pragma omp parallel for
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = xd + r * cols;
    float *yr = yd + r * cols;
    double mean = 0.0, var = 0.0;
    for (int64_t c = 0; c < cols; c++) mean += xr[c];
    mean /= (double)cols;
    for (int64_t c = 0; c < cols; c++) var += (xr[c] - mean) * (xr[c] - mean);
    var /= (double)cols;
    const double inv_std = 1.0 / sqrt(var + eps);
    for (int64_t c = 0; c < cols; c++) {
      yr[c] = (float)((xr[c] - mean) * inv_std * (gd ? gd[c] : 1.0) + (bd ? bd[c] : 0.0));
    }
  }
  return SG_OK;
}

sg_status sg_ref_rms_norm(const sg_tensor *x, const sg_tensor *w, float eps, float weight_offset,
                          sg_tensor *y) {
  int64_t rows, cols;
  rows_cols(x, &rows, &cols);
  const float *xd = cdata(x), *wd = cdata(w);
  float *yd = fdata(y);
#pragma omp parallel for
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = xd + r * cols;
    float *yr = yd + r * cols;
    double square_sum = 0.0;
    for (int64_t c = 0; c < cols; c++) square_sum += (double)xr[c] * xr[c];
    const double inv_rms = 1.0 / sqrt(square_sum / (double)cols + eps);
    for (int64_t c = 0; c < cols; c++) {
      yr[c] = (float)(xr[c] * inv_rms * ((double)wd[c] + weight_offset));
    }
  }
  return SG_OK;
}

/* Softmax of one row in place, in double; returns nothing. */
static void softmax_row(double *row, int64_t count) {
  double max = -INFINITY, sum = 0.0;
  for (int64_t i = 0; i < count; i++) max = row[i] > max ? row[i] : max;
  for (int64_t i = 0; i < count; i++) {
    row[i] = exp(row[i] - max);
    sum += row[i];
  }
  for (int64_t i = 0; i < count; i++) row[i] /= sum;
}

sg_status sg_ref_softmax(const sg_tensor *x, sg_tensor *y) {
  int64_t rows, cols;
  rows_cols(x, &rows, &cols);
  const float *xd = cdata(x);
  float *yd = fdata(y);
#pragma omp parallel for
  for (int64_t r = 0; r < rows; r++) {
    double max = -INFINITY, sum = 0.0;
    for (int64_t c = 0; c < cols; c++) max = xd[r * cols + c] > max ? xd[r * cols + c] : max;
    for (int64_t c = 0; c < cols; c++) sum += exp(xd[r * cols + c] - max);
    for (int64_t c = 0; c < cols; c++) {
      yd[r * cols + c] = (float)(exp(xd[r * cols + c] - max) / sum);
    }
  }
  return SG_OK;
}

sg_status sg_ref_upsample_nearest2x(const sg_tensor *x, sg_tensor *y) {
  const int64_t channels = x->dims[0], in_h = x->dims[1], in_w = x->dims[2];
  const float *xd = cdata(x);
  float *yd = fdata(y);
  int64_t xs_y, xs_x, ys_y, ys_x; /* plain, channels-last or blocked */
  sg_image_strides(x, &xs_y, &xs_x);
  sg_image_strides(y, &ys_y, &ys_x);
#pragma omp parallel for
  for (int64_t c = 0; c < channels; c++) {
    const float *xc = xd + sg_image_channel_offset(x, c);
    float *yc = yd + sg_image_channel_offset(y, c);
    for (int64_t oy = 0; oy < 2 * in_h; oy++) {
      for (int64_t ox = 0; ox < 2 * in_w; ox++) {
        yc[oy * ys_y + ox * ys_x] = xc[(oy / 2) * xs_y + (ox / 2) * xs_x];
      }
    }
  }
  return SG_OK;
}

sg_status sg_ref_sum_taps3x3(const sg_tensor *z, const sg_tensor *b, sg_tensor *y) {
  const int64_t outputs = y->dims[0], height = y->dims[1], width = y->dims[2];
  const float *zd = cdata(z), *bd = b ? cdata(b) : NULL;
  float *yd = fdata(y);
  int64_t zs_y, zs_x;
  sg_image_strides(z, &zs_y, &zs_x);
#pragma omp parallel for
  for (int64_t o = 0; o < outputs; o++) {
    for (int64_t oy = 0; oy < height; oy++) {
      for (int64_t ox = 0; ox < width; ox++) {
        double sum = bd ? bd[o] : 0.0;
        for (int64_t ky = 0; ky < 3; ky++) {
          for (int64_t kx = 0; kx < 3; kx++) {
            const int64_t iy = oy + ky - 1, ix = ox + kx - 1;
            if (iy < 0 || iy >= height || ix < 0 || ix >= width) continue;
            sum += zd[sg_image_channel_offset(z, 9 * o + 3 * ky + kx) + iy * zs_y + ix * zs_x];
          }
        }
        yd[(o * height + oy) * width + ox] = (float)sum;
      }
    }
  }
  return SG_OK;
}

sg_status sg_ref_concat(const sg_tensor *a, const sg_tensor *b, sg_tensor *y) {
  /* Both layouts are "outer rows of a's part then b's part": [Ca,H,W] has one outer row. */
  const int64_t outer = a->ndim == 3 ? 1 : a->dims[0];
  const int64_t a_part = sg_tensor_numel(a) / outer, b_part = sg_tensor_numel(b) / outer;
  const float *ad = cdata(a), *bd = cdata(b);
  float *yd = fdata(y);
  for (int64_t r = 0; r < outer; r++) {
    memcpy(yd + r * (a_part + b_part), ad + r * a_part, (size_t)a_part * sizeof(float));
    memcpy(yd + r * (a_part + b_part) + a_part, bd + r * b_part, (size_t)b_part * sizeof(float));
  }
  return SG_OK;
}

sg_status sg_ref_transpose(const sg_tensor *x, sg_tensor *y) {
  const int64_t rows = x->dims[0], cols = x->dims[1];
  const float *xd = cdata(x);
  float *yd = fdata(y);
#pragma omp parallel for
  for (int64_t c = 0; c < cols; c++) {
    for (int64_t r = 0; r < rows; r++) yd[c * rows + r] = xd[r * cols + c];
  }
  return SG_OK;
}

sg_status sg_ref_attention(const sg_tensor *q, const sg_tensor *k, const sg_tensor *v,
                           const sg_attention_params *p, sg_tensor *y, sg_error *error) {
  const int64_t queries = q->dims[0], keys = k->dims[0];
  const int heads = p->heads, kv_heads = p->kv_heads, head_dim = p->head_dim;
  const int64_t q_row = (int64_t)heads * head_dim, kv_row = (int64_t)kv_heads * head_dim;
  const float *qd = cdata(q), *kd = cdata(k), *vd = cdata(v);
  float *yd = fdata(y);
  int failed = 0;
#pragma omp parallel
  {
    double *scores = malloc((size_t)keys * sizeof(double));
    if (!scores) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for collapse(2)
    for (int64_t t = 0; t < queries; t++) {
      for (int h = 0; h < heads; h++) {
        if (!scores) continue;
        const int kv = h / (heads / kv_heads);
        const float *qh = qd + t * q_row + (int64_t)h * head_dim;
        float *yh = yd + t * q_row + (int64_t)h * head_dim;
        int64_t kept = 0;
        for (int64_t j = 0; j < keys; j++) {
          if (sg_attention_excluded(p, t, j)) {
            scores[j] = -INFINITY;
            continue;
          }
          const float *kj = kd + j * kv_row + (int64_t)kv * head_dim;
          double dot = 0.0;
          for (int d = 0; d < head_dim; d++) dot += (double)qh[d] * kj[d];
          dot *= p->scale;
          if (p->softcap > 0.0f) dot = p->softcap * tanh(dot / p->softcap);
          scores[j] = dot;
          kept++;
        }
        if (kept == 0) {
          for (int d = 0; d < head_dim; d++) yh[d] = 0.0f;
          continue;
        }
        softmax_row(scores, keys);
        for (int d = 0; d < head_dim; d++) {
          double sum = 0.0;
          for (int64_t j = 0; j < keys; j++) {
            if (scores[j] != 0.0) sum += scores[j] * vd[j * kv_row + (int64_t)kv * head_dim + d];
          }
          yh[d] = (float)sum;
        }
      }
    }
    free(scores);
  }
  if (failed) return sg_fail(error, SG_ERR_OUT_OF_MEMORY, "attention: out of memory for scores");
  return SG_OK;
}

sg_status sg_ref_gated(const sg_tensor *x, sg_activation act, sg_tensor *y) {
  const int64_t rows = y->dims[0], cols = y->dims[1];
  const float *xd = cdata(x);
  float *yd = fdata(y);
#pragma omp parallel for
  for (int64_t r = 0; r < rows; r++) {
    const float *hidden = xd + r * 2 * cols, *gate = hidden + cols;
    for (int64_t c = 0; c < cols; c++) {
      yd[r * cols + c] = (float)((double)hidden[c] * sg_activation_apply(act, gate[c]));
    }
  }
  return SG_OK;
}
