/* fuzz_safetensors.c: libFuzzer target: arbitrary bytes as a .safetensors file, read by the
 * validated reader and by the weights loader (f16/bf16 conversion, NaN checks, shape checks). */
#include <glib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "safetensors.h"
#include "weights.h"

/* A finding of the harness itself: an invariant the reader promises is broken. */
#define EXPECT(cond)                                                      \
  do {                                                                    \
    if (!(cond)) {                                                        \
      fprintf(stderr, "fuzz_safetensors: invariant broken: %s\n", #cond); \
      abort();                                                            \
    }                                                                     \
  } while (0)

/* Reads every byte of each tensor (ASan sees reads outside the data) and checks the sizes. */
static void check_entries(const sg_safetensors *file) {
  int count = sg_safetensors_count(file);
  EXPECT(count >= 0);
  EXPECT(sg_safetensors_entry(file, count) == NULL && sg_safetensors_entry(file, -1) == NULL);
  for (int i = 0; i < count; i++) {
    const sg_st_entry *entry = sg_safetensors_entry(file, i);
    EXPECT(entry != NULL && entry->name != NULL);
    EXPECT(entry->ndim >= 0 && entry->ndim <= SG_MAX_DIMS);
    EXPECT(sg_safetensors_find(file, entry->name) == entry);
    sg_tensor view = sg_tensor_view((void *)entry->data, entry->dtype, entry->ndim, entry->dims);
    EXPECT(sg_tensor_nbytes(&view) == entry->nbytes);
    char shape[128];
    sg_shape_string(&view, shape, sizeof shape);
    uint8_t sum = 0;
    const uint8_t *bytes = entry->data;
    for (size_t b = 0; b < entry->nbytes; b++) sum ^= bytes[b];
    (void)sum;
  }
  (void)sg_safetensors_metadata(file, "format");
  (void)sg_safetensors_metadata(file, "");
}

/* Fetches each tensor through the weights loader with its own shape (then again, from the
 * cache), and once with a wrong shape, which must fail in words. */
static void fetch_all(const char *folder, const sg_safetensors *file) {
  sg_error error = {0};
  sg_weights *weights = NULL;
  if (sg_weights_open_folder(folder, &weights, &error) != SG_OK) return;
  for (int i = 0; i < sg_safetensors_count(file); i++) {
    const sg_st_entry *entry = sg_safetensors_entry(file, i);
    sg_tensor tensor;
    sg_status status =
        sg_weights_get(weights, entry->name, entry->ndim, entry->dims, &tensor, &error);
    if (status == SG_OK) {
      EXPECT(tensor.dtype == SG_F32 &&
             sg_tensor_numel(&tensor) == (int64_t)(entry->nbytes / sg_dtype_size(entry->dtype)));
      const float *values = tensor.data;
      for (int64_t v = 0; v < sg_tensor_numel(&tensor); v++) EXPECT(values[v] == values[v]);
      /* the second fetch is served from the cache and must agree */
      sg_tensor again;
      EXPECT(sg_weights_get(weights, entry->name, entry->ndim, entry->dims, &again, &error) ==
             SG_OK);
      EXPECT(again.data == tensor.data);
      int64_t wrong[SG_MAX_DIMS] = {entry->ndim > 0 ? entry->dims[0] + 1 : 1, 1, 1, 1};
      EXPECT(sg_weights_get(weights, entry->name, entry->ndim > 0 ? entry->ndim : 1, wrong, &again,
                            &error) != SG_OK);
    } else {
      EXPECT(error.status == status && error.message[0] != '\0');
    }
  }
  char **unused = sg_weights_unused_names(weights);
  sg_weights_free_names(unused);
  sg_weights_free(weights);
}

/* Fetches each 2-D tensor as a linear layer's matrix with bf16 matrices kept in the file (as the
 * text encoders do): a bf16 one comes back as the file's bytes (its own mapping), all finite. */
static void fetch_linears_kept(const char *folder, const sg_safetensors *file) {
  sg_error error = {0};
  sg_weights *weights = NULL;
  if (sg_weights_open_folder(folder, &weights, &error) != SG_OK) return;
  sg_weights_keep_bf16_linears(weights);
  for (int i = 0; i < sg_safetensors_count(file); i++) {
    const sg_st_entry *entry = sg_safetensors_entry(file, i);
    if (entry->ndim != 2) continue;
    sg_tensor tensor;
    sg_status status = sg_weights_get_linear(weights, entry->name, entry->dims[0], entry->dims[1],
                                             &tensor, &error);
    if (status != SG_OK) {
      EXPECT(error.status == status && error.message[0] != '\0');
      continue;
    }
    EXPECT(tensor.ndim == 2 && tensor.dims[0] == entry->dims[0] &&
           tensor.dims[1] == entry->dims[1]);
    if (tensor.dtype == SG_BF16) {
      EXPECT(entry->dtype == SG_BF16 && memcmp(tensor.data, entry->data, entry->nbytes) == 0);
      const uint16_t *values = tensor.data;
      for (int64_t v = 0; v < sg_tensor_numel(&tensor); v++)
        EXPECT(!sg_bf16_is_nonfinite(values[v]));
    } else {
      EXPECT(tensor.dtype == SG_F32);
    }
  }
  sg_weights_free(weights);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  scratch_file scratch;
  scratch_write(&scratch, "model.safetensors", data, size);
  sg_error error = {0};
  sg_safetensors *file = NULL;
  sg_status status = sg_safetensors_open(scratch.path, &file, &error);
  if (status == SG_OK) {
    check_entries(file);
    fetch_all(scratch.folder, file);
    fetch_linears_kept(scratch.folder, file);
    sg_safetensors_close(file);
  } else {
    EXPECT(status == SG_ERR_FORMAT || status == SG_ERR_IO);
    EXPECT(error.status == status && error.message[0] != '\0');
  }
  scratch_remove(&scratch);
  return 0;
}
