/* cancel_test.c: cancels generations from another thread at random moments, 100 times, then
 * checks that the same context still makes the image a fresh context makes. Usage:
 * cancel_test MODEL_DIR [--runs N] [--seed N] [--backend onednn|reference] [--size PX] */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "snapgen.h"

typedef struct {
  const char *model;
  int runs;
  uint64_t seed;
  sg_backend_kind backend;
  int size;
} options;

/* What the progress callback and the cancelling thread share during one generation. Times are
 * the generating thread's CPU time (its own clock), so "promptly" means little work done after the
 * cancel, whatever else the machine runs; wall-clock times are reported too. */
typedef struct {
  clockid_t worker_clock;      /* CPU-time clock of the thread calling sg_generate */
  atomic_int cancel;           /* set by the other thread; the callback returns it */
  atomic_llong cancel_at_cpu;  /* the worker's CPU time when it was set */
  atomic_llong cancel_at_ns;   /* wall-clock time when it was set */
  long long delay_ns;          /* how long the other thread waits first */
  long long last_callback_cpu; /* calibration: the longest CPU stretch between callbacks */
  long long longest_gap_cpu;
  int callbacks_after_cancel; /* callbacks that saw the flag: the engine must stop at the first */
} cancel_state;

static long long clock_ns(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long now_ns(void) {
  return clock_ns(CLOCK_MONOTONIC);
}

/* xorshift64*: the test's own random numbers, reproducible from --seed. */
static uint64_t next_random(uint64_t *state) {
  *state ^= *state >> 12;
  *state ^= *state << 25;
  *state ^= *state >> 27;
  return *state * 0x2545F4914F6CDD1DULL;
}

static int on_progress(void *user_data, sg_stage stage, int step, int total) {
  (void)stage, (void)step, (void)total;
  cancel_state *state = user_data;
  long long now = clock_ns(CLOCK_THREAD_CPUTIME_ID);
  if (state->last_callback_cpu > 0 && now - state->last_callback_cpu > state->longest_gap_cpu)
    state->longest_gap_cpu = now - state->last_callback_cpu;
  state->last_callback_cpu = now;
  int cancel = atomic_load(&state->cancel);
  state->callbacks_after_cancel += cancel;
  return cancel;
}

static void *cancel_later(void *argument) {
  cancel_state *state = argument;
  struct timespec delay = {state->delay_ns / 1000000000LL, state->delay_ns % 1000000000LL};
  nanosleep(&delay, NULL);
  atomic_store(&state->cancel_at_cpu, clock_ns(state->worker_clock));
  atomic_store(&state->cancel_at_ns, now_ns());
  atomic_store(&state->cancel, 1);
  return NULL;
}

static void params_for(const options *opt, uint64_t seed, float guidance,
                       sg_generate_params *params) {
  sg_generate_params_init(params);
  params->prompt = "a red circle";
  params->seed = seed;
  params->steps = 4;
  params->guidance = guidance;
  params->width = params->height = opt->size;
}

static int new_context(const options *opt, sg_context **ctx) {
  sg_context_options context_options;
  sg_context_options_init(&context_options);
  context_options.threads = 1; /* byte-identical results need the same thread count */
  context_options.backend = opt->backend;
  sg_error error = {0};
  if (sg_context_new(opt->model, &context_options, ctx, &error) != SG_OK) {
    fprintf(stderr, "cancel_test: %s\n", error.message);
    return 0;
  }
  return 1;
}

/* One uncancelled generation into *rgba (with guidance, the slower path: two UNet passes a step);
 * fills the timing of the callbacks. */
static int generate(sg_context *ctx, const options *opt, uint64_t seed, uint8_t **rgba,
                    cancel_state *state) {
  sg_generate_params params;
  params_for(opt, seed, 3.0f, &params);
  sg_error error = {0};
  if (sg_generate(ctx, &params, on_progress, state, rgba, &error) != SG_OK) {
    fprintf(stderr, "cancel_test: generation failed: %s\n", error.message);
    return 0;
  }
  return 1;
}

static int parse_options(int argc, char **argv, options *opt) {
  memset(opt, 0, sizeof *opt);
  opt->runs = 100;
  opt->seed = (uint64_t)time(NULL);
  opt->backend = SG_BACKEND_ONEDNN;
  opt->size = 64;
  for (int i = 1; i < argc; i++) {
    const char *value = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(argv[i], "--runs") && value)
      opt->runs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--seed") && value)
      opt->seed = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--size") && value)
      opt->size = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--backend") && value) {
      opt->backend = !strcmp(argv[++i], "reference") ? SG_BACKEND_REFERENCE : SG_BACKEND_ONEDNN;
    } else if (argv[i][0] != '-' && !opt->model)
      opt->model = argv[i];
    else
      return 0;
  }
  return opt->model != NULL && opt->runs > 0 && opt->size > 0;
}

int main(int argc, char **argv) {
  options opt;
  if (!parse_options(argc, argv, &opt)) {
    fprintf(stderr,
            "usage: cancel_test MODEL_DIR [--runs N] [--seed N] "
            "[--backend onednn|reference] [--size PX]\n");
    return 2;
  }
  sg_context *ctx = NULL;
  if (!new_context(&opt, &ctx)) return 1;
  int failures = 0;

  clockid_t worker_clock;
  if (pthread_getcpuclockid(pthread_self(), &worker_clock) != 0) {
    fprintf(stderr, "cancel_test: no CPU-time clock for this thread\n");
    return 1;
  }
  /* Calibration: how long a generation takes and the longest stretch without a callback. */
  cancel_state timing = {0};
  uint8_t *before = NULL;
  if (!generate(ctx, &opt, 1234, &before, &timing)) return 1; /* warm-up: first-use setup */
  sg_free(before);
  memset(&timing, 0, sizeof timing);
  long long start = now_ns();
  if (!generate(ctx, &opt, 1234, &before, &timing)) return 1;
  long long full_ns = now_ns() - start;
  long long tail_cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID) - timing.last_callback_cpu;
  long long gap_cpu = timing.longest_gap_cpu > tail_cpu ? timing.longest_gap_cpu : tail_cpu;
  /* Prompt: back within two of the longest stretches between checks (CPU time of the generating
   * thread), plus 20 ms for the clean-up. */
  long long allowed_cpu = 2 * gap_cpu + 20000000LL;
  printf(
      "cancel_test: seed %llu, one generation %.1f ms, longest stretch without a check "
      "%.1f ms CPU, cancel must return within %.1f ms CPU\n",
      (unsigned long long)opt.seed, full_ns / 1e6, gap_cpu / 1e6, allowed_cpu / 1e6);

  uint64_t random_state = opt.seed | 1;
  int cancelled = 0, finished = 0;
  long long worst_cpu = 0, worst_ns = 0;
  for (int run = 0; run < opt.runs; run++) {
    cancel_state state = {0};
    state.worker_clock = worker_clock;
    uint64_t r = next_random(&random_state);
    /* one run in five cancels at once (the first callbacks); the rest anywhere in the run */
    uint64_t span = (uint64_t)(full_ns * 11 / 10 + 1);
    state.delay_ns = r % 5 == 0 ? 0 : (long long)(next_random(&random_state) % span);
    sg_generate_params params;
    params_for(&opt, next_random(&random_state), (r >> 8) % 2 ? 3.0f : 1.0f, &params);
    pthread_t thread;
    if (pthread_create(&thread, NULL, cancel_later, &state) != 0) {
      fprintf(stderr, "cancel_test: cannot start a thread\n");
      return 1;
    }
    uint8_t *rgba = NULL;
    sg_error error = {0};
    sg_status status = sg_generate(ctx, &params, on_progress, &state, &rgba, &error);
    long long returned_cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID), returned = now_ns();
    pthread_join(thread, NULL);
    if (status == SG_ERR_CANCELLED) {
      cancelled++;
      long long latency_cpu = returned_cpu - atomic_load(&state.cancel_at_cpu);
      long long latency = returned - atomic_load(&state.cancel_at_ns);
      if (latency_cpu > worst_cpu) worst_cpu = latency_cpu;
      if (latency > worst_ns) worst_ns = latency;
      if (rgba != NULL || strstr(error.message, "cancel") == NULL) {
        printf("FAIL run %d: cancelled, but image %p, message '%s'\n", run, (void *)rgba,
               error.message);
        failures++;
      }
      if (state.callbacks_after_cancel != 1) {
        printf("FAIL run %d: %d callbacks returned 'cancel' before it stopped\n", run,
               state.callbacks_after_cancel);
        failures++;
      }
      if (latency_cpu > allowed_cpu) {
        printf("FAIL run %d: cancel took %.1f ms CPU to return (allowed %.1f ms; %.1f ms wall)\n",
               run, latency_cpu / 1e6, allowed_cpu / 1e6, latency / 1e6);
        failures++;
      }
    } else if (status == SG_OK) {
      finished++;
      if (rgba == NULL || state.callbacks_after_cancel != 0) {
        printf("FAIL run %d: SG_OK with image %p after %d callbacks asked to cancel\n", run,
               (void *)rgba, state.callbacks_after_cancel);
        failures++;
      }
    } else {
      printf("FAIL run %d: status %s: %s\n", run, sg_status_name(status), error.message);
      failures++;
    }
    sg_free(rgba);
  }
  printf(
      "%s cancel: %d runs, %d cancelled, %d finished first, slowest cancel %.1f ms CPU "
      "(%.1f ms wall)\n",
      failures ? "FAIL" : "PASS", opt.runs, cancelled, finished, worst_cpu / 1e6, worst_ns / 1e6);

  /* The context must be as good as new: same image as before the cancels and as a fresh one. */
  size_t bytes = (size_t)opt.size * (size_t)opt.size * 4;
  cancel_state ignored = {0};
  uint8_t *after = NULL, *fresh = NULL;
  sg_context *fresh_ctx = NULL;
  int ok = generate(ctx, &opt, 1234, &after, &ignored) && new_context(&opt, &fresh_ctx) &&
           generate(fresh_ctx, &opt, 1234, &fresh, &ignored);
  int same = ok && !memcmp(before, after, bytes) && !memcmp(after, fresh, bytes);
  printf("%s after cancels the context gives the image of a fresh context (byte-identical)\n",
         same ? "PASS" : "FAIL");
  if (!same) failures++;
  if (cancelled == 0) {
    printf("FAIL no run was cancelled (the random delays never hit a generation)\n");
    failures++;
  }
  sg_free(before);
  sg_free(after);
  sg_free(fresh);
  sg_context_free(fresh_ctx);
  sg_context_free(ctx);
  printf("%s\n", failures ? "cancel_test: FAILED" : "cancel_test: all checks passed");
  return failures ? 1 : 0;
}
