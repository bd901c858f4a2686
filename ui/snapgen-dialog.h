/* snapgen-dialog.h: the settings dialog of SnapGen Text to Image (a GimpProcedureDialog). */
#ifndef SNAPGEN_DIALOG_H
#define SNAPGEN_DIALOG_H

#include <libgimp/gimp.h>

G_BEGIN_DECLS

/* Test hook: when this environment variable names a file, the dialog saves a PNG picture of
 * itself there once it is on screen (with "Advanced" unfolded), then closes as if cancelled. */
#define SNAPGEN_DIALOG_SCREENSHOT_ENV "SNAPGEN_DIALOG_SCREENSHOT"

/* Shows the dialog bound to config (the procedure's arguments). default_model_dir is what an
 * empty "model-folder" means. Returns TRUE when the user pressed Generate. gimp_ui_init() must
 * have been called. */
gboolean snapgen_dialog_run(GimpProcedure *procedure, GimpProcedureConfig *config,
                            const gchar *default_model_dir);

G_END_DECLS

#endif
