/* fuzz_util.h: helpers the libFuzzer targets share: fuzz bytes into a scratch file, a byte reader.
 */
#ifndef SG_FUZZ_UTIL_H
#define SG_FUZZ_UTIL_H

#include <glib.h>
#include <glib/gstdio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A scratch folder (on tmpfs when /dev/shm exists) holding one file; removed by scratch_remove. */
typedef struct {
  char folder[256];
  char path[320];
} scratch_file;

/* Makes a fresh folder and writes bytes to folder/name; aborts (a harness fault, not a finding)
 * when the temporary storage is broken. */
static inline void scratch_write(scratch_file *scratch, const char *name, const uint8_t *bytes,
                                 size_t size) {
  const char *base = g_file_test("/dev/shm", G_FILE_TEST_IS_DIR) ? "/dev/shm" : g_get_tmp_dir();
  g_snprintf(scratch->folder, sizeof scratch->folder, "%s/sg-fuzz-XXXXXX", base);
  if (!g_mkdtemp(scratch->folder)) abort();
  g_snprintf(scratch->path, sizeof scratch->path, "%s/%s", scratch->folder, name);
  FILE *file = fopen(scratch->path, "wb");
  if (!file || (size > 0 && fwrite(bytes, 1, size, file) != size) || fclose(file) != 0) abort();
}

static inline void scratch_remove(scratch_file *scratch) {
  g_unlink(scratch->path);
  g_rmdir(scratch->folder);
}

/* Reads fixed-size fields off the front of the fuzz input; zeros once it runs out. */
typedef struct {
  const uint8_t *data;
  size_t size;
} byte_reader;

static inline uint64_t take_bytes(byte_reader *reader, int count) {
  uint64_t value = 0;
  for (int i = 0; i < count; i++) {
    uint8_t byte = 0;
    if (reader->size > 0) {
      byte = reader->data[0];
      reader->data++;
      reader->size--;
    }
    value |= (uint64_t)byte << (8 * i);
  }
  return value;
}

#endif
