/* ops_fast.c: the engine's own f32 loops, written for the compiler's vectorizer (NEON on arm64),
 * for the ops where oneDNN only has a reference kernel or a slow one: activations, binary, softmax,
 * depthwise conv, group norm on channels-last images; and the grow-only scratch of patches. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "ops_internal.h"
#include "vector_clones.h"

/* Elementwise work is split into blocks of this many values across threads. */
#define BLOCK 4096

void sg_fast_activate(float *v, int64_t n, sg_activation act) {
  switch (act) { /* the switch is outside the loops so that each loop vectorizes */
    case SG_ACT_NONE: break;
    case SG_ACT_SILU:
      for (int64_t i = 0; i < n; i++) v[i] = v[i] / (1.0f + expf(-v[i]));
      break;
    case SG_ACT_GELU_ERF:
      for (int64_t i = 0; i < n; i++) v[i] = 0.5f * v[i] * (1.0f + erff(v[i] * (float)M_SQRT1_2));
      break;
    case SG_ACT_GELU_TANH:
      for (int64_t i = 0; i < n; i++) {
        const float inner = 0.7978845608f * (v[i] + 0.044715f * v[i] * v[i] * v[i]);
        v[i] = 0.5f * v[i] * (1.0f + tanhf(inner));
      }
      break;
    case SG_ACT_QUICK_GELU:
      for (int64_t i = 0; i < n; i++) v[i] = v[i] / (1.0f + expf(-1.702f * v[i]));
      break;
    case SG_ACT_RELU:
      for (int64_t i = 0; i < n; i++) v[i] = v[i] > 0.0f ? v[i] : 0.0f;
      break;
    case SG_ACT_TANH:
      for (int64_t i = 0; i < n; i++) v[i] = tanhf(v[i]);
      break;
  }
}

void sg_fast_eltwise(sg_activation act, const float *x, float *y, int64_t count) {
  const int64_t blocks = (count + BLOCK - 1) / BLOCK;
#pragma omp parallel for
  for (int64_t i = 0; i < blocks; i++) {
    const int64_t first = i * BLOCK, n = count - first < BLOCK ? count - first : BLOCK;
    if (y != x) memcpy(y + first, x + first, (size_t)n * sizeof(float));
    sg_fast_activate(y + first, n, act);
  }
}

/* y = a op b with b broadcast (sg_binary_b_dims). The trailing dims where b is all broadcast, or
 * all present, are merged into one run of `cols` values, so that the inner loop is long: an
 * image [C,H,W] with b [C] becomes C runs of H*W values plus one scalar each. */
void sg_fast_binary(sg_binary_op op, const sg_tensor *a, const sg_tensor *b, sg_tensor *y) {
  int64_t b_dims[SG_MAX_DIMS], b_strides[SG_MAX_DIMS];
  sg_binary_b_dims(a, b, b_dims);
  const int n = a->ndim;
  int64_t stride = 1;
  for (int i = n - 1; i >= 0; i--) {
    b_strides[i] = b_dims[i] == 1 ? 0 : stride;
    stride *= b_dims[i];
  }
  const int broadcast_tail = b_dims[n - 1] == 1;
  int first_tail = n - 1; /* dims first_tail..n-1 form the run */
  while (first_tail > 0 && (a->dims[first_tail - 1] == 1 ||
                            (b_dims[first_tail - 1] == 1) == broadcast_tail)) {
    first_tail--;
  }
  int64_t cols = 1, rows = 1;
  for (int i = first_tail; i < n; i++) cols *= a->dims[i];
  for (int i = 0; i < first_tail; i++) rows *= a->dims[i];
  const float *ad = a->data, *bd = b->data;
  float *yd = y->data;
  const int add = op == SG_BINARY_ADD;
#pragma omp parallel for
  for (int64_t r = 0; r < rows; r++) {
    int64_t rest = r, b_offset = 0;
    for (int i = first_tail - 1; i >= 0; i--) {
      b_offset += (rest % a->dims[i]) * b_strides[i];
      rest /= a->dims[i];
    }
    const float *ar = ad + r * cols, *br = bd + b_offset;
    float *yr = yd + r * cols;
    if (broadcast_tail) {
      const float s = br[0];
      if (add) {
        for (int64_t c = 0; c < cols; c++) yr[c] = ar[c] + s;
      } else {
        for (int64_t c = 0; c < cols; c++) yr[c] = ar[c] * s;
      }
    } else if (add) {
      for (int64_t c = 0; c < cols; c++) yr[c] = ar[c] + br[c];
    } else {
      for (int64_t c = 0; c < cols; c++) yr[c] = ar[c] * br[c];
    }
  }
}

void sg_fast_softmax(const float *x, float *y, int64_t rows, int64_t cols) {
#pragma omp parallel for
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * cols;
    float *yr = y + r * cols;
    float max = xr[0];
    for (int64_t c = 1; c < cols; c++) max = xr[c] > max ? xr[c] : max;
    float sum = 0.0f;
    for (int64_t c = 0; c < cols; c++) {
      yr[c] = expf(xr[c] - max);
      sum += yr[c];
    }
    const float scale = 1.0f / sum;
    for (int64_t c = 0; c < cols; c++) yr[c] *= scale;
  }
}

/* One row of y at a time: the bias, then the 9 shifted rows of its planes added in (each a
 * strided walk through z's layout). */
void sg_fast_sum_taps3x3(const sg_tensor *z, const float *bias, sg_tensor *y) {
  const int64_t outputs = y->dims[0], height = y->dims[1], width = y->dims[2];
  int64_t zs_y, zs_x;
  sg_image_strides(z, &zs_y, &zs_x);
  const float *zd = z->data;
  float *yd = y->data;
#pragma omp parallel for
  for (int64_t row = 0; row < outputs * height; row++) {
    const int64_t o = row / height, oy = row % height;
    float *acc = yd + row * width;
    for (int64_t x = 0; x < width; x++) acc[x] = bias ? bias[o] : 0.0f;
    for (int64_t ky = 0; ky < 3; ky++) {
      const int64_t iy = oy + ky - 1;
      if (iy < 0 || iy >= height) continue;
      for (int64_t kx = 0; kx < 3; kx++) {
        const int64_t dx = kx - 1;
        const float *plane = zd + sg_image_channel_offset(z, 9 * o + 3 * ky + kx) + iy * zs_y;
        const int64_t first = dx < 0 ? 1 : 0, end = dx > 0 ? width - 1 : width;
        for (int64_t x = first; x < end; x++) acc[x] += plane[(x + dx) * zs_x];
      }
    }
  }
}

void sg_fast_relayout(const sg_tensor *from, sg_tensor *to) {
  const int64_t channels = from->dims[0], height = from->dims[1], width = from->dims[2];
  int64_t fy, fx, ty, tx;
  sg_image_strides(from, &fy, &fx);
  sg_image_strides(to, &ty, &tx);
  const float *src = from->data;
  float *dst = to->data;
#pragma omp parallel for
  for (int64_t y = 0; y < height; y++) {
    for (int64_t c = 0; c < channels; c++) {
      const float *s = src + sg_image_channel_offset(from, c) + y * fy;
      float *d = dst + sg_image_channel_offset(to, c) + y * ty;
      for (int64_t x = 0; x < width; x++) d[x * tx] = s[x * fx];
    }
  }
}

/* Per channel and tap, a multiply-add over the output row's valid span, which is contiguous in x
 * for stride 1. */
void sg_fast_depthwise_conv2d(const sg_tensor *x, const sg_tensor *w, const sg_tensor *b,
                              int stride, int padding, sg_activation act, sg_tensor *y) {
  const int64_t channels = x->dims[0], in_h = x->dims[1], in_w = x->dims[2];
  const int64_t out_h = y->dims[1], out_w = y->dims[2], kh = w->dims[2], kw = w->dims[3];
  const float *xd = x->data, *wd = w->data, *bias = b ? (const float *)b->data : NULL;
  float *yd = y->data;
#pragma omp parallel for
  for (int64_t c = 0; c < channels; c++) {
    const float *xc = xd + c * in_h * in_w, *wc = wd + c * kh * kw;
    for (int64_t oy = 0; oy < out_h; oy++) {
      float *row = yd + (c * out_h + oy) * out_w;
      const float start = bias ? bias[c] : 0.0f;
      for (int64_t ox = 0; ox < out_w; ox++) row[ox] = start;
      for (int64_t ky = 0; ky < kh; ky++) {
        const int64_t iy = oy * stride + ky - padding;
        if (iy < 0 || iy >= in_h) continue;
        const float *src = xc + iy * in_w;
        for (int64_t kx = 0; kx < kw; kx++) {
          const float tap = wc[ky * kw + kx];
          const int64_t shift = kx - padding; /* ix = ox * stride + shift */
          const int64_t first = shift >= 0 ? 0 : (-shift + stride - 1) / stride;
          const int64_t last_ix = in_w - 1 - shift; /* ox * stride <= last_ix */
          int64_t end = last_ix < 0 ? 0 : last_ix / stride + 1;
          if (end > out_w) end = out_w;
          if (stride == 1) {
            for (int64_t ox = first; ox < end; ox++) row[ox] += tap * src[ox + shift];
          } else {
            for (int64_t ox = first; ox < end; ox++) row[ox] += tap * src[ox * stride + shift];
          }
        }
      }
      sg_fast_activate(row, out_w, act);
    }
  }
}

/* Channels of a depthwise output pixel summed together in registers: one AVX-512 register, two
 * AVX2 ones, four SSE2 or NEON ones (GCC's generic vectors); the decoder's channel counts are
 * multiples of 16. Loads and stores go through memcpy, which allows any alignment. */
#define DEPTHWISE_LANES 16
typedef float depthwise_lanes __attribute__((vector_size(DEPTHWISE_LANES * sizeof(float))));

/* One output row of a channels-last depthwise convolution: input rows rows[ky] (NULL where the
 * row is padding), taps[tap][c], each pixel's channels accumulated a block at a time and stored
 * once. */
SG_VECTOR_CLONES
static void depthwise_row_nhwc(const float *const *rows, int64_t in_w, int64_t channels, int64_t kh,
                               int64_t kw, int stride, int padding, const float *taps,
                               const float *bias, int64_t out_w, float *out) {
  for (int64_t ox = 0; ox < out_w; ox++, out += channels) {
    const int64_t left = ox * stride - padding; /* input column of tap kx = 0 */
    const int64_t kx_first = left < 0 ? -left : 0;
    const int64_t kx_end = left + kw > in_w ? in_w - left : kw;
    int64_t c = 0;
    for (; c + DEPTHWISE_LANES <= channels; c += DEPTHWISE_LANES) {
      depthwise_lanes acc = {0}, in, tap;
      if (bias) memcpy(&acc, bias + c, sizeof acc);
      for (int64_t ky = 0; ky < kh; ky++) {
        if (!rows[ky]) continue;
        for (int64_t kx = kx_first; kx < kx_end; kx++) {
          memcpy(&in, rows[ky] + (left + kx) * channels + c, sizeof in);
          memcpy(&tap, taps + (ky * kw + kx) * channels + c, sizeof tap);
          acc += tap * in;
        }
      }
      memcpy(out + c, &acc, sizeof acc);
    }
    for (; c < channels; c++) { /* channel counts that are not multiples of the block */
      float acc = bias ? bias[c] : 0.0f;
      for (int64_t ky = 0; ky < kh; ky++) {
        if (!rows[ky]) continue;
        for (int64_t kx = kx_first; kx < kx_end; kx++)
          acc += taps[(ky * kw + kx) * channels + c] * rows[ky][(left + kx) * channels + c];
      }
      out[c] = acc;
    }
  }
}

/* The same on channels-last images x [in_h, in_w, channels] and y [out_h, out_w, channels]: the
 * inner loop runs along the channels, contiguous in x, y and the taps copied to taps[tap][c].
 * taps is caller-provided room for kh * kw * channels floats. Kernels up to 7x7. */
void sg_fast_depthwise_conv2d_nhwc(const sg_tensor *x, const sg_tensor *w, const sg_tensor *b,
                                   int stride, int padding, sg_activation act, float *taps,
                                   sg_tensor *y) {
  const int64_t channels = x->dims[0], in_h = x->dims[1], in_w = x->dims[2];
  const int64_t out_h = y->dims[1], out_w = y->dims[2], kh = w->dims[2], kw = w->dims[3];
  const float *xd = x->data, *wd = w->data, *bias = b ? (const float *)b->data : NULL;
  float *yd = y->data;
  for (int64_t c = 0; c < channels; c++) {
    for (int64_t t = 0; t < kh * kw; t++) taps[t * channels + c] = wd[c * kh * kw + t];
  }
#pragma omp parallel for
  for (int64_t oy = 0; oy < out_h; oy++) {
    const float *rows[SG_DEPTHWISE_NHWC_MAX_KERNEL];
    for (int64_t ky = 0; ky < kh; ky++) {
      const int64_t iy = oy * stride + ky - padding;
      rows[ky] = iy < 0 || iy >= in_h ? NULL : xd + iy * in_w * channels;
    }
    float *out = yd + oy * out_w * channels;
    depthwise_row_nhwc(rows, in_w, channels, kh, kw, stride, padding, taps, bias, out_w, out);
    sg_fast_activate(out, out_w * channels, act);
  }
}

/* Pixels summed in f32 before their sums are added to the f64 totals, and the number of pixel
 * ranges summed apart (in parallel): fixed, so that the result does not depend on the threads. */
#define NORM_BLOCK 64
#define NORM_CHUNKS 32

/* Group norm of a channels-last image, x [pixels, channels] row-major (y may be x). oneDNN 3.7's
 * kernel for this layout is about 3x slower than its planar one (measured: 15.9 vs 5.7 ms for
 * 512 channels at 128x128), so it is written here: one pass for per-channel sums, taken around
 * each channel's first value so that E[x²] - E[x]² does not cancel, one pass to normalize. Both
 * loops run along the channels, which are contiguous, and vectorize. */
int64_t sg_fast_group_norm_nhwc_scratch(int64_t channels) {
  /* f64 totals [chunks][2][C], f32 block sums [chunks][2][C], f32 scale and shift [2][C] */
  return (int64_t)NORM_CHUNKS * 3 * channels + channels;
}

void sg_fast_group_norm_nhwc(const float *x, int64_t pixels, int64_t channels, int groups,
                             const float *gamma, const float *beta, float eps, float *y,
                             double *scratch) {
  double *totals = scratch;
  float *blocks = (float *)(scratch + (int64_t)NORM_CHUNKS * 2 * channels);
  float *scale = (float *)(scratch + (int64_t)NORM_CHUNKS * 3 * channels);
  memset(totals, 0, (size_t)NORM_CHUNKS * 2 * channels * sizeof(double));
  const float *origin = x; /* each channel's first value */
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < NORM_CHUNKS; k++) {
    const int64_t first = pixels * k / NORM_CHUNKS, last = pixels * (k + 1) / NORM_CHUNKS;
    double *sum = totals + k * 2 * channels, *squares = sum + channels;
    float *block_sum = blocks + k * 2 * channels, *block_squares = block_sum + channels;
    for (int64_t start = first; start < last; start += NORM_BLOCK) {
      const int64_t end = start + NORM_BLOCK < last ? start + NORM_BLOCK : last;
      memset(block_sum, 0, (size_t)channels * 2 * sizeof(float));
      for (int64_t p = start; p < end; p++) {
        const float *row = x + p * channels;
        for (int64_t c = 0; c < channels; c++) {
          const float v = row[c] - origin[c];
          block_sum[c] += v;
          block_squares[c] += v * v;
        }
      }
      for (int64_t c = 0; c < channels; c++) {
        sum[c] += block_sum[c];
        squares[c] += block_squares[c];
      }
    }
  }
  const int64_t group_channels = channels / groups;
  const double count = (double)pixels * (double)group_channels;
  for (int g = 0; g < groups; g++) {
    double group_sum = 0.0, group_squares = 0.0;
    for (int64_t c = g * group_channels; c < (g + 1) * group_channels; c++) {
      double s = 0.0, q = 0.0;
      for (int64_t k = 0; k < NORM_CHUNKS; k++) {
        s += totals[k * 2 * channels + c];
        q += totals[k * 2 * channels + channels + c];
      }
      const double o = origin[c]; /* undo the shift: sum x = s + P o, sum x² = q + 2 o s + P o² */
      group_sum += s + (double)pixels * o;
      group_squares += q + 2.0 * o * s + (double)pixels * o * o;
    }
    const double mean = group_sum / count;
    double variance = group_squares / count - mean * mean;
    if (variance < 0.0) variance = 0.0;
    const double inv_std = 1.0 / sqrt(variance + eps);
    for (int64_t c = g * group_channels; c < (g + 1) * group_channels; c++) {
      const double a = (gamma ? gamma[c] : 1.0) * inv_std;
      scale[c] = (float)a;
      scale[channels + c] = (float)((beta ? beta[c] : 0.0) - mean * a);
    }
  }
  const float *shift = scale + channels;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < pixels; p++) {
    const float *row = x + p * channels;
    float *out = y + p * channels;
    for (int64_t c = 0; c < channels; c++) out[c] = row[c] * scale[c] + shift[c];
  }
}

float *sg_scratch_reserve(sg_blas_scratch *scratch, int64_t count, sg_error *error) {
  if (scratch->count < (size_t)count) {
    sg_pages_free(scratch->data, scratch->count * sizeof(float));
    scratch->data = sg_pages_alloc((size_t)count * sizeof(float));
    scratch->count = scratch->data ? (size_t)count : 0;
    if (!scratch->data) {
      sg_fail(error, SG_ERR_OUT_OF_MEMORY,
              "conv2d: out of memory for %lld floats of patches (im2col columns)",
              (long long)count);
      return NULL;
    }
  }
  return scratch->data;
}
