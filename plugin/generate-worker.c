/* generate-worker.c: the worker thread that loads the model and runs sg_generate(), and the wait
 * on the caller's thread that keeps the main loop running and forwards progress reports. */
#include "generate-worker.h"

#include <glib-unix.h>
#include <glib/gi18n-lib.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

GQuark snapgen_error_quark(void) {
  return g_quark_from_static_string("snapgen-error-quark");
}

/* Shared between the worker and the waiting thread; the fields under "lock" change while the
 * worker runs, the rest is fixed before it starts or written before "finished" is set. */
typedef struct {
  const SnapgenRequest *request;
  const gint *cancel_requested;

  GMutex lock;
  sg_stage stage;
  gint step, total_steps;
  guint report_count; /* bumped on each progress report, so the waiter sees changes */
  gboolean finished;
  gint signals_received; /* termination signals so far (atomic): the first one stops the engine */

  sg_status status;
  sg_error error;
  gboolean failed_loading; /* the error came from loading the model, not from generating */
  SnapgenResult result;
} Job;

static gboolean stop_requested(Job *job) {
  return g_atomic_int_get(job->cancel_requested) || g_atomic_int_get(&job->signals_received) > 0;
}

static int on_engine_progress(void *user_data, sg_stage stage, int step, int total_steps) {
  Job *job = user_data;

  g_mutex_lock(&job->lock);
  job->stage = stage;
  job->step = step;
  job->total_steps = total_steps;
  job->report_count++;
  g_mutex_unlock(&job->lock);
  g_main_context_wakeup(NULL);
  return stop_requested(job);
}

static gpointer worker_main(gpointer data) {
  Job *job = data;
  const SnapgenRequest *request = job->request;
  sg_context_options options;
  sg_context *context = NULL;
  sg_status status;

  on_engine_progress(job, SG_STAGE_LOADING, 0, 0);
  sg_context_options_init(&options);
  options.threads = request->threads;
  options.int8_weights = request->int8_weights;
  status = sg_context_new(request->model_dir, &options, &context, &job->error);
  job->failed_loading = status != SG_OK;

  /* Loading cannot be interrupted; honour a cancel that came in meanwhile before the long part. */
  if (status == SG_OK && stop_requested(job)) {
    status = SG_ERR_CANCELLED;
    job->error.status = status;
    g_strlcpy(job->error.message, "cancelled", sizeof job->error.message);
  }

  if (status == SG_OK) {
    sg_generate_params params;

    sg_generate_params_init(&params);
    params.prompt = request->prompt;
    params.negative_prompt = request->negative_prompt;
    params.seed = request->seed;
    params.steps = request->steps;
    params.guidance = request->guidance < 0 ? -1.0f : (float)request->guidance;
    params.width = request->width;
    params.height = request->height;
    job->result.steps_used =
        request->steps > 0 ? request->steps : sg_context_default_steps(context);
    job->result.guidance_used =
        request->guidance >= 0 ? request->guidance : sg_context_default_guidance(context);
    status = sg_generate(context, &params, on_engine_progress, job, &job->result.rgba, &job->error);
  }
  if (context != NULL) sg_context_free(context);

  g_mutex_lock(&job->lock);
  job->status = status;
  job->finished = TRUE;
  g_mutex_unlock(&job->lock);
  g_main_context_wakeup(NULL);
  return NULL;
}

/* Termination signals while the worker runs. libgimp's own handler calls exit(), whose clean-up
 * (atexit handlers, the destructors of oneDNN and of the OpenMP runtime) would run while the
 * worker and its threads still compute, and crash. Here the first signal stops the engine like
 * Cancel, so the plug-in returns normally; a second one ends the process at once with _exit(),
 * which runs no clean-up at all. */
static const int termination_signals[] = {SIGHUP, SIGINT, SIGTERM};
#define N_TERMINATION_SIGNALS G_N_ELEMENTS(termination_signals)

typedef struct {
  guint source_ids[N_TERMINATION_SIGNALS];
  struct sigaction previous[N_TERMINATION_SIGNALS]; /* restored afterwards (libgimp's) */
} SignalGuard;

/* Runs on the waiting thread (a GLib signal source), not in signal context. */
static gboolean on_termination_signal(gpointer data) {
  Job *job = data;
  gint step, total_steps;

  if (g_atomic_int_add(&job->signals_received, 1) > 0) {
    g_printerr("snapgen: second termination signal, exiting now\n");
    _exit(EXIT_FAILURE);
  }
  g_mutex_lock(&job->lock);
  step = job->step;
  total_steps = job->total_steps;
  g_mutex_unlock(&job->lock);
  g_printerr("snapgen: termination signal at step %d of %d, stopping the generation\n", step,
             total_steps);
  return G_SOURCE_CONTINUE;
}

static void guard_signals(SignalGuard *guard, Job *job) {
  for (guint i = 0; i < N_TERMINATION_SIGNALS; i++) {
    sigaction(termination_signals[i], NULL, &guard->previous[i]);
    guard->source_ids[i] = g_unix_signal_add(termination_signals[i], on_termination_signal, job);
  }
}

static void unguard_signals(SignalGuard *guard) {
  for (guint i = 0; i < N_TERMINATION_SIGNALS; i++) {
    g_source_remove(guard->source_ids[i]); /* GLib resets the signal to its default action */
    sigaction(termination_signals[i], &guard->previous[i], NULL);
  }
}

/* A periodic wake-up so the wait below never depends on a single missed wake-up. */
static gboolean on_tick(gpointer data) {
  (void)data;
  return G_SOURCE_CONTINUE;
}

gboolean snapgen_generate(const SnapgenRequest *request, const gint *cancel_requested,
                          SnapgenProgressFunc progress, gpointer progress_data,
                          SnapgenResult *result, GError **error) {
  static const gint never_cancel = 0;
  Job job = {0};
  GThread *thread;
  GError *thread_error = NULL;
  guint reports_shown = 0;
  gboolean finished = FALSE;
  guint tick_id;
  SignalGuard signal_guard;

  g_return_val_if_fail(request != NULL && result != NULL, FALSE);

  job.request = request;
  job.cancel_requested = cancel_requested != NULL ? cancel_requested : &never_cancel;
  g_mutex_init(&job.lock);

  /* Before the thread starts: from then on no signal may end the process under its feet. */
  guard_signals(&signal_guard, &job);
  thread = g_thread_try_new("snapgen-worker", worker_main, &job, &thread_error);
  if (thread == NULL) {
    unguard_signals(&signal_guard);
    g_set_error(error, SNAPGEN_ERROR, SG_ERR_OUT_OF_MEMORY,
                _("Could not start the generation thread: %s"), thread_error->message);
    g_clear_error(&thread_error);
    g_mutex_clear(&job.lock);
    return FALSE;
  }

  tick_id = g_timeout_add(200, on_tick, NULL);
  while (!finished) {
    sg_stage stage;
    gint step, total_steps;
    guint report_count;

    g_main_context_iteration(NULL, TRUE);

    g_mutex_lock(&job.lock);
    stage = job.stage;
    step = job.step;
    total_steps = job.total_steps;
    report_count = job.report_count;
    finished = job.finished;
    g_mutex_unlock(&job.lock);

    if (report_count != reports_shown && progress != NULL)
      progress(progress_data, stage, step, total_steps);
    reports_shown = report_count;
  }
  g_source_remove(tick_id);
  g_thread_join(thread);
  unguard_signals(&signal_guard);
  g_mutex_clear(&job.lock);

  if (g_atomic_int_get(&job.signals_received) > 0) {
    g_printerr("snapgen: the engine stopped at step %d of %d\n", job.step, job.total_steps);
    /* A signal that came after the last step still means: add nothing, stop. */
    if (job.status == SG_OK) {
      sg_free(job.result.rgba);
      job.result.rgba = NULL;
      job.status = SG_ERR_CANCELLED;
    }
  }
  if (job.status != SG_OK) {
    const gchar *message = job.error.message[0] ? job.error.message : sg_status_name(job.status);

    if (job.result.rgba != NULL) sg_free(job.result.rgba);
    if (job.status == SG_ERR_CANCELLED)
      g_set_error_literal(error, SNAPGEN_ERROR, job.status, _("Generation was cancelled."));
    else if (job.failed_loading)
      g_set_error(error, SNAPGEN_ERROR, job.status,
                  _("Could not load the SnapGen model from “%s”: %s"), request->model_dir, message);
    else
      g_set_error(error, SNAPGEN_ERROR, job.status, _("Could not generate the image: %s"), message);
    return FALSE;
  }
  *result = job.result;
  return TRUE;
}
