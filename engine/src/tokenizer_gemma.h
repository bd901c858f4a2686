/* tokenizer_gemma.h: SentencePiece-style BPE with byte fallback (Gemma) from tokenizer.json. */
#ifndef SG_TOKENIZER_GEMMA_H
#define SG_TOKENIZER_GEMMA_H

#include <stdint.h>

#include "snapgen.h"

typedef struct sg_gemma_tokenizer sg_gemma_tokenizer;

typedef struct {
  int32_t *ids; /* `count` ids (free with sg_gemma_tokens_clear) */
  int count;
  int truncated; /* 1 when max_length cut the prompt's tokens (special tokens are kept) */
} sg_gemma_tokens;

/* Loads a Hugging Face tokenizer.json (PATH may be the file or its folder) whose model is BPE
 * (vocab + merges as "a b" strings or [a, b] pairs, byte_fallback, unk_token, fuse_unk,
 * ignore_merges). Supported pipeline parts, as Gemma-family files use them:
 *   normalizer: null, Replace (String pattern), Prepend, NFC/NFD/NFKC/NFKD, Sequence of these;
 *   pre_tokenizer: null, Split (String pattern, any behavior, invert false), Sequence of these;
 *   post_processor: null, TemplateProcessing (the "single" template), Sequence with ByteLevel;
 *   added_tokens: matched first, leftmost-longest, in the raw text (normalized, lstrip, rstrip
 *   and single_word must be false, as in every Gemma file).
 * Anything else is SG_ERR_FORMAT naming the part. When tokenizer_config.json lies beside the file
 * and sets add_bos_token / add_eos_token, they rebuild the template (<bos> $A <eos>) as
 * transformers' GemmaTokenizerFast does; its bos_token, eos_token and pad_token name those ids. */
sg_status sg_gemma_tokenizer_load(const char *path, sg_gemma_tokenizer **out, sg_error *error);
void sg_gemma_tokenizer_free(sg_gemma_tokenizer *tokenizer);

int32_t sg_gemma_tokenizer_vocab_size(const sg_gemma_tokenizer *tokenizer);
int32_t sg_gemma_tokenizer_bos_id(const sg_gemma_tokenizer *tokenizer); /* -1: none */
int32_t sg_gemma_tokenizer_eos_id(const sg_gemma_tokenizer *tokenizer); /* -1: none */
int32_t sg_gemma_tokenizer_pad_id(const sg_gemma_tokenizer *tokenizer); /* -1: none */
/* The token's text (SentencePiece form: "▁" for a space, "<0x0A>" for a byte), or NULL. */
const char *sg_gemma_tokenizer_token(const sg_gemma_tokenizer *tokenizer, int32_t id);

/* Tokenizes UTF-8 text: added tokens are split out first; each stretch between them is
 * normalized (Gemma: ' ' -> U+2581), pre-split, and merged by rank from its characters; a
 * character missing from the vocabulary becomes its UTF-8 bytes <0xNN> (byte fallback). With
 * add_special_tokens the template's tokens are added (Gemma: <bos> first). max_length > 0 cuts the
 * prompt's tokens so that the total, special tokens included, fits. Text that is not valid UTF-8
 * or longer than 64 KiB is SG_ERR_INVALID_ARGUMENT (never replaced or cut). */
sg_status sg_gemma_tokenize(const sg_gemma_tokenizer *tokenizer, const char *text,
                            int add_special_tokens, int max_length, sg_gemma_tokens *out,
                            sg_error *error);
void sg_gemma_tokens_clear(sg_gemma_tokens *tokens);

#endif
