/* safetensors.c: memory-mapped, validated .safetensors reader and an atomic writer (json-glib). */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <json-glib/json-glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; big-endian hosts are not supported"
#endif

struct sg_safetensors {
  char *path;
  GMappedFile *mapping;
  sg_st_entry *entries; /* sorted by data offset */
  int count;
  GHashTable *by_name;  /* name -> sg_st_entry* */
  GHashTable *metadata; /* key -> value, both owned */
};

/* An entry while parsing: where its data starts in the data area. */
typedef struct {
  sg_st_entry entry;
  uint64_t begin, end;
  int skipped; /* an integer buffer: validated, not exposed */
} parsed_entry;

static int compare_by_offset(const void *a, const void *b) {
  const parsed_entry *x = a, *y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end) return x->end < y->end ? -1 : 1;
  return 0;
}

static int parse_dtype(const char *name, sg_dtype *dtype) {
  if (strcmp(name, "F32") == 0) *dtype = SG_F32;
  else if (strcmp(name, "F16") == 0) *dtype = SG_F16;
  else if (strcmp(name, "BF16") == 0) *dtype = SG_BF16;
  else return 0;
  return 1;
}

/* Integer tensors hold buffers such as the "position_ids" that older CLIP checkpoints carry, never
 * weights: they are validated like the others but not exposed. Their item size, or 0. */
static int integer_dtype_size(const char *name) {
  static const struct {
    const char *name;
    int size;
  } types[] = {{"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1}, {"U8", 1}, {"BOOL", 1}};
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
    if (strcmp(name, types[i].name) == 0) return types[i].size;
  return 0;
}

/* A JSON integer node's value; 0 if the node is not an integer. */
static int node_int(JsonNode *node, int64_t *value) {
  if (!node || !JSON_NODE_HOLDS_VALUE(node) || json_node_get_value_type(node) != G_TYPE_INT64) {
    return 0;
  }
  *value = json_node_get_int(node);
  return 1;
}

static sg_status parse_metadata(const char *path, JsonNode *node, GHashTable *metadata,
                                sg_error *error) {
  if (!JSON_NODE_HOLDS_OBJECT(node)) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: '__metadata__' must be an object of strings", path);
  }
  JsonObject *object = json_node_get_object(node);
  GList *keys = json_object_get_members(object);
  sg_status status = SG_OK;
  for (GList *k = keys; k; k = k->next) {
    JsonNode *value = json_object_get_member(object, k->data);
    if (!JSON_NODE_HOLDS_VALUE(value) || json_node_get_value_type(value) != G_TYPE_STRING) {
      status = sg_fail(error, SG_ERR_FORMAT, "%s: '__metadata__' value '%s' is not a string", path,
                       (const char *)k->data);
      break;
    }
    g_hash_table_replace(metadata, g_strdup(k->data), g_strdup(json_node_get_string(value)));
  }
  g_list_free(keys);
  return status;
}

/* Checks one tensor's header entry against the data area of data_size bytes. */
static sg_status parse_entry(const char *path, const char *name, JsonNode *node,
                             uint64_t data_size, parsed_entry *out, sg_error *error) {
  if (!JSON_NODE_HOLDS_OBJECT(node)) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: tensor '%s': entry is not an object", path, name);
  }
  JsonObject *object = json_node_get_object(node);
  JsonNode *dtype_node = json_object_get_member(object, "dtype");
  JsonNode *shape_node = json_object_get_member(object, "shape");
  JsonNode *offsets_node = json_object_get_member(object, "data_offsets");

  if (!dtype_node || !JSON_NODE_HOLDS_VALUE(dtype_node) ||
      json_node_get_value_type(dtype_node) != G_TYPE_STRING) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: tensor '%s': missing or non-string 'dtype'", path,
                   name);
  }
  const char *dtype_name = json_node_get_string(dtype_node);
  int integer_size = integer_dtype_size(dtype_name);
  out->skipped = integer_size > 0;
  if (!out->skipped && !parse_dtype(dtype_name, &out->entry.dtype)) {
    return sg_fail(error, SG_ERR_FORMAT,
                   "%s: tensor '%s': unsupported dtype '%s' (supported: F32, F16, BF16; integer "
                   "buffers are skipped)", path, name, dtype_name);
  }

  if (!shape_node || !JSON_NODE_HOLDS_ARRAY(shape_node)) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: tensor '%s': missing or non-array 'shape'", path,
                   name);
  }
  JsonArray *shape = json_node_get_array(shape_node);
  guint ndim = json_array_get_length(shape);
  if (ndim > SG_MAX_DIMS) {
    return sg_fail(error, SG_ERR_FORMAT, "%s: tensor '%s': %u dimensions (at most %d supported)",
                   path, name, ndim, SG_MAX_DIMS);
  }
  out->entry.ndim = (int)ndim;
  uint64_t nbytes = out->skipped ? (uint64_t)integer_size : sg_dtype_size(out->entry.dtype);
  for (guint i = 0; i < ndim; i++) {
    int64_t dim;
    if (!node_int(json_array_get_element(shape, i), &dim) || dim < 0) {
      return sg_fail(error, SG_ERR_FORMAT,
                     "%s: tensor '%s': shape must hold non-negative integers", path, name);
    }
    if (dim != 0 && nbytes > (uint64_t)INT64_MAX / (uint64_t)dim) {
      return sg_fail(error, SG_ERR_FORMAT, "%s: tensor '%s': shape is too large", path, name);
    }
    out->entry.dims[i] = dim;
    nbytes *= (uint64_t)dim;
  }

  if (!offsets_node || !JSON_NODE_HOLDS_ARRAY(offsets_node) ||
      json_array_get_length(json_node_get_array(offsets_node)) != 2) {
    return sg_fail(error, SG_ERR_FORMAT,
                   "%s: tensor '%s': 'data_offsets' must be an array of two integers", path, name);
  }
  JsonArray *offsets = json_node_get_array(offsets_node);
  int64_t begin, end;
  if (!node_int(json_array_get_element(offsets, 0), &begin) ||
      !node_int(json_array_get_element(offsets, 1), &end) || begin < 0 || end < begin) {
    return sg_fail(error, SG_ERR_FORMAT,
                   "%s: tensor '%s': 'data_offsets' must be two integers 0 <= begin <= end", path,
                   name);
  }
  if ((uint64_t)end > data_size) {
    return sg_fail(error, SG_ERR_FORMAT,
                   "%s: tensor '%s': data [%lld, %lld) lies outside the data area (%llu bytes)",
                   path, name, (long long)begin, (long long)end, (unsigned long long)data_size);
  }
  if ((uint64_t)(end - begin) != nbytes) {
    return sg_fail(error, SG_ERR_FORMAT,
                   "%s: tensor '%s': %lld data bytes, but shape and dtype %s need %llu", path,
                   name, (long long)(end - begin), dtype_name, (unsigned long long)nbytes);
  }
  out->begin = (uint64_t)begin;
  out->end = (uint64_t)end;
  out->entry.nbytes = (size_t)nbytes;
  return SG_OK;
}

/* Parses and checks the header JSON; fills file->entries, by_name and metadata. */
static sg_status parse_header(sg_safetensors *file, const char *header, uint64_t header_length,
                              const char *data, uint64_t data_size, sg_error *error) {
  const char *path = file->path;
  JsonParser *parser = json_parser_new();
  GError *gerror = NULL;
  if (!json_parser_load_from_data(parser, header, (gssize)header_length, &gerror)) {
    sg_fail(error, SG_ERR_FORMAT, "%s: header is not valid JSON: %s", path, gerror->message);
    g_error_free(gerror);
    g_object_unref(parser);
    return SG_ERR_FORMAT;
  }
  JsonNode *root = json_parser_get_root(parser);
  if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
    g_object_unref(parser);
    return sg_fail(error, SG_ERR_FORMAT, "%s: header is not a JSON object", path);
  }
  JsonObject *object = json_node_get_object(root);
  GList *names = json_object_get_members(object);
  guint member_count = g_list_length(names);
  parsed_entry *parsed = g_new0(parsed_entry, member_count ? member_count : 1);
  int count = 0;
  sg_status status = SG_OK;
  for (GList *n = names; n && status == SG_OK; n = n->next) {
    const char *name = n->data;
    JsonNode *node = json_object_get_member(object, name);
    if (strcmp(name, "__metadata__") == 0) {
      status = parse_metadata(path, node, file->metadata, error);
      continue;
    }
    status = parse_entry(path, name, node, data_size, &parsed[count], error);
    if (status == SG_OK) parsed[count++].entry.name = g_strdup(name);
  }
  g_list_free(names);

  if (status == SG_OK) {
    qsort(parsed, (size_t)count, sizeof *parsed, compare_by_offset);
    /* Sorted by start, a tensor overlaps an earlier one when it starts before the furthest end
     * seen so far; empty tensors hold no bytes and overlap nothing. */
    uint64_t furthest_end = 0;
    int furthest = -1;
    for (int i = 0; i < count && status == SG_OK; i++) {
      if (parsed[i].begin == parsed[i].end) continue;
      if (furthest >= 0 && parsed[i].begin < furthest_end) {
        status = sg_fail(error, SG_ERR_FORMAT, "%s: tensor '%s': data overlaps tensor '%s'", path,
                         parsed[i].entry.name, parsed[furthest].entry.name);
      }
      if (parsed[i].end > furthest_end) {
        furthest_end = parsed[i].end;
        furthest = i;
      }
    }
  }

  file->entries = g_new0(sg_st_entry, count ? count : 1);
  int exposed = 0;
  for (int i = 0; i < count; i++) {
    if (parsed[i].skipped) {
      g_free((char *)parsed[i].entry.name);
      continue;
    }
    file->entries[exposed] = parsed[i].entry;
    file->entries[exposed].data = data + parsed[i].begin;
    exposed++;
  }
  count = exposed;
  file->count = count;
  for (int i = 0; i < count; i++) {
    g_hash_table_insert(file->by_name, (gpointer)file->entries[i].name, &file->entries[i]);
  }
  g_free(parsed);
  g_object_unref(parser);
  return status;
}

sg_status sg_safetensors_open(const char *path, sg_safetensors **out, sg_error *error) {
  *out = NULL;
  GError *gerror = NULL;
  GMappedFile *mapping = g_mapped_file_new(path, FALSE, &gerror);
  if (!mapping) {
    /* Mapping a file larger than the address space left (ulimit -v) fails with ENOMEM: that is
     * a memory limit, not a broken file. */
    sg_status status = SG_ERR_IO;
    if (g_error_matches(gerror, G_FILE_ERROR, G_FILE_ERROR_NOMEM)) {
      status = sg_fail(error, SG_ERR_OUT_OF_MEMORY, "%s: out of memory mapping the file (%s)", path,
                       gerror->message);
    } else {
      sg_fail(error, status, "%s: cannot open: %s", path, gerror->message);
    }
    g_error_free(gerror);
    return status;
  }
  sg_safetensors *file = g_new0(sg_safetensors, 1);
  file->path = g_strdup(path);
  file->mapping = mapping;
  file->by_name = g_hash_table_new(g_str_hash, g_str_equal);
  file->metadata = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);

  const char *bytes = g_mapped_file_get_contents(mapping);
  uint64_t size = g_mapped_file_get_length(mapping);
  sg_status status = SG_OK;
  uint64_t header_length = 0;
  if (size < 8) {
    status = sg_fail(error, SG_ERR_FORMAT,
                     "%s: file is %llu bytes, too short for a safetensors header", path,
                     (unsigned long long)size);
  } else {
    for (int i = 7; i >= 0; i--) header_length = (header_length << 8) | (uint8_t)bytes[i];
    if (header_length > SG_SAFETENSORS_MAX_HEADER) {
      status = sg_fail(error, SG_ERR_FORMAT,
                       "%s: header length %llu exceeds the limit of %u bytes", path,
                       (unsigned long long)header_length, SG_SAFETENSORS_MAX_HEADER);
    } else if (header_length > size - 8) {
      status = sg_fail(error, SG_ERR_FORMAT,
                       "%s: header length %llu runs past the end of the file (%llu bytes)", path,
                       (unsigned long long)header_length, (unsigned long long)size);
    }
  }
  if (status == SG_OK) {
    const char *data = bytes + 8 + header_length;
    status = parse_header(file, bytes + 8, header_length, data, size - 8 - header_length, error);
  }
  if (status != SG_OK) {
    sg_safetensors_close(file);
    return status;
  }
  *out = file;
  return SG_OK;
}

void sg_safetensors_close(sg_safetensors *file) {
  if (!file) return;
  for (int i = 0; i < file->count; i++) g_free((char *)file->entries[i].name);
  g_free(file->entries);
  g_hash_table_destroy(file->by_name);
  g_hash_table_destroy(file->metadata);
  g_mapped_file_unref(file->mapping);
  g_free(file->path);
  g_free(file);
}

const char *sg_safetensors_path(const sg_safetensors *file) { return file->path; }

int sg_safetensors_count(const sg_safetensors *file) { return file->count; }

const sg_st_entry *sg_safetensors_entry(const sg_safetensors *file, int index) {
  if (index < 0 || index >= file->count) return NULL;
  return &file->entries[index];
}

const sg_st_entry *sg_safetensors_find(const sg_safetensors *file, const char *name) {
  return g_hash_table_lookup(file->by_name, name);
}

const char *sg_safetensors_metadata(const sg_safetensors *file, const char *key) {
  return g_hash_table_lookup(file->metadata, key);
}

/* ---- writer ---- */

/* Checks the arguments and builds the header JSON (not yet padded). */
static sg_status build_header(const char *path, int count, const char *const *names,
                              const sg_tensor *tensors, const char *const *metadata_key_values,
                              char **out, gsize *length, sg_error *error) {
  GHashTable *seen = g_hash_table_new(g_str_hash, g_str_equal);
  JsonBuilder *builder = json_builder_new();
  json_builder_begin_object(builder);
  if (metadata_key_values && metadata_key_values[0]) {
    json_builder_set_member_name(builder, "__metadata__");
    json_builder_begin_object(builder);
    for (int i = 0; metadata_key_values[i] && metadata_key_values[i + 1]; i += 2) {
      json_builder_set_member_name(builder, metadata_key_values[i]);
      json_builder_add_string_value(builder, metadata_key_values[i + 1]);
    }
    json_builder_end_object(builder);
  }
  sg_status status = SG_OK;
  uint64_t offset = 0;
  for (int i = 0; i < count && status == SG_OK; i++) {
    const sg_tensor *t = &tensors[i];
    const char *name = names[i];
    if (!name || !*name || strcmp(name, "__metadata__") == 0 ||
        g_hash_table_contains(seen, name)) {
      status = sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: tensor name '%s' is empty, reserved "
                       "or repeated", path, name ? name : "(null)");
      break;
    }
    g_hash_table_add(seen, (gpointer)name);
    if (t->ndim < 0 || t->ndim > SG_MAX_DIMS || sg_dtype_size(t->dtype) == 0 ||
        t->format != SG_FORMAT_PLAIN) {
      status = sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                       "%s: tensor '%s': unsupported dtype, rank or memory format", path, name);
      break;
    }
    uint64_t nbytes = sg_tensor_nbytes(t);
    if (nbytes > 0 && !t->data) {
      status = sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: tensor '%s' has no data", path, name);
      break;
    }
    json_builder_set_member_name(builder, name);
    json_builder_begin_object(builder);
    json_builder_set_member_name(builder, "dtype");
    json_builder_add_string_value(builder, sg_dtype_name(t->dtype));
    json_builder_set_member_name(builder, "shape");
    json_builder_begin_array(builder);
    for (int d = 0; d < t->ndim; d++) json_builder_add_int_value(builder, t->dims[d]);
    json_builder_end_array(builder);
    json_builder_set_member_name(builder, "data_offsets");
    json_builder_begin_array(builder);
    json_builder_add_int_value(builder, (gint64)offset);
    json_builder_add_int_value(builder, (gint64)(offset + nbytes));
    json_builder_end_array(builder);
    json_builder_end_object(builder);
    offset += nbytes;
  }
  json_builder_end_object(builder);
  if (status == SG_OK) {
    JsonNode *root = json_builder_get_root(builder);
    JsonGenerator *generator = json_generator_new();
    json_generator_set_root(generator, root);
    *out = json_generator_to_data(generator, length);
    g_object_unref(generator);
    json_node_unref(root);
  }
  g_object_unref(builder);
  g_hash_table_destroy(seen);
  return status;
}

sg_status sg_safetensors_write(const char *path, int count, const char *const *names,
                               const sg_tensor *tensors, const char *const *metadata_key_values,
                               sg_error *error) {
  if (count < 0 || (count > 0 && (!names || !tensors))) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: invalid tensor list", path);
  }
  char *header = NULL;
  gsize header_length = 0;
  sg_status status =
      build_header(path, count, names, tensors, metadata_key_values, &header, &header_length,
                   error);
  if (status != SG_OK) return status;
  /* Pad with spaces (valid JSON whitespace) so the data area starts 8-byte aligned. */
  size_t padded = (header_length + 7) / 8 * 8;
  uint8_t length_bytes[8];
  for (int i = 0; i < 8; i++) length_bytes[i] = (uint8_t)((uint64_t)padded >> (8 * i));

  char *temp_path = g_strdup_printf("%s.tmp-XXXXXX", path);
  int fd = g_mkstemp_full(temp_path, O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) {
    int code = errno;
    g_free(header);
    g_free(temp_path);
    return sg_fail(error, SG_ERR_IO, "%s: cannot create a temporary file: %s", path,
                   g_strerror(code));
  }
  FILE *stream = fdopen(fd, "wb");
  if (!stream) close(fd);
  int ok = stream != NULL;
  ok = ok && fwrite(length_bytes, 1, 8, stream) == 8;
  ok = ok && fwrite(header, 1, header_length, stream) == header_length;
  for (size_t i = header_length; ok && i < padded; i++) ok = fputc(' ', stream) != EOF;
  for (int i = 0; ok && i < count; i++) {
    size_t nbytes = sg_tensor_nbytes(&tensors[i]);
    ok = nbytes == 0 || fwrite(tensors[i].data, 1, nbytes, stream) == nbytes;
  }
  ok = ok && fflush(stream) == 0 && fsync(fileno(stream)) == 0;
  int code = errno;
  if (stream && fclose(stream) != 0 && ok) {
    ok = 0;
    code = errno;
  }
  if (ok && rename(temp_path, path) != 0) {
    ok = 0;
    code = errno;
  }
  if (!ok) {
    g_unlink(temp_path);
    status = sg_fail(error, SG_ERR_IO, "%s: cannot write: %s", path, g_strerror(code));
  }
  g_free(header);
  g_free(temp_path);
  return status;
}
