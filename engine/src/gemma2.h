/* gemma2.h: the Gemma-2 decoder as a text encoder (Hugging Face Gemma2Model, hidden states). */
#ifndef SG_GEMMA2_H
#define SG_GEMMA2_H

#include <stdint.h>

#include "clip_text.h" /* SG_TEXT_HIDDEN_LAST, sg_text_resolve_hidden_layer */
#include "config.h"
#include "ops.h"
#include "weights.h"

/* The fields of a Hugging Face Gemma2Config config.json, read unchanged. Missing fields take
 * transformers' Gemma2Config defaults, except that a missing or null attn_logit_softcapping or
 * sliding_window means none (the reader cannot tell null from absent; transformers writes every
 * field, so real files always say). final_logit_softcapping belongs to the LM head: unused. */
typedef struct {
  int vocab_size;              /* 256000 */
  int hidden_size;             /* 2304 */
  int intermediate_size;       /* 9216 */
  int num_hidden_layers;       /* 26 */
  int num_attention_heads;     /* 8 */
  int num_key_value_heads;     /* 4 */
  int head_dim;                /* 256 */
  int max_position_embeddings; /* 8192 */
  double rms_norm_eps;         /* 1e-6 */
  double rope_theta;           /* 10000 */
  double query_pre_attn_scalar; /* 256: attention scale query_pre_attn_scalar^-0.5 */
  double attn_logit_softcapping; /* 50 (0: none) */
  int sliding_window;          /* 4096, used by the even layers (0: none) */
  int attention_bias;          /* 0 */
  sg_activation hidden_activation; /* gelu_pytorch_tanh */
} sg_gemma2_config;

sg_status sg_gemma2_config_load(const char *path, sg_gemma2_config *config, sg_error *error);
sg_status sg_gemma2_config_from_json(const sg_json *json, sg_gemma2_config *config,
                                     sg_error *error);

typedef struct sg_gemma2 sg_gemma2;

/* Fetches the tensors by their Hugging Face names, with the "model." prefix of
 * Gemma2ForCausalLM checkpoints or without it (Gemma2Model): embed_tokens.weight,
 * layers.{i}.input_layernorm.weight, layers.{i}.self_attn.{q,k,v,o}_proj.weight,
 * layers.{i}.post_attention_layernorm.weight, layers.{i}.pre_feedforward_layernorm.weight,
 * layers.{i}.mlp.{gate,up,down}_proj.weight, layers.{i}.post_feedforward_layernorm.weight,
 * norm.weight. */
sg_status sg_gemma2_load(const sg_gemma2_config *config, sg_weights *weights, sg_gemma2 **out,
                         sg_error *error);
void sg_gemma2_free(sg_gemma2 *model);
const sg_gemma2_config *sg_gemma2_get_config(const sg_gemma2 *model);

/* Runs the model on ids[count] (the real tokens only; 1 ≤ count ≤ max_position_embeddings) at
 * positions 0..count-1 with the causal mask. hidden_out [count, hidden_size] gets
 * hidden_states[hidden_layer] as transformers defines them for Gemma-2 (0 = scaled embeddings,
 * k < L = after k layers, L = last_hidden_state, after the final norm) or last_hidden_state for
 * SG_TEXT_HIDDEN_LAST. Temporaries come from arena and are released. */
sg_status sg_gemma2_forward(sg_gemma2 *model, sg_backend *be, sg_arena *arena,
                            const int32_t *ids, int count, int hidden_layer,
                            sg_tensor *hidden_out, sg_error *error);

#endif
