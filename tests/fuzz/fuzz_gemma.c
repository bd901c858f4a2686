/* fuzz_gemma.c: libFuzzer target: the Gemma tokenizer on arbitrary prompts, and its loader on an
 * arbitrary tokenizer.json (env SG_FUZZ_GEMMA_PATH: the tokenizer.json used for prompts). */
#include <glib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "tokenizer_gemma.h"

#define EXPECT(cond)                                                \
  do {                                                              \
    if (!(cond)) {                                                  \
      fprintf(stderr, "fuzz_gemma: invariant broken: %s\n", #cond); \
      abort();                                                      \
    }                                                               \
  } while (0)

/* libFuzzer gives the target no user pointer, so the tokenizer loaded once lives here. */
static sg_gemma_tokenizer *loaded_tokenizer;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  const char *path = getenv("SG_FUZZ_GEMMA_PATH");
  sg_error error = {0};
  if (!path || sg_gemma_tokenizer_load(path, &loaded_tokenizer, &error) != SG_OK) {
    fprintf(stderr, "fuzz_gemma: set SG_FUZZ_GEMMA_PATH to a tokenizer.json (%s)\n", error.message);
    exit(1);
  }
  return 0;
}

/* check_bos: the tokenizer's template starts with <bos> (Gemma's does; a fuzzed one may not). */
static void tokenize(const sg_gemma_tokenizer *tokenizer, const char *text, int special,
                     int max_length, int check_bos) {
  sg_error error = {0};
  sg_gemma_tokens tokens;
  memset(&tokens, 0, sizeof tokens);
  int32_t vocab = sg_gemma_tokenizer_vocab_size(tokenizer);
  sg_status status = sg_gemma_tokenize(tokenizer, text, special, max_length, &tokens, &error);
  if (status == SG_OK) {
    EXPECT(tokens.count >= 0);
    if (max_length > 0) EXPECT(tokens.count <= max_length || !tokens.truncated);
    for (int i = 0; i < tokens.count; i++) {
      EXPECT(tokens.ids[i] >= 0 && tokens.ids[i] < vocab);
      EXPECT(sg_gemma_tokenizer_token(tokenizer, tokens.ids[i]) != NULL);
    }
    int32_t bos = sg_gemma_tokenizer_bos_id(tokenizer);
    if (check_bos && special && bos >= 0 && tokens.count > 0) EXPECT(tokens.ids[0] == bos);
  } else {
    EXPECT(status == SG_ERR_INVALID_ARGUMENT && error.message[0] != '\0');
  }
  sg_gemma_tokens_clear(&tokens);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  uint8_t mode = data[0];
  if (mode < 0xF0) {
    char *text = g_strndup((const char *)data + 1, size - 1);
    tokenize(loaded_tokenizer, text, mode & 1, (mode >> 1) & 0x3F, 1);
    g_free(text);
    return 0;
  }
  scratch_file scratch;
  scratch_write(&scratch, "tokenizer.json", data + 1, size - 1);
  sg_error error = {0};
  sg_gemma_tokenizer *tokenizer = NULL;
  sg_status status = sg_gemma_tokenizer_load(scratch.path, &tokenizer, &error);
  if (status == SG_OK) {
    tokenize(tokenizer, "<start_of_turn>user a red circle, the blue square\n\xe4\xb8\xad", 1, 0, 0);
    tokenize(tokenizer, "the red circle", 0, 3, 0);
    sg_gemma_tokenizer_free(tokenizer);
  } else {
    EXPECT(tokenizer == NULL && error.status == status && error.message[0] != '\0');
  }
  scratch_remove(&scratch);
  return 0;
}
