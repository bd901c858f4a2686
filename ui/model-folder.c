/* model-folder.c: checks that a folder is laid out as a SnapGen model (weights/README.md) and
 * says in words what is missing, so the dialog can tell before a long load fails. */
#include "model-folder.h"

#include <glib/gi18n-lib.h>
#include <json-glib/json-glib.h>

/* The parts every SnapGen model has; text encoders and tokenizers are optional. */
static const gchar *const required_components[] = {"unet", "decoder", "scheduler"};

static gboolean folder_has_suffix(const gchar *folder, const gchar *suffix) {
  GDir *dir = g_dir_open(folder, 0, NULL);
  const gchar *name;
  gboolean found = FALSE;

  if (dir == NULL) return FALSE;
  while (!found && (name = g_dir_read_name(dir)) != NULL) found = g_str_has_suffix(name, suffix);
  g_dir_close(dir);
  return found;
}

/* What is wrong with one component folder, or NULL. */
static gchar *component_problem(const gchar *model_folder, const gchar *component) {
  gboolean is_scheduler = g_str_equal(component, "scheduler");
  const gchar *config_name = is_scheduler ? "scheduler_config.json" : "config.json";
  gchar *folder = g_build_filename(model_folder, component, NULL);
  gchar *config_path = g_build_filename(folder, config_name, NULL);
  gchar *problem = NULL;

  if (!g_file_test(folder, G_FILE_TEST_IS_DIR))
    problem = g_strdup_printf(_("The model's “%s” folder is missing."), component);
  else if (!g_file_test(config_path, G_FILE_TEST_IS_REGULAR))
    problem = g_strdup_printf(_("The “%s” folder has no %s file."), component, config_name);
  else if (!is_scheduler && !folder_has_suffix(folder, ".safetensors"))
    problem = g_strdup_printf(_("The “%s” folder has no .safetensors weights."), component);

  g_free(config_path);
  g_free(folder);
  return problem;
}

gchar *snapgen_model_folder_problem(const gchar *folder) {
  gchar *index_path;
  JsonParser *parser;
  JsonNode *root;
  JsonObject *index;
  GError *error = NULL;
  gchar *problem = NULL;

  if (folder == NULL || *folder == '\0') return g_strdup(_("No model folder is set."));
  if (!g_file_test(folder, G_FILE_TEST_EXISTS))
    return g_strdup_printf(_("The folder “%s” does not exist."), folder);
  if (!g_file_test(folder, G_FILE_TEST_IS_DIR))
    return g_strdup_printf(_("“%s” is not a folder."), folder);

  index_path = g_build_filename(folder, "model_index.json", NULL);
  if (!g_file_test(index_path, G_FILE_TEST_IS_REGULAR)) {
    g_free(index_path);
    return g_strdup(_("This folder has no model_index.json, so it is not a SnapGen model folder."));
  }

  parser = json_parser_new();
  if (!json_parser_load_from_file(parser, index_path, &error)) {
    problem = g_strdup_printf(_("model_index.json cannot be read: %s"), error->message);
    g_clear_error(&error);
  } else {
    root = json_parser_get_root(parser);
    index = root != NULL && JSON_NODE_HOLDS_OBJECT(root) ? json_node_get_object(root) : NULL;
    if (index == NULL) problem = g_strdup(_("model_index.json does not hold a JSON object."));
    for (guint i = 0; problem == NULL && i < G_N_ELEMENTS(required_components); i++) {
      if (!json_object_has_member(index, required_components[i]))
        problem =
            g_strdup_printf(_("model_index.json names no “%s” part."), required_components[i]);
      else
        problem = component_problem(folder, required_components[i]);
    }
  }

  g_object_unref(parser);
  g_free(index_path);
  return problem;
}
