/* test_ops_args.c: the ops refuse images in layouts they do not take, and bad shapes for the
 * fused pointwise + depthwise convolution and the tap sum, with messages that say why (both
 * backends); bf16 compute is refused in words where it is not available. */
#include <math.h>
#include <string.h>

#include "ops.h"
#include "test.h"

/* An image header over data (no allocation). */
static sg_tensor image(float *data, int64_t c, int64_t h, int64_t w, sg_format format) {
  sg_tensor t = sg_tensor_3d(data, c, h, w);
  t.format = format;
  return t;
}

static void check_refused(sg_test *t, sg_status status, const sg_error *error, const char *words) {
  CHECK_INT(t, status, SG_ERR_INVALID_ARGUMENT);
  CHECK_MSG(t, strstr(error->message, words) != NULL, "message '%s' lacks '%s'", error->message,
            words);
}

static void layouts_on(sg_test *t, sg_backend_kind kind) {
  sg_error error = {0};
  sg_backend *be = sg_backend_new(kind, 1, &error);
  CHECK(t, be != NULL);
  if (!be) return;
  static float x_data[16 * 4 * 4], y_data[16 * 4 * 4], w_data[16 * 16 * 9], gamma[16], beta[16];
  const int64_t w_dims[4] = {16, 12, 3, 3};
  sg_tensor w = sg_tensor_view(w_data, SG_F32, 4, w_dims);
  /* 12 channels cannot be stored in blocks of 8. */
  sg_tensor x12 = image(x_data, 12, 4, 4, SG_FORMAT_BLOCKED8);
  sg_tensor y16 = image(y_data, 16, 4, 4, SG_FORMAT_BLOCKED8);
  sg_status status = sg_conv2d(be, &x12, &w, NULL, 1, 1, 1, SG_ACT_NONE, &y16, &error);
  check_refused(t, status, &error, "blocks of 8 channels but has 12 channels");
  /* Group norm takes plain or channels-last images, not blocked ones. */
  sg_tensor x16 = image(x_data, 16, 4, 4, SG_FORMAT_BLOCKED8);
  sg_tensor g = sg_tensor_1d(gamma, 16), b = sg_tensor_1d(beta, 16);
  status = sg_group_norm(be, &x16, 4, &g, &b, 1e-5f, SG_ACT_NONE, &y16, &error);
  check_refused(t, status, &error, "plain or channels-last images");
  /* Upsampling keeps the layout. */
  static float up_data[16 * 8 * 8];
  sg_tensor up = image(up_data, 16, 8, 8, SG_FORMAT_NHWC);
  status = sg_upsample_nearest2x(be, &x16, &up, &error);
  check_refused(t, status, &error, "must have the layout of input x");
  sg_backend_free(be);
}

static void test_layouts_reference(sg_test *t) {
  layouts_on(t, SG_BACKEND_REFERENCE);
}
static void test_layouts_onednn(sg_test *t) {
  layouts_on(t, SG_BACKEND_ONEDNN);
}

static void pointwise_depthwise_on(sg_test *t, sg_backend_kind kind) {
  sg_error error = {0};
  sg_backend *be = sg_backend_new(kind, 1, &error);
  CHECK(t, be != NULL);
  if (!be) return;
  static float x_data[8 * 5 * 5], y_data[16 * 5 * 5], mid_data[16 * 5 * 5], w_data[16 * 8 * 9],
      dw_data[16 * 9];
  sg_tensor x = image(x_data, 8, 5, 5, SG_FORMAT_BLOCKED8);
  sg_tensor y = image(y_data, 16, 5, 5, SG_FORMAT_BLOCKED8);
  sg_tensor mid = image(mid_data, 16, 5, 5, SG_FORMAT_BLOCKED8);
  const int64_t w1_dims[4] = {16, 8, 1, 1}, w3_dims[4] = {16, 8, 3, 3};
  const int64_t dw_dims[4] = {16, 1, 3, 3}, dw_bad_dims[4] = {8, 1, 3, 3};
  sg_tensor w1 = sg_tensor_view(w_data, SG_F32, 4, w1_dims);
  sg_tensor w3 = sg_tensor_view(w_data, SG_F32, 4, w3_dims);
  sg_tensor dw = sg_tensor_view(dw_data, SG_F32, 4, dw_dims);
  sg_tensor dw_bad = sg_tensor_view(dw_data, SG_F32, 4, dw_bad_dims);
  sg_status status = sg_pointwise_depthwise(be, &x, &w3, NULL, SG_ACT_RELU, &dw, &mid, &y, &error);
  check_refused(t, status, &error, "is not a 1x1 convolution of input x");
  status = sg_pointwise_depthwise(be, &x, &w1, NULL, SG_ACT_RELU, &dw_bad, &mid, &y, &error);
  check_refused(t, status, &error, "depthwise weight [8, 1, 3, 3] is not [16, 1, 3, 3]");
  status = sg_pointwise_depthwise(be, &x, &w1, NULL, SG_ACT_RELU, &dw, NULL, &y, &error);
  check_refused(t, status, &error, "mid is missing");
  status = sg_pointwise_depthwise(be, &x, &w1, NULL, SG_ACT_RELU, &dw, &y, &y, &error);
  check_refused(t, status, &error, "may not share memory with mid");
  sg_tensor small_mid = image(mid_data, 16, 4, 5, SG_FORMAT_BLOCKED8);
  status = sg_pointwise_depthwise(be, &x, &w1, NULL, SG_ACT_RELU, &dw, &small_mid, &y, &error);
  check_refused(t, status, &error, "does not match output y");
  /* The same op with good arguments runs (values: zeros in, zeros out). */
  status = sg_pointwise_depthwise(be, &x, &w1, NULL, SG_ACT_RELU, &dw, &mid, &y, &error);
  CHECK_MSG(t, status == SG_OK, "%s", error.message);
  sg_backend_free(be);
}

static void test_pointwise_depthwise_reference(sg_test *t) {
  pointwise_depthwise_on(t, SG_BACKEND_REFERENCE);
}
static void test_pointwise_depthwise_onednn(sg_test *t) {
  pointwise_depthwise_on(t, SG_BACKEND_ONEDNN);
}

static void sum_taps_on(sg_test *t, sg_backend_kind kind) {
  sg_error error = {0};
  sg_backend *be = sg_backend_new(kind, 1, &error);
  CHECK(t, be != NULL);
  if (!be) return;
  static float z_data[32 * 6 * 6], y_data[4 * 6 * 6];
  /* 4 outputs need 36 planes; 32 are too few. */
  sg_tensor z = image(z_data, 32, 6, 6, SG_FORMAT_BLOCKED8);
  sg_tensor y4 = image(y_data, 4, 6, 6, SG_FORMAT_PLAIN);
  sg_status status = sg_sum_taps3x3(be, &z, NULL, &y4, &error);
  check_refused(t, status, &error, "needs 9 planes per output of y [4, 6, 6]");
  /* The output is plain. */
  sg_tensor y8 = image(y_data, 8, 3, 6, SG_FORMAT_BLOCKED8);
  status = sg_sum_taps3x3(be, &z, NULL, &y8, &error);
  check_refused(t, status, &error, "this op takes the plain layout");
  sg_tensor y3 = image(y_data, 3, 6, 6, SG_FORMAT_PLAIN);
  status = sg_sum_taps3x3(be, &z, NULL, &y3, &error);
  CHECK_MSG(t, status == SG_OK, "%s", error.message);
  sg_backend_free(be);
}

static void test_sum_taps_reference(sg_test *t) {
  sum_taps_on(t, SG_BACKEND_REFERENCE);
}
static void test_sum_taps_onednn(sg_test *t) {
  sum_taps_on(t, SG_BACKEND_ONEDNN);
}

/* bf16 compute: the reference backend refuses it; oneDNN either refuses it in words (a CPU
 * without bf16 instructions) or computes a convolution within bf16 rounding of the f32 one. */
static void test_bf16_reference(sg_test *t) {
  sg_error error = {0};
  sg_backend *be = sg_backend_new(SG_BACKEND_REFERENCE, 1, &error);
  CHECK(t, be != NULL);
  if (!be) return;
  CHECK_INT(t, sg_backend_set_bf16(be, 0, &error), SG_OK);
  check_refused(t, sg_backend_set_bf16(be, 1, &error), &error, "f32 only");
  sg_backend_free(be);
}

static void test_bf16_onednn(sg_test *t) {
  sg_error error = {0};
  sg_backend *be = sg_backend_new(SG_BACKEND_ONEDNN, 1, &error);
  sg_backend *ref = sg_backend_new(SG_BACKEND_REFERENCE, 1, &error);
  CHECK(t, be != NULL && ref != NULL);
  if (!be || !ref) goto done;
  CHECK_INT(t, sg_backend_set_bf16(be, 0, &error), SG_OK);
  sg_status status = sg_backend_set_bf16(be, 1, &error);
  if (status != SG_OK) {
    CHECK_INT(t, status, SG_ERR_BACKEND);
    CHECK_MSG(t, strstr(error.message, "bf16 instructions") != NULL, "message '%s'", error.message);
    goto done;
  }
  static float x_data[32 * 6 * 6], w_data[16 * 32 * 9], y_data[16 * 6 * 6], want[16 * 6 * 6];
  for (int i = 0; i < 32 * 6 * 6; i++) x_data[i] = (float)((i * 7919) % 201 - 100) / 100.0f;
  for (int i = 0; i < 16 * 32 * 9; i++) w_data[i] = (float)((i * 104729) % 199 - 99) / 400.0f;
  const int64_t w_dims[4] = {16, 32, 3, 3};
  sg_tensor w = sg_tensor_view(w_data, SG_F32, 4, w_dims);
  w.constant_id = 1;
  sg_tensor x = image(x_data, 32, 6, 6, SG_FORMAT_PLAIN);
  sg_tensor y = image(y_data, 16, 6, 6, SG_FORMAT_PLAIN);
  sg_tensor y_ref = image(want, 16, 6, 6, SG_FORMAT_PLAIN);
  status = sg_conv2d(be, &x, &w, NULL, 1, 1, 1, SG_ACT_NONE, &y, &error);
  CHECK_MSG(t, status == SG_OK, "%s", error.message);
  CHECK_INT(t, sg_conv2d(ref, &x, &w, NULL, 1, 1, 1, SG_ACT_NONE, &y_ref, &error), SG_OK);
  double diff = 0, norm = 0;
  for (int i = 0; i < 16 * 6 * 6; i++) {
    diff += (double)(y_data[i] - want[i]) * (y_data[i] - want[i]);
    norm += (double)want[i] * want[i];
  }
  CHECK_MSG(t, diff <= 1e-4 * norm, "bf16 convolution: relative L2 %.3g", sqrt(diff / norm));
done:
  sg_backend_free(be);
  sg_backend_free(ref);
}

void register_ops_args_tests(sg_test_list *list) {
  sg_test_add(list, "ops/bf16_reference", test_bf16_reference);
  sg_test_add(list, "ops/bf16_onednn", test_bf16_onednn);
  sg_test_add(list, "ops/layouts_reference", test_layouts_reference);
  sg_test_add(list, "ops/layouts_onednn", test_layouts_onednn);
  sg_test_add(list, "ops/pointwise_depthwise_reference", test_pointwise_depthwise_reference);
  sg_test_add(list, "ops/pointwise_depthwise_onednn", test_pointwise_depthwise_onednn);
  sg_test_add(list, "ops/sum_taps_reference", test_sum_taps_reference);
  sg_test_add(list, "ops/sum_taps_onednn", test_sum_taps_onednn);
}
