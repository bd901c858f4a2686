/* test.h: the tiny unit-test harness shared by tests/c/test_*.c (registration and CHECK macros). */
#ifndef SG_TEST_H
#define SG_TEST_H

#include <stddef.h>

/* One running test: records failures and owns a scratch folder. */
typedef struct sg_test sg_test;
typedef void (*sg_test_fn)(sg_test *t);
/* The list every test file adds its tests to. */
typedef struct sg_test_list sg_test_list;

void sg_test_add(sg_test_list *list, const char *name, sg_test_fn fn);

/* Records a failure (and prints it) when ok is 0; returns ok. */
int sg_test_check(sg_test *t, int ok, const char *file, int line, const char *format, ...)
    __attribute__((format(printf, 5, 6)));
/* A fresh empty folder for this test, removed after it; "FOLDER/name" in buf. */
const char *sg_test_path(sg_test *t, const char *name, char *buf, size_t size);

#define CHECK(t, cond) sg_test_check((t), (cond) ? 1 : 0, __FILE__, __LINE__, "%s", #cond)
#define CHECK_MSG(t, cond, ...) \
  sg_test_check((t), (cond) ? 1 : 0, __FILE__, __LINE__, __VA_ARGS__)
/* Each argument is evaluated once (they are often calls). */
#define CHECK_INT(t, a, b) \
  sg_test_check_int((t), (long long)(a), (long long)(b), #a, #b, __FILE__, __LINE__)
#define CHECK_NEAR(t, a, b, tol) \
  sg_test_check_near((t), (double)(a), (double)(b), (double)(tol), #a, #b, __FILE__, __LINE__)

int sg_test_check_int(sg_test *t, long long a, long long b, const char *a_text, const char *b_text,
                      const char *file, int line);
int sg_test_check_near(sg_test *t, double a, double b, double tolerance, const char *a_text,
                       const char *b_text, const char *file, int line);

/* Each test file defines one of these; test_main.c calls them all. */
void register_tensor_tests(sg_test_list *list);
void register_rng_tests(sg_test_list *list);
void register_safetensors_tests(sg_test_list *list);
void register_config_tests(sg_test_list *list);
void register_sampler_tests(sg_test_list *list);
void register_tokenizer_tests(sg_test_list *list);
void register_ops_args_tests(sg_test_list *list);

#endif
