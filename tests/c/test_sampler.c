/* test_sampler.c: unit tests of the sampler: timestep schedules, time shift, Euler step,
 * guidance, and scheduler_config.json checks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sampler.h"
#include "test.h"

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

void register_sampler_tests(sg_test_list *list) {
  sg_test_add(list, "sampler/time_shift", test_time_shift);
  sg_test_add(list, "sampler/explicit_list", test_explicit_list);
  sg_test_add(list, "sampler/shift_schedule", test_shift_schedule);
  sg_test_add(list, "sampler/bad_configs", test_bad_configs);
  sg_test_add(list, "sampler/euler_and_guidance", test_euler_and_guidance);
}
