/* conditioner.h: prompt -> UNet conditioning (context tokens, mask, pooled) from the encoders. */
#ifndef SG_CONDITIONER_H
#define SG_CONDITIONER_H

#include <stdint.h>
#include <stdio.h>

#include "ops.h"
#include "tensor.h"

/* One prompt's conditioning; every buffer is owned (g_malloc) and freed by
 * sg_conditioning_out_clear. */
typedef struct {
  sg_tensor context;   /* [S, context_dim] */
  float *context_mask; /* [S]: 1 = token used, 0 = padding or a missing encoder */
  sg_tensor pooled;    /* [pooled_dim]; data NULL when pooled_dim is 0 */
} sg_conditioning_out;

void sg_conditioning_out_clear(sg_conditioning_out *out);

typedef struct sg_conditioner sg_conditioner;

/* Reads MODEL/model_index.json and MODEL/conditioner/config.json (weights/README.md, "Text
 * side"), then loads every listed encoder whose component is present (its class named in
 * model_index.json and its folder there) with its tokenizer, and the conditioner's context_proj.{i}
 * weights. A model without a conditioner (no "conditioner" entry in model_index.json) gives
 * *out = NULL and SG_OK. Errors name the file, field or tensor at fault. int8_linears: the
 * encoders' linear layers keep int8 weights (sg_weights_store_linears_int8). */
sg_status sg_conditioner_load(const char *model_dir, int int8_linears, sg_conditioner **out,
                              sg_error *error);
void sg_conditioner_free(sg_conditioner *conditioner);

int sg_conditioner_context_dim(const sg_conditioner *conditioner);
int sg_conditioner_pooled_dim(const sg_conditioner *conditioner);

/* The conditioning of a UTF-8 prompt (NULL is ""): each listed encoder's chosen hidden states go
 * through context_proj.{i} and are concatenated along tokens in the listed order; the pooled
 * outputs of the encoders with "pooled" are concatenated into pooled. A missing encoder gives
 * zero tokens with mask 0 (77 for an encoder without mask_padding, or its max_tokens when given;
 * none with mask_padding) and a zero pooled part. A context that would have no token gets one
 * zero token with mask 0. The empty prompt's conditioning is computed once and then copied from a
 * cache. Invalid UTF-8 or a prompt over 64 KiB: SG_ERR_INVALID_ARGUMENT. Temporaries come from
 * arena and are released. */
sg_status sg_conditioner_encode(sg_conditioner *conditioner, sg_backend *be, sg_arena *arena,
                                const char *prompt, sg_conditioning_out *out, sg_error *error);

/* Per-encoder facts for reports and `snapgen bench`; the timings and statistics are those of the
 * last sg_conditioner_encode that ran the encoder (not a cached empty prompt). */
typedef struct {
  float mean, std, min, max;
} sg_value_stats;

typedef struct {
  const char *component;       /* "text_encoder", ... */
  const char *class_name;      /* from model_index.json, "" when missing */
  int present;                 /* 0: missing (zero tokens, mask 0) */
  int hidden_layer;            /* as in the config (SG_TEXT_HIDDEN_LAST for "last") */
  int pooled, mask_padding;
  int tokens;                  /* context tokens of the last encode (fixed count when missing) */
  int real_tokens;             /* of which carry mask 1 */
  int hidden_width, pooled_width; /* pooled_width 0 when the encoder adds no pooled part */
  int64_t parameters;          /* parameters loaded */
  size_t converted_bytes;      /* f32 copies made from f16/bf16 files (f32 files stay mapped) */
  double load_seconds, tokenize_seconds, forward_seconds;
  size_t arena_peak_bytes;     /* the arena's peak after this encoder's last forward */
  sg_value_stats hidden_stats; /* of its chosen hidden states (before context_proj) */
  sg_value_stats pooled_stats;
} sg_encoder_info;

int sg_conditioner_encoder_count(const sg_conditioner *conditioner);
/* Fills *info for encoder index (0-based, config order); 0 when index is out of range. */
int sg_conditioner_encoder_info(const sg_conditioner *conditioner, int index,
                                sg_encoder_info *info);

/* The token ids encoder `index` would get for prompt (BOS, EOS and CLIP padding included);
 * *ids (g_free) is NULL and *count 0 for a missing encoder. *real_count (may be NULL) gets the
 * number of tokens before padding. */
sg_status sg_conditioner_token_ids(sg_conditioner *conditioner, int index, const char *prompt,
                                   int32_t **ids, int *count, int *real_count, sg_error *error);
/* The vocabulary text of a token of encoder `index`, or NULL. */
const char *sg_conditioner_token_text(const sg_conditioner *conditioner, int index, int32_t id);

/* For `snapgen encode`: encodes prompt and prints, per encoder, its token ids and texts, the
 * statistics (mean/std/min/max) of its hidden states and pooled output and its timings, then those
 * of the context, mask and pooled vector. */
sg_status sg_conditioner_print_report(sg_conditioner *conditioner, sg_backend *be,
                                      sg_arena *arena, const char *prompt, FILE *stream,
                                      sg_error *error);

#endif
