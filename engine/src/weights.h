/* weights.h: where a model's parameters come from: safetensors files, or deterministic random
 * values (benchmarks without files). Models ask for each tensor by name and expected shape. */
#ifndef SG_WEIGHTS_H
#define SG_WEIGHTS_H

#include "safetensors.h"

typedef struct sg_weights sg_weights;

/* Opens every *.safetensors file in a component folder (e.g. MODEL/unet) that is not a variant:
 * files named NAME.bf16.safetensors or NAME.fp16.safetensors (Hugging Face's naming of a
 * component's copies in another precision) are left out. */
sg_status sg_weights_open_folder(const char *folder, sg_weights **out, sg_error *error);
/* Opens the folder's files of that variant ("bf16": *.bf16.safetensors) if it has any, else the
 * files sg_weights_open_folder opens (variant NULL: those). */
sg_status sg_weights_open_folder_variant(const char *folder, const char *variant, sg_weights **out,
                                         sg_error *error);
/* Random weights from a seed: uniform in ±1/sqrt(fan_in) (fan_in = numel/dims[0] for ≥2-D,
 * ones for 1-D tensors whose name ends in "norm*.weight"/"gamma", zeros for other 1-D).
 * The uniform values are sg_uniform_fill(seed ^ fnv1a64(name), stream 1, ...). Every name asked
 * for exists (get_optional always finds it). */
sg_weights *sg_weights_new_random(uint64_t seed);
void sg_weights_free(sg_weights *weights);
/* Says that one backend alone will run the model made from these weights: the f32 copies this
 * object makes (widened bf16/f16, random values) are handed out as SG_WEIGHT_HANDOFF (tensor.h),
 * so the backend may release them once it has packed them (no second copy stays resident).
 * Call before fetching. File-mapped f32 weights are SG_WEIGHT_FILE_PAGES either way. */
void sg_weights_hand_off_to_backend(sg_weights *weights);

/* Fetches `name` as f32 with exactly the given shape (bf16/f16 storage converted into memory
 * owned by `weights`; f32 storage is used from the mapping in place). Missing tensor, shape
 * mismatch or non-finite values give SG_ERR_FORMAT naming the file and tensor. */
sg_status sg_weights_get(sg_weights *weights, const char *name, int ndim, const int64_t *dims,
                         sg_tensor *out, sg_error *error);
/* Same, but a missing tensor is not an error: *found set to 0. */
sg_status sg_weights_get_optional(sg_weights *weights, const char *name, int ndim,
                                  const int64_t *dims, sg_tensor *out, int *found,
                                  sg_error *error);
/* Store the matrices fetched with sg_weights_get_linear as int8 with one scale per row
 * (tensor.h SG_I8): a quarter of their f32 memory; the ops widen them at each use. Call before
 * fetching. */
void sg_weights_store_linears_int8(sg_weights *weights);
/* Leave the matrices fetched with sg_weights_get_linear that a file stores as bf16 in the file's
 * pages (an SG_BF16 tensor, checked for NaN/Inf once) instead of widening them to f32: no copy
 * at all, and the ops widen them block by block at each use. Matrices stored otherwise come as
 * f32; int8 storage, when also asked for, wins. Call before fetching. */
void sg_weights_keep_bf16_linears(sg_weights *weights);
/* A linear layer's weight [out_features, in_features]: as sg_weights_get, or an SG_I8 tensor
 * after sg_weights_store_linears_int8, or an SG_BF16 one after sg_weights_keep_bf16_linears. */
sg_status sg_weights_get_linear(sg_weights *weights, const char *name, int64_t out_features,
                                int64_t in_features, sg_tensor *out, sg_error *error);
/* A table read by rows (a token embedding) with exactly the shape [rows, cols], left in its stored
 * dtype (F32, BF16 or F16) in the file mapping: no f32 copy of the whole table is made, and only
 * the rows looked up are ever read (sg_weights_table_row). found may be NULL (then a missing
 * tensor is an error). Random weights give an f32 table. */
sg_status sg_weights_get_table(sg_weights *weights, const char *name, int64_t rows, int64_t cols,
                               sg_tensor *out, int *found, sg_error *error);
/* Row `row` of such a table as f32 into out[cols]; a NaN/Inf in it is SG_ERR_FORMAT naming the
 * table (`name`) and row. */
sg_status sg_weights_table_row(const sg_tensor *table, const char *name, int64_t row, float *out,
                               sg_error *error);
/* Total parameters fetched so far, and bytes of f32 copies made (for reports). */
int64_t sg_weights_parameter_count(const sg_weights *weights);
size_t sg_weights_owned_bytes(const sg_weights *weights);
/* Names in the files that no model asked for (to catch typos); NULL-terminated, free with g_strfreev
 * semantics via sg_weights_free_names. */
char **sg_weights_unused_names(const sg_weights *weights);
void sg_weights_free_names(char **names);

#endif
