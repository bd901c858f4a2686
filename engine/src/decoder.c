/* decoder.c: the compact latent-to-RGB decoder: config, weights by name (weights/README.md),
 * forward pass. */
#include "decoder.h"

#include <glib.h>
#include <stdio.h>
#include <string.h>

#include "error.h"

#define MAX_CHANNELS 4096

#define TRY_CFG(expr)                     \
  do {                                    \
    sg_status status_ = (expr);           \
    if (status_ != SG_OK) return status_; \
  } while (0)

sg_status sg_decoder_config_check(const sg_decoder_config *c, const char *source,
                                  sg_error *error) {
  if (!source) source = "decoder config";
  if (c->num_stages < 1 || c->num_stages > SG_DECODER_MAX_STAGES)
    return sg_fail(error, SG_ERR_FORMAT, "%s: field 'channels' must have 1 to %d entries", source,
                   SG_DECODER_MAX_STAGES);
  if (c->latent_channels < 1 || c->latent_channels > 256)
    return sg_fail(error, SG_ERR_FORMAT, "%s: field 'latent_channels' must be 1..256", source);
  if (c->out_channels < 1 || c->out_channels > 16)
    return sg_fail(error, SG_ERR_FORMAT, "%s: field 'out_channels' must be 1..16", source);
  for (int i = 0; i < c->num_stages; i++) {
    if (c->channels[i] < 1 || c->channels[i] > MAX_CHANNELS)
      return sg_fail(error, SG_ERR_FORMAT, "%s: field 'channels'[%d] = %d is not 1..%d", source,
                     i, c->channels[i], MAX_CHANNELS);
    if (c->blocks[i] < 0 || c->blocks[i] > 16)
      return sg_fail(error, SG_ERR_FORMAT, "%s: field 'blocks'[%d] = %d is not 0..16", source, i,
                     c->blocks[i]);
  }
  if (!(c->latent_clamp >= 0 && c->latent_clamp <= 1e6))
    return sg_fail(error, SG_ERR_FORMAT, "%s: field 'latent_clamp' must be >= 0 (0: none)",
                   source);
  return SG_OK;
}

/* Missing fields take the recipe's defaults (sgrecipe/decoder.py DEFAULT_CONFIG). */
static const sg_decoder_config default_config = {.latent_channels = 16,
                                                 .out_channels = 3,
                                                 .num_stages = 4,
                                                 .channels = {64, 64, 64, 64},
                                                 .blocks = {3, 3, 3, 1},
                                                 .separable = 1,
                                                 .latent_clamp = 3.0};

static sg_status read_array(const sg_json *json, const char *field, int64_t min, int64_t max,
                            int *values, int *count, sg_error *error) {
  if (!sg_json_has(json, field)) return SG_OK;
  int64_t read[SG_DECODER_MAX_STAGES];
  TRY_CFG(sg_json_int_array(json, field, SG_DECODER_MAX_STAGES, min, max, read, count, error));
  for (int i = 0; i < *count; i++) values[i] = (int)read[i];
  return SG_OK;
}

sg_status sg_decoder_config_from_json(const sg_json *json, sg_decoder_config *config,
                                      sg_error *error) {
  sg_decoder_config c = default_config;
  const char *path = sg_json_path(json);
  int64_t value;
  TRY_CFG(sg_json_int(json, "latent_channels", 1, c.latent_channels, 1, 256, &value, error));
  c.latent_channels = (int)value;
  TRY_CFG(sg_json_int(json, "out_channels", 1, c.out_channels, 1, 16, &value, error));
  c.out_channels = (int)value;
  TRY_CFG(read_array(json, "channels", 1, MAX_CHANNELS, c.channels, &c.num_stages, error));
  if (c.num_stages < 1)
    return sg_fail(error, SG_ERR_FORMAT, "%s: field 'channels' must have 1 to %d entries", path,
                   SG_DECODER_MAX_STAGES);
  int count = default_config.num_stages;
  TRY_CFG(read_array(json, "blocks", 0, 16, c.blocks, &count, error));
  if (count != c.num_stages)
    return sg_fail(error, SG_ERR_FORMAT, "%s: field 'blocks' has %d entries, 'channels' has %d",
                   path, count, c.num_stages);
  TRY_CFG(sg_json_bool(json, "separable", 1, c.separable, &c.separable, error));
  TRY_CFG(sg_json_float(json, "latent_clamp", 1, c.latent_clamp, 0.0, 1e6, &c.latent_clamp,
                        error));
  TRY_CFG(sg_decoder_config_check(&c, path, error));
  *config = c;
  return SG_OK;
}

sg_status sg_decoder_config_load(const char *path, sg_decoder_config *config, sg_error *error) {
  sg_json *json = NULL;
  TRY_CFG(sg_json_load(path, &json, error));
  sg_status status = sg_decoder_config_from_json(json, config, error);
  sg_json_free(json);
  return status;
}

int sg_decoder_scale(const sg_decoder_config *config) {
  return 1 << (config->num_stages - 1);
}

/* A 3×3 convolution, dense or depthwise + pointwise. */
typedef struct {
  int separable;
  sg_tensor dw, pw_w, pw_b; /* separable: dw [in,1,3,3], pw [out,in,1,1] */
  sg_tensor w, b;           /* dense: [out,in,3,3] */
  int has_bias;
} conv_unit;

typedef struct {
  conv_unit conv[3];
} decoder_block;

typedef struct {
  int channels, num_blocks;
  decoder_block *blocks;
  int has_upsample;
  conv_unit upsample; /* to the next stage's width, no bias */
} decoder_stage;

struct sg_decoder {
  sg_decoder_config config;
  sg_tensor conv_in_w, conv_in_b;
  decoder_stage stages[SG_DECODER_MAX_STAGES];
  sg_tensor conv_out_w, conv_out_b;
  /* conv_out as a 1x1 convolution into 9 planes per output (taps_planes), used on blocked images:
   * row 9·o + 3·ky + kx holds conv_out_w[o, :, ky, kx], later rows zero. NULL data: not used. */
  sg_tensor taps_w;
};

/* Fetching and counting share one walk (weights NULL: count only), so they always agree. */
typedef struct {
  sg_weights *weights;
  int64_t count;
  sg_error *error;
} loader;

static sg_status fetch(loader *ld, sg_tensor *dst, const char *name, int ndim, int64_t d0,
                       int64_t d1, int64_t d2, int64_t d3) {
  int64_t dims[4] = {d0, d1, d2, d3};
  int64_t numel = 1;
  for (int i = 0; i < ndim; i++) numel *= dims[i];
  ld->count += numel;
  if (!ld->weights) {
    memset(dst, 0, sizeof *dst);
    return SG_OK;
  }
  return sg_weights_get(ld->weights, name, ndim, dims, dst, ld->error);
}

static sg_status load_conv(loader *ld, conv_unit *u, const char *prefix, int separable, int in,
                           int out, int bias) {
  char name[128];
  u->separable = separable;
  u->has_bias = bias;
  if (separable) {
    snprintf(name, sizeof name, "%s.dw.weight", prefix);
    TRY_CFG(fetch(ld, &u->dw, name, 4, in, 1, 3, 3));
    snprintf(name, sizeof name, "%s.pw.weight", prefix);
    TRY_CFG(fetch(ld, &u->pw_w, name, 4, out, in, 1, 1));
    if (bias) {
      snprintf(name, sizeof name, "%s.pw.bias", prefix);
      TRY_CFG(fetch(ld, &u->pw_b, name, 1, out, 0, 0, 0));
    }
  } else {
    snprintf(name, sizeof name, "%s.weight", prefix);
    TRY_CFG(fetch(ld, &u->w, name, 4, out, in, 3, 3));
    if (bias) {
      snprintf(name, sizeof name, "%s.bias", prefix);
      TRY_CFG(fetch(ld, &u->b, name, 1, out, 0, 0, 0));
    }
  }
  return SG_OK;
}

static sg_status load_all(loader *ld, sg_decoder *d) {
  const sg_decoder_config *c = &d->config;
  char prefix[96];
  TRY_CFG(fetch(ld, &d->conv_in_w, "conv_in.weight", 4, c->channels[0], c->latent_channels, 3, 3));
  TRY_CFG(fetch(ld, &d->conv_in_b, "conv_in.bias", 1, c->channels[0], 0, 0, 0));
  for (int i = 0; i < c->num_stages; i++) {
    decoder_stage *st = &d->stages[i];
    st->channels = c->channels[i];
    st->num_blocks = c->blocks[i];
    st->blocks = g_new0(decoder_block, st->num_blocks > 0 ? st->num_blocks : 1);
    for (int j = 0; j < st->num_blocks; j++)
      for (int k = 0; k < 3; k++) {
        snprintf(prefix, sizeof prefix, "stages.%d.blocks.%d.conv%d", i, j, k + 1);
        TRY_CFG(load_conv(ld, &st->blocks[j].conv[k], prefix, c->separable, st->channels,
                          st->channels, 1));
      }
    st->has_upsample = i < c->num_stages - 1;
    if (st->has_upsample) {
      snprintf(prefix, sizeof prefix, "stages.%d.upsample", i);
      TRY_CFG(load_conv(ld, &st->upsample, prefix, c->separable, st->channels,
                        c->channels[i + 1], 0));
    }
  }
  int last = c->channels[c->num_stages - 1];
  TRY_CFG(fetch(ld, &d->conv_out_w, "conv_out.weight", 4, c->out_channels, last, 3, 3));
  TRY_CFG(fetch(ld, &d->conv_out_b, "conv_out.bias", 1, c->out_channels, 0, 0, 0));
  return SG_OK;
}

void sg_decoder_free(sg_decoder *decoder) {
  if (!decoder) return;
  g_free(decoder->taps_w.data);
  for (int i = 0; i < SG_DECODER_MAX_STAGES; i++) g_free(decoder->stages[i].blocks);
  g_free(decoder);
}

int64_t sg_decoder_parameter_count(const sg_decoder_config *config) {
  if (sg_decoder_config_check(config, NULL, NULL) != SG_OK) return -1;
  sg_decoder *d = g_new0(sg_decoder, 1);
  d->config = *config;
  loader ld = {.weights = NULL, .count = 0, .error = NULL};
  load_all(&ld, d);
  sg_decoder_free(d);
  return ld.count;
}

/* FLOPs of a conv unit (3x3 dense, or depthwise 3x3 + pointwise) at hw pixels. */
static double unit_flops(int separable, int in, int out, double hw) {
  return separable ? 2.0 * hw * (9.0 * in + (double)in * out) : 2.0 * hw * 9.0 * in * out;
}

double sg_decoder_flops(const sg_decoder_config *c, int h, int w) {
  if (sg_decoder_config_check(c, NULL, NULL) != SG_OK) return 0;
  double hw = (double)h * w;
  double flops = unit_flops(0, c->latent_channels, c->channels[0], hw);
  for (int i = 0; i < c->num_stages; i++) {
    flops += 3.0 * c->blocks[i] * unit_flops(c->separable, c->channels[i], c->channels[i], hw);
    if (i + 1 < c->num_stages) {
      hw *= 4; /* the upsample's conv runs at the next stage's size */
      flops += unit_flops(c->separable, c->channels[i], c->channels[i + 1], hw);
    }
  }
  return flops + unit_flops(0, c->channels[c->num_stages - 1], c->out_channels, hw);
}

/* Planes of conv_out's 1x1 form (9 per output, rounded up to blocks of 8), or 0 where it has
 * more than 3 outputs (oneDNN's 3x3 kernels are slow only for few outputs). */
static int64_t taps_planes(const sg_decoder_config *c) {
  return c->out_channels <= 3 ? (9 * c->out_channels + 7) / 8 * 8 : 0;
}

/* Channels a working buffer holds at stage s: the last stage's also hold conv_out's planes. */
static int64_t held_channels(const sg_decoder_config *c, int s) {
  const int64_t planes = s == c->num_stages - 1 ? taps_planes(c) : 0;
  return c->channels[s] > planes ? c->channels[s] : planes;
}

/* conv_out's weights rearranged into the rows of its 1x1 form (taps_w). */
static void make_taps_weights(sg_decoder *d) {
  const sg_decoder_config *c = &d->config;
  const int64_t planes = taps_planes(c), in = c->channels[c->num_stages - 1];
  if (planes == 0) return;
  const int64_t dims[4] = {planes, in, 1, 1};
  const int64_t count = planes * in;
  float *rows = g_new0(float, count);
  const float *w = d->conv_out_w.data; /* [out, in, 3, 3] */
  for (int64_t o = 0; o < c->out_channels; o++)
    for (int64_t t = 0; t < 9; t++)
      for (int64_t i = 0; i < in; i++) rows[(9 * o + t) * in + i] = w[(o * in + i) * 9 + t];
  d->taps_w = sg_tensor_view(rows, SG_F32, 4, dims);
}

sg_status sg_decoder_load(const sg_decoder_config *config, sg_weights *weights, sg_decoder **out,
                          sg_error *error) {
  *out = NULL;
  TRY_CFG(sg_decoder_config_check(config, NULL, error));
  sg_decoder *d = g_new0(sg_decoder, 1);
  d->config = *config;
  loader ld = {.weights = weights, .count = 0, .error = error};
  sg_status status = load_all(&ld, d);
  if (status != SG_OK) {
    sg_decoder_free(d);
    return status;
  }
  make_taps_weights(d);
  *out = d;
  return SG_OK;
}

/* y = act(conv(x) + residual) (residual may be NULL); the depthwise output goes to temp (same
 * size as x). */
static sg_status conv_forward(sg_backend *be, const conv_unit *u, const sg_tensor *x,
                              sg_activation act, const sg_tensor *residual, float *temp,
                              sg_tensor *y, sg_error *error) {
  if (!u->separable)
    return sg_conv2d_residual(be, x, &u->w, u->has_bias ? &u->b : NULL, 1, 1, 1, act, residual, y,
                              error);
  sg_tensor depthwise = sg_tensor_3d(temp, x->dims[0], x->dims[1], x->dims[2]);
  depthwise.format = x->format;
  TRY_CFG(sg_conv2d(be, x, &u->dw, NULL, 1, 1, (int)x->dims[0], SG_ACT_NONE, &depthwise, error));
  return sg_conv2d_residual(be, &depthwise, &u->pw_w, u->has_bias ? &u->pw_b : NULL, 1, 0, 1, act,
                            residual, y, error);
}

#define TRY(expr)                   \
  do {                              \
    status = (expr);                \
    if (status != SG_OK) goto done; \
  } while (0)

/* An activation [C,H,W] in the decoder's layout (decoder_layout). */
static sg_tensor image_in(sg_format layout, float *data, int64_t c, int64_t h, int64_t w) {
  sg_tensor t = sg_tensor_3d(data, c, h, w);
  t.format = layout;
  return t;
}

/* The layout of oneDNN's CPU convolutions, so the decoder's chain of convolutions runs without
 * reorders between them: blocks of 8 channels where the backend's kernels for it are the fastest
 * (ops.h; on an AVX2 CPU the decoder then takes about 20% less time) and every stage's width is a
 * multiple of 8, else channels-last. */
static sg_format decoder_layout(const sg_decoder_config *c, sg_backend *be) {
  if (!sg_backend_prefers_blocked8(be)) return SG_FORMAT_NHWC;
  for (int i = 0; i < c->num_stages; i++)
    if (c->channels[i] % 8 != 0) return SG_FORMAT_NHWC;
  return SG_FORMAT_BLOCKED8;
}

/* One block, current = relu(conv3(relu(conv2(relu(conv1(current))))) + current), written over
 * current; other, t0 and t1 hold activations of its size. Separable: the 1x1 half of conv1 and
 * conv2 runs with the depthwise half of the next conv (sg_pointwise_depthwise), so the
 * intermediate between them need not go to memory; the last conv adds into what its output
 * holds (no copy of the residual). */
static sg_status block_forward(sg_backend *be, const decoder_block *blk, sg_tensor *current,
                               float *other, float *t0, float *t1, sg_error *error) {
  const int64_t C = current->dims[0], H = current->dims[1], W = current->dims[2];
  sg_tensor out = image_in(current->format, other, C, H, W);
  sg_tensor mid = image_in(current->format, t1, C, H, W);
  if (!blk->conv[0].separable) {
    TRY_CFG(conv_forward(be, &blk->conv[0], current, SG_ACT_RELU, NULL, t0, &out, error));
    TRY_CFG(conv_forward(be, &blk->conv[1], &out, SG_ACT_RELU, NULL, t0, &mid, error));
    return conv_forward(be, &blk->conv[2], &mid, SG_ACT_RELU, current, t0, current, error);
  }
  const conv_unit *u = blk->conv;
  sg_tensor depthwise = image_in(current->format, t0, C, H, W);
  TRY_CFG(sg_conv2d(be, current, &u[0].dw, NULL, 1, 1, (int)C, SG_ACT_NONE, &depthwise, error));
  TRY_CFG(sg_pointwise_depthwise(be, &depthwise, &u[0].pw_w, u[0].has_bias ? &u[0].pw_b : NULL,
                                 SG_ACT_RELU, &u[1].dw, &mid, &out, error));
  TRY_CFG(sg_pointwise_depthwise(be, &out, &u[1].pw_w, u[1].has_bias ? &u[1].pw_b : NULL,
                                 SG_ACT_RELU, &u[2].dw, &mid, &depthwise, error));
  return sg_conv2d_residual(be, &depthwise, &u[2].pw_w, u[2].has_bias ? &u[2].pw_b : NULL, 1, 0, 1,
                            SG_ACT_RELU, current, current, error);
}

/* ---- tiles ----
 * Every convolution is 3×3 (or depthwise 3×3 + 1×1): each widens the receptive field by one pixel
 * of its stage. A tile decodes its core (a rectangle of the latent) from the core grown by a
 * margin; then, at every stage, values within the grown core minus what the convolutions so far
 * have eaten from its edges equal an untiled decode's (at the image's own edges the zero padding
 * is the real one). margin[s] is what stage s's input needs for the core to come out exact, so
 * the tiled image equals the untiled one. Between stages the activation is cropped to what the
 * rest still needs, so high-resolution stages work on little more than the core. */

typedef struct {
  int64_t y, x, h, w; /* first row and column, rows and columns, at one stage's resolution */
} region;

/* core grown by margin on every side, within a full × full_w image. */
static region grow(region core, int64_t margin, int64_t full_h, int64_t full_w) {
  int64_t y0 = core.y - margin < 0 ? 0 : core.y - margin;
  int64_t x0 = core.x - margin < 0 ? 0 : core.x - margin;
  int64_t y1 = core.y + core.h + margin > full_h ? full_h : core.y + core.h + margin;
  int64_t x1 = core.x + core.w + margin > full_w ? full_w : core.x + core.w + margin;
  return (region){y0, x0, y1 - y0, x1 - x0};
}

static region scaled(region r, int64_t factor) {
  return (region){r.y * factor, r.x * factor, r.h * factor, r.w * factor};
}

/* Margins in each stage's pixels: margin[s] for stage s's input (after the upsample of the stage
 * before), and *latent_margin for the latent (before conv_in). */
static void tile_margins(const sg_decoder_config *c, int64_t *margin, int64_t *latent_margin) {
  int last = c->num_stages - 1;
  margin[last] = 3 * c->blocks[last] + 1; /* its convolutions, then conv_out */
  for (int s = last - 1; s >= 0; s--) {
    /* The next stage's input comes from the upsample conv (one pixel there) over the upsampled
     * output of this stage: half as many of this stage's pixels, rounded up. */
    margin[s] = 3 * c->blocks[s] + (margin[s + 1] + 2) / 2;
  }
  *latent_margin = margin[0] + 1; /* conv_in */
}

/* The regions one tile works on: the latent it reads, each stage's input, and for each stage
 * but the last, the part of its output the next stage needs (crop). */
typedef struct {
  region latent, input[SG_DECODER_MAX_STAGES], crop[SG_DECODER_MAX_STAGES];
} tile_plan;

static tile_plan plan_tile(const sg_decoder_config *c, region core, int64_t h, int64_t w) {
  int64_t margin[SG_DECODER_MAX_STAGES], latent_margin;
  tile_margins(c, margin, &latent_margin);
  tile_plan p;
  p.latent = grow(core, latent_margin, h, w);
  p.input[0] = p.latent; /* conv_in keeps the size */
  for (int s = 0; s + 1 < c->num_stages; s++) {
    p.crop[s] = grow(scaled(core, (int64_t)1 << s), (margin[s + 1] + 2) / 2, h << s, w << s);
    p.input[s + 1] = scaled(p.crop[s], 2);
  }
  return p;
}

/* The whole image as one tile. */
static tile_plan plan_whole(const sg_decoder_config *c, int64_t h, int64_t w) {
  return plan_tile(c, (region){0, 0, h, w}, h, w);
}

/* Floats of the largest activation from stage `first` on (each of the four working buffers holds
 * one): a stage's input, or a stage's output cropped and upsampled before the next one's conv. */
static int64_t plan_largest(const sg_decoder_config *c, const tile_plan *p, int first) {
  int64_t largest = first == 0 ? (int64_t)c->latent_channels * p->latent.h * p->latent.w : 0;
  for (int s = first > 0 ? first - 1 : 0; s < c->num_stages; s++) {
    int64_t size = s >= first ? held_channels(c, s) * p->input[s].h * p->input[s].w : 0;
    if (s + 1 < c->num_stages) {
      int64_t wider = c->channels[s] > c->channels[s + 1] ? c->channels[s] : c->channels[s + 1];
      int64_t upsampled = wider * p->input[s + 1].h * p->input[s + 1].w;
      if (upsampled > size) size = upsampled;
    }
    if (size > largest) largest = size;
  }
  return largest;
}

/* Copies rows/columns `part` (absolute, within `from`'s region `whole`) of image `from` into
 * `to` (shaped for part, same format: plain, channels-last or blocked). */
static void crop_image(const sg_tensor *from, region whole, region part, sg_tensor *to) {
  const int64_t c = from->dims[0];
  const float *src = from->data;
  float *dst = to->data;
  const int64_t dy = part.y - whole.y, dx = part.x - whole.x;
  if (from->format == SG_FORMAT_NHWC) {
    for (int64_t y = 0; y < part.h; y++)
      memcpy(dst + y * part.w * c, src + ((dy + y) * whole.w + dx) * c,
             (size_t)(part.w * c) * sizeof(float));
    return;
  }
  /* Plain: rows of one channel; blocked: rows of 8 channels' pixels. */
  const int64_t planes = from->format == SG_FORMAT_BLOCKED8 ? c / 8 : c;
  const int64_t pixel = from->format == SG_FORMAT_BLOCKED8 ? 8 : 1;
  for (int64_t p = 0; p < planes; p++)
    for (int64_t y = 0; y < part.h; y++)
      memcpy(dst + (p * part.h + y) * part.w * pixel,
             src + ((p * whole.h + dy + y) * whole.w + dx) * pixel,
             (size_t)(part.w * pixel) * sizeof(float));
}

/* Tile i of count along a side of n latent pixels: first pixel and count. */
static int64_t tile_count(int64_t n, int64_t tile) { return tile <= 0 ? 1 : (n + tile - 1) / tile; }
static int64_t tile_start(int64_t n, int64_t count, int64_t i) { return i * n / count; }
static region tile_core(int64_t h, int64_t w, int64_t rows, int64_t columns, int64_t i,
                        int64_t j) {
  region core = {tile_start(h, rows, i), tile_start(w, columns, j), 0, 0};
  core.h = tile_start(h, rows, i + 1) - core.y;
  core.w = tile_start(w, columns, j + 1) - core.x;
  return core;
}

/* Runs stages first..last of a plan on *current (in buf[0] or buf[1], over p->input[first]):
 * each stage's blocks (skipped for `first` when skip_first_blocks), then, between stages, the
 * crop to p->crop[s], the upsample and its conv. *current ends as stage last's output. */
static sg_status run_stages(const sg_decoder *decoder, sg_backend *be, const tile_plan *p,
                            int first, int last, int skip_first_blocks, float *const *buf,
                            sg_tensor *current, sg_error *error) {
  const sg_decoder_config *c = &decoder->config;
  float *a = buf[0], *b = buf[1], *t0 = buf[2], *t1 = buf[3];
  for (int i = first; i <= last; i++) {
    const decoder_stage *st = &decoder->stages[i];
    int64_t C = st->channels, H = current->dims[1], W = current->dims[2];
    for (int j = i == first && skip_first_blocks ? st->num_blocks : 0; j < st->num_blocks; j++) {
      float *other = current->data == a ? b : a;
      TRY_CFG(block_forward(be, &st->blocks[j], current, other, t0, t1, error));
    }
    if (i == last) break;
    float *other = current->data == a ? b : a;
    const region crop = p->crop[i];
    if (crop.h != H || crop.w != W) {
      sg_tensor cropped = image_in(current->format, other, C, crop.h, crop.w);
      crop_image(current, p->input[i], crop, &cropped);
      *current = cropped; /* in other, which the upsample has read before the conv writes it */
    }
    sg_tensor upsampled = image_in(current->format, t1, C, 2 * crop.h, 2 * crop.w);
    sg_tensor out = image_in(current->format, other, c->channels[i + 1], 2 * crop.h, 2 * crop.w);
    TRY_CFG(sg_upsample_nearest2x(be, current, &upsampled, error));
    TRY_CFG(conv_forward(be, &st->upsample, &upsampled, SG_ACT_NONE, NULL, t0, &out, error));
    *current = out;
  }
  return SG_OK;
}

/* conv_out on current into out. On blocked or channels-last images as a 1x1 convolution into 9
 * planes per output (in scratch) and their tap sum: oneDNN's 3x3 kernels for 3 outputs run far
 * below its peak (25 ms for a 518² tile of 48 channels on an AVX2 CPU, against 9 ms this way),
 * and where its convolutions run as matrix products (ops_dnnl.c) a 3x3 one would copy 9 × 48
 * values per pixel (the decoder at 1024² on an AMD Zen 5, alternating with the 3x3 form: f32
 * 1.56-1.59 -> 1.30-1.37 s, bf16 1.37 -> 0.92-1.19 s). */
static sg_status conv_out_forward(const sg_decoder *decoder, sg_backend *be,
                                  const sg_tensor *current, float *scratch, sg_tensor *out,
                                  sg_error *error) {
  if ((current->format != SG_FORMAT_BLOCKED8 && current->format != SG_FORMAT_NHWC) ||
      !decoder->taps_w.data) {
    return sg_conv2d(be, current, &decoder->conv_out_w, &decoder->conv_out_b, 1, 1, 1, SG_ACT_NONE,
                     out, error);
  }
  sg_tensor planes = image_in(current->format, scratch, decoder->taps_w.dims[0],
                              current->dims[1], current->dims[2]);
  TRY_CFG(sg_conv2d(be, current, &decoder->taps_w, NULL, 1, 0, 1, SG_ACT_NONE, &planes, error));
  return sg_sum_taps3x3(be, &planes, &decoder->conv_out_b, out, error);
}

/* conv_out on *current (over region `last`) into image: directly when it covers the image, else
 * through tile_image, of which the core goes to its place. scratch holds a working buffer. */
static sg_status finish_tile(const sg_decoder *decoder, sg_backend *be, const sg_tensor *current,
                             region last, region core, float *tile_image, float *scratch,
                             sg_tensor *image, sg_error *error) {
  const sg_decoder_config *c = &decoder->config;
  if (last.h == image->dims[1] && last.w == image->dims[2])
    return conv_out_forward(decoder, be, current, scratch, image, error);
  sg_tensor out = sg_tensor_3d(tile_image, c->out_channels, last.h, last.w);
  TRY_CFG(conv_out_forward(decoder, be, current, scratch, &out, error));
  const region core_out = scaled(core, sg_decoder_scale(c));
  const int64_t image_h = image->dims[1], image_w = image->dims[2];
  for (int64_t ch = 0; ch < c->out_channels; ch++)
    for (int64_t y = 0; y < core_out.h; y++)
      memcpy((float *)image->data + (ch * image_h + core_out.y + y) * image_w + core_out.x,
             (float *)out.data + (ch * last.h + core_out.y - last.y + y) * last.w + core_out.x -
                 last.x,
             (size_t)core_out.w * sizeof(float));
  return SG_OK;
}

#define TRY(expr)                   \
  do {                              \
    status = (expr);                \
    if (status != SG_OK) goto done; \
  } while (0)

sg_status sg_decoder_forward(sg_decoder *decoder, sg_backend *be, sg_arena *arena,
                             const sg_tensor *latent, sg_tensor *image, sg_error *error) {
  return sg_decoder_forward_tiled(decoder, be, arena, latent, SG_DECODER_TILE, -1, image, error);
}

/* How the work splits: the first `whole` stages on the whole image (then the last of them's
 * output is kept, `kept` floats), the rest tile by tile; `largest`: floats of each working
 * buffer; `latent_room`, `image_room`: a tile's cropped latent and output (0: not needed). */
typedef struct {
  int whole;
  int64_t kept, largest, latent_room, image_room;
} decode_layout;

static decode_layout layout_for(const sg_decoder_config *c, int64_t h, int64_t w, int64_t rows,
                                int64_t columns, int whole) {
  decode_layout l = {.whole = whole};
  const tile_plan all = plan_whole(c, h, w);
  if (rows * columns == 1) l.whole = c->num_stages;
  if (l.whole > 0) {
    /* The stages on the whole image, without the crop and upsample after the last of them. */
    tile_plan prefix = all;
    int64_t largest = (int64_t)c->latent_channels * h * w;
    for (int s = 0; s < l.whole; s++) {
      int64_t size = held_channels(c, s) * prefix.input[s].h * prefix.input[s].w;
      if (s + 1 < l.whole) {
        int64_t wider = c->channels[s] > c->channels[s + 1] ? c->channels[s] : c->channels[s + 1];
        size = wider * prefix.input[s + 1].h * prefix.input[s + 1].w;
      }
      if (size > largest) largest = size;
    }
    l.largest = largest;
    if (l.whole < c->num_stages)
      l.kept = (int64_t)c->channels[l.whole - 1] * all.input[l.whole - 1].h *
               all.input[l.whole - 1].w;
  }
  if (l.whole == c->num_stages) return l;
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < columns; j++) {
      const tile_plan p = plan_tile(c, tile_core(h, w, rows, columns, i, j), h, w);
      const region last = p.input[c->num_stages - 1];
      int64_t size = plan_largest(c, &p, l.whole);
      if (size > l.largest) l.largest = size;
      if (l.whole == 0 && (int64_t)c->latent_channels * p.latent.h * p.latent.w > l.latent_room)
        l.latent_room = (int64_t)c->latent_channels * p.latent.h * p.latent.w;
      if ((int64_t)c->out_channels * last.h * last.w > l.image_room)
        l.image_room = (int64_t)c->out_channels * last.h * last.w;
    }
  return l;
}

/* Arena layout: [clamped latent][factor][A][B][T0][T1][kept][tile latent][tile image], A..T1
 * sized for the largest activation of any part (all in the decoder_layout; the latent and the
 * image are plain). A block works over A with B, T0 and T1 (block_forward); the crop and the
 * upsample's conv between stages move to the other of A and B. The early stages (few pixels,
 * many channels: costly to tile, whose margins are widest there) run on the whole image as long
 * as that takes no more memory than a tile of the later ones; their output is kept and cropped
 * for each tile. */
sg_status sg_decoder_forward_tiled(sg_decoder *decoder, sg_backend *be, sg_arena *arena,
                                   const sg_tensor *latent, int tile, int whole_stages,
                                   sg_tensor *image, sg_error *error) {
  const sg_decoder_config *c = &decoder->config;
  size_t mark = sg_arena_mark(arena);
  sg_status status = SG_OK;
  if (!latent || latent->dtype != SG_F32 || latent->ndim != 3 ||
      latent->dims[0] != c->latent_channels)
    TRY(sg_fail(error, SG_ERR_INVALID_ARGUMENT, "decoder: the latent must be f32 [%d, h, w]",
                c->latent_channels));
  int64_t h = latent->dims[1], w = latent->dims[2], scale = sg_decoder_scale(c);
  if (!image || image->dtype != SG_F32 || image->ndim != 3 || image->dims[0] != c->out_channels ||
      image->dims[1] != h * scale || image->dims[2] != w * scale)
    TRY(sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                "decoder: the image must be f32 [%d, %lld, %lld]", c->out_channels,
                (long long)(h * scale), (long long)(w * scale)));

  const int64_t rows = tile_count(h, tile), columns = tile_count(w, tile);
  decode_layout layout;
  if (whole_stages >= 0) {
    layout = layout_for(c, h, w, rows, columns,
                        whole_stages < c->num_stages ? whole_stages : c->num_stages);
  } else {
    /* As many whole stages as fit in the memory the tiles need anyway. */
    layout = layout_for(c, h, w, rows, columns, 0);
    for (int k = 1; k <= c->num_stages; k++) {
      decode_layout more = layout_for(c, h, w, rows, columns, k);
      if (more.largest > layout.largest) break;
      layout = more;
    }
  }

  sg_tensor x, factor;
  int64_t one = 1;
  TRY(sg_arena_tensor(arena, 3, latent->dims, &x, error));
  TRY(sg_arena_tensor(arena, 1, &one, &factor, error));
  float *buf[4], *kept = NULL, *tile_latent = NULL, *tile_image = NULL;
  for (int k = 0; k < 4; k++) {
    buf[k] = sg_arena_alloc(arena, layout.largest, error);
    if (!buf[k]) TRY(SG_ERR_OUT_OF_MEMORY);
  }
  if (layout.kept > 0 && !(kept = sg_arena_alloc(arena, layout.kept, error)))
    TRY(SG_ERR_OUT_OF_MEMORY);
  if (layout.latent_room > 0 && !(tile_latent = sg_arena_alloc(arena, layout.latent_room, error)))
    TRY(SG_ERR_OUT_OF_MEMORY);
  if (layout.image_room > 0 && !(tile_image = sg_arena_alloc(arena, layout.image_room, error)))
    TRY(SG_ERR_OUT_OF_MEMORY);

  if (c->latent_clamp > 0) {
    ((float *)factor.data)[0] = (float)(1.0 / c->latent_clamp);
    TRY(sg_binary(be, SG_BINARY_MUL, latent, &factor, &x, error));
    TRY(sg_eltwise(be, SG_ACT_TANH, &x, &x, error));
    ((float *)factor.data)[0] = (float)c->latent_clamp;
    TRY(sg_binary(be, SG_BINARY_MUL, &x, &factor, &x, error));
  } else {
    memcpy(x.data, latent->data, sg_tensor_nbytes(latent));
  }

  const int last = c->num_stages - 1, whole = layout.whole;
  const sg_format format = decoder_layout(c, be);
  const region full = {0, 0, h, w};
  sg_tensor current, kept_output;
  if (whole > 0) {
    const tile_plan all = plan_whole(c, h, w);
    current = image_in(format, buf[0], c->channels[0], h, w);
    TRY(sg_conv2d(be, &x, &decoder->conv_in_w, &decoder->conv_in_b, 1, 1, 1, SG_ACT_RELU,
                  &current, error));
    TRY(run_stages(decoder, be, &all, 0, whole - 1, 0, buf, &current, error));
    if (whole == c->num_stages) {
      TRY(finish_tile(decoder, be, &current, all.input[last], full, NULL, buf[2], image, error));
      goto done;
    }
    kept_output = image_in(format, kept, current.dims[0], current.dims[1], current.dims[2]);
    memcpy(kept, current.data, sg_tensor_nbytes(&current));
  }
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < columns; j++) {
      const region core = tile_core(h, w, rows, columns, i, j);
      const tile_plan p = plan_tile(c, core, h, w);
      if (whole == 0) {
        sg_tensor input = x;
        if (p.latent.h != h || p.latent.w != w) {
          input = sg_tensor_3d(tile_latent, c->latent_channels, p.latent.h, p.latent.w);
          crop_image(&x, full, p.latent, &input);
        }
        current = image_in(format, buf[0], c->channels[0], p.latent.h, p.latent.w);
        TRY(sg_conv2d(be, &input, &decoder->conv_in_w, &decoder->conv_in_b, 1, 1, 1,
                      SG_ACT_RELU, &current, error));
        TRY(run_stages(decoder, be, &p, 0, last, 0, buf, &current, error));
      } else {
        /* From the kept output of the whole stages: its crop, upsample and conv, then on. */
        tile_plan from_kept = p;
        from_kept.input[whole - 1] = plan_whole(c, h, w).input[whole - 1];
        current = kept_output;
        TRY(run_stages(decoder, be, &from_kept, whole - 1, last, 1, buf, &current, error));
      }
      TRY(finish_tile(decoder, be, &current, p.input[last], core, tile_image, buf[2], image,
                      error));
    }
done:
  sg_arena_reset(arena, mark);
  return status;
}
