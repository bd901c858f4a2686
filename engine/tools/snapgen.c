/* snapgen.c: the headless runner: generates an image from a model folder, reports a model's size,
 * and benchmarks model configs with random weights (`snapgen bench`). */
#include <glib.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "conditioner.h"
#include "decoder.h"
#include "snapgen.h"
#include "tensor.h"
#include "unet.h"
#include "weights.h"

/* Exit codes, distinct per failure kind (documented in --help and the README). */
enum {
  EXIT_OK = 0,
  EXIT_FAILURE_OTHER = 1,
  EXIT_USAGE = 2,
  EXIT_MODEL = 3,
  EXIT_IO = 4,
  EXIT_MEMORY = 5,
  EXIT_CANCELLED = 6,
  EXIT_BACKEND = 7
};

static int exit_code_for(sg_status status) {
  switch (status) {
    case SG_OK: return EXIT_OK;
    case SG_ERR_INVALID_ARGUMENT: return EXIT_USAGE;
    case SG_ERR_FORMAT: return EXIT_MODEL;
    case SG_ERR_IO: return EXIT_IO;
    case SG_ERR_OUT_OF_MEMORY: return EXIT_MEMORY;
    case SG_ERR_CANCELLED: return EXIT_CANCELLED;
    case SG_ERR_BACKEND: return EXIT_BACKEND;
  }
  return EXIT_FAILURE_OTHER;
}

static const char usage_text[] =
    "usage: snapgen [generate] --model DIR --output FILE.png [options]\n"
    "       snapgen info --model DIR\n"
    "       snapgen encode --model DIR --prompt TEXT    token ids and embedding statistics\n"
    "       snapgen bench --unet-config FILE [--decoder-config FILE] [--size PIXELS] [options]\n"
    "\n"
    "generate options:\n"
    "  --prompt TEXT          the prompt (needs a model with text encoders, or a fixed conditioning)\n"
    "  --negative TEXT        negative prompt (used with --guidance > 1)\n"
    "  --conditioning FILE    safetensors with 'context', 'context_mask', 'pooled' (instead of text)\n"
    "  --seed N               random seed (default 0)\n"
    "  --steps N              sampling steps (default: the model's)\n"
    "  --guidance W           classifier-free guidance scale (default: the model's; <= 1: off)\n"
    "  --width W, --height H  image size in pixels (default 1024×1024)\n"
    "  --threads N            CPU threads (default: all cores)\n"
    "  --backend NAME         onednn (default) or reference (slow, plain C)\n"
    "  --quiet                no progress on stderr\n"
    "bench options:\n"
    "  --size PIXELS          square image side (default 1024)\n"
    "  --context-tokens N     cross-attention context length (default 154)\n"
    "  --repeat N             UNet forwards to time (default 1)\n"
    "  --threads N, --backend NAME\n"
    "\n"
    "exit codes: 0 done, 2 bad arguments, 3 bad model files, 4 file error, 5 out of memory,\n"
    "            6 cancelled, 7 backend error, 1 other\n";

typedef struct {
  const char *command;
  const char *model, *output, *prompt, *negative, *conditioning;
  const char *unet_config, *decoder_config, *backend_name;
  guint64 seed;
  int steps, width, height, threads, size, context_tokens, repeat, quiet;
  double guidance;
} runner_args;

/* Parses an integer option value strictly (whole string, within range). */
static int parse_int(const char *option, const char *text, long long min, long long max,
                     long long *out) {
  char *end = NULL;
  long long v = g_ascii_strtoll(text, &end, 10);
  if (end == text || *end != '\0' || v < min || v > max) {
    fprintf(stderr, "snapgen: %s needs a whole number from %lld to %lld, not '%s'\n", option, min,
            max, text);
    return 0;
  }
  *out = v;
  return 1;
}

static int parse_args(int argc, char **argv, runner_args *a) {
  memset(a, 0, sizeof *a);
  a->command = "generate";
  a->width = a->height = 1024;
  a->size = 1024;
  a->context_tokens = 154;
  a->repeat = 1;
  a->guidance = -1;
  a->backend_name = "onednn";
  int i = 1;
  if (argc > 1 && argv[1][0] != '-') a->command = argv[i++];
  for (; i < argc; i++) {
    const char *opt = argv[i];
    if (!strcmp(opt, "--help") || !strcmp(opt, "-h")) {
      fputs(usage_text, stdout);
      exit(EXIT_OK);
    }
    if (!strcmp(opt, "--quiet")) {
      a->quiet = 1;
      continue;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "snapgen: %s needs a value (see --help)\n", opt);
      return 0;
    }
    const char *val = argv[++i];
    long long n;
    if (!strcmp(opt, "--model")) a->model = val;
    else if (!strcmp(opt, "--output")) a->output = val;
    else if (!strcmp(opt, "--prompt")) a->prompt = val;
    else if (!strcmp(opt, "--negative")) a->negative = val;
    else if (!strcmp(opt, "--conditioning")) a->conditioning = val;
    else if (!strcmp(opt, "--unet-config")) a->unet_config = val;
    else if (!strcmp(opt, "--decoder-config")) a->decoder_config = val;
    else if (!strcmp(opt, "--backend")) a->backend_name = val;
    else if (!strcmp(opt, "--seed")) {
      char *end = NULL;
      a->seed = g_ascii_strtoull(val, &end, 10);
      if (end == val || *end != '\0' || val[0] == '-') {
        fprintf(stderr, "snapgen: --seed needs a whole number ≥ 0, not '%s'\n", val);
        return 0;
      }
    } else if (!strcmp(opt, "--guidance")) {
      char *end = NULL;
      a->guidance = g_ascii_strtod(val, &end);
      if (end == val || *end != '\0') {
        fprintf(stderr, "snapgen: --guidance needs a number, not '%s'\n", val);
        return 0;
      }
    } else if (!strcmp(opt, "--steps")) {
      if (!parse_int(opt, val, 1, 1000000, &n)) return 0;
      a->steps = (int)n;
    } else if (!strcmp(opt, "--width") || !strcmp(opt, "--height")) {
      if (!parse_int(opt, val, -1000000, 1000000, &n)) return 0;
      *(opt[2] == 'w' ? &a->width : &a->height) = (int)n;
    } else if (!strcmp(opt, "--threads")) {
      if (!parse_int(opt, val, 0, 1024, &n)) return 0;
      a->threads = (int)n;
    } else if (!strcmp(opt, "--size")) {
      if (!parse_int(opt, val, 8, 8192, &n)) return 0;
      a->size = (int)n;
    } else if (!strcmp(opt, "--context-tokens")) {
      if (!parse_int(opt, val, 1, 4096, &n)) return 0;
      a->context_tokens = (int)n;
    } else if (!strcmp(opt, "--repeat")) {
      if (!parse_int(opt, val, 1, 1000, &n)) return 0;
      a->repeat = (int)n;
    } else {
      fprintf(stderr, "snapgen: unknown option '%s' (see --help)\n", opt);
      return 0;
    }
  }
  return 1;
}

static int backend_from_name(const char *name, sg_backend_kind *kind) {
  if (!strcmp(name, "onednn")) *kind = SG_BACKEND_ONEDNN;
  else if (!strcmp(name, "reference")) *kind = SG_BACKEND_REFERENCE;
  else {
    fprintf(stderr, "snapgen: --backend must be 'onednn' or 'reference', not '%s'\n", name);
    return 0;
  }
  return 1;
}

static const char *stage_name(sg_stage stage) {
  switch (stage) {
    case SG_STAGE_LOADING: return "loading";
    case SG_STAGE_ENCODING_TEXT: return "encoding text";
    case SG_STAGE_DENOISING: return "denoising";
    case SG_STAGE_DECODING: return "decoding";
  }
  return "?";
}

static int print_progress(void *user_data, sg_stage stage, int step, int total) {
  (void)user_data;
  if (stage == SG_STAGE_DENOISING)
    fprintf(stderr, "snapgen: %s, step %d of %d\n", stage_name(stage), step, total);
  else
    fprintf(stderr, "snapgen: %s\n", stage_name(stage));
  return 0;
}

static double peak_rss_mib(void) {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;
}

static int run_generate(const runner_args *a) {
  if (a->model == NULL || a->output == NULL) {
    fprintf(stderr, "snapgen: generate needs --model DIR and --output FILE.png (see --help)\n");
    return EXIT_USAGE;
  }
  sg_context_options options;
  sg_context_options_init(&options);
  options.threads = a->threads;
  if (!backend_from_name(a->backend_name, &options.backend)) return EXIT_USAGE;

  sg_error error = {0};
  sg_context *ctx = NULL;
  sg_status status = sg_context_new(a->model, &options, &ctx, &error);
  if (status != SG_OK) {
    fprintf(stderr, "snapgen: %s\n", error.message);
    return exit_code_for(status);
  }
  sg_generate_params params;
  sg_generate_params_init(&params);
  params.prompt = a->prompt;
  params.negative_prompt = a->negative;
  params.conditioning_path = a->conditioning;
  params.seed = a->seed;
  params.steps = a->steps;
  params.guidance = (float)a->guidance;
  params.width = a->width;
  params.height = a->height;

  uint8_t *rgba = NULL;
  gint64 start = g_get_monotonic_time();
  status = sg_generate(ctx, &params, a->quiet ? NULL : print_progress, NULL, &rgba, &error);
  double seconds = (g_get_monotonic_time() - start) / 1e6;
  if (status == SG_OK) {
    char seed[32], steps[16], guidance[32], size[32];
    g_snprintf(seed, sizeof seed, "%" G_GUINT64_FORMAT, a->seed);
    g_snprintf(steps, sizeof steps, "%d", a->steps > 0 ? a->steps : sg_context_default_steps(ctx));
    g_snprintf(guidance, sizeof guidance, "%g",
               a->guidance < 0 ? sg_context_default_guidance(ctx) : a->guidance);
    g_snprintf(size, sizeof size, "%dx%d", a->width, a->height);
    const char *text[] = {"Software", "SnapGen for GIMP (snapgen " SNAPGEN_VERSION ")",
                          "snapgen:prompt", a->prompt ? a->prompt : "",
                          "snapgen:seed", seed, "snapgen:steps", steps,
                          "snapgen:guidance", guidance, "snapgen:size", size,
                          "snapgen:model", a->model, NULL};
    status = sg_write_png(a->output, rgba, a->width, a->height, text, &error);
  }
  sg_free(rgba);
  sg_context_free(ctx);
  if (status != SG_OK) {
    fprintf(stderr, "snapgen: %s\n", error.message);
    return exit_code_for(status);
  }
  if (!a->quiet)
    fprintf(stderr, "snapgen: wrote %s (%.2f s, peak memory %.0f MiB)\n", a->output, seconds,
            peak_rss_mib());
  return EXIT_OK;
}

static int run_encode(const runner_args *a) {
  if (a->model == NULL) {
    fprintf(stderr, "snapgen: encode needs --model DIR [--prompt TEXT]\n");
    return EXIT_USAGE;
  }
  sg_backend_kind kind;
  if (!backend_from_name(a->backend_name, &kind)) return EXIT_USAGE;
  sg_error error = {0};
  sg_conditioner *conditioner = NULL;
  sg_status status = sg_conditioner_load(a->model, &conditioner, &error);
  if (status == SG_OK && conditioner == NULL) {
    fprintf(stderr, "snapgen: %s has no text encoders\n", a->model);
    return EXIT_MODEL;
  }
  sg_backend *be = status == SG_OK ? sg_backend_new(kind, a->threads, &error) : NULL;
  if (status == SG_OK && be == NULL) status = error.status;
  sg_arena *arena = sg_arena_new();
  if (status == SG_OK)
    status = sg_conditioner_print_report(conditioner, be, arena, a->prompt ? a->prompt : "",
                                         stdout, &error);
  if (status != SG_OK) fprintf(stderr, "snapgen: %s\n", error.message);
  sg_arena_free(arena);
  sg_backend_free(be);
  sg_conditioner_free(conditioner);
  return exit_code_for(status);
}

static int run_info(const runner_args *a) {
  if (a->model == NULL) {
    fprintf(stderr, "snapgen: info needs --model DIR\n");
    return EXIT_USAGE;
  }
  sg_error error = {0};
  sg_unet_config unet;
  sg_decoder_config decoder;
  char *unet_path = g_build_filename(a->model, "unet", "config.json", NULL);
  char *decoder_path = g_build_filename(a->model, "decoder", "config.json", NULL);
  sg_status status = sg_unet_config_load(unet_path, &unet, &error);
  if (status == SG_OK) status = sg_decoder_config_load(decoder_path, &decoder, &error);
  if (status == SG_OK) {
    printf("unet parameters: %lld\n", (long long)sg_unet_parameter_count(&unet));
    printf("decoder parameters: %lld\n", (long long)sg_decoder_parameter_count(&decoder));
  } else {
    fprintf(stderr, "snapgen: %s\n", error.message);
  }
  g_free(unet_path);
  g_free(decoder_path);
  return exit_code_for(status);
}

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static int run_bench(const runner_args *a) {
  if (a->unet_config == NULL) {
    fprintf(stderr, "snapgen: bench needs --unet-config FILE\n");
    return EXIT_USAGE;
  }
  sg_backend_kind kind;
  if (!backend_from_name(a->backend_name, &kind)) return EXIT_USAGE;
  sg_error error = {0};
  sg_unet_config config;
  sg_decoder_config decoder_config;
  sg_status status = sg_unet_config_load(a->unet_config, &config, &error);
  if (status == SG_OK && a->decoder_config)
    status = sg_decoder_config_load(a->decoder_config, &decoder_config, &error);
  if (status != SG_OK) {
    fprintf(stderr, "snapgen: %s\n", error.message);
    return exit_code_for(status);
  }
  int scale = a->decoder_config ? sg_decoder_scale(&decoder_config) : 8;
  int latent_side = a->size / scale;
  int stride = 1 << (config.num_stages - 1);
  if (a->size % scale != 0 || latent_side % stride != 0) {
    fprintf(stderr, "snapgen: --size %d must be a multiple of %d\n", a->size, scale * stride);
    return EXIT_USAGE;
  }
  int threads = a->threads > 0 ? a->threads : omp_get_max_threads();
  printf("bench: %s, %d×%d pixels (latent %d×%d), %d context tokens, %d threads, backend %s\n",
         a->unet_config, a->size, a->size, latent_side, latent_side, a->context_tokens, threads,
         a->backend_name);
  printf("unet parameters: %lld (%.1fM)\n", (long long)sg_unet_parameter_count(&config),
         sg_unet_parameter_count(&config) / 1e6);

  sg_backend *be = sg_backend_new(kind, a->threads, &error);
  sg_weights *weights = sg_weights_new_random(1);
  sg_unet *unet = NULL;
  sg_arena *arena = sg_arena_new();
  gint64 start = g_get_monotonic_time();
  status = be ? sg_unet_load(&config, weights, &unet, &error) : error.status;
  if (status != SG_OK) {
    fprintf(stderr, "snapgen: %s\n", error.message);
    sg_weights_free(weights);
    sg_backend_free(be);
    sg_arena_free(arena);
    return exit_code_for(status);
  }
  printf("unet random weights made in %.2f s\n", (g_get_monotonic_time() - start) / 1e6);

  int64_t x_dims[3] = {config.in_channels, latent_side, latent_side};
  int64_t ctx_dims[2] = {a->context_tokens, config.context_dim};
  int64_t pooled_dims[1] = {config.pooled_dim};
  int64_t latent_count = x_dims[0] * x_dims[1] * x_dims[2];
  sg_tensor x = sg_tensor_view(g_new(float, latent_count), SG_F32, 3, x_dims);
  sg_tensor out = sg_tensor_view(g_new(float, sg_tensor_numel(&x)), SG_F32, 3, x_dims);
  sg_tensor context = sg_tensor_view(g_new(float, ctx_dims[0] * ctx_dims[1]), SG_F32, 2, ctx_dims);
  sg_tensor pooled = sg_tensor_view(g_new0(float, config.pooled_dim + 1), SG_F32, 1, pooled_dims);
  float *mask = g_new(float, a->context_tokens);
  for (int64_t i = 0; i < sg_tensor_numel(&x); i++) ((float *)x.data)[i] = (float)((i % 17) - 8) / 8;
  for (int64_t i = 0; i < ctx_dims[0] * ctx_dims[1]; i++)
    ((float *)context.data)[i] = (float)((i % 13) - 6) / 6;
  for (int i = 0; i < a->context_tokens; i++) mask[i] = 1.0f;

  double *times = g_new(double, a->repeat);
  for (int r = 0; r < a->repeat && status == SG_OK; r++) {
    start = g_get_monotonic_time();
    status = sg_unet_forward(unet, be, arena, &x, 500.0f, &context, mask,
                             config.pooled_dim > 0 ? &pooled : NULL, &out, &error);
    times[r] = (g_get_monotonic_time() - start) / 1e6;
    if (r == 0) sg_arena_settle(arena);
  }
  if (status == SG_OK) {
    qsort(times, a->repeat, sizeof *times, compare_doubles);
    double median = times[a->repeat / 2];
    double flops = sg_unet_flops(&config, latent_side, latent_side, a->context_tokens);
    printf("unet step: %.3f s median of %d (first %.3f s), %.1f GFLOP, %.1f GFLOP/s\n", median,
           a->repeat, times[0], flops / 1e9, flops / 1e9 / median);
    printf("unet activation arena peak: %.1f MiB\n", sg_arena_peak_bytes(arena) / 1048576.0);
  }
  sg_unet_free(unet);
  sg_weights_free(weights);

  if (status == SG_OK && a->decoder_config) {
    sg_weights *dweights = sg_weights_new_random(2);
    sg_decoder *decoder = NULL;
    status = sg_decoder_load(&decoder_config, dweights, &decoder, &error);
    int64_t image_dims[3] = {decoder_config.out_channels, a->size, a->size};
    sg_tensor image = sg_tensor_view(g_new(float, (int64_t)3 * a->size * a->size), SG_F32, 3,
                                     image_dims);
    if (status == SG_OK) {
      printf("decoder parameters: %lld\n", (long long)sg_decoder_parameter_count(&decoder_config));
      start = g_get_monotonic_time();
      status = sg_decoder_forward(decoder, be, arena, &out, &image, &error);
      printf("decoder: %.3f s\n", (g_get_monotonic_time() - start) / 1e6);
    }
    g_free(image.data);
    sg_decoder_free(decoder);
    sg_weights_free(dweights);
  }
  printf("peak resident memory: %.0f MiB\n", peak_rss_mib());
  if (status != SG_OK) fprintf(stderr, "snapgen: %s\n", error.message);
  g_free(times);
  g_free(mask);
  g_free(x.data);
  g_free(out.data);
  g_free(context.data);
  g_free(pooled.data);
  sg_arena_free(arena);
  sg_backend_free(be);
  return exit_code_for(status);
}

int main(int argc, char **argv) {
  runner_args args;
  if (!parse_args(argc, argv, &args)) return EXIT_USAGE;
  if (!strcmp(args.command, "generate")) return run_generate(&args);
  if (!strcmp(args.command, "info")) return run_info(&args);
  if (!strcmp(args.command, "encode")) return run_encode(&args);
  if (!strcmp(args.command, "bench")) return run_bench(&args);
  fprintf(stderr, "snapgen: unknown command '%s' (see --help)\n", args.command);
  return EXIT_USAGE;
}
