/* snapgen-progress.h: the small window that shows the generation's stage and step and has the
 * Cancel button that really stops the engine (GIMP's own progress cancel kills the plug-in). */
#ifndef SNAPGEN_PROGRESS_H
#define SNAPGEN_PROGRESS_H

#include <gtk/gtk.h>

G_BEGIN_DECLS

/* A shown, non-modal window headed by heading (the short prompt). Cancel, or closing it, sets
 * *cancel_requested to 1 atomically; cancel_requested must outlive the window. Destroy it with
 * gtk_widget_destroy(). */
GtkWidget *snapgen_progress_dialog_new(const gchar *heading, gint *cancel_requested);

/* Shows text (e.g. "Denoising: step 2 of 4") and a fraction in [0, 1]. */
void snapgen_progress_dialog_update(GtkWidget *dialog, const gchar *text, gdouble fraction);

/* Acts as if the user pressed Cancel (used by the plug-in's cancel test hook). */
void snapgen_progress_dialog_cancel(GtkWidget *dialog);

G_END_DECLS

#endif
