/* png.c: writing RGBA images as PNG (libpng) with text chunks, atomically (temp file + rename). */
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "snapgen.h"

/* PNG's own limit on width and height. */
#define SG_PNG_MAX_SIDE 1000000

typedef struct {
  char message[256];
  int errno_value; /* errno when libpng gave up (ENOSPC, ENOMEM, ...), or 0 */
} png_failure;

/* libpng's messages ("Write Error") do not say why; errno, set by the failed write or malloc,
 * does. */
static void on_png_error(png_structp png, png_const_charp message) {
  png_failure *failure = png_get_error_ptr(png);
  failure->errno_value = errno;
  if (errno != 0)
    g_snprintf(failure->message, sizeof failure->message, "%s (%s)", message, g_strerror(errno));
  else
    g_strlcpy(failure->message, message, sizeof failure->message);
  png_longjmp(png, 1);
}

static void on_png_warning(png_structp png, png_const_charp message) {
  (void)png;
  (void)message;
}

static int is_ascii(const char *text) {
  for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
    if (*p >= 0x80) return 0;
  }
  return 1;
}

/* PNG keywords: 1-79 printable Latin-1 characters; we accept the printable ASCII subset. */
static int valid_keyword(const char *key) {
  size_t length = strlen(key);
  if (length < 1 || length > 79) return 0;
  for (size_t i = 0; i < length; i++) {
    if (key[i] < 32 || key[i] > 126) return 0;
  }
  return 1;
}

/* Encodes the image into stream; 0 with failure->message set on error. */
static int encode_png(FILE *stream, const uint8_t *rgba, int width, int height, png_textp texts,
                      int text_count, png_failure *failure) {
  png_bytep *rows = malloc((size_t)height * sizeof *rows);
  if (!rows) {
    g_strlcpy(failure->message, "out of memory", sizeof failure->message);
    return 0;
  }
  for (int y = 0; y < height; y++) rows[y] = (png_bytep)(rgba + (size_t)y * (size_t)width * 4);
  png_structp png =
      png_create_write_struct(PNG_LIBPNG_VER_STRING, failure, on_png_error, on_png_warning);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  if (!info) {
    png_destroy_write_struct(&png, NULL);
    free(rows);
    g_strlcpy(failure->message, "cannot initialise libpng", sizeof failure->message);
    return 0;
  }
  /* Nothing set up before this point is modified afterwards, so a longjmp back here is safe. */
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    free(rows);
    return 0;
  }
  png_init_io(png, stream);
  png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB_ALPHA,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (text_count > 0) png_set_text(png, info, texts, text_count);
  png_write_info(png, info);
  png_write_image(png, rows);
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  free(rows);
  return 1;
}

sg_status sg_write_png(const char *path, const uint8_t *rgba, int width, int height,
                       const char *const *text_key_values, sg_error *error) {
  if (!path || !*path) return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "PNG: no file name given");
  if (!rgba || width <= 0 || height <= 0 || width > SG_PNG_MAX_SIDE ||
      height > SG_PNG_MAX_SIDE) {
    return sg_fail(error, SG_ERR_INVALID_ARGUMENT, "%s: invalid image (%d x %d pixels)", path,
                   width, height);
  }
  int text_count = 0;
  while (text_key_values && text_key_values[2 * text_count] &&
         text_key_values[2 * text_count + 1]) {
    text_count++;
  }
  png_textp texts = calloc((size_t)(text_count ? text_count : 1), sizeof *texts);
  if (!texts) return sg_fail(error, SG_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
  for (int i = 0; i < text_count; i++) {
    const char *key = text_key_values[2 * i], *value = text_key_values[2 * i + 1];
    if (!valid_keyword(key) || !g_utf8_validate(value, -1, NULL)) {
      free(texts);
      return sg_fail(error, SG_ERR_INVALID_ARGUMENT,
                     "%s: PNG text key '%s' must be 1-79 printable ASCII characters and its "
                     "value UTF-8", path, key);
    }
    texts[i].key = (png_charp)key;
    texts[i].text = (png_charp)value;
    texts[i].text_length = strlen(value);
    /* Plain ASCII fits a tEXt chunk; anything else needs iTXt (UTF-8). */
    texts[i].compression = is_ascii(value) ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
  }

  char *temp_path = g_strdup_printf("%s.tmp-XXXXXX", path);
  int fd = g_mkstemp_full(temp_path, O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) {
    int code = errno;
    char *folder = g_path_get_dirname(path);
    sg_fail(error, SG_ERR_IO, "%s: cannot create a temporary file in %s: %s", path, folder,
            g_strerror(code));
    g_free(folder);
    g_free(temp_path);
    free(texts);
    return SG_ERR_IO;
  }
  png_failure failure = {{0}, 0};
  FILE *stream = fdopen(fd, "wb");
  int ok = 0;
  if (!stream) {
    g_strlcpy(failure.message, g_strerror(errno), sizeof failure.message);
    close(fd);
  } else {
    errno = 0;
    ok = encode_png(stream, rgba, width, height, texts, text_count, &failure);
    if (ok && (fflush(stream) != 0 || ferror(stream) || fsync(fileno(stream)) != 0)) {
      ok = 0;
      g_strlcpy(failure.message, g_strerror(errno), sizeof failure.message);
    }
    if (fclose(stream) != 0 && ok) {
      ok = 0;
      g_strlcpy(failure.message, g_strerror(errno), sizeof failure.message);
    }
  }
  if (ok && rename(temp_path, path) != 0) {
    ok = 0;
    g_strlcpy(failure.message, g_strerror(errno), sizeof failure.message);
  }
  sg_status status = SG_OK;
  if (!ok) {
    g_unlink(temp_path);
    status = sg_fail(error, failure.errno_value == ENOMEM ? SG_ERR_OUT_OF_MEMORY : SG_ERR_IO,
                     "%s: cannot write PNG: %s", path, failure.message);
  }
  g_free(temp_path);
  free(texts);
  return status;
}
