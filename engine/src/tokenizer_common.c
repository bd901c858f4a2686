/* tokenizer_common.c: what the CLIP and Gemma tokenizers share: text checks, vocabularies, JSON. */
#include "tokenizer_common.h"

#include <string.h>

#include "error.h"

#define MAX_TOKEN_ID (16 * 1024 * 1024)

sg_status sg_utf8_check(const char *text, const char *what, size_t *length, sg_error *error) {
  size_t bytes = text ? strlen(text) : 0;
  *length = 0;
  if (bytes > SG_TEXT_MAX_BYTES) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "the %s is %zu bytes long; at most %d bytes are accepted", what, bytes,
                   SG_TEXT_MAX_BYTES);
  }
  const char *end = NULL;
  if (bytes > 0 && !g_utf8_validate(text, (gssize)bytes, &end)) {
    size_t offset = (size_t)(end - text);
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                   "the %s is not valid UTF-8: the byte 0x%02X at offset %zu does not start a "
                   "complete character (the text must be UTF-8)",
                   what, (unsigned)(unsigned char)text[offset], offset);
  }
  *length = bytes;
  return SG_OK;
}

void sg_vocab_init(sg_vocab *vocab) {
  memset(vocab, 0, sizeof *vocab);
  vocab->ids = g_hash_table_new(g_str_hash, g_str_equal);
  vocab->strings = g_string_chunk_new(1 << 20);
}

void sg_vocab_clear(sg_vocab *vocab) {
  if (vocab->ids) g_hash_table_destroy(vocab->ids);
  if (vocab->strings) g_string_chunk_free(vocab->strings);
  g_free(vocab->tokens);
  memset(vocab, 0, sizeof *vocab);
}

void sg_vocab_set(sg_vocab *vocab, const char *token, int32_t id) {
  g_assert(id >= 0 && id < MAX_TOKEN_ID);
  if (id >= vocab->capacity) {
    int32_t capacity = vocab->capacity ? vocab->capacity : 1024;
    while (capacity <= id) capacity *= 2;
    vocab->tokens = g_renew(char *, vocab->tokens, capacity);
    memset(vocab->tokens + vocab->capacity, 0,
           (size_t)(capacity - vocab->capacity) * sizeof(char *));
    vocab->capacity = capacity;
  }
  if (id >= vocab->size) vocab->size = id + 1;
  gpointer stored = NULL, old_id = NULL;
  if (!g_hash_table_lookup_extended(vocab->ids, token, &stored, &old_id)) {
    stored = g_string_chunk_insert(vocab->strings, token);
  } else if (vocab->tokens[GPOINTER_TO_INT(old_id) - 1] == stored) {
    vocab->tokens[GPOINTER_TO_INT(old_id) - 1] = NULL;
  }
  g_hash_table_insert(vocab->ids, stored, GINT_TO_POINTER(id + 1));
  vocab->tokens[id] = stored;
}

int32_t sg_vocab_find(const sg_vocab *vocab, const char *token) {
  return GPOINTER_TO_INT(g_hash_table_lookup(vocab->ids, token)) - 1;
}

int32_t sg_vocab_find_bytes(const sg_vocab *vocab, const char *text, size_t length) {
  char small[64];
  if (length < sizeof small) {
    memcpy(small, text, length);
    small[length] = '\0';
    return sg_vocab_find(vocab, small);
  }
  char *copy = g_strndup(text, length);
  int32_t id = sg_vocab_find(vocab, copy);
  g_free(copy);
  return id;
}

sg_status sg_vocab_load_object(sg_vocab *vocab, JsonObject *object, const char *path,
                               const char *field, sg_error *error) {
  JsonObjectIter iter;
  const char *token;
  JsonNode *node;
  json_object_iter_init(&iter, object);
  while (json_object_iter_next(&iter, &token, &node)) {
    if (!JSON_NODE_HOLDS_VALUE(node) || json_node_get_value_type(node) != G_TYPE_INT64) {
      return sg_fail(error, SG_ERR_FORMAT, "%s: %s: the id of token \"%s\" is not an integer", path,
                     field, token);
    }
    int64_t id = json_node_get_int(node);
    if (id < 0 || id >= MAX_TOKEN_ID) {
      return sg_fail(error, SG_ERR_FORMAT, "%s: %s: the id %lld of token \"%s\" is out of range",
                     path, field, (long long)id, token);
    }
    if (id < vocab->size && vocab->tokens[id]) {
      return sg_fail(error, SG_ERR_FORMAT, "%s: %s: tokens \"%s\" and \"%s\" share the id %lld",
                     path, field, vocab->tokens[id], token, (long long)id);
    }
    sg_vocab_set(vocab, token, (int32_t)id);
  }
  if (vocab->size == 0) return sg_fail(error, SG_ERR_FORMAT, "%s: %s is empty", path, field);
  return SG_OK;
}

sg_status sg_json_read_object(const char *path, JsonParser **parser, JsonObject **root,
                              sg_error *error) {
  *parser = NULL;
  *root = NULL;
  JsonParser *json = json_parser_new();
  GError *gerror = NULL;
  if (!json_parser_load_from_file(json, path, &gerror)) {
    sg_status status =
        g_error_matches(gerror, G_FILE_ERROR, G_FILE_ERROR_NOENT) || gerror->domain == G_FILE_ERROR
            ? SG_ERR_IO
            : SG_ERR_FORMAT;
    sg_fail(error, status, "%s: %s", path, gerror->message);
    g_error_free(gerror);
    g_object_unref(json);
    return status;
  }
  JsonNode *top = json_parser_get_root(json);
  if (!top || !JSON_NODE_HOLDS_OBJECT(top)) {
    g_object_unref(json);
    return sg_fail(error, SG_ERR_FORMAT, "%s: the top level must be a JSON object", path);
  }
  *parser = json;
  *root = json_node_get_object(top);
  return SG_OK;
}

const char *sg_json_token_text(JsonObject *object, const char *field) {
  if (!object || !json_object_has_member(object, field)) return NULL;
  JsonNode *node = json_object_get_member(object, field);
  if (JSON_NODE_HOLDS_VALUE(node) && json_node_get_value_type(node) == G_TYPE_STRING) {
    return json_node_get_string(node);
  }
  if (JSON_NODE_HOLDS_OBJECT(node)) {
    JsonObject *inner = json_node_get_object(node);
    if (json_object_has_member(inner, "content")) {
      JsonNode *content = json_object_get_member(inner, "content");
      if (JSON_NODE_HOLDS_VALUE(content) && json_node_get_value_type(content) == G_TYPE_STRING) {
        return json_node_get_string(content);
      }
    }
  }
  return NULL;
}
