/* config.c: JSON config files read with json-glib; every error names the file and the field. */
#include "config.h"

#include <json-glib/json-glib.h>
#include <math.h>

#include "error.h"

struct sg_json {
  char *path;
  JsonParser *parser;
  JsonObject *root; /* owned by parser */
};

sg_status sg_json_parse(const char *text, size_t length, const char *path, sg_json **out,
                        sg_error *error) {
  *out = NULL;
  if (length > G_MAXSSIZE) return sg_fail(error, SG_ERR_FORMAT, "%s: file is too large", path);
  JsonParser *parser = json_parser_new();
  GError *gerror = NULL;
  if (!json_parser_load_from_data(parser, text, (gssize)length, &gerror)) {
    sg_fail(error, SG_ERR_FORMAT, "%s: invalid JSON: %s", path, gerror->message);
    g_error_free(gerror);
    g_object_unref(parser);
    return SG_ERR_FORMAT;
  }
  JsonNode *root = json_parser_get_root(parser);
  if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
    g_object_unref(parser);
    return sg_fail(error, SG_ERR_FORMAT, "%s: the top level must be a JSON object", path);
  }
  sg_json *json = g_new0(sg_json, 1);
  json->path = g_strdup(path);
  json->parser = parser;
  json->root = json_node_get_object(root);
  *out = json;
  return SG_OK;
}

sg_status sg_json_load(const char *path, sg_json **out, sg_error *error) {
  *out = NULL;
  char *text = NULL;
  gsize length = 0;
  GError *gerror = NULL;
  if (!g_file_get_contents(path, &text, &length, &gerror)) {
    sg_fail(error, SG_ERR_IO, "%s: cannot read: %s", path, gerror->message);
    g_error_free(gerror);
    return SG_ERR_IO;
  }
  sg_status status = sg_json_parse(text, length, path, out, error);
  g_free(text);
  return status;
}

void sg_json_free(sg_json *json) {
  if (!json) return;
  g_object_unref(json->parser);
  g_free(json->path);
  g_free(json);
}

const char *sg_json_path(const sg_json *json) { return json->path; }

/* The field's node, or NULL when absent or null. */
static JsonNode *field_node(const sg_json *json, const char *field) {
  JsonNode *node = json_object_get_member(json->root, field);
  if (!node || JSON_NODE_HOLDS_NULL(node)) return NULL;
  return node;
}

int sg_json_has(const sg_json *json, const char *field) { return field_node(json, field) != NULL; }

static sg_status missing(const sg_json *json, const char *field, sg_error *error) {
  return sg_fail(error, SG_ERR_FORMAT, "%s: missing field '%s'", json->path, field);
}

static int node_is_number(JsonNode *node) {
  if (!JSON_NODE_HOLDS_VALUE(node)) return 0;
  GType type = json_node_get_value_type(node);
  return type == G_TYPE_INT64 || type == G_TYPE_DOUBLE;
}

/* An integer value (a float with no fractional part counts, e.g. 3.0); 0 if not one. */
static int node_to_int(JsonNode *node, int64_t *value) {
  if (!JSON_NODE_HOLDS_VALUE(node)) return 0;
  GType type = json_node_get_value_type(node);
  if (type == G_TYPE_INT64) {
    *value = json_node_get_int(node);
    return 1;
  }
  if (type == G_TYPE_DOUBLE) {
    double d = json_node_get_double(node);
    if (d != floor(d) || d < -9.2e18 || d > 9.2e18) return 0;
    *value = (int64_t)d;
    return 1;
  }
  return 0;
}

/* "field 'x'" or "field 'x'[3]" for messages. */
static void field_label(char *buf, size_t size, const char *field, int index) {
  if (index < 0) {
    g_snprintf(buf, size, "field '%s'", field);
  } else {
    g_snprintf(buf, size, "field '%s'[%d]", field, index);
  }
}

static sg_status check_int(const sg_json *json, JsonNode *node, const char *field, int index,
                           int64_t min, int64_t max, int64_t *out, sg_error *error) {
  char label[300];
  field_label(label, sizeof label, field, index);
  int64_t value;
  if (!node_to_int(node, &value)) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: %s must be an integer", json->path, label);
  }
  if (value < min || value > max) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: %s must be an integer in [%lld, %lld], got %lld",
                   json->path, label, (long long)min, (long long)max, (long long)value);
  }
  *out = value;
  return SG_OK;
}

static sg_status check_float(const sg_json *json, JsonNode *node, const char *field, int index,
                             double min, double max, double *out, sg_error *error) {
  char label[300];
  field_label(label, sizeof label, field, index);
  if (!node_is_number(node)) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: %s must be a number", json->path, label);
  }
  double value = json_node_get_double(node); /* converts integers too */
  if (!(value >= min && value <= max)) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: %s must be a number in [%g, %g], got %g",
                   json->path, label, min, max, value);
  }
  *out = value;
  return SG_OK;
}

static sg_status check_bool(const sg_json *json, JsonNode *node, const char *field, int index,
                            int *out, sg_error *error) {
  char label[300];
  field_label(label, sizeof label, field, index);
  if (!JSON_NODE_HOLDS_VALUE(node) || json_node_get_value_type(node) != G_TYPE_BOOLEAN) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: %s must be true or false", json->path, label);
  }
  *out = json_node_get_boolean(node) ? 1 : 0;
  return SG_OK;
}

sg_status sg_json_int(const sg_json *json, const char *field, int has_default, int64_t fallback,
                      int64_t min, int64_t max, int64_t *out, sg_error *error) {
  JsonNode *node = field_node(json, field);
  if (!node) {
    if (!has_default) return missing(json, field, error);
    *out = fallback;
    return SG_OK;
  }
  return check_int(json, node, field, -1, min, max, out, error);
}

sg_status sg_json_float(const sg_json *json, const char *field, int has_default, double fallback,
                        double min, double max, double *out, sg_error *error) {
  JsonNode *node = field_node(json, field);
  if (!node) {
    if (!has_default) return missing(json, field, error);
    *out = fallback;
    return SG_OK;
  }
  return check_float(json, node, field, -1, min, max, out, error);
}

sg_status sg_json_bool(const sg_json *json, const char *field, int has_default, int fallback,
                       int *out, sg_error *error) {
  JsonNode *node = field_node(json, field);
  if (!node) {
    if (!has_default) return missing(json, field, error);
    *out = fallback ? 1 : 0;
    return SG_OK;
  }
  return check_bool(json, node, field, -1, out, error);
}

sg_status sg_json_string(const sg_json *json, const char *field, const char *fallback,
                         char **out, sg_error *error) {
  *out = NULL;
  JsonNode *node = field_node(json, field);
  if (!node) {
    if (!fallback) return missing(json, field, error);
    *out = g_strdup(fallback);
    return SG_OK;
  }
  if (!JSON_NODE_HOLDS_VALUE(node) || json_node_get_value_type(node) != G_TYPE_STRING) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: field '%s' must be a string", json->path, field);
  }
  *out = g_strdup(json_node_get_string(node));
  return SG_OK;
}

/* The field's array, checked for presence and length. */
static sg_status get_array(const sg_json *json, const char *field, int max_count, JsonArray **out,
                           int *count, sg_error *error) {
  JsonNode *node = field_node(json, field);
  if (!node) return missing(json, field, error);
  if (!JSON_NODE_HOLDS_ARRAY(node)) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: field '%s' must be an array", json->path, field);
  }
  JsonArray *array = json_node_get_array(node);
  guint length = json_array_get_length(array);
  if (length > (guint)(max_count < 0 ? 0 : max_count)) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: field '%s' has %u values, at most %d allowed",
                   json->path, field, length, max_count);
  }
  *out = array;
  *count = (int)length;
  return SG_OK;
}

sg_status sg_json_int_array(const sg_json *json, const char *field, int max_count, int64_t min,
                            int64_t max, int64_t *values, int *count, sg_error *error) {
  JsonArray *array;
  int length;
  sg_status status = get_array(json, field, max_count, &array, &length, error);
  if (status != SG_OK) return status;
  for (int i = 0; i < length; i++) {
    status = check_int(json, json_array_get_element(array, (guint)i), field, i, min, max,
                       &values[i], error);
    if (status != SG_OK) return status;
  }
  *count = length;
  return SG_OK;
}

sg_status sg_json_float_array(const sg_json *json, const char *field, int max_count, double min,
                              double max, double *values, int *count, sg_error *error) {
  JsonArray *array;
  int length;
  sg_status status = get_array(json, field, max_count, &array, &length, error);
  if (status != SG_OK) return status;
  for (int i = 0; i < length; i++) {
    status = check_float(json, json_array_get_element(array, (guint)i), field, i, min, max,
                         &values[i], error);
    if (status != SG_OK) return status;
  }
  *count = length;
  return SG_OK;
}

sg_status sg_json_bool_array(const sg_json *json, const char *field, int max_count, int *values,
                             int *count, sg_error *error) {
  JsonArray *array;
  int length;
  sg_status status = get_array(json, field, max_count, &array, &length, error);
  if (status != SG_OK) return status;
  for (int i = 0; i < length; i++) {
    status = check_bool(json, json_array_get_element(array, (guint)i), field, i, &values[i],
                        error);
    if (status != SG_OK) return status;
  }
  *count = length;
  return SG_OK;
}
