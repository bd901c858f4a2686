/* test_config.c: unit tests for the JSON config reader (types, ranges, defaults, messages). */
#include <glib.h>
#include <string.h>

#include "config.h"
#include "test.h"

static const char *const sample =
    "{\"in_channels\": 16, \"block_channels\": [256, 512, 896], \"norm_eps\": 1e-5,"
    " \"shift\": 3, \"separable\": true, \"self_attention\": [false, false, true],"
    " \"ffn_type\": \"geglu\", \"timesteps\": [1.0, 0.75, 0.5, 0.25], \"count_f\": 4.0,"
    " \"nothing\": null, \"wrong\": \"text\", \"fraction\": 2.5, \"mixed\": [1, \"a\"]}";

static sg_json *parse_sample(sg_test *t) {
  sg_json *json = NULL;
  sg_error error = {0};
  CHECK_MSG(t, sg_json_parse(sample, strlen(sample), "unet/config.json", &json, &error) == SG_OK,
            "%s", error.message);
  return json;
}

static void test_scalars(sg_test *t) {
  sg_json *json = parse_sample(t);
  if (!json) return;
  sg_error error = {0};
  CHECK(t, strcmp(sg_json_path(json), "unet/config.json") == 0);
  CHECK(t, sg_json_has(json, "in_channels") && !sg_json_has(json, "absent") &&
               !sg_json_has(json, "nothing"));
  int64_t i = 0;
  CHECK_INT(t, sg_json_int(json, "in_channels", 0, 0, 1, 1024, &i, &error), SG_OK);
  CHECK_INT(t, i, 16);
  CHECK_INT(t, sg_json_int(json, "count_f", 0, 0, 1, 1024, &i, &error), SG_OK);
  CHECK_INT(t, i, 4);
  CHECK_INT(t, sg_json_int(json, "absent", 1, 32, 1, 1024, &i, &error), SG_OK);
  CHECK_INT(t, i, 32);
  CHECK_INT(t, sg_json_int(json, "nothing", 1, 5, 1, 1024, &i, &error), SG_OK);
  CHECK_INT(t, i, 5);
  CHECK_INT(t, sg_json_int(json, "absent", 0, 0, 1, 1024, &i, &error), SG_ERR_FORMAT);
  CHECK(t, strcmp(error.message, "unet/config.json: missing field 'absent'") == 0);
  CHECK_INT(t, sg_json_int(json, "in_channels", 0, 0, 32, 1024, &i, &error), SG_ERR_FORMAT);
  CHECK_MSG(t, strstr(error.message, "unet/config.json: field 'in_channels' must be") != NULL,
            "%s", error.message);
  CHECK_INT(t, sg_json_int(json, "fraction", 0, 0, 0, 10, &i, &error), SG_ERR_FORMAT);
  CHECK_INT(t, sg_json_int(json, "wrong", 0, 0, 0, 10, &i, &error), SG_ERR_FORMAT);
  CHECK_INT(t, sg_json_int(json, "separable", 0, 0, 0, 10, &i, &error), SG_ERR_FORMAT);

  double d = 0;
  CHECK_INT(t, sg_json_float(json, "norm_eps", 0, 0, 0, 1, &d, &error), SG_OK);
  CHECK(t, d == 1e-5);
  CHECK_INT(t, sg_json_float(json, "shift", 0, 0, 0, 10, &d, &error), SG_OK); /* int is a number */
  CHECK(t, d == 3.0);
  CHECK_INT(t, sg_json_float(json, "absent", 1, 1.5, 0, 10, &d, &error), SG_OK);
  CHECK(t, d == 1.5);
  CHECK_INT(t, sg_json_float(json, "fraction", 0, 0, 0, 2, &d, &error), SG_ERR_FORMAT);
  CHECK(t, strstr(error.message, "'fraction'") != NULL);
  CHECK_INT(t, sg_json_float(json, "wrong", 0, 0, 0, 2, &d, &error), SG_ERR_FORMAT);

  int b = 0;
  CHECK_INT(t, sg_json_bool(json, "separable", 0, 0, &b, &error), SG_OK);
  CHECK_INT(t, b, 1);
  CHECK_INT(t, sg_json_bool(json, "absent", 1, 0, &b, &error), SG_OK);
  CHECK_INT(t, b, 0);
  CHECK_INT(t, sg_json_bool(json, "in_channels", 1, 0, &b, &error), SG_ERR_FORMAT);
  CHECK(t, strstr(error.message, "'in_channels' must be true or false") != NULL);

  char *s = NULL;
  CHECK_INT(t, sg_json_string(json, "ffn_type", NULL, &s, &error), SG_OK);
  CHECK(t, s && strcmp(s, "geglu") == 0);
  g_free(s);
  CHECK_INT(t, sg_json_string(json, "absent", "gelu", &s, &error), SG_OK);
  CHECK(t, s && strcmp(s, "gelu") == 0);
  g_free(s);
  CHECK_INT(t, sg_json_string(json, "absent", NULL, &s, &error), SG_ERR_FORMAT);
  CHECK(t, s == NULL);
  CHECK_INT(t, sg_json_string(json, "in_channels", NULL, &s, &error), SG_ERR_FORMAT);
  sg_json_free(json);
}

static void test_arrays(sg_test *t) {
  sg_json *json = parse_sample(t);
  if (!json) return;
  sg_error error = {0};
  int64_t ints[4];
  int count = 0;
  CHECK_INT(t, sg_json_int_array(json, "block_channels", 4, 1, 4096, ints, &count, &error), SG_OK);
  CHECK(t, count == 3 && ints[0] == 256 && ints[2] == 896);
  CHECK_INT(t, sg_json_int_array(json, "block_channels", 2, 1, 4096, ints, &count, &error),
            SG_ERR_FORMAT);
  CHECK(t, strstr(error.message, "at most 2") != NULL);
  CHECK_INT(t, sg_json_int_array(json, "block_channels", 4, 1, 512, ints, &count, &error),
            SG_ERR_FORMAT);
  CHECK_MSG(t, strstr(error.message, "field 'block_channels'[2]") != NULL, "%s", error.message);
  CHECK_INT(t, sg_json_int_array(json, "mixed", 4, 0, 10, ints, &count, &error), SG_ERR_FORMAT);
  CHECK_INT(t, sg_json_int_array(json, "in_channels", 4, 0, 10, ints, &count, &error),
            SG_ERR_FORMAT);
  CHECK(t, strstr(error.message, "must be an array") != NULL);
  CHECK_INT(t, sg_json_int_array(json, "absent", 4, 0, 10, ints, &count, &error), SG_ERR_FORMAT);

  double floats[8];
  CHECK_INT(t, sg_json_float_array(json, "timesteps", 8, 0, 1, floats, &count, &error), SG_OK);
  CHECK(t, count == 4 && floats[1] == 0.75 && floats[3] == 0.25);
  CHECK_INT(t, sg_json_float_array(json, "block_channels", 8, 0, 1e4, floats, &count, &error),
            SG_OK);
  CHECK(t, floats[1] == 512.0);

  int bools[3];
  CHECK_INT(t, sg_json_bool_array(json, "self_attention", 3, bools, &count, &error), SG_OK);
  CHECK(t, count == 3 && !bools[0] && !bools[1] && bools[2]);
  CHECK_INT(t, sg_json_bool_array(json, "block_channels", 3, bools, &count, &error),
            SG_ERR_FORMAT);
  sg_json_free(json);
}

static void test_files(sg_test *t) {
  char path[512];
  sg_error error = {0};
  sg_json *json = NULL;
  sg_test_path(t, "config.json", path, sizeof path);
  CHECK_INT(t, sg_json_load(path, &json, &error), SG_ERR_IO);
  CHECK(t, json == NULL && strstr(error.message, path) != NULL);
  g_file_set_contents(path, "{\"a\": [1, 2,}", -1, NULL);
  CHECK_INT(t, sg_json_load(path, &json, &error), SG_ERR_FORMAT);
  CHECK(t, strstr(error.message, path) != NULL);
  g_file_set_contents(path, "[1, 2]", -1, NULL);
  CHECK_INT(t, sg_json_load(path, &json, &error), SG_ERR_FORMAT);
  g_file_set_contents(path, "", -1, NULL);
  CHECK_INT(t, sg_json_load(path, &json, &error), SG_ERR_FORMAT);
  g_file_set_contents(path, "{\"steps\": 4}\n", -1, NULL);
  CHECK_INT(t, sg_json_load(path, &json, &error), SG_OK);
  int64_t steps = 0;
  if (json) CHECK_INT(t, sg_json_int(json, "steps", 0, 0, 1, 100, &steps, &error), SG_OK);
  CHECK_INT(t, steps, 4);
  sg_json_free(json);
  sg_json_free(NULL);
}

void register_config_tests(sg_test_list *list) {
  sg_test_add(list, "config/scalars", test_scalars);
  sg_test_add(list, "config/arrays", test_arrays);
  sg_test_add(list, "config/files", test_files);
}
