/* check_models.c: runs a UNet module, the whole UNet, the decoder or the sampling loop on a case
 * file written by tests/ref/test_models.py and writes the result for comparison with PyTorch.
 *
 * Usage (through sgcheck): KIND CASE.safetensors OUT.safetensors. All tensors are f32.
 * Metadata common to every kind: "backend" = "onednn" (default) | "reference"; "threads" (0 =
 * all cores).
 *
 *   resblock     metadata "config" (a UNet config.json as a JSON string), "module" (a residual
 *                block's name prefix, e.g. "down.0.res.0", "up.1.res.2", "mid.res.1"),
 *                "out_channels" (the block's output width);
 *                tensors: the whole UNet's weights under their weights/README.md names, "x"
 *                [in, H, W] (for up blocks already concatenated with the skip), "temb" [E]
 *                (before SiLU).                                       Output: "out" [out, H, W].
 *   transformer  as resblock with "module" a transformer ("down.0.attn.0", "mid.attn.0", ...);
 *                tensors "x" [C, H, W], "context" [S, context_dim], optional "context_mask" [S]
 *                (1 = token used, 0 = padding).                       Output: "out" [C, H, W].
 *   unet         metadata "config"; tensors: weights, "x" [in, H, W], "timestep" [1] (t·1000),
 *                "context", optional "context_mask" and "pooled" [pooled_dim].
 *                                                                     Output: "out" [out, H, W]
 *                and metadata "parameter_count" (analytic), "loaded_parameter_count" (fetched
 *                from the weights) and "flops" (one forward at this size).
 *                With metadata "count_only" = "1" only the config is read (no tensors needed)
 *                and only the metadata is written, for "height" x "width" latents (default 128)
 *                and "tokens" context tokens (default 77).
 *   decoder      metadata "config" (a decoder config.json); tensors: weights, "latent" [C, h, w].
 *                Output: "image" [3, H, W], metadata "parameter_count", "loaded_parameter_count".
 *                With metadata "tile" = n also "image_tiled": the decode in tiles of n latent
 *                pixels (sg_decoder_forward_tiled, "whole_stages" default -1), after the
 *                untiled one (tile 0).
 *   sampler      metadata "model_dir" (a model folder with unet/, decoder/ and
 *                scheduler/scheduler_config.json), "seed" (decimal), "steps" (0: the scheduler's
 *                default), "guidance" (optional; default from the scheduler), "height" and
 *                "width" (pixels); tensors "context", optional "context_mask", "pooled", and for
 *                guidance > 1 "negative_context" with optional "negative_context_mask" and
 *                "negative_pooled". The initial latent is sg_normal_fill(seed, stream 0) in
 *                [C, h, w] order; each step runs the UNet at float(t·1000), combines
 *                v_u + w (v_c − v_u) when w > 1, and takes an Euler step.
 *                                      Output: "latent" [C, h, w] (final) and "image" [3, H, W].
 *
 * For the first four kinds the weights are read through sg_weights_open_folder from a scratch
 * folder holding a link to the case file (the input tensors in it are simply never asked for). */
#include <glib.h>
#include <glib/gstdio.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "decoder.h"
#include "error.h"
#include "rng.h"
#include "safetensors.h"
#include "sampler.h"
#include "unet.h"

/* An f32 input tensor from the case file (a view into the mapping), or an error. */
static sg_status case_tensor(sg_safetensors *file, const char *name, int required,
                             sg_tensor *out, int *found, sg_error *error) {
  const sg_st_entry *entry = sg_safetensors_find(file, name);
  if (found) *found = entry != NULL;
  if (!entry) {
    memset(out, 0, sizeof *out);
    if (!required) return SG_OK;
    return sg_fail(error, SG_ERR_FORMAT, "%s: input tensor '%s' is missing",
                   sg_safetensors_path(file), name);
  }
  if (entry->dtype != SG_F32)
    return sg_fail(error, SG_ERR_FORMAT, "%s: input tensor '%s' must be F32",
                   sg_safetensors_path(file), name);
  *out = sg_tensor_view((void *)entry->data, SG_F32, entry->ndim, entry->dims);
  return SG_OK;
}

static const char *case_meta(sg_safetensors *file, const char *key, const char *fallback) {
  const char *value = sg_safetensors_metadata(file, key);
  return value ? value : fallback;
}

/* Everything a check holds, released in one place. */
typedef struct {
  sg_safetensors *file;
  sg_backend *backend;
  sg_arena *arena;
  char *scratch_dir, *link_path;
  sg_weights *weights, *decoder_weights;
  sg_unet_config unet_config;
  sg_unet *unet;
  sg_decoder *decoder;
  float *buffers[6];
} check_state;

static void release(check_state *s) {
  sg_unet_free(s->unet);
  sg_decoder_free(s->decoder);
  sg_weights_free(s->weights);
  sg_weights_free(s->decoder_weights);
  if (s->link_path) g_unlink(s->link_path);
  if (s->scratch_dir) g_rmdir(s->scratch_dir);
  g_free(s->link_path);
  g_free(s->scratch_dir);
  for (int i = 0; i < 6; i++) g_free(s->buffers[i]);
  sg_arena_free(s->arena);
  sg_backend_free(s->backend);
  sg_safetensors_close(s->file);
}

/* Opens the case file's own tensors as a weights folder (see the top of the file). */
static sg_status open_case_weights(check_state *s, const char *case_path, sg_error *error) {
  GError *gerror = NULL;
  s->scratch_dir = g_dir_make_tmp("sgcheck-XXXXXX", &gerror);
  if (!s->scratch_dir) {
    sg_fail(error, SG_ERR_IO, "cannot make a scratch folder: %s", gerror->message);
    g_error_free(gerror);
    return SG_ERR_IO;
  }
  char *absolute = realpath(case_path, NULL);
  if (!absolute) return sg_fail(error, SG_ERR_IO, "%s: cannot resolve the path", case_path);
  char *link = g_build_filename(s->scratch_dir, "case.safetensors", NULL);
  int failed = symlink(absolute, link);
  free(absolute);
  if (failed) {
    g_free(link);
    return sg_fail(error, SG_ERR_IO, "cannot link %s into %s", case_path, s->scratch_dir);
  }
  s->link_path = link;
  return sg_weights_open_folder(s->scratch_dir, &s->weights, error);
}

static sg_status parse_config(sg_safetensors *file, const char *key, sg_json **json,
                              sg_error *error) {
  const char *text = sg_safetensors_metadata(file, key);
  if (!text)
    return sg_fail(error, SG_ERR_FORMAT, "%s: metadata '%s' is missing",
                   sg_safetensors_path(file), key);
  return sg_json_parse(text, strlen(text), "case config", json, error);
}

static sg_status load_case_unet(check_state *s, const char *case_path, sg_error *error) {
  sg_json *json = NULL;
  sg_status status = parse_config(s->file, "config", &json, error);
  if (status == SG_OK) status = sg_unet_config_from_json(json, &s->unet_config, error);
  sg_json_free(json);
  if (status == SG_OK) status = open_case_weights(s, case_path, error);
  if (status == SG_OK) status = sg_unet_load(&s->unet_config, s->weights, &s->unet, error);
  return status;
}

static sg_status new_output(check_state *s, int slot, int ndim, const int64_t *dims,
                            sg_tensor *out) {
  int64_t count = 1;
  for (int i = 0; i < ndim; i++) count *= dims[i];
  s->buffers[slot] = g_new0(float, count > 0 ? count : 1);
  *out = sg_tensor_view(s->buffers[slot], SG_F32, ndim, dims);
  return SG_OK;
}

#define TRY(expr)                   \
  do {                              \
    status = (expr);                \
    if (status != SG_OK) goto done; \
  } while (0)

static sg_status run_module(check_state *s, const char *kind, const char *case_path,
                            const char *out_path, sg_error *error) {
  sg_status status = SG_OK;
  TRY(load_case_unet(s, case_path, error));
  const char *module = case_meta(s->file, "module", NULL);
  if (!module) TRY(sg_fail(error, SG_ERR_FORMAT, "%s: metadata 'module' is missing", case_path));
  sg_tensor x, out;
  TRY(case_tensor(s->file, "x", 1, &x, NULL, error));
  if (strcmp(kind, "resblock") == 0) {
    sg_tensor temb;
    TRY(case_tensor(s->file, "temb", 1, &temb, NULL, error));
    /* The block's output width (its stage's width) comes with the case. */
    const char *out_channels = case_meta(s->file, "out_channels", NULL);
    if (!out_channels)
      TRY(sg_fail(error, SG_ERR_FORMAT, "%s: metadata 'out_channels' is missing", case_path));
    int64_t dims[3] = {g_ascii_strtoll(out_channels, NULL, 10), x.dims[1], x.dims[2]};
    new_output(s, 0, 3, dims, &out);
    TRY(sg_unet_forward_res_block(s->unet, s->backend, s->arena, module, &x, &temb, &out,
                                  error));
  } else {
    sg_tensor context, mask;
    int has_mask;
    TRY(case_tensor(s->file, "context", 1, &context, NULL, error));
    TRY(case_tensor(s->file, "context_mask", 0, &mask, &has_mask, error));
    new_output(s, 0, 3, x.dims, &out);
    TRY(sg_unet_forward_transformer(s->unet, s->backend, s->arena, module, &x, &context,
                                    has_mask ? mask.data : NULL, &out, error));
  }
  const char *names[] = {"out"};
  TRY(sg_safetensors_write(out_path, 1, names, &out, NULL, error));
done:
  return status;
}

/* Counts for reports and the test: analytic, fetched by loading, FLOPs at the input size. */
static sg_status write_unet_counts(check_state *s, const char *out_path, int count,
                                   const char *const *names, const sg_tensor *tensors,
                                   int64_t height, int64_t width, int64_t tokens,
                                   sg_error *error) {
  char analytic[32], loaded[32], flops[64];
  snprintf(analytic, sizeof analytic, "%lld",
           (long long)sg_unet_parameter_count(&s->unet_config));
  snprintf(loaded, sizeof loaded, "%lld",
           (long long)(s->weights ? sg_weights_parameter_count(s->weights) : -1));
  snprintf(flops, sizeof flops, "%.17g",
           sg_unet_flops(&s->unet_config, (int)height, (int)width, (int)tokens));
  const char *metadata[] = {"parameter_count", analytic, "loaded_parameter_count", loaded,
                            "flops", flops, NULL};
  return sg_safetensors_write(out_path, count, names, tensors, metadata, error);
}

static sg_status run_unet(check_state *s, const char *case_path, const char *out_path,
                          sg_error *error) {
  sg_status status = SG_OK;
  if (strcmp(case_meta(s->file, "count_only", "0"), "1") == 0) {
    /* Only the counts of the config (e.g. the full-size one, without weights). */
    sg_json *json = NULL;
    TRY(parse_config(s->file, "config", &json, error));
    status = sg_unet_config_from_json(json, &s->unet_config, error);
    sg_json_free(json);
    if (status != SG_OK) goto done;
    int64_t height = g_ascii_strtoll(case_meta(s->file, "height", "128"), NULL, 10);
    int64_t width = g_ascii_strtoll(case_meta(s->file, "width", "128"), NULL, 10);
    int64_t tokens = g_ascii_strtoll(case_meta(s->file, "tokens", "77"), NULL, 10);
    TRY(write_unet_counts(s, out_path, 0, NULL, NULL, height, width, tokens, error));
    goto done;
  }
  TRY(load_case_unet(s, case_path, error));
  sg_tensor x, timestep, context, mask, pooled, out;
  int has_mask, has_pooled;
  TRY(case_tensor(s->file, "x", 1, &x, NULL, error));
  TRY(case_tensor(s->file, "timestep", 1, &timestep, NULL, error));
  TRY(case_tensor(s->file, "context", 1, &context, NULL, error));
  TRY(case_tensor(s->file, "context_mask", 0, &mask, &has_mask, error));
  TRY(case_tensor(s->file, "pooled", 0, &pooled, &has_pooled, error));
  if (x.ndim != 3 || sg_tensor_numel(&timestep) != 1)
    TRY(sg_fail(error, SG_ERR_FORMAT, "%s: x must be [C, H, W] and timestep [1]", case_path));
  int64_t dims[3] = {s->unet_config.out_channels, x.dims[1], x.dims[2]};
  new_output(s, 0, 3, dims, &out);
  TRY(sg_unet_forward(s->unet, s->backend, s->arena, &x, ((float *)timestep.data)[0], &context,
                      has_mask ? mask.data : NULL, has_pooled ? &pooled : NULL, &out, error));
  const char *names[] = {"out"};
  TRY(write_unet_counts(s, out_path, 1, names, &out, x.dims[1], x.dims[2], context.dims[0],
                        error));
done:
  return status;
}

static sg_status run_decoder(check_state *s, const char *case_path, const char *out_path,
                             sg_error *error) {
  sg_status status = SG_OK;
  sg_json *json = NULL;
  sg_decoder_config config;
  TRY(parse_config(s->file, "config", &json, error));
  status = sg_decoder_config_from_json(json, &config, error);
  sg_json_free(json);
  if (status != SG_OK) goto done;
  TRY(open_case_weights(s, case_path, error));
  TRY(sg_decoder_load(&config, s->weights, &s->decoder, error));
  sg_tensor latent, image;
  TRY(case_tensor(s->file, "latent", 1, &latent, NULL, error));
  if (latent.ndim != 3)
    TRY(sg_fail(error, SG_ERR_FORMAT, "%s: latent must be [C, h, w]", case_path));
  int scale = sg_decoder_scale(&config);
  int64_t dims[3] = {config.out_channels, latent.dims[1] * scale, latent.dims[2] * scale};
  new_output(s, 0, 3, dims, &image);
  TRY(sg_decoder_forward_tiled(s->decoder, s->backend, s->arena, &latent, 0, 0, &image, error));
  const int tile = atoi(case_meta(s->file, "tile", "0"));
  const int whole_stages = atoi(case_meta(s->file, "whole_stages", "-1"));
  sg_tensor outputs[2] = {image};
  if (tile > 0) {
    new_output(s, 1, 3, dims, &outputs[1]);
    TRY(sg_decoder_forward_tiled(s->decoder, s->backend, s->arena, &latent, tile, whole_stages,
                                 &outputs[1], error));
  }
  const char *names[] = {"image", "image_tiled"};
  char analytic[32], loaded[32];
  snprintf(analytic, sizeof analytic, "%lld", (long long)sg_decoder_parameter_count(&config));
  snprintf(loaded, sizeof loaded, "%lld", (long long)sg_weights_parameter_count(s->weights));
  const char *metadata[] = {"parameter_count", analytic, "loaded_parameter_count", loaded, NULL};
  TRY(sg_safetensors_write(out_path, tile > 0 ? 2 : 1, names, outputs, metadata, error));
done:
  return status;
}

static sg_status run_sampler(check_state *s, const char *case_path, const char *out_path,
                             sg_error *error) {
  sg_status status = SG_OK;
  sg_scheduler_config *scheduler = g_new0(sg_scheduler_config, 1);
  double *t = NULL;
  const char *model_dir = case_meta(s->file, "model_dir", NULL);
  if (!model_dir)
    TRY(sg_fail(error, SG_ERR_FORMAT, "%s: metadata 'model_dir' is missing", case_path));
  char *unet_dir = g_build_filename(model_dir, "unet", NULL);
  char *decoder_dir = g_build_filename(model_dir, "decoder", NULL);
  char *unet_json = g_build_filename(unet_dir, "config.json", NULL);
  char *decoder_json = g_build_filename(decoder_dir, "config.json", NULL);
  char *scheduler_json = g_build_filename(model_dir, "scheduler", "scheduler_config.json", NULL);
  sg_unet_config unet_config;
  sg_decoder_config decoder_config;
  status = sg_unet_config_load(unet_json, &unet_config, error);
  if (status == SG_OK) status = sg_decoder_config_load(decoder_json, &decoder_config, error);
  if (status == SG_OK) status = sg_scheduler_config_load(scheduler_json, scheduler, error);
  if (status == SG_OK) status = sg_weights_open_folder(unet_dir, &s->weights, error);
  if (status == SG_OK) status = sg_weights_open_folder(decoder_dir, &s->decoder_weights, error);
  if (status == SG_OK) status = sg_unet_load(&unet_config, s->weights, &s->unet, error);
  if (status == SG_OK)
    status = sg_decoder_load(&decoder_config, s->decoder_weights, &s->decoder, error);
  g_free(unet_dir);
  g_free(decoder_dir);
  g_free(unet_json);
  g_free(decoder_json);
  g_free(scheduler_json);
  if (status != SG_OK) goto done;

  uint64_t seed = g_ascii_strtoull(case_meta(s->file, "seed", "0"), NULL, 10);
  int steps = (int)g_ascii_strtoll(case_meta(s->file, "steps", "0"), NULL, 10);
  if (steps == 0) steps = scheduler->default_steps;
  const char *guidance_text = case_meta(s->file, "guidance", NULL);
  double guidance = guidance_text ? g_ascii_strtod(guidance_text, NULL)
                                  : scheduler->default_guidance;
  int scale = sg_decoder_scale(&decoder_config);
  int64_t height = g_ascii_strtoll(case_meta(s->file, "height", "0"), NULL, 10);
  int64_t width = g_ascii_strtoll(case_meta(s->file, "width", "0"), NULL, 10);
  if (height <= 0 || width <= 0 || height % scale || width % scale)
    TRY(sg_fail(error, SG_ERR_FORMAT, "%s: height/width must be positive multiples of %d",
                case_path, scale));

  sg_tensor context, mask, pooled, neg_context, neg_mask, neg_pooled;
  int has_mask, has_pooled, has_neg, has_neg_mask, has_neg_pooled;
  TRY(case_tensor(s->file, "context", 1, &context, NULL, error));
  TRY(case_tensor(s->file, "context_mask", 0, &mask, &has_mask, error));
  TRY(case_tensor(s->file, "pooled", 0, &pooled, &has_pooled, error));
  TRY(case_tensor(s->file, "negative_context", 0, &neg_context, &has_neg, error));
  TRY(case_tensor(s->file, "negative_context_mask", 0, &neg_mask, &has_neg_mask, error));
  TRY(case_tensor(s->file, "negative_pooled", 0, &neg_pooled, &has_neg_pooled, error));
  int use_guidance = guidance > 1.0;
  if (use_guidance && !has_neg)
    TRY(sg_fail(error, SG_ERR_FORMAT, "%s: guidance %g needs 'negative_context'", case_path,
                guidance));

  t = g_new(double, steps + 1);
  TRY(sg_sampler_timesteps(scheduler, steps, t, error));
  int64_t latent_dims[3] = {unet_config.in_channels, height / scale, width / scale};
  int64_t v_dims[3] = {unet_config.out_channels, height / scale, width / scale};
  int64_t image_dims[3] = {decoder_config.out_channels, height, width};
  sg_tensor latent, v, v_uncond, image;
  new_output(s, 0, 3, latent_dims, &latent);
  new_output(s, 1, 3, v_dims, &v);
  new_output(s, 2, 3, v_dims, &v_uncond);
  new_output(s, 3, 3, image_dims, &image);
  int64_t count = sg_tensor_numel(&latent);
  if (sg_tensor_numel(&v) != count)
    TRY(sg_fail(error, SG_ERR_FORMAT, "%s: the UNet's in and out channels differ", case_path));
  sg_normal_fill(seed, 0, latent.data, count);
  for (int i = 0; i < steps; i++) {
    float timestep = (float)(t[i] * 1000.0);
    TRY(sg_unet_forward(s->unet, s->backend, s->arena, &latent, timestep, &context,
                        has_mask ? mask.data : NULL, has_pooled ? &pooled : NULL, &v, error));
    if (use_guidance) {
      TRY(sg_unet_forward(s->unet, s->backend, s->arena, &latent, timestep, &neg_context,
                          has_neg_mask ? neg_mask.data : NULL,
                          has_neg_pooled ? &neg_pooled : NULL, &v_uncond, error));
      sg_guidance_combine(v.data, v_uncond.data, count, guidance);
    }
    sg_euler_step(latent.data, v.data, count, t[i], t[i + 1]);
  }
  TRY(sg_decoder_forward(s->decoder, s->backend, s->arena, &latent, &image, error));
  const char *names[] = {"latent", "image"};
  sg_tensor outputs[2] = {latent, image};
  TRY(sg_safetensors_write(out_path, 2, names, outputs, NULL, error));
done:
  g_free(t);
  g_free(scheduler);
  return status;
}

int check_models_main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: sgcheck resblock|transformer|unet|decoder|sampler CASE OUT\n");
    return 2;
  }
  const char *kind = argv[0], *case_path = argv[1], *out_path = argv[2];
  sg_error error = {0};
  check_state s;
  memset(&s, 0, sizeof s);
  sg_status status = sg_safetensors_open(case_path, &s.file, &error);
  if (status == SG_OK) {
    const char *backend_name = case_meta(s.file, "backend", "onednn");
    sg_backend_kind backend_kind = SG_BACKEND_ONEDNN;
    if (strcmp(backend_name, "reference") == 0) {
      backend_kind = SG_BACKEND_REFERENCE;
    } else if (strcmp(backend_name, "onednn") != 0) {
      status = sg_fail(&error, SG_ERR_FORMAT, "%s: unknown backend '%s'", case_path,
                       backend_name);
    }
    int threads = (int)g_ascii_strtoll(case_meta(s.file, "threads", "0"), NULL, 10);
    if (status == SG_OK) {
      s.backend = sg_backend_new(backend_kind, threads, &error);
      if (!s.backend) status = error.status ? error.status : SG_ERR_BACKEND;
    }
    if (status == SG_OK) s.arena = sg_arena_new();
  }
  if (status == SG_OK) {
    if (strcmp(kind, "resblock") == 0 || strcmp(kind, "transformer") == 0) {
      status = run_module(&s, kind, case_path, out_path, &error);
    } else if (strcmp(kind, "unet") == 0) {
      status = run_unet(&s, case_path, out_path, &error);
    } else if (strcmp(kind, "decoder") == 0) {
      status = run_decoder(&s, case_path, out_path, &error);
    } else if (strcmp(kind, "sampler") == 0) {
      status = run_sampler(&s, case_path, out_path, &error);
    } else {
      status = sg_fail(&error, SG_ERR_INVALID_ARGUMENT, "unknown check kind '%s'", kind);
    }
  }
  release(&s);
  if (status != SG_OK) {
    fprintf(stderr, "sgcheck %s: %s\n", kind, error.message);
    return 1;
  }
  return 0;
}
