/* tokenizer_clip.c: CLIP's byte-level BPE tokenizer (Hugging Face vocab.json + merges.txt). */
#include "tokenizer_clip.h"

#include <glib.h>
#include <json-glib/json-glib.h>
#include <string.h>

#include "bpe.h"
#include "error.h"
#include "tokenizer_common.h"

#define DEFAULT_MAX_LENGTH 77
#define LARGEST_MAX_LENGTH 4096

struct sg_clip_tokenizer {
  sg_vocab vocab;
  sg_bpe_merges *merges;
  int32_t byte_ids[256];     /* id of the byte's character (GPT-2 bytes_to_unicode) */
  int32_t byte_end_ids[256]; /* id of the byte's character + "</w>" */
  int32_t bos_id, eos_id, pad_id;
  int max_length;
};

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes for
 * U+0100 onwards in byte order, so every byte has a visible character. */
static void byte_characters(gunichar characters[256]) {
  int next = 0;
  for (int b = 0; b < 256; b++) {
    int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    characters[b] = printable ? (gunichar)b : (gunichar)(256 + next++);
  }
}

/* Reads one optional JSON config and takes the special tokens and length it names. */
static sg_status read_config(const char *path, char **bos, char **eos, char **pad, int *max_length,
                             sg_error *error) {
  if (!g_file_test(path, G_FILE_TEST_EXISTS)) return SG_OK;
  JsonParser *parser;
  JsonObject *root;
  sg_status status = sg_json_read_object(path, &parser, &root, error);
  if (status) return status;
  const char *fields[3] = {"bos_token", "eos_token", "pad_token"};
  char **targets[3] = {bos, eos, pad};
  for (int i = 0; i < 3; i++) {
    const char *text = sg_json_token_text(root, fields[i]);
    if (text) {
      g_free(*targets[i]);
      *targets[i] = g_strdup(text);
    }
  }
  if (json_object_has_member(root, "model_max_length")) {
    JsonNode *node = json_object_get_member(root, "model_max_length");
    /* Files without a real limit store a huge float (1e30): keep the default then. */
    if (JSON_NODE_HOLDS_VALUE(node) && json_node_get_value_type(node) == G_TYPE_INT64) {
      int64_t value = json_node_get_int(node);
      if (value < 3 || value > LARGEST_MAX_LENGTH) {
        g_object_unref(parser);
        return sg_fail(error, SG_ERR_FORMAT, "%s: model_max_length %lld is outside 3..%d", path,
                       (long long)value, LARGEST_MAX_LENGTH);
      }
      *max_length = (int)value;
    }
  }
  g_object_unref(parser);
  return SG_OK;
}

static sg_status load_merges(sg_clip_tokenizer *tokenizer, const char *path, sg_error *error) {
  char *text = NULL;
  gsize length = 0;
  GError *gerror = NULL;
  if (!g_file_get_contents(path, &text, &length, &gerror)) {
    sg_fail(error, SG_ERR_IO, "%s: cannot read: %s", path, gerror->message);
    g_error_free(gerror);
    return SG_ERR_IO;
  }
  if (!g_utf8_validate(text, (gssize)length, NULL)) {
    g_free(text);
    return sg_fail(error, SG_ERR_FORMAT, "%s: not valid UTF-8", path);
  }
  char **lines = g_strsplit(text, "\n", -1);
  g_free(text);
  sg_status status = SG_OK;
  int rank = 0;
  GString *joined = g_string_new(NULL);
  for (int i = 0; lines[i] && !status; i++) {
    char *line = lines[i];
    size_t line_length = strlen(line);
    if (line_length > 0 && line[line_length - 1] == '\r') line[--line_length] = '\0';
    if (line_length == 0 || (i == 0 && g_str_has_prefix(line, "#version"))) continue;
    char *space = strchr(line, ' ');
    if (!space || space == line || !space[1] || strchr(space + 1, ' ')) {
      status = sg_fail(error, SG_ERR_FORMAT, "%s: line %d is not two tokens split by one space",
                       path, i + 1);
      break;
    }
    *space = '\0';
    const char *left = line, *right = space + 1;
    g_string_assign(joined, left);
    g_string_append(joined, right);
    int32_t left_id = sg_vocab_find(&tokenizer->vocab, left);
    int32_t right_id = sg_vocab_find(&tokenizer->vocab, right);
    int32_t merged_id = sg_vocab_find(&tokenizer->vocab, joined->str);
    if (left_id < 0 || right_id < 0 || merged_id < 0) {
      status =
          sg_fail(error, SG_ERR_FORMAT, "%s: line %d: \"%s\" is not in vocab.json", path, i + 1,
                  left_id < 0    ? left
                  : right_id < 0 ? right
                                 : joined->str);
      break;
    }
    sg_bpe_merges_add(tokenizer->merges, left_id, right_id, rank++, merged_id);
  }
  g_string_free(joined, TRUE);
  g_strfreev(lines);
  if (!status && rank == 0) status = sg_fail(error, SG_ERR_FORMAT, "%s: no merges", path);
  return status;
}

static sg_status find_special(const sg_clip_tokenizer *tokenizer, const char *what,
                              const char *token, const char *dir, int32_t *id, sg_error *error) {
  *id = sg_vocab_find(&tokenizer->vocab, token);
  if (*id < 0) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: the %s \"%s\" is not in vocab.json", dir, what,
                   token);
  }
  return SG_OK;
}

sg_status sg_clip_tokenizer_load(const char *dir, sg_clip_tokenizer **out, sg_error *error) {
  *out = NULL;
  sg_clip_tokenizer *tokenizer = g_new0(sg_clip_tokenizer, 1);
  sg_vocab_init(&tokenizer->vocab);
  tokenizer->merges = sg_bpe_merges_new(50000);
  tokenizer->max_length = DEFAULT_MAX_LENGTH;
  char *bos = g_strdup("<|startoftext|>"), *eos = g_strdup("<|endoftext|>");
  char *pad = g_strdup("<|endoftext|>");
  char *vocab_path = g_build_filename(dir, "vocab.json", NULL);
  char *merges_path = g_build_filename(dir, "merges.txt", NULL);
  char *config_path = g_build_filename(dir, "tokenizer_config.json", NULL);
  char *map_path = g_build_filename(dir, "special_tokens_map.json", NULL);

  JsonParser *parser = NULL;
  JsonObject *root = NULL;
  sg_status status = sg_json_read_object(vocab_path, &parser, &root, error);
  if (!status) status = sg_vocab_load_object(&tokenizer->vocab, root, vocab_path, "vocab", error);
  if (parser) g_object_unref(parser);
  if (!status) status = load_merges(tokenizer, merges_path, error);
  if (!status) status = read_config(config_path, &bos, &eos, &pad, &tokenizer->max_length, error);
  if (!status) status = read_config(map_path, &bos, &eos, &pad, &tokenizer->max_length, error);
  if (!status) status = find_special(tokenizer, "bos_token", bos, dir, &tokenizer->bos_id, error);
  if (!status) status = find_special(tokenizer, "eos_token", eos, dir, &tokenizer->eos_id, error);
  if (!status) status = find_special(tokenizer, "pad_token", pad, dir, &tokenizer->pad_id, error);

  gunichar characters[256];
  byte_characters(characters);
  for (int b = 0; b < 256 && !status; b++) {
    char token[16];
    int n = g_unichar_to_utf8(characters[b], token);
    token[n] = '\0';
    tokenizer->byte_ids[b] = sg_vocab_find(&tokenizer->vocab, token);
    strcpy(token + n, "</w>");
    tokenizer->byte_end_ids[b] = sg_vocab_find(&tokenizer->vocab, token);
    if (tokenizer->byte_ids[b] < 0 || tokenizer->byte_end_ids[b] < 0) {
      status = sg_fail(error, SG_ERR_FORMAT,
                       "%s: the byte-level token for byte 0x%02X (\"%s\", with and without "
                       "\"</w>\") is missing: this is not a CLIP vocabulary",
                       vocab_path, (unsigned)b, token);
    }
  }
  g_free(bos);
  g_free(eos);
  g_free(pad);
  g_free(vocab_path);
  g_free(merges_path);
  g_free(config_path);
  g_free(map_path);
  if (status) {
    sg_clip_tokenizer_free(tokenizer);
    return status;
  }
  *out = tokenizer;
  return SG_OK;
}

void sg_clip_tokenizer_free(sg_clip_tokenizer *tokenizer) {
  if (!tokenizer) return;
  sg_vocab_clear(&tokenizer->vocab);
  sg_bpe_merges_free(tokenizer->merges);
  g_free(tokenizer);
}

int sg_clip_tokenizer_max_length(const sg_clip_tokenizer *tokenizer) {
  return tokenizer->max_length;
}
int32_t sg_clip_tokenizer_bos_id(const sg_clip_tokenizer *tokenizer) {
  return tokenizer->bos_id;
}
int32_t sg_clip_tokenizer_eos_id(const sg_clip_tokenizer *tokenizer) {
  return tokenizer->eos_id;
}
int32_t sg_clip_tokenizer_pad_id(const sg_clip_tokenizer *tokenizer) {
  return tokenizer->pad_id;
}
int32_t sg_clip_tokenizer_vocab_size(const sg_clip_tokenizer *tokenizer) {
  return tokenizer->vocab.size;
}

const char *sg_clip_tokenizer_token(const sg_clip_tokenizer *tokenizer, int32_t id) {
  if (id < 0 || id >= tokenizer->vocab.size) return NULL;
  return tokenizer->vocab.tokens[id];
}

/* ---- text clean-up ---- */

/* A numeric reference's value if it is one Python's html.unescape returns as that character
 * (printable, tab, newline, form feed; no surrogate or noncharacter), else 0. */
static gunichar allowed_reference(guint64 value) {
  int allowed = value == '\t' || value == '\n' || value == '\f' ||
                (value >= 0x20 && value <= 0x7E) || (value >= 0xA0 && value <= 0x10FFFF);
  int surrogate = value >= 0xD800 && value <= 0xDFFF;
  int noncharacter = (value >= 0xFDD0 && value <= 0xFDEF) || (value & 0xFFFE) == 0xFFFE;
  return allowed && !surrogate && !noncharacter ? (gunichar)value : 0;
}

/* Decodes the character reference at text[0] == '&' like html.unescape does for the cases listed
 * in tokenizer_clip.h: sets *value and returns its length, or returns 0 to leave it as written. */
static size_t character_reference(const char *text, gunichar *value) {
  static const struct {
    const char *name;
    gunichar value;
    int needs_semicolon; /* HTML's legacy names may omit it; &apos; is not one of them */
  } names[] = {{"amp", '&', 0},  {"lt", '<', 0},    {"gt", '>', 0},
               {"quot", '"', 0}, {"nbsp", 0xA0, 0}, {"apos", '\'', 1}};
  const char *p = text + 1;
  if (*p == '#') {
    int hex = p[1] == 'x' || p[1] == 'X';
    const char *digits = p + (hex ? 2 : 1);
    const char *end = digits;
    guint64 number = 0;
    while (hex ? g_ascii_isxdigit(*end) : g_ascii_isdigit(*end)) {
      if (end - digits < 9) number = number * (hex ? 16 : 10) + (guint64)g_ascii_xdigit_value(*end);
      end++;
    }
    if (end == digits || end - digits > 8 || !(*value = allowed_reference(number))) return 0;
    return (size_t)(end - text) + (*end == ';');
  }
  for (size_t i = 0; i < G_N_ELEMENTS(names); i++) {
    size_t length = strlen(names[i].name);
    if (strncmp(p, names[i].name, length) != 0) continue;
    int semicolon = p[length] == ';';
    if (names[i].needs_semicolon && !semicolon) return 0;
    *value = names[i].value;
    return 1 + length + (size_t)semicolon;
  }
  return 0;
}

/* Decodes the character references listed in tokenizer_clip.h; everything else is copied. */
static char *html_unescape(const char *text) {
  GString *out = g_string_sized_new(strlen(text));
  const char *p = text;
  while (*p) {
    const char *amp = strchr(p, '&');
    if (!amp) {
      g_string_append(out, p);
      break;
    }
    g_string_append_len(out, p, amp - p);
    gunichar value = 0;
    size_t length = character_reference(amp, &value);
    if (length) {
      g_string_append_unichar(out, value);
      p = amp + length;
    } else {
      g_string_append_c(out, '&');
      p = amp + 1;
    }
  }
  return g_string_free(out, FALSE);
}

/* The simple lower case of c. g_unichar_tolower maps only the Lu and Lt categories; the other
 * characters with a lower-case mapping are the Roman numerals and circled capital letters. */
static gunichar lower_char(gunichar c) {
  if (c >= 0x2160 && c <= 0x216F) return c + 0x10;
  if (c >= 0x24B6 && c <= 0x24CF) return c + 26;
  return g_unichar_tolower(c);
}

/* Whether c has the Unicode property Cased (letter case categories, plus the Roman numerals and
 * circled letters; the few modifier letters that are Other_Lowercase are not counted). */
static int is_cased(gunichar c) {
  return g_unichar_isupper(c) || g_unichar_islower(c) || g_unichar_istitle(c) ||
         (c >= 0x2160 && c <= 0x217F) || (c >= 0x24B6 && c <= 0x24E9);
}

/* Whether c is Case_Ignorable (marks, format characters, modifiers, mid-word punctuation). */
static int is_case_ignorable(gunichar c) {
  switch (g_unichar_type(c)) {
    case G_UNICODE_NON_SPACING_MARK:
    case G_UNICODE_ENCLOSING_MARK:
    case G_UNICODE_FORMAT:
    case G_UNICODE_MODIFIER_LETTER:
    case G_UNICODE_MODIFIER_SYMBOL:
      return 1;
    default:
      break;
  }
  static const gunichar mid_word[] = {'\'',   '.',    ':',    0xB7,   0x387,  0x5F4,
                                      0x2018, 0x2019, 0x2024, 0x2027, 0xFE13, 0xFE52,
                                      0xFE55, 0xFF07, 0xFF0E, 0xFF1A};
  for (size_t i = 0; i < G_N_ELEMENTS(mid_word); i++) {
    if (c == mid_word[i]) return 1;
  }
  return 0;
}

/* Σ at `at` is final when a cased letter comes before it and none after it (skipping
 * case-ignorable characters), as in Unicode's Final_Sigma condition. */
static int sigma_is_final(const char *text, const char *at) {
  int cased_before = 0;
  for (const char *p = at; p > text;) {
    p = g_utf8_prev_char(p);
    gunichar c = g_utf8_get_char(p);
    if (is_case_ignorable(c)) continue;
    cased_before = is_cased(c);
    break;
  }
  if (!cased_before) return 0;
  for (const char *p = g_utf8_next_char(at); *p; p = g_utf8_next_char(p)) {
    gunichar c = g_utf8_get_char(p);
    if (is_case_ignorable(c)) continue;
    return !is_cased(c);
  }
  return 1;
}

/* Full Unicode lower case like Python's str.lower(), independent of the locale (GLib's
 * g_utf8_strdown follows a Turkish or Lithuanian locale). */
static char *lower_case(const char *text) {
  GString *out = g_string_sized_new(strlen(text));
  for (const char *p = text; *p; p = g_utf8_next_char(p)) {
    gunichar c = g_utf8_get_char(p);
    if (c == 0x130) { /* İ -> i + combining dot above (SpecialCasing.txt) */
      g_string_append(out, "i\xCC\x87");
    } else if (c == 0x3A3) {
      g_string_append_unichar(out, sigma_is_final(text, p) ? 0x3C2 : 0x3C3);
    } else {
      g_string_append_unichar(out, lower_char(c));
    }
  }
  return g_string_free(out, FALSE);
}

/* \s: the Unicode White_Space characters. */
static int is_space(gunichar c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

/* \p{L} */
static int is_letter(gunichar c) {
  switch (g_unichar_type(c)) {
    case G_UNICODE_UPPERCASE_LETTER:
    case G_UNICODE_LOWERCASE_LETTER:
    case G_UNICODE_TITLECASE_LETTER:
    case G_UNICODE_MODIFIER_LETTER:
    case G_UNICODE_OTHER_LETTER:
      return 1;
    default:
      return 0;
  }
}

/* \p{N} */
static int is_number(gunichar c) {
  GUnicodeType type = g_unichar_type(c);
  return type == G_UNICODE_DECIMAL_NUMBER || type == G_UNICODE_LETTER_NUMBER ||
         type == G_UNICODE_OTHER_NUMBER;
}

/* Runs of white space become one space; leading and trailing ones go. */
static char *collapse_spaces(const char *text) {
  GString *out = g_string_sized_new(strlen(text));
  int pending = 0;
  for (const char *p = text; *p; p = g_utf8_next_char(p)) {
    gunichar c = g_utf8_get_char(p);
    if (is_space(c)) {
      pending = out->len > 0;
      continue;
    }
    if (pending) g_string_append_c(out, ' ');
    pending = 0;
    g_string_append_unichar(out, c);
  }
  return g_string_free(out, FALSE);
}

/* NFC, HTML references (twice), white space collapsed and stripped, lower case. */
static char *clean_text(const char *text) {
  char *normal = g_utf8_normalize(text, -1, G_NORMALIZE_NFC);
  char *once = html_unescape(normal);
  char *twice = html_unescape(once);
  char *collapsed = collapse_spaces(twice);
  char *lower = lower_case(collapsed);
  g_free(normal);
  g_free(once);
  g_free(twice);
  g_free(collapsed);
  return lower;
}

/* The length in bytes of the piece of CLIP's split pattern that starts at text (0 where no
 * alternative matches: white space). The alternatives are tried in the pattern's order and each
 * is a plain run, so this is what a regex engine finds, in linear time (GRegex re-checks the rest
 * of the string at every match, which made long prompts quadratic). */
static size_t piece_length(const char *text) {
  static const char *const literals[] = {
      "<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
  for (size_t i = 0; i < G_N_ELEMENTS(literals); i++) {
    size_t length = strlen(literals[i]);
    if (!strncmp(text, literals[i], length)) return length;
  }
  gunichar c = g_utf8_get_char(text);
  if (is_space(c)) return 0;
  if (is_number(c)) return (size_t)(g_utf8_next_char(text) - text);
  int letters = is_letter(c);
  const char *p = text;
  while (*p) {
    gunichar next = g_utf8_get_char(p);
    int fits = letters ? is_letter(next) : !is_space(next) && !is_letter(next) && !is_number(next);
    if (!fits) break;
    p = g_utf8_next_char(p);
  }
  return (size_t)(p - text);
}

/* ---- encoding ---- */

static void encode_piece(const sg_clip_tokenizer *tokenizer, const char *piece, size_t length,
                         GArray *ids) {
  if ((length == 15 && !strncmp(piece, "<|startoftext|>", 15)) ||
      (length == 13 && !strncmp(piece, "<|endoftext|>", 13))) {
    int32_t id = sg_vocab_find_bytes(&tokenizer->vocab, piece, length);
    if (id >= 0) {
      g_array_append_val(ids, id);
      return;
    }
  }
  int32_t small[64];
  int32_t *symbols = length <= G_N_ELEMENTS(small) ? small : g_new(int32_t, length);
  for (size_t i = 0; i < length; i++) {
    unsigned char byte = (unsigned char)piece[i];
    symbols[i] = i + 1 < length ? tokenizer->byte_ids[byte] : tokenizer->byte_end_ids[byte];
  }
  int count = (int)length;
  sg_bpe_merge_word(tokenizer->merges, symbols, &count);
  g_array_append_vals(ids, symbols, (guint)count);
  if (symbols != small) g_free(symbols);
}

/* Cleans and encodes one stretch of raw text that holds no special token. */
static void encode_stretch(const sg_clip_tokenizer *tokenizer, const char *text, size_t length,
                           GArray *ids) {
  char *raw = g_strndup(text, length);
  char *clean = clean_text(raw);
  for (const char *p = clean; *p;) {
    size_t piece = piece_length(p);
    if (piece == 0) {
      p = g_utf8_next_char(p);
      continue;
    }
    encode_piece(tokenizer, p, piece, ids);
    p += piece;
  }
  g_free(clean);
  g_free(raw);
}

sg_status sg_clip_encode(const sg_clip_tokenizer *tokenizer, const char *text, int32_t **ids,
                         int *count, sg_error *error) {
  *ids = NULL;
  *count = 0;
  size_t length;
  sg_status status = sg_utf8_check(text, "prompt", &length, error);
  if (status) return status;
  GArray *tokens = g_array_new(FALSE, FALSE, sizeof(int32_t));
  /* Like transformers' CLIPTokenizer, the special tokens written in the prompt are split out
   * before the clean-up; the stretches between them are cleaned and encoded one by one. */
  static const char *const specials[2] = {"<|startoftext|>", "<|endoftext|>"};
  const char *stretch = text ? text : "";
  for (;;) {
    const char *first = NULL;
    int which = 0;
    for (int i = 0; i < 2; i++) {
      const char *hit = strstr(stretch, specials[i]);
      if (hit && (!first || hit < first)) {
        first = hit;
        which = i;
      }
    }
    if (!first) break;
    encode_stretch(tokenizer, stretch, (size_t)(first - stretch), tokens);
    int32_t id = sg_vocab_find(&tokenizer->vocab, specials[which]);
    if (id >= 0) g_array_append_val(tokens, id);
    stretch = first + strlen(specials[which]);
  }
  encode_stretch(tokenizer, stretch, strlen(stretch), tokens);
  *count = (int)tokens->len;
  *ids = (int32_t *)(void *)g_array_free(tokens, FALSE);
  return SG_OK;
}

sg_status sg_clip_tokenize(const sg_clip_tokenizer *tokenizer, const char *text,
                           int pad_to_max_length, sg_clip_tokens *out, sg_error *error) {
  memset(out, 0, sizeof *out);
  int32_t *tokens;
  int count;
  sg_status status = sg_clip_encode(tokenizer, text, &tokens, &count, error);
  if (status) return status;
  int room = tokenizer->max_length - 2;
  int kept = count < room ? count : room;
  out->truncated = count > room;
  out->length = kept + 2;
  out->eos_index = kept + 1;
  out->count = pad_to_max_length ? tokenizer->max_length : out->length;
  out->ids = g_new(int32_t, out->count);
  out->ids[0] = tokenizer->bos_id;
  if (kept > 0) memcpy(out->ids + 1, tokens, (size_t)kept * sizeof(int32_t));
  out->ids[kept + 1] = tokenizer->eos_id;
  for (int i = out->length; i < out->count; i++) out->ids[i] = tokenizer->pad_id;
  g_free(tokens);
  return SG_OK;
}

void sg_clip_tokens_clear(sg_clip_tokens *tokens) {
  g_free(tokens->ids);
  memset(tokens, 0, sizeof *tokens);
}
