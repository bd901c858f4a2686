/* test_tokenizers.c: unit tests for BPE merging and the CLIP and Gemma tokenizers on tiny files. */
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpe.h"
#include "test.h"
#include "tokenizer_clip.h"
#include "tokenizer_common.h"
#include "tokenizer_gemma.h"

/* ---- BPE merging ---- */

/* The definition: merge the leftmost of the lowest-rank adjacent pairs, one at a time. */
static void merge_naive(const sg_bpe_merges *merges, int32_t *ids, int *count) {
  for (;;) {
    int best = -1;
    int32_t best_rank = 0, best_merged = 0;
    for (int i = 0; i + 1 < *count; i++) {
      int32_t rank, merged;
      if (sg_bpe_merges_find(merges, ids[i], ids[i + 1], &rank, &merged) &&
          (best < 0 || rank < best_rank)) {
        best = i;
        best_rank = rank;
        best_merged = merged;
      }
    }
    if (best < 0) return;
    ids[best] = best_merged;
    memmove(ids + best + 1, ids + best + 2, (size_t)(*count - best - 2) * sizeof(int32_t));
    (*count)--;
  }
}

static void test_bpe_basics(sg_test *t) {
  sg_bpe_merges *merges = sg_bpe_merges_new(4);
  sg_bpe_merges_add(merges, 1, 1, 0, 10); /* a a -> A */
  sg_bpe_merges_add(merges, 10, 1, 1, 11);
  int32_t three[3] = {1, 1, 1};
  int count = 3;
  sg_bpe_merge_word(merges, three, &count);
  CHECK_INT(t, count, 1); /* a a a -> A a -> (A a) */
  CHECK_INT(t, three[0], 11);
  int32_t four[4] = {1, 1, 1, 1};
  count = 4;
  sg_bpe_merge_word(merges, four, &count);
  CHECK_INT(t, count, 2); /* leftmost first: (a a)(a a), not a (a a) a */
  CHECK_INT(t, four[0], 10);
  CHECK_INT(t, four[1], 10);
  /* A later line for the same pair replaces the earlier rank. */
  sg_bpe_merges_add(merges, 1, 1, 7, 12);
  int32_t rank, merged;
  CHECK(t, sg_bpe_merges_find(merges, 1, 1, &rank, &merged) && rank == 7 && merged == 12);
  CHECK_INT(t, sg_bpe_merges_count(merges), 2);
  CHECK(t, !sg_bpe_merges_find(merges, 2, 1, &rank, &merged));
  sg_bpe_merges_free(merges);
}

/* The heap-based merge agrees with the one-at-a-time definition on random tables and words. */
static void test_bpe_matches_definition(sg_test *t) {
  GRand *rand = g_rand_new_with_seed(12345);
  for (int trial = 0; trial < 200; trial++) {
    sg_bpe_merges *merges = sg_bpe_merges_new(16);
    int symbols = 3 + g_rand_int_range(rand, 0, 5);
    int next_id = symbols, rules = g_rand_int_range(rand, 1, 40);
    for (int r = 0; r < rules; r++) {
      int32_t left = g_rand_int_range(rand, 0, next_id), right = g_rand_int_range(rand, 0, next_id);
      sg_bpe_merges_add(merges, left, right, g_rand_int_range(rand, 0, 1000), next_id++);
    }
    int length = g_rand_int_range(rand, 0, 60);
    int32_t word[60], expected[60];
    for (int i = 0; i < length; i++) word[i] = expected[i] = g_rand_int_range(rand, 0, symbols);
    int count = length, expected_count = length;
    sg_bpe_merge_word(merges, word, &count);
    merge_naive(merges, expected, &expected_count);
    int same = count == expected_count &&
               (count == 0 || !memcmp(word, expected, (size_t)count * sizeof(int32_t)));
    CHECK_MSG(t, same, "trial %d: heap merge differs from the definition", trial);
    sg_bpe_merges_free(merges);
    if (!same) break;
  }
  g_rand_free(rand);
}

static void test_utf8_check(sg_test *t) {
  sg_error error = {0};
  size_t length = 1;
  CHECK_INT(t, sg_utf8_check(NULL, "prompt", &length, &error), SG_OK);
  CHECK_INT(t, length, 0);
  CHECK_INT(t, sg_utf8_check("caf\xC3\xA9", "prompt", &length, &error), SG_OK);
  CHECK_INT(t, length, 5);
  CHECK_INT(t, sg_utf8_check("ab\xC3(", "prompt", &length, &error), SG_ERR_INVALID_ARGUMENT);
  CHECK_MSG(t, strstr(error.message, "UTF-8") && strstr(error.message, "offset 2"), "message: %s",
            error.message);
  const char *bad[] = {"\x80", "\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xFF", "a\xE4\xB8"};
  for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
    CHECK_INT(t, sg_utf8_check(bad[i], "prompt", &length, &error), SG_ERR_INVALID_ARGUMENT);
  }
  char *big = g_malloc(SG_TEXT_MAX_BYTES + 2);
  memset(big, 'a', SG_TEXT_MAX_BYTES + 1);
  big[SG_TEXT_MAX_BYTES + 1] = '\0';
  CHECK_INT(t, sg_utf8_check(big, "prompt", &length, &error), SG_ERR_INVALID_ARGUMENT);
  CHECK(t, strstr(error.message, "bytes long") != NULL);
  big[SG_TEXT_MAX_BYTES] = '\0';
  CHECK_INT(t, sg_utf8_check(big, "prompt", &length, &error), SG_OK);
  g_free(big);
}

/* ---- CLIP ---- */

/* GPT-2's byte characters, written independently of tokenizer_clip.c: bytes that are printable
 * Latin-1 stand for themselves, the others map to U+0100.. in byte order. */
static gunichar byte_character(int b) {
  int n = 0;
  for (int x = 0; x < 256; x++) {
    int printable = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174;
    if (x == b) return printable ? (gunichar)x : (gunichar)(256 + n);
    if (!printable) n++;
  }
  return 0;
}

/* Ids in the tiny vocabulary: CLIP's order (printable bytes first), so byte b has id
 * byte_id(b), its "</w>" form byte_id(b) + 256. */
static int byte_id(int b) {
  int id = 0;
  for (int pass = 0; pass < 2; pass++) {
    for (int x = 0; x < 256; x++) {
      int printable = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174;
      if (printable != (pass == 0)) continue;
      if (x == b) return id;
      id++;
    }
  }
  return -1;
}

static const char *const clip_merges[] = {"h e", "l l",      "he ll",   "hell o</w>",
                                          "c a", "ca t</w>", "b c</w>", "a b"};
#define CLIP_MERGE_ID(rank) (512 + (rank))
#define CLIP_BOS (512 + (int)G_N_ELEMENTS(clip_merges))
#define CLIP_EOS (CLIP_BOS + 1)

static void write_file(sg_test *t, const char *dir, const char *name, const char *text) {
  char *path = g_build_filename(dir, name, NULL);
  CHECK_MSG(t, g_file_set_contents(path, text, -1, NULL), "cannot write %s", path);
  g_free(path);
}

/* A CLIP folder: vocab.json (bytes, bytes</w>, merges, specials), merges.txt, configs. */
static const char *make_clip_folder(sg_test *t, char *buf, size_t size, const char *config,
                                    const char *special_map) {
  const char *dir = sg_test_path(t, "clip", buf, size);
  g_mkdir_with_parents(dir, 0755);
  GString *vocab = g_string_new("{");
  for (int b = 0; b < 256; b++) {
    char character[8] = {0};
    g_unichar_to_utf8(byte_character(b), character);
    const char *escaped = character[0] == '"' ? "\\\"" : character[0] == '\\' ? "\\\\" : character;
    g_string_append_printf(vocab, "\"%s\": %d, \"%s</w>\": %d, ", escaped, byte_id(b), escaped,
                           byte_id(b) + 256);
  }
  GString *merges = g_string_new("#version: 0.2\n");
  for (size_t r = 0; r < G_N_ELEMENTS(clip_merges); r++) {
    char **parts = g_strsplit(clip_merges[r], " ", 2);
    g_string_append_printf(vocab, "\"%s%s\": %d, ", parts[0], parts[1], CLIP_MERGE_ID((int)r));
    g_string_append_printf(merges, "%s\n", clip_merges[r]);
    g_strfreev(parts);
  }
  g_string_append_printf(vocab, "\"<|startoftext|>\": %d, \"<|endoftext|>\": %d}", CLIP_BOS,
                         CLIP_EOS);
  write_file(t, dir, "vocab.json", vocab->str);
  write_file(t, dir, "merges.txt", merges->str);
  if (config) write_file(t, dir, "tokenizer_config.json", config);
  if (special_map) write_file(t, dir, "special_tokens_map.json", special_map);
  g_string_free(vocab, TRUE);
  g_string_free(merges, TRUE);
  return dir;
}

/* Expected ids for text that is already clean and has no merges: each space-separated piece's
 * bytes, the last with "</w>". */
static GArray *plain_ids(const char *clean) {
  GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
  char **pieces = g_strsplit(clean, " ", -1);
  for (int p = 0; pieces[p]; p++) {
    size_t n = strlen(pieces[p]);
    for (size_t i = 0; i < n; i++) {
      int32_t id = byte_id((unsigned char)pieces[p][i]) + (i + 1 == n ? 256 : 0);
      g_array_append_val(ids, id);
    }
  }
  g_strfreev(pieces);
  return ids;
}

static int encodes_as(sg_test *t, const sg_clip_tokenizer *tokenizer, const char *text,
                      const int32_t *expected, int expected_count) {
  int32_t *ids = NULL;
  int count = 0;
  sg_error error = {0};
  sg_status status = sg_clip_encode(tokenizer, text, &ids, &count, &error);
  int same = status == SG_OK && count == expected_count &&
             (count == 0 || !memcmp(ids, expected, (size_t)count * sizeof(int32_t)));
  if (!same) {
    GString *got = g_string_new(NULL);
    for (int i = 0; i < count; i++) g_string_append_printf(got, " %d", ids[i]);
    CHECK_MSG(t, 0, "\"%s\" -> [%s ] (status %d %s)", text, got->str, status, error.message);
    g_string_free(got, TRUE);
  }
  g_free(ids);
  return same;
}

static int encodes_like(sg_test *t, const sg_clip_tokenizer *tokenizer, const char *text,
                        const char *clean) {
  GArray *ids = plain_ids(clean);
  int same = encodes_as(t, tokenizer, text, (const int32_t *)(void *)ids->data, (int)ids->len);
  g_array_free(ids, TRUE);
  return same;
}

static void test_clip_merges_and_pieces(sg_test *t) {
  char dir[4096];
  sg_clip_tokenizer *tokenizer = NULL;
  sg_error error = {0};
  make_clip_folder(t, dir, sizeof dir, NULL, NULL);
  if (!CHECK_INT(t, sg_clip_tokenizer_load(dir, &tokenizer, &error), SG_OK)) {
    printf("  %s\n", error.message);
    return;
  }
  CHECK_INT(t, sg_clip_tokenizer_bos_id(tokenizer), CLIP_BOS);
  CHECK_INT(t, sg_clip_tokenizer_eos_id(tokenizer), CLIP_EOS);
  CHECK_INT(t, sg_clip_tokenizer_pad_id(tokenizer), CLIP_EOS); /* CLIP-L: pad with EOS */
  CHECK_INT(t, sg_clip_tokenizer_max_length(tokenizer), 77);
  int32_t hello[] = {CLIP_MERGE_ID(3)};
  encodes_as(t, tokenizer, "hello", hello, 1);
  int32_t hello_cat[] = {CLIP_MERGE_ID(3), CLIP_MERGE_ID(5), byte_id('!') + 256};
  encodes_as(t, tokenizer, "  Hello \t\n CAT! ", hello_cat, 3);
  /* "abc": rank 6 (b c</w>) comes before rank 7 (a b), so not "ab" + "c</w>". */
  int32_t abc[] = {byte_id('a'), CLIP_MERGE_ID(6)};
  encodes_as(t, tokenizer, "abc", abc, 2);
  /* "hell" has no "hell</w>" merge: h e l l</w> -> he, l, l</w>. */
  int32_t hell[] = {CLIP_MERGE_ID(0), byte_id('l'), byte_id('l') + 256};
  encodes_as(t, tokenizer, "hell", hell, 3);
  /* Split pattern: contractions, letters, one digit at a time, other runs. */
  encodes_like(t, tokenizer, "don't 42 x--y", "don 't 4 2 x -- y");
  encodes_like(t, tokenizer, "it's!'s", "it 's !' s");
  encodes_like(t, tokenizer, "a\xE2\x80\x83z", "a z"); /* em space is \s */
  encodes_like(t, tokenizer, "snake_dog", "snake _ dog");
  /* Clean-up: NFC, HTML references twice, lower case with final sigma and dotted I. */
  encodes_like(t, tokenizer, "rose\xCC\x81", "ros\xC3\xA9");
  encodes_like(t, tokenizer, "AT&amp;T &lt;b&gt; &amp;amp; &#70;&#x47; &#x110000; &bogus;",
               "at & t < b > & fg &# x 1 1 0 0 0 0 ; & bogus ;");
  encodes_like(t, tokenizer, "\xCE\x9F\xCE\x94\xCE\xA5\xCE\xA3\xCE\xA3\xCE\x95\xCE\xA5\xCE\xA3",
               "\xCE\xBF\xCE\xB4\xCF\x85\xCF\x83\xCF\x83\xCE\xB5\xCF\x85\xCF\x82");
  encodes_like(t, tokenizer, "\xCE\xA3 \xCE\x91\xCE\xA3.", "\xCF\x83 \xCE\xB1\xCF\x82 .");
  encodes_like(t, tokenizer, "\xC4\xB0I", "i \xCC\x87 i");    /* the dot is a mark, not \p{L} */
  encodes_like(t, tokenizer, "\xE2\x85\xAB", "\xE2\x85\xBB"); /* Roman numeral twelve */
  /* Written special tokens are split out before the clean-up. */
  int32_t special[] = {byte_id('a') + 256, CLIP_EOS, byte_id('!') + 256};
  encodes_as(t, tokenizer, "a<|endoftext|>!", special, 3);
  encodes_as(t, tokenizer, "", NULL, 0);
  encodes_as(t, tokenizer, " \t\n", NULL, 0);
  /* Invalid UTF-8 and overlong text are refused, never replaced. */
  int32_t *ids = NULL;
  int count = 0;
  CHECK_INT(t, sg_clip_encode(tokenizer, "ok\xFF", &ids, &count, &error), SG_ERR_INVALID_ARGUMENT);
  CHECK(t, ids == NULL && strstr(error.message, "UTF-8"));
  sg_clip_tokenizer_free(tokenizer);
}

static void test_clip_layout(sg_test *t) {
  char dir[4096];
  sg_clip_tokenizer *tokenizer = NULL;
  sg_error error = {0};
  /* bigG style: the special-token map overrides the config; pad "!" (id 0). */
  make_clip_folder(t, dir, sizeof dir,
                   "{\"model_max_length\": 8, \"pad_token\": \"<|endoftext|>\"}",
                   "{\"pad_token\": {\"content\": \"!\", \"lstrip\": false}}");
  if (!CHECK_INT(t, sg_clip_tokenizer_load(dir, &tokenizer, &error), SG_OK)) {
    printf("  %s\n", error.message);
    return;
  }
  CHECK_INT(t, sg_clip_tokenizer_max_length(tokenizer), 8);
  CHECK_INT(t, sg_clip_tokenizer_pad_id(tokenizer), byte_id('!'));
  CHECK_INT(t, byte_id('!'), 0);
  sg_clip_tokens tokens;
  CHECK_INT(t, sg_clip_tokenize(tokenizer, "hello cat", 1, &tokens, &error), SG_OK);
  int32_t padded[8] = {CLIP_BOS, CLIP_MERGE_ID(3), CLIP_MERGE_ID(5), CLIP_EOS, 0, 0, 0, 0};
  CHECK_INT(t, tokens.count, 8);
  CHECK_INT(t, tokens.length, 4);
  CHECK_INT(t, tokens.eos_index, 3);
  CHECK_INT(t, tokens.truncated, 0);
  CHECK(t, !memcmp(tokens.ids, padded, sizeof padded));
  sg_clip_tokens_clear(&tokens);
  /* Nine tokens: six fit, EOS is kept last. */
  CHECK_INT(t, sg_clip_tokenize(tokenizer, "1 2 3 4 5 6 7 8 9", 0, &tokens, &error), SG_OK);
  CHECK_INT(t, tokens.count, 8);
  CHECK_INT(t, tokens.length, 8);
  CHECK_INT(t, tokens.eos_index, 7);
  CHECK_INT(t, tokens.truncated, 1);
  CHECK_INT(t, tokens.ids[6], byte_id('6') + 256);
  CHECK_INT(t, tokens.ids[7], CLIP_EOS);
  sg_clip_tokens_clear(&tokens);
  /* The empty prompt: BOS EOS then padding. */
  CHECK_INT(t, sg_clip_tokenize(tokenizer, NULL, 1, &tokens, &error), SG_OK);
  CHECK(t, tokens.length == 2 && tokens.ids[1] == CLIP_EOS && tokens.ids[7] == 0);
  sg_clip_tokens_clear(&tokens);
  sg_clip_tokenizer_free(tokenizer);
}

static void test_clip_bad_files(sg_test *t) {
  char dir[4096];
  sg_clip_tokenizer *tokenizer = NULL;
  sg_error error = {0};
  const char *folder = make_clip_folder(t, dir, sizeof dir, NULL, NULL);
  write_file(t, folder, "merges.txt", "#version: 0.2\nh e\nq z\n");
  CHECK_INT(t, sg_clip_tokenizer_load(folder, &tokenizer, &error), SG_ERR_FORMAT);
  CHECK_MSG(t, strstr(error.message, "merges.txt: line 3") != NULL, "message: %s", error.message);
  write_file(t, folder, "merges.txt", "#version: 0.2\nh e x\n");
  CHECK_INT(t, sg_clip_tokenizer_load(folder, &tokenizer, &error), SG_ERR_FORMAT);
  write_file(t, folder, "merges.txt", "h e\n");
  write_file(t, folder, "special_tokens_map.json", "{\"pad_token\": \"<nope>\"}");
  CHECK_INT(t, sg_clip_tokenizer_load(folder, &tokenizer, &error), SG_ERR_FORMAT);
  CHECK_MSG(t, strstr(error.message, "pad_token") != NULL, "message: %s", error.message);
  write_file(t, folder, "vocab.json", "{\"a\": 0}");
  CHECK_INT(t, sg_clip_tokenizer_load(folder, &tokenizer, &error), SG_ERR_FORMAT);
  char missing[4096];
  CHECK_INT(
      t,
      sg_clip_tokenizer_load(sg_test_path(t, "none", missing, sizeof missing), &tokenizer, &error),
      SG_ERR_IO);
  CHECK(t, tokenizer == NULL);
}

/* ---- Gemma ---- */

/* A tiny Gemma-style tokenizer.json: 4 specials, 256 byte tokens, then pieces and merges. */
#define GEMMA_PIECE(i) (260 + (i))
static const char *const gemma_pieces[] = {"\xE2\x96\x81",
                                           "h",
                                           "e",
                                           "l",
                                           "o",
                                           "he",
                                           "ll",
                                           "hell",
                                           "hello",
                                           "\xE2\x96\x81hello",
                                           "\n",
                                           "<start_of_turn>",
                                           "\xE2\x96\x81\xE2\x96\x81"};

static char *gemma_json(const char *normalizer, const char *pre_tokenizer, const char *merges,
                        const char *extra_added) {
  GString *json = g_string_new("{\"version\": \"1.0\", \"added_tokens\": [");
  const char *specials[4] = {"<pad>", "<eos>", "<bos>", "<unk>"};
  for (int i = 0; i < 4; i++) {
    g_string_append_printf(json,
                           "{\"id\": %d, \"content\": \"%s\", \"single_word\": false, \"lstrip\": "
                           "false, \"rstrip\": false, \"normalized\": false, \"special\": true}, ",
                           i, specials[i]);
  }
  g_string_append_printf(json,
                         "{\"id\": %d, \"content\": \"<start_of_turn>\", \"normalized\": false, "
                         "\"special\": true}, {\"id\": %d, \"content\": \"\\n\", \"normalized\": "
                         "false, \"special\": false}, {\"id\": %d, \"content\": \"\\u2581\\u2581\","
                         " \"normalized\": false, \"special\": false}%s], ",
                         GEMMA_PIECE(11), GEMMA_PIECE(10), GEMMA_PIECE(12), extra_added);
  g_string_append_printf(json, "\"normalizer\": %s, \"pre_tokenizer\": %s, ", normalizer,
                         pre_tokenizer);
  g_string_append(json,
                  "\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": "
                  "[{\"SpecialToken\": {\"id\": \"<bos>\", \"type_id\": 0}}, {\"Sequence\": "
                  "{\"id\": \"A\", \"type_id\": 0}}], \"special_tokens\": {\"<bos>\": {\"id\": "
                  "\"<bos>\", \"ids\": [2], \"tokens\": [\"<bos>\"]}}}, ");
  g_string_append(json,
                  "\"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": \"<unk>\", "
                  "\"continuing_subword_prefix\": null, \"end_of_word_suffix\": null, "
                  "\"fuse_unk\": true, \"byte_fallback\": true, \"ignore_merges\": false, "
                  "\"vocab\": {");
  for (int i = 0; i < 4; i++) g_string_append_printf(json, "\"%s\": %d, ", specials[i], i);
  for (int b = 0; b < 256; b++) g_string_append_printf(json, "\"<0x%02X>\": %d, ", b, 4 + b);
  for (size_t i = 0; i < G_N_ELEMENTS(gemma_pieces); i++) {
    char *escaped = g_strescape(gemma_pieces[i], "\xE2\x96\x81");
    g_string_append_printf(json, "%s\"%s\": %d", i ? ", " : "", escaped, GEMMA_PIECE((int)i));
    g_free(escaped);
  }
  g_string_append_printf(json, "}, \"merges\": %s}}", merges);
  return g_string_free(json, FALSE);
}

static const char gemma_normalizer[] =
    "{\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\\u2581\"}";
static const char gemma_pre_tokenizer[] =
    "{\"type\": \"Split\", \"pattern\": {\"String\": \" \"}, \"behavior\": "
    "\"MergedWithPrevious\", \"invert\": false}";
static const char gemma_merges[] =
    "[\"h e\", \"l l\", \"he ll\", \"hell o\", \"\\u2581 hello\", \"\\u2581 \\u2581\"]";

static sg_gemma_tokenizer *load_gemma(sg_test *t, const char *folder_name, const char *json,
                                      const char *config) {
  char dir[4096];
  sg_test_path(t, folder_name, dir, sizeof dir);
  g_mkdir_with_parents(dir, 0755);
  write_file(t, dir, "tokenizer.json", json);
  if (config) write_file(t, dir, "tokenizer_config.json", config);
  sg_gemma_tokenizer *tokenizer = NULL;
  sg_error error = {0};
  if (!CHECK_INT(t, sg_gemma_tokenizer_load(dir, &tokenizer, &error), SG_OK)) {
    printf("  %s\n", error.message);
  }
  return tokenizer;
}

static int gemma_gives(sg_test *t, const sg_gemma_tokenizer *tokenizer, const char *text,
                       int add_special, int max_length, const int32_t *expected, int count) {
  sg_gemma_tokens tokens;
  sg_error error = {0};
  sg_status status = sg_gemma_tokenize(tokenizer, text, add_special, max_length, &tokens, &error);
  int same = status == SG_OK && tokens.count == count &&
             (count == 0 || !memcmp(tokens.ids, expected, (size_t)count * sizeof(int32_t)));
  if (!same) {
    GString *got = g_string_new(NULL);
    for (int i = 0; status == SG_OK && i < tokens.count; i++) {
      g_string_append_printf(got, " %d", tokens.ids[i]);
    }
    CHECK_MSG(t, 0, "\"%s\" -> [%s ] (status %d %s)", text, got->str, status, error.message);
    g_string_free(got, TRUE);
  }
  if (status == SG_OK) sg_gemma_tokens_clear(&tokens);
  return same;
}

static void test_gemma_pipeline(sg_test *t) {
  char *json = gemma_json(gemma_normalizer, gemma_pre_tokenizer, gemma_merges, "");
  sg_gemma_tokenizer *tokenizer = load_gemma(t, "gemma", json, NULL);
  g_free(json);
  if (!tokenizer) return;
  CHECK_INT(t, sg_gemma_tokenizer_bos_id(tokenizer), 2);
  CHECK_INT(t, sg_gemma_tokenizer_pad_id(tokenizer), 0);
  CHECK_INT(t, sg_gemma_tokenizer_vocab_size(tokenizer), GEMMA_PIECE(13));
  CHECK(t, !strcmp(sg_gemma_tokenizer_token(tokenizer, GEMMA_PIECE(9)), "\xE2\x96\x81hello"));
  int32_t hello_hello[] = {2, GEMMA_PIECE(8), GEMMA_PIECE(9)};
  gemma_gives(t, tokenizer, "hello hello", 1, 0, hello_hello, 3);
  gemma_gives(t, tokenizer, "hello hello", 0, 0, hello_hello + 1, 2);
  /* No prefix space is added; "  hello" is ▁ ▁ h e l l o before merging. */
  int32_t spaced[] = {2, GEMMA_PIECE(0), GEMMA_PIECE(9)}; /* rank 4 (▁ hello) before 5 (▁ ▁) */
  gemma_gives(t, tokenizer, "  hello", 1, 0, spaced, 3);
  /* Byte fallback: é is not in the vocabulary -> <0xC3> <0xA9>. */
  int32_t bytes[] = {2, GEMMA_PIECE(5), 4 + 0xC3, 4 + 0xA9};
  gemma_gives(t, tokenizer, "he\xC3\xA9", 1, 0, bytes, 4);
  /* Added tokens are matched first, in the raw text: "\n" and <start_of_turn>. */
  int32_t added[] = {2, GEMMA_PIECE(11), GEMMA_PIECE(1), GEMMA_PIECE(10), GEMMA_PIECE(8)};
  gemma_gives(t, tokenizer, "<start_of_turn>h\nhello", 1, 0, added, 5);
  /* A literal ▁▁ in the prompt is the added token. */
  int32_t literal[] = {2, GEMMA_PIECE(12)};
  gemma_gives(t, tokenizer, "\xE2\x96\x81\xE2\x96\x81", 1, 0, literal, 2);
  /* max_length keeps BOS and cuts the rest. */
  gemma_gives(t, tokenizer, "hello hello hello", 1, 2, hello_hello, 2);
  int32_t just_bos[] = {2};
  gemma_gives(t, tokenizer, "", 1, 0, just_bos, 1);
  sg_gemma_tokens tokens;
  sg_error error = {0};
  CHECK_INT(t, sg_gemma_tokenize(tokenizer, "hello\xC3", 1, 0, &tokens, &error),
            SG_ERR_INVALID_ARGUMENT);
  CHECK_MSG(t, strstr(error.message, "UTF-8") != NULL, "message: %s", error.message);
  CHECK_INT(t, sg_gemma_tokenize(tokenizer, "hello", 1, 0, &tokens, &error), SG_OK);
  sg_gemma_tokens_clear(&tokens);
  sg_gemma_tokenizer_free(tokenizer);
}

static void test_gemma_variants(sg_test *t) {
  /* Gemma-3 style merges ([left, right] pairs) and a config that adds EOS too. */
  const char pair_merges[] =
      "[[\"h\", \"e\"], [\"l\", \"l\"], [\"he\", \"ll\"], [\"hell\", \"o\"], [\"\\u2581\", "
      "\"hello\"]]";
  char *json = gemma_json(gemma_normalizer, gemma_pre_tokenizer, pair_merges, "");
  sg_gemma_tokenizer *tokenizer =
      load_gemma(t, "pairs", json, "{\"add_bos_token\": true, \"add_eos_token\": true}");
  g_free(json);
  if (tokenizer) {
    int32_t both[] = {2, GEMMA_PIECE(9), 1};
    gemma_gives(t, tokenizer, " hello", 1, 0, both, 3);
    sg_gemma_tokenizer_free(tokenizer);
  }
  /* The older layout: Prepend ▁ then Replace, no pre-tokenizer. */
  const char prepend[] =
      "{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", \"prepend\": "
      "\"\\u2581\"}, {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": "
      "\"\\u2581\"}]}";
  json = gemma_json(prepend, "null", gemma_merges, "");
  tokenizer = load_gemma(t, "prepend", json, NULL);
  g_free(json);
  if (tokenizer) {
    int32_t prefixed[] = {2, GEMMA_PIECE(9), GEMMA_PIECE(9)};
    gemma_gives(t, tokenizer, "hello hello", 1, 0, prefixed, 3);
    sg_gemma_tokenizer_free(tokenizer);
  }
  /* Split behaviors, on spaces kept as spaces (no normalizer). */
  const char *behaviors[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext"};
  int32_t h = GEMMA_PIECE(1), e = GEMMA_PIECE(2), space_bytes = 4 + ' ';
  int32_t expected[4][4] = {
      {h, e, 0, 0}, {h, space_bytes, e, 0}, {h, space_bytes, e, 0}, {h, space_bytes, e, 0}};
  int lengths[4] = {2, 3, 3, 3};
  for (int b = 0; b < 4; b++) {
    char *split = g_strdup_printf(
        "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
        "{\"String\": \" \"}, \"behavior\": \"%s\", \"invert\": false}]}",
        behaviors[b]);
    json = gemma_json("null", split, "[]", "");
    g_free(split);
    char name[32];
    snprintf(name, sizeof name, "split%d", b);
    tokenizer = load_gemma(t, name, json, NULL);
    g_free(json);
    if (!tokenizer) continue;
    CHECK_MSG(t, gemma_gives(t, tokenizer, "h e", 0, 0, expected[b], lengths[b]), "behavior %s",
              behaviors[b]);
    sg_gemma_tokenizer_free(tokenizer);
  }
}

static void test_gemma_unsupported(sg_test *t) {
  char dir[4096];
  sg_test_path(t, "bad", dir, sizeof dir);
  g_mkdir_with_parents(dir, 0755);
  sg_gemma_tokenizer *tokenizer = NULL;
  sg_error error = {0};
  const char *normalizers[] = {"{\"type\": \"Lowercase\"}",
                               "{\"type\": \"Replace\", \"pattern\": {\"Regex\": \" +\"}, "
                               "\"content\": \"\\u2581\"}"};
  for (int i = 0; i < 2; i++) {
    char *json = gemma_json(normalizers[i], "null", gemma_merges, "");
    write_file(t, dir, "tokenizer.json", json);
    g_free(json);
    CHECK_INT(t, sg_gemma_tokenizer_load(dir, &tokenizer, &error), SG_ERR_FORMAT);
    CHECK_MSG(t, strstr(error.message, "normalizer") != NULL, "message: %s", error.message);
  }
  char *json = gemma_json("null", "{\"type\": \"Metaspace\"}", gemma_merges, "");
  write_file(t, dir, "tokenizer.json", json);
  g_free(json);
  CHECK_INT(t, sg_gemma_tokenizer_load(dir, &tokenizer, &error), SG_ERR_FORMAT);
  CHECK_MSG(t, strstr(error.message, "Metaspace") != NULL, "message: %s", error.message);
  json = gemma_json("null", "null", "[\"h q\"]", "");
  write_file(t, dir, "tokenizer.json", json);
  g_free(json);
  CHECK_INT(t, sg_gemma_tokenizer_load(dir, &tokenizer, &error), SG_ERR_FORMAT);
  CHECK_MSG(t, strstr(error.message, "merges[0]") != NULL, "message: %s", error.message);
  json = gemma_json("null", "null", gemma_merges,
                    ", {\"id\": 300, \"content\": \"x\", \"lstrip\": true, \"normalized\": false}");
  write_file(t, dir, "tokenizer.json", json);
  g_free(json);
  CHECK_INT(t, sg_gemma_tokenizer_load(dir, &tokenizer, &error), SG_ERR_FORMAT);
  CHECK_MSG(t, strstr(error.message, "lstrip") != NULL, "message: %s", error.message);
  /* A template id that no token has (a fuzz finding): named at load, not emitted later. */
  json = gemma_json("null", "null", gemma_merges, "");
  char **halves = g_strsplit(json, "\"ids\": [2]", 2);
  g_free(json);
  json = g_strjoinv("\"ids\": [99999]", halves);
  g_strfreev(halves);
  write_file(t, dir, "tokenizer.json", json);
  g_free(json);
  CHECK_INT(t, sg_gemma_tokenizer_load(dir, &tokenizer, &error), SG_ERR_FORMAT);
  CHECK_MSG(t, strstr(error.message, "<bos>") && strstr(error.message, "99999"), "message: %s",
            error.message);
  write_file(t, dir, "tokenizer.json", "{\"model\": {\"type\": \"Unigram\"}}");
  CHECK_INT(t, sg_gemma_tokenizer_load(dir, &tokenizer, &error), SG_ERR_FORMAT);
  write_file(t, dir, "tokenizer.json", "{not json");
  CHECK_INT(t, sg_gemma_tokenizer_load(dir, &tokenizer, &error), SG_ERR_FORMAT);
  CHECK(t, tokenizer == NULL);
}

void register_tokenizer_tests(sg_test_list *list) {
  sg_test_add(list, "tokenizer/bpe_basics", test_bpe_basics);
  sg_test_add(list, "tokenizer/bpe_matches_definition", test_bpe_matches_definition);
  sg_test_add(list, "tokenizer/utf8_check", test_utf8_check);
  sg_test_add(list, "tokenizer/clip_merges_and_pieces", test_clip_merges_and_pieces);
  sg_test_add(list, "tokenizer/clip_layout", test_clip_layout);
  sg_test_add(list, "tokenizer/clip_bad_files", test_clip_bad_files);
  sg_test_add(list, "tokenizer/gemma_pipeline", test_gemma_pipeline);
  sg_test_add(list, "tokenizer/gemma_variants", test_gemma_variants);
  sg_test_add(list, "tokenizer/gemma_unsupported", test_gemma_unsupported);
}
