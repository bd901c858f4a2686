/* decoder.h: the compact, attention-free latent-to-RGB decoder (TAESD-style, separable option). */
#ifndef SG_DECODER_H
#define SG_DECODER_H

#include "config.h"
#include "ops.h"
#include "weights.h"

#define SG_DECODER_MAX_STAGES 8

typedef struct {
  int latent_channels;                   /* 16 */
  int out_channels;                      /* 3 */
  int num_stages;                        /* stages; an upsample ×2 between consecutive stages */
  int channels[SG_DECODER_MAX_STAGES];   /* width of each stage */
  int blocks[SG_DECODER_MAX_STAGES];     /* residual blocks per stage */
  int separable;                         /* 1: DW3x3 + PW1x1 instead of dense 3x3 */
  double latent_clamp;                   /* x -> c·tanh(x/c) on input (0: none) */
} sg_decoder_config;

sg_status sg_decoder_config_load(const char *path, sg_decoder_config *config, sg_error *error);
/* The same from an already parsed JSON object; and the checks alone (source names it). */
sg_status sg_decoder_config_from_json(const sg_json *json, sg_decoder_config *config,
                                      sg_error *error);
sg_status sg_decoder_config_check(const sg_decoder_config *config, const char *source,
                                  sg_error *error);
int64_t sg_decoder_parameter_count(const sg_decoder_config *config);
/* Upsampling factor 2^(num_stages-1). */
int sg_decoder_scale(const sg_decoder_config *config);
/* Multiply-accumulates ×2 of one forward from a latent of h×w (convolutions only). */
double sg_decoder_flops(const sg_decoder_config *config, int h, int w);

typedef struct sg_decoder sg_decoder;

sg_status sg_decoder_load(const sg_decoder_config *config, sg_weights *weights,
                          sg_decoder **out, sg_error *error);
void sg_decoder_free(sg_decoder *decoder);
/* latent [latent_channels, h, w] -> image [out_channels, h·scale, w·scale], values ~[0,1]
 * (not clamped here). */
sg_status sg_decoder_forward(sg_decoder *decoder, sg_backend *be, sg_arena *arena,
                             const sg_tensor *latent, sg_tensor *image, sg_error *error);
/* The same, decoding tiles of at most `tile` latent pixels a side (0: the whole latent at once),
 * each from a margin wide enough for the decoder's receptive field, so the image is the same as
 * an untiled decode while the activations take memory for about one tile only. The first
 * `whole_stages` stages run on the whole image (-1: as many as fit in the tiles' memory; they
 * are the costly ones to tile). sg_decoder_forward uses SG_DECODER_TILE and -1 (a 1024² image at
 * scale 8 is then 2×2 tiles of 512² for the last stages). */
#define SG_DECODER_TILE 64
sg_status sg_decoder_forward_tiled(sg_decoder *decoder, sg_backend *be, sg_arena *arena,
                                   const sg_tensor *latent, int tile, int whole_stages,
                                   sg_tensor *image, sg_error *error);

#endif
