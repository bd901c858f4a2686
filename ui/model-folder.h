/* model-folder.h: a quick check that a folder looks like a SnapGen model, for the dialog. */
#ifndef SNAPGEN_MODEL_FOLDER_H
#define SNAPGEN_MODEL_FOLDER_H

#include <glib.h>

G_BEGIN_DECLS

/* Returns NULL when folder has model_index.json and the unet, decoder and scheduler parts with
 * their config and weight files, else a sentence (translated, free with g_free) saying what is
 * missing. It reads only small files; the engine validates the weights when it loads them. */
gchar *snapgen_model_folder_problem(const gchar *folder);

G_END_DECLS

#endif
