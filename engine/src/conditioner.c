/* conditioner.c: runs the text encoders and builds the UNet's context, mask and pooled vector. */
#include "conditioner.h"

#include <glib.h>
#include <json-glib/json-glib.h>
#include <math.h>
#include <string.h>

#include "clip_text.h"
#include "error.h"
#include "gemma2.h"
#include "tokenizer_clip.h"
#include "tokenizer_common.h"
#include "tokenizer_gemma.h"
#include "weights.h"

#define MAX_ENCODERS 16
#define MAX_WIDTH 65536
#define CLIP_SLOT_TOKENS 77     /* a missing encoder without mask_padding (a CLIP slot) */
#define GEMMA_DEFAULT_TOKENS 256 /* SPEC §3: L_g ≤ 256 */

typedef enum { ENCODER_CLIP = 1, ENCODER_GEMMA2 = 2 } encoder_kind;

typedef struct {
  /* From conditioner/config.json. */
  char *component, *tokenizer_name;
  int hidden_layer, pooled, mask_padding;
  int max_tokens;  /* 0: not given */
  int pooled_hint; /* "pooled_dim" of the entry, 0: not given */
  /* From model_index.json and the folders. */
  char *class_name;
  encoder_kind kind;
  int present;
  sg_weights *weights;
  sg_clip_text *clip;
  sg_clip_tokenizer *clip_tokenizer;
  sg_gemma2 *gemma;
  sg_gemma_tokenizer *gemma_tokenizer;
  int hidden_width, pooled_width, missing_tokens;
  sg_tensor proj_w, proj_b; /* context_proj.{i}; proj_b.data NULL without a bias */
  sg_encoder_info info;
} encoder_slot;

struct sg_conditioner {
  char *model_dir;
  int context_dim, pooled_dim;
  int count;
  encoder_slot *slots;
  sg_weights *weights; /* conditioner/ */
  int int8_linears;    /* the encoders' linear weights are stored int8 */
  int empty_ready;
  sg_conditioning_out empty; /* the "" prompt, cached */
};

void sg_conditioning_out_clear(sg_conditioning_out *out) {
  if (!out) return;
  g_free(out->context.data);
  g_free(out->context_mask);
  g_free(out->pooled.data);
  memset(out, 0, sizeof *out);
}

/* ---------------------------------------------------------------------------------------------
 * Config files */

static int node_is_int(JsonNode *node) {
  return node && JSON_NODE_HOLDS_VALUE(node) && json_node_get_value_type(node) == G_TYPE_INT64;
}

static sg_status object_int(JsonObject *object, const char *path, const char *where,
                            const char *field, int fallback, int min, int max, int *out,
                            sg_error *error) {
  JsonNode *node = json_object_has_member(object, field) ? json_object_get_member(object, field)
                                                         : NULL;
  if (!node || JSON_NODE_HOLDS_NULL(node)) {
    *out = fallback;
    return SG_OK;
  }
  if (!node_is_int(node) || json_node_get_int(node) < min || json_node_get_int(node) > max)
    return sg_fail(error, SG_ERR_FORMAT, "%s: %sfield '%s' must be an integer from %d to %d", path,
                   where, field, min, max);
  *out = (int)json_node_get_int(node);
  return SG_OK;
}

static sg_status object_bool(JsonObject *object, const char *path, const char *where,
                             const char *field, int *out, sg_error *error) {
  JsonNode *node = json_object_has_member(object, field) ? json_object_get_member(object, field)
                                                         : NULL;
  *out = 0;
  if (!node || JSON_NODE_HOLDS_NULL(node)) return SG_OK;
  if (!JSON_NODE_HOLDS_VALUE(node) || json_node_get_value_type(node) != G_TYPE_BOOLEAN)
    return sg_fail(error, SG_ERR_FORMAT, "%s: %sfield '%s' must be true or false", path, where,
                   field);
  *out = json_node_get_boolean(node);
  return SG_OK;
}

static sg_status object_string(JsonObject *object, const char *path, const char *where,
                               const char *field, char **out, sg_error *error) {
  JsonNode *node = json_object_has_member(object, field) ? json_object_get_member(object, field)
                                                         : NULL;
  if (!node || !JSON_NODE_HOLDS_VALUE(node) || json_node_get_value_type(node) != G_TYPE_STRING ||
      !json_node_get_string(node)[0])
    return sg_fail(error, SG_ERR_FORMAT, "%s: %sfield '%s' must be a non-empty string", path,
                   where, field);
  *out = g_strdup(json_node_get_string(node));
  return SG_OK;
}

/* A component or tokenizer name must be a plain folder name inside the model folder. */
static sg_status check_folder_name(const char *path, const char *where, const char *field,
                                   const char *name, sg_error *error) {
  if (strchr(name, '/') || strchr(name, '\\') || strcmp(name, ".") == 0 ||
      strcmp(name, "..") == 0)
    return sg_fail(error, SG_ERR_FORMAT, "%s: %sfield '%s' (\"%s\") must be a folder name", path,
                   where, field, name);
  return SG_OK;
}

static sg_status read_entry(JsonNode *node, const char *path, int index, encoder_slot *slot,
                            sg_error *error) {
  char where[48];
  g_snprintf(where, sizeof where, "encoders[%d]: ", index);
  if (!JSON_NODE_HOLDS_OBJECT(node))
    return sg_fail(error, SG_ERR_FORMAT, "%s: encoders[%d] must be an object", path, index);
  JsonObject *object = json_node_get_object(node);
  SG_TRY(object_string(object, path, where, "component", &slot->component, error));
  SG_TRY(check_folder_name(path, where, "component", slot->component, error));
  SG_TRY(object_string(object, path, where, "tokenizer", &slot->tokenizer_name, error));
  SG_TRY(check_folder_name(path, where, "tokenizer", slot->tokenizer_name, error));
  JsonNode *layer = json_object_has_member(object, "hidden_layer")
                        ? json_object_get_member(object, "hidden_layer")
                        : NULL;
  if (!layer || JSON_NODE_HOLDS_NULL(layer)) {
    slot->hidden_layer = SG_TEXT_HIDDEN_LAST;
  } else if (JSON_NODE_HOLDS_VALUE(layer) && json_node_get_value_type(layer) == G_TYPE_STRING &&
             strcmp(json_node_get_string(layer), "last") == 0) {
    slot->hidden_layer = SG_TEXT_HIDDEN_LAST;
  } else if (node_is_int(layer) && json_node_get_int(layer) >= -1025 &&
             json_node_get_int(layer) <= 1024) {
    slot->hidden_layer = (int)json_node_get_int(layer);
  } else {
    return sg_fail(error, SG_ERR_FORMAT,
                   "%s: %sfield 'hidden_layer' must be a layer index or \"last\"", path, where);
  }
  SG_TRY(object_bool(object, path, where, "pooled", &slot->pooled, error));
  SG_TRY(object_bool(object, path, where, "mask_padding", &slot->mask_padding, error));
  SG_TRY(object_int(object, path, where, "max_tokens", 0, 1, 1 << 20, &slot->max_tokens, error));
  SG_TRY(object_int(object, path, where, "pooled_dim", 0, 1, MAX_WIDTH, &slot->pooled_hint, error));
  return SG_OK;
}

static sg_status read_conditioner_config(sg_conditioner *c, const char *path, sg_error *error) {
  JsonParser *parser = NULL;
  JsonObject *root = NULL;
  SG_TRY(sg_json_read_object(path, &parser, &root, error));
  sg_status status = object_int(root, path, "", "context_dim", -1, 1, MAX_WIDTH, &c->context_dim,
                                error);
  if (status == SG_OK && c->context_dim < 0)
    status = sg_fail(error, SG_ERR_FORMAT, "%s: missing field 'context_dim'", path);
  if (status == SG_OK)
    status = object_int(root, path, "", "pooled_dim", 0, 0, MAX_WIDTH, &c->pooled_dim, error);
  JsonNode *list = json_object_has_member(root, "encoders")
                       ? json_object_get_member(root, "encoders")
                       : NULL;
  if (status == SG_OK && (!list || !JSON_NODE_HOLDS_ARRAY(list)))
    status = sg_fail(error, SG_ERR_FORMAT, "%s: field 'encoders' must be a list", path);
  if (status == SG_OK) {
    JsonArray *array = json_node_get_array(list);
    int count = (int)json_array_get_length(array);
    if (count < 1 || count > MAX_ENCODERS) {
      status = sg_fail(error, SG_ERR_FORMAT, "%s: field 'encoders' must list 1 to %d encoders",
                       path, MAX_ENCODERS);
    } else {
      c->slots = g_new0(encoder_slot, count);
      c->count = count;
      for (int i = 0; i < count && status == SG_OK; i++)
        status = read_entry(json_array_get_element(array, (guint)i), path, i, &c->slots[i], error);
    }
  }
  g_object_unref(parser);
  return status;
}

/* The class model_index.json names for a component ([library, class]); NULL when the entry is
 * missing or null (diffusers writes [null, null] for a component left out). */
static char *component_class(JsonObject *index, const char *component) {
  if (!json_object_has_member(index, component)) return NULL;
  JsonNode *node = json_object_get_member(index, component);
  if (!JSON_NODE_HOLDS_ARRAY(node)) return NULL;
  JsonArray *pair = json_node_get_array(node);
  if (json_array_get_length(pair) != 2) return NULL;
  JsonNode *name = json_array_get_element(pair, 1);
  if (!JSON_NODE_HOLDS_VALUE(name) || json_node_get_value_type(name) != G_TYPE_STRING)
    return NULL;
  return g_strdup(json_node_get_string(name));
}

/* ---------------------------------------------------------------------------------------------
 * Loading */

static sg_status load_slot(sg_conditioner *c, JsonObject *index, const char *index_path, int i,
                           sg_error *error) {
  encoder_slot *slot = &c->slots[i];
  char *folder = g_build_filename(c->model_dir, slot->component, NULL);
  char *config_path = g_build_filename(folder, "config.json", NULL);
  char *tokenizer_dir = g_build_filename(c->model_dir, slot->tokenizer_name, NULL);
  sg_status status = SG_OK;
  gint64 start = g_get_monotonic_time();
  slot->class_name = component_class(index, slot->component);
  slot->present = slot->class_name && g_file_test(folder, G_FILE_TEST_IS_DIR);
  if (slot->present) {
    const char *name = slot->class_name;
    if (strcmp(name, "CLIPTextModel") == 0 || strcmp(name, "CLIPTextModelWithProjection") == 0)
      slot->kind = ENCODER_CLIP;
    else if (strcmp(name, "Gemma2Model") == 0 || strcmp(name, "Gemma2ForCausalLM") == 0)
      slot->kind = ENCODER_GEMMA2;
    else
      status = sg_fail(error, SG_ERR_FORMAT,
                       "%s: component '%s' is a %s; the text encoders the engine has are "
                       "CLIPTextModel, CLIPTextModelWithProjection and Gemma2Model", index_path,
                       slot->component, name);
  }
  if (status == SG_OK && slot->present && !g_file_test(tokenizer_dir, G_FILE_TEST_IS_DIR))
    status = sg_fail(error, SG_ERR_FORMAT, "%s: text encoder '%s' is present but its tokenizer "
                     "folder '%s' is not", c->model_dir, slot->component, slot->tokenizer_name);
  if (status == SG_OK && slot->present)
    status = sg_weights_open_folder(folder, &slot->weights, error);
  /* One backend runs the encoder: f32 copies widened from bf16 files that it packs may then be
   * released (Gemma-2-2b once peaked at 18 GiB, plain and packed copies both resident). */
  if (status == SG_OK && slot->present) sg_weights_hand_off_to_backend(slot->weights);
  /* Linear weights: int8 when asked for; else bf16 files stay in their pages (the encoders run
   * once per prompt, so widening them per product costs about what widening at load did, without
   * the 10 GB of f32 copies of the full-size encoders). */
  if (status == SG_OK && slot->present && c->int8_linears)
    sg_weights_store_linears_int8(slot->weights);
  else if (status == SG_OK && slot->present)
    sg_weights_keep_bf16_linears(slot->weights);

  if (status == SG_OK && slot->present && slot->kind == ENCODER_CLIP) {
    sg_clip_text_config config;
    int with_projection = strcmp(slot->class_name, "CLIPTextModelWithProjection") == 0;
    status = sg_clip_text_config_load(config_path, &config, error);
    if (status == SG_OK)
      status = sg_clip_text_load(&config, slot->weights, with_projection, &slot->clip, error);
    if (status == SG_OK)
      status = sg_clip_tokenizer_load(tokenizer_dir, &slot->clip_tokenizer, error);
    if (status == SG_OK) {
      int length = sg_clip_tokenizer_max_length(slot->clip_tokenizer);
      if (length > config.max_position_embeddings)
        status = sg_fail(error, SG_ERR_FORMAT,
                         "%s: the tokenizer pads to %d tokens but %s takes at most %d",
                         tokenizer_dir, length, config_path, config.max_position_embeddings);
      if (sg_clip_tokenizer_vocab_size(slot->clip_tokenizer) > config.vocab_size)
        status = sg_fail(error, SG_ERR_FORMAT,
                         "%s: the tokenizer has %d tokens, the encoder's vocabulary (%s) %d",
                         tokenizer_dir, sg_clip_tokenizer_vocab_size(slot->clip_tokenizer),
                         config_path, config.vocab_size);
    }
    if (status == SG_OK) {
      slot->hidden_width = config.hidden_size;
      slot->pooled_width = slot->pooled ? sg_clip_text_pooled_dim(slot->clip) : 0;
      if (sg_text_resolve_hidden_layer(slot->hidden_layer, config.num_hidden_layers) < 0)
        status = sg_fail(error, SG_ERR_FORMAT,
                         "%s/conditioner/config.json: encoders[%d]: hidden_layer %d is outside "
                         "-%d..%d for %s", c->model_dir, i, slot->hidden_layer,
                         config.num_hidden_layers + 1, config.num_hidden_layers, config_path);
    }
  } else if (status == SG_OK && slot->present && slot->kind == ENCODER_GEMMA2) {
    sg_gemma2_config config;
    status = sg_gemma2_config_load(config_path, &config, error);
    if (status == SG_OK) status = sg_gemma2_load(&config, slot->weights, &slot->gemma, error);
    if (status == SG_OK)
      status = sg_gemma_tokenizer_load(tokenizer_dir, &slot->gemma_tokenizer, error);
    if (status == SG_OK) {
      if (slot->max_tokens == 0) slot->max_tokens = GEMMA_DEFAULT_TOKENS;
      if (slot->max_tokens > config.max_position_embeddings)
        status = sg_fail(error, SG_ERR_FORMAT,
                         "%s/conditioner/config.json: encoders[%d]: max_tokens %d is more than "
                         "the %d positions of %s", c->model_dir, i, slot->max_tokens,
                         config.max_position_embeddings, config_path);
      else if (sg_gemma_tokenizer_vocab_size(slot->gemma_tokenizer) > config.vocab_size)
        status = sg_fail(error, SG_ERR_FORMAT,
                         "%s: the tokenizer has %d tokens, the encoder's vocabulary (%s) %d",
                         tokenizer_dir, sg_gemma_tokenizer_vocab_size(slot->gemma_tokenizer),
                         config_path, config.vocab_size);
      else if (slot->pooled)
        status = sg_fail(error, SG_ERR_FORMAT,
                         "%s/conditioner/config.json: encoders[%d]: a Gemma-2 encoder has no "
                         "pooled output", c->model_dir, i);
      else if (sg_text_resolve_hidden_layer(slot->hidden_layer, config.num_hidden_layers) < 0)
        status = sg_fail(error, SG_ERR_FORMAT,
                         "%s/conditioner/config.json: encoders[%d]: hidden_layer %d is outside "
                         "-%d..%d for %s", c->model_dir, i, slot->hidden_layer,
                         config.num_hidden_layers + 1, config.num_hidden_layers, config_path);
      slot->hidden_width = config.hidden_size;
    }
  }
  if (status == SG_OK && slot->present) {
    char name[64];
    int64_t dims[2] = {c->context_dim, slot->hidden_width};
    int found = 0;
    g_snprintf(name, sizeof name, "context_proj.%d.weight", i);
    status = sg_weights_get(c->weights, name, 2, dims, &slot->proj_w, error);
    g_snprintf(name, sizeof name, "context_proj.%d.bias", i);
    if (status == SG_OK)
      status = sg_weights_get_optional(c->weights, name, 1, dims, &slot->proj_b, &found, error);
    if (status == SG_OK && !found) slot->proj_b.data = NULL;
  }
  if (!slot->present)
    slot->missing_tokens =
        slot->mask_padding ? 0 : slot->max_tokens > 0 ? slot->max_tokens : CLIP_SLOT_TOKENS;
  slot->info.load_seconds = (double)(g_get_monotonic_time() - start) * 1e-6;
  g_free(folder);
  g_free(config_path);
  g_free(tokenizer_dir);
  return status;
}

/* Widths of the pooled parts of missing encoders: the entry's "pooled_dim", else what remains of
 * pooled_dim when a single one is missing; when every pooled encoder is missing the split does
 * not matter (all zeros). */
static sg_status settle_pooled_widths(sg_conditioner *c, const char *path, sg_error *error) {
  int known = 0, unknown = 0, present = 0;
  for (int i = 0; i < c->count; i++) {
    encoder_slot *slot = &c->slots[i];
    if (!slot->pooled) continue;
    if (slot->present) present++;
    if (!slot->present && slot->pooled_hint == 0) unknown++;
    else known += slot->present ? slot->pooled_width : slot->pooled_hint;
    if (!slot->present) slot->pooled_width = slot->pooled_hint;
  }
  if (present == 0 && known <= c->pooled_dim) return SG_OK;
  if (unknown == 1) {
    if (known >= c->pooled_dim)
      return sg_fail(error, SG_ERR_FORMAT,
                     "%s: the pooled outputs of the encoders present add up to %d, which leaves "
                     "nothing of pooled_dim %d for the missing one", path, known, c->pooled_dim);
    for (int i = 0; i < c->count; i++)
      if (c->slots[i].pooled && !c->slots[i].present && c->slots[i].pooled_hint == 0)
        c->slots[i].pooled_width = c->pooled_dim - known;
    known = c->pooled_dim;
  } else if (unknown > 1) {
    return sg_fail(error, SG_ERR_FORMAT,
                   "%s: %d encoders with pooled outputs are missing; give their widths as "
                   "'pooled_dim' in their entries", path, unknown);
  }
  if (known != c->pooled_dim)
    return sg_fail(error, SG_ERR_FORMAT,
                   "%s: the pooled outputs of the encoders add up to %d, pooled_dim is %d", path,
                   known, c->pooled_dim);
  return SG_OK;
}

sg_status sg_conditioner_load(const char *model_dir, int int8_linears, sg_conditioner **out,
                              sg_error *error) {
  *out = NULL;
  char *index_path = g_build_filename(model_dir, "model_index.json", NULL);
  JsonParser *parser = NULL;
  JsonObject *index = NULL;
  sg_status status = sg_json_read_object(index_path, &parser, &index, error);
  char *class_name = status == SG_OK ? component_class(index, "conditioner") : NULL;
  if (status != SG_OK || class_name == NULL) {
    if (parser) g_object_unref(parser);
    g_free(index_path);
    g_free(class_name);
    return status;
  }
  g_free(class_name);
  sg_conditioner *c = g_new0(sg_conditioner, 1);
  c->model_dir = g_strdup(model_dir);
  c->int8_linears = int8_linears;
  char *config_path = g_build_filename(model_dir, "conditioner", "config.json", NULL);
  char *folder = g_build_filename(model_dir, "conditioner", NULL);
  status = read_conditioner_config(c, config_path, error);
  if (status == SG_OK) status = sg_weights_open_folder(folder, &c->weights, error);
  for (int i = 0; i < c->count && status == SG_OK; i++)
    status = load_slot(c, index, index_path, i, error);
  if (status == SG_OK) status = settle_pooled_widths(c, config_path, error);
  g_object_unref(parser);
  g_free(index_path);
  g_free(config_path);
  g_free(folder);
  if (status != SG_OK) {
    sg_conditioner_free(c);
    return status;
  }
  *out = c;
  return SG_OK;
}

void sg_conditioner_free(sg_conditioner *c) {
  if (!c) return;
  for (int i = 0; i < c->count; i++) {
    encoder_slot *slot = &c->slots[i];
    sg_clip_text_free(slot->clip);
    sg_clip_tokenizer_free(slot->clip_tokenizer);
    sg_gemma2_free(slot->gemma);
    sg_gemma_tokenizer_free(slot->gemma_tokenizer);
    sg_weights_free(slot->weights);
    g_free(slot->component);
    g_free(slot->tokenizer_name);
    g_free(slot->class_name);
  }
  g_free(c->slots);
  sg_weights_free(c->weights);
  sg_conditioning_out_clear(&c->empty);
  g_free(c->model_dir);
  g_free(c);
}

int sg_conditioner_context_dim(const sg_conditioner *c) { return c->context_dim; }
int sg_conditioner_pooled_dim(const sg_conditioner *c) { return c->pooled_dim; }
int sg_conditioner_encoder_count(const sg_conditioner *c) { return c->count; }

int sg_conditioner_encoder_info(const sg_conditioner *c, int index, sg_encoder_info *info) {
  if (index < 0 || index >= c->count) return 0;
  const encoder_slot *slot = &c->slots[index];
  *info = slot->info;
  info->component = slot->component;
  info->class_name = slot->class_name && slot->present ? slot->class_name : "";
  info->present = slot->present;
  info->hidden_layer = slot->hidden_layer;
  info->pooled = slot->pooled;
  info->mask_padding = slot->mask_padding;
  info->hidden_width = slot->hidden_width;
  info->pooled_width = slot->pooled ? slot->pooled_width : 0;
  if (!slot->present) {
    info->tokens = slot->missing_tokens;
    info->real_tokens = 0;
  }
  info->parameters = slot->weights ? sg_weights_parameter_count(slot->weights) : 0;
  info->converted_bytes = slot->weights ? sg_weights_owned_bytes(slot->weights) : 0;
  return 1;
}

/* ---------------------------------------------------------------------------------------------
 * Encoding */

/* Token ids for one present encoder: CLIP padded to its length, Gemma's real tokens only. */
static sg_status tokenize_slot(const encoder_slot *slot, const char *prompt, int32_t **ids,
                               int *count, int *real_count, sg_error *error) {
  *ids = NULL;
  *count = *real_count = 0;
  if (!slot->present) return SG_OK;
  if (slot->kind == ENCODER_CLIP) {
    sg_clip_tokens tokens;
    SG_TRY(sg_clip_tokenize(slot->clip_tokenizer, prompt, 1, &tokens, error));
    *ids = tokens.ids;
    *count = tokens.count;
    *real_count = tokens.length;
    return SG_OK;
  }
  sg_gemma_tokens tokens;
  SG_TRY(sg_gemma_tokenize(slot->gemma_tokenizer, prompt, 1, slot->max_tokens, &tokens, error));
  *ids = tokens.ids;
  *count = *real_count = tokens.count;
  return SG_OK;
}

sg_status sg_conditioner_token_ids(sg_conditioner *c, int index, const char *prompt,
                                   int32_t **ids, int *count, int *real_count, sg_error *error) {
  *ids = NULL;
  *count = 0;
  if (index < 0 || index >= c->count)
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "encoder %d: the model lists %d encoders",
                   index, c->count);
  int real = 0;
  sg_status status = tokenize_slot(&c->slots[index], prompt ? prompt : "", ids, count, &real,
                                   error);
  if (real_count) *real_count = real;
  return status;
}

const char *sg_conditioner_token_text(const sg_conditioner *c, int index, int32_t id) {
  if (index < 0 || index >= c->count || !c->slots[index].present) return NULL;
  const encoder_slot *slot = &c->slots[index];
  return slot->kind == ENCODER_CLIP ? sg_clip_tokenizer_token(slot->clip_tokenizer, id)
                                    : sg_gemma_tokenizer_token(slot->gemma_tokenizer, id);
}

static sg_value_stats value_stats(const float *values, int64_t count) {
  sg_value_stats stats = {0, 0, 0, 0};
  if (count <= 0) return stats;
  double sum = 0, sum_sq = 0;
  float lo = values[0], hi = values[0];
  for (int64_t i = 0; i < count; i++) {
    sum += values[i];
    sum_sq += (double)values[i] * values[i];
    lo = values[i] < lo ? values[i] : lo;
    hi = values[i] > hi ? values[i] : hi;
  }
  double mean = sum / (double)count;
  double var = sum_sq / (double)count - mean * mean;
  stats.mean = (float)mean;
  stats.std = (float)sqrt(var > 0 ? var : 0);
  stats.min = lo;
  stats.max = hi;
  return stats;
}

/* Runs one present encoder on its ids and writes its projected tokens into context rows
 * [count, context_dim] and its pooled part into pooled (may be NULL). */
static sg_status run_slot(sg_conditioner *c, encoder_slot *slot, sg_backend *be,
                          sg_arena *arena, const int32_t *ids, int count, float *context_rows,
                          float *pooled, sg_error *error) {
  size_t mark = sg_arena_mark(arena);
  gint64 start = g_get_monotonic_time();
  int64_t hidden_dims[2] = {count, slot->hidden_width};
  sg_tensor hidden;
  sg_status status = sg_arena_tensor(arena, 2, hidden_dims, &hidden, error);
  sg_tensor pooled_out = sg_tensor_1d(pooled, slot->pooled_width);
  if (status == SG_OK && slot->kind == ENCODER_CLIP)
    status = sg_clip_text_forward(slot->clip, be, arena, ids, count, slot->hidden_layer, &hidden,
                                  pooled ? &pooled_out : NULL, error);
  else if (status == SG_OK)
    status = sg_gemma2_forward(slot->gemma, be, arena, ids, count, slot->hidden_layer, &hidden,
                               error);
  if (status == SG_OK) {
    sg_tensor rows = sg_tensor_2d(context_rows, count, c->context_dim);
    status = sg_linear(be, &hidden, &slot->proj_w, slot->proj_b.data ? &slot->proj_b : NULL,
                       SG_ACT_NONE, &rows, error);
  }
  if (status == SG_OK) {
    slot->info.forward_seconds = (double)(g_get_monotonic_time() - start) * 1e-6;
    slot->info.arena_peak_bytes = sg_arena_peak_bytes(arena);
    slot->info.hidden_stats = value_stats(hidden.data, sg_tensor_numel(&hidden));
    slot->info.pooled_stats = value_stats(pooled, pooled ? slot->pooled_width : 0);
  }
  sg_arena_reset(arena, mark);
  return status;
}

static sg_status encode_prompt(sg_conditioner *c, sg_backend *be, sg_arena *arena,
                               const char *prompt, sg_conditioning_out *out, sg_error *error) {
  int32_t *ids[MAX_ENCODERS] = {0};
  int counts[MAX_ENCODERS] = {0}, real[MAX_ENCODERS] = {0};
  sg_status status = SG_OK;
  int64_t total = 0;
  for (int i = 0; i < c->count && status == SG_OK; i++) {
    encoder_slot *slot = &c->slots[i];
    gint64 start = g_get_monotonic_time();
    status = tokenize_slot(slot, prompt, &ids[i], &counts[i], &real[i], error);
    slot->info.tokenize_seconds = (double)(g_get_monotonic_time() - start) * 1e-6;
    if (!slot->present) counts[i] = slot->missing_tokens;
    total += counts[i];
  }
  int64_t tokens = total > 0 ? total : 1;
  if (status == SG_OK) {
    int64_t context_dims[2] = {tokens, c->context_dim};
    out->context = sg_tensor_view(g_try_new0(float, tokens * c->context_dim), SG_F32, 2,
                                  context_dims);
    out->context_mask = g_try_new0(float, tokens);
    int64_t pooled_dims[1] = {c->pooled_dim};
    if (c->pooled_dim > 0)
      out->pooled = sg_tensor_view(g_try_new0(float, c->pooled_dim), SG_F32, 1, pooled_dims);
    if (!out->context.data || !out->context_mask || (c->pooled_dim > 0 && !out->pooled.data))
      status = sg_fail(error, SG_ERR_OUT_OF_MEMORY, "no memory for a conditioning of %lld tokens",
                       (long long)tokens);
  }
  int64_t row = 0, pooled_offset = 0;
  for (int i = 0; i < c->count && status == SG_OK; i++) {
    encoder_slot *slot = &c->slots[i];
    float *pooled = slot->pooled && slot->pooled_width > 0
                        ? (float *)out->pooled.data + pooled_offset
                        : NULL;
    if (slot->present && counts[i] > 0) {
      status = run_slot(c, slot, be, arena, ids[i], counts[i],
                        (float *)out->context.data + row * c->context_dim, pooled, error);
      int used = slot->mask_padding ? real[i] : counts[i];
      for (int t = 0; t < used; t++) out->context_mask[row + t] = 1.0f;
      slot->info.real_tokens = used;
    } else {
      slot->info.real_tokens = 0;
    }
    slot->info.tokens = counts[i];
    row += counts[i];
    if (slot->pooled) pooled_offset += slot->pooled_width;
  }
  for (int i = 0; i < c->count; i++) g_free(ids[i]);
  if (status != SG_OK) sg_conditioning_out_clear(out);
  return status;
}

static sg_status copy_conditioning(const sg_conditioning_out *from, sg_conditioning_out *to,
                                   sg_error *error) {
  memset(to, 0, sizeof *to);
  to->context = from->context;
  to->context.data = g_try_malloc(sg_tensor_nbytes(&from->context));
  to->context_mask = g_try_new(float, from->context.dims[0]);
  if (from->pooled.data) {
    to->pooled = from->pooled;
    to->pooled.data = g_try_malloc(sg_tensor_nbytes(&from->pooled));
  }
  if (!to->context.data || !to->context_mask || (from->pooled.data && !to->pooled.data)) {
    sg_conditioning_out_clear(to);
    return sg_fail(error, SG_ERR_OUT_OF_MEMORY, "no memory for a copy of the conditioning");
  }
  memcpy(to->context.data, from->context.data, sg_tensor_nbytes(&from->context));
  memcpy(to->context_mask, from->context_mask, (size_t)from->context.dims[0] * sizeof(float));
  if (from->pooled.data)
    memcpy(to->pooled.data, from->pooled.data, sg_tensor_nbytes(&from->pooled));
  return SG_OK;
}

sg_status sg_conditioner_encode(sg_conditioner *c, sg_backend *be, sg_arena *arena,
                                const char *prompt, sg_conditioning_out *out, sg_error *error) {
  memset(out, 0, sizeof *out);
  if (!prompt) prompt = "";
  size_t length = 0;
  SG_TRY(sg_utf8_check(prompt, "prompt", &length, error));
  if (length > 0) return encode_prompt(c, be, arena, prompt, out, error);
  if (!c->empty_ready) {
    SG_TRY(encode_prompt(c, be, arena, "", &c->empty, error));
    c->empty_ready = 1;
  }
  return copy_conditioning(&c->empty, out, error);
}

/* ---------------------------------------------------------------------------------------------
 * Report for `snapgen encode` */

static void print_stats(FILE *stream, const char *what, const sg_value_stats *s) {
  fprintf(stream, "  %-24s mean %+.6f  std %.6f  min %+.6f  max %+.6f\n", what, s->mean, s->std,
          s->min, s->max);
}

static void print_tokens(FILE *stream, const sg_conditioner *c, int index, const int32_t *ids,
                         int count, int real) {
  fprintf(stream, "  ids (%d tokens, %d before padding):", count, real);
  for (int t = 0; t < real; t++) fprintf(stream, " %d", (int)ids[t]);
  if (count > real) fprintf(stream, " + %d x %d (padding)", count - real, (int)ids[real]);
  fprintf(stream, "\n  tokens:");
  for (int t = 0; t < real; t++) {
    const char *text = sg_conditioner_token_text(c, index, ids[t]);
    fprintf(stream, " [%s]", text ? text : "?");
  }
  fprintf(stream, "\n");
}

static const char *layer_name(int hidden_layer, char *buffer, size_t size) {
  if (hidden_layer == SG_TEXT_HIDDEN_LAST) return "last_hidden_state";
  g_snprintf(buffer, size, "hidden_states[%d]", hidden_layer);
  return buffer;
}

sg_status sg_conditioner_print_report(sg_conditioner *c, sg_backend *be, sg_arena *arena,
                                      const char *prompt, FILE *stream, sg_error *error) {
  if (!prompt) prompt = "";
  size_t length = 0;
  SG_TRY(sg_utf8_check(prompt, "prompt", &length, error));
  /* A fresh encode (not the cache) so that every encoder's statistics and timings are current. */
  sg_conditioning_out out;
  SG_TRY(encode_prompt(c, be, arena, prompt, &out, error));
  sg_status status = SG_OK;
  for (int i = 0; i < c->count && status == SG_OK; i++) {
    sg_encoder_info info;
    sg_conditioner_encoder_info(c, i, &info);
    char layer[48];
    fprintf(stream, "encoder %d: %s", i, info.component);
    if (!info.present) {
      fprintf(stream, " missing: %d zero tokens with mask 0, zero pooled part of %d\n",
              info.tokens, info.pooled_width);
      continue;
    }
    fprintf(stream, " (%s, %lld parameters), %s%s\n", info.class_name,
            (long long)info.parameters, layer_name(info.hidden_layer, layer, sizeof layer),
            info.pooled ? " + pooled" : "");
    int32_t *ids = NULL;
    int count = 0, real = 0;
    status = sg_conditioner_token_ids(c, i, prompt, &ids, &count, &real, error);
    if (status == SG_OK) print_tokens(stream, c, i, ids, count, real);
    g_free(ids);
    char what[64];
    g_snprintf(what, sizeof what, "hidden [%d, %d]", info.tokens, info.hidden_width);
    print_stats(stream, what, &info.hidden_stats);
    if (info.pooled) {
      g_snprintf(what, sizeof what, "pooled [%d]", info.pooled_width);
      print_stats(stream, what, &info.pooled_stats);
    }
    fprintf(stream, "  time: tokenize %.2f ms, forward %.1f ms; load %.2f s\n",
            info.tokenize_seconds * 1e3, info.forward_seconds * 1e3, info.load_seconds);
  }
  if (status == SG_OK) {
    int64_t tokens = out.context.dims[0], used = 0;
    for (int64_t t = 0; t < tokens; t++) used += out.context_mask[t] > 0.5f;
    char what[64];
    fprintf(stream, "conditioning: %lld context tokens, %lld with mask 1\n", (long long)tokens,
            (long long)used);
    g_snprintf(what, sizeof what, "context [%lld, %d]", (long long)tokens, c->context_dim);
    sg_value_stats stats = value_stats(out.context.data, sg_tensor_numel(&out.context));
    print_stats(stream, what, &stats);
    if (out.pooled.data) {
      g_snprintf(what, sizeof what, "pooled [%d]", c->pooled_dim);
      stats = value_stats(out.pooled.data, c->pooled_dim);
      print_stats(stream, what, &stats);
    }
  }
  sg_conditioning_out_clear(&out);
  return status;
}
