/* fuzz_config.c: libFuzzer target: arbitrary bytes as a model folder's JSON configs: the UNet,
 * decoder and scheduler configs and the model index, then what the engine derives from them. */
#include <glib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "config.h"
#include "decoder.h"
#include "sampler.h"
#include "unet.h"

#define EXPECT(cond)                                                 \
  do {                                                               \
    if (!(cond)) {                                                   \
      fprintf(stderr, "fuzz_config: invariant broken: %s\n", #cond); \
      abort();                                                       \
    }                                                                \
  } while (0)

/* A failed parse must say so in words and with its status. */
static void expect_failure(sg_status status, const sg_error *error) {
  EXPECT(status == SG_ERR_FORMAT);
  EXPECT(error->status == status && error->message[0] != '\0');
}

static void try_unet(const sg_json *json) {
  sg_error error = {0};
  sg_unet_config config;
  sg_status status = sg_unet_config_from_json(json, &config, &error);
  if (status != SG_OK) {
    expect_failure(status, &error);
    return;
  }
  EXPECT(sg_unet_config_check(&config, "fuzz", &error) == SG_OK);
  EXPECT(config.num_stages >= 1 && config.num_stages <= SG_UNET_MAX_STAGES);
  int64_t parameters = sg_unet_parameter_count(&config);
  EXPECT(parameters > 0);
  /* the largest latent the pipeline asks for: 4096 px / 8, with a 4096-token context */
  double flops = sg_unet_flops(&config, 512, 512, 4096);
  EXPECT(flops >= 0);
}

static void try_decoder(const sg_json *json) {
  sg_error error = {0};
  sg_decoder_config config;
  sg_status status = sg_decoder_config_from_json(json, &config, &error);
  if (status != SG_OK) {
    expect_failure(status, &error);
    return;
  }
  EXPECT(sg_decoder_config_check(&config, "fuzz", &error) == SG_OK);
  int scale = sg_decoder_scale(&config);
  EXPECT(scale >= 1 && scale <= (1 << (SG_DECODER_MAX_STAGES - 1)));
  EXPECT(sg_decoder_parameter_count(&config) > 0);
}

static void try_scheduler(const sg_json *json) {
  sg_error error = {0};
  sg_scheduler_config *config = g_new(sg_scheduler_config, 1); /* 8 KB: keep it off the stack */
  sg_status status = sg_scheduler_config_from_json(json, config, &error);
  if (status != SG_OK) {
    expect_failure(status, &error);
    g_free(config);
    return;
  }
  EXPECT(config->default_steps >= 1 && config->default_steps <= SG_MAX_STEPS);
  int tries[] = {config->default_steps, 1, config->num_timesteps > 0 ? config->num_timesteps : 2,
                 SG_MAX_STEPS};
  double *t = g_new(double, SG_MAX_STEPS + 1);
  for (size_t i = 0; i < sizeof tries / sizeof tries[0]; i++) {
    EXPECT(sg_sampler_timesteps(config, tries[i], t, &error) == SG_OK);
    EXPECT(t[tries[i]] == 0.0);
    for (int s = 0; s < tries[i]; s++) EXPECT(t[s] > 0.0 && t[s] <= 1.0 && t[s] > t[s + 1]);
  }
  EXPECT(sg_sampler_timesteps(config, 0, t, &error) == SG_ERR_INVALID_ARGUMENT);
  EXPECT(sg_sampler_timesteps(config, SG_MAX_STEPS + 1, t, &error) == SG_ERR_INVALID_ARGUMENT);
  g_free(t);
  g_free(config);
}

/* model_index.json: what pipeline.c reads from it. */
static void try_index(const sg_json *json) {
  sg_error error = {0};
  (void)sg_json_has(json, "unet");
  (void)sg_json_has(json, "decoder");
  char *relative = NULL;
  if (sg_json_string(json, "conditioning", "", &relative, &error) == SG_OK) {
    char *path = g_build_filename("/model", relative, NULL);
    g_free(path);
  }
  g_free(relative);
}

/* The generic getters on a field the configs do not use, each with its own bounds. */
static void try_getters(const sg_json *json) {
  sg_error error = {0};
  int64_t ints[8];
  double floats[8];
  int bools[8], count = 0, flag = 0;
  double number = 0;
  int64_t integer = 0;
  (void)sg_json_int(json, "x", 0, 0, INT64_MIN, INT64_MAX, &integer, &error);
  (void)sg_json_float(json, "x", 0, 0, -1e308, 1e308, &number, &error);
  (void)sg_json_bool(json, "x", 1, 0, &flag, &error);
  (void)sg_json_int_array(json, "x", 8, -5, 5, ints, &count, &error);
  (void)sg_json_float_array(json, "x", 8, 0, 1, floats, &count, &error);
  (void)sg_json_bool_array(json, "x", 8, bools, &count, &error);
  (void)sg_json_int_array(json, "x", 0, 0, 0, ints, &count, &error);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  sg_error error = {0};
  sg_json *json = NULL;
  sg_status status = sg_json_parse((const char *)data, size, "fuzz/config.json", &json, &error);
  if (status != SG_OK) {
    expect_failure(status, &error);
    return 0;
  }
  EXPECT(json != NULL);
  try_unet(json);
  try_decoder(json);
  try_scheduler(json);
  try_index(json);
  try_getters(json);
  sg_json_free(json);
  return 0;
}
