/* fuzz_prompt.c: libFuzzer target: the prompt path of sg_generate: parameter checks (size, steps,
 * guidance, seed, prompt text) and the conditioning file, on a tiny model (env SG_FUZZ_MODEL). */
#include <glib.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "snapgen.h"

#define EXPECT(cond)                                                 \
  do {                                                               \
    if (!(cond)) {                                                   \
      fprintf(stderr, "fuzz_prompt: invariant broken: %s\n", #cond); \
      abort();                                                       \
    }                                                                \
  } while (0)

/* libFuzzer gives the target no user pointer, so the model loaded once lives here. */
static sg_context *loaded_model;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  const char *model = getenv("SG_FUZZ_MODEL");
  if (!model) {
    fprintf(stderr, "fuzz_prompt: set SG_FUZZ_MODEL to a tiny model folder\n");
    exit(1);
  }
  sg_context_options options;
  sg_context_options_init(&options);
  options.backend = SG_BACKEND_REFERENCE;
  options.threads = 1;
  sg_error error = {0};
  if (sg_context_new(model, &options, &loaded_model, &error) != SG_OK) {
    fprintf(stderr, "fuzz_prompt: %s\n", error.message);
    exit(1);
  }
  return 0;
}

/* Lets tiny jobs run to the end and stops the rest at the first denoising step (the checks and
 * the conditioning are done by then); images over 256 px a side stop before the conditioning,
 * once the checks are done, since drawing their noise alone takes a while. So every input stays
 * fast. */
typedef struct {
  int run_to_end, stop_early;
  int calls;
  int last_stage;
} progress_state;

static int on_progress(void *user_data, sg_stage stage, int step, int total) {
  progress_state *state = user_data;
  EXPECT((int)stage >= state->last_stage);
  EXPECT(step >= 0 && step <= total);
  state->last_stage = (int)stage;
  state->calls++;
  if (state->stop_early) return 1;
  return !state->run_to_end && stage == SG_STAGE_DENOISING;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  byte_reader reader = {data, size};
  unsigned flags = (unsigned)take_bytes(&reader, 1);
  sg_generate_params params;
  sg_generate_params_init(&params);
  params.width = (int16_t)take_bytes(&reader, 2);
  params.height = (int16_t)take_bytes(&reader, 2);
  params.steps = (int16_t)take_bytes(&reader, 2);
  uint32_t guidance_bits = (uint32_t)take_bytes(&reader, 4);
  memcpy(&params.guidance, &guidance_bits, sizeof params.guidance);
  params.seed = take_bytes(&reader, 8);
  size_t prompt_length = (size_t)take_bytes(&reader, 2);
  if (prompt_length > reader.size) prompt_length = reader.size;
  char *prompt = g_strndup((const char *)reader.data, prompt_length);
  reader.data += prompt_length;
  reader.size -= prompt_length;
  params.prompt = (flags & 1) ? NULL : prompt;
  params.negative_prompt = (flags & 2) ? prompt : NULL;

  scratch_file scratch;
  int use_file = (flags & 4) != 0;
  if (use_file) {
    scratch_write(&scratch, "conditioning.safetensors", reader.data, reader.size);
    params.conditioning_path = scratch.path;
  }
  progress_state state = {0};
  state.run_to_end = (flags & 8) && params.width <= 8 && params.height <= 8 && params.steps == 1;
  state.stop_early = params.width > 256 || params.height > 256;
  state.last_stage = -1;

  uint8_t *rgba = (uint8_t *)1; /* must be set to NULL on failure */
  sg_error error = {0};
  sg_status status = sg_generate(loaded_model, &params, on_progress, &state, &rgba, &error);
  if (status == SG_OK) {
    EXPECT(state.run_to_end && rgba != NULL);
    size_t bytes = (size_t)params.width * (size_t)params.height * 4;
    unsigned sum = 0;
    for (size_t i = 0; i < bytes; i++) sum += rgba[i];
    for (size_t i = 3; i < bytes; i += 4) EXPECT(rgba[i] == 255);
    (void)sum;
  } else {
    EXPECT(rgba == NULL);
    EXPECT(error.status == status && error.message[0] != '\0');
    EXPECT(status == SG_ERR_INVALID_ARGUMENT || status == SG_ERR_FORMAT || status == SG_ERR_IO ||
           status == SG_ERR_CANCELLED || status == SG_ERR_OUT_OF_MEMORY);
  }
  sg_free(rgba);
  if (use_file) scratch_remove(&scratch);
  g_free(prompt);
  return 0;
}
