/* config.h: reading a model's JSON config files (json-glib) with errors that name file and field. */
#ifndef SG_CONFIG_H
#define SG_CONFIG_H

#include "snapgen.h"

typedef struct sg_json sg_json; /* one parsed JSON file (its root object) */

sg_status sg_json_load(const char *path, sg_json **out, sg_error *error);
/* Parses a JSON text held in memory (path is used in messages only). */
sg_status sg_json_parse(const char *text, size_t length, const char *path, sg_json **out,
                        sg_error *error);
void sg_json_free(sg_json *json);
const char *sg_json_path(const sg_json *json);
int sg_json_has(const sg_json *json, const char *field);

/* Each getter: missing field -> the default when has_default, else SG_ERR_FORMAT; a value of the
 * wrong type or outside [min, max] -> SG_ERR_FORMAT "FILE: field 'x' must be ...". */
sg_status sg_json_int(const sg_json *json, const char *field, int has_default, int64_t fallback,
                      int64_t min, int64_t max, int64_t *out, sg_error *error);
sg_status sg_json_float(const sg_json *json, const char *field, int has_default, double fallback,
                        double min, double max, double *out, sg_error *error);
sg_status sg_json_bool(const sg_json *json, const char *field, int has_default, int fallback,
                       int *out, sg_error *error);
/* *out is a g_strdup'ed string (free with g_free). */
sg_status sg_json_string(const sg_json *json, const char *field, const char *fallback,
                         char **out, sg_error *error);
/* Arrays: *count gets the length (≤ max_count, else error); each element checked like above. */
sg_status sg_json_int_array(const sg_json *json, const char *field, int max_count, int64_t min,
                            int64_t max, int64_t *values, int *count, sg_error *error);
sg_status sg_json_float_array(const sg_json *json, const char *field, int max_count, double min,
                              double max, double *values, int *count, sg_error *error);
sg_status sg_json_bool_array(const sg_json *json, const char *field, int max_count, int *values,
                             int *count, sg_error *error);

#endif
