/* unet.h: SnapGen's efficient UNet denoiser (SPEC §2.3), every architectural choice a config field. */
#ifndef SG_UNET_H
#define SG_UNET_H

#include "config.h"
#include "ops.h"
#include "weights.h"

#define SG_UNET_MAX_STAGES 4

typedef struct {
  int in_channels, out_channels;           /* latent channels (16) */
  int num_stages;
  int block_channels[SG_UNET_MAX_STAGES];  /* 256, 512, 896 */
  int down_res_blocks[SG_UNET_MAX_STAGES]; /* 2, 2, 2 */
  int up_res_blocks[SG_UNET_MAX_STAGES];   /* 3, 3, 3 */
  int transformer_depth[SG_UNET_MAX_STAGES]; /* 1, 2, 4 (0: no transformer in that stage) */
  int self_attention[SG_UNET_MAX_STAGES];    /* 0, 0, 1 */
  int mid_transformer_depth;                 /* 4 (0: mid is two res blocks only) */
  int mid_self_attention;                    /* 1 */
  int head_dim;                              /* 64 */
  int num_kv_heads;                          /* 1: multi-query attention */
  int context_dim;                           /* 1024 */
  int ffn_geglu;                             /* 1: GEGLU, 0: GELU MLP */
  double ffn_mult;                           /* 3 */
  int separable;                             /* 1: expanded separable residual blocks */
  double expansion;                          /* 2 */
  int time_proj_dim;                         /* 256 (sinusoid) */
  int time_embed_dim;                        /* 1024 */
  int flip_sin_to_cos;                       /* 1: [cos, sin] */
  int pooled_dim;                            /* 2048; 0: no pooled-text embedding */
  int norm_groups;                           /* 32 */
  double norm_eps;                           /* 1e-5 (group and layer norm) */
  int qk_norm;                               /* 1: RMSNorm on q and k per head */
  double qk_norm_eps;                        /* 1e-6 */
} sg_unet_config;

/* Reads unet/config.json (field names as in weights/README.md) and checks it, before anything is
 * allocated: channel counts divisible by groups and head_dim, sizes within sane bounds. */
sg_status sg_unet_config_load(const char *path, sg_unet_config *config, sg_error *error);
/* The same from an already parsed JSON object (e.g. a config stored in a test case). */
sg_status sg_unet_config_from_json(const sg_json *json, sg_unet_config *config, sg_error *error);
/* The checks sg_unet_config_load makes (for configs filled in by hand); source names it in
 * messages. */
sg_status sg_unet_config_check(const sg_unet_config *config, const char *source, sg_error *error);
/* Parameter count implied by the config (analytic, no weights needed; equals what sg_unet_load
 * fetches); -1 when the config fails sg_unet_config_check. */
int64_t sg_unet_parameter_count(const sg_unet_config *config);
/* Multiply-accumulates ×2 of one forward at a latent of h×w with ctx_tokens context tokens
 * (convolutions, linear layers, attention products; 0 for a config that fails its checks). */
double sg_unet_flops(const sg_unet_config *config, int h, int w, int ctx_tokens);

typedef struct sg_unet sg_unet;

/* A UNet folder's weights (MODEL/unet) as the pipeline reads them, for one backend (handed off):
 * with bf16_compute, the folder's bf16 variant (diffusion_pytorch_model.bf16.safetensors) where
 * it has one, its matrices left in the file's pages for the products to read in place (no packed
 * copies, nothing packed at the first step); with int8_linears, int8 matrices. */
sg_status sg_unet_weights_open(const char *folder, int bf16_compute, int int8_linears,
                               sg_weights **out, sg_error *error);
/* Fetches every tensor from weights (names in weights/README.md) with shape checks. */
sg_status sg_unet_load(const sg_unet_config *config, sg_weights *weights, sg_unet **out,
                       sg_error *error);
void sg_unet_free(sg_unet *unet);

/* v = UNet(x, t·1000, context, pooled): x and out [in_channels, H, W] (H, W multiples of
 * 2^(num_stages-1)); timestep is t·1000; context [S, context_dim]; context_mask [S] of 0/1 or NULL;
 * pooled [pooled_dim] or NULL (then the pooled embedding is skipped, i.e. treated as zero input).
 * Temporaries come from arena and are released before returning. */
sg_status sg_unet_forward(sg_unet *unet, sg_backend *be, sg_arena *arena, const sg_tensor *x,
                          float timestep, const sg_tensor *context, const float *context_mask,
                          const sg_tensor *pooled, sg_tensor *out, sg_error *error);

/* The keys and values of every cross-attention for one context [S, context_dim]: they depend on
 * the context alone, so a generation makes them once per prompt (with guidance, once for each
 * of its two contexts) and passes them to every step. Free after the generation. */
typedef struct sg_unet_context_kv sg_unet_context_kv;
sg_status sg_unet_context_kv_new(sg_unet *unet, sg_backend *be, const sg_tensor *context,
                                 sg_unet_context_kv **out, sg_error *error);
void sg_unet_context_kv_free(sg_unet_context_kv *kv);
/* sg_unet_forward with the context given as its keys and values (sg_unet_forward makes them for
 * the call, then frees them). context_mask [S] as there. */
sg_status sg_unet_forward_kv(sg_unet *unet, sg_backend *be, sg_arena *arena, const sg_tensor *x,
                             float timestep, const sg_unet_context_kv *kv,
                             const float *context_mask, const sg_tensor *pooled, sg_tensor *out,
                             sg_error *error);

/* Test entry points: one module of a loaded UNet, found by its tensor-name prefix.
 * Residual block ("down.0.res.1", "mid.res.0", "up.1.res.2"): x [in, H, W] (for up blocks x is
 * already the concatenation with the skip), temb [time_embed_dim] before SiLU, out [out, H, W].
 * Transformer ("down.0.attn.0", "mid.attn.0", ...): x and out [C, H, W] (out may be x). */
sg_status sg_unet_forward_res_block(sg_unet *unet, sg_backend *be, sg_arena *arena,
                                    const char *name, const sg_tensor *x, const sg_tensor *temb,
                                    sg_tensor *out, sg_error *error);
sg_status sg_unet_forward_transformer(sg_unet *unet, sg_backend *be, sg_arena *arena,
                                      const char *name, const sg_tensor *x,
                                      const sg_tensor *context, const float *context_mask,
                                      sg_tensor *out, sg_error *error);

#endif
