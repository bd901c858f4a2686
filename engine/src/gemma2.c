/* gemma2.c: the Gemma-2 decoder stack as a text encoder, Hugging Face config and names. */
#include "gemma2.h"

#include <glib.h>
#include <math.h>
#include <string.h>

#include "error.h"

#define MAX_WIDTH 65536
#define MAX_LAYERS 1024

/* transformers' Gemma2Config defaults (the 9B shape they describe is irrelevant here: real files
 * state every field). */
static const sg_gemma2_config default_config = {
    .vocab_size = 256000, .hidden_size = 2304, .intermediate_size = 9216,
    .num_hidden_layers = 26, .num_attention_heads = 8, .num_key_value_heads = 4, .head_dim = 256,
    .max_position_embeddings = 8192, .rms_norm_eps = 1e-6, .rope_theta = 10000.0,
    .query_pre_attn_scalar = 256.0, .attn_logit_softcapping = 0.0, .sliding_window = 0,
    .attention_bias = 0, .hidden_activation = SG_ACT_GELU_TANH};

static sg_status read_int(const sg_json *json, const char *field, int64_t min, int64_t max,
                          int *value, sg_error *error) {
  int64_t read = 0;
  SG_TRY(sg_json_int(json, field, 1, *value, min, max, &read, error));
  *value = (int)read;
  return SG_OK;
}

static sg_status read_float(const sg_json *json, const char *field, double min, double max,
                            double *value, sg_error *error) {
  return sg_json_float(json, field, 1, *value, min, max, value, error);
}

sg_status sg_gemma2_config_from_json(const sg_json *json, sg_gemma2_config *config,
                                     sg_error *error) {
  sg_gemma2_config c = default_config;
  const char *path = sg_json_path(json);
  SG_TRY(read_int(json, "vocab_size", 1, 16 << 20, &c.vocab_size, error));
  SG_TRY(read_int(json, "hidden_size", 1, MAX_WIDTH, &c.hidden_size, error));
  SG_TRY(read_int(json, "intermediate_size", 1, 4 * MAX_WIDTH, &c.intermediate_size, error));
  SG_TRY(read_int(json, "num_hidden_layers", 1, MAX_LAYERS, &c.num_hidden_layers, error));
  SG_TRY(read_int(json, "num_attention_heads", 1, 4096, &c.num_attention_heads, error));
  SG_TRY(read_int(json, "num_key_value_heads", 1, 4096, &c.num_key_value_heads, error));
  SG_TRY(read_int(json, "head_dim", 2, 4096, &c.head_dim, error));
  SG_TRY(read_int(json, "max_position_embeddings", 1, 1 << 24, &c.max_position_embeddings, error));
  SG_TRY(read_float(json, "rms_norm_eps", 0.0, 1.0, &c.rms_norm_eps, error));
  SG_TRY(read_float(json, "rope_theta", 1.0, 1e12, &c.rope_theta, error));
  SG_TRY(read_float(json, "query_pre_attn_scalar", 1e-6, 1e9, &c.query_pre_attn_scalar, error));
  SG_TRY(read_float(json, "attn_logit_softcapping", 0.0, 1e9, &c.attn_logit_softcapping, error));
  SG_TRY(read_int(json, "sliding_window", 0, 1 << 30, &c.sliding_window, error));
  SG_TRY(sg_json_bool(json, "attention_bias", 1, c.attention_bias, &c.attention_bias, error));
  /* Older files name the activation hidden_act only; hidden_activation wins when both exist. */
  const char *field = sg_json_has(json, "hidden_activation") ? "hidden_activation" : "hidden_act";
  char *act = NULL;
  SG_TRY(sg_json_string(json, field, "gelu_pytorch_tanh", &act, error));
  if (strcmp(act, "gelu_pytorch_tanh") == 0 || strcmp(act, "gelu_new") == 0)
    c.hidden_activation = SG_ACT_GELU_TANH;
  else if (strcmp(act, "gelu") == 0)
    c.hidden_activation = SG_ACT_GELU_ERF;
  else {
    sg_status status = sg_fail(error, SG_ERR_FORMAT,
                               "%s: field '%s' is \"%s\"; the engine has gelu_pytorch_tanh, "
                               "gelu_new and gelu", path, field, act);
    g_free(act);
    return status;
  }
  g_free(act);
  if (c.head_dim % 2)
    return sg_fail(error, SG_ERR_FORMAT, "%s: head_dim %d must be even (rotary embedding)", path,
                   c.head_dim);
  if (c.num_attention_heads % c.num_key_value_heads)
    return sg_fail(error, SG_ERR_FORMAT,
                   "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path,
                   c.num_attention_heads, c.num_key_value_heads);
  *config = c;
  return SG_OK;
}

sg_status sg_gemma2_config_load(const char *path, sg_gemma2_config *config, sg_error *error) {
  sg_json *json = NULL;
  SG_TRY(sg_json_load(path, &json, error));
  sg_status status = sg_gemma2_config_from_json(json, config, error);
  sg_json_free(json);
  return status;
}

/* ---------------------------------------------------------------------------------------------
 * Weights */

typedef struct {
  sg_tensor input_norm, post_attention_norm, pre_feedforward_norm, post_feedforward_norm;
  sg_tensor q_w, k_w, v_w, o_w;
  sg_tensor q_b, k_b, v_b, o_b; /* data NULL without attention_bias */
  sg_tensor gate_w, up_w, down_w;
} gemma2_layer;

struct sg_gemma2 {
  sg_gemma2_config config;
  sg_tensor embed_tokens; /* [vocab, H], in the file's dtype */
  const char *embed_name; /* its tensor name, for messages */
  gemma2_layer *layers;
  sg_tensor norm;
};

static sg_status get_tensor(sg_weights *weights, const char *prefix, const char *name, int64_t d0,
                            int64_t d1, sg_tensor *out, sg_error *error) {
  char full[200];
  g_snprintf(full, sizeof full, "%s%s", prefix, name);
  int64_t dims[2] = {d0, d1};
  return sg_weights_get(weights, full, d1 > 0 ? 2 : 1, dims, out, error);
}

static sg_status load_layer(sg_weights *weights, const char *prefix, const sg_gemma2_config *c,
                            int index, gemma2_layer *layer, sg_error *error) {
  int64_t h = c->hidden_size, inner = c->intermediate_size;
  int64_t q_width = (int64_t)c->num_attention_heads * c->head_dim;
  int64_t kv_width = (int64_t)c->num_key_value_heads * c->head_dim;
  struct {
    const char *suffix;
    sg_tensor *tensor;
    int64_t d0, d1;
    int is_bias;
  } parts[] = {
      {"input_layernorm.weight", &layer->input_norm, h, 0, 0},
      {"post_attention_layernorm.weight", &layer->post_attention_norm, h, 0, 0},
      {"pre_feedforward_layernorm.weight", &layer->pre_feedforward_norm, h, 0, 0},
      {"post_feedforward_layernorm.weight", &layer->post_feedforward_norm, h, 0, 0},
      {"self_attn.q_proj.weight", &layer->q_w, q_width, h, 0},
      {"self_attn.k_proj.weight", &layer->k_w, kv_width, h, 0},
      {"self_attn.v_proj.weight", &layer->v_w, kv_width, h, 0},
      {"self_attn.o_proj.weight", &layer->o_w, h, q_width, 0},
      {"self_attn.q_proj.bias", &layer->q_b, q_width, 0, 1},
      {"self_attn.k_proj.bias", &layer->k_b, kv_width, 0, 1},
      {"self_attn.v_proj.bias", &layer->v_b, kv_width, 0, 1},
      {"self_attn.o_proj.bias", &layer->o_b, h, 0, 1},
      {"mlp.gate_proj.weight", &layer->gate_w, inner, h, 0},
      {"mlp.up_proj.weight", &layer->up_w, inner, h, 0},
      {"mlp.down_proj.weight", &layer->down_w, h, inner, 0},
  };
  char name[160];
  for (size_t i = 0; i < G_N_ELEMENTS(parts); i++) {
    if (parts[i].is_bias && !c->attention_bias) continue;
    if (parts[i].d1 > 0) { /* a linear layer's weight: int8 when the weights store them so */
      char full[200];
      g_snprintf(full, sizeof full, "%slayers.%d.%s", prefix, index, parts[i].suffix);
      SG_TRY(sg_weights_get_linear(weights, full, parts[i].d0, parts[i].d1, parts[i].tensor,
                                   error));
      continue;
    }
    g_snprintf(name, sizeof name, "layers.%d.%s", index, parts[i].suffix);
    SG_TRY(get_tensor(weights, prefix, name, parts[i].d0, 0, parts[i].tensor, error));
  }
  return SG_OK;
}

sg_status sg_gemma2_load(const sg_gemma2_config *config, sg_weights *weights, sg_gemma2 **out,
                         sg_error *error) {
  *out = NULL;
  sg_gemma2 *m = g_new0(sg_gemma2, 1);
  m->config = *config;
  m->layers = g_new0(gemma2_layer, config->num_hidden_layers);
  int64_t h = config->hidden_size;
  /* Gemma2ForCausalLM files say "model.embed_tokens.weight", Gemma2Model files
   * "embed_tokens.weight": the embedding decides which prefix the other names take. */
  const char *prefix = "model.";
  int64_t dims[2] = {config->vocab_size, h};
  int found = 0;
  /* The token table stays in the file's dtype (1.2 GB of bf16 at full size, 2.4 GB widened): a
   * prompt reads only its own rows. */
  sg_status status = sg_weights_get_table(weights, "model.embed_tokens.weight", dims[0], dims[1],
                                          &m->embed_tokens, &found, error);
  m->embed_name = "model.embed_tokens.weight";
  if (status == SG_OK && !found) {
    prefix = "";
    m->embed_name = "embed_tokens.weight";
    status = sg_weights_get_table(weights, m->embed_name, dims[0], dims[1], &m->embed_tokens,
                                  NULL, error);
  }
  for (int i = 0; i < config->num_hidden_layers && status == SG_OK; i++)
    status = load_layer(weights, prefix, config, i, &m->layers[i], error);
  if (status == SG_OK) status = get_tensor(weights, prefix, "norm.weight", h, 0, &m->norm, error);
  if (status != SG_OK) {
    sg_gemma2_free(m);
    return status;
  }
  *out = m;
  return SG_OK;
}

void sg_gemma2_free(sg_gemma2 *model) {
  if (!model) return;
  g_free(model->layers);
  g_free(model);
}

const sg_gemma2_config *sg_gemma2_get_config(const sg_gemma2 *model) { return &model->config; }

/* ---------------------------------------------------------------------------------------------
 * Forward */

#define CHECK(expr)                 \
  do {                              \
    status = (expr);                \
    if (status != SG_OK) goto done; \
  } while (0)

/* Rotary tables cos/sin [count, head_dim/2], computed in float32 the way transformers does:
 * inv_freq = 1 / theta^(2i/d), angle = position * inv_freq. */
static void rope_tables(const sg_gemma2_config *c, int count, float *cos_table,
                        float *sin_table) {
  int half = c->head_dim / 2;
  for (int i = 0; i < half; i++) {
    float exponent = (float)(2 * i) / (float)c->head_dim;
    float inv_freq = 1.0f / powf((float)c->rope_theta, exponent);
    for (int t = 0; t < count; t++) {
      float angle = (float)t * inv_freq;
      cos_table[t * half + i] = (float)cos((double)angle);
      sin_table[t * half + i] = (float)sin((double)angle);
    }
  }
}

/* Rotates each head of x [count, heads*head_dim] in place (rotate_half convention: element i pairs
 * with element i + head_dim/2). */
static void apply_rope(sg_tensor *x, int heads, int head_dim, const float *cos_table,
                       const float *sin_table) {
  int64_t count = x->dims[0], width = x->dims[1];
  int half = head_dim / 2;
  float *data = x->data;
  for (int64_t t = 0; t < count; t++) {
    const float *cs = cos_table + t * half, *sn = sin_table + t * half;
    for (int head = 0; head < heads; head++) {
      float *v = data + t * width + (int64_t)head * head_dim;
      for (int i = 0; i < half; i++) {
        float a = v[i], b = v[i + half];
        v[i] = a * cs[i] - b * sn[i];
        v[i + half] = b * cs[i] + a * sn[i];
      }
    }
  }
}

static const sg_tensor *bias_of(const sg_tensor *b) { return b->data ? b : NULL; }

typedef struct {
  sg_tensor normed, q, k, v, attended, gate, up;
  float *cos_table, *sin_table;
} gemma2_scratch;

static sg_status run_layer(const sg_gemma2 *m, int index, sg_backend *be, sg_tensor *x,
                           gemma2_scratch *s, sg_error *error) {
  const sg_gemma2_config *c = &m->config;
  const gemma2_layer *layer = &m->layers[index];
  float eps = (float)c->rms_norm_eps;
  /* Even layers use the sliding window (transformers: is_sliding = not layer_idx % 2). */
  sg_attention_params params = {.heads = c->num_attention_heads,
                                .kv_heads = c->num_key_value_heads,
                                .head_dim = c->head_dim,
                                .scale = (float)pow(c->query_pre_attn_scalar, -0.5),
                                .softcap = (float)c->attn_logit_softcapping,
                                .causal = 1,
                                .window = index % 2 == 0 ? c->sliding_window : 0};
  sg_status status;
  CHECK(sg_rms_norm(be, x, &layer->input_norm, eps, 1.0f, &s->normed, error));
  CHECK(sg_linear(be, &s->normed, &layer->q_w, bias_of(&layer->q_b), SG_ACT_NONE, &s->q, error));
  CHECK(sg_linear(be, &s->normed, &layer->k_w, bias_of(&layer->k_b), SG_ACT_NONE, &s->k, error));
  CHECK(sg_linear(be, &s->normed, &layer->v_w, bias_of(&layer->v_b), SG_ACT_NONE, &s->v, error));
  apply_rope(&s->q, c->num_attention_heads, c->head_dim, s->cos_table, s->sin_table);
  apply_rope(&s->k, c->num_key_value_heads, c->head_dim, s->cos_table, s->sin_table);
  CHECK(sg_attention(be, &s->q, &s->k, &s->v, &params, &s->attended, error));
  CHECK(sg_linear(be, &s->attended, &layer->o_w, bias_of(&layer->o_b), SG_ACT_NONE, &s->normed,
                  error));
  CHECK(sg_rms_norm(be, &s->normed, &layer->post_attention_norm, eps, 1.0f, &s->normed, error));
  CHECK(sg_binary(be, SG_BINARY_ADD, x, &s->normed, x, error));
  /* MLP: down(act(gate(h)) * up(h)) between the pre- and post-feedforward norms. */
  CHECK(sg_rms_norm(be, x, &layer->pre_feedforward_norm, eps, 1.0f, &s->normed, error));
  CHECK(sg_linear(be, &s->normed, &layer->gate_w, NULL, c->hidden_activation, &s->gate, error));
  CHECK(sg_linear(be, &s->normed, &layer->up_w, NULL, SG_ACT_NONE, &s->up, error));
  CHECK(sg_binary(be, SG_BINARY_MUL, &s->up, &s->gate, &s->up, error));
  CHECK(sg_linear(be, &s->up, &layer->down_w, NULL, SG_ACT_NONE, &s->normed, error));
  CHECK(sg_rms_norm(be, &s->normed, &layer->post_feedforward_norm, eps, 1.0f, &s->normed, error));
  CHECK(sg_binary(be, SG_BINARY_ADD, x, &s->normed, x, error));
done:
  return status;
}

sg_status sg_gemma2_forward(sg_gemma2 *m, sg_backend *be, sg_arena *arena, const int32_t *ids,
                            int count, int hidden_layer, sg_tensor *hidden_out, sg_error *error) {
  const sg_gemma2_config *c = &m->config;
  int layers = c->num_hidden_layers;
  int64_t h = c->hidden_size;
  if (count < 1 || count > c->max_position_embeddings)
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "Gemma-2 encoder: %d tokens given, it takes "
                   "1 to %d", count, c->max_position_embeddings);
  for (int i = 0; i < count; i++)
    if (ids[i] < 0 || ids[i] >= c->vocab_size)
      return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                     "Gemma-2 encoder: token id %d at position %d is outside the vocabulary of "
                     "%d", (int)ids[i], i, c->vocab_size);
  /* hidden_states has L + 1 entries and its last one is already normed: L and "last" agree. */
  int wanted = sg_text_resolve_hidden_layer(hidden_layer, layers);
  if (wanted < 0)
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "Gemma-2 encoder: hidden layer %d is outside -%d..%d", hidden_layer, layers + 1,
                   layers);
  if (wanted > layers) wanted = layers;
  if (!hidden_out || hidden_out->ndim != 2 || hidden_out->dims[0] != count ||
      hidden_out->dims[1] != h)
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "Gemma-2 encoder: the output must be [%d, %lld]",
                   count, (long long)h);

  size_t mark = sg_arena_mark(arena);
  sg_status status;
  gemma2_scratch s;
  sg_tensor x;
  int64_t hidden_dims[2] = {count, h};
  int64_t q_dims[2] = {count, (int64_t)c->num_attention_heads * c->head_dim};
  int64_t kv_dims[2] = {count, (int64_t)c->num_key_value_heads * c->head_dim};
  int64_t inner_dims[2] = {count, c->intermediate_size};
  int64_t table = (int64_t)count * (c->head_dim / 2);
  CHECK(sg_arena_tensor(arena, 2, hidden_dims, &x, error));
  CHECK(sg_arena_tensor(arena, 2, hidden_dims, &s.normed, error));
  CHECK(sg_arena_tensor(arena, 2, q_dims, &s.q, error));
  CHECK(sg_arena_tensor(arena, 2, kv_dims, &s.k, error));
  CHECK(sg_arena_tensor(arena, 2, kv_dims, &s.v, error));
  CHECK(sg_arena_tensor(arena, 2, q_dims, &s.attended, error));
  CHECK(sg_arena_tensor(arena, 2, inner_dims, &s.gate, error));
  CHECK(sg_arena_tensor(arena, 2, inner_dims, &s.up, error));
  s.cos_table = sg_arena_alloc(arena, table, error);
  s.sin_table = s.cos_table ? sg_arena_alloc(arena, table, error) : NULL;
  if (!s.sin_table) CHECK(error ? error->status : SG_ERR_OUT_OF_MEMORY);
  rope_tables(c, count, s.cos_table, s.sin_table);

  /* Embeddings scaled by sqrt(hidden_size), rounded to the compute type (float32) first. */
  float normalizer = (float)sqrt((double)h);
  float *xd = x.data;
  for (int t = 0; t < count; t++) {
    CHECK(sg_weights_table_row(&m->embed_tokens, m->embed_name, ids[t], xd + t * h, error));
    for (int64_t j = 0; j < h; j++) xd[t * h + j] *= normalizer;
  }

  int run_layers = wanted < layers ? wanted : layers;
  for (int l = 0; l < run_layers; l++) CHECK(run_layer(m, l, be, &x, &s, error));
  if (wanted == layers)
    CHECK(sg_rms_norm(be, &x, &m->norm, (float)c->rms_norm_eps, 1.0f, hidden_out, error));
  else
    memcpy(hidden_out->data, xd, sg_tensor_nbytes(&x));
done:
  sg_arena_reset(arena, mark);
  return status;
}
