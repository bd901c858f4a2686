/* ops_dnnl.c: the ops on oneDNN 3.x primitives, each created once per shape and kept in a cache
 * owned by the backend (not thread-safe: one backend per thread). Where oneDNN only has a reference
 * kernel (NEON-only arm64 cores), convolutions and matrix products run on OpenBLAS instead
 * (ops_blas.c, where built), and depthwise convolution, activations, binary ops and softmax on the
 * engine's own loops (ops_fast.c): see choose_kernel. */
#include <glib.h>
#include <math.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "error.h"
#include "ops_dnnl_check.h"
#include "ops_internal.h"

#define MAX_STEPS 4
#define MAX_ARGS 8
#define MAX_MEMORIES 16
#define MAX_USER 6
#define MAX_BUFFERS 2
/* Offsets of an op's buffers in the shared buffer are rounded up to this many bytes. */
#define BUFFER_ALIGN 64
/* Attention works on blocks of queries so the score matrix stays below this many floats. */
#define ATTENTION_SCORE_BUDGET (4 << 20)

/* SNAPGEN_FALLBACK: when an op runs on its fallback kernel instead of oneDNN (choose_kernel). */
typedef enum { FALLBACK_AUTO = 0, FALLBACK_ALWAYS, FALLBACK_NEVER } fallback_mode;

/* What runs a cached op: its oneDNN steps, or a fallback (then it has no steps). KERNEL_MATMUL:
 * a convolution as oneDNN matrix products (conv_as_matmul), where its convolutions are wrong. */
typedef enum { KERNEL_ONEDNN = 0, KERNEL_OPENBLAS, KERNEL_OWN, KERNEL_MATMUL } kernel_kind;

struct sg_dnnl {
  dnnl_engine_t engine;
  dnnl_stream_t stream;
  GHashTable *cache;     /* key "op shapes params" -> sg_dnnl_op */
  float *scores;         /* attention score block */
  size_t scores_count;
  unsigned char *empty;  /* attention: 1 for a query that sees no key */
  size_t empty_count;
  fallback_mode fallback;
  int log_kernels;       /* SNAPGEN_LOG_KERNELS=1: one stderr line per kernel chosen */
  sg_blas_scratch blas_scratch;
  GHashTable *packed;    /* "data-pointer constant-id" -> packed_tensor */
  size_t packed_bytes;   /* bytes held by the packed weights */
  size_t released_bytes; /* plain weights released after packing (SG_WEIGHT_HANDOFF) */
  int conv_speed;        /* 0: not probed yet; 1: oneDNN has a fast convolution; -1: it has not */
  double *norm_scratch;  /* sums of the channels-last group norm, grown as needed */
  int64_t norm_scratch_count;
  void *op_buffer;       /* the blocked copies of the running op's inputs and outputs */
  size_t op_buffer_bytes;
  int bf16; /* convolutions and model-weight matmuls compute in bf16 (set_bf16) */
  /* oneDNN's dense and depthwise convolutions: 0 not checked yet; 1 used; -1 not used (they
   * failed the check of ops_dnnl_check.c on this CPU; choose_conv_kernel). SNAPGEN_CONV_CHECK=off
   * skips the check (to reproduce a failure), =fail acts as if both had failed it. */
  int conv_right;
  int depthwise_right;
};

/* Model weights reordered once into the layout a primitive prefers, kept for every later run of
 * any op that wants that layout (tensor.h: constant_id says the source never changes). The copy
 * lives in a mapping of its own, so dropping it gives the memory back to the system. */
typedef struct {
  dnnl_memory_desc_t md; /* the blocked layout */
  dnnl_memory_t memory;  /* over buffer */
  void *buffer;
  size_t buffer_bytes;
} packed_weights;

/* One weight tensor's packed copies, and whether its plain values are gone (SG_WEIGHT_HANDOFF
 * released): then the first copy is the source of any other layout or of the plain values. */
typedef struct {
  GPtrArray *layouts;          /* packed_weights */
  dnnl_memory_desc_t plain_md; /* the plain layout the first copy was made from */
  size_t plain_bytes;
  int released;
} packed_tensor;

static void packed_free(gpointer data) {
  packed_weights *packed = data;
  dnnl_memory_destroy(packed->memory);
  dnnl_memory_desc_destroy(packed->md);
  sg_pages_free(packed->buffer, packed->buffer_bytes);
  free(packed);
}

static void packed_tensor_free(gpointer data) {
  packed_tensor *tensor = data;
  g_ptr_array_free(tensor->layouts, TRUE);
  dnnl_memory_desc_destroy(tensor->plain_md);
  free(tensor);
}

/* One primitive with its arguments. */
typedef struct {
  dnnl_primitive_t primitive;
  int nargs;
  dnnl_exec_arg_t args[MAX_ARGS];
} sg_dnnl_step;

/* The weights argument of a convolution or matmul whose primitive wants them in a blocked layout:
 * the caller's plain weights (user memory `user`) are reordered into `md` once per weight tensor
 * (packed_weights) or, for weights without a constant_id, into `scratch` at every run. */
typedef struct {
  dnnl_memory_desc_t md;    /* NULL: the primitive takes the plain weights as they are */
  dnnl_memory_t user;       /* the caller's plain weights */
  dnnl_primitive_t reorder; /* plain -> md */
  int step, arg;            /* steps[step].args[arg] takes the reordered weights */
  dnnl_memory_t scratch;    /* made on the first run with non-constant weights */
} weight_slot;

/* A cached op: its steps (e.g. reorder, convolution, reorder) and memory objects. The user
 * memories get the caller's pointers at each run, in the order the op was built with. */
typedef struct {
  int nsteps;
  sg_dnnl_step steps[MAX_STEPS];
  int nmemories;
  dnnl_memory_t memories[MAX_MEMORIES]; /* all, destroyed with the op */
  int nuser;
  dnnl_memory_t user[MAX_USER];
  kernel_kind kernel;             /* not KERNEL_ONEDNN: the caller runs the fallback */
  sg_activation activation_after; /* group norm: activation on the engine's loop after the steps */
  weight_slot weights;
  /* Blocked copies of an input or output live only while the op runs: they are placed in the
   * backend's shared op_buffer at these offsets, not kept per op (they add up to gigabytes). */
  int nbuffers;
  dnnl_memory_t buffers[MAX_BUFFERS];
  size_t buffer_offsets[MAX_BUFFERS];
  size_t buffer_bytes; /* all of them, aligned */
} sg_dnnl_op;

static void op_free(gpointer data) {
  sg_dnnl_op *op = data;
  if (!op) return;
  for (int i = 0; i < op->nsteps; i++) dnnl_primitive_destroy(op->steps[i].primitive);
  for (int i = 0; i < op->nmemories; i++) dnnl_memory_destroy(op->memories[i]);
  if (op->weights.reorder) dnnl_primitive_destroy(op->weights.reorder);
  if (op->weights.scratch) dnnl_memory_destroy(op->weights.scratch);
  if (op->weights.md) dnnl_memory_desc_destroy(op->weights.md);
  free(op);
}

static const char *status_text(dnnl_status_t status) {
  switch (status) {
    case dnnl_success: return "success";
    case dnnl_out_of_memory: return "out of memory";
    case dnnl_invalid_arguments: return "invalid arguments";
    case dnnl_unimplemented: return "not implemented for these shapes";
    case dnnl_runtime_error: return "runtime error";
    default: return "failure";
  }
}

sg_dnnl *sg_dnnl_new(sg_error *error) {
  sg_dnnl *dnnl = calloc(1, sizeof *dnnl);
  if (!dnnl) {
    sg_fail(error, SG_ERR_OUT_OF_MEMORY, "out of memory creating the oneDNN backend");
    return NULL;
  }
  dnnl_status_t status = dnnl_engine_create(&dnnl->engine, dnnl_cpu, 0);
  if (status == dnnl_success) {
    status = dnnl_stream_create(&dnnl->stream, dnnl->engine, dnnl_stream_default_flags);
  }
  if (status != dnnl_success) {
    sg_fail(error, SG_ERR_BACKEND, "oneDNN could not create a CPU engine and stream: %s",
            status_text(status));
    sg_dnnl_free(dnnl);
    return NULL;
  }
  dnnl->cache = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, op_free);
  dnnl->packed = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, packed_tensor_free);
  const char *fallback = getenv("SNAPGEN_FALLBACK");
  if (fallback && *fallback && strcmp(fallback, "auto") != 0) {
    if (!strcmp(fallback, "always")) {
      dnnl->fallback = FALLBACK_ALWAYS;
    } else if (!strcmp(fallback, "never")) {
      dnnl->fallback = FALLBACK_NEVER;
    } else {
      sg_fail(error, SG_ERR_INVALID_ARGUMENT,
              "the environment variable SNAPGEN_FALLBACK is '%s'; it must be auto, always or never",
              fallback);
      sg_dnnl_free(dnnl);
      return NULL;
    }
  }
  const char *log_kernels = getenv("SNAPGEN_LOG_KERNELS");
  dnnl->log_kernels = log_kernels && *log_kernels && strcmp(log_kernels, "0") != 0;
  const char *conv_check = getenv("SNAPGEN_CONV_CHECK");
  if (conv_check && *conv_check && strcmp(conv_check, "auto") != 0) {
    if (!strcmp(conv_check, "off") || !strcmp(conv_check, "fail")) {
      dnnl->conv_right = dnnl->depthwise_right = !strcmp(conv_check, "off") ? 1 : -1;
    } else {
      sg_fail(error, SG_ERR_INVALID_ARGUMENT,
              "the environment variable SNAPGEN_CONV_CHECK is '%s'; it must be auto, off or fail",
              conv_check);
      sg_dnnl_free(dnnl);
      return NULL;
    }
  }
  return dnnl;
}

void sg_dnnl_free(sg_dnnl *dnnl) {
  if (!dnnl) return;
  if (dnnl->cache) g_hash_table_destroy(dnnl->cache);
  if (dnnl->packed) g_hash_table_destroy(dnnl->packed);
  if (dnnl->stream) dnnl_stream_destroy(dnnl->stream);
  if (dnnl->engine) dnnl_engine_destroy(dnnl->engine);
  free(dnnl->scores);
  free(dnnl->empty);
  sg_pages_free(dnnl->blas_scratch.data, dnnl->blas_scratch.count * sizeof(float));
  sg_pages_free(dnnl->op_buffer, dnnl->op_buffer_bytes);
  free(dnnl->norm_scratch);
  free(dnnl);
}

void sg_dnnl_drop_packed_weights(sg_dnnl *dnnl) {
  g_hash_table_remove_all(dnnl->packed);
  dnnl->packed_bytes = 0;
  dnnl->released_bytes = 0;
}

size_t sg_dnnl_packed_weight_bytes(const sg_dnnl *dnnl) { return dnnl->packed_bytes; }

size_t sg_dnnl_released_weight_bytes(const sg_dnnl *dnnl) { return dnnl->released_bytes; }

static void packed_key(const sg_tensor *weights, char *key, size_t size) {
  snprintf(key, size, "%p %llx", weights->data, (unsigned long long)weights->constant_id);
}

/* The entry of weights in the packed cache, or NULL. */
static packed_tensor *packed_find(sg_dnnl *dnnl, const sg_tensor *weights) {
  if (!weights->constant_id) return NULL;
  char key[64];
  packed_key(weights, key, sizeof key);
  return g_hash_table_lookup(dnnl->packed, key);
}

/* Writes the plain values of a released weight tensor into dst (plain_bytes) from its first
 * packed copy. */
static dnnl_status_t unpack_weights(sg_dnnl *dnnl, const packed_tensor *tensor, void *dst) {
  /* the f32 copy made first (a bf16 one cannot give back the values) */
  const packed_weights *source = NULL;
  for (guint i = 0; i < tensor->layouts->len && !source; i++) {
    const packed_weights *copy = g_ptr_array_index(tensor->layouts, i);
    dnnl_data_type_t type = dnnl_data_type_undef;
    dnnl_memory_desc_query(copy->md, dnnl_query_data_type, &type);
    if (type == dnnl_f32) source = copy;
  }
  if (!source) return dnnl_invalid_arguments;
  dnnl_primitive_desc_t pd = NULL;
  dnnl_primitive_t reorder = NULL;
  dnnl_memory_t plain = NULL;
  dnnl_status_t status = dnnl_reorder_primitive_desc_create(&pd, source->md, dnnl->engine,
                                                            tensor->plain_md, dnnl->engine, NULL);
  if (status == dnnl_success) status = dnnl_primitive_create(&reorder, pd);
  if (status == dnnl_success)
    status = dnnl_memory_create(&plain, tensor->plain_md, dnnl->engine, dst);
  if (status == dnnl_success) {
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, source->memory}, {DNNL_ARG_TO, plain}};
    status = dnnl_primitive_execute(reorder, dnnl->stream, 2, args);
  }
  if (status == dnnl_success) status = dnnl_stream_wait(dnnl->stream);
  if (plain) dnnl_memory_destroy(plain);
  if (reorder) dnnl_primitive_destroy(reorder);
  if (pd) dnnl_primitive_desc_destroy(pd);
  return status;
}

/* The plain values of weights for a kernel that reads them (the fallbacks): the weights
 * themselves, or, when this backend released them after packing, a copy restored from the packed
 * one into *restored (the caller frees it). */
static sg_status readable_weights(sg_dnnl *dnnl, const sg_tensor *weights, sg_tensor *view,
                                  void **restored, sg_error *error) {
  *view = *weights;
  *restored = NULL;
  const packed_tensor *tensor = packed_find(dnnl, weights);
  if (!tensor || !tensor->released) return SG_OK;
  *restored = malloc(tensor->plain_bytes);
  if (!*restored) return sg_fail(error, SG_ERR_OUT_OF_MEMORY, "out of memory restoring weights");
  dnnl_status_t status = unpack_weights(dnnl, tensor, *restored);
  if (status != dnnl_success) {
    free(*restored);
    *restored = NULL;
    return sg_fail(error, SG_ERR_BACKEND, "oneDNN could not restore packed weights: %s",
                   status_text(status));
  }
  view->data = *restored;
  view->constant_id = 0;
  view->memory = SG_WEIGHT_KEEP;
  return SG_OK;
}

/* After the first packed copy of weights: what tensor.h lets a backend do with the plain pages. */
static void release_plain(sg_dnnl *dnnl, const sg_tensor *weights, packed_tensor *tensor) {
  const size_t nbytes = sg_tensor_nbytes(weights);
  if (weights->memory == SG_WEIGHT_FILE_PAGES) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t start = ((uintptr_t)weights->data + page - 1) / page * page;
    uintptr_t end = ((uintptr_t)weights->data + nbytes) / page * page;
    if (end > start) madvise((void *)start, end - start, MADV_DONTNEED);
  } else if (weights->memory == SG_WEIGHT_HANDOFF) {
    /* Same address, no pages, no access: nothing else can be placed there (the cache key stays
     * unique) and a stray read faults instead of seeing zeros. */
    void *gone = mmap(weights->data, sg_weight_mapping_bytes(nbytes), PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    if (gone != MAP_FAILED) {
      tensor->released = 1;
      dnnl->released_bytes += nbytes;
    }
  }
}

/* A new packed copy of weights in the slot's layout, in a mapping of its own. */
static dnnl_status_t packed_new(sg_dnnl *dnnl, const weight_slot *slot, packed_weights **out) {
  packed_weights *packed = calloc(1, sizeof *packed);
  if (!packed) return dnnl_out_of_memory;
  packed->buffer_bytes = sg_weight_mapping_bytes(dnnl_memory_desc_get_size(slot->md));
  packed->buffer = sg_pages_alloc(packed->buffer_bytes);
  dnnl_status_t status = packed->buffer == NULL ? dnnl_out_of_memory : dnnl_success;
  if (status == dnnl_success) status = dnnl_memory_desc_clone(&packed->md, slot->md);
  if (status == dnnl_success)
    status = dnnl_memory_create(&packed->memory, slot->md, dnnl->engine, packed->buffer);
  if (status != dnnl_success) {
    if (packed->md) dnnl_memory_desc_destroy(packed->md);
    sg_pages_free(packed->buffer, packed->buffer_bytes);
    free(packed);
    return status;
  }
  *out = packed;
  return dnnl_success;
}

/* Reorders the op's weights (user memory already pointing at `weights`) into its slot's layout:
 * found in or added to the packed cache when the weights are constant, else into the op's
 * scratch copy. *out gets the memory the primitive is to read. The first packed copy of weights
 * may release their plain values (release_plain); a later layout is then made from a copy. */
static dnnl_status_t slot_weights(sg_dnnl *dnnl, sg_dnnl_op *op, const sg_tensor *weights,
                                  dnnl_memory_t *out) {
  weight_slot *slot = &op->weights;
  dnnl_status_t status = dnnl_success;
  if (!weights->constant_id) {
    if (!slot->scratch) {
      status = dnnl_memory_create(&slot->scratch, slot->md, dnnl->engine, DNNL_MEMORY_ALLOCATE);
      if (status != dnnl_success) return status;
    }
    *out = slot->scratch;
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, slot->user}, {DNNL_ARG_TO, *out}};
    return dnnl_primitive_execute(slot->reorder, dnnl->stream, 2, args);
  }
  packed_tensor *tensor = packed_find(dnnl, weights);
  for (guint i = 0; tensor && i < tensor->layouts->len; i++) {
    packed_weights *packed = g_ptr_array_index(tensor->layouts, i);
    if (dnnl_memory_desc_equal(packed->md, slot->md)) {
      *out = packed->memory;
      return dnnl_success;
    }
  }
  packed_weights *packed = NULL;
  status = packed_new(dnnl, slot, &packed);
  if (status != dnnl_success) return status;
  void *restored = NULL; /* the plain values, when released */
  if (tensor && tensor->released) {
    restored = malloc(tensor->plain_bytes);
    status = restored ? unpack_weights(dnnl, tensor, restored) : dnnl_out_of_memory;
    if (status == dnnl_success) status = dnnl_memory_set_data_handle(slot->user, restored);
  }
  if (status == dnnl_success) {
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, slot->user}, {DNNL_ARG_TO, packed->memory}};
    status = dnnl_primitive_execute(slot->reorder, dnnl->stream, 2, args);
  }
  if (status == dnnl_success) status = dnnl_stream_wait(dnnl->stream);
  free(restored);
  if (status == dnnl_success && !tensor) {
    tensor = calloc(1, sizeof *tensor);
    if (!tensor) status = dnnl_out_of_memory;
    if (status == dnnl_success) {
      const_dnnl_memory_desc_t user_md = NULL;
      status = dnnl_memory_get_memory_desc(slot->user, &user_md);
      if (status == dnnl_success) status = dnnl_memory_desc_clone(&tensor->plain_md, user_md);
    }
    if (status == dnnl_success) {
      char key[64];
      packed_key(weights, key, sizeof key);
      tensor->layouts = g_ptr_array_new_with_free_func(packed_free);
      tensor->plain_bytes = sg_tensor_nbytes(weights);
      g_hash_table_insert(dnnl->packed, g_strdup(key), tensor);
    } else {
      free(tensor);
    }
  }
  if (status != dnnl_success) {
    packed_free(packed);
    return status;
  }
  g_ptr_array_add(tensor->layouts, packed);
  dnnl->packed_bytes += dnnl_memory_desc_get_size(slot->md);
  /* A bf16 copy cannot give back the f32 values: the plain ones are kept then. */
  dnnl_data_type_t packed_type = dnnl_data_type_undef;
  dnnl_memory_desc_query(slot->md, dnnl_query_data_type, &packed_type);
  if (!tensor->released && packed_type == dnnl_f32) release_plain(dnnl, weights, tensor);
  *out = packed->memory;
  return dnnl_success;
}

/* Points the op's buffers into the shared op buffer, growing it when the op needs more. */
static dnnl_status_t bind_buffers(sg_dnnl *dnnl, sg_dnnl_op *op) {
  if (op->nbuffers == 0) return dnnl_success;
  if (dnnl->op_buffer_bytes < op->buffer_bytes) {
    void *grown = sg_pages_alloc(op->buffer_bytes);
    if (!grown) return dnnl_out_of_memory;
    sg_pages_free(dnnl->op_buffer, dnnl->op_buffer_bytes);
    dnnl->op_buffer = grown;
    dnnl->op_buffer_bytes = op->buffer_bytes;
  }
  dnnl_status_t status = dnnl_success;
  for (int i = 0; i < op->nbuffers && status == dnnl_success; i++) {
    status = dnnl_memory_set_data_handle(op->buffers[i],
                                         (char *)dnnl->op_buffer + op->buffer_offsets[i]);
  }
  return status;
}

/* Runs a cached op on the caller's pointers (in the order the op was built with); weights is the
 * tensor behind the op's weights pointer, pointers[1] (NULL for ops without weights). */
static sg_status op_run_weights(sg_dnnl *dnnl, sg_dnnl_op *op, const char *name,
                                void *const *pointers, const sg_tensor *weights,
                                sg_error *error) {
  dnnl_status_t status = dnnl_success;
  for (int i = 0; i < op->nuser && status == dnnl_success; i++) {
    status = dnnl_memory_set_data_handle(op->user[i], pointers[i]);
  }
  if (status == dnnl_success) status = bind_buffers(dnnl, op);
  void *restored = NULL;
  if (status == dnnl_success && weights && !op->weights.md) {
    /* A primitive that reads the plain weights, which this backend may have released. */
    sg_tensor readable;
    sg_status restore = readable_weights(dnnl, weights, &readable, &restored, error);
    if (restore != SG_OK) return restore;
    if (restored) status = dnnl_memory_set_data_handle(op->user[1], restored);
  }
  if (status == dnnl_success && op->weights.md) {
    dnnl_memory_t reordered = NULL;
    status = slot_weights(dnnl, op, weights, &reordered);
    if (status == dnnl_success) op->steps[op->weights.step].args[op->weights.arg].memory = reordered;
  }
  for (int i = 0; i < op->nsteps && status == dnnl_success; i++) {
    sg_dnnl_step *step = &op->steps[i];
    status = dnnl_primitive_execute(step->primitive, dnnl->stream, step->nargs, step->args);
  }
  if (status == dnnl_success) status = dnnl_stream_wait(dnnl->stream);
  free(restored);
  if (status != dnnl_success) {
    return sg_fail(error, status == dnnl_out_of_memory ? SG_ERR_OUT_OF_MEMORY : SG_ERR_BACKEND,
                   "%s: oneDNN execution failed: %s", name, status_text(status));
  }
  return SG_OK;
}

static sg_status op_run(sg_dnnl *dnnl, sg_dnnl_op *op, const char *name, void *const *pointers,
                        sg_error *error) {
  return op_run_weights(dnnl, op, name, pointers, NULL, error);
}

/* ---- building an op: a builder collects the descriptors to free and the first failure ---- */

typedef struct {
  sg_dnnl *dnnl;
  sg_dnnl_op *op;
  const char *key; /* the op's cache key, named in the kernel log */
  dnnl_status_t status;
  const char *failed; /* source text of the first call that failed */
  int nmds, npds;
  dnnl_memory_desc_t mds[24];
  dnnl_primitive_desc_t pds[MAX_STEPS * 2];
  dnnl_primitive_attr_t attr;
} builder;

/* Runs a oneDNN call unless an earlier one failed, and remembers the first failure. */
#define TRY(b, call)                                        \
  do {                                                      \
    if ((b)->status == dnnl_success) {                      \
      (b)->status = (call);                                 \
      if ((b)->status != dnnl_success) (b)->failed = #call; \
    }                                                       \
  } while (0)

static void build_start(builder *b, sg_dnnl *dnnl) {
  memset(b, 0, sizeof *b);
  b->dnnl = dnnl;
  b->op = calloc(1, sizeof *b->op);
  if (!b->op) {
    b->status = dnnl_out_of_memory;
    b->failed = "calloc";
  }
}

static void keep_md(builder *b, dnnl_memory_desc_t md) {
  if (md) b->mds[b->nmds++] = md;
}

/* A plain descriptor of type dt; strides NULL means dense row-major. */
static const_dnnl_memory_desc_t md_plain_typed(builder *b, int ndims, const int64_t *dims,
                                               const int64_t *strides, dnnl_data_type_t dt) {
  dnnl_dims_t d, s;
  int64_t next = 1;
  for (int i = ndims - 1; i >= 0; i--) {
    d[i] = dims[i];
    s[i] = strides ? strides[i] : next;
    next *= dims[i];
  }
  dnnl_memory_desc_t md = NULL;
  TRY(b, dnnl_memory_desc_create_with_strides(&md, ndims, d, dt, s));
  keep_md(b, md);
  return md;
}

static const_dnnl_memory_desc_t md_plain(builder *b, int ndims, const int64_t *dims,
                                         const int64_t *strides) {
  return md_plain_typed(b, ndims, dims, strides, dnnl_f32);
}

/* A descriptor of type dt that lets the primitive choose its layout. */
static const_dnnl_memory_desc_t md_any_typed(builder *b, int ndims, const int64_t *dims,
                                             dnnl_data_type_t dt) {
  dnnl_dims_t d;
  for (int i = 0; i < ndims; i++) d[i] = dims[i];
  dnnl_memory_desc_t md = NULL;
  TRY(b, dnnl_memory_desc_create_with_tag(&md, ndims, d, dt, dnnl_format_tag_any));
  keep_md(b, md);
  return md;
}

static const_dnnl_memory_desc_t md_any(builder *b, int ndims, const int64_t *dims) {
  return md_any_typed(b, ndims, dims, dnnl_f32);
}

static dnnl_memory_t add_memory(builder *b, const_dnnl_memory_desc_t md, void *handle) {
  dnnl_memory_t memory = NULL;
  TRY(b, dnnl_memory_create(&memory, md, b->dnnl->engine, handle));
  if (memory) b->op->memories[b->op->nmemories++] = memory;
  return memory;
}

/* Memory bound to the caller's next pointer at each run. */
static dnnl_memory_t user_memory(builder *b, const_dnnl_memory_desc_t md) {
  dnnl_memory_t memory = add_memory(b, md, DNNL_MEMORY_NONE);
  if (memory) b->op->user[b->op->nuser++] = memory;
  return memory;
}

/* A blocked copy of an input or output: bound to its place in the shared op buffer at each run. */
static dnnl_memory_t buffer_memory(builder *b, const_dnnl_memory_desc_t md) {
  sg_dnnl_op *op = b->op;
  if (b->status != dnnl_success) return NULL;
  if (op->nbuffers == MAX_BUFFERS) {
    b->status = dnnl_invalid_arguments;
    b->failed = "buffer_memory (too many buffers)";
    return NULL;
  }
  dnnl_memory_t memory = add_memory(b, md, DNNL_MEMORY_NONE);
  if (!memory) return NULL;
  const size_t bytes = dnnl_memory_desc_get_size(md);
  op->buffers[op->nbuffers] = memory;
  op->buffer_offsets[op->nbuffers] = op->buffer_bytes;
  op->nbuffers++;
  op->buffer_bytes += (bytes + BUFFER_ALIGN - 1) / BUFFER_ALIGN * BUFFER_ALIGN;
  return memory;
}

static void keep_pd(builder *b, dnnl_primitive_desc_t pd) {
  if (!pd) return;
  for (int i = 0; i < b->npds; i++) {
    if (b->pds[i] == pd) return;
  }
  b->pds[b->npds++] = pd;
}

/* Appends a primitive made from pd with its arguments (pairs of DNNL_ARG_* and memory). */
static void add_step(builder *b, dnnl_primitive_desc_t pd, int nargs, const dnnl_exec_arg_t *args) {
  keep_pd(b, pd);
  if (b->status != dnnl_success) return;
  sg_dnnl_step *step = &b->op->steps[b->op->nsteps];
  TRY(b, dnnl_primitive_create(&step->primitive, pd));
  if (b->status != dnnl_success) return;
  step->nargs = nargs;
  memcpy(step->args, args, (size_t)nargs * sizeof *args);
  b->op->nsteps++;
}

static void add_reorder(builder *b, dnnl_memory_t from, const_dnnl_memory_desc_t from_md,
                        dnnl_memory_t to, const_dnnl_memory_desc_t to_md) {
  dnnl_primitive_desc_t pd = NULL;
  TRY(b, dnnl_reorder_primitive_desc_create(&pd, from_md, b->dnnl->engine, to_md,
                                            b->dnnl->engine, NULL));
  add_step(b, pd, 2, (dnnl_exec_arg_t[]){{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}});
}

/* Gives the op a weight slot (see weight_slot): the weights come as user memory `user` in
 * user_md and the primitive wants want_md. The caller then sets which step argument takes them. */
static void add_weight_slot(builder *b, dnnl_memory_t user, const_dnnl_memory_desc_t user_md,
                            const_dnnl_memory_desc_t want_md) {
  dnnl_primitive_desc_t pd = NULL;
  TRY(b, dnnl_reorder_primitive_desc_create(&pd, user_md, b->dnnl->engine, want_md,
                                            b->dnnl->engine, NULL));
  keep_pd(b, pd);
  if (b->status != dnnl_success) return;
  weight_slot *slot = &b->op->weights;
  TRY(b, dnnl_primitive_create(&slot->reorder, pd));
  TRY(b, dnnl_memory_desc_clone(&slot->md, want_md));
  slot->user = user;
}

/* oneDNN's form of an activation: algorithm and alpha. */
static dnnl_alg_kind_t activation_alg(sg_activation act, float *alpha) {
  *alpha = 0.0f;
  switch (act) {
    case SG_ACT_SILU: *alpha = 1.0f; return dnnl_eltwise_swish;
    case SG_ACT_GELU_ERF: return dnnl_eltwise_gelu_erf;
    case SG_ACT_GELU_TANH: return dnnl_eltwise_gelu_tanh;
    case SG_ACT_QUICK_GELU: *alpha = 1.702f; return dnnl_eltwise_swish; /* x·sigmoid(1.702x) */
    case SG_ACT_RELU: return dnnl_eltwise_relu;
    case SG_ACT_TANH: return dnnl_eltwise_tanh;
    case SG_ACT_NONE: break;
  }
  return dnnl_alg_kind_undef;
}

typedef struct {
  dnnl_alg_kind_t alg;
  float alpha, beta;
} eltwise_post_op;

/* Attributes with a chain of eltwise post-ops (count may be 0). */
static dnnl_primitive_attr_t make_attr(builder *b, int count, const eltwise_post_op *post_ops) {
  TRY(b, dnnl_primitive_attr_create(&b->attr));
  if (count == 0 || b->status != dnnl_success) return b->attr;
  dnnl_post_ops_t chain = NULL;
  TRY(b, dnnl_post_ops_create(&chain));
  for (int i = 0; i < count; i++) {
    TRY(b, dnnl_post_ops_append_eltwise(chain, post_ops[i].alg, post_ops[i].alpha,
                                        post_ops[i].beta));
  }
  TRY(b, dnnl_primitive_attr_set_post_ops(b->attr, chain));
  dnnl_post_ops_destroy(chain);
  return b->attr;
}

static dnnl_primitive_attr_t activation_attr(builder *b, sg_activation act) {
  eltwise_post_op post_op = {.beta = 0.0f};
  post_op.alg = activation_alg(act, &post_op.alpha);
  return make_attr(b, act == SG_ACT_NONE ? 0 : 1, &post_op);
}

/* How a convolution or matmul gets its residual: none; the residual is y itself; or another
 * tensor. Either way the primitive adds it with a sum post-op (before the activation) to what
 * its destination holds, which a step fills with the residual first unless it is y already. */
typedef enum { RESIDUAL_NONE = 0, RESIDUAL_IN_Y, RESIDUAL_OTHER } residual_mode;

static residual_mode residual_mode_of(const sg_tensor *residual, const sg_tensor *y) {
  if (!residual) return RESIDUAL_NONE;
  return residual->data == y->data ? RESIDUAL_IN_Y : RESIDUAL_OTHER;
}

/* Attributes: the residual sum (when there is one), then the activation. */
static dnnl_primitive_attr_t residual_attr(builder *b, residual_mode residual, sg_activation act) {
  if (residual == RESIDUAL_NONE) return activation_attr(b, act);
  TRY(b, dnnl_primitive_attr_create(&b->attr));
  dnnl_post_ops_t chain = NULL;
  TRY(b, dnnl_post_ops_create(&chain));
  TRY(b, dnnl_post_ops_append_sum(chain, 1.0f, 0, dnnl_data_type_undef));
  if (act != SG_ACT_NONE) {
    float alpha;
    dnnl_alg_kind_t alg = activation_alg(act, &alpha);
    TRY(b, dnnl_post_ops_append_eltwise(chain, alg, alpha, 0.0f));
  }
  TRY(b, dnnl_primitive_attr_set_post_ops(b->attr, chain));
  if (chain) dnnl_post_ops_destroy(chain);
  return b->attr;
}

/* Fills the destination the sum post-op adds into with the residual: from the user memory of the
 * residual (RESIDUAL_OTHER) or of y (RESIDUAL_IN_Y, only when dst is the op's own blocked copy). */
static void add_residual_step(builder *b, residual_mode residual, dnnl_memory_t y_user,
                              const_dnnl_memory_desc_t user_md, dnnl_memory_t dst,
                              const_dnnl_memory_desc_t dst_md) {
  if (residual == RESIDUAL_NONE || (residual == RESIDUAL_IN_Y && dst == y_user)) return;
  dnnl_memory_t from = residual == RESIDUAL_OTHER ? user_memory(b, user_md) : y_user;
  add_reorder(b, from, user_md, dst, dst_md);
}

/* The fallback kernels know no residual: they run without the activation, then
 * y = act(y + residual) here. A residual that is y itself is saved before the kernel runs. */
typedef struct {
  const sg_tensor *residual;
  float *saved;
} fallback_residual;

static sg_status fallback_residual_start(fallback_residual *f, const sg_tensor *residual,
                                         const sg_tensor *y, sg_error *error) {
  f->residual = residual;
  f->saved = NULL;
  if (residual && residual->data == y->data) {
    f->saved = malloc(sg_tensor_nbytes(y));
    if (!f->saved) return sg_fail(error, SG_ERR_OUT_OF_MEMORY, "out of memory for a residual");
    memcpy(f->saved, y->data, sg_tensor_nbytes(y));
  }
  return SG_OK;
}

static void fallback_residual_finish(fallback_residual *f, sg_activation act, sg_tensor *y) {
  if (!f->residual) return;
  const float *r = f->saved ? f->saved : f->residual->data;
  float *yd = y->data;
  const int64_t count = sg_tensor_numel(y), blocks = (count + 4095) / 4096;
#pragma omp parallel for
  for (int64_t k = 0; k < blocks; k++) {
    const int64_t first = k * 4096, n = count - first < 4096 ? count - first : 4096;
    for (int64_t i = first; i < first + n; i++) yd[i] += r[i];
    sg_fast_activate(yd + first, n, act);
  }
  free(f->saved);
}

/* True when oneDNN picked its plain reference kernel ("ref:any"), which is slow. */
static int is_reference_impl(const_dnnl_primitive_desc_t pd) {
  const char *impl = NULL;
  if (!pd || dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) != dnnl_success) {
    return 0;
  }
  return impl && strncmp(impl, "ref", 3) == 0;
}

/* True when oneDNN's implementation is a reference kernel: its name says "ref", or on arm64 it is a
 * "gemm:" one, which there always runs oneDNN's reference sgemm (its JIT sgemm is x86-only,
 * whatever the name says: "gemm:jit:f32" on a NEON-only core). */
static int is_slow_impl(const char *impl) {
  if (strstr(impl, "ref")) return 1;
#if defined(__aarch64__)
  if (!strncmp(impl, "gemm:", 5)) return 1;
#endif
  return 0;
}

/* The fallback of a convolution or matmul that is not depthwise: OpenBLAS where built. */
static kernel_kind blas_fallback(void) {
#ifdef SG_HAVE_BLAS
  return KERNEL_OPENBLAS;
#else
  return KERNEL_ONEDNN;
#endif
}

/* Decides, once per op (or step), what runs it: oneDNN's primitive pd, or the fallback kernel
 * (none: KERNEL_ONEDNN). SNAPGEN_FALLBACK=auto (the default) takes the fallback where oneDNN only
 * has a reference kernel, always takes it wherever there is one (to test it), never does not.
 * Logs the choice when SNAPGEN_LOG_KERNELS is set: one line per distinct op. */
static kernel_kind choose_kernel(builder *b, const_dnnl_primitive_desc_t pd, kernel_kind fallback) {
  if (b->status != dnnl_success) return KERNEL_ONEDNN;
  const char *impl = NULL;
  if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) != dnnl_success || !impl) {
    impl = "unknown";
  }
  const fallback_mode mode = b->dnnl->fallback;
  kernel_kind kernel = KERNEL_ONEDNN;
  if (mode == FALLBACK_ALWAYS || (mode == FALLBACK_AUTO && is_slow_impl(impl))) kernel = fallback;
  if (b->dnnl->log_kernels) {
    char name[128] = "engine f32 loop";
#ifdef SG_HAVE_BLAS
    if (kernel == KERNEL_OPENBLAS) sg_blas_describe(name, sizeof name);
#endif
    if (kernel == KERNEL_ONEDNN) {
      fprintf(stderr, "snapgen kernel: %s: oneDNN %s%s\n", b->key ? b->key : "?", impl,
              is_slow_impl(impl) ? " (reference kernel)" : "");
    } else {
      fprintf(stderr, "snapgen kernel: %s: %s (oneDNN offers %s)\n", b->key ? b->key : "?", name,
              impl);
    }
  }
  return kernel;
}

/* choose_kernel for a whole op: a fallback then runs the op instead of its (absent) steps. */
static kernel_kind choose_op_kernel(builder *b, const_dnnl_primitive_desc_t pd,
                                    kernel_kind fallback) {
  kernel_kind kernel = choose_kernel(b, pd, fallback);
  if (kernel != KERNEL_ONEDNN) b->op->kernel = kernel;
  return kernel;
}

/* Whether oneDNN's convolutions compute right on this CPU: checked once, at the first
 * convolution (ops_dnnl_check.c says why). */
static int conv_right(sg_dnnl *dnnl) {
  if (dnnl->conv_right == 0) {
    dnnl->conv_right = sg_dnnl_check_convolutions(dnnl->engine, dnnl->stream, 1) ? 1 : -1;
    if (dnnl->conv_right < 0 && dnnl->log_kernels) {
      fprintf(stderr,
              "snapgen kernel: oneDNN's convolutions failed the check on this CPU; "
              "convolutions run on their fallback\n");
    }
  }
  return dnnl->conv_right > 0;
}

/* The same for depthwise convolutions. Not trusted either where the dense ones are wrong: on that
 * CPU oneDNN's depthwise kernel (brdgmm_dw) passes the check but dies of SIGFPE (an integer
 * division by zero) on the UNet's 256-channel images of 32x32 and 64x64. */
static int depthwise_right(sg_dnnl *dnnl) {
  if (dnnl->depthwise_right == 0) {
    dnnl->depthwise_right =
        conv_right(dnnl) && sg_dnnl_check_depthwise(dnnl->engine, dnnl->stream) ? 1 : -1;
    if (dnnl->depthwise_right < 0 && dnnl->log_kernels) {
      fprintf(stderr,
              "snapgen kernel: oneDNN's depthwise convolutions failed the check on this "
              "CPU; they run on the engine's loops\n");
    }
  }
  return dnnl->depthwise_right > 0;
}

/* Where oneDNN's kernels for a convolution are wrong on this CPU (right is 0: conv_right,
 * depthwise_right), the op runs on `instead` (if there is one: not KERNEL_ONEDNN): returns 1.
 * Decided before any oneDNN descriptor is made, since on that CPU making one can die of SIGFPE. */
static int conv_instead(builder *b, kernel_kind instead, int right) {
  if (b->status != dnnl_success || instead == KERNEL_ONEDNN || right) return 0;
  b->op->kernel = instead;
  if (b->dnnl->log_kernels) {
    fprintf(stderr, "snapgen kernel: %s: %s (oneDNN's convolutions failed the check)\n",
            b->key ? b->key : "?",
            instead == KERNEL_MATMUL ? "oneDNN matrix products" : "fallback");
  }
  return 1;
}

/* Frees the descriptors; on success caches the op under key, else reports the failed call. */
static sg_status build_finish(builder *b, const char *key, const char *name, sg_dnnl_op **out,
                              sg_error *error) {
  for (int i = 0; i < b->nmds; i++) dnnl_memory_desc_destroy(b->mds[i]);
  for (int i = 0; i < b->npds; i++) dnnl_primitive_desc_destroy(b->pds[i]);
  dnnl_primitive_attr_destroy(b->attr);
  if (b->status != dnnl_success) {
    op_free(b->op);
    int call_length = (int)strcspn(b->failed, "(");
    return sg_fail(error, b->status == dnnl_out_of_memory ? SG_ERR_OUT_OF_MEMORY : SG_ERR_BACKEND,
                   "%s: oneDNN could not set up the operation (%.*s: %s)", name, call_length,
                   b->failed, status_text(b->status));
  }
  g_hash_table_insert(b->dnnl->cache, g_strdup(key), b->op);
  *out = b->op;
  return SG_OK;
}

static sg_dnnl_op *cache_find(sg_dnnl *dnnl, const char *key) {
  return g_hash_table_lookup(dnnl->cache, key);
}

/* A tensor's data as a run argument (oneDNN does not write to its inputs). */
static void *ptr(const sg_tensor *t) { return t->data; }

/* ---- convolution ---- */

/* An image [C,H,W] as oneDNN's [1,C,H,W] (dims) in its layout: plain or channels-last by
 * strides, blocked as nChw8c. */
static const_dnnl_memory_desc_t image_md(builder *b, const int64_t *dims, const sg_tensor *t) {
  if (t->format == SG_FORMAT_BLOCKED8) {
    dnnl_dims_t d = {dims[0], dims[1], dims[2], dims[3]};
    dnnl_memory_desc_t md = NULL;
    TRY(b, dnnl_memory_desc_create_with_tag(&md, 4, d, dnnl_f32, dnnl_nChw8c));
    keep_md(b, md);
    return md;
  }
  if (t->format == SG_FORMAT_PLAIN) return md_plain(b, 4, dims, NULL);
  int64_t strides[4];
  strides[0] = sg_tensor_numel(t);
  strides[1] = sg_image_channel_offset(t, 1);
  sg_image_strides(t, &strides[2], &strides[3]);
  return md_plain(b, 4, dims, strides);
}

static sg_status conv_build(sg_dnnl *dnnl, const char *key, const sg_tensor *x, const sg_tensor *w,
                            int has_bias, int stride, int padding, int groups, sg_activation act,
                            residual_mode residual, const sg_tensor *y, sg_dnnl_op **out,
                            sg_error *error) {
  builder b;
  build_start(&b, dnnl);
  b.key = key;
  const int64_t in_c = x->dims[0], out_c = y->dims[0], kh = w->dims[2], kw = w->dims[3];
  const int64_t src_dims[4] = {1, in_c, x->dims[1], x->dims[2]};
  const int64_t dst_dims[4] = {1, out_c, y->dims[1], y->dims[2]};
  const int64_t grouped_dims[5] = {groups, out_c / groups, in_c / groups, kh, kw};
  const int64_t bias_dims[1] = {out_c};
  const int w_ndims = groups == 1 ? 4 : 5;
  const int64_t *w_dims = groups == 1 ? grouped_dims + 1 : grouped_dims;
  const int depthwise = groups == in_c && groups == out_c;
  const kernel_kind fallback = depthwise ? KERNEL_OWN : blas_fallback();
  const kernel_kind instead = groups == 1 && w->dtype == SG_F32 ? KERNEL_MATMUL : fallback;
  if (conv_instead(&b, instead, depthwise ? depthwise_right(dnnl) : conv_right(dnnl))) {
    return build_finish(&b, key, "conv2d", out, error);
  }

  /* The user's layouts (NCHW or NHWC, PyTorch's OIHW / GOIHW) and those the kernel prefers. */
  const_dnnl_memory_desc_t src_user = image_md(&b, src_dims, x);
  const_dnnl_memory_desc_t w_user = md_plain(&b, w_ndims, w_dims, NULL);
  const_dnnl_memory_desc_t dst_user = image_md(&b, dst_dims, y);
  const_dnnl_memory_desc_t bias_md = has_bias ? md_plain(&b, 1, bias_dims, NULL) : NULL;
  /* In bf16 mode a dense convolution reads a bf16 copy of x (made by a reorder step) and bf16
   * weights (packed once), and accumulates and writes f32. Depthwise ones stay f32: they are
   * bound by memory, not by arithmetic. */
  dnnl_data_type_t compute = dnnl->bf16 && groups == 1 ? dnnl_bf16 : dnnl_f32;
  /* A blocked image is taken as it is: "any" would pick channels-last on the CPUs where the
   * blocked kernels are the faster ones (sg_dnnl_prefers_blocked8). */
  const_dnnl_memory_desc_t src_any = x->format == SG_FORMAT_BLOCKED8 && compute == dnnl_f32
                                         ? src_user
                                         : md_any_typed(&b, 4, src_dims, compute);
  const_dnnl_memory_desc_t w_any = md_any_typed(&b, w_ndims, w_dims, compute);
  const_dnnl_memory_desc_t dst_any =
      y->format == SG_FORMAT_BLOCKED8 ? dst_user : md_any(&b, 4, dst_dims);
  dnnl_primitive_attr_t attr = residual_attr(&b, residual, act);
  const dnnl_dims_t strides = {stride, stride}, dilates = {0, 0}, pad = {padding, padding};
  dnnl_primitive_desc_t pd = NULL;
  TRY(&b, dnnl_convolution_forward_primitive_desc_create(
              &pd, dnnl->engine, dnnl_forward_inference, dnnl_convolution_direct, src_any, w_any,
              bias_md, dst_any, strides, dilates, pad, pad, attr));
  keep_pd(&b, pd);
  if (compute == dnnl_bf16 && (b.status == dnnl_unimplemented || is_reference_impl(pd))) {
    /* no fast bf16 kernel for this shape or layout: this convolution stays f32 */
    b.status = dnnl_success;
    compute = dnnl_f32;
    src_any = x->format == SG_FORMAT_BLOCKED8 ? src_user : md_any(&b, 4, src_dims);
    w_any = md_any(&b, w_ndims, w_dims);
    TRY(&b, dnnl_convolution_forward_primitive_desc_create(
                &pd, dnnl->engine, dnnl_forward_inference, dnnl_convolution_direct, src_any, w_any,
                bias_md, dst_any, strides, dilates, pad, pad, attr));
    keep_pd(&b, pd);
  }
  if (b.status != dnnl_success || choose_op_kernel(&b, pd, fallback) != KERNEL_ONEDNN) {
    return build_finish(&b, key, "conv2d", out, error);
  }

  const_dnnl_memory_desc_t src_md = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
  const_dnnl_memory_desc_t w_md = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
  const_dnnl_memory_desc_t dst_md = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
  /* User memories in run order: x, w, (b), y, (residual). */
  dnnl_memory_t src_mem = user_memory(&b, src_user);
  dnnl_memory_t w_mem = user_memory(&b, w_user);
  dnnl_memory_t bias_mem = has_bias ? user_memory(&b, bias_md) : NULL;
  dnnl_memory_t dst_mem = user_memory(&b, dst_user);
  if (!dnnl_memory_desc_equal(src_md, src_user)) {
    dnnl_memory_t blocked = buffer_memory(&b, src_md);
    add_reorder(&b, src_mem, src_user, blocked, src_md);
    src_mem = blocked;
  }
  /* Blocked weights: reordered once per weight tensor at its first run (weight_slot). */
  const int blocked_weights = !dnnl_memory_desc_equal(w_md, w_user);
  if (blocked_weights) {
    add_weight_slot(&b, w_mem, w_user, w_md);
    w_mem = NULL; /* set at each run */
  }
  dnnl_memory_t user_dst = dst_mem;
  if (!dnnl_memory_desc_equal(dst_md, dst_user)) dst_mem = buffer_memory(&b, dst_md);
  add_residual_step(&b, residual, user_dst, dst_user, dst_mem, dst_md);
  dnnl_exec_arg_t args[4] = {
      {DNNL_ARG_SRC, src_mem}, {DNNL_ARG_WEIGHTS, w_mem}, {DNNL_ARG_DST, dst_mem},
      {DNNL_ARG_BIAS, bias_mem}};
  add_step(&b, pd, has_bias ? 4 : 3, args);
  if (blocked_weights && b.status == dnnl_success) {
    b.op->weights.step = b.op->nsteps - 1;
    b.op->weights.arg = 1;
  }
  if (dst_mem != user_dst) add_reorder(&b, dst_mem, dst_md, user_dst, dst_user);
  return build_finish(&b, key, "conv2d", out, error);
}

/* The caller's pointers in the order the op's user memories were made: x, w, (b), y, (residual
 * when it is not y). */
static void *const *product_pointers(void **pointers, const sg_tensor *x, const sg_tensor *w,
                                     const sg_tensor *b, const sg_tensor *residual,
                                     const sg_tensor *y) {
  int n = 0;
  pointers[n++] = ptr(x);
  pointers[n++] = ptr(w);
  if (b) pointers[n++] = ptr(b);
  pointers[n++] = ptr(y);
  if (residual_mode_of(residual, y) == RESIDUAL_OTHER) pointers[n++] = ptr(residual);
  return pointers;
}

static sg_status conv_fallback(sg_dnnl *dnnl, const sg_dnnl_op *op, const sg_tensor *x,
                               const sg_tensor *w, const sg_tensor *b, int stride, int padding,
                               int groups, sg_activation act, const sg_tensor *residual,
                               sg_tensor *y, sg_error *error);

/* Whether convolutions run on oneDNN kernels that work channels-last (x86-64, SVE cores), rather
 * than on the fallbacks, which take plain images: probed once on a small 1x1 convolution. */
int sg_dnnl_prefers_channels_last(sg_dnnl *dnnl) {
  if (dnnl->fallback == FALLBACK_ALWAYS) return 0;
  if (!conv_right(dnnl)) return 1; /* conv_as_matmul reads and writes channels-last images */
  if (dnnl->conv_speed == 0) {
    const dnnl_dims_t image = {1, 16, 8, 8}, weights = {16, 16, 1, 1}, ones = {1, 1},
                      zeros = {0, 0};
    dnnl_memory_desc_t src = NULL, w = NULL;
    dnnl_primitive_desc_t pd = NULL;
    const char *impl = NULL;
    dnnl_status_t status =
        dnnl_memory_desc_create_with_tag(&src, 4, image, dnnl_f32, dnnl_format_tag_any);
    if (status == dnnl_success)
      status = dnnl_memory_desc_create_with_tag(&w, 4, weights, dnnl_f32, dnnl_format_tag_any);
    if (status == dnnl_success) {
      status = dnnl_convolution_forward_primitive_desc_create(
          &pd, dnnl->engine, dnnl_forward_inference, dnnl_convolution_direct, src, w, NULL, src,
          ones, zeros, zeros, zeros, NULL);
    }
    if (status == dnnl_success)
      status = dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    dnnl->conv_speed = status == dnnl_success && impl && !is_slow_impl(impl) ? 1 : -1;
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (w) dnnl_memory_desc_destroy(w);
    if (src) dnnl_memory_desc_destroy(src);
  }
  return dnnl->conv_speed > 0;
}

static const char *isa_name(dnnl_cpu_isa_t isa) {
  switch (isa) {
    case dnnl_cpu_isa_sse41:
      return "SSE4.1";
    case dnnl_cpu_isa_avx:
      return "AVX";
    case dnnl_cpu_isa_avx2:
      return "AVX2";
    case dnnl_cpu_isa_avx2_vnni:
      return "AVX2 with VNNI";
    case dnnl_cpu_isa_avx2_vnni_2:
      return "AVX2 with VNNI-INT8 and NE-convert";
    case dnnl_cpu_isa_avx512_core:
      return "AVX-512";
    case dnnl_cpu_isa_avx512_core_vnni:
      return "AVX-512 with VNNI";
    case dnnl_cpu_isa_avx512_core_bf16:
      return "AVX-512 with BF16";
    case dnnl_cpu_isa_avx10_1_512:
      return "AVX-512 with FP16";
    case dnnl_cpu_isa_avx10_1_512_amx:
      return "AVX-512 with AMX";
    case dnnl_cpu_isa_avx10_1_512_amx_fp16:
      return "AVX-512 with AMX-FP16";
    default:
      return "unknown";
  }
}

/* Whether this CPU computes bf16 products natively (avx512_bf16, AMX or avx2_vnni_2; oneDNN
 * emulates them on plain AVX-512, slower than f32) and oneDNN has a kernel for them other than its
 * reference one: probed with a small bf16 x bf16 -> f32 matmul. */
static int bf16_available(sg_dnnl *dnnl) {
  const dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
  const int native = (isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16 ||
                     isa == dnnl_cpu_isa_avx2_vnni_2;
  if (!native) return 0;
  const dnnl_dims_t dims = {64, 64};
  dnnl_memory_desc_t a = NULL, c = NULL;
  dnnl_primitive_desc_t pd = NULL;
  dnnl_status_t status = dnnl_memory_desc_create_with_tag(&a, 2, dims, dnnl_bf16, dnnl_ab);
  if (status == dnnl_success)
    status = dnnl_memory_desc_create_with_tag(&c, 2, dims, dnnl_f32, dnnl_ab);
  if (status == dnnl_success)
    status = dnnl_matmul_primitive_desc_create(&pd, dnnl->engine, a, a, NULL, c, NULL);
  const int available = status == dnnl_success && !is_reference_impl(pd);
  if (pd) dnnl_primitive_desc_destroy(pd);
  if (c) dnnl_memory_desc_destroy(c);
  if (a) dnnl_memory_desc_destroy(a);
  return available;
}

sg_status sg_dnnl_set_bf16(sg_dnnl *dnnl, int on, sg_error *error) {
  if (on && !bf16_available(dnnl)) {
    return sg_fail(error, SG_ERR_BACKEND,
                   "bf16 compute needs a CPU with bf16 instructions (avx512_bf16, AMX or "
                   "avx2_vnni_2); oneDNN has no fast bf16 kernels on this one (its best "
                   "instructions: %s)",
                   isa_name(dnnl_get_effective_cpu_isa()));
  }
  dnnl->bf16 = on != 0;
  return SG_OK;
}

int sg_dnnl_convolutions_right(sg_dnnl *dnnl) {
  return conv_right(dnnl);
}

int sg_dnnl_prefers_blocked8(sg_dnnl *dnnl) {
  if (!sg_dnnl_prefers_channels_last(dnnl)) return 0; /* no fast convolutions at all */
  const dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
  return isa == dnnl_cpu_isa_avx2 || isa == dnnl_cpu_isa_avx2_vnni ||
         isa == dnnl_cpu_isa_avx2_vnni_2;
}

sg_status sg_dnnl_conv2d(sg_dnnl *dnnl, const sg_tensor *x, const sg_tensor *w, const sg_tensor *b,
                         int stride, int padding, int groups, sg_activation act,
                         const sg_tensor *residual, sg_tensor *y, sg_error *error) {
  const residual_mode residual_kind = residual_mode_of(residual, y);
  char key[256];
  snprintf(
      key, sizeof key, "conv2d x%lldx%lldx%lld w%lldx%lldx%lld s%d p%d g%d a%d b%d r%d f%d%d h%d",
      (long long)x->dims[0], (long long)x->dims[1], (long long)x->dims[2], (long long)w->dims[0],
      (long long)w->dims[2], (long long)w->dims[3], stride, padding, groups, (int)act, b != NULL,
      (int)residual_kind, (int)x->format, (int)y->format, dnnl->bf16 && groups == 1);
  sg_dnnl_op *op = cache_find(dnnl, key);
  if (!op) {
    sg_status status = conv_build(dnnl, key, x, w, b != NULL, stride, padding, groups, act,
                                  residual_kind, y, &op, error);
    if (status != SG_OK) return status;
  }
  if (op->kernel != KERNEL_ONEDNN) return conv_fallback(dnnl, op, x, w, b, stride, padding, groups,
                                                       act, residual, y, error);
  void *pointers[5];
  return op_run_weights(dnnl, op, "conv2d", product_pointers(pointers, x, w, b, residual, y), w,
                        error);
}

/* The fused form of sg_pointwise_depthwise (ops.h): one primitive, the 1x1 convolution with its
 * activation and then oneDNN's depthwise post-op, which works through the intermediate a few
 * rows at a time while they are in cache. Built only for blocked images in and out (the case
 * measured faster); elsewhere, or where oneDNN has no fast kernel for it, the op is marked
 * KERNEL_OWN and runs as two convolutions. */
static sg_status pointwise_depthwise_build(sg_dnnl *dnnl, const char *key, const sg_tensor *x,
                                           const sg_tensor *w, int has_bias, sg_activation act,
                                           const sg_tensor *y, sg_dnnl_op **out, sg_error *error) {
  builder b;
  build_start(&b, dnnl);
  b.key = key;
  if (conv_instead(&b, KERNEL_OWN, conv_right(dnnl) && depthwise_right(dnnl))) {
    return build_finish(&b, key, "pointwise_depthwise", out, error); /* two convolutions */
  }
  const int64_t in_c = x->dims[0], mid_c = w->dims[0];
  const int64_t src_dims[4] = {1, in_c, x->dims[1], x->dims[2]};
  const int64_t dst_dims[4] = {1, mid_c, y->dims[1], y->dims[2]};
  const int64_t w_dims[4] = {mid_c, in_c, 1, 1}, dw_dims[5] = {mid_c, 1, 1, 3, 3};
  const int64_t bias_dims[1] = {mid_c};
  const int blocked = x->format == SG_FORMAT_BLOCKED8 && y->format == SG_FORMAT_BLOCKED8;
  const_dnnl_memory_desc_t src_user = image_md(&b, src_dims, x);
  const_dnnl_memory_desc_t dst_user = image_md(&b, dst_dims, y);
  const_dnnl_memory_desc_t w_user = md_plain(&b, 4, w_dims, NULL);
  const_dnnl_memory_desc_t dw_user = md_plain(&b, 5, dw_dims, NULL);
  const_dnnl_memory_desc_t bias_md = has_bias ? md_plain(&b, 1, bias_dims, NULL) : NULL;
  const_dnnl_memory_desc_t w_any = md_any(&b, 4, w_dims);
  if (b.status != dnnl_success) return build_finish(&b, key, "pointwise_depthwise", out, error);
  /* The activation, then the depthwise convolution (no bias), as post-ops. Not fused when not
   * asked for, or where oneDNN cannot (not an error: the two convolutions run). */
  dnnl_primitive_desc_t pd = NULL;
  dnnl_status_t fused =
      blocked && dnnl->fallback != FALLBACK_ALWAYS ? dnnl_success : dnnl_unimplemented;
  dnnl_post_ops_t chain = NULL;
  if (fused == dnnl_success) fused = dnnl_primitive_attr_create(&b.attr);
  if (fused == dnnl_success) fused = dnnl_post_ops_create(&chain);
  if (fused == dnnl_success && act != SG_ACT_NONE) {
    float alpha;
    dnnl_alg_kind_t alg = activation_alg(act, &alpha);
    fused = dnnl_post_ops_append_eltwise(chain, alg, alpha, 0.0f);
  }
  if (fused == dnnl_success) {
    fused = dnnl_post_ops_append_dw(chain, dnnl_f32, dnnl_data_type_undef, dnnl_f32, 3, 1, 1);
  }
  if (fused == dnnl_success) fused = dnnl_primitive_attr_set_post_ops(b.attr, chain);
  if (chain) dnnl_post_ops_destroy(chain);
  const dnnl_dims_t ones = {1, 1}, zeros = {0, 0};
  if (fused == dnnl_success) {
    fused = dnnl_convolution_forward_primitive_desc_create(
        &pd, dnnl->engine, dnnl_forward_inference, dnnl_convolution_direct, src_user, w_any,
        bias_md, dst_user, ones, zeros, zeros, zeros, b.attr);
  }
  if (fused != dnnl_success) {
    b.op->kernel = KERNEL_OWN;
    return build_finish(&b, key, "pointwise_depthwise", out, error);
  }
  keep_pd(&b, pd);
  if (choose_op_kernel(&b, pd, KERNEL_OWN) != KERNEL_ONEDNN) {
    return build_finish(&b, key, "pointwise_depthwise", out, error);
  }
  const_dnnl_memory_desc_t w_md = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
  const_dnnl_memory_desc_t dw_md = dnnl_primitive_desc_query_md(
      pd, dnnl_query_exec_arg_md, DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_WEIGHTS);
  /* User memories in run order: x, w, (b), y, dw. */
  dnnl_memory_t src_mem = user_memory(&b, src_user);
  dnnl_memory_t w_mem = user_memory(&b, w_user);
  dnnl_memory_t bias_mem = has_bias ? user_memory(&b, bias_md) : NULL;
  dnnl_memory_t dst_mem = user_memory(&b, dst_user);
  dnnl_memory_t dw_mem = user_memory(&b, dw_user);
  const int blocked_weights = !dnnl_memory_desc_equal(w_md, w_user);
  if (blocked_weights) {
    add_weight_slot(&b, w_mem, w_user, w_md);
    w_mem = NULL; /* set at each run */
  }
  /* The depthwise weights (a few KiB) are reordered at every run into the op buffer. */
  if (!dnnl_memory_desc_equal(dw_md, dw_user)) {
    dnnl_memory_t blocked_dw = buffer_memory(&b, dw_md);
    add_reorder(&b, dw_mem, dw_user, blocked_dw, dw_md);
    dw_mem = blocked_dw;
  }
  dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, src_mem},
                             {DNNL_ARG_WEIGHTS, w_mem},
                             {DNNL_ARG_DST, dst_mem},
                             {DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_WEIGHTS, dw_mem},
                             {DNNL_ARG_BIAS, bias_mem}};
  add_step(&b, pd, has_bias ? 5 : 4, args);
  if (blocked_weights && b.status == dnnl_success) {
    b.op->weights.step = b.op->nsteps - 1;
    b.op->weights.arg = 1;
  }
  return build_finish(&b, key, "pointwise_depthwise", out, error);
}

sg_status sg_dnnl_pointwise_depthwise(sg_dnnl *dnnl, const sg_tensor *x, const sg_tensor *w,
                                      const sg_tensor *b, sg_activation act, const sg_tensor *dw,
                                      sg_tensor *mid, sg_tensor *y, sg_error *error) {
  char key[200];
  snprintf(key, sizeof key, "pointwise_depthwise x%lldx%lldx%lld w%lld a%d b%d f%d%d",
           (long long)x->dims[0], (long long)x->dims[1], (long long)x->dims[2],
           (long long)w->dims[0], (int)act, b != NULL, (int)x->format, (int)y->format);
  sg_dnnl_op *op = cache_find(dnnl, key);
  if (!op) {
    sg_status status = pointwise_depthwise_build(dnnl, key, x, w, b != NULL, act, y, &op, error);
    if (status != SG_OK) return status;
  }
  if (op->kernel != KERNEL_ONEDNN) {
    sg_status status = sg_dnnl_conv2d(dnnl, x, w, b, 1, 0, 1, act, NULL, mid, error);
    if (status != SG_OK) return status;
    return sg_dnnl_conv2d(dnnl, mid, dw, NULL, 1, 1, (int)mid->dims[0], SG_ACT_NONE, NULL, y,
                          error);
  }
  /* The depthwise weights are read as they are: restored first if their plain values were
   * released after another op packed them. */
  sg_tensor dw_view;
  void *restored = NULL;
  sg_status status = readable_weights(dnnl, dw, &dw_view, &restored, error);
  if (status != SG_OK) return status;
  void *pointers[5];
  int n = 0;
  pointers[n++] = ptr(x);
  pointers[n++] = ptr(w);
  if (b) pointers[n++] = ptr(b);
  pointers[n++] = ptr(y);
  pointers[n++] = dw_view.data;
  status = op_run_weights(dnnl, op, "pointwise_depthwise", pointers, w, error);
  free(restored);
  return status;
}

/* The image t in `format`: t itself when it is in it, else a converted copy (to free). */
static sg_status image_as(const sg_tensor *t, sg_format format, sg_tensor *out, sg_error *error) {
  *out = *t;
  if (t->format == format) return SG_OK;
  out->format = format;
  out->data = malloc(sg_tensor_nbytes(t));
  if (!out->data) return sg_fail(error, SG_ERR_OUT_OF_MEMORY, "out of memory for a relayout");
  sg_fast_relayout(t, out);
  return SG_OK;
}

/* A plain copy of an image (a new buffer), or the image itself when it is plain already. */
static sg_status plain_image(const sg_tensor *t, sg_tensor *plain, sg_error *error) {
  return image_as(t, SG_FORMAT_PLAIN, plain, error);
}

/* Patches of this many floats at most are made at a time by conv_as_matmul (16 MiB). */
#define PATCH_BLOCK_FLOATS (4 << 20)

/* A convolution (one group) as oneDNN matrix products, for CPUs where its convolutions are wrong
 * and its matrix products right (conv_right): with channels-last images, y[p, o] = sum over k of
 * patch[p, k] w[o, k], where row p of patch holds the input that output pixel p sees, in the
 * weights' order (channel, kernel row, kernel column) and zero outside the image. So it runs
 * sg_dnnl_linear on the weights as they are, [out, in * kh * kw], with its bias, activation,
 * residual and bf16 mode. A 1x1 convolution of stride 1 reads the image itself; other ones make
 * the patches of a block of pixels at a time. */
static sg_status conv_as_matmul(sg_dnnl *dnnl, const sg_tensor *x, const sg_tensor *w,
                                const sg_tensor *b, int stride, int padding, sg_activation act,
                                const sg_tensor *residual, sg_tensor *y, sg_error *error) {
  const int64_t in_c = x->dims[0], in_h = x->dims[1], in_w = x->dims[2];
  const int64_t out_c = y->dims[0], out_h = y->dims[1], out_w = y->dims[2];
  const int64_t kh = w->dims[2], kw = w->dims[3], taps = kh * kw, patch = in_c * taps;
  const int64_t pixels = out_h * out_w;
  const int residual_in_y = residual && residual->data == y->data;
  sg_tensor x_nhwc = *x, y_nhwc = *y, residual_nhwc = {0};
  sg_status status = image_as(x, SG_FORMAT_NHWC, &x_nhwc, error);
  if (status == SG_OK) status = image_as(y, SG_FORMAT_NHWC, &y_nhwc, error); /* may hold it */
  if (status == SG_OK && residual && !residual_in_y) {
    status = image_as(residual, SG_FORMAT_NHWC, &residual_nhwc, error);
  }
  sg_tensor weights = *w; /* the same values (and packed copies), as [out, patch] */
  weights.ndim = 2;
  weights.dims[0] = out_c;
  weights.dims[1] = patch;
  const int direct = kh == 1 && kw == 1 && stride == 1 && padding == 0;
  int64_t block = direct ? pixels : PATCH_BLOCK_FLOATS / patch;
  if (block < 1) block = 1;
  if (block > pixels) block = pixels;
  float *patches = NULL;
  if (status == SG_OK && !direct) {
    patches = sg_scratch_reserve(&dnnl->blas_scratch, block * patch, error);
    if (!patches) status = SG_ERR_OUT_OF_MEMORY;
  }
  const float *image = x_nhwc.data;
  for (int64_t first = 0; first < pixels && status == SG_OK; first += block) {
    const int64_t count = first + block <= pixels ? block : pixels - first;
    if (!direct) {
#pragma omp parallel for
      for (int64_t p = 0; p < count; p++) {
        const int64_t oy = (first + p) / out_w, ox = (first + p) % out_w;
        float *row = patches + p * patch;
        for (int64_t i = 0; i < kh; i++) {
          const int64_t iy = oy * stride - padding + i;
          for (int64_t j = 0; j < kw; j++) {
            const int64_t ix = ox * stride - padding + j;
            float *to = row + i * kw + j; /* channel c at to[c * taps] */
            if (iy < 0 || iy >= in_h || ix < 0 || ix >= in_w) {
              for (int64_t c = 0; c < in_c; c++) to[c * taps] = 0.0f;
            } else {
              const float *from = image + (iy * in_w + ix) * in_c;
              for (int64_t c = 0; c < in_c; c++) to[c * taps] = from[c];
            }
          }
        }
      }
    }
    sg_tensor rows = sg_tensor_2d(direct ? (float *)image : patches, count, patch);
    sg_tensor out = sg_tensor_2d((float *)y_nhwc.data + first * out_c, count, out_c);
    sg_tensor other = {0};
    const sg_tensor *add = NULL;
    if (residual_in_y) {
      add = &out;
    } else if (residual) {
      other = sg_tensor_2d((float *)residual_nhwc.data + first * out_c, count, out_c);
      add = &other;
    }
    status = sg_dnnl_linear(dnnl, &rows, &weights, b, act, add, &out, error);
  }
  if (status == SG_OK && y_nhwc.data != y->data) sg_fast_relayout(&y_nhwc, y);
  if (x_nhwc.data != x->data) free(x_nhwc.data);
  if (y_nhwc.data != y->data) free(y_nhwc.data);
  if (residual && !residual_in_y && residual_nhwc.data != residual->data) free(residual_nhwc.data);
  return status;
}

/* The fallback kernels of a convolution, which take plain images (channels-last ones are
 * converted around them; the depthwise loop takes those as they are), or conv_as_matmul. */
static sg_status conv_fallback(sg_dnnl *dnnl, const sg_dnnl_op *op, const sg_tensor *x,
                               const sg_tensor *w, const sg_tensor *b, int stride, int padding,
                               int groups, sg_activation act, const sg_tensor *residual,
                               sg_tensor *y, sg_error *error) {
  if (op->kernel == KERNEL_MATMUL) {
    return conv_as_matmul(dnnl, x, w, b, stride, padding, act, residual, y, error);
  }
  /* the engine's depthwise loop also takes channels-last images as they are */
  const int own_nhwc = op->kernel == KERNEL_OWN && x->format == SG_FORMAT_NHWC &&
                       y->format == SG_FORMAT_NHWC && w->dims[2] <= SG_DEPTHWISE_NHWC_MAX_KERNEL &&
                       (!residual || residual->format == SG_FORMAT_NHWC);
  if (!own_nhwc && (x->format != SG_FORMAT_PLAIN || y->format != SG_FORMAT_PLAIN)) {
    sg_tensor x_plain = *x, y_plain = *y, residual_plain = {0};
    sg_status status = plain_image(x, &x_plain, error);
    if (status == SG_OK) status = plain_image(y, &y_plain, error); /* y may hold the residual */
    if (status == SG_OK && residual && residual->data != y->data) {
      status = plain_image(residual, &residual_plain, error);
    }
    if (status == SG_OK) {
      const sg_tensor *r = !residual ? NULL : residual->data == y->data ? &y_plain : &residual_plain;
      status = conv_fallback(dnnl, op, &x_plain, w, b, stride, padding, groups, act, r, &y_plain,
                             error);
    }
    if (status == SG_OK && y_plain.data != y->data) sg_fast_relayout(&y_plain, y);
    if (x_plain.data != x->data) free(x_plain.data);
    if (y_plain.data != y->data) free(y_plain.data);
    if (residual_plain.data != (residual ? residual->data : NULL)) free(residual_plain.data);
    return status;
  }
  sg_tensor w_plain;
  void *restored = NULL;
  sg_status status = readable_weights(dnnl, w, &w_plain, &restored, error);
  if (status != SG_OK) return status;
  w = &w_plain;
  fallback_residual saved;
  status = fallback_residual_start(&saved, residual, y, error);
  if (status != SG_OK) {
    free(restored);
    return status;
  }
  const sg_activation kernel_act = residual ? SG_ACT_NONE : act;
  if (own_nhwc) {
    float *taps =
        sg_scratch_reserve(&dnnl->blas_scratch, w->dims[0] * w->dims[2] * w->dims[3], error);
    if (taps)
      sg_fast_depthwise_conv2d_nhwc(x, w, b, stride, padding, kernel_act, taps, y);
    else
      status = SG_ERR_OUT_OF_MEMORY;
  } else if (op->kernel == KERNEL_OWN) {
    sg_fast_depthwise_conv2d(x, w, b, stride, padding, kernel_act, y);
  }
#ifdef SG_HAVE_BLAS
  if (op->kernel == KERNEL_OPENBLAS) {
    status = sg_blas_conv2d(x, w, b, stride, padding, groups, kernel_act, y, &dnnl->blas_scratch,
                            error);
  }
#endif
  if (status == SG_OK) fallback_residual_finish(&saved, act, y);
  else free(saved.saved);
  free(restored);
  return status;
}

/* ---- matrix products ---- */

/* A matmul step with user memories src, weights, (bias), dst. Each operand is described by its
 * dims and strides (NULL: dense), and its type (left out: f32). */
typedef struct {
  int ndims;
  int64_t dims[4];
  const int64_t *strides;
  dnnl_data_type_t type;
} operand;

/* blocked_weights: the primitive picks the weights' layout (model weights, see weight_slot).
 * bf16: the product reads a bf16 copy of the source (a reorder step) and bf16 weights (packed
 * once; implies blocked_weights) and accumulates and writes f32. */
static void add_matmul(builder *b, const operand *src, const operand *weights, const operand *bias,
                       const operand *dst, dnnl_primitive_attr_t attr, int blocked_weights,
                       int bf16, residual_mode residual) {
  const_dnnl_memory_desc_t src_md = md_plain(b, src->ndims, src->dims, src->strides);
  /* bf16 weights (a model's bf16 file, in bf16 mode) are read where they are, never packed */
  const int bf16_weights = weights->type == dnnl_bf16;
  const_dnnl_memory_desc_t w_md = md_plain_typed(b, weights->ndims, weights->dims, weights->strides,
                                                 bf16_weights ? dnnl_bf16 : dnnl_f32);
  const_dnnl_memory_desc_t bias_md = bias ? md_plain(b, bias->ndims, bias->dims, NULL) : NULL;
  const_dnnl_memory_desc_t dst_md = md_plain(b, dst->ndims, dst->dims, dst->strides);
  if (bf16 && !bf16_weights) blocked_weights = 1;
  const dnnl_data_type_t compute = bf16 ? dnnl_bf16 : dnnl_f32;
  const_dnnl_memory_desc_t src_wanted =
      bf16 ? md_any_typed(b, src->ndims, src->dims, compute) : src_md;
  const_dnnl_memory_desc_t w_wanted =
      blocked_weights ? md_any_typed(b, weights->ndims, weights->dims, compute) : w_md;
  dnnl_primitive_desc_t pd = NULL;
  TRY(b, dnnl_matmul_primitive_desc_create(&pd, b->dnnl->engine, src_wanted, w_wanted, bias_md,
                                           dst_md, attr));
  keep_pd(b, pd);
  if (bf16 && !bf16_weights && (b->status == dnnl_unimplemented || is_reference_impl(pd))) {
    /* no fast bf16 kernel for this shape: this product stays f32 (weights still packed) */
    b->status = dnnl_success;
    bf16 = 0;
    src_wanted = src_md;
    w_wanted = md_any(b, weights->ndims, weights->dims);
    TRY(b, dnnl_matmul_primitive_desc_create(&pd, b->dnnl->engine, src_wanted, w_wanted, bias_md,
                                             dst_md, attr));
    keep_pd(b, pd);
  }
  /* bf16 weights have no fallback that reads them: even a reference kernel is theirs */
  if (choose_op_kernel(b, pd, bf16_weights ? KERNEL_ONEDNN : blas_fallback()) != KERNEL_ONEDNN)
    return;
  dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, user_memory(b, src_md)},
                             {DNNL_ARG_WEIGHTS, user_memory(b, w_md)},
                             {DNNL_ARG_DST, NULL},
                             {DNNL_ARG_BIAS, NULL}};
  if (bias) args[3].memory = user_memory(b, bias_md);
  args[2].memory = user_memory(b, dst_md);
  if (bf16 && b->status == dnnl_success) {
    src_wanted = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    dnnl_memory_t converted = buffer_memory(b, src_wanted);
    add_reorder(b, args[0].memory, src_md, converted, src_wanted);
    args[0].memory = converted;
  }
  add_residual_step(b, residual, args[2].memory, dst_md, args[2].memory, dst_md);
  if (blocked_weights && b->status == dnnl_success) {
    w_wanted = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    blocked_weights = !dnnl_memory_desc_equal(w_wanted, w_md);
    if (blocked_weights) {
      add_weight_slot(b, args[1].memory, w_md, w_wanted);
      args[1].memory = NULL; /* set at each run */
    }
  }
  add_step(b, pd, bias ? 4 : 3, args);
  if (blocked_weights && b->status == dnnl_success) {
    b->op->weights.step = b->op->nsteps - 1;
    b->op->weights.arg = 1;
  }
}

sg_status sg_dnnl_linear(sg_dnnl *dnnl, const sg_tensor *x, const sg_tensor *w, const sg_tensor *b,
                         sg_activation act, const sg_tensor *residual, sg_tensor *y,
                         sg_error *error) {
  const int64_t rows = x->dims[0], in = x->dims[1], out = w->dims[0];
  const residual_mode residual_kind = residual_mode_of(residual, y);
  char key[160];
  /* bf16 mode: model weights only (constant_id); blocks widened from int8 or bf16 storage stay
   * f32, since packing each block again at every use would cost more than it saves. Weights
   * stored as bf16 (sg_dnnl_linear_bf16_weights) are read as they are. */
  const int bf16_weights = w->dtype == SG_BF16;
  const int bf16 = dnnl->bf16 && (w->constant_id != 0 || bf16_weights);
  snprintf(key, sizeof key, "linear %lldx%lld->%lld a%d b%d r%d h%d w%d", (long long)rows,
           (long long)in, (long long)out, (int)act, b != NULL, (int)residual_kind, bf16,
           bf16_weights);
  sg_dnnl_op *op = cache_find(dnnl, key);
  if (!op) {
    builder bl;
    build_start(&bl, dnnl);
    bl.key = key;
    /* w [N,K] row-major is the weights matrix [K,N] with strides {1, K}. */
    const int64_t w_strides[2] = {1, in};
    operand src = {2, {rows, in}, NULL, dnnl_f32};
    operand weights = {2, {in, out}, w_strides, bf16_weights ? dnnl_bf16 : dnnl_f32};
    operand bias = {2, {1, out}, NULL, dnnl_f32}, dst = {2, {rows, out}, NULL, dnnl_f32};
    /* The weights stay in the file's [N,K] layout (a transposed B): for the text encoders'
     * few rows oneDNN's f32 gemm ran 2.2× faster on it than on the layout it picks for "any"
     * (Gemma-2-2b, 79 tokens: 4.02 -> 2.16 s), and the UNet step took the same time (9.18 vs
     * 9.12 s at 1024²) without 1.25 GB of packed copies. */
    add_matmul(&bl, &src, &weights, b ? &bias : NULL, &dst, residual_attr(&bl, residual_kind, act),
               0, bf16, residual_kind);
    sg_status status = build_finish(&bl, key, "linear", &op, error);
    if (status != SG_OK) return status;
  }
#ifdef SG_HAVE_BLAS
  if (op->kernel == KERNEL_OPENBLAS) {
    sg_tensor w_plain;
    void *restored = NULL;
    sg_status status = readable_weights(dnnl, w, &w_plain, &restored, error);
    fallback_residual saved;
    if (status == SG_OK) status = fallback_residual_start(&saved, residual, y, error);
    if (status != SG_OK) {
      free(restored);
      return status;
    }
    status = sg_blas_linear(x, &w_plain, b, residual ? SG_ACT_NONE : act, y);
    fallback_residual_finish(&saved, act, y);
    free(restored);
    return status;
  }
#endif
  void *pointers[5];
  return op_run_weights(dnnl, op, "linear", product_pointers(pointers, x, w, b, residual, y), w,
                        error);
}

int sg_dnnl_reads_bf16_weights(const sg_dnnl *dnnl) {
  return dnnl->bf16 && dnnl->fallback != FALLBACK_ALWAYS;
}

/* ---- elementwise ---- */

static sg_status eltwise_op(sg_dnnl *dnnl, sg_activation act, int64_t count, sg_dnnl_op **out,
                            sg_error *error) {
  char key[96];
  snprintf(key, sizeof key, "eltwise %lld a%d", (long long)count, (int)act);
  *out = cache_find(dnnl, key);
  if (*out) return SG_OK;
  builder b;
  build_start(&b, dnnl);
  b.key = key;
  const_dnnl_memory_desc_t md = md_plain(&b, 1, &count, NULL);
  float alpha;
  dnnl_alg_kind_t alg = activation_alg(act, &alpha);
  dnnl_primitive_desc_t pd = NULL;
  TRY(&b, dnnl_eltwise_forward_primitive_desc_create(&pd, dnnl->engine, dnnl_forward_inference,
                                                      alg, md, md, alpha, 0.0f, NULL));
  keep_pd(&b, pd);
  if (choose_op_kernel(&b, pd, KERNEL_OWN) == KERNEL_ONEDNN) {
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_SRC, user_memory(&b, md)},
                               {DNNL_ARG_DST, user_memory(&b, md)}};
    add_step(&b, pd, 2, args);
  }
  return build_finish(&b, key, "eltwise", out, error);
}

/* Runs an eltwise op from eltwise_op on count values (y may be x). */
static sg_status eltwise_run(sg_dnnl *dnnl, sg_dnnl_op *op, sg_activation act, const float *x,
                             float *y, int64_t count, const char *name, sg_error *error) {
  if (op->kernel == KERNEL_OWN) {
    sg_fast_eltwise(act, x, y, count);
    return SG_OK;
  }
  return op_run(dnnl, op, name, (void *[]){(void *)x, y}, error);
}

sg_status sg_dnnl_eltwise(sg_dnnl *dnnl, sg_activation act, const sg_tensor *x, sg_tensor *y,
                          sg_error *error) {
  const int64_t count = sg_tensor_numel(x);
  if (act == SG_ACT_NONE) {
    if (y->data != x->data) memmove(y->data, x->data, (size_t)count * sizeof(float));
    return SG_OK;
  }
  sg_dnnl_op *op;
  sg_status status = eltwise_op(dnnl, act, count, &op, error);
  if (status != SG_OK) return status;
  return eltwise_run(dnnl, op, act, x->data, y->data, count, "eltwise", error);
}

sg_status sg_dnnl_binary(sg_dnnl *dnnl, sg_binary_op op_kind, const sg_tensor *a,
                         const sg_tensor *b, sg_tensor *y, sg_error *error) {
  int64_t b_dims[SG_MAX_DIMS];
  sg_binary_b_dims(a, b, b_dims);
  char key[200];
  int used = snprintf(key, sizeof key, "binary %d", (int)op_kind);
  for (int i = 0; i < a->ndim; i++) {
    used += snprintf(key + used, sizeof key - (size_t)used, " %lld/%lld", (long long)a->dims[i],
                     (long long)b_dims[i]);
  }
  sg_dnnl_op *op = cache_find(dnnl, key);
  if (!op) {
    /* A leading dim of 1 puts an image's channels at dim 1, where oneDNN's fast kernel
     * broadcasts per channel (with the channels at dim 0 it falls back to "ref:any"). */
    int64_t a_shape[SG_MAX_DIMS + 1] = {1}, b_shape[SG_MAX_DIMS + 1] = {1};
    for (int i = 0; i < a->ndim; i++) {
      a_shape[i + 1] = a->dims[i];
      b_shape[i + 1] = b_dims[i];
    }
    builder bl;
    build_start(&bl, dnnl);
    bl.key = key;
    const_dnnl_memory_desc_t a_md = md_plain(&bl, a->ndim + 1, a_shape, NULL);
    const_dnnl_memory_desc_t b_md = md_plain(&bl, a->ndim + 1, b_shape, NULL);
    dnnl_primitive_desc_t pd = NULL;
    TRY(&bl, dnnl_binary_primitive_desc_create(
                 &pd, dnnl->engine, op_kind == SG_BINARY_ADD ? dnnl_binary_add : dnnl_binary_mul,
                 a_md, b_md, a_md, NULL));
    keep_pd(&bl, pd);
    if (choose_op_kernel(&bl, pd, KERNEL_OWN) == KERNEL_ONEDNN) {
      dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC_0, user_memory(&bl, a_md)},
                                 {DNNL_ARG_SRC_1, user_memory(&bl, b_md)},
                                 {DNNL_ARG_DST, user_memory(&bl, a_md)}};
      add_step(&bl, pd, 3, args);
    }
    sg_status status = build_finish(&bl, key, "binary", &op, error);
    if (status != SG_OK) return status;
  }
  if (op->kernel == KERNEL_OWN) {
    sg_fast_binary(op_kind, a, b, y);
    return SG_OK;
  }
  void *pointers[3] = {ptr(a), ptr(b), ptr(y)};
  return op_run(dnnl, op, "binary", pointers, error);
}

/* ---- normalization ---- */

/* Group or layer normalization: the descriptor, scale/shift flags and the shared arguments. */
static void add_normalization(builder *b, dnnl_primitive_desc_t pd, const_dnnl_memory_desc_t md,
                              const_dnnl_memory_desc_t channel_md, int has_scale, int has_shift) {
  dnnl_exec_arg_t args[4];
  int nargs = 0;
  args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SRC, user_memory(b, md)};
  if (has_scale) args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SCALE, user_memory(b, channel_md)};
  if (has_shift) args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SHIFT, user_memory(b, channel_md)};
  args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_DST, user_memory(b, md)};
  add_step(b, pd, nargs, args);
}

static unsigned norm_flags(const sg_tensor *gamma, const sg_tensor *beta) {
  return (gamma ? dnnl_use_scale : 0u) | (beta ? dnnl_use_shift : 0u);
}

/* The caller's pointers for a normalization: x, (gamma), (beta), y. */
static int norm_pointers(void **pointers, const sg_tensor *x, const sg_tensor *gamma,
                         const sg_tensor *beta, const sg_tensor *y) {
  int count = 0;
  pointers[count++] = ptr(x);
  if (gamma) pointers[count++] = ptr(gamma);
  if (beta) pointers[count++] = ptr(beta);
  pointers[count++] = ptr(y);
  return count;
}

/* Group norm of a channels-last image: the engine's loop (sg_fast_group_norm_nhwc says why), then
 * the activation on oneDNN's eltwise kernel, in place. */
static sg_status group_norm_channels_last(sg_dnnl *dnnl, const sg_tensor *x, int groups,
                                          const sg_tensor *gamma, const sg_tensor *beta, float eps,
                                          sg_activation act, sg_tensor *y, sg_error *error) {
  const int64_t channels = x->dims[0], pixels = sg_tensor_numel(x) / channels;
  const int64_t scratch_count = sg_fast_group_norm_nhwc_scratch(channels);
  if (dnnl->norm_scratch_count < scratch_count) {
    double *grown = malloc((size_t)scratch_count * sizeof(double));
    if (!grown)
      return sg_fail(error, SG_ERR_OUT_OF_MEMORY, "group_norm: out of memory for its sums");
    free(dnnl->norm_scratch);
    dnnl->norm_scratch = grown;
    dnnl->norm_scratch_count = scratch_count;
  }
  sg_fast_group_norm_nhwc(x->data, pixels, channels, groups, gamma ? gamma->data : NULL,
                          beta ? beta->data : NULL, eps, y->data, dnnl->norm_scratch);
  if (act == SG_ACT_NONE) return SG_OK;
  sg_tensor flat = sg_tensor_1d(y->data, sg_tensor_numel(y));
  return sg_dnnl_eltwise(dnnl, act, &flat, &flat, error);
}

sg_status sg_dnnl_group_norm(sg_dnnl *dnnl, const sg_tensor *x, int groups, const sg_tensor *gamma,
                             const sg_tensor *beta, float eps, sg_activation act, sg_tensor *y,
                             sg_error *error) {
  if (x->format == SG_FORMAT_NHWC) {
    return group_norm_channels_last(dnnl, x, groups, gamma, beta, eps, act, y, error);
  }
  const int64_t channels = x->dims[0], spatial = sg_tensor_numel(x) / channels;
  char key[160];
  snprintf(key, sizeof key, "group_norm %lldx%lld g%d e%a a%d f%u", (long long)channels,
           (long long)spatial, groups, eps, (int)act, norm_flags(gamma, beta));
  sg_dnnl_op *op = cache_find(dnnl, key);
  if (!op) {
    const int64_t dims[3] = {1, channels, spatial}, channel_dims[1] = {channels};
    /* The activation is fused as a post-op; where oneDNN refuses that, it runs as its own step. */
    char step_key[200]; /* names the activation step in the kernel log */
    for (int fused = 1; fused >= 0 && !op; fused--) {
      builder b;
      build_start(&b, dnnl);
      const_dnnl_memory_desc_t md = md_plain(&b, 3, dims, NULL);
      const_dnnl_memory_desc_t channel_md = md_plain(&b, 1, channel_dims, NULL);
      dnnl_primitive_attr_t attr = activation_attr(&b, fused ? act : SG_ACT_NONE);
      dnnl_primitive_desc_t pd = NULL;
      TRY(&b, dnnl_group_normalization_forward_primitive_desc_create(
                  &pd, dnnl->engine, dnnl_forward_inference, md, md, groups, eps,
                  norm_flags(gamma, beta), attr));
      /* With the post-op on plain layouts oneDNN 3.7 only has its slow reference kernel. */
      if (fused && act != SG_ACT_NONE && is_reference_impl(pd)) {
        keep_pd(&b, pd);
        b.status = dnnl_unimplemented;
        b.failed = "fused post-op";
      }
      add_normalization(&b, pd, md, channel_md, gamma != NULL, beta != NULL);
      if (!fused && act != SG_ACT_NONE) {
        /* In place on y, which is the last user memory. */
        dnnl_memory_t y_mem = b.op && b.op->nuser ? b.op->user[b.op->nuser - 1] : NULL;
        float alpha;
        dnnl_alg_kind_t alg = activation_alg(act, &alpha);
        dnnl_primitive_desc_t eltwise_pd = NULL;
        TRY(&b, dnnl_eltwise_forward_primitive_desc_create(
                    &eltwise_pd, dnnl->engine, dnnl_forward_inference, alg, md, md, alpha, 0.0f,
                    NULL));
        keep_pd(&b, eltwise_pd);
        snprintf(step_key, sizeof step_key, "%s activation", key);
        b.key = step_key;
        if (choose_kernel(&b, eltwise_pd, KERNEL_OWN) == KERNEL_ONEDNN) {
          add_step(&b, eltwise_pd, 2,
                   (dnnl_exec_arg_t[]){{DNNL_ARG_SRC, y_mem}, {DNNL_ARG_DST, y_mem}});
        } else if (b.op) {
          b.op->activation_after = act;
        }
      }
      if (fused && act != SG_ACT_NONE && b.status == dnnl_unimplemented) {
        build_finish(&b, key, "group_norm", &op, NULL); /* frees; try unfused */
        op = NULL;
        continue;
      }
      sg_status status = build_finish(&b, key, "group_norm", &op, error);
      if (status != SG_OK) return status;
    }
  }
  void *pointers[4];
  norm_pointers(pointers, x, gamma, beta, y);
  sg_status status = op_run(dnnl, op, "group_norm", pointers, error);
  if (status == SG_OK && op->activation_after != SG_ACT_NONE) {
    sg_fast_eltwise(op->activation_after, y->data, y->data, sg_tensor_numel(y));
  }
  return status;
}

sg_status sg_dnnl_layer_norm(sg_dnnl *dnnl, const sg_tensor *x, const sg_tensor *gamma,
                             const sg_tensor *beta, float eps, sg_tensor *y, sg_error *error) {
  const int64_t cols = x->dims[x->ndim - 1], rows = sg_tensor_numel(x) / cols;
  char key[160];
  snprintf(key, sizeof key, "layer_norm %lldx%lld e%a f%u", (long long)rows, (long long)cols, eps,
           norm_flags(gamma, beta));
  sg_dnnl_op *op = cache_find(dnnl, key);
  if (!op) {
    builder b;
    build_start(&b, dnnl);
    const int64_t dims[2] = {rows, cols}, channel_dims[1] = {cols};
    const_dnnl_memory_desc_t md = md_plain(&b, 2, dims, NULL);
    const_dnnl_memory_desc_t channel_md = md_plain(&b, 1, channel_dims, NULL);
    dnnl_primitive_desc_t pd = NULL;
    TRY(&b, dnnl_layer_normalization_forward_primitive_desc_create(
                &pd, dnnl->engine, dnnl_forward_inference, md, md, NULL, eps,
                norm_flags(gamma, beta), NULL));
    add_normalization(&b, pd, md, channel_md, gamma != NULL, beta != NULL);
    sg_status status = build_finish(&b, key, "layer_norm", &op, error);
    if (status != SG_OK) return status;
  }
  void *pointers[4];
  norm_pointers(pointers, x, gamma, beta, y);
  return op_run(dnnl, op, "layer_norm", pointers, error);
}

/* Plain C: oneDNN 3.7's C API has no RMS normalization primitive. */
sg_status sg_dnnl_rms_norm(sg_dnnl *dnnl, const sg_tensor *x, const sg_tensor *w, float eps,
                           float weight_offset, sg_tensor *y, sg_error *error) {
  (void)dnnl;
  (void)error;
  const int64_t cols = x->dims[x->ndim - 1], rows = sg_tensor_numel(x) / cols;
  const float *xd = x->data, *wd = w->data;
  float *yd = y->data;
#pragma omp parallel for
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = xd + r * cols;
    float *yr = yd + r * cols;
    float square_sum = 0.0f;
    for (int64_t c = 0; c < cols; c++) square_sum += xr[c] * xr[c];
    const float inv_rms = 1.0f / sqrtf(square_sum / (float)cols + eps);
    for (int64_t c = 0; c < cols; c++) yr[c] = xr[c] * inv_rms * (wd[c] + weight_offset);
  }
  return SG_OK;
}

static sg_status softmax_op(sg_dnnl *dnnl, int64_t rows, int64_t cols, sg_dnnl_op **out,
                            sg_error *error) {
  char key[96];
  snprintf(key, sizeof key, "softmax %lldx%lld", (long long)rows, (long long)cols);
  *out = cache_find(dnnl, key);
  if (*out) return SG_OK;
  builder b;
  build_start(&b, dnnl);
  b.key = key;
  const int64_t dims[2] = {rows, cols};
  const_dnnl_memory_desc_t md = md_plain(&b, 2, dims, NULL);
  dnnl_primitive_desc_t pd = NULL;
  TRY(&b, dnnl_softmax_forward_primitive_desc_create(&pd, dnnl->engine, dnnl_forward_inference,
                                                      dnnl_softmax_accurate, md, md, 1, NULL));
  keep_pd(&b, pd);
  if (choose_op_kernel(&b, pd, KERNEL_OWN) == KERNEL_ONEDNN) {
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_SRC, user_memory(&b, md)},
                               {DNNL_ARG_DST, user_memory(&b, md)}};
    add_step(&b, pd, 2, args);
  }
  return build_finish(&b, key, "softmax", out, error);
}

/* Runs a softmax op from softmax_op on rows x cols values (y may be x). */
static sg_status softmax_run(sg_dnnl *dnnl, sg_dnnl_op *op, const float *x, float *y, int64_t rows,
                             int64_t cols, const char *name, sg_error *error) {
  if (op->kernel == KERNEL_OWN) {
    sg_fast_softmax(x, y, rows, cols);
    return SG_OK;
  }
  return op_run(dnnl, op, name, (void *[]){(void *)x, y}, error);
}

sg_status sg_dnnl_softmax(sg_dnnl *dnnl, const sg_tensor *x, sg_tensor *y, sg_error *error) {
  const int64_t cols = x->dims[x->ndim - 1], rows = sg_tensor_numel(x) / cols;
  sg_dnnl_op *op;
  sg_status status = softmax_op(dnnl, rows, cols, &op, error);
  if (status != SG_OK) return status;
  return softmax_run(dnnl, op, x->data, y->data, rows, cols, "softmax", error);
}

/* ---- data movement ---- */

sg_status sg_dnnl_upsample_nearest2x(sg_dnnl *dnnl, const sg_tensor *x, sg_tensor *y,
                                     sg_error *error) {
  char key[128];
  snprintf(key, sizeof key, "upsample %lldx%lldx%lld f%d", (long long)x->dims[0],
           (long long)x->dims[1], (long long)x->dims[2], (int)x->format);
  sg_dnnl_op *op = cache_find(dnnl, key);
  if (!op) {
    builder b;
    build_start(&b, dnnl);
    const int64_t src_dims[4] = {1, x->dims[0], x->dims[1], x->dims[2]};
    const int64_t dst_dims[4] = {1, y->dims[0], y->dims[1], y->dims[2]};
    const_dnnl_memory_desc_t src_md = image_md(&b, src_dims, x);
    const_dnnl_memory_desc_t dst_md = image_md(&b, dst_dims, y);
    dnnl_primitive_desc_t pd = NULL;
    TRY(&b, dnnl_resampling_forward_primitive_desc_create(&pd, dnnl->engine,
                                                          dnnl_forward_inference,
                                                          dnnl_resampling_nearest, NULL, src_md,
                                                          dst_md, NULL));
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_SRC, user_memory(&b, src_md)},
                               {DNNL_ARG_DST, user_memory(&b, dst_md)}};
    add_step(&b, pd, 2, args);
    sg_status status = build_finish(&b, key, "upsample_nearest2x", &op, error);
    if (status != SG_OK) return status;
  }
  void *pointers[2] = {ptr(x), ptr(y)};
  return op_run(dnnl, op, "upsample_nearest2x", pointers, error);
}

sg_status sg_dnnl_concat(sg_dnnl *dnnl, const sg_tensor *a, const sg_tensor *b, sg_tensor *y,
                         sg_error *error) {
  const int axis = a->ndim == 3 ? 0 : 1;
  char key[160];
  snprintf(key, sizeof key, "concat %d: %lldx%lldx%lld + %lld", a->ndim, (long long)a->dims[0],
           (long long)a->dims[1], (long long)(a->ndim == 3 ? a->dims[2] : 0),
           (long long)b->dims[axis]);
  sg_dnnl_op *op = cache_find(dnnl, key);
  if (!op) {
    builder bl;
    build_start(&bl, dnnl);
    const_dnnl_memory_desc_t sources[2] = {md_plain(&bl, a->ndim, a->dims, NULL),
                                           md_plain(&bl, b->ndim, b->dims, NULL)};
    const_dnnl_memory_desc_t dst_md = md_plain(&bl, y->ndim, y->dims, NULL);
    dnnl_primitive_desc_t pd = NULL;
    TRY(&bl, dnnl_concat_primitive_desc_create(&pd, dnnl->engine, dst_md, 2, axis, sources, NULL));
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_MULTIPLE_SRC, user_memory(&bl, sources[0])},
                               {DNNL_ARG_MULTIPLE_SRC + 1, user_memory(&bl, sources[1])},
                               {DNNL_ARG_DST, user_memory(&bl, dst_md)}};
    add_step(&bl, pd, 3, args);
    sg_status status = build_finish(&bl, key, "concat", &op, error);
    if (status != SG_OK) return status;
  }
  void *pointers[3] = {ptr(a), ptr(b), ptr(y)};
  return op_run(dnnl, op, "concat", pointers, error);
}

sg_status sg_dnnl_transpose(sg_dnnl *dnnl, const sg_tensor *x, sg_tensor *y, sg_error *error) {
  const int64_t rows = x->dims[0], cols = x->dims[1];
  char key[96];
  snprintf(key, sizeof key, "transpose %lldx%lld", (long long)rows, (long long)cols);
  sg_dnnl_op *op = cache_find(dnnl, key);
  if (!op) {
    builder b;
    build_start(&b, dnnl);
    /* y [cols, rows] row-major is x's [rows, cols] matrix stored column by column. */
    const int64_t dims[2] = {rows, cols}, column_strides[2] = {1, rows};
    const_dnnl_memory_desc_t x_md = md_plain(&b, 2, dims, NULL);
    const_dnnl_memory_desc_t y_md = md_plain(&b, 2, dims, column_strides);
    dnnl_memory_t x_mem = user_memory(&b, x_md);
    dnnl_memory_t y_mem = user_memory(&b, y_md);
    add_reorder(&b, x_mem, x_md, y_mem, y_md);
    sg_status status = build_finish(&b, key, "transpose", &op, error);
    if (status != SG_OK) return status;
  }
  void *pointers[2] = {ptr(x), ptr(y)};
  return op_run(dnnl, op, "transpose", pointers, error);
}

/* ---- attention ---- */

/* The two matrix products of attention for a block of `block` queries. Multi-query (one K/V head):
 * q is viewed as [block*heads, head_dim] and each product is one plain matmul, score rows ordered
 * (query, head). Grouped K/V: 4-D batched matmuls over [kv_heads, heads/kv_heads], score rows
 * ordered (head, query). Scale and softcap run as post-ops of the first product. */
static sg_status attention_ops(sg_dnnl *dnnl, const sg_attention_params *p, int64_t block,
                               int64_t keys, sg_dnnl_op **scores_op, sg_dnnl_op **values_op,
                               sg_error *error) {
  const int64_t heads = p->heads, kv_heads = p->kv_heads, dim = p->head_dim;
  const int64_t ratio = heads / kv_heads;
  char shape[160], key[200];
  snprintf(shape, sizeof shape, "%lldx%lld h%lld kv%lld d%lld", (long long)block, (long long)keys,
           (long long)heads, (long long)kv_heads, (long long)dim);
  snprintf(key, sizeof key, "attention qk %s s%a c%a", shape, p->scale, p->softcap);
  *scores_op = cache_find(dnnl, key);
  if (!*scores_op) {
    builder b;
    build_start(&b, dnnl);
    b.key = key;
    eltwise_post_op post_ops[3];
    int count = 0;
    if (p->softcap > 0.0f) {
      post_ops[count++] = (eltwise_post_op){dnnl_eltwise_linear, p->scale / p->softcap, 0.0f};
      post_ops[count++] = (eltwise_post_op){dnnl_eltwise_tanh, 0.0f, 0.0f};
      post_ops[count++] = (eltwise_post_op){dnnl_eltwise_linear, p->softcap, 0.0f};
    } else if (p->scale != 1.0f) {
      post_ops[count++] = (eltwise_post_op){dnnl_eltwise_linear, p->scale, 0.0f};
    }
    dnnl_primitive_attr_t attr = make_attr(&b, count, post_ops);
    if (kv_heads == 1) {
      const int64_t k_strides[2] = {1, dim};
      operand q = {2, {block * heads, dim}, NULL, dnnl_f32},
              k = {2, {dim, keys}, k_strides, dnnl_f32};
      operand scores = {2, {block * heads, keys}, NULL, dnnl_f32};
      add_matmul(&b, &q, &k, NULL, &scores, attr, 0, 0, RESIDUAL_NONE);
    } else {
      const int64_t q_strides[4] = {ratio * dim, dim, heads * dim, 1};
      const int64_t k_strides[4] = {dim, dim, 1, kv_heads * dim};
      operand q = {4, {kv_heads, ratio, block, dim}, q_strides, dnnl_f32};
      operand k = {4, {kv_heads, 1, dim, keys}, k_strides, dnnl_f32};
      operand scores = {4, {kv_heads, ratio, block, keys}, NULL, dnnl_f32};
      add_matmul(&b, &q, &k, NULL, &scores, attr, 0, 0, RESIDUAL_NONE);
    }
    sg_status status = build_finish(&b, key, "attention", scores_op, error);
    if (status != SG_OK) return status;
  }
  snprintf(key, sizeof key, "attention pv %s", shape);
  *values_op = cache_find(dnnl, key);
  if (!*values_op) {
    builder b;
    build_start(&b, dnnl);
    b.key = key;
    if (kv_heads == 1) {
      operand scores = {2, {block * heads, keys}, NULL, dnnl_f32},
              v = {2, {keys, dim}, NULL, dnnl_f32};
      operand y = {2, {block * heads, dim}, NULL, dnnl_f32};
      add_matmul(&b, &scores, &v, NULL, &y, NULL, 0, 0, RESIDUAL_NONE);
    } else {
      const int64_t v_strides[4] = {dim, dim, kv_heads * dim, 1};
      const int64_t y_strides[4] = {ratio * dim, dim, heads * dim, 1};
      operand scores = {4, {kv_heads, ratio, block, keys}, NULL, dnnl_f32};
      operand v = {4, {kv_heads, 1, keys, dim}, v_strides, dnnl_f32};
      operand y = {4, {kv_heads, ratio, block, dim}, y_strides, dnnl_f32};
      add_matmul(&b, &scores, &v, NULL, &y, NULL, 0, 0, RESIDUAL_NONE);
    }
    sg_status status = build_finish(&b, key, "attention", values_op, error);
    if (status != SG_OK) return status;
  }
  return SG_OK;
}

/* Sets excluded scores to -inf; a query that sees no key gets a zero row (softmax stays finite)
 * and empty[t] = 1 so its probabilities are zeroed afterwards. */
static void mask_scores(float *scores, unsigned char *empty, const sg_attention_params *p,
                        int64_t first, int64_t block, int64_t keys, int head_major) {
  const int64_t heads = p->heads;
#pragma omp parallel for
  for (int64_t t = 0; t < block; t++) {
    int64_t kept = 0;
    for (int64_t j = 0; j < keys; j++) kept += !sg_attention_excluded(p, first + t, j);
    empty[t] = kept == 0;
    for (int64_t h = 0; h < heads; h++) {
      float *row = scores + (head_major ? h * block + t : t * heads + h) * keys;
      for (int64_t j = 0; j < keys; j++) {
        if (kept == 0) {
          row[j] = 0.0f;
        } else if (sg_attention_excluded(p, first + t, j)) {
          row[j] = -INFINITY;
        }
      }
    }
  }
}

static void zero_empty_rows(float *scores, const unsigned char *empty, int64_t heads,
                            int64_t block, int64_t keys, int head_major) {
  for (int64_t t = 0; t < block; t++) {
    if (!empty[t]) continue;
    for (int64_t h = 0; h < heads; h++) {
      memset(scores + (head_major ? h * block + t : t * heads + h) * keys, 0,
             (size_t)keys * sizeof(float));
    }
  }
}

sg_status sg_dnnl_attention(sg_dnnl *dnnl, const sg_tensor *q, const sg_tensor *k,
                            const sg_tensor *v, const sg_attention_params *p, sg_tensor *y,
                            sg_error *error) {
  const int64_t queries = q->dims[0], keys = k->dims[0], heads = p->heads;
  const int64_t q_row = heads * p->head_dim;
  int64_t block = ATTENTION_SCORE_BUDGET / (heads * keys);
  if (block < 1) block = 1;
  if (block > queries) block = queries;
  if (dnnl->scores_count < (size_t)(block * heads * keys)) {
    free(dnnl->scores);
    dnnl->scores_count = (size_t)(block * heads * keys);
    dnnl->scores = malloc(dnnl->scores_count * sizeof(float));
    if (!dnnl->scores) {
      dnnl->scores_count = 0;
      return sg_fail(error, SG_ERR_OUT_OF_MEMORY, "attention: out of memory for %lld scores",
                     (long long)(block * heads * keys));
    }
  }
  if (dnnl->empty_count < (size_t)block) {
    free(dnnl->empty);
    dnnl->empty_count = (size_t)block;
    dnnl->empty = malloc((size_t)block);
    if (!dnnl->empty) {
      dnnl->empty_count = 0;
      return sg_fail(error, SG_ERR_OUT_OF_MEMORY, "attention: out of memory");
    }
  }
  const int masked = p->key_mask || p->causal;
  const int head_major = p->kv_heads > 1;
  float *scores = dnnl->scores;
  for (int64_t first = 0; first < queries; first += block) {
    const int64_t count = queries - first < block ? queries - first : block;
    sg_dnnl_op *scores_op, *values_op, *softmax;
    sg_status status = attention_ops(dnnl, p, count, keys, &scores_op, &values_op, error);
    if (status == SG_OK) status = softmax_op(dnnl, count * heads, keys, &softmax, error);
    if (status != SG_OK) return status;
    float *q_block = (float *)q->data + first * q_row, *y_block = (float *)y->data + first * q_row;
#ifdef SG_HAVE_BLAS
    if (scores_op->kernel == KERNEL_OPENBLAS) {
      sg_blas_attention_scores(p, count, keys, q_block, k->data, scores);
    }
#endif
    if (scores_op->kernel == KERNEL_ONEDNN) {
      status = op_run(dnnl, scores_op, "attention", (void *[]){q_block, k->data, scores}, error);
      if (status != SG_OK) return status;
    }
    if (masked) mask_scores(scores, dnnl->empty, p, first, count, keys, head_major);
    status = softmax_run(dnnl, softmax, scores, scores, count * heads, keys, "attention", error);
    if (status != SG_OK) return status;
    if (masked) zero_empty_rows(scores, dnnl->empty, heads, count, keys, head_major);
#ifdef SG_HAVE_BLAS
    if (values_op->kernel == KERNEL_OPENBLAS) {
      sg_blas_attention_values(p, count, keys, scores, v->data, y_block);
    }
#endif
    if (values_op->kernel == KERNEL_ONEDNN) {
      status = op_run(dnnl, values_op, "attention", (void *[]){scores, v->data, y_block}, error);
      if (status != SG_OK) return status;
    }
  }
  return SG_OK;
}

/* h * act(g): the gate half is copied into y, activated there by the eltwise primitive (which
 * needs dense memory), then multiplied by h in C. */
sg_status sg_dnnl_gated(sg_dnnl *dnnl, const sg_tensor *x, sg_activation act, sg_tensor *y,
                        sg_error *error) {
  const int64_t rows = y->dims[0], cols = y->dims[1];
  const float *xd = x->data;
  float *yd = y->data;
#pragma omp parallel for
  for (int64_t r = 0; r < rows; r++) {
    memcpy(yd + r * cols, xd + r * 2 * cols + cols, (size_t)cols * sizeof(float));
  }
  if (act != SG_ACT_NONE) {
    sg_dnnl_op *op;
    sg_status status = eltwise_op(dnnl, act, rows * cols, &op, error);
    if (status == SG_OK) status = eltwise_run(dnnl, op, act, yd, yd, rows * cols, "gated", error);
    if (status != SG_OK) return status;
  }
#pragma omp parallel for
  for (int64_t r = 0; r < rows; r++) {
    const float *hidden = xd + r * 2 * cols;
    float *yr = yd + r * cols;
    for (int64_t c = 0; c < cols; c++) yr[c] *= hidden[c];
  }
  return SG_OK;
}
