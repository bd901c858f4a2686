/* sampler.c: the flow-matching Euler sampler's schedule (explicit list or shifted uniform),
 * Euler step and classifier-free guidance (SPEC §5, weights/README.md). */
#include "sampler.h"

#include <string.h>

#include "error.h"

#define TRY_CFG(expr)                     \
  do {                                    \
    sg_status status_ = (expr);           \
    if (status_ != SG_OK) return status_; \
  } while (0)

sg_status sg_scheduler_config_from_json(const sg_json *json, sg_scheduler_config *config,
                                        sg_error *error) {
  const char *path = sg_json_path(json);
  memset(config, 0, sizeof *config);
  if (sg_json_has(json, "timesteps")) {
    TRY_CFG(sg_json_float_array(json, "timesteps", SG_MAX_STEPS, 0.0, 1.0, config->timesteps,
                                &config->num_timesteps, error));
    for (int i = 0; i < config->num_timesteps; i++) {
      if (!(config->timesteps[i] > 0.0))
        return sg_fail(error, SG_ERR_FORMAT, "%s: field 'timesteps'[%d] must be in (0, 1]", path,
                       i);
      if (i > 0 && !(config->timesteps[i] < config->timesteps[i - 1]))
        return sg_fail(error, SG_ERR_FORMAT,
                       "%s: field 'timesteps' must decrease ([%d] = %g after %g)", path, i,
                       config->timesteps[i], config->timesteps[i - 1]);
    }
  }
  TRY_CFG(sg_json_float(json, "shift", 1, 3.0, 1e-3, 1e3, &config->shift, error));
  int64_t steps = 0;
  int has_list = config->num_timesteps > 0;
  TRY_CFG(sg_json_int(json, "default_steps", has_list, config->num_timesteps, 1, SG_MAX_STEPS,
                      &steps, error));
  config->default_steps = (int)steps;
  TRY_CFG(sg_json_float(json, "default_guidance", 1, 1.0, 0.0, 100.0, &config->default_guidance,
                        error));
  return SG_OK;
}

sg_status sg_scheduler_config_load(const char *path, sg_scheduler_config *config,
                                   sg_error *error) {
  sg_json *json = NULL;
  TRY_CFG(sg_json_load(path, &json, error));
  sg_status status = sg_scheduler_config_from_json(json, config, error);
  sg_json_free(json);
  return status;
}

/* α t / (1 + (α − 1) t), written as α t / (α t + (1 − t)) so that t = 1 gives exactly 1 and
 * no value exceeds 1 for any α (the first form gives 1 + 2^-52 at t = 1 when α = 0.2). */
double sg_time_shift(double shift, double t) {
  return shift * t / (shift * t + (1.0 - t));
}

sg_status sg_sampler_timesteps(const sg_scheduler_config *config, int steps, double *t,
                               sg_error *error) {
  if (steps < 1 || steps > SG_MAX_STEPS)
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "steps must be 1..%d (got %d)", SG_MAX_STEPS,
                   steps);
  if (config->num_timesteps == steps) {
    memcpy(t, config->timesteps, sizeof(double) * (size_t)steps);
  } else {
    for (int i = 0; i < steps; i++)
      t[i] = sg_time_shift(config->shift, 1.0 - (double)i / steps);
  }
  t[steps] = 0.0;
  return SG_OK;
}

void sg_euler_step(float *x, const float *v, int64_t count, double t, double t_next) {
  float dt = (float)(t_next - t);
  for (int64_t i = 0; i < count; i++) x[i] += dt * v[i];
}

void sg_guidance_combine(float *v_cond, const float *v_uncond, int64_t count, double w) {
  float scale = (float)w;
  for (int64_t i = 0; i < count; i++) v_cond[i] = v_uncond[i] + scale * (v_cond[i] - v_uncond[i]);
}
