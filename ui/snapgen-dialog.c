/* snapgen-dialog.c: the SnapGen Text to Image dialog: prompt, negative prompt, seed, model
 * folder (checked as it changes), and the advanced settings folded away. */
#include "snapgen-dialog.h"

#include <glib/gi18n-lib.h>
#include <libgimp/gimpui.h>

#include "model-folder.h"

/* What the callbacks need while the dialog is up; lives on snapgen_dialog_run()'s stack. */
typedef struct {
  GtkWidget *dialog;
  GimpProcedureConfig *config;
  const gchar *default_model_dir;
  GtkWidget *status_icon;
  GtkWidget *status_label;
  GtkWidget *advanced_expander;
  guint screenshot_source;
  gint screenshot_tries;
} DialogState;

static void update_model_status(DialogState *state) {
  gchar *folder = NULL;
  gchar *problem, *text;
  gboolean use_default;

  g_object_get(state->config, "model-folder", &folder, NULL);
  use_default = folder == NULL || *folder == '\0';
  problem = snapgen_model_folder_problem(use_default ? state->default_model_dir : folder);

  if (problem == NULL && use_default)
    text = g_strdup_printf(_("Using the installed default model (%s)."), state->default_model_dir);
  else if (problem == NULL)
    text = g_strdup(_("The model folder looks complete."));
  else if (use_default)
    text = g_strdup_printf(_("No usable default model is installed: %s Choose a model folder."),
                           problem);
  else
    text = g_strdup(problem);

  gtk_label_set_text(GTK_LABEL(state->status_label), text);
  gtk_image_set_from_icon_name(GTK_IMAGE(state->status_icon),
                               problem == NULL ? "dialog-information" : "dialog-warning",
                               GTK_ICON_SIZE_BUTTON);
  /* Generating with a folder known to be broken would only fail after a long load. */
  gtk_dialog_set_response_sensitive(GTK_DIALOG(state->dialog), GTK_RESPONSE_OK, problem == NULL);

  g_free(text);
  g_free(problem);
  g_free(folder);
}

static void on_model_folder_changed(GObject *config, GParamSpec *pspec, gpointer data) {
  (void)config;
  (void)pspec;
  update_model_status(data);
}

static void on_browse_clicked(GtkButton *button, gpointer data) {
  DialogState *state = data;
  GtkWidget *chooser;
  gchar *current = NULL;
  const gchar *start;

  (void)button;
  chooser =
      gtk_file_chooser_dialog_new(_("Choose a SnapGen Model Folder"), GTK_WINDOW(state->dialog),
                                  GTK_FILE_CHOOSER_ACTION_SELECT_FOLDER, _("_Cancel"),
                                  GTK_RESPONSE_CANCEL, _("_Select"), GTK_RESPONSE_ACCEPT, NULL);
  g_object_get(state->config, "model-folder", &current, NULL);
  start = current != NULL && *current ? current : state->default_model_dir;
  if (g_file_test(start, G_FILE_TEST_IS_DIR))
    gtk_file_chooser_set_filename(GTK_FILE_CHOOSER(chooser), start);

  if (gtk_dialog_run(GTK_DIALOG(chooser)) == GTK_RESPONSE_ACCEPT) {
    gchar *folder = gtk_file_chooser_get_filename(GTK_FILE_CHOOSER(chooser));

    if (folder != NULL) g_object_set(state->config, "model-folder", folder, NULL);
    g_free(folder);
  }
  gtk_widget_destroy(chooser);
  g_free(current);
}

static void on_default_clicked(GtkButton *button, gpointer data) {
  DialogState *state = data;

  (void)button;
  g_object_set(state->config, "model-folder", "", NULL);
}

/* Test hook (SNAPGEN_DIALOG_SCREENSHOT): draw the dialog into a PNG, then close it. */
static gboolean save_screenshot(gpointer data) {
  DialogState *state = data;
  const gchar *path = g_getenv(SNAPGEN_DIALOG_SCREENSHOT_ENV);
  cairo_surface_t *surface;
  cairo_t *cr;
  cairo_status_t status;

  if (!gtk_widget_get_mapped(state->dialog) && ++state->screenshot_tries < 50)
    return G_SOURCE_CONTINUE;

  surface =
      cairo_image_surface_create(CAIRO_FORMAT_ARGB32, gtk_widget_get_allocated_width(state->dialog),
                                 gtk_widget_get_allocated_height(state->dialog));
  cr = cairo_create(surface);
  gtk_widget_draw(state->dialog, cr);
  cairo_destroy(cr);
  status = cairo_surface_write_to_png(surface, path);
  if (status != CAIRO_STATUS_SUCCESS)
    g_printerr("snapgen: cannot write the dialog screenshot %s: %s\n", path,
               cairo_status_to_string(status));
  else
    g_printerr("snapgen: dialog screenshot saved to %s (title: %s)\n", path,
               gtk_window_get_title(GTK_WINDOW(state->dialog)));
  cairo_surface_destroy(surface);

  state->screenshot_source = 0;
  gtk_dialog_response(GTK_DIALOG(state->dialog), GTK_RESPONSE_CANCEL);
  return G_SOURCE_REMOVE;
}

/* A frame around a scrolled multi-line editor of a string property, titled with the property's
 * nick as the mnemonic label of the editor (built here: the dialog's own text view has no label).
 */
static GtkWidget *new_text_frame(GimpProcedureConfig *config, const gchar *property,
                                 gint min_height) {
  GParamSpec *pspec = g_object_class_find_property(G_OBJECT_GET_CLASS(config), property);
  GtkTextBuffer *buffer = gimp_prop_text_buffer_new(G_OBJECT(config), property, -1);
  GtkWidget *frame, *title, *scrolled, *view;

  view = gtk_text_view_new_with_buffer(buffer);
  g_object_unref(buffer);
  gtk_text_view_set_wrap_mode(GTK_TEXT_VIEW(view), GTK_WRAP_WORD_CHAR);
  gtk_text_view_set_accepts_tab(GTK_TEXT_VIEW(view), FALSE);
  gtk_text_view_set_left_margin(GTK_TEXT_VIEW(view), 4);
  gtk_text_view_set_right_margin(GTK_TEXT_VIEW(view), 4);
  gtk_text_view_set_top_margin(GTK_TEXT_VIEW(view), 3);
  gtk_text_view_set_bottom_margin(GTK_TEXT_VIEW(view), 3);
  gtk_widget_set_tooltip_text(view, g_param_spec_get_blurb(pspec));

  scrolled = gtk_scrolled_window_new(NULL, NULL);
  gtk_scrolled_window_set_policy(GTK_SCROLLED_WINDOW(scrolled), GTK_POLICY_NEVER,
                                 GTK_POLICY_AUTOMATIC);
  gtk_scrolled_window_set_shadow_type(GTK_SCROLLED_WINDOW(scrolled), GTK_SHADOW_IN);
  gtk_scrolled_window_set_min_content_height(GTK_SCROLLED_WINDOW(scrolled), min_height);
  gtk_widget_set_size_request(scrolled, 440, -1);
  gtk_container_add(GTK_CONTAINER(scrolled), view);

  frame = gimp_frame_new(g_param_spec_get_nick(pspec));
  title = gtk_frame_get_label_widget(GTK_FRAME(frame));
  gtk_label_set_use_underline(GTK_LABEL(title), TRUE);
  gtk_label_set_mnemonic_widget(GTK_LABEL(title), view);
  gtk_container_add(GTK_CONTAINER(frame), scrolled);
  gtk_widget_show_all(frame);
  return frame;
}

/* The model folder entry with Browse and Default buttons, and a line saying whether it is usable.
 */
static void add_model_frame(GimpProcedureDialog *dialog, DialogState *state) {
  GtkWidget *entry_widget, *row, *box, *browse, *use_default, *status_row;

  entry_widget = gimp_procedure_dialog_get_widget(dialog, "model-folder", GIMP_TYPE_LABEL_ENTRY);
  gtk_entry_set_placeholder_text(
      GTK_ENTRY(gimp_label_entry_get_entry(GIMP_LABEL_ENTRY(entry_widget))),
      _("Installed default model"));
  gtk_widget_set_hexpand(entry_widget, TRUE);

  row = gimp_procedure_dialog_fill_box(dialog, "model-row", "model-folder", NULL);
  gtk_orientable_set_orientation(GTK_ORIENTABLE(row), GTK_ORIENTATION_HORIZONTAL);
  gtk_box_set_spacing(GTK_BOX(row), 6);
  browse = gtk_button_new_with_mnemonic(_("_Browse…"));
  g_signal_connect(browse, "clicked", G_CALLBACK(on_browse_clicked), state);
  gtk_box_pack_start(GTK_BOX(row), browse, FALSE, FALSE, 0);
  use_default = gtk_button_new_with_mnemonic(_("De_fault"));
  gtk_widget_set_tooltip_text(use_default, _("Use the model installed with the plug-in"));
  g_signal_connect(use_default, "clicked", G_CALLBACK(on_default_clicked), state);
  gtk_box_pack_start(GTK_BOX(row), use_default, FALSE, FALSE, 0);
  gtk_widget_show(browse);
  gtk_widget_show(use_default);

  box = gimp_procedure_dialog_fill_box(dialog, "model-box", "model-row", NULL);
  status_row = gtk_box_new(GTK_ORIENTATION_HORIZONTAL, 6);
  state->status_icon = gtk_image_new();
  gtk_widget_set_valign(state->status_icon, GTK_ALIGN_START);
  state->status_label = gtk_label_new(NULL);
  gtk_label_set_xalign(GTK_LABEL(state->status_label), 0.0);
  gtk_label_set_line_wrap(GTK_LABEL(state->status_label), TRUE);
  gtk_label_set_max_width_chars(GTK_LABEL(state->status_label), 60);
  gtk_label_set_selectable(GTK_LABEL(state->status_label), TRUE);
  gtk_box_pack_start(GTK_BOX(status_row), state->status_icon, FALSE, FALSE, 0);
  gtk_box_pack_start(GTK_BOX(status_row), state->status_label, TRUE, TRUE, 0);
  gtk_box_pack_start(GTK_BOX(box), status_row, FALSE, FALSE, 0);
  gtk_widget_show_all(status_row);

  gimp_procedure_dialog_get_label(dialog, "model-title", _("Model"), FALSE, FALSE);
  gimp_procedure_dialog_fill_frame(dialog, "model-frame", "model-title", FALSE, "model-box");
}

static void add_advanced_expander(GimpProcedureDialog *dialog, DialogState *state) {
  GtkWidget *spin;

  spin = gimp_procedure_dialog_get_widget(dialog, "guidance", GIMP_TYPE_LABEL_SPIN);
  gimp_label_spin_set_digits(GIMP_LABEL_SPIN(spin), 1);
  gimp_label_spin_set_increments(GIMP_LABEL_SPIN(spin), 0.5, 1.0);
  spin = gimp_procedure_dialog_get_widget(dialog, "width", GIMP_TYPE_LABEL_SPIN);
  gimp_label_spin_set_increments(GIMP_LABEL_SPIN(spin), 64, 256);
  spin = gimp_procedure_dialog_get_widget(dialog, "height", GIMP_TYPE_LABEL_SPIN);
  gimp_label_spin_set_increments(GIMP_LABEL_SPIN(spin), 64, 256);

  gimp_procedure_dialog_fill_box(dialog, "advanced-box", "steps", "guidance", "width", "height",
                                 "threads", "int8-weights", NULL);
  gimp_procedure_dialog_get_label(dialog, "advanced-title", _("Ad_vanced"), FALSE, TRUE);
  state->advanced_expander = gimp_procedure_dialog_fill_expander(
      dialog, "advanced-expander", "advanced-title", FALSE, "advanced-box");
}

gboolean snapgen_dialog_run(GimpProcedure *procedure, GimpProcedureConfig *config,
                            const gchar *default_model_dir) {
  DialogState state = {0};
  GimpProcedureDialog *dialog;
  GtkWidget *seed_box, *main_box, *prompt_frame, *negative_frame;
  gulong notify_id;
  gboolean generate;

  state.config = config;
  state.default_model_dir = default_model_dir;
  state.dialog = gimp_procedure_dialog_new(procedure, config, _("SnapGen Text to Image"));
  dialog = GIMP_PROCEDURE_DIALOG(state.dialog);
  gimp_procedure_dialog_set_ok_label(dialog, _("_Generate"));

  seed_box = gimp_procedure_dialog_fill_box(dialog, "seed-box", "seed", "random-seed", NULL);
  gtk_orientable_set_orientation(GTK_ORIENTABLE(seed_box), GTK_ORIENTATION_HORIZONTAL);
  gtk_box_set_spacing(GTK_BOX(seed_box), 12);
  gimp_procedure_dialog_set_sensitive(dialog, "seed", TRUE, G_OBJECT(config), "random-seed", TRUE);

  add_model_frame(dialog, &state);
  add_advanced_expander(dialog, &state);

  /* The prompt editors are our own widgets, so they go into a box the dialog already knows. */
  main_box = gimp_procedure_dialog_fill_box(dialog, "main-box", "seed-box", "model-frame", NULL);
  gtk_box_set_spacing(GTK_BOX(main_box), 8);
  prompt_frame = new_text_frame(config, "prompt", 96);
  gtk_box_pack_start(GTK_BOX(main_box), prompt_frame, TRUE, TRUE, 0);
  gtk_box_reorder_child(GTK_BOX(main_box), prompt_frame, 0);
  negative_frame = new_text_frame(config, "negative-prompt", 40);
  gtk_box_pack_start(GTK_BOX(main_box), negative_frame, FALSE, FALSE, 0);
  gtk_box_reorder_child(GTK_BOX(main_box), negative_frame, 1);

  gimp_procedure_dialog_fill(dialog, "main-box", "advanced-expander", NULL);

  notify_id =
      g_signal_connect(config, "notify::model-folder", G_CALLBACK(on_model_folder_changed), &state);
  update_model_status(&state);

  if (g_getenv(SNAPGEN_DIALOG_SCREENSHOT_ENV) != NULL) {
    if (GTK_IS_EXPANDER(state.advanced_expander))
      gtk_expander_set_expanded(GTK_EXPANDER(state.advanced_expander), TRUE);
    state.screenshot_source = g_timeout_add(1500, save_screenshot, &state);
  }

  generate = gimp_procedure_dialog_run(dialog);

  if (state.screenshot_source != 0) g_source_remove(state.screenshot_source);
  g_signal_handler_disconnect(config, notify_id);
  gtk_widget_destroy(state.dialog);
  return generate;
}
