/* test_tensor.c: unit tests for tensor headers, half-precision conversion, the arena and errors. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "error.h"
#include "tensor.h"
#include "test.h"

static void test_dtype_and_shape(sg_test *t) {
  CHECK_INT(t, sg_dtype_size(SG_F32), 4);
  CHECK_INT(t, sg_dtype_size(SG_F16), 2);
  CHECK_INT(t, sg_dtype_size(SG_BF16), 2);
  CHECK(t, strcmp(sg_dtype_name(SG_BF16), "BF16") == 0);
  float data[24];
  sg_tensor a = sg_tensor_3d(data, 2, 3, 4);
  CHECK_INT(t, a.ndim, 3);
  CHECK_INT(t, sg_tensor_numel(&a), 24);
  CHECK_INT(t, sg_tensor_nbytes(&a), 96);
  CHECK(t, a.data == data && a.dtype == SG_F32 && a.format == SG_FORMAT_PLAIN);
  sg_tensor b = sg_tensor_2d(data, 6, 4);
  CHECK(t, !sg_tensor_same_shape(&a, &b));
  sg_tensor c = sg_tensor_view(data, SG_F32, 3, a.dims);
  CHECK(t, sg_tensor_same_shape(&a, &c));
  char buf[64];
  CHECK(t, strcmp(sg_shape_string(&a, buf, sizeof buf), "[2, 3, 4]") == 0);
  sg_tensor d = sg_tensor_1d(data, 256);
  CHECK(t, strcmp(sg_shape_string(&d, buf, sizeof buf), "[256]") == 0);
  sg_tensor scalar = sg_tensor_view(data, SG_F32, 0, NULL);
  CHECK(t, strcmp(sg_shape_string(&scalar, buf, sizeof buf), "[]") == 0);
  CHECK_INT(t, sg_tensor_numel(&scalar), 1);
  char small[5];
  sg_shape_string(&a, small, sizeof small); /* truncates safely */
  CHECK(t, strlen(small) == 4);
}

static void test_half_conversion(sg_test *t) {
  CHECK(t, sg_bf16_to_f32(0x3f80) == 1.0f);
  CHECK(t, sg_bf16_to_f32(0xc000) == -2.0f);
  CHECK_INT(t, sg_f32_to_bf16(1.0f), 0x3f80);
  CHECK_INT(t, sg_f32_to_bf16(-2.0f), 0xc000);
  /* Round to nearest even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7, goes to 1 (even). */
  CHECK_INT(t, sg_f32_to_bf16(1.0f + 1.0f / 256), 0x3f80);
  /* 1 + 3 * 2^-8 is halfway between 1+2^-7 (odd) and 1+2^-6: goes up to the even one. */
  CHECK_INT(t, sg_f32_to_bf16(1.0f + 3.0f / 256), 0x3f82);
  CHECK_INT(t, sg_f32_to_bf16(1.0f + 1.0f / 256 + 1.0f / 65536), 0x3f81);
  CHECK(t, isnan(sg_bf16_to_f32(sg_f32_to_bf16(NAN))));
  CHECK(t, isinf(sg_bf16_to_f32(sg_f32_to_bf16(INFINITY))));
  CHECK(t, sg_f16_to_f32(0x3c00) == 1.0f);
  CHECK(t, sg_f16_to_f32(0xc000) == -2.0f);
  CHECK(t, sg_f16_to_f32(0x7bff) == 65504.0f);
  CHECK(t, sg_f16_to_f32(0x0001) == ldexpf(1.0f, -24)); /* smallest subnormal */
  CHECK(t, sg_f16_to_f32(0x03ff) == ldexpf(1023.0f, -24));
  CHECK(t, sg_f16_to_f32(0x0400) == ldexpf(1.0f, -14)); /* smallest normal */
  CHECK(t, sg_f16_to_f32(0x3555) == 0.333251953125f);
  CHECK(t, isinf(sg_f16_to_f32(0x7c00)) && sg_f16_to_f32(0xfc00) < 0);
  CHECK(t, isnan(sg_f16_to_f32(0x7e00)));
  float negative_zero = sg_f16_to_f32(0x8000);
  CHECK(t, negative_zero == 0.0f && signbit(negative_zero));
}

static void test_arena_stack(sg_test *t) {
  sg_error error = {0};
  sg_arena *arena = sg_arena_new();
  CHECK(t, arena != NULL);
  if (!arena) return;
  float *a = sg_arena_alloc(arena, 100, &error);
  CHECK(t, a != NULL && ((uintptr_t)a % 64) == 0);
  size_t mark = sg_arena_mark(arena);
  float *b = sg_arena_alloc(arena, 1, &error);
  CHECK(t, b != NULL && ((uintptr_t)b % 64) == 0 && b >= a + 100);
  for (int i = 0; i < 100; i++) a[i] = (float)i;
  b[0] = 7;
  sg_arena_reset(arena, mark);
  float *c = sg_arena_alloc(arena, 1, &error);
  CHECK(t, c == b); /* reset frees everything after the mark, stack-like */
  CHECK(t, a[99] == 99.0f);
  /* A big allocation beyond the first chunk, then back to the mark. */
  float *big = sg_arena_alloc(arena, (int64_t)8 << 20, &error);
  CHECK(t, big != NULL && ((uintptr_t)big % 64) == 0);
  if (big) {
    big[0] = 1;
    big[((int64_t)8 << 20) - 1] = 2;
  }
  sg_arena_reset(arena, mark);
  CHECK_INT(t, sg_arena_mark(arena), mark);
  size_t peak = sg_arena_peak_bytes(arena);
  CHECK(t, peak >= 400 + ((size_t)8 << 20) * 4);
  sg_arena_reset(arena, 0);
  CHECK_INT(t, sg_arena_mark(arena), 0);
  sg_arena_free(arena);
}

/* One "forward pass": nested allocations and releases with a known peak. */
static int run_pass(sg_arena *arena, float **first, sg_error *error) {
  float *x = sg_arena_alloc(arena, 3 << 20, error); /* 12 MiB */
  if (!x) return 0;
  *first = x;
  size_t mark = sg_arena_mark(arena);
  for (int step = 0; step < 3; step++) {
    float *y = sg_arena_alloc(arena, 5 << 20, error); /* 20 MiB: spills to another chunk */
    float *z = sg_arena_alloc(arena, 1000, error);
    if (!y || !z) return 0;
    y[0] = z[0] = x[0];
    sg_arena_reset(arena, mark);
  }
  sg_arena_reset(arena, 0);
  return 1;
}

static void test_arena_settle(sg_test *t) {
  sg_error error = {0};
  sg_arena *arena = sg_arena_new();
  float *first = NULL;
  CHECK(t, run_pass(arena, &first, &error));
  size_t peak = sg_arena_peak_bytes(arena);
  size_t expected = ((size_t)3 << 20) * 4 + ((size_t)5 << 20) * 4 + 4032; /* 1000 floats -> 4032 */
  CHECK_INT(t, peak, expected);
  sg_arena_settle(arena);
  CHECK_INT(t, sg_arena_peak_bytes(arena), expected);
  float *settled_first = NULL;
  CHECK(t, run_pass(arena, &settled_first, &error));
  CHECK_INT(t, sg_arena_peak_bytes(arena), expected); /* the replay fits the one block */
  float *again = NULL;
  CHECK(t, run_pass(arena, &again, &error));
  CHECK(t, again == settled_first); /* no new allocation after settling */
  sg_arena_settle(arena);
  sg_arena_free(arena);
}

static void test_arena_tensor_and_errors(sg_test *t) {
  sg_error error = {0};
  sg_arena *arena = sg_arena_new();
  sg_tensor x;
  int64_t dims[3] = {4, 8, 8};
  CHECK_INT(t, sg_arena_tensor(arena, 3, dims, &x, &error), SG_OK);
  CHECK_INT(t, sg_tensor_numel(&x), 256);
  CHECK(t, x.dtype == SG_F32 && x.data != NULL);
  int64_t huge[3] = {INT64_MAX / 2, 4, 4};
  CHECK_INT(t, sg_arena_tensor(arena, 3, huge, &x, &error), SG_ERR_OUT_OF_MEMORY);
  CHECK(t, strlen(error.message) > 0);
  error.message[0] = 0;
  CHECK(t, sg_arena_alloc(arena, INT64_MAX / 2, &error) == NULL);
  CHECK_INT(t, error.status, SG_ERR_OUT_OF_MEMORY);
  CHECK(t, strstr(error.message, "arena") != NULL);
  CHECK(t, sg_arena_alloc(arena, -1, &error) == NULL);
  /* Too big for the machine, but no overflow: malloc fails and the error says so. */
  CHECK(t, sg_arena_alloc(arena, (int64_t)1 << 60, &error) == NULL);
  CHECK_INT(t, error.status, SG_ERR_OUT_OF_MEMORY);
  float *after = sg_arena_alloc(arena, 16, &error); /* still usable */
  CHECK(t, after != NULL);
  int64_t negative[1] = {-1};
  CHECK_INT(t, sg_arena_tensor(arena, 1, negative, &x, &error), SG_ERR_INVALID_ARGUMENT);
  sg_arena_free(arena);
  sg_arena_free(NULL);
}

static void test_errors(sg_test *t) {
  sg_error error = {0};
  CHECK_INT(t, sg_fail(&error, SG_ERR_IO, "%s: cannot read (%d)", "/x/y", 5), SG_ERR_IO);
  CHECK_INT(t, error.status, SG_ERR_IO);
  CHECK(t, strcmp(error.message, "/x/y: cannot read (5)") == 0);
  CHECK_INT(t, sg_fail(NULL, SG_ERR_FORMAT, "no error struct"), SG_ERR_FORMAT);
  char long_text[3000];
  memset(long_text, 'a', sizeof long_text - 1);
  long_text[sizeof long_text - 1] = 0;
  sg_fail(&error, SG_ERR_FORMAT, "%s", long_text);
  CHECK_INT(t, strlen(error.message), sizeof error.message - 1);
  for (int s = SG_OK; s <= SG_ERR_BACKEND; s++) {
    CHECK(t, sg_status_name((sg_status)s) != NULL && *sg_status_name((sg_status)s));
  }
  CHECK(t, strcmp(sg_status_name(SG_ERR_OUT_OF_MEMORY), "out of memory") == 0);
  sg_free(NULL);
}

/* Per-row int8: the row's largest magnitude maps to ±127, every value comes back within half a
 * step, and an all-zero row gets scale 1 and codes 0. */
static void test_int8_rows(sg_test *t) {
  enum { ROWS = 3, COLS = 5 };
  const float w[ROWS][COLS] = {{0.5f, -1.27f, 0.01f, 1.0f, -0.3f},
                               {0.0f, 0.0f, 0.0f, 0.0f, 0.0f},
                               {2.54f, 0.01f, 0.03f, -0.05f, 1.27f}};
  int8_t q[ROWS * COLS];
  float scales[ROWS], back[ROWS * COLS];
  sg_quantize_rows_int8(&w[0][0], ROWS, COLS, q, scales);
  sg_dequantize_rows_int8(q, scales, ROWS, COLS, back);
  CHECK_NEAR(t, scales[0], 1.27f / 127.0f, 1e-9);
  CHECK_INT(t, q[1], -127);
  CHECK_NEAR(t, scales[1], 1.0, 0);
  for (int k = 0; k < COLS; k++) CHECK_INT(t, q[COLS + k], 0);
  CHECK_INT(t, q[2 * COLS], 127);
  CHECK_INT(t, q[2 * COLS + 4], 64); /* 1.27 / 0.02 = 63.5 (a tie up to float rounding) */
  for (int r = 0; r < ROWS; r++)
    for (int k = 0; k < COLS; k++)
      CHECK(t, fabsf(back[r * COLS + k] - w[r][k]) <= scales[r] / 2 * 1.0001f);
}

void register_tensor_tests(sg_test_list *list) {
  sg_test_add(list, "tensor/int8_rows", test_int8_rows);
  sg_test_add(list, "tensor/dtype_and_shape", test_dtype_and_shape);
  sg_test_add(list, "tensor/half_conversion", test_half_conversion);
  sg_test_add(list, "tensor/arena_stack", test_arena_stack);
  sg_test_add(list, "tensor/arena_settle", test_arena_settle);
  sg_test_add(list, "tensor/arena_tensor_and_errors", test_arena_tensor_and_errors);
  sg_test_add(list, "tensor/errors", test_errors);
}
