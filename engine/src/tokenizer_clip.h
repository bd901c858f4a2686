/* tokenizer_clip.h: CLIP's byte-level BPE tokenizer (Hugging Face vocab.json + merges.txt). */
#ifndef SG_TOKENIZER_CLIP_H
#define SG_TOKENIZER_CLIP_H

#include <stdint.h>

#include "snapgen.h"

typedef struct sg_clip_tokenizer sg_clip_tokenizer;

/* One tokenized prompt laid out for a CLIP text encoder. */
typedef struct {
  int32_t *ids;  /* `count` ids: BOS, tokens, EOS, then padding (free with sg_clip_tokens_clear) */
  int count;     /* max_length when padded, else `length` */
  int length;    /* real tokens, BOS and EOS included: the attention length */
  int eos_index; /* where EOS is (length - 1): the pooled output is taken there */
  int truncated; /* 1 when the prompt had more tokens than fit (they were dropped, EOS kept) */
} sg_clip_tokens;

/* Loads DIR/vocab.json and DIR/merges.txt (a diffusers `tokenizer/` or `tokenizer_2/` folder), and
 * when present DIR/tokenizer_config.json and then DIR/special_tokens_map.json (the latter wins),
 * for bos_token, eos_token, pad_token and model_max_length. Defaults: "<|startoftext|>",
 * "<|endoftext|>", pad "<|endoftext|>" (CLIP-L; OpenCLIP bigG files say "!"), 77. */
sg_status sg_clip_tokenizer_load(const char *dir, sg_clip_tokenizer **out, sg_error *error);
void sg_clip_tokenizer_free(sg_clip_tokenizer *tokenizer);

int sg_clip_tokenizer_max_length(const sg_clip_tokenizer *tokenizer);
int32_t sg_clip_tokenizer_bos_id(const sg_clip_tokenizer *tokenizer);
int32_t sg_clip_tokenizer_eos_id(const sg_clip_tokenizer *tokenizer);
int32_t sg_clip_tokenizer_pad_id(const sg_clip_tokenizer *tokenizer);
int32_t sg_clip_tokenizer_vocab_size(const sg_clip_tokenizer *tokenizer);
/* The token's text in the vocabulary (byte-level form, "</w>" marks a word end), or NULL. */
const char *sg_clip_tokenizer_token(const sg_clip_tokenizer *tokenizer, int32_t id);

/* The prompt's token ids without BOS/EOS, truncation or padding (*ids: g_free). As
 * transformers' CLIPTokenizer does, "<|startoftext|>" and "<|endoftext|>" written in the prompt
 * are split out first and become those tokens; each stretch between them is cleaned the way
 * OpenAI's CLIP does, except for ftfy: Unicode NFC; HTML character references decoded twice
 * (only &amp; &lt; &gt; &quot; &nbsp;, also without the semicolon, &apos; with it, and numeric
 * &#N; &#xH; for printable characters: other references are left as written, where Python's
 * html.unescape knows 2,231 names); runs of white space (\s: the Unicode White_Space
 * characters) become one space, ends stripped; lower case (full Unicode mapping with final sigma,
 * not locale-dependent). It is then split with CLIP's pattern
 * <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+
 * (GLib's Unicode categories for \p{L} and \p{N}), and each piece's UTF-8 bytes, as GPT-2's byte
 * characters with "</w>" on the last one, are merged by rank. Not done: ftfy's repairs (mojibake,
 * curly quotes, ligatures, full-width forms, control characters). Text that is not valid UTF-8 or
 * longer than 64 KiB: SG_ERR_INVALID_ARGUMENT. */
sg_status sg_clip_encode(const sg_clip_tokenizer *tokenizer, const char *text, int32_t **ids,
                         int *count, sg_error *error);

/* The encoder's input: BOS, the tokens cut to max_length - 2, EOS; then, when pad_to_max_length,
 * the pad id up to max_length (the way diffusers pipelines call CLIPTokenizer). */
sg_status sg_clip_tokenize(const sg_clip_tokenizer *tokenizer, const char *text,
                           int pad_to_max_length, sg_clip_tokens *out, sg_error *error);
void sg_clip_tokens_clear(sg_clip_tokens *tokens);

#endif
