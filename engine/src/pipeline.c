/* pipeline.c: the engine's public API: a context holds a loaded model folder; sg_generate runs
 * conditioning -> flow-matching sampling with the UNet -> compact decoder -> RGBA pixels. */
#include <glib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "conditioner.h"
#include "config.h"
#include "decoder.h"
#include "error.h"
#include "rng.h"
#include "sampler.h"
#include "snapgen.h"
#include "unet.h"

/* The largest width or height accepted: 4096 px is 16× the pixels of the 1024² default. */
#define SG_MAX_IMAGE_SIDE 4096
/* The longest prompt accepted, in bytes (the tokenizers' SG_TEXT_MAX_BYTES). */
#define SG_MAX_PROMPT_BYTES (64 * 1024)

/* Text conditioning for one prompt: context tokens, their mask, and the pooled vector (owned). */
typedef sg_conditioning_out sg_conditioning;

struct sg_context {
  char *model_dir;
  sg_backend *backend;
  sg_unet_config unet_config;
  sg_weights *unet_weights; /* in bf16 mode, the folder's bf16 variant where it has one */
  sg_unet *unet;
  sg_decoder_config decoder_config;
  sg_weights *decoder_weights;
  sg_decoder *decoder;
  sg_scheduler_config scheduler;
  sg_conditioner *conditioner;     /* NULL for models without text encoders */
  char *default_conditioning_path; /* models without a text encoder may ship a fixed conditioning */
  sg_arena *arena;
  int int8_weights; /* sg_context_options.int8_weights */
  int bf16_compute; /* sg_context_options.bf16_compute */
};

void sg_generate_params_init(sg_generate_params *params) {
  memset(params, 0, sizeof *params);
  params->guidance = -1.0f;
  params->width = 1024;
  params->height = 1024;
}

void sg_context_options_init(sg_context_options *options) {
  memset(options, 0, sizeof *options);
  options->backend = SG_BACKEND_ONEDNN;
}

int sg_max_image_side(void) {
  return SG_MAX_IMAGE_SIDE;
}

int sg_context_default_steps(const sg_context *context) {
  return context->scheduler.default_steps;
}

float sg_context_default_guidance(const sg_context *context) {
  return (float)context->scheduler.default_guidance;
}

int sg_context_pixel_stride(const sg_context *context) {
  return sg_decoder_scale(&context->decoder_config) << (context->unet_config.num_stages - 1);
}

/* Reads model_index.json: checks it names a UNet and a decoder, and notes optional parts. */
static sg_status read_model_index(sg_context *ctx, sg_error *error) {
  char *path = g_build_filename(ctx->model_dir, "model_index.json", NULL);
  sg_json *index = NULL;
  sg_status status = sg_json_load(path, &index, error);
  if (status == SG_OK) {
    if (!sg_json_has(index, "unet") || !sg_json_has(index, "decoder")) {
      status = sg_fail(error, SG_ERR_FORMAT, "%s: the model index must name a 'unet' and a 'decoder'",
                       path);
    } else if (sg_json_has(index, "conditioning")) {
      char *relative = NULL;
      status = sg_json_string(index, "conditioning", NULL, &relative, error);
      if (status == SG_OK) {
        ctx->default_conditioning_path = g_build_filename(ctx->model_dir, relative, NULL);
        g_free(relative);
      }
    }
  }
  sg_json_free(index);
  g_free(path);
  return status;
}

static sg_status load_components(sg_context *ctx, sg_error *error) {
  sg_status status = read_model_index(ctx, error);
  char *unet_dir = g_build_filename(ctx->model_dir, "unet", NULL);
  char *unet_config = g_build_filename(unet_dir, "config.json", NULL);
  char *decoder_dir = g_build_filename(ctx->model_dir, "decoder", NULL);
  char *decoder_config = g_build_filename(decoder_dir, "config.json", NULL);
  char *scheduler_config =
      g_build_filename(ctx->model_dir, "scheduler", "scheduler_config.json", NULL);

  if (status == SG_OK) status = sg_scheduler_config_load(scheduler_config, &ctx->scheduler, error);
  if (status == SG_OK) status = sg_unet_config_load(unet_config, &ctx->unet_config, error);
  if (status == SG_OK)
    status = sg_decoder_config_load(decoder_config, &ctx->decoder_config, error);
  if (status == SG_OK && ctx->decoder_config.latent_channels != ctx->unet_config.out_channels)
    status = sg_fail(error, SG_ERR_FORMAT,
                     "%s: the decoder takes %d latent channels but the UNet makes %d",
                     decoder_config, ctx->decoder_config.latent_channels,
                     ctx->unet_config.out_channels);
  if (status == SG_OK)
    status = sg_conditioner_load(ctx->model_dir, ctx->int8_weights, &ctx->conditioner,
                                 error);
  if (status == SG_OK && ctx->conditioner &&
      (sg_conditioner_context_dim(ctx->conditioner) != ctx->unet_config.context_dim ||
       sg_conditioner_pooled_dim(ctx->conditioner) != ctx->unet_config.pooled_dim))
    status = sg_fail(error, SG_ERR_FORMAT,
                     "%s: the conditioner gives context width %d and pooled width %d, but the UNet "
                     "takes %d and %d", ctx->model_dir, sg_conditioner_context_dim(ctx->conditioner),
                     sg_conditioner_pooled_dim(ctx->conditioner), ctx->unet_config.context_dim,
                     ctx->unet_config.pooled_dim);
  /* The context's one backend runs both: their plain f32 copies go once it has packed them. */
  if (status == SG_OK)
    status = sg_unet_weights_open(unet_dir, ctx->bf16_compute, ctx->int8_weights,
                                  &ctx->unet_weights, error);
  if (status == SG_OK) status = sg_unet_load(&ctx->unet_config, ctx->unet_weights, &ctx->unet, error);
  if (status == SG_OK) status = sg_weights_open_folder(decoder_dir, &ctx->decoder_weights, error);
  if (status == SG_OK) sg_weights_hand_off_to_backend(ctx->decoder_weights);
  if (status == SG_OK)
    status = sg_decoder_load(&ctx->decoder_config, ctx->decoder_weights, &ctx->decoder, error);

  g_free(unet_dir);
  g_free(unet_config);
  g_free(decoder_dir);
  g_free(decoder_config);
  g_free(scheduler_config);
  return status;
}

sg_status sg_context_new(const char *model_dir, const sg_context_options *options,
                         sg_context **out, sg_error *error) {
  if (out == NULL) return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "sg_context_new: out is NULL");
  *out = NULL;
  sg_context_options defaults;
  if (options == NULL) {
    sg_context_options_init(&defaults);
    options = &defaults;
  }
  if (model_dir == NULL || model_dir[0] == '\0')
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "no model folder given");
  if (!g_file_test(model_dir, G_FILE_TEST_IS_DIR))
    return sg_fail(error, SG_ERR_IO, "%s: model folder not found", model_dir);
  if (options->threads < 0 || options->threads > 1024)
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "threads must be 0 (all cores) to 1024, not %d",
                   options->threads);

  sg_context *ctx = g_new0(sg_context, 1);
  ctx->model_dir = g_strdup(model_dir);
  ctx->int8_weights = options->int8_weights != 0;
  ctx->bf16_compute = options->bf16_compute != 0;
  ctx->backend = sg_backend_new(options->backend, options->threads, error);
  sg_status status = ctx->backend ? SG_OK : error ? error->status : SG_ERR_BACKEND;
  if (status == SG_OK && options->bf16_compute)
    status = sg_backend_set_bf16(ctx->backend, 1, error);
  if (status == SG_OK) {
    ctx->arena = sg_arena_new();
    if (ctx->arena == NULL) status = sg_fail(error, SG_ERR_OUT_OF_MEMORY, "no memory for the arena");
  }
  if (status == SG_OK) status = load_components(ctx, error);
  if (status != SG_OK) {
    sg_context_free(ctx);
    return status;
  }
  *out = ctx;
  return SG_OK;
}

void sg_context_free(sg_context *ctx) {
  if (ctx == NULL) return;
  sg_conditioner_free(ctx->conditioner);
  sg_unet_free(ctx->unet);
  sg_decoder_free(ctx->decoder);
  sg_weights_free(ctx->unet_weights);
  sg_weights_free(ctx->decoder_weights);
  sg_arena_free(ctx->arena);
  sg_backend_free(ctx->backend);
  g_free(ctx->default_conditioning_path);
  g_free(ctx->model_dir);
  g_free(ctx);
}

static void conditioning_clear(sg_conditioning *cond) {
  sg_conditioning_out_clear(cond);
}

/* Copies one tensor of a conditioning file (f32 result owned by the caller). */
static sg_status copy_entry(const sg_safetensors *file, const char *name, int ndim,
                            const int64_t *dims, sg_tensor *out, sg_error *error) {
  memset(out, 0, sizeof *out); /* on failure too: callers free out->data */
  const sg_st_entry *entry = sg_safetensors_find(file, name);
  if (entry == NULL)
    return sg_fail(error, SG_ERR_FORMAT, "%s: missing tensor '%s'", sg_safetensors_path(file),
                   name);
  int ok = entry->ndim == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = dims[i] < 0 || entry->dims[i] == dims[i];
  if (!ok) {
    sg_tensor seen = sg_tensor_view((void *)entry->data, entry->dtype, entry->ndim, entry->dims);
    char shape[96];
    return sg_fail(error, SG_ERR_FORMAT, "%s: tensor '%s' has shape %s, which does not fit this model",
                   sg_safetensors_path(file), name, sg_shape_string(&seen, shape, sizeof shape));
  }
  *out = sg_tensor_view(NULL, SG_F32, entry->ndim, entry->dims);
  int64_t count = sg_tensor_numel(out);
  float *values = g_try_new(float, count > 0 ? count : 1);
  if (values == NULL) return sg_fail(error, SG_ERR_OUT_OF_MEMORY, "no memory for '%s'", name);
  for (int64_t i = 0; i < count; i++) {
    float v;
    if (entry->dtype == SG_F32)
      memcpy(&v, (const char *)entry->data + 4 * i, 4);
    else {
      uint16_t h;
      memcpy(&h, (const char *)entry->data + 2 * i, 2);
      v = entry->dtype == SG_BF16 ? sg_bf16_to_f32(h) : sg_f16_to_f32(h);
    }
    if (!isfinite(v)) {
      g_free(values);
      return sg_fail(error, SG_ERR_FORMAT, "%s: tensor '%s' contains NaN or Inf",
                     sg_safetensors_path(file), name);
    }
    values[i] = v;
  }
  out->data = values;
  return SG_OK;
}

/* Loads conditioning from a safetensors file: "context" [S, context_dim], optional "context_mask"
 * [S] and "pooled" [pooled_dim]; prefix "negative_" selects the negative-prompt set. */
static sg_status load_conditioning(const sg_context *ctx, const char *path, const char *prefix,
                                   sg_conditioning *cond, sg_error *error) {
  memset(cond, 0, sizeof *cond);
  sg_safetensors *file = NULL;
  sg_status status = sg_safetensors_open(path, &file, error);
  if (status != SG_OK) return status;
  char name[64];
  g_snprintf(name, sizeof name, "%scontext", prefix);
  int64_t context_dims[2] = {-1, ctx->unet_config.context_dim};
  status = copy_entry(file, name, 2, context_dims, &cond->context, error);
  int64_t tokens = status == SG_OK ? cond->context.dims[0] : 0;
  if (status == SG_OK && (tokens < 1 || tokens > 4096))
    status = sg_fail(error, SG_ERR_FORMAT, "%s: '%s' must have 1 to 4096 tokens, not %lld", path,
                     name, (long long)tokens);
  if (status == SG_OK) {
    g_snprintf(name, sizeof name, "%scontext_mask", prefix);
    if (sg_safetensors_find(file, name)) {
      sg_tensor mask;
      status = copy_entry(file, name, 1, &tokens, &mask, error);
      cond->context_mask = mask.data;
    } else {
      cond->context_mask = g_new(float, tokens);
      for (int64_t i = 0; i < tokens; i++) cond->context_mask[i] = 1.0f;
    }
  }
  if (status == SG_OK && ctx->unet_config.pooled_dim > 0) {
    g_snprintf(name, sizeof name, "%spooled", prefix);
    int64_t pooled_dims[1] = {ctx->unet_config.pooled_dim};
    status = copy_entry(file, name, 1, pooled_dims, &cond->pooled, error);
  }
  sg_safetensors_close(file);
  if (status != SG_OK) conditioning_clear(cond);
  return status;
}

/* The unconditional (empty) conditioning when no negative set is given: masked-out zero tokens
 * and a zero pooled vector, as when every text encoder is dropped in training. */
static sg_status empty_conditioning(const sg_context *ctx, const sg_conditioning *like,
                                    sg_conditioning *cond) {
  int64_t tokens = like->context.dims[0];
  cond->context = sg_tensor_view(g_new0(float, tokens * ctx->unet_config.context_dim), SG_F32, 2,
                                 like->context.dims);
  cond->context_mask = g_new0(float, tokens);
  cond->context_mask[0] = 1.0f; /* one zero token stays visible so attention is defined */
  if (ctx->unet_config.pooled_dim > 0) {
    int64_t pooled_dims[1] = {ctx->unet_config.pooled_dim};
    cond->pooled = sg_tensor_view(g_new0(float, pooled_dims[0]), SG_F32, 1, pooled_dims);
  }
  return SG_OK;
}

/* A prompt must be UTF-8 of at most SG_MAX_PROMPT_BYTES, checked here even while the model uses a
 * fixed conditioning, so every model takes the same prompts (and the PNG text chunk can hold it). */
static sg_status check_text(const char *text, const char *what, sg_error *error) {
  if (text == NULL) return SG_OK;
  size_t length = strlen(text);
  if (length > SG_MAX_PROMPT_BYTES)
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "the %s is %zu bytes long; at most %d allowed",
                   what, length, SG_MAX_PROMPT_BYTES);
  const char *end = NULL;
  if (!g_utf8_validate(text, (gssize)length, &end))
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "the %s is not valid UTF-8 text (bad byte at offset %td)", what, end - text);
  return SG_OK;
}

static sg_status check_params(const sg_context *ctx, const sg_generate_params *p, int *steps,
                              double *guidance, sg_error *error) {
  sg_status status = check_text(p->prompt, "prompt", error);
  if (status == SG_OK) status = check_text(p->negative_prompt, "negative prompt", error);
  if (status != SG_OK) return status;
  int stride = sg_context_pixel_stride(ctx);
  if (p->width <= 0 || p->height <= 0 || p->width > SG_MAX_IMAGE_SIDE ||
      p->height > SG_MAX_IMAGE_SIDE)
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "image size %d×%d is outside 1 to %d pixels per side", p->width, p->height,
                   SG_MAX_IMAGE_SIDE);
  if (p->width % stride != 0 || p->height % stride != 0)
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "image size %d×%d must be a multiple of %d pixels for this model", p->width,
                   p->height, stride);
  *steps = p->steps > 0 ? p->steps : ctx->scheduler.default_steps;
  if (p->steps < 0 || *steps > SG_MAX_STEPS)
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "steps must be 1 to %d (0: model default), not %d",
                   SG_MAX_STEPS, p->steps);
  *guidance = p->guidance < 0 ? ctx->scheduler.default_guidance : p->guidance;
  if (!isfinite(*guidance) || *guidance > 100)
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "guidance must be 0 to 100");
  return SG_OK;
}

static int report(sg_progress_fn progress, void *user_data, sg_stage stage, int step, int total) {
  return progress != NULL && progress(user_data, stage, step, total) != 0;
}

/* Decoded image [3, H, W] in ~[0,1] -> RGBA bytes (opaque). */
static void image_to_rgba(const sg_tensor *image, uint8_t *rgba) {
  int64_t h = image->dims[1], w = image->dims[2], plane = h * w;
  const float *px = image->data;
  for (int64_t i = 0; i < plane; i++) {
    for (int c = 0; c < 3; c++) {
      float v = px[c * plane + i];
      v = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
      rgba[4 * i + c] = (uint8_t)lrintf(v * 255.0f);
    }
    rgba[4 * i + 3] = 255;
  }
}

static sg_status denoise(sg_context *ctx, const sg_conditioning *cond,
                         const sg_conditioning *uncond, const double *t, int steps,
                         double guidance, sg_tensor *latent, sg_progress_fn progress,
                         void *user_data, sg_error *error) {
  size_t mark = sg_arena_mark(ctx->arena);
  sg_tensor v, v_uncond;
  sg_status status = sg_arena_tensor(ctx->arena, 3, latent->dims, &v, error);
  if (status == SG_OK && uncond) status = sg_arena_tensor(ctx->arena, 3, latent->dims, &v_uncond, error);
  /* The cross-attention keys and values depend on the contexts alone: made once for all steps. */
  sg_unet_context_kv *kv = NULL, *kv_uncond = NULL;
  if (status == SG_OK)
    status = sg_unet_context_kv_new(ctx->unet, ctx->backend, &cond->context, &kv, error);
  if (status == SG_OK && uncond)
    status = sg_unet_context_kv_new(ctx->unet, ctx->backend, &uncond->context, &kv_uncond, error);
  int64_t count = sg_tensor_numel(latent);
  for (int i = 0; status == SG_OK && i < steps; i++) {
    if (report(progress, user_data, SG_STAGE_DENOISING, i, steps)) {
      status = sg_fail(error, SG_ERR_CANCELLED, "cancelled");
      break;
    }
    float timestep = (float)(t[i] * 1000.0);
    status = sg_unet_forward_kv(ctx->unet, ctx->backend, ctx->arena, latent, timestep, kv,
                                cond->context_mask, cond->pooled.data ? &cond->pooled : NULL, &v,
                                error);
    if (status == SG_OK && uncond) {
      status = sg_unet_forward_kv(ctx->unet, ctx->backend, ctx->arena, latent, timestep,
                                  kv_uncond, uncond->context_mask,
                                  uncond->pooled.data ? &uncond->pooled : NULL, &v_uncond, error);
      if (status == SG_OK) sg_guidance_combine(v.data, v_uncond.data, count, guidance);
    }
    if (status == SG_OK) sg_euler_step(latent->data, v.data, count, t[i], t[i + 1]);
  }
  if (status == SG_OK && report(progress, user_data, SG_STAGE_DENOISING, steps, steps))
    status = sg_fail(error, SG_ERR_CANCELLED, "cancelled");
  sg_unet_context_kv_free(kv);
  sg_unet_context_kv_free(kv_uncond);
  sg_arena_reset(ctx->arena, mark);
  return status;
}

sg_status sg_generate(sg_context *ctx, const sg_generate_params *params, sg_progress_fn progress,
                      void *user_data, uint8_t **rgba_out, sg_error *error) {
  if (rgba_out == NULL || ctx == NULL || params == NULL) {
    if (rgba_out) *rgba_out = NULL;
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "sg_generate: context, params or output is NULL");
  }
  *rgba_out = NULL;
  int steps = 0;
  double guidance = 1.0;
  sg_status status = check_params(ctx, params, &steps, &guidance, error);
  if (status != SG_OK) return status;
  double *t = g_new(double, steps + 1);
  status = sg_sampler_timesteps(&ctx->scheduler, steps, t, error);

  /* Conditioning: a given file, else the model's fixed one (models without text encoders). */
  sg_conditioning cond = {0}, uncond = {0};
  int use_guidance = guidance > 1.0;
  const char *cond_path = params->conditioning_path;
  if (cond_path == NULL || cond_path[0] == '\0') cond_path = ctx->default_conditioning_path;
  if (status == SG_OK && report(progress, user_data, SG_STAGE_ENCODING_TEXT, 0, steps))
    status = sg_fail(error, SG_ERR_CANCELLED, "cancelled");
  int use_text = ctx->conditioner != NULL &&
                 (params->conditioning_path == NULL || params->conditioning_path[0] == '\0');
  if (status == SG_OK && !use_text && cond_path == NULL)
    status = sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                     "%s: this model has no text encoder and no fixed conditioning; "
                     "give a conditioning file", ctx->model_dir);
  if (status == SG_OK && use_text) {
    status = sg_conditioner_encode(ctx->conditioner, ctx->backend, ctx->arena, params->prompt,
                                   &cond, error);
    /* The negative prompt ("" by default, cached) is the unconditional branch of guidance. */
    if (status == SG_OK && use_guidance)
      status = sg_conditioner_encode(ctx->conditioner, ctx->backend, ctx->arena,
                                     params->negative_prompt ? params->negative_prompt : "",
                                     &uncond, error);
  } else if (status == SG_OK) {
    status = load_conditioning(ctx, cond_path, "", &cond, error);
  }
  if (status == SG_OK && use_guidance && !use_text) {
    sg_safetensors *file = NULL;
    int has_negative = 0;
    if (sg_safetensors_open(cond_path, &file, NULL) == SG_OK) {
      has_negative = sg_safetensors_find(file, "negative_context") != NULL;
      sg_safetensors_close(file);
    }
    status = has_negative ? load_conditioning(ctx, cond_path, "negative_", &uncond, error)
                          : empty_conditioning(ctx, &cond, &uncond);
  }

  /* Latent noise [C, H/8, W/8] from the counter-based generator (stream 0). */
  int scale = sg_decoder_scale(&ctx->decoder_config);
  int64_t latent_dims[3] = {ctx->unet_config.in_channels, params->height / scale,
                            params->width / scale};
  sg_tensor latent = sg_tensor_view(NULL, SG_F32, 3, latent_dims);
  int64_t image_dims[3] = {ctx->decoder_config.out_channels, params->height, params->width};
  sg_tensor image = sg_tensor_view(NULL, SG_F32, 3, image_dims);
  if (status == SG_OK) {
    latent.data = g_try_new(float, sg_tensor_numel(&latent));
    image.data = g_try_new(float, sg_tensor_numel(&image));
    if (latent.data == NULL || image.data == NULL)
      status = sg_fail(error, SG_ERR_OUT_OF_MEMORY, "no memory for a %d×%d image", params->width,
                       params->height);
  }
  if (status == SG_OK) {
    sg_normal_fill(params->seed, 0, latent.data, sg_tensor_numel(&latent));
    status = denoise(ctx, &cond, use_guidance ? &uncond : NULL, t, steps, guidance, &latent,
                     progress, user_data, error);
  }
  if (status == SG_OK && report(progress, user_data, SG_STAGE_DECODING, steps, steps))
    status = sg_fail(error, SG_ERR_CANCELLED, "cancelled");
  if (status == SG_OK)
    status = sg_decoder_forward(ctx->decoder, ctx->backend, ctx->arena, &latent, &image, error);
  if (status == SG_OK) {
    sg_arena_settle(ctx->arena);
    uint8_t *rgba = g_try_malloc((gsize)params->width * params->height * 4);
    if (rgba == NULL)
      status = sg_fail(error, SG_ERR_OUT_OF_MEMORY, "no memory for the output image");
    else {
      image_to_rgba(&image, rgba);
      *rgba_out = rgba;
    }
  }
  conditioning_clear(&cond);
  conditioning_clear(&uncond);
  g_free(latent.data);
  g_free(image.data);
  g_free(t);
  return status;
}
