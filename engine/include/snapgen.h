/* snapgen.h: the public C API of the SnapGen text-to-image engine (no GLib, GIMP or oneDNN types). */
#ifndef SNAPGEN_H
#define SNAPGEN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Every call that can fail returns one of these and fills an sg_error with a message in words. */
typedef enum {
  SG_OK = 0,
  SG_ERR_INVALID_ARGUMENT = 1, /* a parameter is out of range (size, steps, ...) */
  SG_ERR_IO = 2,               /* a file could not be read or written */
  SG_ERR_FORMAT = 3,           /* a model file or config is malformed */
  SG_ERR_OUT_OF_MEMORY = 4,
  SG_ERR_CANCELLED = 5,        /* the progress callback asked to stop */
  SG_ERR_BACKEND = 6           /* oneDNN refused or failed an operation */
} sg_status;

typedef struct {
  sg_status status;
  char message[1024];
} sg_error;

/* Which implementation runs the math: oneDNN (default) or the plain-C reference (tests). */
typedef enum { SG_BACKEND_ONEDNN = 0, SG_BACKEND_REFERENCE = 1 } sg_backend_kind;

typedef struct {
  int threads;             /* 0: all cores */
  sg_backend_kind backend;
  /* Nonzero: the text encoders' and the UNet's linear layers keep int8 weights with one scale per
   * output row (a quarter of their f32 memory), widened at each use; images change slightly. */
  int int8_weights;
  /* Nonzero: convolutions and linear layers compute in bf16 with f32 accumulation, for CPUs with
   * avx512_bf16 or AMX (images change slightly). On CPUs without bf16 instructions sg_context_new
   * fails with SG_ERR_BACKEND and says so (SG_ERR_INVALID_ARGUMENT with the reference backend). */
  int bf16_compute;
} sg_context_options;

/* The stages reported to the progress callback. */
typedef enum {
  SG_STAGE_LOADING = 0,
  SG_STAGE_ENCODING_TEXT = 1,
  SG_STAGE_DENOISING = 2,
  SG_STAGE_DECODING = 3
} sg_stage;

/* Called at each stage change and after each UNet step; return nonzero to cancel the generation.
 * It runs on the thread that called sg_generate. */
typedef int (*sg_progress_fn)(void *user_data, sg_stage stage, int step, int total_steps);

typedef struct {
  const char *prompt;            /* UTF-8; NULL or "" is the empty prompt */
  const char *negative_prompt;   /* used only with guidance > 1 */
  const char *conditioning_path; /* optional: a safetensors file with "context", "pooled" (and
                                    "context_mask"); replaces the text encoders */
  uint64_t seed;
  int steps;                     /* 0: the model's default */
  float guidance;                /* <= 1: no classifier-free guidance; < 0: model default */
  int width, height;             /* pixels; multiples of the model's pixel stride */
} sg_generate_params;

typedef struct sg_context sg_context;

void sg_generate_params_init(sg_generate_params *params);
void sg_context_options_init(sg_context_options *options);

/* Loads a model folder (model_index.json + components). */
sg_status sg_context_new(const char *model_dir, const sg_context_options *options,
                         sg_context **out, sg_error *error);
void sg_context_free(sg_context *context);

/* Generates one image: *rgba_out gets width*height*4 bytes (free with sg_free). */
sg_status sg_generate(sg_context *context, const sg_generate_params *params,
                      sg_progress_fn progress, void *user_data, uint8_t **rgba_out,
                      sg_error *error);

/* The model's defaults and limits, for front ends. */
int sg_context_default_steps(const sg_context *context);
float sg_context_default_guidance(const sg_context *context);
int sg_context_pixel_stride(const sg_context *context);
int sg_max_image_side(void);

/* Writes an RGBA image as PNG with text chunks (key/value pairs, NULL-terminated list); the file
 * appears only when complete (written to a temporary name, then renamed). */
sg_status sg_write_png(const char *path, const uint8_t *rgba, int width, int height,
                       const char *const *text_key_values, sg_error *error);

void sg_free(void *pointer);
const char *sg_status_name(sg_status status);

#ifdef __cplusplus
}
#endif
#endif
