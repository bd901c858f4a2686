/* test_main.c: runs every C unit test and prints "N passed, M failed" as its last line.
 *
 * Registration API (see test.h): each test file defines
 *     void register_NAME_tests(sg_test_list *list)
 * which calls sg_test_add(list, "NAME/what", fn) once per test, where fn is `static void
 * fn(sg_test *t)` and checks with CHECK(t, cond), CHECK_INT, CHECK_NEAR or CHECK_MSG (a failed
 * check is reported and the test goes on; `return` early where later checks make no sense).
 * sg_test_path(t, "file", buf, size) gives a path in a scratch folder removed after the test.
 * Add the new register function to test.h and to `registrations` below.
 * Usage: unit-tests [SUBSTRING]   runs only the tests whose name contains SUBSTRING. */
#include <glib.h>
#include <glib/gstdio.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"

typedef struct {
  const char *name;
  sg_test_fn fn;
} test_case;

struct sg_test_list {
  test_case *cases;
  int count, capacity;
};

struct sg_test {
  const char *name;
  int failures;
  char *folder; /* scratch folder, made on first use */
};

static void (*const registrations[])(sg_test_list *) = {
    register_tensor_tests,   register_rng_tests,     register_safetensors_tests,
    register_config_tests,   register_sampler_tests, register_tokenizer_tests,
    register_ops_args_tests,
};

void sg_test_add(sg_test_list *list, const char *name, sg_test_fn fn) {
  if (list->count == list->capacity) {
    list->capacity = list->capacity ? list->capacity * 2 : 64;
    list->cases = realloc(list->cases, (size_t)list->capacity * sizeof *list->cases);
    if (!list->cases) abort();
  }
  list->cases[list->count].name = name;
  list->cases[list->count].fn = fn;
  list->count++;
}

int sg_test_check(sg_test *t, int ok, const char *file, int line, const char *format, ...) {
  if (ok) return 1;
  t->failures++;
  printf("  %s: %s:%d: check failed: ", t->name, file, line);
  va_list args;
  va_start(args, format);
  vprintf(format, args);
  va_end(args);
  printf("\n");
  return 0;
}

int sg_test_check_int(sg_test *t, long long a, long long b, const char *a_text, const char *b_text,
                      const char *file, int line) {
  return sg_test_check(t, a == b, file, line, "%s == %s (%lld vs %lld)", a_text, b_text, a, b);
}

int sg_test_check_near(sg_test *t, double a, double b, double tolerance, const char *a_text,
                       const char *b_text, const char *file, int line) {
  return sg_test_check(t, fabs(a - b) <= tolerance, file, line, "%s ~= %s (%.9g vs %.9g, tol %g)",
                       a_text, b_text, a, b, tolerance);
}

const char *sg_test_path(sg_test *t, const char *name, char *buf, size_t size) {
  if (!t->folder) {
    GError *gerror = NULL;
    t->folder = g_dir_make_tmp("sg-unit-XXXXXX", &gerror);
    if (!t->folder) {
      fprintf(stderr, "cannot make a scratch folder: %s\n", gerror->message);
      exit(2);
    }
  }
  snprintf(buf, size, "%s/%s", t->folder, name);
  return buf;
}

/* Removes the scratch folder and what the test left in it (one level deep, plus subfolders). */
static void remove_tree(const char *folder) {
  GDir *dir = g_dir_open(folder, 0, NULL);
  if (dir) {
    const char *entry;
    while ((entry = g_dir_read_name(dir))) {
      char *path = g_build_filename(folder, entry, NULL);
      if (g_file_test(path, G_FILE_TEST_IS_DIR) && !g_file_test(path, G_FILE_TEST_IS_SYMLINK)) {
        remove_tree(path);
      } else {
        g_unlink(path);
      }
      g_free(path);
    }
    g_dir_close(dir);
  }
  g_rmdir(folder);
}

int main(int argc, char **argv) {
  const char *filter = argc > 1 ? argv[1] : NULL;
  sg_test_list list = {0};
  for (size_t i = 0; i < sizeof registrations / sizeof registrations[0]; i++) {
    registrations[i](&list);
  }
  int passed = 0, failed = 0;
  for (int i = 0; i < list.count; i++) {
    if (filter && !strstr(list.cases[i].name, filter)) continue;
    sg_test t = {list.cases[i].name, 0, NULL};
    list.cases[i].fn(&t);
    if (t.folder) {
      remove_tree(t.folder);
      g_free(t.folder);
    }
    printf("%s %s\n", t.failures ? "FAIL" : "PASS", t.name);
    fflush(stdout);
    if (t.failures) {
      failed++;
    } else {
      passed++;
    }
  }
  free(list.cases);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
