/* tokenizer_gemma.c: SentencePiece-style BPE with byte fallback (Gemma) from tokenizer.json. */
#include "tokenizer_gemma.h"

#include <glib.h>
#include <json-glib/json-glib.h>
#include <stdio.h>
#include <string.h>

#include "bpe.h"
#include "error.h"
#include "tokenizer_common.h"

typedef enum { NORMALIZE_REPLACE, NORMALIZE_PREPEND, NORMALIZE_UNICODE } normalizer_kind;

typedef struct {
  normalizer_kind kind;
  char *pattern;       /* Replace: the string replaced */
  char *content;       /* Replace: its replacement; Prepend: the prefix */
  GNormalizeMode mode; /* NORMALIZE_UNICODE */
} normalizer_step;

typedef enum {
  SPLIT_REMOVED,
  SPLIT_ISOLATED,
  SPLIT_MERGED_WITH_PREVIOUS,
  SPLIT_MERGED_WITH_NEXT,
  SPLIT_CONTIGUOUS
} split_behavior;

typedef struct {
  char *pattern;
  split_behavior behavior;
} split_step;

struct sg_gemma_tokenizer {
  char *path;
  sg_vocab vocab; /* the BPE model's vocabulary */
  sg_bpe_merges *merges;
  int byte_fallback, fuse_unk, ignore_merges;
  int32_t unk_id;        /* -1: none */
  int32_t byte_ids[256]; /* <0xNN>, -1 where missing */

  GHashTable *added;          /* added token text -> GINT_TO_POINTER(id + 1) */
  GHashTable *added_prefixes; /* every leading part of an added token (a set) */
  GPtrArray *added_texts;     /* owns the keys of `added` */
  GStringChunk *prefix_texts; /* owns the keys of `added_prefixes` */

  GArray *normalizers;     /* normalizer_step, applied in order */
  GArray *splits;          /* split_step, applied in order */
  GArray *prefix, *suffix; /* int32_t ids the template puts around the sequence */

  int32_t bos_id, eos_id, pad_id;
};

/* ---- JSON helpers ---- */

static JsonNode *member(JsonObject *object, const char *name) {
  if (!object || !json_object_has_member(object, name)) return NULL;
  JsonNode *node = json_object_get_member(object, name);
  return JSON_NODE_HOLDS_NULL(node) ? NULL : node;
}

static const char *member_string(JsonObject *object, const char *name) {
  JsonNode *node = member(object, name);
  if (!node || !JSON_NODE_HOLDS_VALUE(node) || json_node_get_value_type(node) != G_TYPE_STRING) {
    return NULL;
  }
  return json_node_get_string(node);
}

static JsonObject *member_object(JsonObject *object, const char *name) {
  JsonNode *node = member(object, name);
  return node && JSON_NODE_HOLDS_OBJECT(node) ? json_node_get_object(node) : NULL;
}

static JsonArray *member_array(JsonObject *object, const char *name) {
  JsonNode *node = member(object, name);
  return node && JSON_NODE_HOLDS_ARRAY(node) ? json_node_get_array(node) : NULL;
}

static int member_bool(JsonObject *object, const char *name, int fallback) {
  JsonNode *node = member(object, name);
  if (!node || !JSON_NODE_HOLDS_VALUE(node) || json_node_get_value_type(node) != G_TYPE_BOOLEAN) {
    return fallback;
  }
  return json_node_get_boolean(node);
}

/* The String of a {"String": "..."} pattern; a Regex pattern is not supported here. */
static sg_status string_pattern(JsonObject *part, const char *path, const char *where,
                                const char **out, sg_error *error) {
  JsonObject *pattern = member_object(part, "pattern");
  *out = member_string(pattern, "String");
  if (!*out || !**out) {
    return sg_fail(error, SG_ERR_FORMAT,
                   "%s: %s: only a non-empty {\"String\": ...} pattern is supported (a Regex "
                   "pattern is not)",
                   path, where);
  }
  return SG_OK;
}

/* ---- loading ---- */

static sg_status parse_normalizer(sg_gemma_tokenizer *tokenizer, JsonObject *part,
                                  sg_error *error) {
  const char *type = member_string(part, "type");
  const char *path = tokenizer->path;
  if (!type) return sg_fail(error, SG_ERR_FORMAT, "%s: a normalizer has no type", path);
  if (!strcmp(type, "Sequence")) {
    JsonArray *list = member_array(part, "normalizers");
    if (!list) return sg_fail(error, SG_ERR_FORMAT, "%s: normalizer Sequence has no list", path);
    for (guint i = 0; i < json_array_get_length(list); i++) {
      JsonNode *node = json_array_get_element(list, i);
      if (!JSON_NODE_HOLDS_OBJECT(node)) {
        return sg_fail(error, SG_ERR_FORMAT, "%s: normalizer Sequence item %u is not an object",
                       path, i);
      }
      sg_status status = parse_normalizer(tokenizer, json_node_get_object(node), error);
      if (status) return status;
    }
    return SG_OK;
  }
  normalizer_step step = {0};
  if (!strcmp(type, "Replace")) {
    const char *pattern;
    sg_status status = string_pattern(part, path, "normalizer Replace", &pattern, error);
    if (status) return status;
    const char *content = member_string(part, "content");
    if (!content) return sg_fail(error, SG_ERR_FORMAT, "%s: normalizer Replace: no content", path);
    step = (normalizer_step){NORMALIZE_REPLACE, g_strdup(pattern), g_strdup(content), 0};
  } else if (!strcmp(type, "Prepend")) {
    const char *prepend = member_string(part, "prepend");
    if (!prepend) return sg_fail(error, SG_ERR_FORMAT, "%s: normalizer Prepend: no prepend", path);
    step = (normalizer_step){NORMALIZE_PREPEND, NULL, g_strdup(prepend), 0};
  } else if (!strcmp(type, "NFC") || !strcmp(type, "NFD") || !strcmp(type, "NFKC") ||
             !strcmp(type, "NFKD")) {
    GNormalizeMode mode = !strcmp(type, "NFC")    ? G_NORMALIZE_NFC
                          : !strcmp(type, "NFD")  ? G_NORMALIZE_NFD
                          : !strcmp(type, "NFKC") ? G_NORMALIZE_NFKC
                                                  : G_NORMALIZE_NFKD;
    step = (normalizer_step){NORMALIZE_UNICODE, NULL, NULL, mode};
  } else {
    return sg_fail(error, SG_ERR_FORMAT, "%s: normalizer type \"%s\" is not supported", path, type);
  }
  g_array_append_val(tokenizer->normalizers, step);
  return SG_OK;
}

static sg_status parse_pre_tokenizer(sg_gemma_tokenizer *tokenizer, JsonObject *part,
                                     sg_error *error) {
  const char *type = member_string(part, "type");
  const char *path = tokenizer->path;
  if (!type) return sg_fail(error, SG_ERR_FORMAT, "%s: a pre_tokenizer has no type", path);
  if (!strcmp(type, "Sequence")) {
    JsonArray *list = member_array(part, "pretokenizers");
    if (!list) {
      return sg_fail(error, SG_ERR_FORMAT, "%s: pre_tokenizer Sequence has no list", path);
    }
    for (guint i = 0; i < json_array_get_length(list); i++) {
      JsonNode *node = json_array_get_element(list, i);
      if (!JSON_NODE_HOLDS_OBJECT(node)) {
        return sg_fail(error, SG_ERR_FORMAT, "%s: pre_tokenizer Sequence item %u is not an object",
                       path, i);
      }
      sg_status status = parse_pre_tokenizer(tokenizer, json_node_get_object(node), error);
      if (status) return status;
    }
    return SG_OK;
  }
  if (strcmp(type, "Split") != 0) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: pre_tokenizer type \"%s\" is not supported", path,
                   type);
  }
  const char *pattern;
  sg_status status = string_pattern(part, path, "pre_tokenizer Split", &pattern, error);
  if (status) return status;
  if (member_bool(part, "invert", 0)) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: pre_tokenizer Split with invert is not supported",
                   path);
  }
  static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                      "Contiguous"};
  const char *behavior = member_string(part, "behavior");
  int found = -1;
  for (int i = 0; i < 5 && behavior; i++) {
    if (!strcmp(behavior, names[i])) found = i;
  }
  if (found < 0) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: pre_tokenizer Split behavior \"%s\" is unknown", path,
                   behavior ? behavior : "(none)");
  }
  split_step step = {g_strdup(pattern), (split_behavior)found};
  g_array_append_val(tokenizer->splits, step);
  return SG_OK;
}

/* The ids of special token `name` in a TemplateProcessing "special_tokens" map. */
static sg_status template_special(sg_gemma_tokenizer *tokenizer, JsonObject *specials,
                                  const char *name, GArray *target, sg_error *error) {
  JsonArray *ids = member_array(member_object(specials, name), "ids");
  if (!ids) {
    return sg_fail(error, SG_ERR_FORMAT,
                   "%s: post_processor: special token \"%s\" has no ids in special_tokens",
                   tokenizer->path, name);
  }
  for (guint i = 0; i < json_array_get_length(ids); i++) {
    int64_t id = json_array_get_int_element(ids, i);
    if (id < 0 || id >= G_MAXINT32) {
      return sg_fail(error, SG_ERR_FORMAT, "%s: post_processor: bad id for \"%s\"", tokenizer->path,
                     name);
    }
    int32_t value = (int32_t)id;
    if (!sg_gemma_tokenizer_token(tokenizer, value)) {
      return sg_fail(error, SG_ERR_FORMAT,
                     "%s: post_processor: special token \"%s\" has id %d, which is neither in the "
                     "vocabulary nor an added token",
                     tokenizer->path, name, (int)value);
    }
    g_array_append_val(target, value);
  }
  return SG_OK;
}

static sg_status parse_post_processor(sg_gemma_tokenizer *tokenizer, JsonObject *part,
                                      sg_error *error) {
  const char *type = member_string(part, "type");
  const char *path = tokenizer->path;
  if (!type) return sg_fail(error, SG_ERR_FORMAT, "%s: the post_processor has no type", path);
  if (!strcmp(type, "ByteLevel")) return SG_OK; /* only moves offsets */
  if (!strcmp(type, "Sequence")) {
    JsonArray *list = member_array(part, "processors");
    for (guint i = 0; list && i < json_array_get_length(list); i++) {
      JsonNode *node = json_array_get_element(list, i);
      if (!JSON_NODE_HOLDS_OBJECT(node)) continue;
      sg_status status = parse_post_processor(tokenizer, json_node_get_object(node), error);
      if (status) return status;
    }
    return SG_OK;
  }
  if (strcmp(type, "TemplateProcessing") != 0) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: post_processor type \"%s\" is not supported", path,
                   type);
  }
  JsonArray *single = member_array(part, "single");
  JsonObject *specials = member_object(part, "special_tokens");
  if (!single) return sg_fail(error, SG_ERR_FORMAT, "%s: TemplateProcessing has no single", path);
  g_array_set_size(tokenizer->prefix, 0);
  g_array_set_size(tokenizer->suffix, 0);
  int seen_sequence = 0;
  for (guint i = 0; i < json_array_get_length(single); i++) {
    JsonNode *node = json_array_get_element(single, i);
    JsonObject *item = JSON_NODE_HOLDS_OBJECT(node) ? json_node_get_object(node) : NULL;
    JsonObject *special = member_object(item, "SpecialToken");
    if (member_object(item, "Sequence")) {
      seen_sequence = 1;
    } else if (special && member_string(special, "id")) {
      sg_status status =
          template_special(tokenizer, specials, member_string(special, "id"),
                           seen_sequence ? tokenizer->suffix : tokenizer->prefix, error);
      if (status) return status;
    } else {
      return sg_fail(error, SG_ERR_FORMAT, "%s: TemplateProcessing single item %u is unknown", path,
                     i);
    }
  }
  return SG_OK;
}

static sg_status parse_merges(sg_gemma_tokenizer *tokenizer, JsonArray *merges, sg_error *error) {
  const char *path = tokenizer->path;
  guint count = json_array_get_length(merges);
  GString *joined = g_string_new(NULL);
  sg_status status = SG_OK;
  for (guint rank = 0; rank < count && !status; rank++) {
    JsonNode *node = json_array_get_element(merges, rank);
    char *left = NULL, *right = NULL;
    if (JSON_NODE_HOLDS_VALUE(node) && json_node_get_value_type(node) == G_TYPE_STRING) {
      const char *line = json_node_get_string(node);
      const char *space = strchr(line, ' ');
      if (space && space != line && space[1] && !strchr(space + 1, ' ')) {
        left = g_strndup(line, (gsize)(space - line));
        right = g_strdup(space + 1);
      }
    } else if (JSON_NODE_HOLDS_ARRAY(node) &&
               json_array_get_length(json_node_get_array(node)) == 2) {
      JsonArray *pair = json_node_get_array(node);
      JsonNode *a = json_array_get_element(pair, 0), *b = json_array_get_element(pair, 1);
      if (JSON_NODE_HOLDS_VALUE(a) && json_node_get_value_type(a) == G_TYPE_STRING &&
          JSON_NODE_HOLDS_VALUE(b) && json_node_get_value_type(b) == G_TYPE_STRING) {
        left = g_strdup(json_node_get_string(a));
        right = g_strdup(json_node_get_string(b));
      }
    }
    if (!left) {
      status =
          sg_fail(error, SG_ERR_FORMAT,
                  "%s: model.merges[%u] is neither \"left right\" nor [left, right]", path, rank);
      break;
    }
    g_string_assign(joined, left);
    g_string_append(joined, right);
    int32_t left_id = sg_vocab_find(&tokenizer->vocab, left);
    int32_t right_id = sg_vocab_find(&tokenizer->vocab, right);
    int32_t merged_id = sg_vocab_find(&tokenizer->vocab, joined->str);
    if (left_id < 0 || right_id < 0 || merged_id < 0) {
      status = sg_fail(error, SG_ERR_FORMAT, "%s: model.merges[%u]: \"%s\" is not in model.vocab",
                       path, rank,
                       left_id < 0    ? left
                       : right_id < 0 ? right
                                      : joined->str);
    } else {
      sg_bpe_merges_add(tokenizer->merges, left_id, right_id, (int32_t)rank, merged_id);
    }
    g_free(left);
    g_free(right);
  }
  g_string_free(joined, TRUE);
  return status;
}

static sg_status parse_model(sg_gemma_tokenizer *tokenizer, JsonObject *model, sg_error *error) {
  const char *path = tokenizer->path;
  const char *type = member_string(model, "type");
  if (!model || !type || strcmp(type, "BPE") != 0) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: model.type is \"%s\"; only BPE is supported", path,
                   type ? type : "(missing)");
  }
  const char *prefix = member_string(model, "continuing_subword_prefix");
  const char *suffix = member_string(model, "end_of_word_suffix");
  if ((prefix && *prefix) || (suffix && *suffix)) {
    return sg_fail(error, SG_ERR_FORMAT,
                   "%s: model: continuing_subword_prefix / end_of_word_suffix are not supported",
                   path);
  }
  JsonNode *dropout = member(model, "dropout");
  if (dropout && JSON_NODE_HOLDS_VALUE(dropout) && json_node_get_double(dropout) != 0.0) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: model.dropout must be null for inference", path);
  }
  JsonObject *vocab = member_object(model, "vocab");
  JsonArray *merges = member_array(model, "merges");
  if (!vocab || !merges) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: model.vocab (object) or model.merges is missing",
                   path);
  }
  sg_status status = sg_vocab_load_object(&tokenizer->vocab, vocab, path, "model.vocab", error);
  if (status) return status;
  tokenizer->merges = sg_bpe_merges_new((int)json_array_get_length(merges));
  status = parse_merges(tokenizer, merges, error);
  if (status) return status;
  tokenizer->byte_fallback = member_bool(model, "byte_fallback", 0);
  tokenizer->fuse_unk = member_bool(model, "fuse_unk", 0);
  tokenizer->ignore_merges = member_bool(model, "ignore_merges", 0);
  const char *unk = member_string(model, "unk_token");
  tokenizer->unk_id = unk ? sg_vocab_find(&tokenizer->vocab, unk) : -1;
  if (unk && tokenizer->unk_id < 0) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: model.unk_token \"%s\" is not in model.vocab", path,
                   unk);
  }
  for (int b = 0; b < 256; b++) {
    char name[8];
    snprintf(name, sizeof name, "<0x%02X>", (unsigned)b);
    tokenizer->byte_ids[b] = sg_vocab_find(&tokenizer->vocab, name);
  }
  return SG_OK;
}

static sg_status parse_added_tokens(sg_gemma_tokenizer *tokenizer, JsonArray *list,
                                    sg_error *error) {
  const char *path = tokenizer->path;
  for (guint i = 0; list && i < json_array_get_length(list); i++) {
    JsonNode *node = json_array_get_element(list, i);
    JsonObject *token = JSON_NODE_HOLDS_OBJECT(node) ? json_node_get_object(node) : NULL;
    const char *content = member_string(token, "content");
    JsonNode *id_node = member(token, "id");
    if (!content || !*content || !id_node || !JSON_NODE_HOLDS_VALUE(id_node) ||
        json_node_get_value_type(id_node) != G_TYPE_INT64) {
      return sg_fail(error, SG_ERR_FORMAT, "%s: added_tokens[%u] needs content and an id", path, i);
    }
    int64_t id = json_node_get_int(id_node);
    if (id < 0 || id >= 16 * 1024 * 1024) {
      return sg_fail(error, SG_ERR_FORMAT, "%s: added_tokens[%u] has a bad id", path, i);
    }
    const char *flags[4] = {"normalized", "lstrip", "rstrip", "single_word"};
    for (int f = 0; f < 4; f++) {
      if (member_bool(token, flags[f], 0)) {
        return sg_fail(error, SG_ERR_FORMAT,
                       "%s: added token \"%s\" sets %s, which is not supported", path, content,
                       flags[f]);
      }
    }
    char *text = g_strdup(content);
    g_ptr_array_add(tokenizer->added_texts, text);
    g_hash_table_insert(tokenizer->added, text, GINT_TO_POINTER((int)id + 1));
    for (size_t length = 1; length <= strlen(text); length++) {
      char *prefix = g_string_chunk_insert_len(tokenizer->prefix_texts, text, (gssize)length);
      g_hash_table_add(tokenizer->added_prefixes, prefix);
    }
  }
  return SG_OK;
}

/* An id by token text: the added tokens first, then the model's vocabulary. */
static int32_t find_any(const sg_gemma_tokenizer *tokenizer, const char *text) {
  if (!text) return -1;
  int32_t id = GPOINTER_TO_INT(g_hash_table_lookup(tokenizer->added, text)) - 1;
  return id >= 0 ? id : sg_vocab_find(&tokenizer->vocab, text);
}

/* Reads tokenizer_config.json beside the file, when there is one. */
static sg_status read_config(sg_gemma_tokenizer *tokenizer, sg_error *error) {
  char *folder = g_path_get_dirname(tokenizer->path);
  char *path = g_build_filename(folder, "tokenizer_config.json", NULL);
  g_free(folder);
  const char *bos = "<bos>", *eos = "<eos>", *pad = "<pad>";
  JsonParser *parser = NULL;
  JsonObject *config = NULL;
  if (g_file_test(path, G_FILE_TEST_EXISTS)) {
    sg_status status = sg_json_read_object(path, &parser, &config, error);
    if (status) {
      g_free(path);
      return status;
    }
    if (sg_json_token_text(config, "bos_token")) bos = sg_json_token_text(config, "bos_token");
    if (sg_json_token_text(config, "eos_token")) eos = sg_json_token_text(config, "eos_token");
    if (sg_json_token_text(config, "pad_token")) pad = sg_json_token_text(config, "pad_token");
  }
  tokenizer->bos_id = find_any(tokenizer, bos);
  tokenizer->eos_id = find_any(tokenizer, eos);
  tokenizer->pad_id = find_any(tokenizer, pad);
  sg_status status = SG_OK;
  if (config && (member(config, "add_bos_token") || member(config, "add_eos_token"))) {
    int add_bos = member_bool(config, "add_bos_token", 0);
    int add_eos = member_bool(config, "add_eos_token", 0);
    if ((add_bos && tokenizer->bos_id < 0) || (add_eos && tokenizer->eos_id < 0)) {
      status = sg_fail(error, SG_ERR_FORMAT,
                       "%s: add_bos_token/add_eos_token name a token that "
                       "is not in the vocabulary",
                       path);
    }
    g_array_set_size(tokenizer->prefix, 0);
    g_array_set_size(tokenizer->suffix, 0);
    if (add_bos) g_array_append_val(tokenizer->prefix, tokenizer->bos_id);
    if (add_eos) g_array_append_val(tokenizer->suffix, tokenizer->eos_id);
  }
  if (parser) g_object_unref(parser);
  g_free(path);
  return status;
}

sg_status sg_gemma_tokenizer_load(const char *path, sg_gemma_tokenizer **out, sg_error *error) {
  *out = NULL;
  sg_gemma_tokenizer *tokenizer = g_new0(sg_gemma_tokenizer, 1);
  tokenizer->path = g_file_test(path, G_FILE_TEST_IS_DIR)
                        ? g_build_filename(path, "tokenizer.json", NULL)
                        : g_strdup(path);
  sg_vocab_init(&tokenizer->vocab);
  tokenizer->added = g_hash_table_new(g_str_hash, g_str_equal);
  tokenizer->added_texts = g_ptr_array_new_with_free_func(g_free);
  tokenizer->added_prefixes = g_hash_table_new(g_str_hash, g_str_equal);
  tokenizer->prefix_texts = g_string_chunk_new(4096);
  tokenizer->normalizers = g_array_new(FALSE, TRUE, sizeof(normalizer_step));
  tokenizer->splits = g_array_new(FALSE, TRUE, sizeof(split_step));
  tokenizer->prefix = g_array_new(FALSE, FALSE, sizeof(int32_t));
  tokenizer->suffix = g_array_new(FALSE, FALSE, sizeof(int32_t));

  JsonParser *parser = NULL;
  JsonObject *root = NULL;
  sg_status status = sg_json_read_object(tokenizer->path, &parser, &root, error);
  if (!status) status = parse_model(tokenizer, member_object(root, "model"), error);
  if (!status) status = parse_added_tokens(tokenizer, member_array(root, "added_tokens"), error);
  JsonObject *part;
  if (!status && (part = member_object(root, "normalizer"))) {
    status = parse_normalizer(tokenizer, part, error);
  }
  if (!status && (part = member_object(root, "pre_tokenizer"))) {
    status = parse_pre_tokenizer(tokenizer, part, error);
  }
  if (!status && (part = member_object(root, "post_processor"))) {
    status = parse_post_processor(tokenizer, part, error);
  }
  if (parser) g_object_unref(parser);
  if (!status) status = read_config(tokenizer, error);
  if (status) {
    sg_gemma_tokenizer_free(tokenizer);
    return status;
  }
  *out = tokenizer;
  return SG_OK;
}

void sg_gemma_tokenizer_free(sg_gemma_tokenizer *tokenizer) {
  if (!tokenizer) return;
  sg_vocab_clear(&tokenizer->vocab);
  sg_bpe_merges_free(tokenizer->merges);
  g_hash_table_destroy(tokenizer->added);
  g_ptr_array_free(tokenizer->added_texts, TRUE);
  g_hash_table_destroy(tokenizer->added_prefixes);
  g_string_chunk_free(tokenizer->prefix_texts);
  for (guint i = 0; i < tokenizer->normalizers->len; i++) {
    normalizer_step *step = &g_array_index(tokenizer->normalizers, normalizer_step, i);
    g_free(step->pattern);
    g_free(step->content);
  }
  g_array_free(tokenizer->normalizers, TRUE);
  for (guint i = 0; i < tokenizer->splits->len; i++) {
    g_free(g_array_index(tokenizer->splits, split_step, i).pattern);
  }
  g_array_free(tokenizer->splits, TRUE);
  g_array_free(tokenizer->prefix, TRUE);
  g_array_free(tokenizer->suffix, TRUE);
  g_free(tokenizer->path);
  g_free(tokenizer);
}

int32_t sg_gemma_tokenizer_vocab_size(const sg_gemma_tokenizer *tokenizer) {
  int32_t size = tokenizer->vocab.size;
  for (guint i = 0; i < tokenizer->added_texts->len; i++) {
    int32_t id = find_any(tokenizer, g_ptr_array_index(tokenizer->added_texts, i));
    if (id >= size) size = id + 1;
  }
  return size;
}
int32_t sg_gemma_tokenizer_bos_id(const sg_gemma_tokenizer *tokenizer) {
  return tokenizer->bos_id;
}
int32_t sg_gemma_tokenizer_eos_id(const sg_gemma_tokenizer *tokenizer) {
  return tokenizer->eos_id;
}
int32_t sg_gemma_tokenizer_pad_id(const sg_gemma_tokenizer *tokenizer) {
  return tokenizer->pad_id;
}

const char *sg_gemma_tokenizer_token(const sg_gemma_tokenizer *tokenizer, int32_t id) {
  if (id >= 0 && id < tokenizer->vocab.size && tokenizer->vocab.tokens[id]) {
    return tokenizer->vocab.tokens[id];
  }
  for (guint i = 0; i < tokenizer->added_texts->len; i++) { /* rare: added beyond the vocab */
    const char *text = g_ptr_array_index(tokenizer->added_texts, i);
    if (GPOINTER_TO_INT(g_hash_table_lookup(tokenizer->added, text)) - 1 == id) return text;
  }
  return NULL;
}

/* ---- tokenizing ---- */

/* Length in bytes of the longest added token at text[0..], or 0. The text is extended one byte
 * at a time while it is still the start of some added token, so a miss costs one lookup. */
static int added_match(const sg_gemma_tokenizer *tokenizer, const char *text, size_t left,
                       int32_t *id) {
  char first[2] = {text[0], '\0'};
  if (!g_hash_table_contains(tokenizer->added_prefixes, first)) return 0; /* the common case */
  GString *key = g_string_sized_new(32);
  int longest = 0;
  for (size_t length = 1; length <= left; length++) {
    g_string_append_c(key, text[length - 1]);
    if (!g_hash_table_contains(tokenizer->added_prefixes, key->str)) break;
    int32_t found = GPOINTER_TO_INT(g_hash_table_lookup(tokenizer->added, key->str)) - 1;
    if (found >= 0) {
      *id = found;
      longest = (int)length;
    }
  }
  g_string_free(key, TRUE);
  return longest;
}

static char *normalize(const sg_gemma_tokenizer *tokenizer, const char *text, size_t length) {
  GString *out = g_string_new_len(text, (gssize)length);
  for (guint i = 0; i < tokenizer->normalizers->len; i++) {
    const normalizer_step *step = &g_array_index(tokenizer->normalizers, normalizer_step, i);
    if (step->kind == NORMALIZE_REPLACE) {
      g_string_replace(out, step->pattern, step->content, 0);
    } else if (step->kind == NORMALIZE_PREPEND) {
      if (out->len > 0) g_string_prepend(out, step->content);
    } else {
      char *normal = g_utf8_normalize(out->str, (gssize)out->len, step->mode);
      g_string_assign(out, normal);
      g_free(normal);
    }
  }
  return g_string_free(out, FALSE);
}

typedef struct {
  int start, end; /* byte offsets in the normalized text */
} span;

/* Splits each span on one Split step, the way the Hugging Face library does for each behavior. */
static GArray *split_spans(const char *text, GArray *spans, const split_step *step) {
  GArray *result = g_array_new(FALSE, FALSE, sizeof(span));
  size_t pattern_length = strlen(step->pattern);
  for (guint s = 0; s < spans->len; s++) {
    span whole = g_array_index(spans, span, s);
    /* Pieces of this span in order: gaps (is_match 0) and occurrences (1), none empty. */
    GArray *pieces = g_array_new(FALSE, FALSE, sizeof(int) * 3);
    int at = whole.start;
    while (at < whole.end) {
      const char *hit = g_strstr_len(text + at, whole.end - at, step->pattern);
      int hit_start = hit ? (int)(hit - text) : whole.end;
      if (hit_start > at) {
        int gap[3] = {at, hit_start, 0};
        g_array_append_val(pieces, gap);
      }
      if (!hit) break;
      int match[3] = {hit_start, hit_start + (int)pattern_length, 1};
      g_array_append_val(pieces, match);
      at = match[1];
    }
    int count = (int)pieces->len;
    int(*piece)[3] = (int(*)[3])(void *)pieces->data;
    GArray *kept = g_array_new(FALSE, FALSE, sizeof(span));
    for (int i = 0; i < count; i++) {
      span current = {piece[i][0], piece[i][1]};
      int is_match = piece[i][2];
      int previous_match = i > 0 && piece[i - 1][2];
      switch (step->behavior) {
        case SPLIT_REMOVED:
          if (!is_match) g_array_append_val(kept, current);
          break;
        case SPLIT_ISOLATED:
          g_array_append_val(kept, current);
          break;
        case SPLIT_CONTIGUOUS:
          if (is_match && previous_match) {
            g_array_index(kept, span, kept->len - 1).end = current.end;
          } else {
            g_array_append_val(kept, current);
          }
          break;
        case SPLIT_MERGED_WITH_PREVIOUS:
          if (is_match && !previous_match && kept->len > 0) {
            g_array_index(kept, span, kept->len - 1).end = current.end;
          } else {
            g_array_append_val(kept, current);
          }
          break;
        case SPLIT_MERGED_WITH_NEXT: {
          /* A match joins the gap after it unless another match follows it directly. */
          int next_is_gap = i + 1 < count && !piece[i + 1][2];
          if (is_match && next_is_gap) {
            span joined = {current.start, piece[i + 1][1]};
            g_array_append_val(kept, joined);
            i++;
          } else {
            g_array_append_val(kept, current);
          }
          break;
        }
      }
    }
    g_array_append_vals(result, kept->data, kept->len);
    g_array_free(kept, TRUE);
    g_array_free(pieces, TRUE);
  }
  g_array_free(spans, TRUE);
  return result;
}

/* Byte-pair encodes one pre-token: characters (or their bytes), then merges by rank. */
static sg_status encode_word(const sg_gemma_tokenizer *tokenizer, const char *word, size_t length,
                             GArray *ids, sg_error *error) {
  if (tokenizer->ignore_merges) {
    int32_t whole = sg_vocab_find_bytes(&tokenizer->vocab, word, length);
    if (whole >= 0) {
      g_array_append_val(ids, whole);
      return SG_OK;
    }
  }
  /* At most one symbol per byte. */
  int32_t *symbols = g_new(int32_t, length > 0 ? length : 1);
  int count = 0;
  for (const char *p = word; p < word + length; p = g_utf8_next_char(p)) {
    size_t bytes = (size_t)(g_utf8_next_char(p) - p);
    int32_t id = sg_vocab_find_bytes(&tokenizer->vocab, p, bytes);
    if (id >= 0) {
      symbols[count++] = id;
      continue;
    }
    int all_bytes = tokenizer->byte_fallback;
    for (size_t b = 0; b < bytes && all_bytes; b++) {
      all_bytes = tokenizer->byte_ids[(unsigned char)p[b]] >= 0;
    }
    if (all_bytes) {
      for (size_t b = 0; b < bytes; b++)
        symbols[count++] = tokenizer->byte_ids[(unsigned char)p[b]];
    } else if (tokenizer->unk_id >= 0) {
      int previous_unk = count > 0 && symbols[count - 1] == tokenizer->unk_id;
      if (!(tokenizer->fuse_unk && previous_unk)) symbols[count++] = tokenizer->unk_id;
    } else {
      g_free(symbols);
      return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                     "the character U+%04X is not in the vocabulary of %s, which has no byte "
                     "fallback and no unk_token",
                     (unsigned)g_utf8_get_char(p), tokenizer->path);
    }
  }
  sg_bpe_merge_word(tokenizer->merges, symbols, &count);
  g_array_append_vals(ids, symbols, (guint)count);
  g_free(symbols);
  return SG_OK;
}

/* Normalizes, pre-splits and encodes one stretch of text between added tokens. */
static sg_status encode_stretch(const sg_gemma_tokenizer *tokenizer, const char *text,
                                size_t length, GArray *ids, sg_error *error) {
  if (length == 0) return SG_OK;
  char *normal = normalize(tokenizer, text, length);
  GArray *spans = g_array_new(FALSE, FALSE, sizeof(span));
  span whole = {0, (int)strlen(normal)};
  if (whole.end > 0) g_array_append_val(spans, whole);
  for (guint i = 0; i < tokenizer->splits->len; i++) {
    spans = split_spans(normal, spans, &g_array_index(tokenizer->splits, split_step, i));
  }
  sg_status status = SG_OK;
  for (guint i = 0; i < spans->len && !status; i++) {
    span piece = g_array_index(spans, span, i);
    status =
        encode_word(tokenizer, normal + piece.start, (size_t)(piece.end - piece.start), ids, error);
  }
  g_array_free(spans, TRUE);
  g_free(normal);
  return status;
}

/* Copies count ids (none: data may be NULL) to target[at..]; returns the new end. */
static int append_ids(int32_t *target, int at, const void *data, guint count) {
  if (count > 0) memcpy(target + at, data, count * sizeof(int32_t));
  return at + (int)count;
}

sg_status sg_gemma_tokenize(const sg_gemma_tokenizer *tokenizer, const char *text,
                            int add_special_tokens, int max_length, sg_gemma_tokens *out,
                            sg_error *error) {
  memset(out, 0, sizeof *out);
  size_t length;
  sg_status status = sg_utf8_check(text, "prompt", &length, error);
  if (status) return status;
  int specials = add_special_tokens ? (int)(tokenizer->prefix->len + tokenizer->suffix->len) : 0;
  if (max_length > 0 && max_length < specials) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "max_length %d leaves no room for the %d special tokens", max_length, specials);
  }
  GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
  size_t stretch = 0;
  for (size_t at = 0; at < length && !status;) {
    int32_t id;
    int matched = added_match(tokenizer, text + at, length - at, &id);
    if (!matched) {
      at++;
      continue;
    }
    status = encode_stretch(tokenizer, text + stretch, at - stretch, ids, error);
    g_array_append_val(ids, id);
    at += (size_t)matched;
    stretch = at;
  }
  if (!status) status = encode_stretch(tokenizer, text + stretch, length - stretch, ids, error);
  if (status) {
    g_array_free(ids, TRUE);
    return status;
  }
  int kept = (int)ids->len;
  if (max_length > 0 && kept + specials > max_length) {
    kept = max_length - specials;
    out->truncated = 1;
  }
  out->count = kept + specials;
  out->ids = g_new(int32_t, out->count > 0 ? out->count : 1);
  int at = 0;
  if (add_special_tokens)
    at = append_ids(out->ids, at, tokenizer->prefix->data, tokenizer->prefix->len);
  at = append_ids(out->ids, at, ids->data, (guint)kept);
  if (add_special_tokens) append_ids(out->ids, at, tokenizer->suffix->data, tokenizer->suffix->len);
  g_array_free(ids, TRUE);
  return SG_OK;
}

void sg_gemma_tokens_clear(sg_gemma_tokens *tokens) {
  g_free(tokens->ids);
  memset(tokens, 0, sizeof *tokens);
}
