/* clip_text.h: CLIP's text transformer (Hugging Face CLIPTextModel[WithProjection]). */
#ifndef SG_CLIP_TEXT_H
#define SG_CLIP_TEXT_H

#include <stdint.h>

#include "config.h"
#include "ops.h"
#include "weights.h"

/* hidden_layer value asking for last_hidden_state (after the final norm) instead of an index into
 * Hugging Face's hidden_states (shared with gemma2.h). */
#define SG_TEXT_HIDDEN_LAST 0x40000000

/* The fields of a Hugging Face CLIPTextConfig config.json, read unchanged (missing fields take
 * transformers' CLIPTextConfig defaults). */
typedef struct {
  int vocab_size;              /* 49408 */
  int hidden_size;             /* 768 (CLIP-L), 1280 (bigG) */
  int intermediate_size;       /* 3072, 5120 */
  int num_hidden_layers;       /* 12, 32 */
  int num_attention_heads;     /* 12, 20 */
  int max_position_embeddings; /* 77 */
  sg_activation hidden_act;    /* quick_gelu (CLIP-L), gelu (bigG, erf) */
  double layer_norm_eps;       /* 1e-5 */
  int projection_dim;          /* text_projection width (CLIPTextModelWithProjection) */
  int eos_token_id;            /* 2 in legacy configs: the pooled token is then argmax(ids) */
} sg_clip_text_config;

/* Reads a CLIPTextConfig config.json (e.g. MODEL/text_encoder/config.json); errors name the file
 * and field. */
sg_status sg_clip_text_config_load(const char *path, sg_clip_text_config *config,
                                   sg_error *error);
sg_status sg_clip_text_config_from_json(const sg_json *json, sg_clip_text_config *config,
                                        sg_error *error);

typedef struct sg_clip_text sg_clip_text;

/* Fetches the tensors under their Hugging Face names (text_model.embeddings.token_embedding.weight,
 * text_model.encoder.layers.{i}.self_attn.q_proj.weight, ..., text_projection.weight) with shape
 * checks. with_projection: 1 = CLIPTextModelWithProjection (text_projection.weight required),
 * 0 = CLIPTextModel (pooled output unprojected), -1 = use text_projection.weight when present. */
sg_status sg_clip_text_load(const sg_clip_text_config *config, sg_weights *weights,
                            int with_projection, sg_clip_text **out, sg_error *error);
void sg_clip_text_free(sg_clip_text *model);
const sg_clip_text_config *sg_clip_text_get_config(const sg_clip_text *model);
int sg_clip_text_has_projection(const sg_clip_text *model);
/* Width of the pooled output: projection_dim with the projection, else hidden_size. */
int sg_clip_text_pooled_dim(const sg_clip_text *model);

/* Resolves a hidden_layer (an index into Hugging Face's hidden_states, which holds L + 1 entries:
 * 0 = embeddings, k = after k layers, negative counts from the end; or SG_TEXT_HIDDEN_LAST) to
 * 0..L, or L + 1 for SG_TEXT_HIDDEN_LAST; -1 when out of range. */
int sg_text_resolve_hidden_layer(int hidden_layer, int num_layers);

/* The position of the pooled (EOS) token, as transformers picks it: with eos_token_id == 2
 * (legacy configs) the first position of the largest id, else the first position of
 * eos_token_id (0 when there is none). */
int sg_clip_text_eos_position(const sg_clip_text_config *config, const int32_t *ids, int count);

/* Runs the model on ids[count] (1 ≤ count ≤ max_position_embeddings) with the causal mask.
 * hidden_out [count, hidden_size] (may be NULL) gets hidden_states[hidden_layer] (or
 * last_hidden_state for SG_TEXT_HIDDEN_LAST); pooled_out [pooled_dim] (may be NULL) gets
 * text_embeds (with the projection) or pooler_output: the final-normed state of the EOS token.
 * Only the layers needed are run. Temporaries come from arena and are released. */
sg_status sg_clip_text_forward(sg_clip_text *model, sg_backend *be, sg_arena *arena,
                               const int32_t *ids, int count, int hidden_layer,
                               sg_tensor *hidden_out, sg_tensor *pooled_out, sg_error *error);

#endif
