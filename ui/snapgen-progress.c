/* snapgen-progress.c: the progress window with a working Cancel button. */
#include "snapgen-progress.h"

#include <glib/gi18n-lib.h>
#include <libgimp/gimpui.h>

#define KEY_STATUS "snapgen-status-label"
#define KEY_BAR "snapgen-progress-bar"
#define KEY_CANCEL "snapgen-cancel-flag"

static void request_cancel(GtkWidget *dialog) {
  gint *cancel_requested = g_object_get_data(G_OBJECT(dialog), KEY_CANCEL);
  GtkWidget *status = g_object_get_data(G_OBJECT(dialog), KEY_STATUS);

  if (g_atomic_int_get(cancel_requested)) return;
  g_atomic_int_set(cancel_requested, 1);
  gtk_label_set_text(GTK_LABEL(status), _("Cancelling after the current step…"));
  gtk_dialog_set_response_sensitive(GTK_DIALOG(dialog), GTK_RESPONSE_CANCEL, FALSE);
}

static void on_response(GtkDialog *dialog, gint response_id, gpointer data) {
  (void)response_id;
  (void)data;
  request_cancel(GTK_WIDGET(dialog));
}

/* Closing the window means cancel; the caller destroys it once the engine has stopped. */
static gboolean on_delete(GtkWidget *dialog, GdkEvent *event, gpointer data) {
  (void)event;
  (void)data;
  request_cancel(dialog);
  return TRUE;
}

GtkWidget *snapgen_progress_dialog_new(const gchar *heading, gint *cancel_requested) {
  GtkWidget *dialog, *content, *box, *title, *status, *bar;
  gchar *markup;

  dialog = gimp_dialog_new(_("SnapGen Text to Image"), "snapgen-progress", NULL, 0, NULL, NULL,
                           _("_Cancel"), GTK_RESPONSE_CANCEL, NULL);
  gtk_window_set_resizable(GTK_WINDOW(dialog), FALSE);
  gimp_window_set_transient(GTK_WINDOW(dialog));

  content = gtk_dialog_get_content_area(GTK_DIALOG(dialog));
  box = gtk_box_new(GTK_ORIENTATION_VERTICAL, 8);
  gtk_container_set_border_width(GTK_CONTAINER(box), 12);
  gtk_box_pack_start(GTK_BOX(content), box, TRUE, TRUE, 0);

  title = gtk_label_new(NULL);
  markup = g_markup_printf_escaped("<b>%s</b>", heading);
  gtk_label_set_markup(GTK_LABEL(title), markup);
  gtk_label_set_xalign(GTK_LABEL(title), 0.0);
  gtk_box_pack_start(GTK_BOX(box), title, FALSE, FALSE, 0);

  status = gtk_label_new(_("Loading the model"));
  gtk_label_set_xalign(GTK_LABEL(status), 0.0);
  gtk_box_pack_start(GTK_BOX(box), status, FALSE, FALSE, 0);

  bar = gtk_progress_bar_new();
  gtk_widget_set_size_request(bar, 360, -1);
  gtk_box_pack_start(GTK_BOX(box), bar, FALSE, FALSE, 0);

  g_object_set_data(G_OBJECT(dialog), KEY_STATUS, status);
  g_object_set_data(G_OBJECT(dialog), KEY_BAR, bar);
  g_object_set_data(G_OBJECT(dialog), KEY_CANCEL, cancel_requested);
  g_signal_connect(dialog, "response", G_CALLBACK(on_response), NULL);
  g_signal_connect(dialog, "delete-event", G_CALLBACK(on_delete), NULL);

  gtk_widget_show_all(dialog);
  g_free(markup);
  return dialog;
}

void snapgen_progress_dialog_update(GtkWidget *dialog, const gchar *text, gdouble fraction) {
  gint *cancel_requested = g_object_get_data(G_OBJECT(dialog), KEY_CANCEL);
  GtkWidget *status = g_object_get_data(G_OBJECT(dialog), KEY_STATUS);
  GtkWidget *bar = g_object_get_data(G_OBJECT(dialog), KEY_BAR);

  /* Once cancelled, keep saying so rather than the stage that is winding down. */
  if (!g_atomic_int_get(cancel_requested)) gtk_label_set_text(GTK_LABEL(status), text);
  gtk_progress_bar_set_fraction(GTK_PROGRESS_BAR(bar), CLAMP(fraction, 0.0, 1.0));
}

void snapgen_progress_dialog_cancel(GtkWidget *dialog) {
  gtk_dialog_response(GTK_DIALOG(dialog), GTK_RESPONSE_CANCEL);
}
