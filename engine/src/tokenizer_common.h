/* tokenizer_common.h: what the CLIP and Gemma tokenizers share: text checks, vocabularies, JSON. */
#ifndef SG_TOKENIZER_COMMON_H
#define SG_TOKENIZER_COMMON_H

#include <glib.h>
#include <json-glib/json-glib.h>
#include <stddef.h>
#include <stdint.h>

#include "snapgen.h"

/* The longest prompt the tokenizers accept, in bytes; longer text is an error, not truncated,
 * so that no prompt can make tokenization slow. */
#define SG_TEXT_MAX_BYTES (64 * 1024)

/* Checks that text (NUL-terminated; NULL is the empty text) is valid UTF-8 of at most
 * SG_TEXT_MAX_BYTES bytes; *length gets its length in bytes. Otherwise SG_ERR_INVALID_ARGUMENT
 * with a message naming `what` ("prompt") and the offset of the first bad byte. */
sg_status sg_utf8_check(const char *text, const char *what, size_t *length, sg_error *error);

/* A token vocabulary: string -> id and id -> string. */
typedef struct {
  GHashTable *ids;       /* token (in strings) -> GINT_TO_POINTER(id + 1) */
  char **tokens;         /* id -> token, NULL where no token has that id */
  int32_t size;          /* largest id + 1 */
  int32_t capacity;      /* slots in tokens */
  GStringChunk *strings; /* owns the token texts */
} sg_vocab;

void sg_vocab_init(sg_vocab *vocab);
void sg_vocab_clear(sg_vocab *vocab);
/* Sets token -> id (replacing an earlier id of the same token); ids up to 16 million. */
void sg_vocab_set(sg_vocab *vocab, const char *token, int32_t id);
/* The id of a token, or -1. */
int32_t sg_vocab_find(const sg_vocab *vocab, const char *token);
/* The id of the token held in text[0..length), or -1. */
int32_t sg_vocab_find_bytes(const sg_vocab *vocab, const char *text, size_t length);
/* Fills the vocabulary from a JSON object {"token": id, ...}; errors name path and field. */
sg_status sg_vocab_load_object(sg_vocab *vocab, JsonObject *object, const char *path,
                               const char *field, sg_error *error);

/* Reads and parses a JSON file whose top level is an object; *parser owns *root (unref it). */
sg_status sg_json_read_object(const char *path, JsonParser **parser, JsonObject **root,
                              sg_error *error);
/* A special-token field of a tokenizer config: either "text" or {"content": "text", ...}.
 * Returns the text (owned by the JSON) or NULL when the field is missing or null. */
const char *sg_json_token_text(JsonObject *object, const char *field);

#endif
