/* snapgen-plugin.c: the GIMP 3 plug-in: registers "SnapGen Text to Image" (Filters > Render),
 * reads its arguments, runs the engine off the main thread and adds the result as a layer. */
#include <glib/gi18n-lib.h>
#include <libgimp/gimp.h>
#include <libgimp/gimpui.h>
#include <stdlib.h>
#include <unistd.h>

#include "config.h"
#include "generate-worker.h"
#include "layer-insert.h"
#include "snapgen-dialog.h"
#include "snapgen-progress.h"
#include "snapgen.h"

#define PROCEDURE_NAME "plug-in-snapgen-text-to-image"
#define PLUG_IN_BINARY "snapgen"
#define DEFAULT_SIDE 1024
#define MAX_STEPS 200
#define MAX_THREADS 1024

struct _SnapGenPlugIn {
  GimpPlugIn parent_instance;
  gint generating; /* nonzero while the engine's worker thread runs (atomic) */
};

#define SNAPGEN_TYPE_PLUG_IN (snapgen_plug_in_get_type())
G_DECLARE_FINAL_TYPE(SnapGenPlugIn, snapgen_plug_in, SNAPGEN, PLUG_IN, GimpPlugIn)
G_DEFINE_TYPE(SnapGenPlugIn, snapgen_plug_in, GIMP_TYPE_PLUG_IN)

GIMP_MAIN(SNAPGEN_TYPE_PLUG_IN)

/* Test hook: with a progress window up, press its Cancel button when denoising reaches step N. */
#define CANCEL_AT_STEP_ENV "SNAPGEN_TEST_CANCEL_AT_STEP"

/* Where progress goes: GIMP's progress bar always, the plug-in's own window when there is a GUI. */
typedef struct {
  GtkWidget *dialog;                 /* NULL in non-interactive runs */
  gint cancel_at_step;               /* 0: never (see CANCEL_AT_STEP_ENV) */
  gint cancelled_at_step, last_step; /* what the hook did, for its report */
} ProgressSink;

static void show_progress(gpointer data, sg_stage stage, gint step, gint total_steps) {
  ProgressSink *sink = data;
  gchar *text;
  gdouble fraction;

  switch (stage) {
    case SG_STAGE_LOADING:
      text = g_strdup(_("Loading the model"));
      fraction = 0.0;
      break;
    case SG_STAGE_ENCODING_TEXT:
      text = g_strdup(_("Encoding text"));
      fraction = 0.05;
      break;
    case SG_STAGE_DENOISING:
      /* The engine reports before each step, and once more when all are done. */
      /* TRANSLATORS: the step running now and the number of steps, e.g. "step 2 of 4" */
      text =
          g_strdup_printf(_("Denoising: step %d of %d"), MIN(step + 1, total_steps), total_steps);
      fraction = 0.1 + 0.85 * step / MAX(total_steps, 1);
      break;
    case SG_STAGE_DECODING:
    default:
      text = g_strdup(_("Decoding"));
      fraction = 0.95;
      break;
  }
  gimp_progress_set_text(text);
  gimp_progress_update(fraction);
  if (sink->dialog != NULL) snapgen_progress_dialog_update(sink->dialog, text, fraction);
  if (stage == SG_STAGE_DENOISING) sink->last_step = step;
  if (sink->dialog != NULL && sink->cancel_at_step > 0 && sink->cancelled_at_step < 0 &&
      stage == SG_STAGE_DENOISING && step >= sink->cancel_at_step) {
    sink->cancelled_at_step = step;
    snapgen_progress_dialog_cancel(sink->dialog);
  }
  g_free(text);
}

/* Cancel is not a failure; bad arguments are the caller's error; the rest is execution. */
static GimpValueArray *error_return_values(GimpProcedure *procedure, GError *error) {
  GimpPDBStatusType status = GIMP_PDB_EXECUTION_ERROR;

  if (error == NULL) error = g_error_new_literal(SNAPGEN_ERROR, SG_ERR_BACKEND, _("unknown error"));
  if (error->domain == SNAPGEN_ERROR && error->code == SG_ERR_CANCELLED) {
    g_error_free(error);
    return gimp_procedure_new_return_values(procedure, GIMP_PDB_CANCEL, NULL);
  }
  if (error->domain == SNAPGEN_ERROR && error->code == SG_ERR_INVALID_ARGUMENT)
    status = GIMP_PDB_CALLING_ERROR;
  /* GIMP shows the message to the user for interactive runs and hands it to scripts otherwise. */
  return gimp_procedure_new_return_values(procedure, status, error);
}

/* Puts the result into image, or into a new image when there is none (*created_image). */
static GimpLayer *add_result(GimpImage **image, gboolean *created_image,
                             const SnapgenRequest *request, const SnapgenResult *result,
                             GError **error) {
  gchar *layer_name = snapgen_layer_name(request->prompt);
  gchar *settings = snapgen_settings_json(request, result);
  GimpLayer *layer;

  *created_image = *image == NULL;
  if (*created_image) {
    *image = gimp_image_new(request->width, request->height, GIMP_RGB);
    gimp_image_undo_disable(*image);
  }
  layer = snapgen_insert_layer(*image, result->rgba, request->width, request->height, layer_name,
                               settings, error);
  if (*created_image) {
    gimp_image_undo_enable(*image);
    if (layer == NULL) {
      gimp_image_delete(*image);
      *image = NULL;
    }
  }
  g_free(settings);
  g_free(layer_name);
  return layer;
}

static GimpValueArray *snapgen_run(GimpProcedure *procedure, GimpRunMode run_mode, GimpImage *image,
                                   GimpDrawable **drawables, GimpProcedureConfig *config,
                                   gpointer run_data) {
  gchar *prompt = NULL, *negative_prompt = NULL, *model_folder = NULL;
  gint seed, steps, width, height, threads;
  gboolean random_seed, int8_weights, created_image = FALSE;
  gdouble guidance;
  SnapgenRequest request = {0};
  SnapgenResult result = {0};
  ProgressSink sink = {NULL, 0, -1, -1};
  gint cancel_requested = 0;
  GError *error = NULL;
  GimpLayer *layer = NULL;
  GimpValueArray *return_values;
  gboolean generated;
  SnapGenPlugIn *plug_in = SNAPGEN_PLUG_IN(gimp_procedure_get_plug_in(procedure));
  /* Interactive and repeat-last runs come from GIMP's GUI: they get the progress window. */
  gboolean has_gui = run_mode != GIMP_RUN_NONINTERACTIVE;

  (void)drawables;
  (void)run_data;
  gegl_init(NULL, NULL);

  if (has_gui) gimp_ui_init(PLUG_IN_BINARY);
  if (run_mode == GIMP_RUN_INTERACTIVE &&
      !snapgen_dialog_run(procedure, config, SNAPGEN_DEFAULT_MODEL_DIR))
    return gimp_procedure_new_return_values(procedure, GIMP_PDB_CANCEL, NULL);

  /* Check what can be checked before minutes of computing. */
  if (image != NULL && gimp_image_get_base_type(image) != GIMP_RGB)
    return error_return_values(
        procedure, g_error_new_literal(SNAPGEN_ERROR, SG_ERR_INVALID_ARGUMENT,
                                       _("SnapGen makes RGB layers: convert the image to RGB "
                                         "first (Image > Mode > RGB).")));

  g_object_get(config, "prompt", &prompt, "negative-prompt", &negative_prompt, "seed", &seed,
               "random-seed", &random_seed, "steps", &steps, "guidance", &guidance, "width", &width,
               "height", &height, "model-folder", &model_folder, "threads", &threads,
               "int8-weights", &int8_weights, NULL);
  if (random_seed) {
    seed = g_random_int_range(0, G_MAXINT);
    g_object_set(config, "seed", seed, NULL); /* remembered, so a good result can be redone */
  }

  request.model_dir =
      model_folder != NULL && *model_folder ? model_folder : SNAPGEN_DEFAULT_MODEL_DIR;
  request.threads = threads;
  request.int8_weights = int8_weights;
  request.prompt = prompt != NULL ? prompt : "";
  request.negative_prompt = negative_prompt != NULL ? negative_prompt : "";
  request.seed = (guint64)seed;
  request.steps = steps;
  request.guidance = guidance;
  request.width = width;
  request.height = height;

  if (has_gui) {
    gchar *heading = snapgen_layer_name(request.prompt);
    const gchar *cancel_at_step = g_getenv(CANCEL_AT_STEP_ENV);

    sink.dialog = snapgen_progress_dialog_new(heading, &cancel_requested);
    sink.cancel_at_step = cancel_at_step != NULL ? atoi(cancel_at_step) : 0;
    g_free(heading);
  }
  gimp_progress_init(_("SnapGen: generating an image"));
  g_atomic_int_set(&plug_in->generating, 1);
  generated = snapgen_generate(&request, &cancel_requested, show_progress, &sink, &result, &error);
  g_atomic_int_set(&plug_in->generating, 0);
  if (sink.dialog != NULL) gtk_widget_destroy(sink.dialog);
  if (sink.cancelled_at_step >= 0)
    g_printerr("snapgen: test hook pressed Cancel at step %d; the engine stopped at step %d\n",
               sink.cancelled_at_step, sink.last_step);

  if (generated) {
    gimp_progress_set_text(_("Adding the layer"));
    layer = add_result(&image, &created_image, &request, &result, &error);
    sg_free(result.rgba);
  }
  gimp_progress_end();

  if (layer == NULL) {
    return_values = error_return_values(procedure, error);
  } else {
    if (created_image && has_gui) gimp_display_new(image);
    return_values = gimp_procedure_new_return_values(procedure, GIMP_PDB_SUCCESS, NULL);
    GIMP_VALUES_SET_IMAGE(return_values, 1, image);
    GIMP_VALUES_SET_LAYER(return_values, 2, layer);
    GIMP_VALUES_SET_INT(return_values, 3, seed);
  }

  g_free(prompt);
  g_free(negative_prompt);
  g_free(model_folder);
  return return_values;
}

static GList *snapgen_query_procedures(GimpPlugIn *plug_in) {
  (void)plug_in;
  return g_list_append(NULL, g_strdup(PROCEDURE_NAME));
}

static GimpProcedure *snapgen_create_procedure(GimpPlugIn *plug_in, const gchar *name) {
  GimpProcedure *procedure;
  gint max_side = sg_max_image_side();

  if (!g_str_equal(name, PROCEDURE_NAME)) return NULL;

  procedure =
      gimp_image_procedure_new(plug_in, name, GIMP_PDB_PROC_TYPE_PLUGIN, snapgen_run, NULL, NULL);
  /* Usable with no image at all (then it makes one), and with any layer selection. */
  gimp_procedure_set_image_types(procedure, "*");
  gimp_procedure_set_sensitivity_mask(procedure, GIMP_PROCEDURE_SENSITIVE_ALWAYS);
  /* TRANSLATORS: menu item in Filters > Render; SnapGen is the model's name */
  gimp_procedure_set_menu_label(procedure, _("SnapGen Text to _Image…"));
  gimp_procedure_add_menu_path(procedure, "<Image>/Filters/Render");
  gimp_procedure_set_documentation(
      procedure, _("Generate an image from a text prompt with SnapGen"),
      _("Runs the SnapGen text-to-image model on this computer (nothing is sent anywhere) and "
        "adds the result as a new layer named after the prompt, above the selected layer and "
        "centred on the canvas, in one undo step. The seed and settings are stored in the "
        "layer's \"snapgen-settings\" parasite. Without an image, a new image is made."),
      PROCEDURE_NAME);
  gimp_procedure_set_attribution(procedure, "SnapGen for GIMP contributors",
                                 "SnapGen for GIMP contributors", "2025");

  gimp_procedure_add_string_argument(procedure, "prompt", _("_Prompt"),
                                     _("What the image should show"), "", G_PARAM_READWRITE);
  gimp_procedure_add_string_argument(procedure, "negative-prompt", _("_Negative prompt"),
                                     _("What the image should not show (used only with guidance "
                                       "above 1)"),
                                     "", G_PARAM_READWRITE);
  gimp_procedure_add_int_argument(procedure, "seed", _("S_eed"),
                                  _("Starting noise: the same seed and settings give the same "
                                    "image"),
                                  0, G_MAXINT, 0, G_PARAM_READWRITE);
  gimp_procedure_add_boolean_argument(procedure, "random-seed", _("R_andom seed"),
                                      _("Pick a new seed for every run (the seed used is kept "
                                        "on the layer)"),
                                      FALSE, G_PARAM_READWRITE);
  gimp_procedure_add_int_argument(procedure, "steps", _("S_teps"),
                                  _("Denoising steps; 0 uses the model's default"), 0, MAX_STEPS, 0,
                                  G_PARAM_READWRITE);
  gimp_procedure_add_double_argument(procedure, "guidance", _("G_uidance"),
                                     _("Classifier-free guidance scale; -1 uses the model's "
                                       "default, 1 or less turns it off"),
                                     -1.0, 30.0, -1.0, G_PARAM_READWRITE);
  gimp_procedure_add_int_argument(procedure, "width", _("_Width"),
                                  _("Width of the generated layer in pixels"), 8, max_side,
                                  MIN(DEFAULT_SIDE, max_side), G_PARAM_READWRITE);
  gimp_procedure_add_int_argument(procedure, "height", _("He_ight"),
                                  _("Height of the generated layer in pixels"), 8, max_side,
                                  MIN(DEFAULT_SIDE, max_side), G_PARAM_READWRITE);
  gimp_procedure_add_string_argument(procedure, "model-folder", _("_Model folder"),
                                     _("A SnapGen model folder (with model_index.json); empty "
                                       "uses the installed default model"),
                                     "", G_PARAM_READWRITE);
  gimp_procedure_add_int_argument(procedure, "threads", _("Threa_ds"),
                                  _("CPU threads for the engine; 0 uses all cores"), 0, MAX_THREADS,
                                  0, G_PARAM_READWRITE);
  gimp_procedure_add_boolean_argument(procedure, "int8-weights", _("_Low memory (int8 weights)"),
                                      _("Keep the text encoders' and the UNet's linear weights as "
                                        "int8: a quarter of their memory, a slightly different "
                                        "image"),
                                      FALSE, G_PARAM_READWRITE);

  gimp_procedure_add_image_return_value(procedure, "image", _("Image"),
                                        _("The image holding the new layer"), TRUE,
                                        G_PARAM_READWRITE);
  gimp_procedure_add_layer_return_value(procedure, "layer", _("Layer"), _("The generated layer"),
                                        TRUE, G_PARAM_READWRITE);
  gimp_procedure_add_int_return_value(procedure, "seed", _("Seed"), _("The seed that was used"), 0,
                                      G_MAXINT, 0, G_PARAM_READWRITE);
  return procedure;
}

/* Catalogues live in the plug-in's own folder (GIMP accepts only a path inside it). */
static gboolean snapgen_set_i18n(GimpPlugIn *plug_in, const gchar *procedure_name,
                                 gchar **gettext_domain, gchar **catalog_dir) {
  (void)plug_in;
  (void)procedure_name;
  *gettext_domain = g_strdup(GETTEXT_PACKAGE);
  *catalog_dir = g_strdup(SNAPGEN_LOCALE_SUBDIR);
  return TRUE;
}

/* libgimp calls this when GIMP ends the plug-in (GIMP's own progress Cancel, GIMP quitting or
 * gone), then frees its objects and calls exit(). While the worker thread computes, exit()'s
 * clean-up (library destructors) would run under its feet: end the process at once instead. */
static void snapgen_quit(GimpPlugIn *plug_in) {
  if (g_atomic_int_get(&SNAPGEN_PLUG_IN(plug_in)->generating)) _exit(EXIT_FAILURE);
}

static void snapgen_plug_in_class_init(SnapGenPlugInClass *klass) {
  GimpPlugInClass *plug_in_class = GIMP_PLUG_IN_CLASS(klass);

  plug_in_class->query_procedures = snapgen_query_procedures;
  plug_in_class->create_procedure = snapgen_create_procedure;
  plug_in_class->set_i18n = snapgen_set_i18n;
  plug_in_class->quit = snapgen_quit;
}

static void snapgen_plug_in_init(SnapGenPlugIn *plug_in) {
  (void)plug_in;
}
