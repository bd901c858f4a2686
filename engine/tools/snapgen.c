/* snapgen.c: the headless runner: generates an image from a model folder, reports a model's size,
 * and benchmarks model configs with random weights (`snapgen bench`). */
#include <errno.h>
#include <glib.h>
#include <malloc.h>
#include <glib/gstdio.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

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
    "       snapgen bench --model DIR [--size PIXELS] [options]\n"
    "\n"
    "generate options:\n"
    "  --prompt TEXT          the prompt (needs a model with text encoders, or a fixed conditioning)\n"
    "  --prompt-file FILE     the prompt from a UTF-8 text file, one final line break dropped\n"
    "                         (instead of --prompt; one argument holds at most 128 KiB)\n"
    "  --negative TEXT        negative prompt (used with --guidance > 1)\n"
    "  --conditioning FILE    safetensors with 'context', 'context_mask', 'pooled' (instead of text)\n"
    "  --seed N               random seed (default 0)\n"
    "  --steps N              sampling steps (default: the model's)\n"
    "  --guidance W           classifier-free guidance scale (default: the model's; <= 1: off)\n"
    "  --width W, --height H  image size in pixels (default 1024×1024)\n"
    "  --threads N            CPU threads (default: all cores)\n"
    "  --backend NAME         onednn (default) or reference (slow, plain C)\n"
    "  --int8                 keep the text encoders' and UNet's linear weights as int8 (a quarter\n"
    "                         of their f32 memory; the image changes slightly). Also for encode\n"
    "                         and bench.\n"
    "  --bf16                 convolutions and linear layers compute in bf16 with f32\n"
    "                         accumulation (CPUs with avx512_bf16 or AMX only; the image changes\n"
    "                         slightly). Also for bench, whose ceiling is then a bf16 product.\n"
    "  --quiet                no progress on stderr\n"
    "  The output's folder is checked before generating; the PNG is written to a temporary\n"
    "  file there and renamed at the end.\n"
    "bench options:\n"
    "  --size PIXELS          square image side (default 1024)\n"
    "  --context-tokens N     cross-attention context length (default 154)\n"
    "  --model DIR            time a model folder's own weights (and its text encoders)\n"
    "  --repeat N             runs of each component; the median is reported (default 1)\n"
    "  --decoder-tile N       decode in tiles of N latent pixels a side (default 64; 0: whole)\n"
    "  --no-ceiling           skip measuring the machine's ceiling (a 2048³ matmul)\n"
    "  --threads N, --backend NAME\n"
    "\n"
    "exit codes: 0 done, 2 bad arguments, 3 bad model files, 4 file error, 5 out of memory,\n"
    "            6 cancelled, 7 backend error, 1 other\n";

typedef struct {
  const char *command;
  const char *model, *output, *prompt, *prompt_file, *negative, *conditioning;
  const char *unet_config, *decoder_config, *backend_name;
  guint64 seed;
  int steps, width, height, threads, size, context_tokens, repeat, quiet, decoder_tile;
  int no_ceiling; /* bench: skip the 2048³ ceiling matmul (minutes under an emulator) */
  int int8;       /* int8 linear weights (sg_context_options.int8_weights) */
  int bf16;       /* bf16 compute (sg_context_options.bf16_compute) */
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
  a->decoder_tile = SG_DECODER_TILE;
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
    if (!strcmp(opt, "--no-ceiling")) {
      a->no_ceiling = 1;
      continue;
    }
    if (!strcmp(opt, "--int8")) {
      a->int8 = 1;
      continue;
    }
    if (!strcmp(opt, "--bf16")) {
      a->bf16 = 1;
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
    else if (!strcmp(opt, "--prompt-file")) a->prompt_file = val;
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
    } else if (!strcmp(opt, "--decoder-tile")) {
      if (!parse_int(opt, val, 0, 65536, &n)) return 0;
      a->decoder_tile = (int)n;
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

/* The most a prompt file may hold: far above the engine's prompt limit (64 KiB), which then names
 * the exact length; this bound only keeps a wrong file (a disk image, /dev/zero) from being read
 * whole. */
#define PROMPT_FILE_MAX_BYTES (1024 * 1024)

/* Reads --prompt-file into *text (one final line break dropped; the engine checks the rest as for
 * --prompt). Returns EXIT_OK, or prints one line and returns the exit code. */
static int read_prompt_file(const char *path, char **text) {
  FILE *stream = fopen(path, "rb");
  if (stream == NULL) {
    fprintf(stderr, "snapgen: cannot read the prompt file %s: %s\n", path, g_strerror(errno));
    return EXIT_IO;
  }
  char *buffer = g_malloc(PROMPT_FILE_MAX_BYTES + 2);
  size_t length = fread(buffer, 1, PROMPT_FILE_MAX_BYTES + 1, stream);
  int read_errno = ferror(stream) ? errno : 0;
  fclose(stream);
  const char *nul = memchr(buffer, '\0', length);
  int code = EXIT_USAGE;
  if (read_errno != 0) {
    fprintf(stderr, "snapgen: cannot read the prompt file %s: %s\n", path, g_strerror(read_errno));
    code = EXIT_IO;
  } else if (length > PROMPT_FILE_MAX_BYTES) {
    fprintf(stderr, "snapgen: the prompt file %s holds more than %d bytes, too many for a prompt\n",
            path, PROMPT_FILE_MAX_BYTES);
  } else if (nul != NULL) {
    fprintf(stderr, "snapgen: the prompt file %s holds a NUL byte at offset %td; it must be UTF-8 "
            "text\n", path, nul - buffer);
  } else {
    if (length > 0 && buffer[length - 1] == '\n') length--;
    if (length > 0 && buffer[length - 1] == '\r') length--;
    buffer[length] = '\0';
    *text = buffer;
    return EXIT_OK;
  }
  g_free(buffer);
  return code;
}

/* Finds out before minutes of computing whether the output can be written: it is no folder, and
 * a file can be made next to it (a temporary file like the one the PNG goes to, removed at once).
 * Returns 1, or prints one line and returns 0. */
static int output_writable(const char *output) {
  if (g_file_test(output, G_FILE_TEST_IS_DIR)) {
    fprintf(stderr, "snapgen: cannot write %s: it is a directory\n", output);
    return 0;
  }
  char *folder = g_path_get_dirname(output);
  char *probe = g_strdup_printf("%s.tmp-XXXXXX", output);
  int fd = g_mkstemp(probe);
  int probe_errno = errno;
  if (fd >= 0) {
    close(fd);
    g_unlink(probe);
  } else {
    fprintf(stderr, "snapgen: cannot write %s: cannot create a file in %s: %s\n", output, folder,
            g_strerror(probe_errno));
  }
  g_free(probe);
  g_free(folder);
  return fd >= 0;
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

/* Each stage with the seconds since generation began (user_data: its g_get_monotonic_time()). */
static int print_progress(void *user_data, sg_stage stage, int step, int total) {
  double seconds = (g_get_monotonic_time() - *(const gint64 *)user_data) / 1e6;
  if (stage == SG_STAGE_DENOISING)
    fprintf(stderr, "snapgen: %s, step %d of %d (%.2f s)\n", stage_name(stage), step, total,
            seconds);
  else
    fprintf(stderr, "snapgen: %s (%.2f s)\n", stage_name(stage), seconds);
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
  options.int8_weights = a->int8;
  options.bf16_compute = a->bf16;
  if (!backend_from_name(a->backend_name, &options.backend)) return EXIT_USAGE;
  if (!output_writable(a->output)) return EXIT_IO;

  sg_error error = {0};
  sg_context *ctx = NULL;
  gint64 load_start = g_get_monotonic_time();
  sg_status status = sg_context_new(a->model, &options, &ctx, &error);
  double load_seconds = (g_get_monotonic_time() - load_start) / 1e6;
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
  status = sg_generate(ctx, &params, a->quiet ? NULL : print_progress, &start, &rgba, &error);
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
    fprintf(stderr,
            "snapgen: wrote %s (model loaded in %.2f s, generated in %.2f s, peak memory "
            "%.0f MiB)\n",
            a->output, load_seconds, seconds, peak_rss_mib());
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
  sg_status status = sg_conditioner_load(a->model, a->int8, &conditioner, &error);
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
    /* As sg_context_pixel_stride: the decoder's scale times the UNet's downsampling. */
    printf("pixel stride: %d\n", sg_decoder_scale(&decoder) << (unet.num_stages - 1));
  } else {
    fprintf(stderr, "snapgen: %s\n", error.message);
  }
  g_free(unet_path);
  g_free(decoder_path);
  return exit_code_for(status);
}

/* ---- snapgen bench: timings, the machine's ceiling and memory of the model's components ---- */

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Median of n samples (sorts them). */
static double median_of(double *samples, int n) {
  qsort(samples, n, sizeof *samples, compare_doubles);
  return n % 2 ? samples[n / 2] : (samples[n / 2 - 1] + samples[n / 2]) / 2;
}

/* CPU seconds of the whole process: on a shared machine a steadier measure of work than wall. */
static double cpu_seconds(void) {
  struct timespec now;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return now.tv_sec + now.tv_nsec / 1e9;
}

/* A field of /proc/self/status in MiB ("VmRSS", "VmHWM"); -1 where there is none (not Linux). */
static double proc_status_mib(const char *field) {
  char *text = NULL;
  double mib = -1;
  if (!g_file_get_contents("/proc/self/status", &text, NULL, NULL)) return -1;
  for (char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
    size_t length = strlen(field);
    if (!strncmp(line, field, length) && line[length] == ':') {
      mib = g_ascii_strtod(line + length + 1, NULL) / 1024.0; /* the value is in kB */
      break;
    }
  }
  g_free(text);
  return mib;
}

/* Restarts the peak (VmHWM) from the current resident size, so each component gets its own peak
 * (Linux: writing 5 to /proc/self/clear_refs; elsewhere the peak stays the process's). */
static void reset_peak_memory(void) {
  FILE *file = fopen("/proc/self/clear_refs", "w");
  if (!file) return;
  fputs("5", file);
  fclose(file);
}

/* One timed component: wall and CPU seconds of each run. */
typedef struct {
  const char *name;
  double flops; /* per run; 0 when unknown */
  int runs;
  double *wall, *cpu;
} bench_row;

static void row_start(bench_row *row, const char *name, double flops, int repeat) {
  row->name = name;
  row->flops = flops;
  row->runs = 0;
  row->wall = g_new(double, repeat);
  row->cpu = g_new(double, repeat);
}

/* Prints the row: medians, GFLOP/s and the fraction of the ceiling (0: not measured), by wall
 * time and by CPU time (GFLOP per CPU second against the ceiling's: steadier on a busy machine). */
static void row_print(bench_row *row, double ceiling_gflops, double ceiling_cpu_gflops) {
  if (row->runs == 0) return;
  double wall = median_of(row->wall, row->runs), cpu = median_of(row->cpu, row->runs);
  char label[64];
  snprintf(label, sizeof label, "%s:", row->name);
  printf("%-23s %9.3f", label, wall);
  if (cpu > 0) printf(" %9.3f", cpu);
  else printf(" %9s", "-");
  printf(" %9.1f", row->flops / 1e9);
  if (row->flops > 0) {
    double gflops = row->flops / 1e9 / wall;
    printf(" %9.1f", gflops);
    if (ceiling_gflops > 0) printf(" %8.0f%%", 100 * gflops / ceiling_gflops);
    if (ceiling_cpu_gflops > 0 && cpu > 0)
      printf(" %8.0f%%", 100 * row->flops / 1e9 / cpu / ceiling_cpu_gflops);
  }
  printf("\n");
}

/* Runs call (which sets status) once, timed into row. */
#define TIME_RUN(row, call)                                      \
  do {                                                           \
    gint64 wall_start_ = g_get_monotonic_time();                 \
    double cpu_start_ = cpu_seconds();                           \
    status = (call);                                             \
    (row)->wall[(row)->runs] = (g_get_monotonic_time() - wall_start_) / 1e6; \
    (row)->cpu[(row)->runs] = cpu_seconds() - cpu_start_;        \
    (row)->runs++;                                               \
  } while (0)

#define CEILING_SIZE 2048

/* The machine's f32 ceiling in the same run: GFLOP/s of a 2048×2048×2048 product on the backend's
 * matmul (median of 3 after a warm-up run). */
static sg_status measure_ceiling(sg_backend *be, bench_row *row, sg_error *error) {
  const int64_t n = CEILING_SIZE;
  float *x = g_new(float, n * n), *w = g_new(float, n * n), *y = g_new(float, n * n);
  for (int64_t i = 0; i < n * n; i++) {
    x[i] = (float)((i % 7) - 3) / 3;
    w[i] = (float)((i % 5) - 2) / 2;
  }
  sg_tensor xt = sg_tensor_2d(x, n, n), wt = sg_tensor_2d(w, n, n), yt = sg_tensor_2d(y, n, n);
  wt.constant_id = 1; /* like model weights: packed once; dropped below */
  sg_status status = sg_linear(be, &xt, &wt, NULL, SG_ACT_NONE, &yt, error);
  row_start(row, "ceiling matmul 2048^3", 2.0 * n * n * n, 3);
  for (int r = 0; r < 3 && status == SG_OK; r++)
    TIME_RUN(row, sg_linear(be, &xt, &wt, NULL, SG_ACT_NONE, &yt, error));
  sg_backend_drop_packed_weights(be);
  g_free(x);
  g_free(w);
  g_free(y);
  return status;
}

/* The weights of one component: from MODEL/component when a model folder is given, else seeded
 * random values. */
static sg_status bench_weights(const runner_args *a, const char *component, uint64_t seed,
                               sg_weights **out, sg_error *error) {
  sg_status status = SG_OK;
  if (!a->model) {
    *out = sg_weights_new_random(seed);
  } else {
    /* as the pipeline reads them (the UNet's bf16 variant in bf16 mode) */
    char *folder = g_build_filename(a->model, component, NULL);
    if (!strcmp(component, "unet")) {
      status = sg_unet_weights_open(folder, a->bf16, a->int8, out, error);
    } else {
      status = sg_weights_open_folder(folder, out, error);
      if (status == SG_OK) sg_weights_hand_off_to_backend(*out);
    }
    g_free(folder);
    return status;
  }
  /* One backend runs it: the plain copies go once packed (no weights held twice). */
  sg_weights_hand_off_to_backend(*out);
  if (a->int8 && !strcmp(component, "unet")) sg_weights_store_linears_int8(*out);
  return status;
}

/* Memory after a component ran: its peak (VmHWM since reset_peak_memory), the weights (f32 as
 * loaded, and how much of that the backend released once it had packed them), their copies in the
 * backend's preferred layouts, the arena; and what is resident now, anonymous and file-mapped
 * (mapped weights pages count there while touched). */
static void print_memory(const char *after, double weight_bytes, const sg_backend *be,
                         const sg_arena *arena) {
  const double mib = 1048576.0;
  printf("memory after %s: peak %.0f MiB (weights %.0f MiB f32, %.0f MiB of them released after "
         "packing; packed weights %.0f MiB; arena %.0f MiB); resident now %.0f MiB (anonymous "
         "%.0f MiB, file-mapped %.0f MiB)\n",
         after, proc_status_mib("VmHWM"), weight_bytes / mib,
         sg_backend_released_weight_bytes(be) / mib, sg_backend_packed_weight_bytes(be) / mib,
         sg_arena_peak_bytes(arena) / mib, proc_status_mib("VmRSS"), proc_status_mib("RssAnon"),
         proc_status_mib("RssFile"));
}

static const char bench_prompt[] =
    "a red fox sitting in tall grass at sunrise, soft golden light, morning mist over the hills "
    "behind, detailed fur";

static int run_bench(const runner_args *a) {
  if (a->unet_config == NULL && a->model == NULL) {
    fprintf(stderr, "snapgen: bench needs --unet-config FILE or --model DIR\n");
    return EXIT_USAGE;
  }
  sg_backend_kind kind;
  if (!backend_from_name(a->backend_name, &kind)) return EXIT_USAGE;
  sg_error error = {0};
  sg_unet_config config;
  sg_decoder_config decoder_config;
  char *unet_config_path = a->model ? g_build_filename(a->model, "unet", "config.json", NULL)
                                    : g_strdup(a->unet_config);
  char *decoder_config_path =
      a->model ? g_build_filename(a->model, "decoder", "config.json", NULL)
               : g_strdup(a->decoder_config);
  sg_status status = sg_unet_config_load(unet_config_path, &config, &error);
  if (status == SG_OK && decoder_config_path)
    status = sg_decoder_config_load(decoder_config_path, &decoder_config, &error);
  if (status != SG_OK) {
    fprintf(stderr, "snapgen: %s\n", error.message);
    g_free(unet_config_path);
    g_free(decoder_config_path);
    return exit_code_for(status);
  }
  int scale = decoder_config_path ? sg_decoder_scale(&decoder_config) : 8;
  int latent_side = a->size / scale;
  int stride = 1 << (config.num_stages - 1);
  if (a->size % scale != 0 || latent_side % stride != 0) {
    fprintf(stderr, "snapgen: --size %d must be a multiple of %d\n", a->size, scale * stride);
    g_free(unet_config_path);
    g_free(decoder_config_path);
    return EXIT_USAGE;
  }
  int threads = a->threads > 0 ? a->threads : omp_get_max_threads();
  printf(
      "bench: %s, %d×%d pixels (latent %d×%d), %d threads, backend %s, %d runs each, "
      "weights %s%s, %s compute\n",
      a->model ? a->model : unet_config_path, a->size, a->size, latent_side, latent_side, threads,
      a->backend_name, a->repeat, a->model ? "from the model folder" : "random",
      a->int8 ? ", linear layers int8" : "", a->bf16 ? "bf16" : "f32");

  sg_backend *be = sg_backend_new(kind, a->threads, &error);
  sg_arena *arena = sg_arena_new();
  if (!be) status = error.status ? error.status : SG_ERR_BACKEND;
  if (status == SG_OK && a->bf16) status = sg_backend_set_bf16(be, 1, &error);
  if (status == SG_OK && !sg_backend_convolutions_checked(be)) {
    printf(
        "bench: oneDNN's convolutions failed the engine's check on this CPU (wrong outputs); "
        "convolutions run on the fallback kernels\n");
  }
  bench_row ceiling = {0}, encoder_rows[8] = {{0}}, unet_row = {0}, decoder_row = {0};
  int encoder_count = 0;
  if (status == SG_OK && kind == SG_BACKEND_ONEDNN && !a->no_ceiling)
    status = measure_ceiling(be, &ceiling, &error);

  /* Text encoders (a model folder with a conditioner only). */
  sg_conditioning_out conditioning = {0};
  sg_conditioner *conditioner = NULL;
  if (status == SG_OK && a->model)
    status = sg_conditioner_load(a->model, a->int8, &conditioner, &error);
  if (status == SG_OK && conditioner) {
    const char *prompt = a->prompt ? a->prompt : bench_prompt;
    encoder_count = sg_conditioner_encoder_count(conditioner);
    if (encoder_count > 8) encoder_count = 8;
    for (int i = 0; i < encoder_count && status == SG_OK; i++) {
      sg_encoder_info info;
      sg_conditioner_encoder_info(conditioner, i, &info);
      row_start(&encoder_rows[i], info.component, 0, a->repeat);
      /* the positions it runs, so that tests/bench can time PyTorch on as many */
      int32_t *ids = NULL;
      int count = 0, real_count = 0;
      status = sg_conditioner_token_ids(conditioner, i, prompt, &ids, &count, &real_count, &error);
      if (status == SG_OK && ids)
        printf("%s: %d positions (%d tokens before padding)\n", info.component, count, real_count);
      g_free(ids);
    }
    for (int r = 0; r < a->repeat + 1 && status == SG_OK; r++) { /* run 0 warms up */
      sg_conditioning_out_clear(&conditioning);
      status = sg_conditioner_encode(conditioner, be, arena, prompt, &conditioning, &error);
      for (int i = 0; i < encoder_count && status == SG_OK && r > 0; i++) {
        sg_encoder_info info;
        sg_conditioner_encoder_info(conditioner, i, &info);
        if (!info.present) continue;
        bench_row *row = &encoder_rows[i];
        row->wall[row->runs] = info.forward_seconds;
        row->cpu[row->runs] = 0; /* not measured per encoder */
        row->runs++;
      }
    }
  }

  /* UNet: one step (a forward) on a fixed latent, context and pooled vector. */
  sg_weights *weights = NULL;
  sg_unet *unet = NULL;
  sg_unet_context_kv *kv = NULL;
  int64_t context_tokens = conditioning.context.data ? conditioning.context.dims[0]
                                                      : a->context_tokens;
  int64_t x_dims[3] = {config.in_channels, latent_side, latent_side};
  int64_t ctx_dims[2] = {context_tokens, config.context_dim};
  int64_t pooled_dims[1] = {config.pooled_dim};
  int64_t latent_count = x_dims[0] * x_dims[1] * x_dims[2];
  sg_tensor x = sg_tensor_view(g_new(float, latent_count), SG_F32, 3, x_dims);
  sg_tensor out = sg_tensor_view(g_new0(float, latent_count), SG_F32, 3, x_dims);
  sg_tensor context = sg_tensor_view(g_new(float, ctx_dims[0] * ctx_dims[1]), SG_F32, 2, ctx_dims);
  sg_tensor pooled = sg_tensor_view(g_new0(float, config.pooled_dim + 1), SG_F32, 1, pooled_dims);
  float *mask = g_new(float, context_tokens);
  for (int64_t i = 0; i < latent_count; i++) ((float *)x.data)[i] = (float)((i % 17) - 8) / 8;
  for (int64_t i = 0; i < ctx_dims[0] * ctx_dims[1]; i++)
    ((float *)context.data)[i] = (float)((i % 13) - 6) / 6;
  for (int64_t i = 0; i < context_tokens; i++) mask[i] = 1.0f;
  if (conditioning.context.data && conditioning.context.dims[1] == config.context_dim) {
    memcpy(context.data, conditioning.context.data, sg_tensor_nbytes(&context));
    memcpy(mask, conditioning.context_mask, (size_t)context_tokens * sizeof(float));
    if (conditioning.pooled.data && sg_tensor_numel(&conditioning.pooled) == config.pooled_dim)
      memcpy(pooled.data, conditioning.pooled.data, sg_tensor_nbytes(&conditioning.pooled));
  }
  reset_peak_memory();
  gint64 start = g_get_monotonic_time();
  if (status == SG_OK) status = bench_weights(a, "unet", 1, &weights, &error);
  if (status == SG_OK) status = sg_unet_load(&config, weights, &unet, &error);
  if (status == SG_OK) {
    printf("unet: %.1fM parameters, weights ready in %.2f s\n",
           sg_unet_parameter_count(&config) / 1e6, (g_get_monotonic_time() - start) / 1e6);
    row_start(&unet_row, "unet step",
              sg_unet_flops(&config, latent_side, latent_side, (int)context_tokens), a->repeat);
    /* The first forward packs the weights and sizes the arena: a warm-up, timed apart. Like a
     * generation, the steps share the context's cross-attention keys and values. */
    start = g_get_monotonic_time();
    status = sg_unet_context_kv_new(unet, be, &context, &kv, &error);
    if (status == SG_OK)
      status = sg_unet_forward_kv(unet, be, arena, &x, 500.0f, kv, mask,
                                  config.pooled_dim > 0 ? &pooled : NULL, &out, &error);
    sg_arena_settle(arena);
    printf("unet first step (makes primitives, packs weights): %.3f s\n",
           (g_get_monotonic_time() - start) / 1e6);
  }
  for (int r = 0; r < a->repeat && status == SG_OK; r++)
    TIME_RUN(&unet_row, sg_unet_forward_kv(unet, be, arena, &x, 500.0f, kv, mask,
                                           config.pooled_dim > 0 ? &pooled : NULL, &out, &error));
  if (status == SG_OK)
    print_memory("the unet", 4.0 * (double)sg_unet_parameter_count(&config), be, arena);
  sg_unet_context_kv_free(kv);
  sg_unet_free(unet);
  sg_weights_free(weights);
  sg_backend_drop_packed_weights(be); /* its weights are gone; the decoder packs its own */
  /* What the UNet freed on the heap goes back to the system before the decoder is measured. */
  malloc_trim(0);

  /* Decoder: the UNet's output latent to RGB. */
  if (status == SG_OK && decoder_config_path) {
    sg_weights *decoder_weights = NULL;
    sg_decoder *decoder = NULL;
    reset_peak_memory();
    status = bench_weights(a, "decoder", 2, &decoder_weights, &error);
    if (status == SG_OK) status = sg_decoder_load(&decoder_config, decoder_weights, &decoder, &error);
    int64_t image_dims[3] = {decoder_config.out_channels, a->size, a->size};
    sg_tensor image = sg_tensor_view(g_new(float, image_dims[0] * a->size * a->size), SG_F32, 3,
                                     image_dims);
    if (status == SG_OK) {
      printf("decoder: %.2fM parameters\n", sg_decoder_parameter_count(&decoder_config) / 1e6);
      row_start(&decoder_row, "decoder",
                sg_decoder_flops(&decoder_config, latent_side, latent_side), a->repeat);
      printf("decoder: tiles of %d latent pixels a side (0: whole)\n", a->decoder_tile);
      start = g_get_monotonic_time();
      status = sg_decoder_forward_tiled(decoder, be, arena, &out, a->decoder_tile, -1, &image,
                                        &error); /* warm-up: packs weights, makes primitives */
      printf("decoder first run: %.3f s\n", (g_get_monotonic_time() - start) / 1e6);
    }
    for (int r = 0; r < a->repeat && status == SG_OK; r++)
      TIME_RUN(&decoder_row, sg_decoder_forward_tiled(decoder, be, arena, &out, a->decoder_tile,
                                                      -1, &image, &error));
    if (status == SG_OK)
      print_memory("the decoder", 4.0 * (double)sg_decoder_parameter_count(&decoder_config), be,
                   arena);
    g_free(image.data);
    sg_decoder_free(decoder);
    sg_weights_free(decoder_weights);
  }

  if (status == SG_OK) {
    double ceiling_gflops = 0, ceiling_cpu_gflops = 0;
    if (ceiling.runs > 0) {
      ceiling_gflops = ceiling.flops / 1e9 / median_of(ceiling.wall, ceiling.runs);
      ceiling_cpu_gflops = ceiling.flops / 1e9 / median_of(ceiling.cpu, ceiling.runs);
    }
    printf("%-23s %9s %9s %9s %9s %9s %9s\n", "component", "median s", "cpu s", "GFLOP",
           "GFLOP/s", "ceiling", "cpu ceil");
    row_print(&ceiling, ceiling_gflops, ceiling_cpu_gflops);
    for (int i = 0; i < encoder_count; i++) row_print(&encoder_rows[i], 0, 0);
    row_print(&unet_row, ceiling_gflops, ceiling_cpu_gflops);
    row_print(&decoder_row, ceiling_gflops, ceiling_cpu_gflops);
  } else {
    fprintf(stderr, "snapgen: %s\n", error.message);
  }
  bench_row *rows[] = {&ceiling, &unet_row, &decoder_row};
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    g_free(rows[i]->wall);
    g_free(rows[i]->cpu);
  }
  for (int i = 0; i < encoder_count; i++) {
    g_free(encoder_rows[i].wall);
    g_free(encoder_rows[i].cpu);
  }
  sg_conditioning_out_clear(&conditioning);
  sg_conditioner_free(conditioner);
  g_free(mask);
  g_free(x.data);
  g_free(out.data);
  g_free(context.data);
  g_free(pooled.data);
  g_free(unet_config_path);
  g_free(decoder_config_path);
  sg_arena_free(arena);
  sg_backend_free(be);
  return exit_code_for(status);
}

static int run_command(const runner_args *a) {
  if (!strcmp(a->command, "generate")) return run_generate(a);
  if (!strcmp(a->command, "info")) return run_info(a);
  if (!strcmp(a->command, "encode")) return run_encode(a);
  if (!strcmp(a->command, "bench")) return run_bench(a);
  fprintf(stderr, "snapgen: unknown command '%s' (see --help)\n", a->command);
  return EXIT_USAGE;
}

int main(int argc, char **argv) {
  runner_args args;
  char *prompt_text = NULL;
  if (!parse_args(argc, argv, &args)) return EXIT_USAGE;
  if (args.prompt_file != NULL) {
    if (args.prompt != NULL) {
      fprintf(stderr, "snapgen: give either --prompt or --prompt-file, not both\n");
      return EXIT_USAGE;
    }
    int code = read_prompt_file(args.prompt_file, &prompt_text);
    if (code != EXIT_OK) return code;
    args.prompt = prompt_text;
  }
  int code = run_command(&args);
  g_free(prompt_text);
  return code;
}
