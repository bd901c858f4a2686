/* generate-worker.h: runs one SnapGen generation on a worker thread while the caller's thread
 * keeps the GLib main loop (GIMP's wire, GTK) alive and shows progress. No GIMP types here. */
#ifndef SNAPGEN_GENERATE_WORKER_H
#define SNAPGEN_GENERATE_WORKER_H

#include <glib.h>

#include "snapgen.h"

G_BEGIN_DECLS

/* Errors carry the engine's sg_status as their code (SG_ERR_INVALID_ARGUMENT, ...). */
#define SNAPGEN_ERROR (snapgen_error_quark())
GQuark snapgen_error_quark(void);

/* What to generate. Strings are borrowed for the duration of snapgen_generate(). */
typedef struct {
  const gchar *model_dir;
  gint threads; /* 0: all cores */
  gboolean int8_weights; /* sg_context_options.int8_weights: less memory, slightly other image */
  const gchar *prompt;
  const gchar *negative_prompt;
  guint64 seed;
  gint steps;       /* 0: the model's default */
  gdouble guidance; /* < 0: the model's default */
  gint width, height;
} SnapgenRequest;

/* What came out: the pixels and the settings the model actually used. */
typedef struct {
  guint8 *rgba; /* width * height * 4 bytes, straight alpha; free with sg_free() */
  gint steps_used;
  gdouble guidance_used;
} SnapgenResult;

/* Called on the caller's thread whenever the engine reports a new stage or step. */
typedef void (*SnapgenProgressFunc)(gpointer user_data, sg_stage stage, gint step,
                                    gint total_steps);

/* Starts the worker, pumps the default main context until it is done, and returns TRUE with
 * *result filled, or FALSE with *error set. Setting *cancel_requested to nonzero (with
 * g_atomic_int_set, from a GTK callback for example) makes the engine stop within one step; the
 * error is then SG_ERR_CANCELLED. */
gboolean snapgen_generate(const SnapgenRequest *request, const gint *cancel_requested,
                          SnapgenProgressFunc progress, gpointer progress_data,
                          SnapgenResult *result, GError **error);

G_END_DECLS

#endif
