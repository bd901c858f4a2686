/* test_safetensors.c: unit tests for file input/output: safetensors reading and writing (round trip
 * and malformed files), weight folders and random weights, and the PNG writer. */
#include <glib.h>
#include <glib/gstdio.h>
#include <math.h>
#include <png.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "error.h"
#include "safetensors.h"
#include "snapgen.h"
#include "test.h"
#include "weights.h"

/* ---- helpers ---- */

/* A file of: 8-byte little-endian declared_length, the header text, data_size zero bytes. */
static void write_raw(const char *path, const char *header, uint64_t declared_length,
                      size_t data_size) {
  size_t header_size = strlen(header);
  size_t size = 8 + header_size + data_size;
  uint8_t *bytes = g_malloc0(size);
  for (int i = 0; i < 8; i++) bytes[i] = (uint8_t)(declared_length >> (8 * i));
  memcpy(bytes + 8, header, header_size);
  g_file_set_contents(path, (const char *)bytes, (gssize)size, NULL);
  g_free(bytes);
}

static void write_header(const char *path, const char *header, size_t data_size) {
  write_raw(path, header, strlen(header), data_size);
}

/* Opening must fail with `status`, a message naming the file and containing `needle`. */
static void expect_open_error(sg_test *t, const char *path, sg_status status, const char *needle,
                              int line) {
  sg_error error = {0};
  sg_safetensors *file = NULL;
  sg_status got = sg_safetensors_open(path, &file, &error);
  sg_test_check(t, got == status, __FILE__, line, "status %d, expected %d (%s)", got, status,
                error.message);
  sg_test_check(t, file == NULL, __FILE__, line, "no file handle on error");
  sg_test_check(t, strstr(error.message, path) != NULL, __FILE__, line,
                "message names the path: %s", error.message);
  sg_test_check(t, !needle || strstr(error.message, needle) != NULL, __FILE__, line,
                "message '%s' contains '%s'", error.message, needle ? needle : "");
  sg_test_check(t, strchr(error.message, '\n') == NULL, __FILE__, line, "one line");
  sg_safetensors_close(file);
}

static int count_files(const char *folder) {
  GDir *dir = g_dir_open(folder, 0, NULL);
  int count = 0;
  if (!dir) return -1;
  while (g_dir_read_name(dir)) count++;
  g_dir_close(dir);
  return count;
}

/* ---- safetensors ---- */

static void test_round_trip(sg_test *t) {
  char path[512];
  sg_test_path(t, "round.safetensors", path, sizeof path);
  float a[6] = {1, -2, 3.5f, 0, 1e-30f, -7};
  uint16_t h[4] = {0x3c00, 0xc000, 0x0001, 0x7bff}; /* f16 */
  uint16_t bf[4] = {0x3f80, 0x4000, 0xbf80, 0x0000};
  float s[1] = {42};
  sg_tensor tensors[5];
  int64_t da[2] = {2, 3}, dh[1] = {4}, dbf[4] = {1, 2, 2, 1}, dempty[2] = {0, 3};
  tensors[0] = sg_tensor_view(a, SG_F32, 2, da);
  tensors[1] = sg_tensor_view(h, SG_F16, 1, dh);
  tensors[2] = sg_tensor_view(bf, SG_BF16, 4, dbf);
  tensors[3] = sg_tensor_view(NULL, SG_F32, 2, dempty);
  tensors[4] = sg_tensor_view(s, SG_F32, 0, NULL);
  const char *names[5] = {"conv.weight", "half", "brain \"quoted\\\" \xc3\xbc", "empty", "scalar"};
  const char *metadata[] = {"kind", "op", "eps", "1e-05", "text", "line\nbreak \xe2\x9c\x93", NULL};
  sg_error error = {0};
  CHECK_INT(t, sg_safetensors_write(path, 5, names, tensors, metadata, &error), SG_OK);
  char folder[512];
  sg_test_path(t, "", folder, sizeof folder);
  CHECK_INT(t, count_files(folder), 1); /* no temporary file left behind */

  /* The data area starts 8-byte aligned. */
  char *contents = NULL;
  gsize size = 0;
  CHECK(t, g_file_get_contents(path, &contents, &size, NULL));
  uint64_t header_length = 0;
  for (int i = 7; i >= 0; i--) header_length = (header_length << 8) | (uint8_t)contents[i];
  CHECK_INT(t, header_length % 8, 0);
  CHECK_INT(t, size, 8 + header_length + 24 + 8 + 8 + 4);
  g_free(contents);

  sg_safetensors *file = NULL;
  CHECK_INT(t, sg_safetensors_open(path, &file, &error), SG_OK);
  if (!file) return;
  CHECK(t, strcmp(sg_safetensors_path(file), path) == 0);
  CHECK_INT(t, sg_safetensors_count(file), 5);
  const sg_st_entry *e = sg_safetensors_find(file, "conv.weight");
  CHECK(t, e && e->dtype == SG_F32 && e->ndim == 2 && e->dims[0] == 2 && e->dims[1] == 3);
  CHECK(t, e && e->nbytes == 24 && memcmp(e->data, a, 24) == 0);
  CHECK(t, e && ((uintptr_t)e->data % 4) == 0);
  e = sg_safetensors_find(file, "half");
  CHECK(t, e && e->dtype == SG_F16 && e->nbytes == 8 && memcmp(e->data, h, 8) == 0);
  e = sg_safetensors_find(file, names[2]);
  CHECK(t, e && e->dtype == SG_BF16 && e->ndim == 4 && e->dims[1] == 2 &&
               memcmp(e->data, bf, 8) == 0);
  e = sg_safetensors_find(file, "empty");
  CHECK(t, e && e->nbytes == 0 && e->ndim == 2 && e->dims[0] == 0);
  e = sg_safetensors_find(file, "scalar");
  CHECK(t, e && e->ndim == 0 && e->nbytes == 4 && *(const float *)e->data == 42.0f);
  CHECK(t, sg_safetensors_find(file, "missing") == NULL);
  CHECK(t, sg_safetensors_entry(file, 5) == NULL && sg_safetensors_entry(file, -1) == NULL);
  CHECK(t, sg_safetensors_entry(file, 0) != NULL);
  const char *kind = sg_safetensors_metadata(file, "kind");
  CHECK(t, kind && strcmp(kind, "op") == 0);
  const char *text = sg_safetensors_metadata(file, "text");
  CHECK(t, text && strcmp(text, "line\nbreak \xe2\x9c\x93") == 0);
  CHECK(t, sg_safetensors_metadata(file, "nope") == NULL);
  sg_safetensors_close(file);

  /* Writing over an existing file replaces it; no tensors and no metadata is a valid file. */
  CHECK_INT(t, sg_safetensors_write(path, 0, NULL, NULL, NULL, &error), SG_OK);
  CHECK_INT(t, sg_safetensors_open(path, &file, &error), SG_OK);
  if (file) CHECK_INT(t, sg_safetensors_count(file), 0);
  sg_safetensors_close(file);
}

static void test_write_errors(sg_test *t) {
  char path[512];
  sg_error error = {0};
  float a[2] = {1, 2};
  sg_tensor tensors[2] = {sg_tensor_1d(a, 2), sg_tensor_1d(a, 2)};
  const char *names[2] = {"x", "x"};
  sg_test_path(t, "no-such-folder/out.safetensors", path, sizeof path);
  CHECK_INT(t, sg_safetensors_write(path, 1, names, tensors, NULL, &error), SG_ERR_IO);
  CHECK(t, strstr(error.message, path) != NULL);
  sg_test_path(t, "dup.safetensors", path, sizeof path);
  CHECK_INT(t, sg_safetensors_write(path, 2, names, tensors, NULL, &error),
            SG_ERR_INVALID_ARGUMENT);
  CHECK(t, !g_file_test(path, G_FILE_TEST_EXISTS));
  const char *reserved[1] = {"__metadata__"};
  CHECK_INT(t, sg_safetensors_write(path, 1, reserved, tensors, NULL, &error),
            SG_ERR_INVALID_ARGUMENT);
  char folder[512];
  sg_test_path(t, "", folder, sizeof folder);
  CHECK_INT(t, count_files(folder), 0);
}

static void test_malformed_files(sg_test *t) {
  char path[512];
  sg_test_path(t, "bad.safetensors", path, sizeof path);
  const char *good = "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";

  g_file_set_contents(path, "", 0, NULL);
  expect_open_error(t, path, SG_ERR_FORMAT, "too short", __LINE__);
  g_file_set_contents(path, "\x10\x00\x00", 3, NULL);
  expect_open_error(t, path, SG_ERR_FORMAT, "too short", __LINE__);
  write_raw(path, good, 1000, 8);
  expect_open_error(t, path, SG_ERR_FORMAT, "past the end", __LINE__);
  write_raw(path, good, (uint64_t)1 << 40, 8);
  expect_open_error(t, path, SG_ERR_FORMAT, "exceeds", __LINE__);
  write_raw(path, good, UINT64_MAX, 8);
  expect_open_error(t, path, SG_ERR_FORMAT, "exceeds", __LINE__);
  write_raw(path, good, 0, 8); /* empty header text */
  expect_open_error(t, path, SG_ERR_FORMAT, NULL, __LINE__);
  /* Truncated: a valid file missing its last data bytes. */
  write_header(path, good, 4);
  expect_open_error(t, path, SG_ERR_FORMAT, "tensor 'x'", __LINE__);
  write_header(path, "{\"x\": {\"dtype\": \"F32\", ", 8);
  expect_open_error(t, path, SG_ERR_FORMAT, "JSON", __LINE__);
  write_header(path, "[1, 2]", 0);
  expect_open_error(t, path, SG_ERR_FORMAT, "object", __LINE__);
  write_header(path, "{\"x\": 5}", 0);
  expect_open_error(t, path, SG_ERR_FORMAT, "tensor 'x'", __LINE__);
  /* An integer buffer (older CLIP files carry I64 position_ids) is validated, then skipped. */
  write_header(path, "{\"ids\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]}}", 16);
  {
    sg_error error = {0};
    sg_safetensors *file = NULL;
    CHECK_INT(t, sg_safetensors_open(path, &file, &error), SG_OK);
    CHECK(t, file != NULL && sg_safetensors_count(file) == 0);
    CHECK(t, file != NULL && sg_safetensors_find(file, "ids") == NULL);
    sg_safetensors_close(file);
  }
  write_header(path, "{\"ids\":{\"dtype\":\"I64\",\"shape\":[3],\"data_offsets\":[0,16]}}", 16);
  expect_open_error(t, path, SG_ERR_FORMAT, "tensor 'ids'", __LINE__);
  write_header(path, "{\"d\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]}}", 16);
  expect_open_error(t, path, SG_ERR_FORMAT, "'F64'", __LINE__);
  write_header(path, "{\"d\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
  expect_open_error(t, path, SG_ERR_FORMAT, "dtype", __LINE__);
  /* shape x dtype size != byte size */
  write_header(path, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 16);
  expect_open_error(t, path, SG_ERR_FORMAT, "tensor 'w'", __LINE__);
  write_header(path, "{\"w\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,12]}}", 16);
  expect_open_error(t, path, SG_ERR_FORMAT, "need 6", __LINE__);
  write_header(path, "{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8);
  expect_open_error(t, path, SG_ERR_FORMAT, "shape", __LINE__);
  write_header(path, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,8]}}", 8);
  expect_open_error(t, path, SG_ERR_FORMAT, "shape", __LINE__);
  write_header(path, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,2],\"data_offsets\":[0,8]}}",
               8);
  expect_open_error(t, path, SG_ERR_FORMAT, "dimensions", __LINE__);
  write_header(path,
               "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
               "\"data_offsets\":[0,8]}}",
               8);
  expect_open_error(t, path, SG_ERR_FORMAT, "too large", __LINE__);
  /* offsets out of range, reversed, malformed */
  write_header(path, "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8);
  expect_open_error(t, path, SG_ERR_FORMAT, "outside the data area", __LINE__);
  write_header(path, "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8);
  expect_open_error(t, path, SG_ERR_FORMAT, "data_offsets", __LINE__);
  write_header(path, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 8);
  expect_open_error(t, path, SG_ERR_FORMAT, "data_offsets", __LINE__);
  write_header(path, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 8);
  expect_open_error(t, path, SG_ERR_FORMAT, "data_offsets", __LINE__);
  /* overlapping tensors, in either header order, and one nested inside another */
  write_header(path,
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               12);
  expect_open_error(t, path, SG_ERR_FORMAT, "overlaps", __LINE__);
  write_header(path,
               "{\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
               "\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[20,24]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
               24);
  expect_open_error(t, path, SG_ERR_FORMAT, "tensor 'a': data overlaps tensor 'b'", __LINE__);
  /* metadata must map strings to strings */
  write_header(path, "{\"__metadata__\":{\"k\":1}}", 0);
  expect_open_error(t, path, SG_ERR_FORMAT, "__metadata__", __LINE__);
  write_header(path, "{\"__metadata__\":\"text\"}", 0);
  expect_open_error(t, path, SG_ERR_FORMAT, "__metadata__", __LINE__);
  /* missing file */
  char missing[512];
  sg_test_path(t, "missing.safetensors", missing, sizeof missing);
  expect_open_error(t, missing, SG_ERR_IO, NULL, __LINE__);

  /* Accepted edge cases: empty tensors anywhere, adjacent tensors, metadata only. */
  write_header(path,
               "{\"__metadata__\":{\"a\":\"b\"},"
               "\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]},"
               "\"e\":{\"dtype\":\"F32\",\"shape\":[3,0],\"data_offsets\":[2,2]},"
               "\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[4,8]}}",
               8);
  sg_error error = {0};
  sg_safetensors *file = NULL;
  CHECK_MSG(t, sg_safetensors_open(path, &file, &error) == SG_OK, "%s", error.message);
  if (file) CHECK_INT(t, sg_safetensors_count(file), 3);
  sg_safetensors_close(file);
}

/* ---- weights ---- */

static void write_tensor_file(const char *path, int count, const char *const *names,
                              const sg_tensor *tensors) {
  sg_error error = {0};
  if (sg_safetensors_write(path, count, names, tensors, NULL, &error) != SG_OK) {
    fprintf(stderr, "%s\n", error.message);
  }
}

static void test_weights_folder(sg_test *t) {
  char folder[512], path[512];
  sg_test_path(t, "", folder, sizeof folder);
  float w[6] = {1, 2, 3, 4, 5, 6};
  uint16_t half[3] = {0x3c00, 0x4000, 0xbc00};   /* 1, 2, -1 as f16 */
  uint16_t bhalf[2] = {0x3f80, 0xc040};           /* 1, -3 as bf16 */
  float bias[3] = {0.5f, 0, -0.5f};
  const char *names_a[2] = {"layer.weight", "layer.bias"};
  sg_tensor tensors_a[2] = {sg_tensor_2d(w, 2, 3), sg_tensor_1d(bias, 3)};
  write_tensor_file(sg_test_path(t, "a.safetensors", path, sizeof path), 2, names_a, tensors_a);
  int64_t d3[1] = {3}, d2[1] = {2};
  const char *names_b[3] = {"norm.weight", "other", "unused.weight"};
  sg_tensor tensors_b[3] = {sg_tensor_view(half, SG_F16, 1, d3),
                            sg_tensor_view(bhalf, SG_BF16, 1, d2), sg_tensor_1d(bias, 1)};
  char path_b[512];
  write_tensor_file(sg_test_path(t, "b.safetensors", path_b, sizeof path_b), 3, names_b,
                    tensors_b);
  g_file_set_contents(sg_test_path(t, "config.json", path, sizeof path), "{}", 2, NULL);

  sg_error error = {0};
  sg_weights *weights = NULL;
  CHECK_MSG(t, sg_weights_open_folder(folder, &weights, &error) == SG_OK, "%s", error.message);
  if (!weights) return;
  sg_tensor out;
  int64_t shape[2] = {2, 3};
  CHECK_INT(t, sg_weights_get(weights, "layer.weight", 2, shape, &out, &error), SG_OK);
  CHECK(t, out.dtype == SG_F32 && out.ndim == 2 && ((float *)out.data)[5] == 6.0f);
  CHECK_INT(t, sg_weights_owned_bytes(weights), 0); /* f32 is used in place */
  CHECK_INT(t, sg_weights_get(weights, "norm.weight", 1, d3, &out, &error), SG_OK);
  CHECK(t, ((float *)out.data)[0] == 1 && ((float *)out.data)[1] == 2 &&
               ((float *)out.data)[2] == -1);
  CHECK_INT(t, sg_weights_owned_bytes(weights), 12);
  float *first_copy = out.data;
  CHECK_INT(t, sg_weights_get(weights, "norm.weight", 1, d3, &out, &error), SG_OK);
  CHECK(t, out.data == first_copy); /* fetched once, then reused */
  CHECK_INT(t, sg_weights_get(weights, "other", 1, d2, &out, &error), SG_OK);
  CHECK(t, ((float *)out.data)[0] == 1 && ((float *)out.data)[1] == -3);
  CHECK_INT(t, sg_weights_parameter_count(weights), 6 + 3 + 2);

  int64_t wrong[2] = {3, 2};
  CHECK_INT(t, sg_weights_get(weights, "layer.weight", 2, wrong, &out, &error), SG_ERR_FORMAT);
  char expected[1024], a_path[512];
  sg_test_path(t, "a.safetensors", a_path, sizeof a_path);
  g_snprintf(expected, sizeof expected,
             "%s: tensor 'layer.weight' has shape [2, 3], expected [3, 2]", a_path);
  CHECK_MSG(t, strcmp(error.message, expected) == 0, "%s", error.message);
  CHECK_INT(t, sg_weights_get(weights, "layer.bias", 2, wrong, &out, &error), SG_ERR_FORMAT);
  CHECK(t, strstr(error.message, "has shape [3], expected [3, 2]") != NULL);

  CHECK_INT(t, sg_weights_get(weights, "nope", 1, d2, &out, &error), SG_ERR_FORMAT);
  g_snprintf(expected, sizeof expected, "%s: missing tensor 'nope'", folder);
  CHECK_MSG(t, strcmp(error.message, expected) == 0, "%s", error.message);
  int found = 1;
  CHECK_INT(t, sg_weights_get_optional(weights, "nope", 1, d2, &out, &found, &error), SG_OK);
  CHECK_INT(t, found, 0);

  char **unused = sg_weights_unused_names(weights);
  CHECK(t, unused && unused[0] && strcmp(unused[0], "layer.bias") == 0 && unused[1] &&
               strcmp(unused[1], "unused.weight") == 0 && !unused[2]);
  sg_weights_free_names(unused);
  sg_weights_free(weights);

  /* A tensor in two files is an error naming both. */
  write_tensor_file(sg_test_path(t, "c.safetensors", path, sizeof path), 1, names_a, tensors_a);
  CHECK_INT(t, sg_weights_open_folder(folder, &weights, &error), SG_ERR_FORMAT);
  CHECK(t, weights == NULL && strstr(error.message, "'layer.weight'") &&
               strstr(error.message, "a.safetensors") && strstr(error.message, "c.safetensors"));
}

static void test_weights_bad_values(sg_test *t) {
  char folder[512], path[512];
  sg_test_path(t, "", folder, sizeof folder);
  float values[3] = {1, NAN, 2};
  uint16_t half_inf[2] = {0x3c00, 0x7c00};
  int64_t d2[1] = {2};
  const char *names[2] = {"nan", "inf"};
  sg_tensor tensors[2] = {sg_tensor_1d(values, 3), sg_tensor_view(half_inf, SG_F16, 1, d2)};
  write_tensor_file(sg_test_path(t, "w.safetensors", path, sizeof path), 2, names, tensors);
  sg_error error = {0};
  sg_weights *weights = NULL;
  CHECK_INT(t, sg_weights_open_folder(folder, &weights, &error), SG_OK);
  if (!weights) return;
  sg_tensor out;
  int64_t d3[1] = {3};
  CHECK_INT(t, sg_weights_get(weights, "nan", 1, d3, &out, &error), SG_ERR_FORMAT);
  char expected[1024];
  g_snprintf(expected, sizeof expected, "%s: tensor 'nan' contains NaN/Inf values", path);
  CHECK_MSG(t, strcmp(error.message, expected) == 0, "%s", error.message);
  CHECK_INT(t, sg_weights_get(weights, "inf", 1, d2, &out, &error), SG_ERR_FORMAT);
  CHECK(t, strstr(error.message, "'inf' contains NaN/Inf") != NULL);
  CHECK_INT(t, sg_weights_parameter_count(weights), 0);
  sg_weights_free(weights);

  /* bf16 files are widened on all cores above 2^20 values: exact values, and one -Inf or NaN
   * anywhere (here the last value of a large tensor) is found. */
  const int64_t big = (1 << 20) + 3;
  uint16_t *bf16 = g_new(uint16_t, big);
  for (int64_t i = 0; i < big; i++) bf16[i] = (uint16_t)(0x3f80u + (uint32_t)(i % 977));
  bf16[5] = 0xc000u; /* -2 */
  bf16[6] = 0x0001u; /* the smallest subnormal */
  int64_t dbig[1] = {big};
  const char *bf_names[3] = {"good", "bad_inf", "bad_nan"};
  uint16_t *all = g_new(uint16_t, 3 * big);
  for (int k = 0; k < 3; k++) memcpy(all + k * big, bf16, (size_t)big * sizeof *bf16);
  all[2 * big - 1] = 0xff80u; /* -Inf */
  all[3 * big - 1] = 0x7fc1u; /* NaN */
  sg_tensor bf_tensors[3];
  for (int k = 0; k < 3; k++) bf_tensors[k] = sg_tensor_view(all + k * big, SG_BF16, 1, dbig);
  char bf_folder[512];
  sg_test_path(t, "bf16", bf_folder, sizeof bf_folder);
  g_mkdir_with_parents(bf_folder, 0755);
  char bf_path[600];
  g_snprintf(bf_path, sizeof bf_path, "%s/w.safetensors", bf_folder);
  write_tensor_file(bf_path, 3, bf_names, bf_tensors);
  CHECK_INT(t, sg_weights_open_folder(bf_folder, &weights, &error), SG_OK);
  if (weights) {
    CHECK_INT(t, sg_weights_get(weights, "good", 1, dbig, &out, &error), SG_OK);
    int exact = out.dtype == SG_F32;
    const float *got = out.data;
    for (int64_t i = 0; exact && i < big; i++) exact = got[i] == sg_bf16_to_f32(bf16[i]);
    CHECK_MSG(t, exact, "bf16 widening changed a value");
    CHECK_INT(t, sg_weights_get(weights, "bad_inf", 1, dbig, &out, &error), SG_ERR_FORMAT);
    CHECK(t, strstr(error.message, "'bad_inf' contains NaN/Inf") != NULL);
    CHECK_INT(t, sg_weights_get(weights, "bad_nan", 1, dbig, &out, &error), SG_ERR_FORMAT);
    CHECK(t, strstr(error.message, "'bad_nan' contains NaN/Inf") != NULL);
    sg_weights_free(weights);
  }
  g_free(all);
  g_free(bf16);

  /* Folders: missing is an I/O error, one without safetensors files a format error. */
  char empty[512];
  sg_test_path(t, "empty", empty, sizeof empty);
  CHECK_INT(t, sg_weights_open_folder(empty, &weights, &error), SG_ERR_IO);
  CHECK(t, strstr(error.message, empty) != NULL);
  g_mkdir(empty, 0755);
  CHECK_INT(t, sg_weights_open_folder(empty, &weights, &error), SG_ERR_FORMAT);
  CHECK(t, strstr(error.message, empty) != NULL);
  /* A broken file in the folder fails the whole folder. */
  g_file_set_contents(sg_test_path(t, "empty/x.safetensors", path, sizeof path), "", 0, NULL);
  CHECK_INT(t, sg_weights_open_folder(empty, &weights, &error), SG_ERR_FORMAT);
  CHECK(t, strstr(error.message, path) != NULL);
}

static void test_weights_random(sg_test *t) {
  sg_weights *a = sg_weights_new_random(7), *b = sg_weights_new_random(7);
  sg_weights *c = sg_weights_new_random(8);
  sg_error error = {0};
  sg_tensor ta, tb, tc;
  int64_t conv[4] = {8, 4, 3, 3};
  CHECK_INT(t, sg_weights_get(a, "conv_in.weight", 4, conv, &ta, &error), SG_OK);
  CHECK_INT(t, sg_weights_get(b, "conv_in.weight", 4, conv, &tb, &error), SG_OK);
  CHECK_INT(t, sg_weights_get(c, "conv_in.weight", 4, conv, &tc, &error), SG_OK);
  CHECK(t, memcmp(ta.data, tb.data, 288 * sizeof(float)) == 0);
  CHECK(t, memcmp(ta.data, tc.data, 288 * sizeof(float)) != 0);
  float bound = 1.0f / 6.0f; /* fan_in = 4 * 3 * 3 */
  float largest = 0;
  for (int i = 0; i < 288; i++) largest = fmaxf(largest, fabsf(((float *)ta.data)[i]));
  CHECK(t, largest <= bound && largest > 0.8f * bound);
  /* another name, other values */
  CHECK_INT(t, sg_weights_get(b, "conv_out.weight", 4, conv, &tb, &error), SG_OK);
  CHECK(t, memcmp(ta.data, tb.data, 288 * sizeof(float)) != 0);
  /* asking again gives the same memory; a different shape is an error */
  sg_tensor again;
  CHECK_INT(t, sg_weights_get(a, "conv_in.weight", 4, conv, &again, &error), SG_OK);
  CHECK(t, again.data == ta.data);
  int64_t other[2] = {8, 36};
  CHECK_INT(t, sg_weights_get(a, "conv_in.weight", 2, other, &again, &error), SG_ERR_FORMAT);
  CHECK(t, strstr(error.message, "has shape [8, 4, 3, 3], expected [8, 36]") != NULL);
  /* 1-D: norm scales are ones, everything else zeros */
  int64_t d4[1] = {4};
  const char *ones[] = {"down.0.res.1.norm1.weight", "mid.attn.0.blocks.0.attn1.norm_q.weight",
                        "norm_out.weight", "x.gamma"};
  const char *zeros[] = {"norm_out.bias", "conv_in.bias", "layer.weight", "enorm.weight"};
  for (int i = 0; i < 4; i++) {
    sg_tensor v;
    CHECK_INT(t, sg_weights_get(a, ones[i], 1, d4, &v, &error), SG_OK);
    CHECK_MSG(t, ((float *)v.data)[3] == 1.0f, "%s is ones", ones[i]);
    CHECK_INT(t, sg_weights_get(a, zeros[i], 1, d4, &v, &error), SG_OK);
    CHECK_MSG(t, ((float *)v.data)[3] == 0.0f, "%s is zeros", zeros[i]);
  }
  int found = 0;
  CHECK_INT(t, sg_weights_get_optional(a, "anything", 1, d4, &ta, &found, &error), SG_OK);
  CHECK_INT(t, found, 1);
  CHECK_INT(t, sg_weights_parameter_count(a), 288 + 8 * 4 + 4);
  CHECK_INT(t, sg_weights_owned_bytes(a), (288 + 8 * 4 + 4) * 4);
  char **unused = sg_weights_unused_names(a);
  CHECK(t, unused && unused[0] == NULL);
  sg_weights_free_names(unused);
  sg_weights_free(a);
  sg_weights_free(b);
  sg_weights_free(c);
}

/* ---- PNG ---- */

typedef struct {
  int width, height;
  uint8_t *pixels;
  char *text[4][2];
  int text_compression[4];
  int text_count;
} png_readback;

static int read_png(const char *path, png_readback *out) {
  memset(out, 0, sizeof *out);
  FILE *stream = fopen(path, "rb");
  if (!stream) return 0;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, NULL);
    fclose(stream);
    return 0;
  }
  png_init_io(png, stream);
  png_read_png(png, info, PNG_TRANSFORM_IDENTITY, NULL);
  int ok = png_get_color_type(png, info) == PNG_COLOR_TYPE_RGB_ALPHA &&
           png_get_bit_depth(png, info) == 8;
  out->width = (int)png_get_image_width(png, info);
  out->height = (int)png_get_image_height(png, info);
  png_bytepp rows = png_get_rows(png, info);
  out->pixels = g_malloc((size_t)out->width * out->height * 4);
  for (int y = 0; y < out->height; y++) {
    memcpy(out->pixels + (size_t)y * out->width * 4, rows[y], (size_t)out->width * 4);
  }
  png_textp texts;
  int count = 0;
  png_get_text(png, info, &texts, &count);
  for (int i = 0; i < count && i < 4; i++) {
    out->text[i][0] = g_strdup(texts[i].key);
    out->text[i][1] = g_strdup(texts[i].text);
    out->text_compression[i] = texts[i].compression;
  }
  out->text_count = count;
  png_destroy_read_struct(&png, &info, NULL);
  fclose(stream);
  return ok;
}

static void free_readback(png_readback *r) {
  g_free(r->pixels);
  for (int i = 0; i < 4; i++) {
    g_free(r->text[i][0]);
    g_free(r->text[i][1]);
  }
}

static void test_png_round_trip(sg_test *t) {
  char path[512], folder[512];
  sg_test_path(t, "", folder, sizeof folder);
  sg_test_path(t, "out.png", path, sizeof path);
  uint8_t rgba[3 * 2 * 4];
  for (int i = 0; i < 24; i++) rgba[i] = (uint8_t)(i * 11);
  const char *text[] = {"parameters", "seed 42, 4 steps", "Title", "caf\xc3\xa9 \xe2\x98\x95",
                        NULL};
  sg_error error = {0};
  CHECK_MSG(t, sg_write_png(path, rgba, 3, 2, text, &error) == SG_OK, "%s", error.message);
  CHECK_INT(t, count_files(folder), 1);
  png_readback r;
  CHECK(t, read_png(path, &r));
  CHECK(t, r.width == 3 && r.height == 2 && r.pixels && memcmp(r.pixels, rgba, 24) == 0);
  CHECK_INT(t, r.text_count, 2);
  CHECK(t, r.text[0][0] && strcmp(r.text[0][0], "parameters") == 0 &&
               strcmp(r.text[0][1], "seed 42, 4 steps") == 0);
  CHECK_INT(t, r.text_compression[0], PNG_TEXT_COMPRESSION_NONE); /* tEXt */
  CHECK(t, r.text[1][0] && strcmp(r.text[1][1], "caf\xc3\xa9 \xe2\x98\x95") == 0);
  CHECK_INT(t, r.text_compression[1], PNG_ITXT_COMPRESSION_NONE); /* iTXt */
  free_readback(&r);
  /* Overwrite with another image and no text. */
  memset(rgba, 200, sizeof rgba);
  CHECK_INT(t, sg_write_png(path, rgba, 2, 3, NULL, &error), SG_OK);
  CHECK(t, read_png(path, &r));
  CHECK(t, r.width == 2 && r.height == 3 && r.text_count == 0 && r.pixels[23] == 200);
  free_readback(&r);
  CHECK_INT(t, count_files(folder), 1);
}

static void test_png_errors(sg_test *t) {
  char path[512], folder[512];
  sg_test_path(t, "", folder, sizeof folder);
  uint8_t rgba[64 * 64 * 4];
  sg_error error = {0};
  sg_test_path(t, "missing-folder/out.png", path, sizeof path);
  CHECK_INT(t, sg_write_png(path, rgba, 4, 4, NULL, &error), SG_ERR_IO);
  CHECK(t, strstr(error.message, path) != NULL);
  sg_test_path(t, "x.png", path, sizeof path);
  CHECK_INT(t, sg_write_png(path, rgba, 0, 4, NULL, &error), SG_ERR_INVALID_ARGUMENT);
  CHECK_INT(t, sg_write_png(path, NULL, 4, 4, NULL, &error), SG_ERR_INVALID_ARGUMENT);
  const char *bad_key[] = {"", "value", NULL};
  CHECK_INT(t, sg_write_png(path, rgba, 4, 4, bad_key, &error), SG_ERR_INVALID_ARGUMENT);
  const char *bad_value[] = {"key", "\xff\xfe", NULL};
  CHECK_INT(t, sg_write_png(path, rgba, 4, 4, bad_value, &error), SG_ERR_INVALID_ARGUMENT);
  CHECK_INT(t, count_files(folder), 0);
  /* The final rename fails when a folder has the name: error, temporary file removed. */
  sg_test_path(t, "taken", path, sizeof path);
  g_mkdir(path, 0755);
  CHECK_INT(t, sg_write_png(path, rgba, 4, 4, NULL, &error), SG_ERR_IO);
  CHECK(t, strstr(error.message, path) != NULL);
  const char *one_name[1] = {"x"};
  sg_tensor one = sg_tensor_1d((float *)rgba, 4);
  CHECK_INT(t, sg_safetensors_write(path, 1, one_name, &one, NULL, &error), SG_ERR_IO);
  CHECK_INT(t, count_files(folder), 1);
  g_rmdir(path);

  /* A full disk, simulated with a file size limit: the write fails, nothing is left behind. */
  uint32_t state = 12345; /* xorshift noise: incompressible, so the PNG exceeds the limit */
  for (size_t i = 0; i < sizeof rgba; i++) {
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    rgba[i] = (uint8_t)state;
  }
  struct rlimit saved;
  getrlimit(RLIMIT_FSIZE, &saved);
  struct rlimit small = {2000, saved.rlim_max};
  void (*saved_handler)(int) = signal(SIGXFSZ, SIG_IGN);
  if (setrlimit(RLIMIT_FSIZE, &small) == 0) {
    sg_status png_status = sg_write_png(path, rgba, 64, 64, NULL, &error);
    char png_message[1024];
    g_strlcpy(png_message, error.message, sizeof png_message);
    float big[1024] = {0};
    const char *name[1] = {"big"};
    sg_tensor tensor = sg_tensor_1d(big, 1024);
    char st_path[512];
    sg_test_path(t, "big.safetensors", st_path, sizeof st_path);
    sg_status st_status = sg_safetensors_write(st_path, 1, name, &tensor, NULL, &error);
    setrlimit(RLIMIT_FSIZE, &saved);
    CHECK_INT(t, png_status, SG_ERR_IO);
    CHECK_MSG(t, strstr(png_message, path) != NULL, "%s", png_message);
    CHECK_INT(t, st_status, SG_ERR_IO);
    CHECK(t, strstr(error.message, st_path) != NULL);
    CHECK_INT(t, count_files(folder), 0);
  }
  signal(SIGXFSZ, saved_handler);
}

/* Token tables stay in the file's dtype; rows convert like sg_weights_get's widening, a NaN is
 * found in the row that holds it, and the table counts as used. */
static void test_weights_table(sg_test *t) {
  char folder[512], path[512];
  sg_test_path(t, "", folder, sizeof folder);
  float values[6] = {1.5f, -2.0f, 0.25f, 3.0f, -0.5f, 8.0f};
  uint16_t bits[6];
  for (int i = 0; i < 6; i++) bits[i] = sg_f32_to_bf16(values[i]);
  bits[5] = 0x7fc0; /* NaN in row 2 */
  int64_t dims[2] = {3, 2};
  const char *names[2] = {"embed.weight", "copy.weight"};
  sg_tensor tensors[2] = {sg_tensor_view(bits, SG_BF16, 2, dims),
                          sg_tensor_view(bits, SG_BF16, 2, dims)};
  write_tensor_file(sg_test_path(t, "t.safetensors", path, sizeof path), 2, names, tensors);
  sg_error error = {0};
  sg_weights *weights = NULL;
  CHECK_INT(t, sg_weights_open_folder(folder, &weights, &error), SG_OK);
  if (!weights) return;
  sg_tensor table;
  int found = 0;
  CHECK_INT(t, sg_weights_get_table(weights, "embed.weight", 3, 2, &table, &found, &error), SG_OK);
  CHECK(t, found && table.dtype == SG_BF16);
  float row[2];
  CHECK_INT(t, sg_weights_table_row(&table, "embed.weight", 1, row, &error), SG_OK);
  CHECK(t, row[0] == 0.25f && row[1] == 3.0f);
  CHECK_INT(t, sg_weights_table_row(&table, "embed.weight", 2, row, &error), SG_ERR_FORMAT);
  CHECK_MSG(t, strstr(error.message, "'embed.weight' contains NaN/Inf values (row 2)") != NULL,
            "%s", error.message);
  CHECK_INT(t, sg_weights_table_row(&table, "embed.weight", 3, row, &error),
            SG_ERR_INVALID_ARGUMENT);
  CHECK_INT(t, sg_weights_get_table(weights, "embed.weight", 2, 3, &table, NULL, &error),
            SG_ERR_FORMAT);
  CHECK(t, strstr(error.message, "has shape [3, 2], expected [2, 3]") != NULL);
  CHECK_INT(t, sg_weights_get_table(weights, "nope", 3, 2, &table, &found, &error), SG_OK);
  CHECK(t, !found);
  CHECK_INT(t, sg_weights_get_table(weights, "nope", 3, 2, &table, NULL, &error), SG_ERR_FORMAT);
  CHECK(t, strstr(error.message, "missing tensor 'nope'") != NULL);
  CHECK_INT(t, sg_weights_get_table(weights, "embed.weight", 3, 2, &table, NULL, &error), SG_OK);
  CHECK_INT(t, sg_weights_parameter_count(weights), 6); /* counted once */
  char **unused = sg_weights_unused_names(weights);
  CHECK(t, unused && unused[0] && strcmp(unused[0], "copy.weight") == 0 && !unused[1]);
  sg_weights_free_names(unused);
  sg_weights_free(weights);
}

/* sg_weights_keep_bf16_linears: bf16 matrices come as SG_BF16 views of the file's bytes (no
 * copy), checked for NaN/Inf with the tensor named; f32 matrices still come as f32; a matrix
 * held as bf16 cannot then be asked for as f32; int8 storage wins when both are asked for, and
 * quantizes bf16 values without widening the matrix first, to the same codes. */
static void test_weights_bf16_linears(sg_test *t) {
  char folder[512], path[512];
  sg_test_path(t, "", folder, sizeof folder);
  float values[6] = {1.5f, -2.0f, 0.25f, 3.0f, -0.5f, 8.0f};
  uint16_t bits[6], bad[6];
  for (int i = 0; i < 6; i++) bits[i] = bad[i] = sg_f32_to_bf16(values[i]);
  bad[4] = 0xff80u; /* -Inf */
  int64_t dims[2] = {3, 2};
  const char *names[3] = {"fc.weight", "bad.weight", "f32.weight"};
  sg_tensor tensors[3] = {sg_tensor_view(bits, SG_BF16, 2, dims),
                          sg_tensor_view(bad, SG_BF16, 2, dims), sg_tensor_2d(values, 3, 2)};
  write_tensor_file(sg_test_path(t, "l.safetensors", path, sizeof path), 3, names, tensors);
  sg_error error = {0};
  sg_weights *weights = NULL;
  CHECK_INT(t, sg_weights_open_folder(folder, &weights, &error), SG_OK);
  if (!weights) return;
  sg_weights_keep_bf16_linears(weights);
  sg_tensor out;
  CHECK_INT(t, sg_weights_get_linear(weights, "fc.weight", 3, 2, &out, &error), SG_OK);
  CHECK(t, out.dtype == SG_BF16 && out.ndim == 2 && out.dims[0] == 3 && out.dims[1] == 2);
  CHECK(t, memcmp(out.data, bits, sizeof bits) == 0 && out.constant_id != 0);
  CHECK_INT(t, sg_weights_owned_bytes(weights), 0); /* the file's bytes, not a copy */
  const void *first = out.data;
  CHECK_INT(t, sg_weights_get_linear(weights, "fc.weight", 3, 2, &out, &error), SG_OK);
  CHECK(t, out.data == first && out.dtype == SG_BF16);
  int64_t d2[2] = {3, 2};
  CHECK_INT(t, sg_weights_get(weights, "fc.weight", 2, d2, &out, &error), SG_ERR_INVALID_ARGUMENT);
  CHECK_MSG(t, strstr(error.message, "'fc.weight' asked for in another form") != NULL, "%s",
            error.message);
  CHECK_INT(t, sg_weights_get_linear(weights, "bad.weight", 3, 2, &out, &error), SG_ERR_FORMAT);
  char expected[1024];
  g_snprintf(expected, sizeof expected, "%s: tensor 'bad.weight' contains NaN/Inf values", path);
  CHECK_MSG(t, strcmp(error.message, expected) == 0, "%s", error.message);
  CHECK_INT(t, sg_weights_get_linear(weights, "f32.weight", 3, 2, &out, &error), SG_OK);
  CHECK(t, out.dtype == SG_F32 && ((float *)out.data)[3] == 3.0f);
  CHECK_INT(t, sg_weights_get_linear(weights, "fc.weight", 2, 3, &out, &error), SG_ERR_FORMAT);
  CHECK(t, strstr(error.message, "has shape [3, 2], expected [2, 3]") != NULL);
  CHECK_INT(t, sg_weights_parameter_count(weights), 12);
  sg_weights_free(weights);

  CHECK_INT(t, sg_weights_open_folder(folder, &weights, &error), SG_OK);
  if (!weights) return;
  sg_weights_keep_bf16_linears(weights);
  sg_weights_store_linears_int8(weights);
  CHECK_INT(t, sg_weights_get_linear(weights, "fc.weight", 3, 2, &out, &error), SG_OK);
  CHECK(t, out.dtype == SG_I8 && out.scales != NULL);
  /* quantized straight from the bf16 values: the same codes and scales as from f32 values */
  float widened[6], scales[3];
  int8_t codes[6];
  for (int i = 0; i < 6; i++) widened[i] = sg_bf16_to_f32(bits[i]);
  sg_quantize_rows_int8(widened, 3, 2, codes, scales);
  CHECK(t, memcmp(out.data, codes, sizeof codes) == 0 &&
               memcmp(out.scales, scales, sizeof scales) == 0);
  CHECK_INT(t, sg_weights_get_linear(weights, "bad.weight", 3, 2, &out, &error), SG_ERR_FORMAT);
  CHECK_MSG(t, strcmp(error.message, expected) == 0, "%s", error.message);
  sg_weights_free(weights);

  /* A larger matrix (rows spread over the threads), random bf16 values. */
  enum { ROWS = 301, COLS = 67 };
  uint16_t *many = g_new(uint16_t, ROWS * COLS);
  float *many_f32 = g_new(float, ROWS *COLS), many_scales[ROWS];
  int8_t *many_codes = g_new(int8_t, ROWS * COLS), *direct = g_new(int8_t, ROWS * COLS);
  float direct_scales[ROWS];
  uint32_t state = 12345;
  for (int i = 0; i < ROWS * COLS; i++) {
    state = state * 1664525u + 1013904223u;
    many[i] = sg_f32_to_bf16(((float)(state >> 8) / (float)(1 << 24) - 0.5f) * (1 + i % 7));
    many_f32[i] = sg_bf16_to_f32(many[i]);
  }
  sg_quantize_rows_int8(many_f32, ROWS, COLS, many_codes, many_scales);
  CHECK_INT(t, sg_quantize_bf16_rows_int8(many, ROWS, COLS, direct, direct_scales), 0);
  CHECK(t, memcmp(direct, many_codes, ROWS * COLS) == 0 &&
               memcmp(direct_scales, many_scales, sizeof many_scales) == 0);
  many[ROWS * COLS - 1] = 0x7fc0u; /* NaN */
  many[5] = 0x7f80u;               /* +Inf */
  CHECK_INT(t, sg_quantize_bf16_rows_int8(many, ROWS, COLS, direct, direct_scales), 2);
  g_free(many);
  g_free(many_f32);
  g_free(many_codes);
  g_free(direct);
}

void register_safetensors_tests(sg_test_list *list) {
  sg_test_add(list, "safetensors/round_trip", test_round_trip);
  sg_test_add(list, "safetensors/write_errors", test_write_errors);
  sg_test_add(list, "safetensors/malformed_files", test_malformed_files);
  sg_test_add(list, "weights/folder", test_weights_folder);
  sg_test_add(list, "weights/bad_values", test_weights_bad_values);
  sg_test_add(list, "weights/table", test_weights_table);
  sg_test_add(list, "weights/bf16_linears", test_weights_bf16_linears);
  sg_test_add(list, "weights/random", test_weights_random);
  sg_test_add(list, "png/round_trip", test_png_round_trip);
  sg_test_add(list, "png/errors", test_png_errors);
}
