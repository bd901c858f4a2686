/* clip_text.c: CLIP's text transformer with Hugging Face config fields and tensor names. */
#include "clip_text.h"

#include <glib.h>
#include <math.h>
#include <string.h>

#include "error.h"

#define MAX_WIDTH 65536
#define MAX_LAYERS 1024

/* transformers' CLIPTextConfig defaults, for fields a config.json leaves out. */
static const sg_clip_text_config default_config = {
    .vocab_size = 49408, .hidden_size = 512, .intermediate_size = 2048, .num_hidden_layers = 12,
    .num_attention_heads = 8, .max_position_embeddings = 77, .hidden_act = SG_ACT_QUICK_GELU,
    .layer_norm_eps = 1e-5, .projection_dim = 512, .eos_token_id = 49407};

static sg_status read_int(const sg_json *json, const char *field, int64_t min, int64_t max,
                          int *value, sg_error *error) {
  int64_t read = 0;
  SG_TRY(sg_json_int(json, field, 1, *value, min, max, &read, error));
  *value = (int)read;
  return SG_OK;
}

/* Hugging Face's activation names (ACT2FN) that the engine has. */
static int activation_from_name(const char *name, sg_activation *act) {
  if (strcmp(name, "quick_gelu") == 0) *act = SG_ACT_QUICK_GELU;
  else if (strcmp(name, "gelu") == 0) *act = SG_ACT_GELU_ERF;
  else if (strcmp(name, "gelu_new") == 0 || strcmp(name, "gelu_pytorch_tanh") == 0)
    *act = SG_ACT_GELU_TANH;
  else return 0;
  return 1;
}

sg_status sg_clip_text_config_from_json(const sg_json *json, sg_clip_text_config *config,
                                        sg_error *error) {
  sg_clip_text_config c = default_config;
  const char *path = sg_json_path(json);
  SG_TRY(read_int(json, "vocab_size", 1, 16 << 20, &c.vocab_size, error));
  SG_TRY(read_int(json, "hidden_size", 1, MAX_WIDTH, &c.hidden_size, error));
  SG_TRY(read_int(json, "intermediate_size", 1, 4 * MAX_WIDTH, &c.intermediate_size, error));
  SG_TRY(read_int(json, "num_hidden_layers", 1, MAX_LAYERS, &c.num_hidden_layers, error));
  SG_TRY(read_int(json, "num_attention_heads", 1, 4096, &c.num_attention_heads, error));
  SG_TRY(read_int(json, "max_position_embeddings", 1, 1 << 20, &c.max_position_embeddings, error));
  SG_TRY(read_int(json, "projection_dim", 1, MAX_WIDTH, &c.projection_dim, error));
  SG_TRY(read_int(json, "eos_token_id", 0, 16 << 20, &c.eos_token_id, error));
  SG_TRY(sg_json_float(json, "layer_norm_eps", 1, c.layer_norm_eps, 0.0, 1.0, &c.layer_norm_eps,
                    error));
  char *act = NULL;
  SG_TRY(sg_json_string(json, "hidden_act", "quick_gelu", &act, error));
  int known = activation_from_name(act, &c.hidden_act);
  if (!known) {
    sg_status status = sg_fail(error, SG_ERR_FORMAT,
                               "%s: field 'hidden_act' is \"%s\"; the engine has quick_gelu, "
                               "gelu, gelu_new and gelu_pytorch_tanh", path, act);
    g_free(act);
    return status;
  }
  g_free(act);
  if (c.hidden_size % c.num_attention_heads)
    return sg_fail(error, SG_ERR_FORMAT,
                   "%s: hidden_size %d does not split into %d attention heads", path,
                   c.hidden_size, c.num_attention_heads);
  *config = c;
  return SG_OK;
}

sg_status sg_clip_text_config_load(const char *path, sg_clip_text_config *config,
                                   sg_error *error) {
  sg_json *json = NULL;
  SG_TRY(sg_json_load(path, &json, error));
  sg_status status = sg_clip_text_config_from_json(json, config, error);
  sg_json_free(json);
  return status;
}

/* ---------------------------------------------------------------------------------------------
 * Weights */

typedef struct {
  sg_tensor ln1_w, ln1_b, ln2_w, ln2_b;
  sg_tensor q_w, q_b, k_w, k_b, v_w, v_b, out_w, out_b;
  sg_tensor fc1_w, fc1_b, fc2_w, fc2_b;
} clip_layer;

struct sg_clip_text {
  sg_clip_text_config config;
  sg_tensor token_embedding, position_embedding; /* [vocab, H], [positions, H] */
  clip_layer *layers;
  sg_tensor final_ln_w, final_ln_b;
  int has_projection;
  sg_tensor projection; /* [projection_dim, H], no bias */
};

#define TOKEN_EMBEDDING "text_model.embeddings.token_embedding.weight"

static sg_status get_tensor(sg_weights *weights, const char *name, int64_t d0, int64_t d1,
                            sg_tensor *out, sg_error *error) {
  int64_t dims[2] = {d0, d1};
  return sg_weights_get(weights, name, d1 > 0 ? 2 : 1, dims, out, error);
}

static sg_status load_layer(sg_weights *weights, const sg_clip_text_config *c, int index,
                            clip_layer *layer, sg_error *error) {
  int64_t h = c->hidden_size, inner = c->intermediate_size;
  struct {
    const char *suffix;
    sg_tensor *tensor;
    int64_t d0, d1;
  } parts[] = {
      {"layer_norm1.weight", &layer->ln1_w, h, 0}, {"layer_norm1.bias", &layer->ln1_b, h, 0},
      {"layer_norm2.weight", &layer->ln2_w, h, 0}, {"layer_norm2.bias", &layer->ln2_b, h, 0},
      {"self_attn.q_proj.weight", &layer->q_w, h, h}, {"self_attn.q_proj.bias", &layer->q_b, h, 0},
      {"self_attn.k_proj.weight", &layer->k_w, h, h}, {"self_attn.k_proj.bias", &layer->k_b, h, 0},
      {"self_attn.v_proj.weight", &layer->v_w, h, h}, {"self_attn.v_proj.bias", &layer->v_b, h, 0},
      {"self_attn.out_proj.weight", &layer->out_w, h, h},
      {"self_attn.out_proj.bias", &layer->out_b, h, 0},
      {"mlp.fc1.weight", &layer->fc1_w, inner, h}, {"mlp.fc1.bias", &layer->fc1_b, inner, 0},
      {"mlp.fc2.weight", &layer->fc2_w, h, inner}, {"mlp.fc2.bias", &layer->fc2_b, h, 0},
  };
  char name[160];
  for (size_t i = 0; i < G_N_ELEMENTS(parts); i++) {
    g_snprintf(name, sizeof name, "text_model.encoder.layers.%d.%s", index, parts[i].suffix);
    if (parts[i].d1 > 0) /* a linear layer's weight: int8 when the weights store them so */
      SG_TRY(sg_weights_get_linear(weights, name, parts[i].d0, parts[i].d1, parts[i].tensor,
                                   error));
    else
      SG_TRY(get_tensor(weights, name, parts[i].d0, 0, parts[i].tensor, error));
  }
  return SG_OK;
}

sg_status sg_clip_text_load(const sg_clip_text_config *config, sg_weights *weights,
                            int with_projection, sg_clip_text **out, sg_error *error) {
  *out = NULL;
  sg_clip_text *m = g_new0(sg_clip_text, 1);
  m->config = *config;
  m->layers = g_new0(clip_layer, config->num_hidden_layers);
  int64_t h = config->hidden_size;
  /* The token table stays in the file's dtype: a prompt reads at most 77 of its rows. */
  sg_status status = sg_weights_get_table(weights, TOKEN_EMBEDDING, config->vocab_size, h,
                                          &m->token_embedding, NULL, error);
  if (status == SG_OK)
    status = get_tensor(weights, "text_model.embeddings.position_embedding.weight",
                        config->max_position_embeddings, h, &m->position_embedding, error);
  for (int i = 0; i < config->num_hidden_layers && status == SG_OK; i++)
    status = load_layer(weights, config, i, &m->layers[i], error);
  if (status == SG_OK)
    status = get_tensor(weights, "text_model.final_layer_norm.weight", h, 0, &m->final_ln_w,
                        error);
  if (status == SG_OK)
    status = get_tensor(weights, "text_model.final_layer_norm.bias", h, 0, &m->final_ln_b, error);
  if (status == SG_OK && with_projection != 0) {
    int64_t dims[2] = {config->projection_dim, h};
    int found = 0;
    if (with_projection > 0) {
      status = sg_weights_get(weights, "text_projection.weight", 2, dims, &m->projection, error);
      found = status == SG_OK;
    } else {
      status = sg_weights_get_optional(weights, "text_projection.weight", 2, dims, &m->projection,
                                       &found, error);
    }
    m->has_projection = found;
  }
  if (status != SG_OK) {
    sg_clip_text_free(m);
    return status;
  }
  *out = m;
  return SG_OK;
}

void sg_clip_text_free(sg_clip_text *model) {
  if (!model) return;
  g_free(model->layers);
  g_free(model);
}

const sg_clip_text_config *sg_clip_text_get_config(const sg_clip_text *model) {
  return &model->config;
}

int sg_clip_text_has_projection(const sg_clip_text *model) { return model->has_projection; }

int sg_clip_text_pooled_dim(const sg_clip_text *model) {
  return model->has_projection ? model->config.projection_dim : model->config.hidden_size;
}

int sg_text_resolve_hidden_layer(int hidden_layer, int num_layers) {
  if (hidden_layer == SG_TEXT_HIDDEN_LAST) return num_layers + 1;
  int index = hidden_layer < 0 ? hidden_layer + num_layers + 1 : hidden_layer;
  return index >= 0 && index <= num_layers ? index : -1;
}

int sg_clip_text_eos_position(const sg_clip_text_config *config, const int32_t *ids, int count) {
  int best = 0;
  if (config->eos_token_id == 2) {
    for (int i = 1; i < count; i++)
      if (ids[i] > ids[best]) best = i;
    return best;
  }
  for (int i = 0; i < count; i++)
    if (ids[i] == config->eos_token_id) return i;
  return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Forward */

#define CHECK(expr)                 \
  do {                              \
    status = (expr);                \
    if (status != SG_OK) goto done; \
  } while (0)

/* x += attention(layer_norm1(x)); x += mlp(layer_norm2(x)). */
static sg_status run_layer(const sg_clip_text *m, const clip_layer *layer, sg_backend *be,
                           sg_tensor *x, sg_tensor *normed, sg_tensor *q, sg_tensor *k,
                           sg_tensor *v, sg_tensor *attended, sg_tensor *inner,
                           sg_error *error) {
  const sg_clip_text_config *c = &m->config;
  float eps = (float)c->layer_norm_eps;
  int head_dim = c->hidden_size / c->num_attention_heads;
  sg_attention_params params = {.heads = c->num_attention_heads,
                                .kv_heads = c->num_attention_heads,
                                .head_dim = head_dim,
                                .scale = (float)(1.0 / sqrt((double)head_dim)),
                                .causal = 1};
  sg_status status;
  CHECK(sg_layer_norm(be, x, &layer->ln1_w, &layer->ln1_b, eps, normed, error));
  CHECK(sg_linear(be, normed, &layer->q_w, &layer->q_b, SG_ACT_NONE, q, error));
  CHECK(sg_linear(be, normed, &layer->k_w, &layer->k_b, SG_ACT_NONE, k, error));
  CHECK(sg_linear(be, normed, &layer->v_w, &layer->v_b, SG_ACT_NONE, v, error));
  CHECK(sg_attention(be, q, k, v, &params, attended, error));
  CHECK(sg_linear(be, attended, &layer->out_w, &layer->out_b, SG_ACT_NONE, normed, error));
  CHECK(sg_binary(be, SG_BINARY_ADD, x, normed, x, error));
  CHECK(sg_layer_norm(be, x, &layer->ln2_w, &layer->ln2_b, eps, normed, error));
  CHECK(sg_linear(be, normed, &layer->fc1_w, &layer->fc1_b, c->hidden_act, inner, error));
  CHECK(sg_linear(be, inner, &layer->fc2_w, &layer->fc2_b, SG_ACT_NONE, normed, error));
  CHECK(sg_binary(be, SG_BINARY_ADD, x, normed, x, error));
done:
  return status;
}

sg_status sg_clip_text_forward(sg_clip_text *m, sg_backend *be, sg_arena *arena,
                               const int32_t *ids, int count, int hidden_layer,
                               sg_tensor *hidden_out, sg_tensor *pooled_out, sg_error *error) {
  const sg_clip_text_config *c = &m->config;
  int layers = c->num_hidden_layers;
  int64_t h = c->hidden_size;
  if (count < 1 || count > c->max_position_embeddings)
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "CLIP text encoder: %d tokens given, it takes 1 to %d", count,
                   c->max_position_embeddings);
  for (int i = 0; i < count; i++)
    if (ids[i] < 0 || ids[i] >= c->vocab_size)
      return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                     "CLIP text encoder: token id %d at position %d is outside the vocabulary "
                     "of %d", (int)ids[i], i, c->vocab_size);
  int wanted = sg_text_resolve_hidden_layer(hidden_layer, layers);
  if (hidden_out && wanted < 0)
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "CLIP text encoder: hidden layer %d is outside -%d..%d", hidden_layer,
                   layers + 1, layers);
  int64_t hidden_dims[2] = {count, h};
  if (hidden_out &&
      (hidden_out->ndim != 2 || hidden_out->dims[0] != count || hidden_out->dims[1] != h))
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "CLIP text encoder: hidden output must be "
                   "[%d, %lld]", count, (long long)h);
  if (pooled_out && (pooled_out->ndim != 1 || pooled_out->dims[0] != sg_clip_text_pooled_dim(m)))
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "CLIP text encoder: pooled output must be [%d]",
                   sg_clip_text_pooled_dim(m));
  /* The layers to run: up to the requested hidden state, or all of them for the pooled output. */
  int run_layers = pooled_out || wanted > layers ? layers : wanted;

  size_t mark = sg_arena_mark(arena);
  sg_status status;
  sg_tensor x, normed, q, k, v, attended, inner;
  int64_t inner_dims[2] = {count, c->intermediate_size};
  CHECK(sg_arena_tensor(arena, 2, hidden_dims, &x, error));
  CHECK(sg_arena_tensor(arena, 2, hidden_dims, &normed, error));
  CHECK(sg_arena_tensor(arena, 2, hidden_dims, &q, error));
  CHECK(sg_arena_tensor(arena, 2, hidden_dims, &k, error));
  CHECK(sg_arena_tensor(arena, 2, hidden_dims, &v, error));
  CHECK(sg_arena_tensor(arena, 2, hidden_dims, &attended, error));
  CHECK(sg_arena_tensor(arena, 2, inner_dims, &inner, error));

  /* Embeddings: token + position (positions 0..count-1). */
  float *xd = x.data;
  const float *positions = m->position_embedding.data;
  for (int t = 0; t < count; t++) {
    CHECK(sg_weights_table_row(&m->token_embedding, TOKEN_EMBEDDING, ids[t], xd + t * h, error));
    for (int64_t j = 0; j < h; j++) xd[t * h + j] += positions[t * h + j];
  }
  if (hidden_out && wanted == 0) memcpy(hidden_out->data, xd, sg_tensor_nbytes(&x));

  for (int l = 0; l < run_layers; l++) {
    CHECK(run_layer(m, &m->layers[l], be, &x, &normed, &q, &k, &v, &attended, &inner, error));
    if (hidden_out && wanted == l + 1) memcpy(hidden_out->data, xd, sg_tensor_nbytes(&x));
  }
  if (wanted == layers + 1 || pooled_out) {
    float eps = (float)c->layer_norm_eps;
    CHECK(sg_layer_norm(be, &x, &m->final_ln_w, &m->final_ln_b, eps, &normed, error));
    if (hidden_out && wanted == layers + 1)
      memcpy(hidden_out->data, normed.data, sg_tensor_nbytes(&normed));
  }
  if (pooled_out) {
    int eos = sg_clip_text_eos_position(c, ids, count);
    sg_tensor row = sg_tensor_2d((float *)normed.data + (int64_t)eos * h, 1, h);
    if (m->has_projection) {
      sg_tensor out = sg_tensor_2d(pooled_out->data, 1, c->projection_dim);
      CHECK(sg_linear(be, &row, &m->projection, NULL, SG_ACT_NONE, &out, error));
    } else {
      memcpy(pooled_out->data, row.data, (size_t)h * sizeof(float));
    }
  }
done:
  sg_arena_reset(arena, mark);
  return status;
}
