/* check_text.c: runs the CLIP and Gemma-2 text encoders, the conditioner or the CLIP tokenizer on a
 * case file written by tests/ref/test_text.py and writes the result for comparison with PyTorch.
 *
 * Usage (through sgcheck): KIND CASE.safetensors OUT.safetensors. Metadata common to every kind:
 * "backend" = "onednn" (default) | "reference"; "threads" (0 = all cores).
 *
 *   text-clip     the model: metadata "config" (a CLIPTextConfig config.json as a JSON string)
 *                 with the weights in the case file under their Hugging Face names, or
 *                 "model_dir" (a folder with config.json and *.safetensors, e.g. bf16);
 *                 "with_projection" ("1", "0" or "-1" = when text_projection.weight exists);
 *                 "hidden_layer" (an index into hidden_states or "last"); "pooled" ("1": also
 *                 the pooled output); "repeat" (forwards to time, default 1);
 *                 tensor "input_ids" [T] (F32 holding integers).
 *                 Output: "hidden" [T, hidden], "pooled" [P]; metadata "load_seconds",
 *                 "first_forward_seconds", "forward_seconds" (fastest), "max_rss_bytes",
 *                 "parameters", "converted_bytes".
 *   text-gemma2   as text-clip for a Gemma2Config (no pooled output).     Output: "hidden".
 *   text-conditioner  metadata "model_dir" (a model folder with model_index.json and
 *                 conditioner/), "prompt" or "prompt_hex" (its UTF-8 bytes in hex, so invalid
 *                 text can be given), optional "negative" (a second prompt, encoded after the
 *                 first, e.g. "" twice to use the cache), "report" = "1" (print the `snapgen
 *                 encode` report to stdout).
 *                 Output: "context", "context_mask", "pooled", "ids.{i}" (F32 token ids of each
 *                 present encoder), with "negative_" copies for the negative prompt; metadata
 *                 per encoder "encoder.{i}.{tokens,real_tokens,forward_seconds,load_seconds}".
 *   text-tokenize metadata "tokenizer_dir" (vocab.json + merges.txt), "prompts_hex" (prompts in
 *                 hex, one per line).  Output: "ids.{k}" [n_k] (F32, without BOS/EOS; an empty
 *                 prompt gives a one-element tensor holding -1), metadata "error.{k}" for prompts
 *                 the tokenizer refused.
 *
 * Weights in the case file are read through sg_weights_open_folder from a scratch folder holding a
 * link to it (its input tensors are simply never asked for). */
#include <glib.h>
#include <glib/gstdio.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "clip_text.h"
#include "conditioner.h"
#include "config.h"
#include "error.h"
#include "gemma2.h"
#include "safetensors.h"
#include "tokenizer_clip.h"

#define MAX_OUTPUTS 64

typedef struct {
  sg_safetensors *file;
  sg_backend *backend;
  sg_arena *arena;
  char *scratch_dir, *link_path;
  sg_weights *weights;
  sg_clip_text *clip;
  sg_gemma2 *gemma;
  sg_conditioner *conditioner;
  /* Outputs to write. */
  int count;
  char *names[MAX_OUTPUTS];
  sg_tensor tensors[MAX_OUTPUTS];
  GPtrArray *metadata; /* key, value, ..., owned strings */
} check_state;

static void release(check_state *s) {
  sg_conditioner_free(s->conditioner);
  sg_clip_text_free(s->clip);
  sg_gemma2_free(s->gemma);
  sg_weights_free(s->weights);
  if (s->link_path) g_unlink(s->link_path);
  if (s->scratch_dir) g_rmdir(s->scratch_dir);
  g_free(s->link_path);
  g_free(s->scratch_dir);
  for (int i = 0; i < s->count; i++) {
    g_free(s->names[i]);
    g_free(s->tensors[i].data);
  }
  if (s->metadata) g_ptr_array_free(s->metadata, TRUE);
  sg_arena_free(s->arena);
  sg_backend_free(s->backend);
  sg_safetensors_close(s->file);
}

static const char *case_meta(sg_safetensors *file, const char *key, const char *fallback) {
  const char *value = sg_safetensors_metadata(file, key);
  return value ? value : fallback;
}

static void add_meta(check_state *s, const char *key, const char *format, ...)
    __attribute__((format(printf, 3, 4)));
static void add_meta(check_state *s, const char *key, const char *format, ...) {
  va_list args;
  va_start(args, format);
  g_ptr_array_add(s->metadata, g_strdup(key));
  g_ptr_array_add(s->metadata, g_strdup_vprintf(format, args));
  va_end(args);
}

/* A new f32 output tensor (zeroed, owned by s). */
static sg_tensor *new_output(check_state *s, const char *name, int ndim, const int64_t *dims) {
  int64_t count = 1;
  for (int i = 0; i < ndim; i++) count *= dims[i];
  s->names[s->count] = g_strdup(name);
  s->tensors[s->count] = sg_tensor_view(g_new0(float, count > 0 ? count : 1), SG_F32, ndim, dims);
  return &s->tensors[s->count++];
}

static sg_status write_outputs(check_state *s, const char *out_path, sg_error *error) {
  g_ptr_array_add(s->metadata, NULL);
  sg_status status =
      sg_safetensors_write(out_path, s->count, (const char *const *)s->names, s->tensors,
                           (const char *const *)s->metadata->pdata, error);
  g_ptr_array_remove_index(s->metadata, s->metadata->len - 1);
  return status;
}

static double seconds_since(gint64 start) {
  return (double)(g_get_monotonic_time() - start) * 1e-6;
}

static long long max_rss_bytes(void) {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return (long long)usage.ru_maxrss * 1024;
}

/* Opens the case file's own tensors as a weights folder (see the top of the file). */
static sg_status open_case_weights(check_state *s, const char *case_path, sg_error *error) {
  GError *gerror = NULL;
  s->scratch_dir = g_dir_make_tmp("sgcheck-text-XXXXXX", &gerror);
  if (!s->scratch_dir) {
    sg_fail(error, SG_ERR_IO, "cannot make a scratch folder: %s", gerror->message);
    g_error_free(gerror);
    return SG_ERR_IO;
  }
  char *absolute = realpath(case_path, NULL);
  if (!absolute) return sg_fail(error, SG_ERR_IO, "%s: cannot resolve the path", case_path);
  char *link = g_build_filename(s->scratch_dir, "case.safetensors", NULL);
  int failed = symlink(absolute, link);
  free(absolute);
  if (failed) {
    g_free(link);
    return sg_fail(error, SG_ERR_IO, "cannot link %s into %s", case_path, s->scratch_dir);
  }
  s->link_path = link;
  return sg_weights_open_folder(s->scratch_dir, &s->weights, error);
}

/* The encoder's config: from metadata "config", or MODEL_DIR/config.json with the weights there. */
static sg_status open_model(check_state *s, const char *case_path, sg_json **json,
                            sg_error *error) {
  const char *model_dir = sg_safetensors_metadata(s->file, "model_dir");
  if (model_dir) {
    char *path = g_build_filename(model_dir, "config.json", NULL);
    sg_status status = sg_json_load(path, json, error);
    g_free(path);
    if (status == SG_OK) status = sg_weights_open_folder(model_dir, &s->weights, error);
    /* One backend per run (as in the pipeline): widened copies may go once packed, which keeps
     * the full-size Gemma check well inside the machine's memory. */
    if (status == SG_OK) sg_weights_hand_off_to_backend(s->weights);
    /* bf16 matrices stay in the file and are widened per product, as the conditioner has it. */
    if (status == SG_OK) sg_weights_keep_bf16_linears(s->weights);
    return status;
  }
  const char *text = sg_safetensors_metadata(s->file, "config");
  if (!text)
    return sg_fail(error, SG_ERR_FORMAT, "%s: metadata 'config' or 'model_dir' is missing",
                   case_path);
  sg_status status = sg_json_parse(text, strlen(text), "case config", json, error);
  if (status == SG_OK) status = open_case_weights(s, case_path, error);
  return status;
}

static sg_status read_ids(check_state *s, const char *case_path, int32_t **ids, int *count,
                          sg_error *error) {
  const sg_st_entry *entry = sg_safetensors_find(s->file, "input_ids");
  if (!entry || entry->dtype != SG_F32 || entry->ndim != 1)
    return sg_fail(error, SG_ERR_FORMAT, "%s: F32 tensor 'input_ids' [T] is missing", case_path);
  *count = (int)entry->dims[0];
  *ids = g_new(int32_t, *count > 0 ? *count : 1);
  const float *values = entry->data;
  for (int i = 0; i < *count; i++) (*ids)[i] = (int32_t)values[i];
  return SG_OK;
}

static int hidden_layer_of(sg_safetensors *file) {
  const char *text = case_meta(file, "hidden_layer", "last");
  return strcmp(text, "last") == 0 ? SG_TEXT_HIDDEN_LAST : (int)g_ascii_strtoll(text, NULL, 10);
}

#define TRY(expr)                   \
  do {                              \
    status = (expr);                \
    if (status != SG_OK) goto done; \
  } while (0)

static sg_status run_encoder(check_state *s, int is_clip, const char *case_path,
                             const char *out_path, sg_error *error) {
  sg_status status = SG_OK;
  sg_json *json = NULL;
  int32_t *ids = NULL;
  int count = 0;
  int hidden_layer = hidden_layer_of(s->file);
  int repeat = (int)g_ascii_strtoll(case_meta(s->file, "repeat", "1"), NULL, 10);
  if (repeat < 1) repeat = 1;
  gint64 start = g_get_monotonic_time();
  TRY(open_model(s, case_path, &json, error));
  int64_t hidden_dims[2] = {0, 0};
  int pooled_dim = 0;
  if (is_clip) {
    sg_clip_text_config config;
    TRY(sg_clip_text_config_from_json(json, &config, error));
    int with_projection = (int)g_ascii_strtoll(case_meta(s->file, "with_projection", "-1"),
                                               NULL, 10);
    TRY(sg_clip_text_load(&config, s->weights, with_projection, &s->clip, error));
    hidden_dims[1] = config.hidden_size;
    if (strcmp(case_meta(s->file, "pooled", "0"), "1") == 0)
      pooled_dim = sg_clip_text_pooled_dim(s->clip);
  } else {
    sg_gemma2_config config;
    TRY(sg_gemma2_config_from_json(json, &config, error));
    TRY(sg_gemma2_load(&config, s->weights, &s->gemma, error));
    hidden_dims[1] = config.hidden_size;
  }
  double load_seconds = seconds_since(start);
  TRY(read_ids(s, case_path, &ids, &count, error));
  hidden_dims[0] = count;
  sg_tensor *hidden = new_output(s, "hidden", 2, hidden_dims);
  int64_t pooled_dims[1] = {pooled_dim};
  sg_tensor *pooled = pooled_dim > 0 ? new_output(s, "pooled", 1, pooled_dims) : NULL;
  double first = 0, best = 0;
  for (int r = 0; r < repeat; r++) {
    start = g_get_monotonic_time();
    if (is_clip)
      TRY(sg_clip_text_forward(s->clip, s->backend, s->arena, ids, count, hidden_layer, hidden,
                               pooled, error));
    else
      TRY(sg_gemma2_forward(s->gemma, s->backend, s->arena, ids, count, hidden_layer, hidden,
                            error));
    double took = seconds_since(start);
    if (r == 0) first = best = took;
    if (took < best) best = took;
  }
  add_meta(s, "load_seconds", "%.6f", load_seconds);
  add_meta(s, "first_forward_seconds", "%.6f", first);
  add_meta(s, "forward_seconds", "%.6f", best);
  add_meta(s, "max_rss_bytes", "%lld", max_rss_bytes());
  add_meta(s, "parameters", "%lld", (long long)sg_weights_parameter_count(s->weights));
  add_meta(s, "converted_bytes", "%zu", sg_weights_owned_bytes(s->weights));
  TRY(write_outputs(s, out_path, error));
done:
  sg_json_free(json);
  g_free(ids);
  return status;
}

/* Text from metadata "KEY" or, in hex bytes, "KEY_hex"; NULL when neither is there. */
static char *meta_text(sg_safetensors *file, const char *key) {
  char hex_key[64];
  g_snprintf(hex_key, sizeof hex_key, "%s_hex", key);
  const char *hex = sg_safetensors_metadata(file, hex_key);
  if (!hex) {
    const char *text = sg_safetensors_metadata(file, key);
    return text ? g_strdup(text) : NULL;
  }
  size_t length = strlen(hex) / 2;
  char *text = g_malloc(length + 1);
  for (size_t i = 0; i < length; i++)
    text[i] = (char)(g_ascii_xdigit_value(hex[2 * i]) * 16 + g_ascii_xdigit_value(hex[2 * i + 1]));
  text[length] = '\0';
  return text;
}

static sg_status encode_one(check_state *s, const char *prompt, const char *prefix,
                            sg_error *error) {
  sg_conditioning_out out;
  sg_status status = sg_conditioner_encode(s->conditioner, s->backend, s->arena, prompt, &out,
                                           error);
  if (status != SG_OK) return status;
  char name[64];
  g_snprintf(name, sizeof name, "%scontext", prefix);
  sg_tensor *context = new_output(s, name, 2, out.context.dims);
  memcpy(context->data, out.context.data, sg_tensor_nbytes(&out.context));
  g_snprintf(name, sizeof name, "%scontext_mask", prefix);
  sg_tensor *mask = new_output(s, name, 1, out.context.dims);
  memcpy(mask->data, out.context_mask, (size_t)out.context.dims[0] * sizeof(float));
  if (out.pooled.data) {
    g_snprintf(name, sizeof name, "%spooled", prefix);
    sg_tensor *pooled = new_output(s, name, 1, out.pooled.dims);
    memcpy(pooled->data, out.pooled.data, sg_tensor_nbytes(&out.pooled));
  }
  for (int i = 0; i < sg_conditioner_encoder_count(s->conditioner); i++) {
    int32_t *ids = NULL;
    int count = 0;
    status = sg_conditioner_token_ids(s->conditioner, i, prompt, &ids, &count, NULL, error);
    if (status != SG_OK) break;
    if (count > 0) {
      g_snprintf(name, sizeof name, "%sids.%d", prefix, i);
      int64_t dims[1] = {count};
      float *values = new_output(s, name, 1, dims)->data;
      for (int t = 0; t < count; t++) values[t] = (float)ids[t];
    }
    g_free(ids);
  }
  sg_conditioning_out_clear(&out);
  return status;
}

static sg_status run_conditioner(check_state *s, const char *case_path, const char *out_path,
                                 sg_error *error) {
  sg_status status = SG_OK;
  char *prompt = meta_text(s->file, "prompt");
  char *negative = meta_text(s->file, "negative");
  const char *model_dir = sg_safetensors_metadata(s->file, "model_dir");
  if (!model_dir || !prompt)
    TRY(sg_fail(error, SG_ERR_FORMAT, "%s: metadata 'model_dir' or 'prompt' is missing",
                case_path));
  const int int8 = strcmp(case_meta(s->file, "int8", "0"), "1") == 0;
  TRY(sg_conditioner_load(model_dir, int8, &s->conditioner, error));
  if (!s->conditioner)
    TRY(sg_fail(error, SG_ERR_FORMAT, "%s: the model has no conditioner", model_dir));
  if (strcmp(case_meta(s->file, "report", "0"), "1") == 0)
    TRY(sg_conditioner_print_report(s->conditioner, s->backend, s->arena, prompt, stdout,
                                    error));
  TRY(encode_one(s, prompt, "", error));
  if (negative) TRY(encode_one(s, negative, "negative_", error));
  for (int i = 0; i < sg_conditioner_encoder_count(s->conditioner); i++) {
    sg_encoder_info info;
    sg_conditioner_encoder_info(s->conditioner, i, &info);
    char key[64];
    g_snprintf(key, sizeof key, "encoder.%d.tokens", i);
    add_meta(s, key, "%d", info.tokens);
    g_snprintf(key, sizeof key, "encoder.%d.real_tokens", i);
    add_meta(s, key, "%d", info.real_tokens);
    g_snprintf(key, sizeof key, "encoder.%d.present", i);
    add_meta(s, key, "%d", info.present);
    g_snprintf(key, sizeof key, "encoder.%d.load_seconds", i);
    add_meta(s, key, "%.6f", info.load_seconds);
    g_snprintf(key, sizeof key, "encoder.%d.forward_seconds", i);
    add_meta(s, key, "%.6f", info.forward_seconds);
  }
  add_meta(s, "max_rss_bytes", "%lld", max_rss_bytes());
  TRY(write_outputs(s, out_path, error));
done:
  g_free(prompt);
  g_free(negative);
  return status;
}

static sg_status run_tokenize(check_state *s, const char *case_path, const char *out_path,
                              sg_error *error) {
  sg_status status = SG_OK;
  sg_clip_tokenizer *tokenizer = NULL;
  char **lines = NULL;
  const char *dir = sg_safetensors_metadata(s->file, "tokenizer_dir");
  const char *hex = sg_safetensors_metadata(s->file, "prompts_hex");
  if (!dir || !hex)
    TRY(sg_fail(error, SG_ERR_FORMAT, "%s: metadata 'tokenizer_dir' or 'prompts_hex' is missing",
                case_path));
  TRY(sg_clip_tokenizer_load(dir, &tokenizer, error));
  lines = g_strsplit(hex, "\n", -1);
  for (int k = 0; lines[k] && s->count < MAX_OUTPUTS; k++) {
    size_t length = strlen(lines[k]) / 2;
    char *text = g_malloc(length + 1);
    for (size_t i = 0; i < length; i++)
      text[i] = (char)(g_ascii_xdigit_value(lines[k][2 * i]) * 16 +
                       g_ascii_xdigit_value(lines[k][2 * i + 1]));
    text[length] = '\0';
    int32_t *ids = NULL;
    int count = 0;
    sg_error refused = {0};
    char name[32];
    if (sg_clip_encode(tokenizer, text, &ids, &count, &refused) != SG_OK) {
      g_snprintf(name, sizeof name, "error.%d", k);
      add_meta(s, name, "%s", refused.message);
    } else {
      g_snprintf(name, sizeof name, "ids.%d", k);
      int64_t dims[1] = {count > 0 ? count : 1};
      float *values = new_output(s, name, 1, dims)->data;
      values[0] = -1.0f;
      for (int t = 0; t < count; t++) values[t] = (float)ids[t];
    }
    g_free(ids);
    g_free(text);
  }
  TRY(write_outputs(s, out_path, error));
done:
  g_strfreev(lines);
  sg_clip_tokenizer_free(tokenizer);
  return status;
}

int check_text_main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr,
            "usage: sgcheck text-clip|text-gemma2|text-conditioner|text-tokenize CASE OUT\n");
    return 2;
  }
  const char *kind = argv[0], *case_path = argv[1], *out_path = argv[2];
  sg_error error = {0};
  check_state s;
  memset(&s, 0, sizeof s);
  s.metadata = g_ptr_array_new_with_free_func(g_free);
  sg_status status = sg_safetensors_open(case_path, &s.file, &error);
  if (status == SG_OK) {
    const char *backend_name = case_meta(s.file, "backend", "onednn");
    sg_backend_kind backend_kind = SG_BACKEND_ONEDNN;
    if (strcmp(backend_name, "reference") == 0) {
      backend_kind = SG_BACKEND_REFERENCE;
    } else if (strcmp(backend_name, "onednn") != 0) {
      status = sg_fail(&error, SG_ERR_FORMAT, "%s: unknown backend '%s'", case_path,
                       backend_name);
    }
    int threads = (int)g_ascii_strtoll(case_meta(s.file, "threads", "0"), NULL, 10);
    if (status == SG_OK) {
      s.backend = sg_backend_new(backend_kind, threads, &error);
      if (!s.backend) status = error.status ? error.status : SG_ERR_BACKEND;
    }
    if (status == SG_OK) s.arena = sg_arena_new();
  }
  if (status == SG_OK) {
    if (strcmp(kind, "text-clip") == 0 || strcmp(kind, "text-gemma2") == 0) {
      status = run_encoder(&s, strcmp(kind, "text-clip") == 0, case_path, out_path, &error);
    } else if (strcmp(kind, "text-conditioner") == 0) {
      status = run_conditioner(&s, case_path, out_path, &error);
    } else if (strcmp(kind, "text-tokenize") == 0) {
      status = run_tokenize(&s, case_path, out_path, &error);
    } else {
      status = sg_fail(&error, SG_ERR_INVALID_ARGUMENT, "unknown check kind '%s'", kind);
    }
  }
  release(&s);
  if (status != SG_OK) {
    fprintf(stderr, "sgcheck %s: %s (%s)\n", kind, error.message, sg_status_name(status));
    return 1;
  }
  return 0;
}
