/* sampler.h: flow-matching Euler sampling over an explicit timestep list, with time shift and
 * optional classifier-free guidance (SPEC §5). */
#ifndef SG_SAMPLER_H
#define SG_SAMPLER_H

#include "config.h"

#define SG_MAX_STEPS 1000

typedef struct {
  int num_timesteps;                 /* length of the explicit list (0: none, use shift schedule) */
  double timesteps[SG_MAX_STEPS];    /* t in (0,1], decreasing; sampling ends at 0 */
  double shift;                      /* α in t' = α t / (1 + (α-1) t), for generated schedules */
  int default_steps;
  double default_guidance;
} sg_scheduler_config;

sg_status sg_scheduler_config_load(const char *path, sg_scheduler_config *config,
                                   sg_error *error);
/* The same from an already parsed JSON object. */
sg_status sg_scheduler_config_from_json(const sg_json *json, sg_scheduler_config *config,
                                        sg_error *error);

/* Fills t[0..steps] (steps+1 values, t[steps] = 0). With an explicit list and steps equal to its
 * length, uses the list; otherwise t_i = shift(1 - i/steps). */
sg_status sg_sampler_timesteps(const sg_scheduler_config *config, int steps, double *t,
                               sg_error *error);
/* The time shift. */
double sg_time_shift(double shift, double t);

/* One Euler step: x += (t_next - t) * v, elementwise over count values. */
void sg_euler_step(float *x, const float *v, int64_t count, double t, double t_next);
/* Classifier-free guidance: v = v_uncond + w (v_cond - v_uncond), written into v_cond. */
void sg_guidance_combine(float *v_cond, const float *v_uncond, int64_t count, double w);

#endif
