/* api_bad_inputs.c: bad inputs through the public C API (what the runner cannot pass: 1 MB
 * prompts, NULL pointers, extreme numbers); prints PASS/FAIL per case. Usage: api_bad_inputs MODEL
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "snapgen.h"

typedef struct {
  sg_context *ctx;
  int failures;
} checker;

static void report(checker *c, int ok, const char *name, const char *detail) {
  printf("%s %s%s%s\n", ok ? "PASS" : "FAIL", name, detail[0] ? ": " : "", detail);
  if (!ok) c->failures++;
}

/* Small, fast defaults: 64×64, 2 steps; each case changes what it tests. */
static sg_generate_params small_params(void) {
  sg_generate_params p;
  sg_generate_params_init(&p);
  p.width = p.height = 64;
  p.steps = 2;
  p.seed = 3;
  return p;
}

/* Runs sg_generate; PASS when the status is `want` and, on failure, the message contains
 * `mention` and no image is handed out. */
static void expect(checker *c, const char *name, const sg_generate_params *p, sg_status want,
                   const char *mention) {
  uint8_t *rgba = (uint8_t *)&rgba; /* must be overwritten */
  sg_error error = {0};
  sg_status got = sg_generate(c->ctx, p, NULL, NULL, &rgba, &error);
  int ok = got == want;
  if (want == SG_OK)
    ok = ok && rgba != NULL;
  else
    ok = ok && rgba == NULL && error.status == got && strstr(error.message, mention) != NULL;
  char detail[1200];
  snprintf(detail, sizeof detail, "status %s, message '%.900s'", sg_status_name(got),
           got == SG_OK ? "" : error.message);
  report(c, ok, name, detail);
  if (got == SG_OK) sg_free(rgba);
}

static void prompts(checker *c) {
  sg_generate_params p = small_params();
  p.prompt = NULL;
  expect(c, "NULL prompt is the empty prompt", &p, SG_OK, "");
  p.prompt = "";
  expect(c, "empty prompt", &p, SG_OK, "");

  size_t megabyte = 1024 * 1024;
  char *big = malloc(megabyte + 1);
  memset(big, 'a', megabyte);
  big[megabyte] = '\0';
  p.prompt = big;
  expect(c, "1 MB prompt is refused in words", &p, SG_ERR_INVALID_ARGUMENT, "bytes");
  big[64 * 1024] = '\0';
  expect(c, "64 KiB prompt (the limit) is taken", &p, SG_OK, "");
  for (size_t i = 0; i + 3 <= 64 * 1024; i += 3) memcpy(big + i, "\xe2\x82\xac", 3); /* € */
  big[64 * 1024 - 2] = '\0'; /* 65534 bytes: 21844 × € and the first 2 bytes of one more */
  expect(c, "prompt ending inside a character", &p, SG_ERR_INVALID_ARGUMENT, "UTF-8");
  free(big);

  static const char *const invalid[] = {"caf\xc3",
                                        "\xff\xfe",
                                        "a\x80z",
                                        "\xc0\x80 overlong NUL",
                                        "\xed\xa0\x80 surrogate",
                                        "\xf4\x90\x80\x80 beyond U+10FFFF",
                                        "\xe2\x82 short"};
  for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
    char name[64];
    snprintf(name, sizeof name, "invalid UTF-8 prompt #%zu", i + 1);
    p = small_params();
    p.prompt = invalid[i];
    expect(c, name, &p, SG_ERR_INVALID_ARGUMENT, "UTF-8");
  }
  p = small_params();
  p.negative_prompt = "\xff";
  p.guidance = 3.0f;
  expect(c, "invalid UTF-8 negative prompt", &p, SG_ERR_INVALID_ARGUMENT, "negative prompt");
  p.negative_prompt = "e\xcc\x81 combining, \xf0\x9f\x98\x80 emoji, \xe4\xb8\xad";
  expect(c, "valid non-ASCII prompt and negative prompt", &p, SG_OK, "");
}

static void numbers(checker *c) {
  static const struct {
    const char *name;
    int width, height, steps;
  } sizes[] = {{"width INT_MAX", INT_MAX, 64, 2},
               {"width INT_MIN", INT_MIN, 64, 2},
               {"height -64", 64, -64, 2},
               {"width 0", 0, 64, 2},
               {"height 4104 (beyond 4096)", 64, 4104, 2},
               {"steps INT_MAX", 64, 64, INT_MAX},
               {"steps -1", 64, 64, -1},
               {"steps 10000", 64, 64, 10000},
               {"steps INT_MIN", 64, 64, INT_MIN}};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    sg_generate_params p = small_params();
    p.width = sizes[i].width;
    p.height = sizes[i].height;
    p.steps = sizes[i].steps;
    expect(c, sizes[i].name, &p, SG_ERR_INVALID_ARGUMENT, sizes[i].steps == 2 ? "size" : "steps");
  }
  sg_generate_params p = small_params();
  p.guidance = NAN;
  expect(c, "guidance NaN", &p, SG_ERR_INVALID_ARGUMENT, "guidance");
  p.guidance = INFINITY;
  expect(c, "guidance +Inf", &p, SG_ERR_INVALID_ARGUMENT, "guidance");
  p.guidance = 1e30f;
  expect(c, "guidance 1e30", &p, SG_ERR_INVALID_ARGUMENT, "guidance");
  p.guidance = -INFINITY; /* negative: the model's default */
  expect(c, "guidance -Inf means the default", &p, SG_OK, "");
  p = small_params();
  p.seed = UINT64_MAX;
  expect(c, "seed 2^64-1", &p, SG_OK, "");
}

static void conditioning_files(checker *c, const char *model) {
  sg_generate_params p = small_params();
  p.conditioning_path = "/nonexistent/conditioning.safetensors";
  expect(c, "missing conditioning file", &p, SG_ERR_IO, "/nonexistent/conditioning.safetensors");
  p.conditioning_path = model; /* a folder */
  expect(c, "conditioning path is a folder", &p, SG_ERR_IO, model);
  char config[4096];
  snprintf(config, sizeof config, "%s/unet/config.json", model);
  p.conditioning_path = config; /* JSON, not safetensors */
  expect(c, "conditioning file is not safetensors", &p, SG_ERR_FORMAT, config);
  char weights[4096];
  snprintf(weights, sizeof weights, "%s/decoder/diffusion_pytorch_model.safetensors", model);
  p.conditioning_path = weights; /* safetensors without 'context' */
  expect(c, "conditioning file without 'context'", &p, SG_ERR_FORMAT, "context");
}

static void null_pointers(checker *c, const char *model) {
  sg_error error = {0};
  uint8_t *rgba = NULL;
  sg_generate_params p = small_params();
  report(c,
         sg_generate(c->ctx, NULL, NULL, NULL, &rgba, &error) == SG_ERR_INVALID_ARGUMENT &&
             rgba == NULL,
         "sg_generate with NULL params", error.message);
  report(c, sg_generate(NULL, &p, NULL, NULL, &rgba, &error) == SG_ERR_INVALID_ARGUMENT,
         "sg_generate with NULL context", error.message);
  report(c, sg_generate(c->ctx, &p, NULL, NULL, NULL, &error) == SG_ERR_INVALID_ARGUMENT,
         "sg_generate with NULL output", error.message);
  report(c, sg_generate(c->ctx, &p, NULL, NULL, &rgba, NULL) == SG_OK && rgba != NULL,
         "sg_generate with NULL error works", "");
  sg_free(rgba);
  sg_context *ctx = (sg_context *)&ctx;
  report(c, sg_context_new(NULL, NULL, &ctx, &error) == SG_ERR_INVALID_ARGUMENT && ctx == NULL,
         "sg_context_new with NULL folder", error.message);
  report(c, sg_context_new(model, NULL, NULL, &error) == SG_ERR_INVALID_ARGUMENT,
         "sg_context_new with NULL output", error.message);
  sg_context_options options;
  sg_context_options_init(&options);
  options.threads = -3;
  report(c, sg_context_new(model, &options, &ctx, &error) == SG_ERR_INVALID_ARGUMENT,
         "sg_context_new with -3 threads", error.message);
  options.threads = 1;
  options.backend = (sg_backend_kind)42;
  report(c, sg_context_new(model, &options, &ctx, &error) == SG_ERR_INVALID_ARGUMENT,
         "sg_context_new with an unknown backend", error.message);
  options.backend = SG_BACKEND_REFERENCE;
  options.bf16_compute = 1;
  report(c, sg_context_new(model, &options, &ctx, &error) == SG_ERR_INVALID_ARGUMENT && !ctx,
         "sg_context_new with bf16 on the reference backend", error.message);
  /* oneDNN: bf16 works where the CPU has bf16 instructions, else it is refused in words */
  options.backend = SG_BACKEND_ONEDNN;
  sg_status bf16 = sg_context_new(model, &options, &ctx, &error);
  report(c,
         (bf16 == SG_OK && ctx) ||
             (bf16 == SG_ERR_BACKEND && !ctx && strstr(error.message, "bf16 instructions")),
         "sg_context_new with bf16 on oneDNN", bf16 == SG_OK ? "available" : error.message);
  sg_context_free(bf16 == SG_OK ? ctx : NULL);
  options.bf16_compute = 0;
  sg_context_free(NULL);
  sg_free(NULL);
  report(c, strcmp(sg_status_name((sg_status)99), "unknown status") == 0,
         "status name of an unknown status", "");
  uint8_t pixel[4] = {1, 2, 3, 255};
  report(c, sg_write_png(NULL, pixel, 1, 1, NULL, &error) == SG_ERR_INVALID_ARGUMENT,
         "sg_write_png with NULL path", error.message);
  report(c, sg_write_png("/tmp/x.png", NULL, 1, 1, NULL, &error) == SG_ERR_INVALID_ARGUMENT,
         "sg_write_png with NULL pixels", error.message);
  const char *bad_text[] = {"snapgen:prompt", "\xff", NULL};
  report(c, sg_write_png("/tmp/x.png", pixel, 1, 1, bad_text, &error) == SG_ERR_INVALID_ARGUMENT,
         "sg_write_png refuses invalid UTF-8 text", error.message);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: api_bad_inputs MODEL_DIR\n");
    return 2;
  }
  checker c = {0};
  sg_context_options options;
  sg_context_options_init(&options);
  options.threads = 1;
  sg_error error = {0};
  if (sg_context_new(argv[1], &options, &c.ctx, &error) != SG_OK) {
    fprintf(stderr, "api_bad_inputs: %s\n", error.message);
    return 1;
  }
  prompts(&c);
  numbers(&c);
  conditioning_files(&c, argv[1]);
  null_pointers(&c, argv[1]);
  sg_context_free(c.ctx);
  printf("%s\n", c.failures ? "api_bad_inputs: FAILED" : "api_bad_inputs: all checks passed");
  return c.failures ? 1 : 0;
}
