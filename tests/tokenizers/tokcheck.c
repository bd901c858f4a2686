/* tokcheck.c: compares the engine's CLIP and Gemma tokenizers with expected ids from a case file.
 *
 * Usage: tokcheck clip VOCAB_DIR CASES        (ids without BOS/EOS; also checks the 77-token
 * layout) tokcheck gemma TOKENIZER_JSON CASES  (ids with the template's special tokens) tokcheck
 * clip-print VOCAB_DIR TEXT... / tokcheck gemma-print TOKENIZER_JSON TEXT... A case file has one
 * case per line: the input's bytes in hex, a tab, then the expected ids separated by spaces, or
 * ERROR where the input must be rejected (invalid UTF-8). Lines starting with '#' are comments.
 * Exit status 0 when every case matches, 1 on a mismatch, 2 on bad usage. */
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_clip.h"
#include "tokenizer_gemma.h"

#define SHOWN_DIFFERENCES 5

typedef struct {
  char *text;       /* the input bytes, NUL-terminated */
  int expect_error; /* the input must be rejected */
  GArray *ids;      /* int32_t expected ids */
  int line;
} test_case;

/* Writes text with every byte outside printable ASCII escaped, for messages. */
static void print_escaped(const char *text) {
  int shown = 0;
  for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
    if (++shown > 160) {
      printf("...");
      break;
    }
    if (*p >= 0x20 && *p < 0x7F && *p != '\\') {
      putchar(*p);
    } else {
      printf("\\x%02X", *p);
    }
  }
}

static void print_ids(const int32_t *ids, int count) {
  printf("[");
  for (int i = 0; i < count; i++) printf(i ? " %d" : "%d", ids[i]);
  printf("]");
}

static int parse_case(char *line, int number, test_case *out) {
  char *tab = strchr(line, '\t');
  if (!tab) return 0;
  *tab = '\0';
  size_t hex_length = strlen(line);
  if (hex_length % 2) return 0;
  out->text = g_malloc(hex_length / 2 + 1);
  for (size_t i = 0; i < hex_length / 2; i++) {
    int high = g_ascii_xdigit_value(line[2 * i]), low = g_ascii_xdigit_value(line[2 * i + 1]);
    if (high < 0 || low < 0 || (high == 0 && low == 0)) {
      g_free(out->text);
      return 0;
    }
    out->text[i] = (char)(high * 16 + low);
  }
  out->text[hex_length / 2] = '\0';
  out->line = number;
  out->ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
  char *expected = g_strstrip(tab + 1);
  out->expect_error = !strcmp(expected, "ERROR");
  if (out->expect_error) return 1;
  char **words = g_strsplit(expected, " ", -1);
  for (int i = 0; words[i]; i++) {
    if (!*words[i]) continue;
    int32_t id = (int32_t)strtol(words[i], NULL, 10);
    g_array_append_val(out->ids, id);
  }
  g_strfreev(words);
  return 1;
}

static GArray *read_cases(const char *path) {
  char *contents = NULL;
  GError *gerror = NULL;
  if (!g_file_get_contents(path, &contents, NULL, &gerror)) {
    fprintf(stderr, "tokcheck: %s\n", gerror->message);
    exit(2);
  }
  GArray *cases = g_array_new(FALSE, FALSE, sizeof(test_case));
  char **lines = g_strsplit(contents, "\n", -1);
  for (int i = 0; lines[i]; i++) {
    if (!lines[i][0] || lines[i][0] == '#') continue;
    test_case one;
    if (!parse_case(lines[i], i + 1, &one)) {
      fprintf(stderr, "tokcheck: %s:%d: not \"HEX<tab>IDS\"\n", path, i + 1);
      exit(2);
    }
    g_array_append_val(cases, one);
  }
  g_strfreev(lines);
  g_free(contents);
  return cases;
}

/* Tokenizes one case; returns SG_OK or the error, with the ids in *ids. */
typedef sg_status (*encode_fn)(const void *tokenizer, const char *text, GArray *ids,
                               sg_error *error);

static sg_status encode_clip(const void *tokenizer, const char *text, GArray *ids,
                             sg_error *error) {
  int32_t *tokens;
  int count;
  sg_status status = sg_clip_encode(tokenizer, text, &tokens, &count, error);
  if (status) return status;
  g_array_append_vals(ids, tokens, (guint)count);
  g_free(tokens);
  return SG_OK;
}

static sg_status encode_gemma(const void *tokenizer, const char *text, GArray *ids,
                              sg_error *error) {
  sg_gemma_tokens tokens;
  sg_status status = sg_gemma_tokenize(tokenizer, text, 1, 0, &tokens, error);
  if (status) return status;
  g_array_append_vals(ids, tokens.ids, (guint)tokens.count);
  sg_gemma_tokens_clear(&tokens);
  return SG_OK;
}

/* The padded CLIP layout must be BOS + ids cut to max_length - 2 + EOS + pad. */
static int check_clip_layout(const sg_clip_tokenizer *tokenizer, const test_case *one) {
  sg_clip_tokens tokens;
  sg_error error = {0};
  if (sg_clip_tokenize(tokenizer, one->text, 1, &tokens, &error)) return 0;
  int max_length = sg_clip_tokenizer_max_length(tokenizer);
  int kept = (int)one->ids->len < max_length - 2 ? (int)one->ids->len : max_length - 2;
  int ok = tokens.count == max_length && tokens.length == kept + 2 &&
           tokens.eos_index == kept + 1 && tokens.truncated == ((int)one->ids->len > kept) &&
           tokens.ids[0] == sg_clip_tokenizer_bos_id(tokenizer) &&
           tokens.ids[kept + 1] == sg_clip_tokenizer_eos_id(tokenizer) &&
           (kept == 0 || !memcmp(tokens.ids + 1, one->ids->data, (size_t)kept * sizeof(int32_t)));
  for (int i = kept + 2; i < tokens.count && ok; i++) {
    ok = tokens.ids[i] == sg_clip_tokenizer_pad_id(tokenizer);
  }
  sg_clip_tokens_clear(&tokens);
  return ok;
}

static int run_cases(const char *name, const void *tokenizer, encode_fn encode,
                     const sg_clip_tokenizer *clip_layout, const char *cases_path) {
  GArray *cases = read_cases(cases_path);
  int failed = 0, errors_expected = 0;
  gint64 started = g_get_monotonic_time();
  for (guint c = 0; c < cases->len; c++) {
    test_case *one = &g_array_index(cases, test_case, c);
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    sg_error error = {0};
    sg_status status = encode(tokenizer, one->text, ids, &error);
    int ok;
    if (one->expect_error) {
      errors_expected++;
      ok = status == SG_ERR_INVALID_ARGUMENT;
    } else {
      ok = status == SG_OK && ids->len == one->ids->len &&
           (ids->len == 0 || !memcmp(ids->data, one->ids->data, ids->len * sizeof(int32_t)));
      if (ok && clip_layout) ok = check_clip_layout(clip_layout, one);
    }
    if (!ok && ++failed <= SHOWN_DIFFERENCES) {
      printf("MISMATCH %s case at line %d: \"", name, one->line);
      print_escaped(one->text);
      printf("\"\n  expected: ");
      if (one->expect_error) {
        printf("an error");
      } else {
        print_ids((const int32_t *)(void *)one->ids->data, (int)one->ids->len);
      }
      printf("\n  got:      ");
      if (status) {
        printf("error: %s", error.message);
      } else {
        print_ids((const int32_t *)(void *)ids->data, (int)ids->len);
        if (!one->expect_error && clip_layout) printf(" (or the padded 77-token layout differs)");
      }
      printf("\n");
    }
    g_array_free(ids, TRUE);
  }
  double seconds = (double)(g_get_monotonic_time() - started) / 1e6;
  int total = (int)cases->len;
  if (failed) {
    printf("FAIL %s: %d of %d cases differ (%.2f s)\n", name, failed, total, seconds);
  } else {
    printf("PASS %s: %d cases agree, %d of them invalid UTF-8 rejected (%.2f s)\n", name, total,
           errors_expected, seconds);
  }
  for (guint c = 0; c < cases->len; c++) {
    g_free(g_array_index(cases, test_case, c).text);
    g_array_free(g_array_index(cases, test_case, c).ids, TRUE);
  }
  g_array_free(cases, TRUE);
  return failed ? 1 : 0;
}

static int print_tokens(const void *tokenizer, encode_fn encode,
                        const char *(*token_text)(const void *, int32_t), char **texts, int count) {
  for (int i = 0; i < count; i++) {
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    sg_error error = {0};
    if (encode(tokenizer, texts[i], ids, &error)) {
      printf("error: %s\n", error.message);
    } else {
      for (guint k = 0; k < ids->len; k++) {
        int32_t id = g_array_index(ids, int32_t, k);
        const char *text = token_text(tokenizer, id);
        printf("%d:", id);
        print_escaped(text ? text : "?");
        printf(k + 1 < ids->len ? " " : "\n");
      }
      if (!ids->len) printf("(no tokens)\n");
    }
    g_array_free(ids, TRUE);
  }
  return 0;
}

/* The process's peak resident memory as Linux reports it, or "unknown". */
static const char *peak_memory(char *text, size_t size) {
  char *status = NULL;
  g_strlcpy(text, "unknown", size);
  if (g_file_get_contents("/proc/self/status", &status, NULL, NULL)) {
    const char *line = strstr(status, "VmHWM:");
    long kib = 0;
    if (line && sscanf(line + 6, "%ld", &kib) == 1) {
      snprintf(text, size, "%.0f MiB", (double)kib / 1024.0);
    }
    g_free(status);
  }
  return text;
}

static const char *clip_token(const void *tokenizer, int32_t id) {
  return sg_clip_tokenizer_token(tokenizer, id);
}
static const char *gemma_token(const void *tokenizer, int32_t id) {
  return sg_gemma_tokenizer_token(tokenizer, id);
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr,
            "usage: tokcheck clip|gemma VOCAB CASES   or   tokcheck clip-print|gemma-print "
            "VOCAB TEXT...\n");
    return 2;
  }
  const char *mode = argv[1];
  int is_clip = g_str_has_prefix(mode, "clip");
  int printing = g_str_has_suffix(mode, "-print");
  sg_error error = {0};
  gint64 started = g_get_monotonic_time();
  void *tokenizer = NULL;
  sg_status status =
      is_clip ? sg_clip_tokenizer_load(argv[2], (sg_clip_tokenizer **)&tokenizer, &error)
              : sg_gemma_tokenizer_load(argv[2], (sg_gemma_tokenizer **)&tokenizer, &error);
  if (status) {
    printf("FAIL %s: cannot load %s: %s\n", mode, argv[2], error.message);
    return 1;
  }
  if (!printing) {
    char memory[64];
    printf("loaded %s in %.2f s (peak memory so far: %s)\n", argv[2],
           (double)(g_get_monotonic_time() - started) / 1e6, peak_memory(memory, sizeof memory));
  }
  int result;
  if (printing) {
    result = print_tokens(tokenizer, is_clip ? encode_clip : encode_gemma,
                          is_clip ? clip_token : gemma_token, argv + 3, argc - 3);
  } else {
    result = run_cases(mode, tokenizer, is_clip ? encode_clip : encode_gemma,
                       is_clip ? tokenizer : NULL, argv[3]);
  }
  if (is_clip) {
    sg_clip_tokenizer_free(tokenizer);
  } else {
    sg_gemma_tokenizer_free(tokenizer);
  }
  return result;
}
