/* fuzz_clip.c: libFuzzer target: CLIP's tokenizer on arbitrary prompts (env SG_FUZZ_CLIP_DIR: a
 * folder with vocab.json, merges.txt), and its loader on arbitrary merges.txt /
 * tokenizer_config.json beside SG_FUZZ_CLIP_FILES's vocab.json (default: SG_FUZZ_CLIP_DIR). */
#include <glib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "tokenizer_clip.h"

#define EXPECT(cond)                                               \
  do {                                                             \
    if (!(cond)) {                                                 \
      fprintf(stderr, "fuzz_clip: invariant broken: %s\n", #cond); \
      abort();                                                     \
    }                                                              \
  } while (0)

/* libFuzzer gives the target no user pointer, so the tokenizer loaded once lives here. */
static sg_clip_tokenizer *loaded_tokenizer;
static const char *loader_files; /* a small vocabulary keeps the loader mode fast */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  const char *tokenizer_dir = getenv("SG_FUZZ_CLIP_DIR");
  loader_files = getenv("SG_FUZZ_CLIP_FILES") ? getenv("SG_FUZZ_CLIP_FILES") : tokenizer_dir;
  sg_error error = {0};
  if (!tokenizer_dir || sg_clip_tokenizer_load(tokenizer_dir, &loaded_tokenizer, &error) != SG_OK) {
    fprintf(stderr, "fuzz_clip: set SG_FUZZ_CLIP_DIR to a CLIP tokenizer folder (%s)\n",
            error.message);
    exit(1);
  }
  return 0;
}

/* Tokenizes text every way the engine does and checks what comes out. */
static void tokenize(const sg_clip_tokenizer *tokenizer, const char *text) {
  sg_error error = {0};
  int32_t *ids = NULL;
  int count = -1;
  int32_t vocab = sg_clip_tokenizer_vocab_size(tokenizer);
  sg_status status = sg_clip_encode(tokenizer, text, &ids, &count, &error);
  if (status == SG_OK) {
    EXPECT(count >= 0);
    for (int i = 0; i < count; i++) EXPECT(ids[i] >= 0 && ids[i] < vocab);
    for (int i = 0; i < count; i++) EXPECT(sg_clip_tokenizer_token(tokenizer, ids[i]) != NULL);
  } else {
    EXPECT(status == SG_ERR_INVALID_ARGUMENT && error.message[0] != '\0');
  }
  g_free(ids);
  for (int pad = 0; pad < 2; pad++) {
    sg_clip_tokens tokens;
    memset(&tokens, 0, sizeof tokens);
    sg_status padded = sg_clip_tokenize(tokenizer, text, pad, &tokens, &error);
    EXPECT(padded == status);
    if (padded == SG_OK) {
      int max = sg_clip_tokenizer_max_length(tokenizer);
      EXPECT(tokens.length >= 2 && tokens.length <= max);
      EXPECT(tokens.count == (pad ? max : tokens.length));
      EXPECT(tokens.eos_index == tokens.length - 1);
      EXPECT(tokens.ids[0] == sg_clip_tokenizer_bos_id(tokenizer));
      EXPECT(tokens.ids[tokens.eos_index] == sg_clip_tokenizer_eos_id(tokenizer));
      for (int i = 0; i < tokens.count; i++) EXPECT(tokens.ids[i] >= 0 && tokens.ids[i] < vocab);
      for (int i = tokens.length; i < tokens.count; i++)
        EXPECT(tokens.ids[i] == sg_clip_tokenizer_pad_id(tokenizer));
    }
    sg_clip_tokens_clear(&tokens);
  }
}

/* The input as one of the tokenizer's files, beside a copy of the fixed vocab.json. */
static void load_files(const char *file_name, const uint8_t *data, size_t size) {
  scratch_file scratch;
  scratch_write(&scratch, file_name, data, size);
  char *vocab_source = g_build_filename(loader_files, "vocab.json", NULL);
  char *merges_source = g_build_filename(loader_files, "merges.txt", NULL);
  char *vocab_copy = g_build_filename(scratch.folder, "vocab.json", NULL);
  char *merges_copy = g_build_filename(scratch.folder, "merges.txt", NULL);
  char *contents = NULL;
  gsize length = 0;
  if (!g_file_get_contents(vocab_source, &contents, &length, NULL)) abort();
  if (!g_file_set_contents(vocab_copy, contents, (gssize)length, NULL)) abort();
  g_free(contents);
  if (strcmp(file_name, "merges.txt") != 0) {
    if (!g_file_get_contents(merges_source, &contents, &length, NULL)) abort();
    if (!g_file_set_contents(merges_copy, contents, (gssize)length, NULL)) abort();
    g_free(contents);
  }
  sg_error error = {0};
  sg_clip_tokenizer *tokenizer = NULL;
  sg_status status = sg_clip_tokenizer_load(scratch.folder, &tokenizer, &error);
  if (status == SG_OK) {
    tokenize(tokenizer, "a red circle on a blue square, the photo of a cat");
    sg_clip_tokenizer_free(tokenizer);
  } else {
    EXPECT(tokenizer == NULL && error.status == status && error.message[0] != '\0');
  }
  g_unlink(vocab_copy);
  g_unlink(merges_copy);
  scratch_remove(&scratch);
  g_free(vocab_source);
  g_free(merges_source);
  g_free(vocab_copy);
  g_free(merges_copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  uint8_t mode = data[0];
  if (mode < 0xF0) {
    char *text = g_strndup((const char *)data + 1, size - 1);
    tokenize(loaded_tokenizer, text);
    g_free(text);
  } else {
    load_files(mode < 0xF8 ? "merges.txt" : "tokenizer_config.json", data + 1, size - 1);
  }
  return 0;
}
