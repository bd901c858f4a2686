/* unet.c: SnapGen's UNet denoiser: config, weights by name (weights/README.md), forward pass. */
#include "unet.h"

#include <glib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "error.h"

/* ---------------------------------------------------------------------------------------------
 * Config */

#define MAX_CHANNELS 8192
#define MAX_WIDTH 16384 /* context, embedding and pooled widths */

/* A missing field takes the full-size SnapGen value (weights/README.md), as in the recipe's
 * DEFAULT_CONFIG, so one config file means the same model to both. */
static const sg_unet_config default_config = {
    .in_channels = 16, .out_channels = 16, .num_stages = 3,
    .block_channels = {256, 512, 896}, .down_res_blocks = {2, 2, 2}, .up_res_blocks = {3, 3, 3},
    .transformer_depth = {1, 2, 4}, .self_attention = {0, 0, 1},
    .mid_transformer_depth = 4, .mid_self_attention = 1,
    .head_dim = 64, .num_kv_heads = 1, .context_dim = 1024,
    .ffn_geglu = 1, .ffn_mult = 3.0, .separable = 1, .expansion = 2.0,
    .time_proj_dim = 256, .time_embed_dim = 1024, .flip_sin_to_cos = 1, .pooled_dim = 2048,
    .norm_groups = 32, .norm_eps = 1e-5, .qk_norm = 1, .qk_norm_eps = 1e-6};

#define TRY_CFG(expr)                     \
  do {                                    \
    sg_status status_ = (expr);           \
    if (status_ != SG_OK) return status_; \
  } while (0)

/* A per-stage int array (kept at its default when absent); *count gets its length. */
static sg_status read_stage_ints(const sg_json *json, const char *field, int64_t min,
                                 int64_t max, int *values, int *count, sg_error *error) {
  if (!sg_json_has(json, field)) return SG_OK;
  int64_t read[SG_UNET_MAX_STAGES];
  int n = 0;
  TRY_CFG(sg_json_int_array(json, field, SG_UNET_MAX_STAGES, min, max, read, &n, error));
  for (int i = 0; i < n; i++) values[i] = (int)read[i];
  *count = n;
  return SG_OK;
}

static sg_status read_int(const sg_json *json, const char *field, int64_t min, int64_t max,
                          int *value, sg_error *error) {
  int64_t read = 0;
  TRY_CFG(sg_json_int(json, field, 1, *value, min, max, &read, error));
  *value = (int)read;
  return SG_OK;
}

static sg_status read_bool(const sg_json *json, const char *field, int *value,
                           sg_error *error) {
  return sg_json_bool(json, field, 1, *value, value, error);
}

static sg_status read_float(const sg_json *json, const char *field, double min, double max,
                            double *value, sg_error *error) {
  return sg_json_float(json, field, 1, *value, min, max, value, error);
}

sg_status sg_unet_config_from_json(const sg_json *json, sg_unet_config *config,
                                   sg_error *error) {
  sg_unet_config c = default_config;
  const char *path = sg_json_path(json);
  TRY_CFG(read_int(json, "in_channels", 1, 256, &c.in_channels, error));
  TRY_CFG(read_int(json, "out_channels", 1, 256, &c.out_channels, error));
  TRY_CFG(read_stage_ints(json, "block_channels", 1, MAX_CHANNELS, c.block_channels,
                          &c.num_stages, error));
  if (c.num_stages < 1)
    return sg_fail(error, SG_ERR_FORMAT, "%s: field 'block_channels' must have 1 to %d entries",
                   path, SG_UNET_MAX_STAGES);
  struct {
    const char *field;
    int *values, min, max;
  } arrays[] = {{"down_res_blocks", c.down_res_blocks, 1, 16},
                {"up_res_blocks", c.up_res_blocks, 1, 17},
                {"transformer_depth", c.transformer_depth, 0, 16},
                {"self_attention", c.self_attention, 0, 1}};
  for (size_t k = 0; k < sizeof arrays / sizeof arrays[0]; k++) {
    int n = default_config.num_stages;
    if (k == 3 && sg_json_has(json, "self_attention"))
      TRY_CFG(sg_json_bool_array(json, "self_attention", SG_UNET_MAX_STAGES, c.self_attention,
                                 &n, error));
    else if (k < 3)
      TRY_CFG(read_stage_ints(json, arrays[k].field, arrays[k].min, arrays[k].max,
                              arrays[k].values, &n, error));
    if (n != c.num_stages)
      return sg_fail(error, SG_ERR_FORMAT,
                     "%s: field '%s' has %d entries, 'block_channels' has %d (one per stage)",
                     path, arrays[k].field, n, c.num_stages);
  }
  TRY_CFG(read_int(json, "mid_transformer_depth", 0, 16, &c.mid_transformer_depth, error));
  TRY_CFG(read_bool(json, "mid_self_attention", &c.mid_self_attention, error));
  TRY_CFG(read_int(json, "head_dim", 1, 512, &c.head_dim, error));
  TRY_CFG(read_int(json, "num_kv_heads", 1, 256, &c.num_kv_heads, error));
  TRY_CFG(read_int(json, "context_dim", 1, MAX_WIDTH, &c.context_dim, error));
  char *ffn_type = NULL;
  TRY_CFG(sg_json_string(json, "ffn_type", "geglu", &ffn_type, error));
  int geglu = strcmp(ffn_type, "geglu") == 0, gelu = strcmp(ffn_type, "gelu") == 0;
  g_free(ffn_type);
  if (!geglu && !gelu)
    return sg_fail(error, SG_ERR_FORMAT, "%s: field 'ffn_type' must be \"geglu\" or \"gelu\"",
                   path);
  c.ffn_geglu = geglu;
  TRY_CFG(read_float(json, "ffn_mult", 0.01, 16.0, &c.ffn_mult, error));
  TRY_CFG(read_bool(json, "separable", &c.separable, error));
  TRY_CFG(read_float(json, "expansion", 0.01, 16.0, &c.expansion, error));
  TRY_CFG(read_int(json, "time_proj_dim", 2, MAX_WIDTH, &c.time_proj_dim, error));
  TRY_CFG(read_int(json, "time_embed_dim", 1, MAX_WIDTH, &c.time_embed_dim, error));
  TRY_CFG(read_bool(json, "flip_sin_to_cos", &c.flip_sin_to_cos, error));
  TRY_CFG(read_int(json, "pooled_dim", 0, MAX_WIDTH, &c.pooled_dim, error));
  TRY_CFG(read_int(json, "norm_groups", 1, 1024, &c.norm_groups, error));
  TRY_CFG(read_float(json, "norm_eps", 1e-12, 0.5, &c.norm_eps, error));
  TRY_CFG(read_bool(json, "qk_norm", &c.qk_norm, error));
  TRY_CFG(read_float(json, "qk_norm_eps", 1e-12, 0.5, &c.qk_norm_eps, error));
  TRY_CFG(sg_unet_config_check(&c, path, error));
  *config = c;
  return SG_OK;
}

sg_status sg_unet_config_load(const char *path, sg_unet_config *config, sg_error *error) {
  sg_json *json = NULL;
  TRY_CFG(sg_json_load(path, &json, error));
  sg_status status = sg_unet_config_from_json(json, config, error);
  sg_json_free(json);
  return status;
}

/* Widths derived from the config: a multiple (ffn_mult, expansion) of a channel count must be a
 * whole number, so C and the PyTorch recipe agree on it. */
static int scaled_width(double mult, int channels) {
  return (int)llround(mult * channels);
}

static int is_whole(double mult, int channels) {
  return fabs(mult * channels - (double)scaled_width(mult, channels)) < 1e-6;
}

/* Skips pushed by the down path: conv_in, every down residual block (+ transformer) and every
 * downsample. */
static int skip_count(const sg_unet_config *c) {
  int count = 1 + (c->num_stages - 1);
  for (int i = 0; i < c->num_stages; i++) count += c->down_res_blocks[i];
  return count;
}

/* Checks the widths of stage `stage` (its block_channels entry) against the other fields;
 * depth is the number of transformer blocks run at that width. */
static sg_status check_channels(const sg_unet_config *c, const char *source, int stage, int depth,
                                sg_error *error) {
  int channels = c->block_channels[stage];
  if (channels % c->norm_groups != 0)
    return sg_fail(error, SG_ERR_FORMAT,
                   "%s: field 'block_channels'[%d] = %d is not divisible by norm_groups %d",
                   source, stage, channels, c->norm_groups);
  int inner = scaled_width(c->expansion, channels);
  if (c->separable &&
      (!is_whole(c->expansion, channels) || inner < 1 || inner % c->norm_groups != 0))
    return sg_fail(error, SG_ERR_FORMAT,
                   "%s: field 'expansion': %g x %d channels is not a whole multiple of "
                   "norm_groups %d",
                   source, c->expansion, channels, c->norm_groups);
  if (depth == 0) return SG_OK;
  if (channels % c->head_dim != 0)
    return sg_fail(error, SG_ERR_FORMAT,
                   "%s: field 'block_channels'[%d] = %d is not divisible by head_dim %d", source,
                   stage, channels, c->head_dim);
  int heads = channels / c->head_dim;
  if (heads % c->num_kv_heads != 0)
    return sg_fail(error, SG_ERR_FORMAT,
                   "%s: field 'num_kv_heads': %d heads (of %d channels) are not divisible by %d",
                   source, heads, channels, c->num_kv_heads);
  if (!is_whole(c->ffn_mult, channels) || scaled_width(c->ffn_mult, channels) < 1)
    return sg_fail(error, SG_ERR_FORMAT,
                   "%s: field 'ffn_mult': %g x %d channels is not a whole number", source,
                   c->ffn_mult, channels);
  return SG_OK;
}

sg_status sg_unet_config_check(const sg_unet_config *c, const char *source, sg_error *error) {
  if (!source) source = "UNet config";
  if (c->num_stages < 1 || c->num_stages > SG_UNET_MAX_STAGES)
    return sg_fail(error, SG_ERR_FORMAT, "%s: %d stages (field 'block_channels'); 1 to %d allowed",
                   source, c->num_stages, SG_UNET_MAX_STAGES);
  struct {
    const char *field;
    int value, min, max;
  } widths[] = {{"in_channels", c->in_channels, 1, 256},
                {"out_channels", c->out_channels, 1, 256},
                {"head_dim", c->head_dim, 1, 512},
                {"num_kv_heads", c->num_kv_heads, 1, 256},
                {"context_dim", c->context_dim, 1, MAX_WIDTH},
                {"time_embed_dim", c->time_embed_dim, 1, MAX_WIDTH},
                {"pooled_dim", c->pooled_dim, 0, MAX_WIDTH},
                {"norm_groups", c->norm_groups, 1, 1024}};
  for (size_t k = 0; k < sizeof widths / sizeof widths[0]; k++)
    if (widths[k].value < widths[k].min || widths[k].value > widths[k].max)
      return sg_fail(error, SG_ERR_FORMAT, "%s: field '%s' = %d is not %d..%d", source,
                     widths[k].field, widths[k].value, widths[k].min, widths[k].max);
  if (c->time_proj_dim < 2 || c->time_proj_dim > MAX_WIDTH || c->time_proj_dim % 2 != 0)
    return sg_fail(error, SG_ERR_FORMAT, "%s: field 'time_proj_dim' must be even, 2..%d", source,
                   MAX_WIDTH);
  if (!(c->norm_eps > 0 && c->norm_eps < 1) || !(c->qk_norm_eps > 0 && c->qk_norm_eps < 1))
    return sg_fail(error, SG_ERR_FORMAT, "%s: fields 'norm_eps'/'qk_norm_eps' must be in (0, 1)",
                   source);
  if (!(c->ffn_mult > 0 && c->ffn_mult <= 16) || !(c->expansion > 0 && c->expansion <= 16))
    return sg_fail(error, SG_ERR_FORMAT, "%s: fields 'ffn_mult'/'expansion' must be in (0, 16]",
                   source);
  if (c->mid_transformer_depth < 0 || c->mid_transformer_depth > 16)
    return sg_fail(error, SG_ERR_FORMAT, "%s: field 'mid_transformer_depth' must be 0..16",
                   source);
  for (int i = 0; i < c->num_stages; i++) {
    if (c->block_channels[i] < 1 || c->block_channels[i] > MAX_CHANNELS)
      return sg_fail(error, SG_ERR_FORMAT, "%s: field 'block_channels'[%d] = %d is not 1..%d",
                     source, i, c->block_channels[i], MAX_CHANNELS);
    if (c->down_res_blocks[i] < 1 || c->down_res_blocks[i] > 16)
      return sg_fail(error, SG_ERR_FORMAT, "%s: field 'down_res_blocks'[%d] must be 1..16", source,
                     i);
    if (c->up_res_blocks[i] < 1 || c->up_res_blocks[i] > 17)
      return sg_fail(error, SG_ERR_FORMAT, "%s: field 'up_res_blocks'[%d] must be 1..17", source,
                     i);
    if (c->transformer_depth[i] < 0 || c->transformer_depth[i] > 16)
      return sg_fail(error, SG_ERR_FORMAT, "%s: field 'transformer_depth'[%d] must be 0..16",
                     source, i);
    TRY_CFG(check_channels(c, source, i, c->transformer_depth[i], error));
  }
  TRY_CFG(check_channels(c, source, c->num_stages - 1, c->mid_transformer_depth, error));
  int pops = 0;
  for (int i = 0; i < c->num_stages; i++) pops += c->up_res_blocks[i];
  if (pops != skip_count(c))
    return sg_fail(error, SG_ERR_FORMAT,
                   "%s: field 'up_res_blocks' pops %d skips but the down path pushes %d "
                   "(1 + sum(down_res_blocks) + stages - 1)",
                   source, pops, skip_count(c));
  return SG_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Model structure: one struct per module, holding its weight tensors. */

typedef struct {
  char name[48];
  int in_channels, out_channels, inner; /* inner: expansion × out (separable) or out (dense) */
  int has_shortcut;
  sg_tensor norm1_w, norm1_b;
  sg_tensor dw1, pw1_w, pw1_b; /* separable */
  sg_tensor conv1_w, conv1_b;  /* dense */
  sg_tensor time_w, time_b;
  sg_tensor norm2_w, norm2_b;
  sg_tensor dw2, pw2_w, pw2_b; /* separable */
  sg_tensor conv2_w, conv2_b;  /* dense */
  sg_tensor shortcut_w, shortcut_b;
} res_block;

typedef struct {
  sg_tensor to_q, to_k, to_v, to_out_w, to_out_b;
  sg_tensor norm_q, norm_k; /* when qk_norm */
} attention;

typedef struct {
  int has_self_attention;
  sg_tensor norm1_w, norm1_b;
  attention self_attn;
  sg_tensor norm2_w, norm2_b;
  attention cross_attn;
  sg_tensor norm3_w, norm3_b;
  sg_tensor ff_in_w, ff_in_b, ff_out_w, ff_out_b;
  int cross_index; /* its place among the UNet's cross-attentions (sg_unet_context_kv) */
} transformer_block;

typedef struct {
  char name[48];
  int channels, depth, ffn_inner;
  sg_tensor norm_w, norm_b, proj_in_w, proj_in_b, proj_out_w, proj_out_b;
  transformer_block *blocks;
} transformer;

typedef struct {
  int channels, num_blocks;
  res_block *res;    /* num_blocks */
  transformer *attn; /* num_blocks, or NULL when the stage has no transformers */
  int has_resample;  /* downsample (down stages) or upsample (up stages) */
  sg_tensor resample_w, resample_b;
} stage;

struct sg_unet {
  sg_unet_config config;
  sg_tensor conv_in_w, conv_in_b;
  sg_tensor time1_w, time1_b, time2_w, time2_b;
  sg_tensor pooled1_w, pooled1_b, pooled2_w, pooled2_b;
  stage down[SG_UNET_MAX_STAGES];
  res_block mid_res[2];
  transformer mid_attn;
  int has_mid_attn;
  stage up[SG_UNET_MAX_STAGES]; /* up[i] runs at the resolution of down stage num_stages-1-i */
  sg_tensor norm_out_w, norm_out_b, conv_out_w, conv_out_b;
  int cross_count;           /* transformer blocks, i.e. cross-attentions */
  const attention **cross;   /* [cross_count], in forward order */
};

/* The keys and values of every cross-attention for one context (after the QK norm). */
struct sg_unet_context_kv {
  int count;
  sg_tensor *kv; /* [2 * count]: k, v of each, [tokens, kv_heads * head_dim] */
  float *data;
};

/* ---------------------------------------------------------------------------------------------
 * Loading. One walk over the structure serves both sg_unet_load (fetching each tensor) and
 * sg_unet_parameter_count (weights NULL: only counting), so the two always agree. */

typedef struct {
  sg_weights *weights; /* NULL: count only */
  int64_t count;
  char prefix[64];
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
  char full[160];
  snprintf(full, sizeof full, "%s%s", ld->prefix, name);
  if (ndim == 2) /* every matrix is a linear layer's weight: int8 if the weights store them so */
    return sg_weights_get_linear(ld->weights, full, d0, d1, dst, ld->error);
  return sg_weights_get(ld->weights, full, ndim, dims, dst, ld->error);
}

#define TRY(expr)                  \
  do {                             \
    status = (expr);               \
    if (status != SG_OK) goto done; \
  } while (0)

#define VEC(dst, name, n) fetch(ld, dst, name, 1, n, 0, 0, 0)
#define MAT(dst, name, o, i) fetch(ld, dst, name, 2, o, i, 0, 0)
#define CONV(dst, name, o, i, k) fetch(ld, dst, name, 4, o, i, k, k)

static void set_prefix(loader *ld, const char *format, int a, int b) {
  snprintf(ld->prefix, sizeof ld->prefix, format, a, b);
}

static sg_status load_res_block(loader *ld, const sg_unet_config *c, res_block *rb, int in,
                                int out) {
  sg_status status = SG_OK;
  snprintf(rb->name, sizeof rb->name, "%.*s", (int)strlen(ld->prefix) - 1, ld->prefix);
  rb->in_channels = in;
  rb->out_channels = out;
  rb->inner = c->separable ? scaled_width(c->expansion, out) : out;
  rb->has_shortcut = in != out;
  int h = rb->inner, e = c->time_embed_dim;
  TRY(VEC(&rb->norm1_w, "norm1.weight", in));
  TRY(VEC(&rb->norm1_b, "norm1.bias", in));
  if (c->separable) {
    TRY(CONV(&rb->dw1, "dw1.weight", in, 1, 3));
    TRY(CONV(&rb->pw1_w, "pw1.weight", h, in, 1));
    TRY(VEC(&rb->pw1_b, "pw1.bias", h));
  } else {
    TRY(CONV(&rb->conv1_w, "conv1.weight", out, in, 3));
    TRY(VEC(&rb->conv1_b, "conv1.bias", out));
  }
  TRY(MAT(&rb->time_w, "time_proj.weight", h, e));
  TRY(VEC(&rb->time_b, "time_proj.bias", h));
  TRY(VEC(&rb->norm2_w, "norm2.weight", h));
  TRY(VEC(&rb->norm2_b, "norm2.bias", h));
  if (c->separable) {
    TRY(CONV(&rb->dw2, "dw2.weight", h, 1, 3));
    TRY(CONV(&rb->pw2_w, "pw2.weight", out, h, 1));
    TRY(VEC(&rb->pw2_b, "pw2.bias", out));
  } else {
    TRY(CONV(&rb->conv2_w, "conv2.weight", out, out, 3));
    TRY(VEC(&rb->conv2_b, "conv2.bias", out));
  }
  if (rb->has_shortcut) {
    TRY(CONV(&rb->shortcut_w, "shortcut.weight", out, in, 1));
    TRY(VEC(&rb->shortcut_b, "shortcut.bias", out));
  }
done:
  return status;
}

static sg_status load_attention(loader *ld, const sg_unet_config *c, attention *at, int channels,
                                int source_dim, const char *prefix) {
  sg_status status = SG_OK;
  char name[96];
  int kv = c->num_kv_heads * c->head_dim;
#define ATT_NAME(suffix) (snprintf(name, sizeof name, "%s.%s", prefix, suffix), name)
  TRY(MAT(&at->to_q, ATT_NAME("to_q.weight"), channels, channels));
  TRY(MAT(&at->to_k, ATT_NAME("to_k.weight"), kv, source_dim));
  TRY(MAT(&at->to_v, ATT_NAME("to_v.weight"), kv, source_dim));
  TRY(MAT(&at->to_out_w, ATT_NAME("to_out.weight"), channels, channels));
  TRY(VEC(&at->to_out_b, ATT_NAME("to_out.bias"), channels));
  if (c->qk_norm) {
    TRY(VEC(&at->norm_q, ATT_NAME("norm_q.weight"), c->head_dim));
    TRY(VEC(&at->norm_k, ATT_NAME("norm_k.weight"), c->head_dim));
  }
#undef ATT_NAME
done:
  return status;
}

static sg_status load_transformer(loader *ld, const sg_unet_config *c, transformer *tf,
                                  int channels, int depth, int self_attention) {
  sg_status status = SG_OK;
  snprintf(tf->name, sizeof tf->name, "%.*s", (int)strlen(ld->prefix) - 1, ld->prefix);
  tf->channels = channels;
  tf->depth = depth;
  tf->ffn_inner = scaled_width(c->ffn_mult, channels);
  tf->blocks = g_new0(transformer_block, depth);
  int C = channels, I = tf->ffn_inner;
  TRY(VEC(&tf->norm_w, "norm.weight", C));
  TRY(VEC(&tf->norm_b, "norm.bias", C));
  TRY(MAT(&tf->proj_in_w, "proj_in.weight", C, C));
  TRY(VEC(&tf->proj_in_b, "proj_in.bias", C));
  for (int k = 0; k < depth; k++) {
    transformer_block *b = &tf->blocks[k];
    char name[96];
    b->has_self_attention = self_attention;
#define BLOCK_NAME(suffix) (snprintf(name, sizeof name, "blocks.%d.%s", k, suffix), name)
    if (self_attention) {
      TRY(VEC(&b->norm1_w, BLOCK_NAME("norm1.weight"), C));
      TRY(VEC(&b->norm1_b, BLOCK_NAME("norm1.bias"), C));
      TRY(load_attention(ld, c, &b->self_attn, C, C, BLOCK_NAME("attn1")));
    }
    TRY(VEC(&b->norm2_w, BLOCK_NAME("norm2.weight"), C));
    TRY(VEC(&b->norm2_b, BLOCK_NAME("norm2.bias"), C));
    TRY(load_attention(ld, c, &b->cross_attn, C, c->context_dim, BLOCK_NAME("attn2")));
    TRY(VEC(&b->norm3_w, BLOCK_NAME("norm3.weight"), C));
    TRY(VEC(&b->norm3_b, BLOCK_NAME("norm3.bias"), C));
    int ff_width = c->ffn_geglu ? 2 * I : I;
    TRY(MAT(&b->ff_in_w, BLOCK_NAME("ff.proj_in.weight"), ff_width, C));
    TRY(VEC(&b->ff_in_b, BLOCK_NAME("ff.proj_in.bias"), ff_width));
    TRY(MAT(&b->ff_out_w, BLOCK_NAME("ff.proj_out.weight"), C, I));
    TRY(VEC(&b->ff_out_b, BLOCK_NAME("ff.proj_out.bias"), C));
#undef BLOCK_NAME
  }
  TRY(MAT(&tf->proj_out_w, "proj_out.weight", C, C));
  TRY(VEC(&tf->proj_out_b, "proj_out.bias", C));
done:
  return status;
}

static void free_stage(stage *s) {
  if (s->attn)
    for (int j = 0; j < s->num_blocks; j++) g_free(s->attn[j].blocks);
  g_free(s->attn);
  g_free(s->res);
}

void sg_unet_free(sg_unet *unet) {
  if (!unet) return;
  for (int i = 0; i < SG_UNET_MAX_STAGES; i++) {
    free_stage(&unet->down[i]);
    free_stage(&unet->up[i]);
  }
  g_free(unet->mid_attn.blocks);
  g_free(unet->cross);
  g_free(unet);
}

/* Numbers the transformer blocks in forward order and lists their cross-attentions. */
static void add_cross(sg_unet *u, transformer *tf) {
  for (int k = 0; k < tf->depth; k++) {
    tf->blocks[k].cross_index = u->cross_count;
    u->cross[u->cross_count++] = &tf->blocks[k].cross_attn;
  }
}

static void list_cross_attentions(sg_unet *u) {
  const int S = u->config.num_stages;
  int total = u->has_mid_attn ? u->mid_attn.depth : 0;
  for (int pass = 0; pass < 2; pass++) {
    for (int i = 0; i < S; i++)
      for (int updown = 0; updown < 2; updown++) {
        const stage *st = updown ? &u->up[i] : &u->down[i];
        for (int j = 0; st->attn && j < st->num_blocks; j++) total += pass ? 0 : st->attn[j].depth;
      }
    if (pass == 0) {
      u->cross = g_new0(const attention *, total > 0 ? total : 1);
      continue;
    }
    for (int i = 0; i < S; i++)
      for (int j = 0; u->down[i].attn && j < u->down[i].num_blocks; j++)
        add_cross(u, &u->down[i].attn[j]);
    if (u->has_mid_attn) add_cross(u, &u->mid_attn);
    for (int i = 0; i < S; i++)
      for (int j = 0; u->up[i].attn && j < u->up[i].num_blocks; j++)
        add_cross(u, &u->up[i].attn[j]);
  }
}

/* Walks the whole UNet in the order of weights/README.md. */
static sg_status load_all(loader *ld, sg_unet *u) {
  const sg_unet_config *c = &u->config;
  sg_status status = SG_OK;
  int S = c->num_stages, C0 = c->block_channels[0], E = c->time_embed_dim;
  int skip_channels[1 + 16 * SG_UNET_MAX_STAGES + SG_UNET_MAX_STAGES];
  int skips = 0;

  set_prefix(ld, "", 0, 0);
  TRY(CONV(&u->conv_in_w, "conv_in.weight", C0, c->in_channels, 3));
  TRY(VEC(&u->conv_in_b, "conv_in.bias", C0));
  TRY(MAT(&u->time1_w, "time_embed.linear_1.weight", E, c->time_proj_dim));
  TRY(VEC(&u->time1_b, "time_embed.linear_1.bias", E));
  TRY(MAT(&u->time2_w, "time_embed.linear_2.weight", E, E));
  TRY(VEC(&u->time2_b, "time_embed.linear_2.bias", E));
  if (c->pooled_dim > 0) {
    TRY(MAT(&u->pooled1_w, "pooled_embed.linear_1.weight", E, c->pooled_dim));
    TRY(VEC(&u->pooled1_b, "pooled_embed.linear_1.bias", E));
    TRY(MAT(&u->pooled2_w, "pooled_embed.linear_2.weight", E, E));
    TRY(VEC(&u->pooled2_b, "pooled_embed.linear_2.bias", E));
  }
  skip_channels[skips++] = C0;

  int channels = C0;
  for (int i = 0; i < S; i++) {
    stage *st = &u->down[i];
    int C = c->block_channels[i];
    st->channels = C;
    st->num_blocks = c->down_res_blocks[i];
    st->res = g_new0(res_block, st->num_blocks);
    if (c->transformer_depth[i] > 0) st->attn = g_new0(transformer, st->num_blocks);
    for (int j = 0; j < st->num_blocks; j++) {
      set_prefix(ld, "down.%d.res.%d.", i, j);
      TRY(load_res_block(ld, c, &st->res[j], channels, C));
      channels = C;
      if (st->attn) {
        set_prefix(ld, "down.%d.attn.%d.", i, j);
        TRY(load_transformer(ld, c, &st->attn[j], C, c->transformer_depth[i],
                             c->self_attention[i]));
      }
      skip_channels[skips++] = C;
    }
    st->has_resample = i < S - 1;
    if (st->has_resample) {
      set_prefix(ld, "down.%d.", i, 0);
      TRY(CONV(&st->resample_w, "downsample.weight", C, C, 3));
      TRY(VEC(&st->resample_b, "downsample.bias", C));
      skip_channels[skips++] = C;
    }
  }

  set_prefix(ld, "mid.res.%d.", 0, 0);
  TRY(load_res_block(ld, c, &u->mid_res[0], channels, channels));
  u->has_mid_attn = c->mid_transformer_depth > 0;
  if (u->has_mid_attn) {
    set_prefix(ld, "mid.attn.%d.", 0, 0);
    TRY(load_transformer(ld, c, &u->mid_attn, channels, c->mid_transformer_depth,
                         c->mid_self_attention));
  }
  set_prefix(ld, "mid.res.%d.", 1, 0);
  TRY(load_res_block(ld, c, &u->mid_res[1], channels, channels));

  for (int i = 0; i < S; i++) {
    int s = S - 1 - i; /* the resolution level (index into the per-stage config arrays) */
    stage *st = &u->up[i];
    int C = c->block_channels[s];
    st->channels = C;
    st->num_blocks = c->up_res_blocks[s];
    st->res = g_new0(res_block, st->num_blocks);
    if (c->transformer_depth[s] > 0) st->attn = g_new0(transformer, st->num_blocks);
    for (int j = 0; j < st->num_blocks; j++) {
      int skip = skip_channels[--skips];
      set_prefix(ld, "up.%d.res.%d.", i, j);
      TRY(load_res_block(ld, c, &st->res[j], channels + skip, C));
      channels = C;
      if (st->attn) {
        set_prefix(ld, "up.%d.attn.%d.", i, j);
        TRY(load_transformer(ld, c, &st->attn[j], C, c->transformer_depth[s],
                             c->self_attention[s]));
      }
    }
    st->has_resample = i < S - 1;
    if (st->has_resample) {
      set_prefix(ld, "up.%d.", i, 0);
      TRY(CONV(&st->resample_w, "upsample.weight", C, C, 3));
      TRY(VEC(&st->resample_b, "upsample.bias", C));
    }
  }

  set_prefix(ld, "", 0, 0);
  TRY(VEC(&u->norm_out_w, "norm_out.weight", C0));
  TRY(VEC(&u->norm_out_b, "norm_out.bias", C0));
  TRY(CONV(&u->conv_out_w, "conv_out.weight", c->out_channels, C0, 3));
  TRY(VEC(&u->conv_out_b, "conv_out.bias", c->out_channels));
done:
  return status;
}

int64_t sg_unet_parameter_count(const sg_unet_config *config) {
  if (sg_unet_config_check(config, NULL, NULL) != SG_OK) return -1;
  sg_unet *u = g_new0(sg_unet, 1);
  u->config = *config;
  loader ld = {.weights = NULL, .count = 0, .error = NULL};
  load_all(&ld, u);
  sg_unet_free(u);
  return ld.count;
}

sg_status sg_unet_weights_open(const char *folder, int bf16_compute, int int8_linears,
                               sg_weights **out, sg_error *error) {
  /* The full-size UNet's packed bf16 copies were 731 MiB of anonymous memory and took about 3 s
   * to make at the first step; reading bf16 weights in place costs 10-17% per product. */
  SG_TRY(sg_weights_open_folder_variant(folder, bf16_compute ? "bf16" : NULL, out, error));
  sg_weights_hand_off_to_backend(*out);
  if (int8_linears) sg_weights_store_linears_int8(*out);
  if (bf16_compute) sg_weights_keep_bf16_linears(*out);
  return SG_OK;
}

sg_status sg_unet_load(const sg_unet_config *config, sg_weights *weights, sg_unet **out,
                       sg_error *error) {
  *out = NULL;
  sg_status status = sg_unet_config_check(config, NULL, error);
  if (status != SG_OK) return status;
  sg_unet *u = g_new0(sg_unet, 1);
  u->config = *config;
  loader ld = {.weights = weights, .count = 0, .error = error};
  status = load_all(&ld, u);
  if (status != SG_OK) {
    sg_unet_free(u);
    return status;
  }
  list_cross_attentions(u);
  *out = u;
  return SG_OK;
}

/* ---------------------------------------------------------------------------------------------
 * FLOPs (2 × multiply-accumulates of convolutions, linear layers and attention products). */

static double res_flops(const sg_unet_config *c, int in, int out, double hw) {
  double f;
  if (c->separable) {
    double h = scaled_width(c->expansion, out);
    f = 2.0 * hw * (in * 9.0 + h * in + h * 9.0 + out * h);
    f += 2.0 * h * c->time_embed_dim;
  } else {
    f = 2.0 * hw * 9.0 * ((double)out * in + (double)out * out);
    f += 2.0 * (double)out * c->time_embed_dim;
  }
  if (in != out) f += 2.0 * hw * out * in;
  return f;
}

static double transformer_flops(const sg_unet_config *c, int C, int depth, int self_attention,
                                double T, int S) {
  if (depth == 0) return 0; /* no transformer there */
  double kv = (double)c->num_kv_heads * c->head_dim;
  double I = scaled_width(c->ffn_mult, C);
  double f = 2.0 * 2.0 * T * C * C; /* proj_in, proj_out */
  for (int k = 0; k < depth; k++) {
    if (self_attention) f += 2.0 * (2.0 * T * C * C + 2.0 * T * C * kv + 2.0 * T * T * C);
    f += 2.0 * (2.0 * T * C * C + 2.0 * S * c->context_dim * kv + 2.0 * T * S * C);
    f += 2.0 * T * C * I * (c->ffn_geglu ? 3.0 : 2.0);
  }
  return f;
}

double sg_unet_flops(const sg_unet_config *c, int h, int w, int ctx_tokens) {
  if (sg_unet_config_check(c, NULL, NULL) != SG_OK) return 0;
  int S = c->num_stages, C0 = c->block_channels[0];
  int skip_channels[1 + 16 * SG_UNET_MAX_STAGES + SG_UNET_MAX_STAGES];
  int skips = 0;
  double hw = (double)h * w, E = c->time_embed_dim;
  double f = 2.0 * hw * C0 * c->in_channels * 9.0;
  f += 2.0 * E * (c->time_proj_dim + E) + (c->pooled_dim > 0 ? 2.0 * E * (c->pooled_dim + E) : 0);
  skip_channels[skips++] = C0;
  int channels = C0;
  for (int i = 0; i < S; i++) {
    int C = c->block_channels[i];
    double area = hw / (double)(1 << (2 * i));
    for (int j = 0; j < c->down_res_blocks[i]; j++) {
      f += res_flops(c, channels, C, area);
      channels = C;
      f += transformer_flops(c, C, c->transformer_depth[i], c->self_attention[i], area,
                             ctx_tokens);
      skip_channels[skips++] = C;
    }
    if (i < S - 1) {
      f += 2.0 * (area / 4) * C * C * 9.0;
      skip_channels[skips++] = C;
    }
  }
  double area = hw / (double)(1 << (2 * (S - 1)));
  f += 2 * res_flops(c, channels, channels, area);
  f += transformer_flops(c, channels, c->mid_transformer_depth, c->mid_self_attention, area,
                         ctx_tokens);
  for (int i = 0; i < S; i++) {
    int s = S - 1 - i, C = c->block_channels[s];
    area = hw / (double)(1 << (2 * s));
    for (int j = 0; j < c->up_res_blocks[s]; j++) {
      f += res_flops(c, channels + skip_channels[--skips], C, area);
      channels = C;
      f += transformer_flops(c, C, c->transformer_depth[s], c->self_attention[s], area,
                             ctx_tokens);
    }
    if (s > 0) f += 2.0 * (area * 4) * C * C * 9.0;
  }
  f += 2.0 * hw * c->out_channels * C0 * 9.0;
  return f;
}

/* ---------------------------------------------------------------------------------------------
 * Forward */

static sg_status new2(sg_arena *arena, int64_t d0, int64_t d1, sg_tensor *t, sg_error *error) {
  int64_t dims[2] = {d0, d1};
  return sg_arena_tensor(arena, 2, dims, t, error);
}

static sg_status new3(sg_arena *arena, int64_t d0, int64_t d1, int64_t d2, sg_tensor *t,
                      sg_error *error) {
  int64_t dims[3] = {d0, d1, d2};
  return sg_arena_tensor(arena, 3, dims, t, error);
}

/* An image [C,H,W] in the given layout (plain or channels-last). */
static sg_status new_image(sg_arena *arena, int64_t C, int64_t H, int64_t W, sg_format layout,
                           sg_tensor *t, sg_error *error) {
  sg_status status = new3(arena, C, H, W, t, error);
  t->format = layout;
  return status;
}

/* An image view over data in the given layout. */
static sg_tensor image_view(float *data, int64_t C, int64_t H, int64_t W, sg_format layout) {
  sg_tensor t = sg_tensor_3d(data, C, H, W);
  t.format = layout;
  return t;
}

/* The layout of the activations between the input and output convolutions: the one the backend's
 * convolutions work in, so that they need no reorders. */
static sg_format activation_layout(sg_backend *be) {
  return sg_backend_prefers_channels_last(be) ? SG_FORMAT_NHWC : SG_FORMAT_PLAIN;
}

/* A reshaped header over the same f32 data. */
static sg_tensor as2(const sg_tensor *t, int64_t d0, int64_t d1) {
  return sg_tensor_2d((float *)t->data, d0, d1);
}

/* out = ResBlock(x, SiLU(temb)); temb_silu [1, E]. x and out share a layout (plain or
 * channels-last), which the temporaries take too. */
static sg_status res_forward(const res_block *rb, const sg_unet_config *c, sg_backend *be,
                             sg_arena *arena, const sg_tensor *x, const sg_tensor *temb_silu,
                             sg_tensor *out, sg_error *error) {
  size_t mark = sg_arena_mark(arena);
  sg_status status = SG_OK;
  int64_t H = x->dims[1], W = x->dims[2];
  int groups = c->norm_groups;
  float eps = (float)c->norm_eps;
  sg_tensor a, b, h, proj, bias;
  /* The time embedding is a per-channel constant: added to the first conv's bias, not to h. */
  TRY(new2(arena, 1, rb->inner, &proj, error));
  TRY(sg_linear(be, temb_silu, &rb->time_w, &rb->time_b, SG_ACT_NONE, &proj, error));
  bias = sg_tensor_1d((float *)proj.data, rb->inner);
  TRY(sg_binary(be, SG_BINARY_ADD, &bias, c->separable ? &rb->pw1_b : &rb->conv1_b, &bias,
                error));
  const sg_format layout = x->format;
  TRY(new_image(arena, rb->in_channels, H, W, layout, &a, error));
  TRY(sg_group_norm(be, x, groups, &rb->norm1_w, &rb->norm1_b, eps, SG_ACT_SILU, &a, error));
  TRY(new_image(arena, rb->inner, H, W, layout, &h, error));
  if (c->separable) {
    /* The depthwise outputs are stored channels-last, the layout both convolutions work in, so
     * the pair needs no reorder between them. */
    TRY(new3(arena, rb->in_channels, H, W, &b, error));
    b.format = SG_FORMAT_NHWC;
    TRY(sg_conv2d(be, &a, &rb->dw1, NULL, 1, 1, rb->in_channels, SG_ACT_NONE, &b, error));
    TRY(sg_conv2d(be, &b, &rb->pw1_w, &bias, 1, 0, 1, SG_ACT_NONE, &h, error));
  } else {
    TRY(sg_conv2d(be, &a, &rb->conv1_w, &bias, 1, 1, 1, SG_ACT_NONE, &h, error));
  }
  TRY(sg_group_norm(be, &h, groups, &rb->norm2_w, &rb->norm2_b, eps, SG_ACT_SILU, &h, error));
  /* The residual (x, or its 1x1 projection) is added by the last conv. */
  const sg_tensor *residual = x;
  sg_tensor shortcut;
  if (rb->has_shortcut) {
    TRY(new_image(arena, rb->out_channels, H, W, layout, &shortcut, error));
    TRY(sg_conv2d(be, x, &rb->shortcut_w, &rb->shortcut_b, 1, 0, 1, SG_ACT_NONE, &shortcut,
                  error));
    residual = &shortcut;
  }
  if (c->separable) {
    TRY(new3(arena, rb->inner, H, W, &b, error));
    b.format = SG_FORMAT_NHWC;
    TRY(sg_conv2d(be, &h, &rb->dw2, NULL, 1, 1, rb->inner, SG_ACT_NONE, &b, error));
    TRY(sg_conv2d_residual(be, &b, &rb->pw2_w, &rb->pw2_b, 1, 0, 1, SG_ACT_NONE, residual, out,
                           error));
  } else {
    TRY(sg_conv2d_residual(be, &h, &rb->conv2_w, &rb->conv2_b, 1, 1, 1, SG_ACT_NONE, residual,
                           out, error));
  }
done:
  sg_arena_reset(arena, mark);
  return status;
}

/* k, v [S, kv_heads * head_dim] = source [S, Cs] projected, k after the QK norm. */
static sg_status keys_values(const attention *at, const sg_unet_config *c, sg_backend *be,
                             const sg_tensor *source, sg_tensor *k, sg_tensor *v,
                             sg_error *error) {
  sg_status status = SG_OK;
  TRY(sg_linear(be, source, &at->to_k, NULL, SG_ACT_NONE, k, error));
  TRY(sg_linear(be, source, &at->to_v, NULL, SG_ACT_NONE, v, error));
  if (c->qk_norm) {
    sg_tensor k_heads = as2(k, k->dims[0] * c->num_kv_heads, c->head_dim);
    TRY(sg_rms_norm(be, &k_heads, &at->norm_k, (float)c->qk_norm_eps, 0.0f, &k_heads, error));
  }
done:
  return status;
}

/* y [T, C] += Attention(x [T, C] -> q; source [S, Cs] -> k, v): the output projection adds
 * into y (the block's residual stream). kv: that k and v made already (NULL: made here). */
static sg_status attention_forward(const attention *at, const sg_unet_config *c, int channels,
                                   sg_backend *be, sg_arena *arena, const sg_tensor *x,
                                   const sg_tensor *source, const sg_tensor *kv,
                                   const float *key_mask, sg_tensor *y, sg_error *error) {
  size_t mark = sg_arena_mark(arena);
  sg_status status = SG_OK;
  int64_t T = x->dims[0];
  int d = c->head_dim, heads = channels / d, kv_heads = c->num_kv_heads;
  sg_tensor q, k, v, o;
  TRY(new2(arena, T, channels, &q, error));
  TRY(new2(arena, T, channels, &o, error));
  TRY(sg_linear(be, x, &at->to_q, NULL, SG_ACT_NONE, &q, error));
  if (kv) {
    k = kv[0];
    v = kv[1];
  } else {
    TRY(new2(arena, source->dims[0], (int64_t)kv_heads * d, &k, error));
    TRY(new2(arena, source->dims[0], (int64_t)kv_heads * d, &v, error));
    TRY(keys_values(at, c, be, source, &k, &v, error));
  }
  if (c->qk_norm) {
    sg_tensor q_heads = as2(&q, T * heads, d);
    TRY(sg_rms_norm(be, &q_heads, &at->norm_q, (float)c->qk_norm_eps, 0.0f, &q_heads, error));
  }
  sg_attention_params params = {.heads = heads,
                                .kv_heads = kv_heads,
                                .head_dim = d,
                                .scale = (float)(1.0 / sqrt((double)d)),
                                .softcap = 0.0f,
                                .causal = 0,
                                .window = 0,
                                .key_mask = key_mask};
  TRY(sg_attention(be, &q, &k, &v, &params, &o, error));
  TRY(sg_linear_residual(be, &o, &at->to_out_w, &at->to_out_b, SG_ACT_NONE, y, y, error));
done:
  sg_arena_reset(arena, mark);
  return status;
}

/* h [T, C] += Block(h) in place. */
static sg_status block_forward(const transformer_block *b, const transformer *tf,
                               const sg_unet_config *c, sg_backend *be, sg_arena *arena,
                               sg_tensor *h, const sg_tensor *context,
                               const sg_unet_context_kv *kv, const float *mask,
                               sg_error *error) {
  size_t mark = sg_arena_mark(arena);
  sg_status status = SG_OK;
  int64_t T = h->dims[0], C = tf->channels, I = tf->ffn_inner;
  float eps = (float)c->norm_eps;
  sg_tensor normed, inner, gated;
  TRY(new2(arena, T, C, &normed, error));
  if (b->has_self_attention) {
    TRY(sg_layer_norm(be, h, &b->norm1_w, &b->norm1_b, eps, &normed, error));
    TRY(attention_forward(&b->self_attn, c, (int)C, be, arena, &normed, &normed, NULL, NULL, h,
                          error));
  }
  TRY(sg_layer_norm(be, h, &b->norm2_w, &b->norm2_b, eps, &normed, error));
  TRY(attention_forward(&b->cross_attn, c, (int)C, be, arena, &normed, context,
                        kv ? &kv->kv[2 * b->cross_index] : NULL, mask, h, error));
  TRY(sg_layer_norm(be, h, &b->norm3_w, &b->norm3_b, eps, &normed, error));
  if (c->ffn_geglu) {
    TRY(new2(arena, T, 2 * I, &inner, error));
    TRY(new2(arena, T, I, &gated, error));
    TRY(sg_linear(be, &normed, &b->ff_in_w, &b->ff_in_b, SG_ACT_NONE, &inner, error));
    TRY(sg_gated(be, &inner, SG_ACT_GELU_ERF, &gated, error));
  } else {
    TRY(new2(arena, T, I, &gated, error));
    TRY(sg_linear(be, &normed, &b->ff_in_w, &b->ff_in_b, SG_ACT_GELU_ERF, &gated, error));
  }
  TRY(sg_linear_residual(be, &gated, &b->ff_out_w, &b->ff_out_b, SG_ACT_NONE, h, h, error));
done:
  sg_arena_reset(arena, mark);
  return status;
}

/* out [C, H, W] = x + Transformer(x); out may be x, and has x's layout. The cross-attentions take
 * their keys and values from kv, or (kv NULL) make them from context. A channels-last image is
 * already the tokens [H*W, C]; a plain one is transposed into them and back. */
static sg_status transformer_forward(const transformer *tf, const sg_unet_config *c,
                                     sg_backend *be, sg_arena *arena, const sg_tensor *x,
                                     const sg_tensor *context, const sg_unet_context_kv *kv,
                                     const float *mask, sg_tensor *out,
                                     sg_error *error) {
  size_t mark = sg_arena_mark(arena);
  sg_status status = SG_OK;
  int64_t C = tf->channels, H = x->dims[1], W = x->dims[2], T = H * W;
  const int channels_last = x->format == SG_FORMAT_NHWC;
  sg_tensor normed, tokens, h;
  TRY(new_image(arena, C, H, W, x->format, &normed, error));
  TRY(new2(arena, T, C, &h, error));
  TRY(sg_group_norm(be, x, c->norm_groups, &tf->norm_w, &tf->norm_b, (float)c->norm_eps,
                    SG_ACT_NONE, &normed, error));
  if (channels_last) {
    tokens = as2(&normed, T, C);
  } else {
    TRY(new2(arena, T, C, &tokens, error));
    sg_tensor image = as2(&normed, C, T);
    TRY(sg_transpose(be, &image, &tokens, error));
  }
  TRY(sg_linear(be, &tokens, &tf->proj_in_w, &tf->proj_in_b, SG_ACT_NONE, &h, error));
  for (int k = 0; k < tf->depth; k++)
    TRY(block_forward(&tf->blocks[k], tf, c, be, arena, &h, context, kv, mask, error));
  if (channels_last) {
    /* The projection adds the residual x as it writes out. */
    sg_tensor x_tokens = as2(x, T, C), out_tokens = as2(out, T, C);
    TRY(sg_linear_residual(be, &h, &tf->proj_out_w, &tf->proj_out_b, SG_ACT_NONE, &x_tokens,
                           &out_tokens, error));
  } else {
    TRY(sg_linear(be, &h, &tf->proj_out_w, &tf->proj_out_b, SG_ACT_NONE, &tokens, error));
    sg_tensor image = as2(&normed, C, T);
    TRY(sg_transpose(be, &tokens, &image, error));
    TRY(sg_binary(be, SG_BINARY_ADD, x, &normed, out, error));
  }
done:
  sg_arena_reset(arena, mark);
  return status;
}

/* temb_silu [1, E] = SiLU(time_embed(sinusoid(timestep)) + pooled_embed(pooled)). */
static sg_status embed_forward(const sg_unet *u, sg_backend *be, sg_arena *arena, float timestep,
                               const sg_tensor *pooled, sg_tensor *temb_silu, sg_error *error) {
  const sg_unet_config *c = &u->config;
  size_t mark = sg_arena_mark(arena);
  sg_status status = SG_OK;
  int half = c->time_proj_dim / 2, E = c->time_embed_dim;
  sg_tensor sinusoid, hidden, temb;
  TRY(new2(arena, 1, c->time_proj_dim, &sinusoid, error));
  TRY(new2(arena, 1, E, &hidden, error));
  TRY(new2(arena, 1, E, &temb, error));
  float *s = sinusoid.data;
  for (int i = 0; i < half; i++) {
    double frequency = exp(-log(10000.0) * i / half);
    double angle = (double)timestep * frequency;
    s[c->flip_sin_to_cos ? i : half + i] = (float)cos(angle);
    s[c->flip_sin_to_cos ? half + i : i] = (float)sin(angle);
  }
  TRY(sg_linear(be, &sinusoid, &u->time1_w, &u->time1_b, SG_ACT_SILU, &hidden, error));
  TRY(sg_linear(be, &hidden, &u->time2_w, &u->time2_b, SG_ACT_NONE, &temb, error));
  if (c->pooled_dim > 0) {
    /* No pooled vector is the same as a zero one (the embedding's biases still apply). */
    sg_tensor input, pooled_emb;
    TRY(new2(arena, 1, c->pooled_dim, &input, error));
    TRY(new2(arena, 1, E, &pooled_emb, error));
    if (pooled)
      memcpy(input.data, pooled->data, sizeof(float) * (size_t)c->pooled_dim);
    else
      memset(input.data, 0, sizeof(float) * (size_t)c->pooled_dim);
    TRY(sg_linear(be, &input, &u->pooled1_w, &u->pooled1_b, SG_ACT_SILU, &hidden, error));
    TRY(sg_linear(be, &hidden, &u->pooled2_w, &u->pooled2_b, SG_ACT_NONE, &pooled_emb, error));
    TRY(sg_binary(be, SG_BINARY_ADD, &temb, &pooled_emb, &temb, error));
  }
  TRY(sg_eltwise(be, SG_ACT_SILU, &temb, temb_silu, error));
done:
  sg_arena_reset(arena, mark);
  return status;
}

static sg_status check_shape(const sg_tensor *t, const char *what, int ndim, int64_t d0,
                             int64_t d1, int64_t d2, sg_error *error) {
  int64_t want[3] = {d0, d1, d2};
  int ok = t && t->dtype == SG_F32 && t->ndim == ndim && t->data;
  for (int i = 0; ok && i < ndim; i++) ok = want[i] < 0 || t->dims[i] == want[i];
  if (ok) return SG_OK;
  char got[64] = "none";
  if (t) sg_shape_string(t, got, sizeof got);
  return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "UNet: %s has shape %s (f32 %d-D expected)",
                 what, got, ndim);
}

/* Arena layout of one forward (a stack, see tensor.h):
 *   [temb_silu][skip 0][skip 1]...[skip n-1][ping][pong][block temporaries...]
 * The down path allocates each skip (conv_in, res block outputs, downsamples) in push order and
 * runs each module's temporaries above it, released by the module before it returns; transformers
 * add into their input in place, so a (res + transformer) output is one tensor. The skips stay
 * below everything the mid and up paths allocate, so popping them needs no freeing. The mid and
 * up paths alternate between two buffers ("ping", "pong") sized for the largest activation there;
 * the last output is written to the caller's tensor. */
sg_status sg_unet_context_kv_new(sg_unet *unet, sg_backend *be, const sg_tensor *context,
                                 sg_unet_context_kv **out, sg_error *error) {
  const sg_unet_config *c = &unet->config;
  sg_status status = SG_OK;
  *out = NULL;
  TRY(check_shape(context, "the context", 2, -1, c->context_dim, 0, error));
  if (context->dims[0] < 1)
    TRY(sg_fail(error, SG_ERR_INVALID_ARGUMENT, "UNet: the context has no tokens"));
  const int64_t tokens = context->dims[0], width = (int64_t)c->num_kv_heads * c->head_dim;
  sg_unet_context_kv *kv = g_new0(sg_unet_context_kv, 1);
  kv->count = unet->cross_count;
  kv->kv = g_new0(sg_tensor, 2 * (size_t)kv->count + 1);
  kv->data = g_try_malloc((size_t)(2 * kv->count * tokens * width + 1) * sizeof(float));
  if (!kv->data) {
    sg_unet_context_kv_free(kv);
    TRY(sg_fail(error, SG_ERR_OUT_OF_MEMORY, "UNet: out of memory for the context's keys"));
  }
  for (int i = 0; i < kv->count && status == SG_OK; i++) {
    sg_tensor *k = &kv->kv[2 * i], *v = &kv->kv[2 * i + 1];
    *k = sg_tensor_2d(kv->data + (2 * i) * tokens * width, tokens, width);
    *v = sg_tensor_2d(kv->data + (2 * i + 1) * tokens * width, tokens, width);
    status = keys_values(unet->cross[i], c, be, context, k, v, error);
  }
  if (status != SG_OK) {
    sg_unet_context_kv_free(kv);
    goto done;
  }
  *out = kv;
done:
  return status;
}

void sg_unet_context_kv_free(sg_unet_context_kv *kv) {
  if (!kv) return;
  g_free(kv->data);
  g_free(kv->kv);
  g_free(kv);
}

sg_status sg_unet_forward(sg_unet *unet, sg_backend *be, sg_arena *arena, const sg_tensor *x,
                          float timestep, const sg_tensor *context, const float *context_mask,
                          const sg_tensor *pooled, sg_tensor *out, sg_error *error) {
  sg_unet_context_kv *kv = NULL;
  sg_status status = sg_unet_context_kv_new(unet, be, context, &kv, error);
  if (status != SG_OK) return status;
  status = sg_unet_forward_kv(unet, be, arena, x, timestep, kv, context_mask, pooled, out, error);
  sg_unet_context_kv_free(kv);
  return status;
}

sg_status sg_unet_forward_kv(sg_unet *unet, sg_backend *be, sg_arena *arena, const sg_tensor *x,
                             float timestep, const sg_unet_context_kv *kv,
                             const float *context_mask, const sg_tensor *pooled, sg_tensor *out,
                             sg_error *error) {
  const sg_unet_config *c = &unet->config;
  int S = c->num_stages, C0 = c->block_channels[0];
  int64_t stride = (int64_t)1 << (S - 1);
  size_t mark = sg_arena_mark(arena);
  sg_status status = SG_OK;
  TRY(check_shape(x, "the latent x", 3, c->in_channels, -1, -1, error));
  int64_t H = x->dims[1], W = x->dims[2];
  if (H < stride || W < stride || H % stride != 0 || W % stride != 0)
    TRY(sg_fail(error, SG_ERR_INVALID_ARGUMENT, "UNet: latent %lldx%lld is not a multiple of %lld",
                (long long)H, (long long)W, (long long)stride));
  TRY(check_shape(out, "the output", 3, c->out_channels, H, W, error));
  if (!kv || kv->count != unet->cross_count)
    TRY(sg_fail(error, SG_ERR_INVALID_ARGUMENT, "UNet: keys and values of another UNet given"));
  if (c->pooled_dim > 0 && pooled &&
      (pooled->dtype != SG_F32 || sg_tensor_numel(pooled) != c->pooled_dim))
    TRY(sg_fail(error, SG_ERR_INVALID_ARGUMENT, "UNet: pooled has %lld values, %d expected",
                (long long)sg_tensor_numel(pooled), c->pooled_dim));

  sg_tensor temb_silu, skips[1 + 16 * SG_UNET_MAX_STAGES + SG_UNET_MAX_STAGES];
  int num_skips = 0;
  const sg_format layout = activation_layout(be);
  TRY(new2(arena, 1, c->time_embed_dim, &temb_silu, error));
  TRY(embed_forward(unet, be, arena, timestep, pooled, &temb_silu, error));

  /* Down path: every output is a skip. */
  sg_tensor *h = &skips[num_skips++];
  TRY(new_image(arena, C0, H, W, layout, h, error));
  TRY(sg_conv2d(be, x, &unet->conv_in_w, &unet->conv_in_b, 1, 1, 1, SG_ACT_NONE, h, error));
  int64_t h_size = H, w_size = W;
  for (int i = 0; i < S; i++) {
    const stage *st = &unet->down[i];
    for (int j = 0; j < st->num_blocks; j++) {
      sg_tensor *next = &skips[num_skips++];
      TRY(new_image(arena, st->channels, h_size, w_size, layout, next, error));
      TRY(res_forward(&st->res[j], c, be, arena, h, &temb_silu, next, error));
      if (st->attn)
        TRY(transformer_forward(&st->attn[j], c, be, arena, next, NULL, kv, context_mask, next,
                                error));
      h = next;
    }
    if (st->has_resample) {
      sg_tensor *next = &skips[num_skips++];
      h_size /= 2;
      w_size /= 2;
      TRY(new_image(arena, st->channels, h_size, w_size, layout, next, error));
      TRY(sg_conv2d(be, h, &st->resample_w, &st->resample_b, 2, 1, 1, SG_ACT_NONE, next, error));
      h = next;
    }
  }

  /* Mid and up paths: ping-pong buffers. */
  int64_t largest = (int64_t)c->block_channels[S - 1] * h_size * w_size;
  for (int s = 0; s < S; s++) {
    int64_t res_output = (int64_t)c->block_channels[s] * (H >> s) * (W >> s);
    int64_t upsample_output =
        s > 0 ? (int64_t)c->block_channels[s] * (H >> (s - 1)) * (W >> (s - 1)) : 0;
    if (res_output > largest) largest = res_output;
    if (upsample_output > largest) largest = upsample_output;
  }
  float *buffers[2];
  int next_buffer = 0;
  for (int k = 0; k < 2; k++) {
    buffers[k] = sg_arena_alloc(arena, largest, error);
    if (!buffers[k]) {
      status = SG_ERR_OUT_OF_MEMORY;
      goto done;
    }
  }
  sg_tensor current, next;
  int64_t Cl = c->block_channels[S - 1];
  next = image_view(buffers[next_buffer], Cl, h_size, w_size, layout);
  next_buffer ^= 1;
  TRY(res_forward(&unet->mid_res[0], c, be, arena, h, &temb_silu, &next, error));
  if (unet->has_mid_attn)
    TRY(transformer_forward(&unet->mid_attn, c, be, arena, &next, NULL, kv, context_mask, &next,
                            error));
  current = next;
  next = image_view(buffers[next_buffer], Cl, h_size, w_size, layout);
  next_buffer ^= 1;
  TRY(res_forward(&unet->mid_res[1], c, be, arena, &current, &temb_silu, &next, error));
  current = next;

  for (int i = 0; i < S; i++) {
    const stage *st = &unet->up[i];
    for (int j = 0; j < st->num_blocks; j++) {
      const sg_tensor *skip = &skips[--num_skips];
      size_t block_mark = sg_arena_mark(arena);
      sg_tensor joined;
      TRY(new_image(arena, current.dims[0] + skip->dims[0], h_size, w_size, layout, &joined,
                    error));
      if (layout == SG_FORMAT_NHWC) {
        /* Channels-last, the channels of a pixel are a row: concatenate rows [H*W, C]. */
        const int64_t T = h_size * w_size;
        sg_tensor a = as2(&current, T, current.dims[0]), b = as2(skip, T, skip->dims[0]);
        sg_tensor y = as2(&joined, T, joined.dims[0]);
        TRY(sg_concat(be, &a, &b, &y, error));
      } else {
        TRY(sg_concat(be, &current, skip, &joined, error));
      }
      next = image_view(buffers[next_buffer], st->channels, h_size, w_size, layout);
      next_buffer ^= 1;
      TRY(res_forward(&st->res[j], c, be, arena, &joined, &temb_silu, &next, error));
      sg_arena_reset(arena, block_mark);
      if (st->attn)
        TRY(transformer_forward(&st->attn[j], c, be, arena, &next, NULL, kv, context_mask, &next,
                                error));
      current = next;
    }
    if (st->has_resample) {
      size_t up_mark = sg_arena_mark(arena);
      sg_tensor upsampled;
      h_size *= 2;
      w_size *= 2;
      TRY(new_image(arena, st->channels, h_size, w_size, layout, &upsampled, error));
      TRY(sg_upsample_nearest2x(be, &current, &upsampled, error));
      next = image_view(buffers[next_buffer], st->channels, h_size, w_size, layout);
      next_buffer ^= 1;
      TRY(sg_conv2d(be, &upsampled, &st->resample_w, &st->resample_b, 1, 1, 1, SG_ACT_NONE,
                    &next, error));
      sg_arena_reset(arena, up_mark);
      current = next;
    }
  }

  sg_tensor normed;
  TRY(new_image(arena, C0, H, W, layout, &normed, error));
  TRY(sg_group_norm(be, &current, c->norm_groups, &unet->norm_out_w, &unet->norm_out_b,
                    (float)c->norm_eps, SG_ACT_SILU, &normed, error));
  TRY(sg_conv2d(be, &normed, &unet->conv_out_w, &unet->conv_out_b, 1, 1, 1, SG_ACT_NONE, out,
                error));
done:
  sg_arena_reset(arena, mark);
  return status;
}

/* ---------------------------------------------------------------------------------------------
 * Test entry points */

static const res_block *find_res_block(const sg_unet *u, const char *name) {
  for (int k = 0; k < 2; k++)
    if (strcmp(u->mid_res[k].name, name) == 0) return &u->mid_res[k];
  for (int i = 0; i < u->config.num_stages; i++)
    for (int j = 0; j < u->down[i].num_blocks || j < u->up[i].num_blocks; j++) {
      if (j < u->down[i].num_blocks && strcmp(u->down[i].res[j].name, name) == 0)
        return &u->down[i].res[j];
      if (j < u->up[i].num_blocks && strcmp(u->up[i].res[j].name, name) == 0)
        return &u->up[i].res[j];
    }
  return NULL;
}

static const transformer *find_transformer(const sg_unet *u, const char *name) {
  if (u->has_mid_attn && strcmp(u->mid_attn.name, name) == 0) return &u->mid_attn;
  for (int i = 0; i < u->config.num_stages; i++) {
    const stage *stages[2] = {&u->down[i], &u->up[i]};
    for (int k = 0; k < 2; k++)
      for (int j = 0; stages[k]->attn && j < stages[k]->num_blocks; j++)
        if (strcmp(stages[k]->attn[j].name, name) == 0) return &stages[k]->attn[j];
  }
  return NULL;
}

/* The module tests take plain images; the module runs in the layout the full forward uses.
 * Copies plain into *image in that layout (or views it when that is plain). */
static sg_status image_in_layout(sg_backend *be, sg_arena *arena, const sg_tensor *plain,
                                 sg_format layout, sg_tensor *image, sg_error *error) {
  const int64_t C = plain->dims[0], H = plain->dims[1], W = plain->dims[2];
  if (layout == SG_FORMAT_PLAIN) {
    *image = *plain;
    return SG_OK;
  }
  sg_status status = new_image(arena, C, H, W, layout, image, error);
  sg_tensor from = as2(plain, C, H * W), to = as2(image, H * W, C);
  if (status == SG_OK) status = sg_transpose(be, &from, &to, error);
  return status;
}

/* Writes a channels-last image into the plain one (nothing when they are the same tensor). */
static sg_status image_to_plain(sg_backend *be, const sg_tensor *image, sg_tensor *plain,
                                sg_error *error) {
  if (image->data == plain->data) return SG_OK;
  const int64_t C = image->dims[0], T = image->dims[1] * image->dims[2];
  sg_tensor from = as2(image, T, C), to = as2(plain, C, T);
  return sg_transpose(be, &from, &to, error);
}

sg_status sg_unet_forward_res_block(sg_unet *unet, sg_backend *be, sg_arena *arena,
                                    const char *name, const sg_tensor *x, const sg_tensor *temb,
                                    sg_tensor *out, sg_error *error) {
  const res_block *rb = find_res_block(unet, name);
  if (!rb) return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "UNet: no residual block '%s'", name);
  sg_status status = SG_OK;
  TRY(check_shape(x, "x", 3, rb->in_channels, -1, -1, error));
  TRY(check_shape(out, "out", 3, rb->out_channels, x->dims[1], x->dims[2], error));
  if (!temb || sg_tensor_numel(temb) != unet->config.time_embed_dim)
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "UNet: temb must have %d values",
                   unet->config.time_embed_dim);
  size_t mark = sg_arena_mark(arena);
  sg_tensor temb_row = as2(temb, 1, unet->config.time_embed_dim), temb_silu;
  status = new2(arena, 1, unet->config.time_embed_dim, &temb_silu, error);
  if (status == SG_OK) status = sg_eltwise(be, SG_ACT_SILU, &temb_row, &temb_silu, error);
  const sg_format layout = activation_layout(be);
  sg_tensor x_image, out_image = *out;
  if (status == SG_OK) status = image_in_layout(be, arena, x, layout, &x_image, error);
  if (status == SG_OK && layout != SG_FORMAT_PLAIN)
    status = new_image(arena, rb->out_channels, x->dims[1], x->dims[2], layout, &out_image, error);
  if (status == SG_OK)
    status = res_forward(rb, &unet->config, be, arena, &x_image, &temb_silu, &out_image, error);
  if (status == SG_OK) status = image_to_plain(be, &out_image, out, error);
  sg_arena_reset(arena, mark);
done:
  return status;
}

sg_status sg_unet_forward_transformer(sg_unet *unet, sg_backend *be, sg_arena *arena,
                                      const char *name, const sg_tensor *x,
                                      const sg_tensor *context, const float *context_mask,
                                      sg_tensor *out, sg_error *error) {
  const transformer *tf = find_transformer(unet, name);
  if (!tf) return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "UNet: no transformer '%s'", name);
  sg_status status = SG_OK;
  TRY(check_shape(x, "x", 3, tf->channels, -1, -1, error));
  TRY(check_shape(out, "out", 3, tf->channels, x->dims[1], x->dims[2], error));
  TRY(check_shape(context, "the context", 2, -1, unet->config.context_dim, 0, error));
  const sg_format layout = activation_layout(be);
  size_t mark = sg_arena_mark(arena);
  sg_tensor x_image, out_image = *out;
  status = image_in_layout(be, arena, x, layout, &x_image, error);
  if (status == SG_OK && layout != SG_FORMAT_PLAIN)
    status = new_image(arena, tf->channels, x->dims[1], x->dims[2], layout, &out_image, error);
  if (status == SG_OK)
    status = transformer_forward(tf, &unet->config, be, arena, &x_image, context, NULL,
                                 context_mask, &out_image, error);
  if (status == SG_OK) status = image_to_plain(be, &out_image, out, error);
  sg_arena_reset(arena, mark);
done:
  return status;
}
