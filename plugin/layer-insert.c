/* layer-insert.c: names the new layer, records its settings in a parasite and inserts it above
 * the selected layer in one undo step. */
#include "layer-insert.h"

#include <glib/gi18n-lib.h>
#include <json-glib/json-glib.h>
#include <string.h>

#include "config.h"

gchar *snapgen_layer_name(const gchar *prompt) {
  GString *collapsed = g_string_new(NULL);
  gboolean pending_space = FALSE;
  gchar *head, *name;

  /* One line, single spaces: layer names show in a narrow list. */
  for (const gchar *p = prompt != NULL ? prompt : ""; *p; p = g_utf8_next_char(p)) {
    gunichar c = g_utf8_get_char(p);

    if (g_unichar_isspace(c)) {
      pending_space = collapsed->len > 0;
      continue;
    }
    if (pending_space) g_string_append_c(collapsed, ' ');
    pending_space = FALSE;
    g_string_append_unichar(collapsed, c);
  }

  if (collapsed->len == 0) {
    g_string_free(collapsed, TRUE);
    return g_strdup(_("SnapGen image"));
  }
  if (g_utf8_strlen(collapsed->str, -1) <= SNAPGEN_LAYER_NAME_CHARS)
    return g_string_free(collapsed, FALSE);

  head = g_utf8_substring(collapsed->str, 0, SNAPGEN_LAYER_NAME_CHARS - 1);
  g_string_free(collapsed, TRUE);
  g_strchomp(head);
  name = g_strconcat(head, "…", NULL);
  g_free(head);
  return name;
}

gchar *snapgen_settings_json(const SnapgenRequest *request, const SnapgenResult *result) {
  JsonBuilder *builder = json_builder_new();
  JsonGenerator *generator = json_generator_new();
  JsonNode *root;
  gchar *text;

  json_builder_begin_object(builder);
  json_builder_set_member_name(builder, "generator");
  json_builder_add_string_value(builder, "snapgen-gimp " SNAPGEN_VERSION);
  json_builder_set_member_name(builder, "prompt");
  json_builder_add_string_value(builder, request->prompt != NULL ? request->prompt : "");
  json_builder_set_member_name(builder, "negative_prompt");
  json_builder_add_string_value(builder,
                                request->negative_prompt != NULL ? request->negative_prompt : "");
  json_builder_set_member_name(builder, "seed");
  json_builder_add_int_value(builder, (gint64)request->seed);
  json_builder_set_member_name(builder, "steps");
  json_builder_add_int_value(builder, result->steps_used);
  json_builder_set_member_name(builder, "guidance");
  json_builder_add_double_value(builder, result->guidance_used);
  json_builder_set_member_name(builder, "width");
  json_builder_add_int_value(builder, request->width);
  json_builder_set_member_name(builder, "height");
  json_builder_add_int_value(builder, request->height);
  json_builder_set_member_name(builder, "model");
  json_builder_add_string_value(builder, request->model_dir);
  json_builder_set_member_name(builder, "int8_weights"); /* it changes the image a little */
  json_builder_add_boolean_value(builder, request->int8_weights);
  json_builder_end_object(builder);

  root = json_builder_get_root(builder);
  json_generator_set_root(generator, root);
  text = json_generator_to_data(generator, NULL);
  json_node_unref(root);
  g_object_unref(generator);
  g_object_unref(builder);
  return text;
}

/* The PDB's own words for the last failed call, for error messages. */
static const gchar *last_pdb_error(void) {
  const gchar *message = gimp_pdb_get_last_error(gimp_get_pdb());
  return message != NULL && *message ? message : _("unknown error");
}

GimpLayer *snapgen_insert_layer(GimpImage *image, const guint8 *rgba, gint width, gint height,
                                const gchar *layer_name, const gchar *settings_json,
                                GError **error) {
  GimpLayer **selected = gimp_image_get_selected_layers(image);
  GimpLayer *parent = NULL;
  gint position = 0;
  GimpLayer *layer;
  GeglBuffer *buffer;
  GimpParasite *parasite;
  gboolean attached;

  /* Same parent and index as the selected layer puts the new one right above it. */
  if (selected != NULL && selected[0] != NULL) {
    GimpItem *parent_item = gimp_item_get_parent(GIMP_ITEM(selected[0]));

    parent = parent_item != NULL ? GIMP_LAYER(parent_item) : NULL;
    position = gimp_image_get_item_position(image, GIMP_ITEM(selected[0]));
  }
  g_free(selected);

  /* Everything that can fail happens to the layer before it joins the image: changes to a layer
   * outside an image push no undo steps, so a failure leaves the undo history as it was. */
  layer = gimp_layer_new(image, layer_name, width, height, GIMP_RGBA_IMAGE, 100.0,
                         gimp_image_get_default_new_layer_mode(image));
  if (layer == NULL) {
    g_set_error(error, SNAPGEN_ERROR, SG_ERR_OUT_OF_MEMORY, _("Could not create the layer: %s"),
                last_pdb_error());
    return NULL;
  }
  parasite =
      gimp_parasite_new(SNAPGEN_PARASITE_NAME, GIMP_PARASITE_PERSISTENT | GIMP_PARASITE_UNDOABLE,
                        (guint32)strlen(settings_json) + 1, settings_json);
  attached = gimp_item_attach_parasite(GIMP_ITEM(layer), parasite);
  gimp_parasite_free(parasite);
  if (!attached) {
    g_set_error(error, SNAPGEN_ERROR, SG_ERR_INVALID_ARGUMENT,
                _("Could not store the settings on the layer: %s"), last_pdb_error());
    gimp_item_delete(GIMP_ITEM(layer));
    return NULL;
  }
  /* Centred on the canvas at its own size: a different canvas size never rescales the result. */
  gimp_layer_set_offsets(layer, (gimp_image_get_width(image) - width) / 2,
                         (gimp_image_get_height(image) - height) / 2);

  /* Adding the layer is the one change to the image (GIMP may record it in several undo steps:
   * the group makes them one; only a failed insert, impossible with the parent and position taken
   * from this image, would leave an empty step). Writing its pixels afterwards records none. */
  gimp_image_undo_group_start(image);
  if (!gimp_image_insert_layer(image, layer, parent, position)) {
    g_set_error(error, SNAPGEN_ERROR, SG_ERR_INVALID_ARGUMENT,
                _("Could not add the layer to the image: %s"), last_pdb_error());
    gimp_image_undo_group_end(image);
    gimp_item_delete(GIMP_ITEM(layer));
    return NULL;
  }
  buffer = gimp_drawable_get_buffer(GIMP_DRAWABLE(layer));
  gegl_buffer_set(buffer, GEGL_RECTANGLE(0, 0, width, height), 0, babl_format("R'G'B'A u8"), rgba,
                  GEGL_AUTO_ROWSTRIDE);
  g_object_unref(buffer); /* flushes the pixels to GIMP */
  gimp_drawable_update(GIMP_DRAWABLE(layer), 0, 0, width, height);
  gimp_image_undo_group_end(image);
  return layer;
}
