/* test_sampler.c: unit tests of the sampler (timestep schedules, time shift, Euler step, guidance,
 * scheduler_config.json checks) and of the model configs and forward passes (models/...): config
 * checks, parameter counts, a forward on random weights. The numerics of the models are checked
 * against PyTorch in tests/ref/test_models.py. */
#include <glib/gstdio.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decoder.h"
#include "safetensors.h"
#include "sampler.h"
#include "test.h"
#include "unet.h"

/* Writes text to a scratch file and loads it as a scheduler config. */
static sg_status load_text(sg_test *t, const char *text, sg_scheduler_config *config,
                           sg_error *error) {
  char path[512];
  sg_test_path(t, "scheduler_config.json", path, sizeof path);
  FILE *f = fopen(path, "w");
  if (!f) return SG_ERR_IO;
  fputs(text, f);
  fclose(f);
  return sg_scheduler_config_load(path, config, error);
}

static void test_time_shift(sg_test *t) {
  CHECK_NEAR(t, sg_time_shift(3.0, 0.0), 0.0, 0.0);
  CHECK_NEAR(t, sg_time_shift(3.0, 1.0), 1.0, 1e-15);
  CHECK_NEAR(t, sg_time_shift(3.0, 0.5), 0.75, 1e-15);  /* 1.5 / 2 */
  CHECK_NEAR(t, sg_time_shift(3.0, 0.25), 0.5, 1e-15);  /* 0.75 / 1.5 */
  CHECK_NEAR(t, sg_time_shift(1.0, 0.3), 0.3, 1e-15);   /* no shift */
  CHECK_NEAR(t, sg_time_shift(0.5, 0.5), 1.0 / 3.0, 1e-15);
  /* Every allowed shift (1e-3..1e3) gives exactly 1 at t = 1 and a schedule in (0, 1] that
   * strictly decreases (the fuzzer found 1 + 2^-52 at t = 1 for shift 0.2). */
  const double shifts[] = {1e-3, 0.2, 0.7, 1.0, 3.0, 1e3};
  for (size_t k = 0; k < sizeof shifts / sizeof shifts[0]; k++) {
    CHECK(t, sg_time_shift(shifts[k], 1.0) == 1.0);
    for (int steps = 1; steps <= SG_MAX_STEPS; steps *= 10) {
      for (int i = 0; i < steps; i++) {
        double now = sg_time_shift(shifts[k], 1.0 - (double)i / steps);
        double next = sg_time_shift(shifts[k], 1.0 - (double)(i + 1) / steps);
        CHECK_MSG(t, now > next && now > 0.0 && now <= 1.0, "shift %g, %d steps, i %d: %.17g",
                  shifts[k], steps, i, now);
      }
    }
  }
}

static void test_explicit_list(sg_test *t) {
  sg_scheduler_config *c = calloc(1, sizeof *c);
  sg_error error = {0};
  CHECK_INT(t, load_text(t,
                         "{\"timesteps\": [1.0, 0.75, 0.5, 0.25], \"shift\": 3.0, "
                         "\"default_steps\": 4, \"default_guidance\": 1.0}",
                         c, &error),
            SG_OK);
  CHECK_INT(t, c->num_timesteps, 4);
  CHECK_INT(t, c->default_steps, 4);
  CHECK_NEAR(t, c->shift, 3.0, 0);
  CHECK_NEAR(t, c->default_guidance, 1.0, 0);
  double ts[SG_MAX_STEPS + 1];
  CHECK_INT(t, sg_sampler_timesteps(c, 4, ts, &error), SG_OK);
  const double want[5] = {1.0, 0.75, 0.5, 0.25, 0.0};
  for (int i = 0; i < 5; i++) CHECK_NEAR(t, ts[i], want[i], 0);
  /* Another step count: the shifted uniform schedule, ending at 0. */
  CHECK_INT(t, sg_sampler_timesteps(c, 2, ts, &error), SG_OK);
  CHECK_NEAR(t, ts[0], 1.0, 1e-15);
  CHECK_NEAR(t, ts[1], 0.75, 1e-15);
  CHECK_NEAR(t, ts[2], 0.0, 0);
  free(c);
}

static void test_shift_schedule(sg_test *t) {
  sg_scheduler_config *c = calloc(1, sizeof *c);
  sg_error error = {0};
  CHECK_INT(t, load_text(t, "{\"shift\": 3.0, \"default_steps\": 28, \"default_guidance\": 4.5}",
                         c, &error),
            SG_OK);
  CHECK_INT(t, c->num_timesteps, 0);
  CHECK_INT(t, c->default_steps, 28);
  CHECK_NEAR(t, c->default_guidance, 4.5, 0);
  double ts[SG_MAX_STEPS + 1];
  CHECK_INT(t, sg_sampler_timesteps(c, 8, ts, &error), SG_OK);
  for (int i = 0; i < 8; i++) {
    CHECK_NEAR(t, ts[i], sg_time_shift(3.0, 1.0 - i / 8.0), 1e-15);
    CHECK(t, ts[i] > ts[i + 1]);
  }
  CHECK_NEAR(t, ts[8], 0.0, 0);
  CHECK_INT(t, sg_sampler_timesteps(c, 1, ts, &error), SG_OK);
  CHECK_NEAR(t, ts[0], 1.0, 1e-15);
  CHECK_NEAR(t, ts[1], 0.0, 0);
  CHECK_INT(t, sg_sampler_timesteps(c, 0, ts, &error), SG_ERR_INVALID_ARGUMENT);
  CHECK_INT(t, sg_sampler_timesteps(c, SG_MAX_STEPS + 1, ts, &error), SG_ERR_INVALID_ARGUMENT);
  CHECK(t, strstr(error.message, "steps") != NULL);
  CHECK_INT(t, sg_sampler_timesteps(c, SG_MAX_STEPS, ts, &error), SG_OK);
  free(c);
}

static void test_bad_configs(sg_test *t) {
  sg_scheduler_config *c = calloc(1, sizeof *c);
  sg_error error = {0};
  const char *bad[] = {
      "{\"timesteps\": [1.0, 0.5, 0.75], \"default_steps\": 3}",  /* not decreasing */
      "{\"timesteps\": [1.0, 0.5, 0.5], \"default_steps\": 3}",   /* repeated */
      "{\"timesteps\": [1.5, 0.5], \"default_steps\": 2}",        /* above 1 */
      "{\"timesteps\": [1.0, 0.0], \"default_steps\": 2}",        /* 0 is where sampling ends */
      "{\"timesteps\": [1.0, 0.5], \"default_steps\": 0}",        /* steps 0 */
      "{\"timesteps\": [1.0, 0.5], \"default_steps\": 1001}",     /* above SG_MAX_STEPS */
      "{\"shift\": 3.0}",                                         /* no list, no default steps */
      "{\"shift\": -1.0, \"default_steps\": 4}",                  /* negative shift */
      "{\"timesteps\": \"fast\", \"default_steps\": 4}",          /* not an array */
      "{\"shift\": 3.0, \"default_steps\": 4, \"default_guidance\": -2}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    memset(&error, 0, sizeof error);
    sg_status status = load_text(t, bad[i], c, &error);
    CHECK_MSG(t, status == SG_ERR_FORMAT, "bad config %zu accepted: %s", i, bad[i]);
    CHECK_MSG(t, strstr(error.message, "scheduler_config.json") != NULL,
              "message does not name the file: %s", error.message);
  }
  /* With a list, default_steps defaults to its length. */
  CHECK_INT(t, load_text(t, "{\"timesteps\": [1.0, 0.6]}", c, &error), SG_OK);
  CHECK_INT(t, c->default_steps, 2);
  CHECK_NEAR(t, c->shift, 3.0, 0);
  free(c);
}

static void test_euler_and_guidance(sg_test *t) {
  float x[4] = {1.0f, -2.0f, 0.5f, 0.0f};
  const float v[4] = {2.0f, 4.0f, -1.0f, 8.0f};
  sg_euler_step(x, v, 4, 1.0, 0.75); /* x += -0.25 v */
  CHECK_NEAR(t, x[0], 0.5, 1e-7);
  CHECK_NEAR(t, x[1], -3.0, 1e-7);
  CHECK_NEAR(t, x[2], 0.75, 1e-7);
  CHECK_NEAR(t, x[3], -2.0, 1e-7);
  /* Euler to t = 0 on the straight path x_t = (1-t) x0 + t eps with the exact v = eps - x0. */
  const float x0 = 0.3f, eps = -1.2f;
  float xt = 0.4f * x0 + 0.6f * eps, velocity = eps - x0;
  sg_euler_step(&xt, &velocity, 1, 0.6, 0.0);
  CHECK_NEAR(t, xt, x0, 1e-6);

  float cond[3] = {1.0f, 2.0f, -1.0f};
  const float uncond[3] = {0.0f, 1.0f, 1.0f};
  sg_guidance_combine(cond, uncond, 3, 1.0); /* w = 1: the conditional prediction */
  CHECK_NEAR(t, cond[0], 1.0, 0);
  CHECK_NEAR(t, cond[1], 2.0, 0);
  CHECK_NEAR(t, cond[2], -1.0, 0);
  sg_guidance_combine(cond, uncond, 3, 4.0); /* u + 4 (c - u) */
  CHECK_NEAR(t, cond[0], 4.0, 1e-6);
  CHECK_NEAR(t, cond[1], 5.0, 1e-6);
  CHECK_NEAR(t, cond[2], -7.0, 1e-6);
  float zero_w[1] = {3.0f};
  const float zero_u[1] = {-1.0f};
  sg_guidance_combine(zero_w, zero_u, 1, 0.0); /* w = 0: the unconditional prediction */
  CHECK_NEAR(t, zero_w[0], -1.0, 0);
}

/* ------------------------------------------------------------------------------------------- */

/* weights/configs/snapgen-unet-full.json */
static const char *full_unet_json =
    "{\"in_channels\": 16, \"out_channels\": 16, \"block_channels\": [256, 512, 896],"
    " \"down_res_blocks\": [2, 2, 2], \"up_res_blocks\": [3, 3, 3],"
    " \"transformer_depth\": [1, 2, 4], \"self_attention\": [false, false, true],"
    " \"mid_transformer_depth\": 4, \"mid_self_attention\": true, \"head_dim\": 64,"
    " \"num_kv_heads\": 1, \"context_dim\": 1024, \"ffn_type\": \"geglu\", \"ffn_mult\": 3,"
    " \"separable\": true, \"expansion\": 2, \"time_proj_dim\": 256, \"time_embed_dim\": 1024,"
    " \"flip_sin_to_cos\": true, \"pooled_dim\": 2048, \"norm_groups\": 32,"
    " \"norm_eps\": 1e-05, \"qk_norm\": true, \"qk_norm_eps\": 1e-06}";

/* A tiny UNet (weights/configs/test-unet-tiny.json) with fields replaced by `changes` (a JSON
 * object's members without braces, placed last so they win in json-glib). */
static sg_status tiny_unet(sg_test *t, const char *changes, sg_unet_config *config,
                           sg_error *error) {
  char text[2048], path[512];
  snprintf(text, sizeof text,
           "{\"in_channels\": 16, \"out_channels\": 16, \"block_channels\": [32, 64],"
           " \"down_res_blocks\": [1, 2], \"up_res_blocks\": [2, 3],"
           " \"transformer_depth\": [1, 1], \"self_attention\": [false, true],"
           " \"mid_transformer_depth\": 1, \"mid_self_attention\": true, \"head_dim\": 16,"
           " \"num_kv_heads\": 2, \"context_dim\": 32, \"ffn_type\": \"geglu\","
           " \"ffn_mult\": 3, \"separable\": true, \"expansion\": 2, \"time_proj_dim\": 32,"
           " \"time_embed_dim\": 64, \"flip_sin_to_cos\": true, \"pooled_dim\": 48,"
           " \"norm_groups\": 8, \"norm_eps\": 1e-05, \"qk_norm\": true, \"qk_norm_eps\": 1e-06"
           "%s%s}",
           changes && *changes ? ", " : "", changes ? changes : "");
  sg_test_path(t, "config.json", path, sizeof path);
  FILE *f = fopen(path, "w");
  if (!f) return SG_ERR_IO;
  fputs(text, f);
  fclose(f);
  return sg_unet_config_load(path, config, error);
}

static void test_unet_config(sg_test *t) {
  sg_unet_config c;
  sg_error error = {0};
  char path[512];
  sg_test_path(t, "full.json", path, sizeof path);
  FILE *f = fopen(path, "w");
  if (!CHECK(t, f != NULL)) return;
  fputs(full_unet_json, f);
  fclose(f);
  if (!CHECK_MSG(t, sg_unet_config_load(path, &c, &error) == SG_OK, "%s", error.message)) return;
  CHECK_INT(t, c.num_stages, 3);
  CHECK_INT(t, c.block_channels[2], 896);
  CHECK_INT(t, c.transformer_depth[2], 4);
  CHECK_INT(t, c.self_attention[1], 0);
  CHECK_INT(t, c.self_attention[2], 1);
  CHECK_INT(t, c.ffn_geglu, 1);
  CHECK_INT(t, c.pooled_dim, 2048);
  /* The recipe's analytic count (sgrecipe.unet.parameter_count) of the same config. */
  CHECK_INT(t, sg_unet_parameter_count(&c), 383955984);
  double flops = sg_unet_flops(&c, 128, 128, 77);
  CHECK_MSG(t, flops > 1.3e12 && flops < 1.5e12, "flops at 1024x1024: %g", flops);

  /* An empty object is the full-size model (the recipe's defaults). */
  sg_unet_config defaults;
  sg_test_path(t, "empty.json", path, sizeof path);
  f = fopen(path, "w");
  if (!CHECK(t, f != NULL)) return;
  fputs("{}", f);
  fclose(f);
  CHECK_INT(t, sg_unet_config_load(path, &defaults, &error), SG_OK);
  CHECK_INT(t, sg_unet_parameter_count(&defaults), 383955984);

  CHECK_MSG(t, tiny_unet(t, NULL, &c, &error) == SG_OK, "%s", error.message);
  CHECK_INT(t, sg_unet_parameter_count(&c), 802256); /* recipe: 802256 */
}

static void test_unet_config_errors(sg_test *t) {
  struct {
    const char *changes, *field;
  } bad[] = {
      {"\"block_channels\": [36, 64]", "norm_groups"},           /* 36 % 8 */
      {"\"head_dim\": 24", "head_dim"},                          /* 32 % 24 */
      {"\"num_kv_heads\": 3", "num_kv_heads"},                   /* 2 heads / 3 */
      {"\"block_channels\": [32, 64, 64, 64, 64]", "block_channels"}, /* 5 stages */
      {"\"down_res_blocks\": [1]", "down_res_blocks"},           /* length */
      {"\"self_attention\": [true, true, true]", "self_attention"},
      {"\"transformer_depth\": [1, 17]", "transformer_depth"},   /* depth above 16 */
      {"\"up_res_blocks\": [2, 2]", "up_res_blocks"},            /* pops 4 of 5 skips */
      {"\"ffn_type\": \"swiglu\"", "ffn_type"},
      {"\"expansion\": 1.3", "expansion"},                       /* 1.3 x 32 not whole */
      {"\"ffn_mult\": 2.01", "ffn_mult"},
      {"\"time_proj_dim\": 33", "time_proj_dim"},
      {"\"norm_eps\": 0", "norm_eps"},
      {"\"block_channels\": []", "block_channels"},
      {"\"context_dim\": \"wide\"", "context_dim"},
      {"\"in_channels\": 100000", "in_channels"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    sg_unet_config c;
    sg_error error = {0};
    sg_status status = tiny_unet(t, bad[i].changes, &c, &error);
    CHECK_MSG(t, status == SG_ERR_FORMAT, "accepted: %s", bad[i].changes);
    CHECK_MSG(t, strstr(error.message, "config.json") && strstr(error.message, bad[i].field),
              "%s: message does not name the file and '%s': %s", bad[i].changes, bad[i].field,
              error.message);
  }
}

static void test_decoder_config(sg_test *t) {
  char path[512];
  sg_error error = {0};
  sg_decoder_config c;
  struct {
    const char *text;
    int ok;
    const char *field;
  } cases[] = {
      {"{\"latent_channels\": 16, \"out_channels\": 3, \"channels\": [320, 160, 80, 48],"
       " \"blocks\": [3, 3, 3, 1], \"separable\": true, \"latent_clamp\": 3.0}",
       1, NULL},
      {"{\"channels\": [32, 24], \"blocks\": [1]}", 0, "blocks"},
      /* one stage over SG_DECODER_MAX_STAGES (8) */
      {"{\"channels\": [32, 24, 16, 8, 8, 8, 8, 8, 8], \"blocks\": [1, 1, 1, 1, 1, 1, 1, 1, 1]}",
       0, "channels"},
      {"{\"channels\": [32], \"blocks\": [1], \"latent_clamp\": -1}", 0, "latent_clamp"},
      {"{\"channels\": [0], \"blocks\": [1]}", 0, "channels"},
      {"{\"channels\": [8], \"blocks\": [17]}", 0, "blocks"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    sg_test_path(t, "config.json", path, sizeof path);
    FILE *f = fopen(path, "w");
    if (!CHECK(t, f != NULL)) return;
    fputs(cases[i].text, f);
    fclose(f);
    sg_status status = sg_decoder_config_load(path, &c, &error);
    if (cases[i].ok) {
      CHECK_MSG(t, status == SG_OK, "%s", error.message);
      CHECK_INT(t, c.num_stages, 4);
      CHECK_INT(t, sg_decoder_scale(&c), 8);
      /* sgrecipe.decoder.parameter_count of this config */
      CHECK_INT(t, sg_decoder_parameter_count(&c), 1388931);
    } else {
      CHECK_MSG(t, status == SG_ERR_FORMAT, "accepted: %s", cases[i].text);
      CHECK_MSG(t, strstr(error.message, cases[i].field) != NULL, "%s", error.message);
    }
  }
}

/* The tiny UNet on random weights: finite output, deterministic, the arena back at its mark,
 * and bad shapes refused. */
static void test_unet_forward(sg_test *t) {
  sg_unet_config c;
  sg_error error = {0};
  if (!CHECK_MSG(t, tiny_unet(t, NULL, &c, &error) == SG_OK, "%s", error.message)) return;
  sg_weights *weights = sg_weights_new_random(7);
  sg_backend *be = sg_backend_new(SG_BACKEND_REFERENCE, 1, &error);
  sg_arena *arena = sg_arena_new();
  sg_unet *unet = NULL;
  if (!CHECK_MSG(t, sg_unet_load(&c, weights, &unet, &error) == SG_OK, "%s", error.message)) {
    sg_weights_free(weights);
    return;
  }
  CHECK_INT(t, sg_weights_parameter_count(weights), sg_unet_parameter_count(&c));
  enum { H = 8, W = 8, S = 3 };
  static float x_data[16 * H * W], context_data[S * 32], out1[16 * H * W], out2[16 * H * W];
  for (int i = 0; i < 16 * H * W; i++) x_data[i] = sinf(0.37f * i);
  for (int i = 0; i < S * 32; i++) context_data[i] = cosf(0.11f * i);
  const float mask[S] = {1, 1, 0};
  sg_tensor x = sg_tensor_3d(x_data, 16, H, W), context = sg_tensor_2d(context_data, S, 32);
  sg_tensor y1 = sg_tensor_3d(out1, 16, H, W), y2 = sg_tensor_3d(out2, 16, H, W);
  size_t mark = sg_arena_mark(arena);
  CHECK_MSG(t, sg_unet_forward(unet, be, arena, &x, 500.0f, &context, mask, NULL, &y1, &error) ==
                   SG_OK,
            "%s", error.message);
  CHECK_INT(t, sg_arena_mark(arena), mark);
  CHECK(t, sg_unet_forward(unet, be, arena, &x, 500.0f, &context, mask, NULL, &y2, &error) ==
               SG_OK);
  int finite = 1, nonzero = 0;
  for (int i = 0; i < 16 * H * W; i++) {
    finite &= isfinite(out1[i]) != 0;
    nonzero |= out1[i] != 0.0f;
  }
  CHECK(t, finite && nonzero);
  CHECK(t, memcmp(out1, out2, sizeof out1) == 0);
  /* A different timestep changes the output. */
  CHECK(t, sg_unet_forward(unet, be, arena, &x, 20.0f, &context, mask, NULL, &y2, &error) ==
               SG_OK);
  CHECK(t, memcmp(out1, out2, sizeof out1) != 0);

  /* Two stages: the latent's sides must be even. */
  sg_tensor odd = sg_tensor_3d(x_data, 16, 7, 8), odd_out = sg_tensor_3d(out2, 16, 7, 8);
  CHECK_INT(t, sg_unet_forward(unet, be, arena, &odd, 1.0f, &context, NULL, NULL, &odd_out, &error),
            SG_ERR_INVALID_ARGUMENT);
  CHECK_INT(t, sg_arena_mark(arena), mark);
  sg_tensor narrow = sg_tensor_2d(context_data, S, 16);
  CHECK_INT(t, sg_unet_forward(unet, be, arena, &x, 1.0f, &narrow, NULL, NULL, &y1, &error),
            SG_ERR_INVALID_ARGUMENT);
  CHECK(t, strstr(error.message, "context") != NULL);
  sg_unet_free(unet);
  sg_weights_free(weights);

  /* Loading from a folder that lacks a tensor, or has one of the wrong shape, names it. */
  char folder[512], file[600];
  sg_test_path(t, "unet", folder, sizeof folder);
  CHECK(t, g_mkdir(folder, 0700) == 0);
  snprintf(file, sizeof file, "%s/model.safetensors", folder);
  static float conv_in[32 * 16 * 3 * 3];
  const int64_t right[4] = {32, 16, 3, 3}, wrong[4] = {32, 16, 1, 1};
  for (int k = 0; k < 2; k++) {
    sg_tensor tensor = sg_tensor_view(conv_in, SG_F32, 4, k == 0 ? right : wrong);
    const char *names[] = {"conv_in.weight"};
    CHECK(t, sg_safetensors_write(file, 1, names, &tensor, NULL, &error) == SG_OK);
    sg_weights *partial = NULL;
    if (!CHECK_MSG(t, sg_weights_open_folder(folder, &partial, &error) == SG_OK, "%s",
                   error.message))
      break;
    CHECK_INT(t, sg_unet_load(&c, partial, &unet, &error), SG_ERR_FORMAT);
    CHECK(t, unet == NULL);
    CHECK_MSG(t, strstr(error.message, k == 0 ? "conv_in.bias" : "conv_in.weight") != NULL,
              "%s", error.message);
    sg_weights_free(partial);
  }
  sg_arena_free(arena);
  sg_backend_free(be);
}

void register_sampler_tests(sg_test_list *list) {
  sg_test_add(list, "sampler/time_shift", test_time_shift);
  sg_test_add(list, "sampler/explicit_list", test_explicit_list);
  sg_test_add(list, "sampler/shift_schedule", test_shift_schedule);
  sg_test_add(list, "sampler/bad_configs", test_bad_configs);
  sg_test_add(list, "sampler/euler_and_guidance", test_euler_and_guidance);
  sg_test_add(list, "models/unet_config", test_unet_config);
  sg_test_add(list, "models/unet_config_errors", test_unet_config_errors);
  sg_test_add(list, "models/decoder_config", test_decoder_config);
  sg_test_add(list, "models/unet_forward", test_unet_forward);
}
