/* ops_dnnl_check.c: checks whether oneDNN's convolution kernels compute right on this CPU.
 *
 * Why: oneDNN 3.7.2 (Debian 13) on an AMD EPYC of family 26 (Zen 5) returns wrong outputs from
 * its convolutions, f32 and bf16, when an output channel count leaves a tail in the kernel's
 * blocks: 3x3 24 -> 24 channels and 1x1 32 -> 40 on its AVX-512 kernels, 1x1 48 -> 80 on a
 * 10x9 image on its AVX2 ones too (relative L2 0.1-0.4; the tail channels are wrong). PyTorch,
 * linked to the same library, is wrong there too. Its matrix products are right. The backend
 * runs these probes once; when one fails, its convolutions run on their fallback (ops_dnnl.c). */
#include "ops_dnnl_check.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A convolution of a small NHWC image whose channel counts leave tails in the kernels' blocks. */
typedef struct {
  int in_c, out_c, kernel, depthwise;
} probe_shape;

enum { PROBE_H = 10, PROBE_W = 9 };

/* Small multiples of 1/8: exact in bf16, and every sum below is exact in f32, so the kernel's
 * output must equal the reference up to rounding of the order of 1e-7. */
static float probe_value(uint32_t *state) {
  *state = *state * 1664525u + 1013904223u;
  return (float)((int)(*state >> 24) % 17 - 8) / 8.0f;
}

static uint16_t bf16_bits(float value) {
  uint32_t bits;
  memcpy(&bits, &value, sizeof bits);
  return (uint16_t)(bits >> 16); /* exact: the probe values have at most 8 significant bits */
}

typedef struct {
  dnnl_memory_desc_t src_md, dst_md, w_user_md, w_any_md;
  dnnl_primitive_desc_t conv_pd, reorder_pd;
  dnnl_primitive_t conv, reorder;
  dnnl_memory_t src, dst, w_user, w_packed;
} probe_objects;

static void probe_objects_free(probe_objects *o) {
  if (o->conv) dnnl_primitive_destroy(o->conv);
  if (o->reorder) dnnl_primitive_destroy(o->reorder);
  if (o->conv_pd) dnnl_primitive_desc_destroy(o->conv_pd);
  if (o->reorder_pd) dnnl_primitive_desc_destroy(o->reorder_pd);
  dnnl_memory_t memories[] = {o->src, o->dst, o->w_user, o->w_packed};
  for (size_t i = 0; i < sizeof memories / sizeof *memories; i++) {
    if (memories[i]) dnnl_memory_destroy(memories[i]);
  }
  dnnl_memory_desc_t mds[] = {o->src_md, o->dst_md, o->w_user_md, o->w_any_md};
  for (size_t i = 0; i < sizeof mds / sizeof *mds; i++) {
    if (mds[i]) dnnl_memory_desc_destroy(mds[i]);
  }
}

/* 1: the kernel oneDNN picks is right; 0: it is wrong; -1: the probe could not run (no kernel
 * for it, out of memory). */
static int probe(dnnl_engine_t engine, dnnl_stream_t stream, const probe_shape *shape, int bf16) {
  const int ic = shape->in_c, oc = shape->out_c, k = shape->kernel, pad = shape->kernel / 2;
  const size_t pixels = (size_t)PROBE_H * PROBE_W;
  const int group_in = shape->depthwise ? 1 : ic; /* input channels each output reads */
  const size_t x_count = pixels * ic, w_count = (size_t)oc * group_in * k * k;
  const size_t y_count = pixels * oc;
  const dnnl_data_type_t compute = bf16 ? dnnl_bf16 : dnnl_f32;
  const size_t in_size = bf16 ? sizeof(uint16_t) : sizeof(float);
  float *x = malloc(x_count * sizeof *x), *w = malloc(w_count * sizeof *w);
  float *y = malloc(y_count * sizeof *y);
  void *x_data = malloc(x_count * in_size), *w_data = malloc(w_count * in_size);
  probe_objects o = {0};
  int result = -1;
  if (!x || !w || !y || !x_data || !w_data) goto done;

  uint32_t state = 12345u + (uint32_t)(ic * 131 + oc * 7 + k);
  for (size_t i = 0; i < x_count; i++) x[i] = probe_value(&state); /* NHWC */
  for (size_t i = 0; i < w_count; i++) w[i] = probe_value(&state); /* OIHW */
  for (size_t i = 0; i < x_count; i++) {
    if (bf16)
      ((uint16_t *)x_data)[i] = bf16_bits(x[i]);
    else
      ((float *)x_data)[i] = x[i];
  }
  for (size_t i = 0; i < w_count; i++) {
    if (bf16)
      ((uint16_t *)w_data)[i] = bf16_bits(w[i]);
    else
      ((float *)w_data)[i] = w[i];
  }

  const dnnl_dims_t src_dims = {1, ic, PROBE_H, PROBE_W}, dst_dims = {1, oc, PROBE_H, PROBE_W};
  const dnnl_dims_t ones = {1, 1}, zeros = {0, 0}, pads = {pad, pad};
  /* OIHW, or GOIHW with one channel per group */
  const dnnl_dims_t w_dims = {oc, ic, k, k}, dw_dims = {oc, 1, 1, k, k};
  const int w_ndims = shape->depthwise ? 5 : 4;
  const dnnl_format_tag_t w_tag = shape->depthwise ? dnnl_goihw : dnnl_oihw;
  dnnl_status_t s = dnnl_memory_desc_create_with_tag(&o.src_md, 4, src_dims, compute, dnnl_nhwc);
  if (s == dnnl_success)
    s = dnnl_memory_desc_create_with_tag(&o.dst_md, 4, dst_dims, dnnl_f32, dnnl_nhwc);
  if (s == dnnl_success)
    s = dnnl_memory_desc_create_with_tag(&o.w_user_md, w_ndims, shape->depthwise ? dw_dims : w_dims,
                                         compute, w_tag);
  if (s == dnnl_success)
    s = dnnl_memory_desc_create_with_tag(&o.w_any_md, w_ndims, shape->depthwise ? dw_dims : w_dims,
                                         compute, dnnl_format_tag_any);
  if (s == dnnl_success) {
    s = dnnl_convolution_forward_primitive_desc_create(
        &o.conv_pd, engine, dnnl_forward_inference, dnnl_convolution_direct, o.src_md, o.w_any_md,
        NULL, o.dst_md, ones, zeros, pads, pads, NULL);
  }
  if (s != dnnl_success) goto done;
  const_dnnl_memory_desc_t w_md = dnnl_primitive_desc_query_md(o.conv_pd, dnnl_query_weights_md, 0);
  s = dnnl_memory_create(&o.src, o.src_md, engine, x_data);
  if (s == dnnl_success) s = dnnl_memory_create(&o.dst, o.dst_md, engine, y);
  if (s == dnnl_success) s = dnnl_memory_create(&o.w_user, o.w_user_md, engine, w_data);
  if (s == dnnl_success) s = dnnl_memory_create(&o.w_packed, w_md, engine, DNNL_MEMORY_ALLOCATE);
  if (s == dnnl_success)
    s = dnnl_reorder_primitive_desc_create(&o.reorder_pd, o.w_user_md, engine, w_md, engine, NULL);
  if (s == dnnl_success) s = dnnl_primitive_create(&o.reorder, o.reorder_pd);
  if (s == dnnl_success) s = dnnl_primitive_create(&o.conv, o.conv_pd);
  if (s == dnnl_success) {
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, o.w_user}, {DNNL_ARG_TO, o.w_packed}};
    s = dnnl_primitive_execute(o.reorder, stream, 2, args);
  }
  if (s == dnnl_success) {
    dnnl_exec_arg_t args[3] = {
        {DNNL_ARG_SRC, o.src}, {DNNL_ARG_WEIGHTS, o.w_packed}, {DNNL_ARG_DST, o.dst}};
    s = dnnl_primitive_execute(o.conv, stream, 3, args);
  }
  if (s == dnnl_success) s = dnnl_stream_wait(stream);
  if (s != dnnl_success) goto done;

  double error = 0.0, norm = 0.0;
  for (int r = 0; r < PROBE_H; r++) {
    for (int c = 0; c < PROBE_W; c++) {
      for (int o_c = 0; o_c < oc; o_c++) {
        double sum = 0.0;
        for (int i = 0; i < k; i++) {
          for (int j = 0; j < k; j++) {
            const int sr = r + i - pad, sc = c + j - pad;
            if (sr < 0 || sr >= PROBE_H || sc < 0 || sc >= PROBE_W) continue;
            const float *px = x + ((size_t)sr * PROBE_W + sc) * ic;
            const float *pw = w + (size_t)o_c * group_in * k * k + (size_t)i * k + j;
            if (shape->depthwise) {
              sum += (double)px[o_c] * pw[0];
            } else {
              for (int i_c = 0; i_c < ic; i_c++) sum += (double)px[i_c] * pw[(size_t)i_c * k * k];
            }
          }
        }
        const double diff = y[((size_t)r * PROBE_W + c) * oc + o_c] - sum;
        error += diff * diff;
        norm += sum * sum;
      }
    }
  }
  result = sqrt(error) <= 1e-5 * sqrt(norm) ? 1 : 0;

done:
  probe_objects_free(&o);
  free(x);
  free(w);
  free(y);
  free(x_data);
  free(w_data);
  return result;
}

int sg_dnnl_check_convolutions(dnnl_engine_t engine, dnnl_stream_t stream, int with_bf16) {
  static const probe_shape shapes[] = {
      {24, 24, 3, 0}, {32, 40, 1, 0}, {48, 80, 1, 0}, {80, 80, 3, 0}};
  for (int bf16 = 0; bf16 <= (with_bf16 ? 1 : 0); bf16++) {
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
      if (probe(engine, stream, &shapes[i], bf16) == 0) return 0;
    }
  }
  return 1;
}

int sg_dnnl_check_depthwise(dnnl_engine_t engine, dnnl_stream_t stream) {
  static const probe_shape shapes[] = {{24, 24, 3, 1}, {40, 40, 3, 1}, {80, 80, 3, 1}};
  for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
    if (probe(engine, stream, &shapes[i], 0) == 0) return 0;
  }
  return 1;
}
