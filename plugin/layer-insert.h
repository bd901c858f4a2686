/* layer-insert.h: turns a generated RGBA buffer into a named GIMP layer with its settings. */
#ifndef SNAPGEN_LAYER_INSERT_H
#define SNAPGEN_LAYER_INSERT_H

#include <libgimp/gimp.h>

#include "generate-worker.h"

G_BEGIN_DECLS

#define SNAPGEN_PARASITE_NAME "snapgen-settings"
#define SNAPGEN_LAYER_NAME_CHARS 40

/* The layer name for a prompt: whitespace runs become one space, longer than
 * SNAPGEN_LAYER_NAME_CHARS characters is cut with "…"; an empty prompt gives a generic name. */
gchar *snapgen_layer_name(const gchar *prompt);

/* The settings that reproduce a result, as a JSON object (stored in the layer parasite). */
gchar *snapgen_settings_json(const SnapgenRequest *request, const SnapgenResult *result);

/* Adds a new RGBA layer holding rgba (width x height) above the image's selected layer, centred
 * on the canvas and never scaled, with the settings parasite, all in one undo group. Returns the
 * layer, or NULL with *error set and the image as it was. */
GimpLayer *snapgen_insert_layer(GimpImage *image, const guint8 *rgba, gint width, gint height,
                                const gchar *layer_name, const gchar *settings_json,
                                GError **error);

G_END_DECLS

#endif
