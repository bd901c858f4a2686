/* dnnl_stub.c: stands in for ops_dnnl.c in the fuzz builds, which use only the reference backend
 * and so need neither oneDNN nor OpenMP; asking for the oneDNN backend fails in words. */
#include "error.h"
#include "ops_internal.h"

static sg_status no_dnnl(sg_error *error) {
  return sg_fail(error, SG_ERR_BACKEND, "oneDNN is not part of the fuzz builds");
}

sg_dnnl *sg_dnnl_new(sg_error *error) {
  no_dnnl(error);
  return NULL;
}

void sg_dnnl_free(sg_dnnl *dnnl) {
  (void)dnnl;
}

int sg_dnnl_prefers_channels_last(sg_dnnl *dnnl) {
  (void)dnnl;
  return 0;
}

int sg_dnnl_prefers_blocked8(sg_dnnl *dnnl) {
  (void)dnnl;
  return 0;
}

int sg_dnnl_convolutions_right(sg_dnnl *dnnl) {
  (void)dnnl;
  return 1;
}

sg_status sg_dnnl_set_bf16(sg_dnnl *dnnl, int on, sg_error *error) {
  (void)dnnl, (void)on;
  return no_dnnl(error);
}

int sg_dnnl_reads_bf16_weights(const sg_dnnl *dnnl) {
  (void)dnnl;
  return 0;
}

size_t sg_dnnl_packed_weight_bytes(const sg_dnnl *dnnl) {
  (void)dnnl;
  return 0;
}

size_t sg_dnnl_released_weight_bytes(const sg_dnnl *dnnl) {
  (void)dnnl;
  return 0;
}

void sg_dnnl_drop_packed_weights(sg_dnnl *dnnl) {
  (void)dnnl;
}

sg_status sg_dnnl_conv2d(sg_dnnl *dnnl, const sg_tensor *x, const sg_tensor *w, const sg_tensor *b,
                         int stride, int padding, int groups, sg_activation act,
                         const sg_tensor *residual, sg_tensor *y, sg_error *error) {
  (void)dnnl, (void)x, (void)w, (void)b, (void)stride, (void)padding, (void)groups, (void)act;
  (void)residual, (void)y;
  return no_dnnl(error);
}

sg_status sg_dnnl_pointwise_depthwise(sg_dnnl *dnnl, const sg_tensor *x, const sg_tensor *w,
                                      const sg_tensor *b, sg_activation act, const sg_tensor *dw,
                                      sg_tensor *mid, sg_tensor *y, sg_error *error) {
  (void)dnnl, (void)x, (void)w, (void)b, (void)act, (void)dw, (void)mid, (void)y;
  return no_dnnl(error);
}

sg_status sg_dnnl_linear(sg_dnnl *dnnl, const sg_tensor *x, const sg_tensor *w, const sg_tensor *b,
                         sg_activation act, const sg_tensor *residual, sg_tensor *y,
                         sg_error *error) {
  (void)dnnl, (void)x, (void)w, (void)b, (void)act, (void)residual, (void)y;
  return no_dnnl(error);
}

sg_status sg_dnnl_eltwise(sg_dnnl *dnnl, sg_activation act, const sg_tensor *x, sg_tensor *y,
                          sg_error *error) {
  (void)dnnl, (void)act, (void)x, (void)y;
  return no_dnnl(error);
}

sg_status sg_dnnl_binary(sg_dnnl *dnnl, sg_binary_op op, const sg_tensor *a, const sg_tensor *b,
                         sg_tensor *y, sg_error *error) {
  (void)dnnl, (void)op, (void)a, (void)b, (void)y;
  return no_dnnl(error);
}

sg_status sg_dnnl_group_norm(sg_dnnl *dnnl, const sg_tensor *x, int groups, const sg_tensor *gamma,
                             const sg_tensor *beta, float eps, sg_activation act, sg_tensor *y,
                             sg_error *error) {
  (void)dnnl, (void)x, (void)groups, (void)gamma, (void)beta, (void)eps, (void)act, (void)y;
  return no_dnnl(error);
}

sg_status sg_dnnl_layer_norm(sg_dnnl *dnnl, const sg_tensor *x, const sg_tensor *gamma,
                             const sg_tensor *beta, float eps, sg_tensor *y, sg_error *error) {
  (void)dnnl, (void)x, (void)gamma, (void)beta, (void)eps, (void)y;
  return no_dnnl(error);
}

sg_status sg_dnnl_rms_norm(sg_dnnl *dnnl, const sg_tensor *x, const sg_tensor *w, float eps,
                           float weight_offset, sg_tensor *y, sg_error *error) {
  (void)dnnl, (void)x, (void)w, (void)eps, (void)weight_offset, (void)y;
  return no_dnnl(error);
}

sg_status sg_dnnl_softmax(sg_dnnl *dnnl, const sg_tensor *x, sg_tensor *y, sg_error *error) {
  (void)dnnl, (void)x, (void)y;
  return no_dnnl(error);
}

sg_status sg_dnnl_upsample_nearest2x(sg_dnnl *dnnl, const sg_tensor *x, sg_tensor *y,
                                     sg_error *error) {
  (void)dnnl, (void)x, (void)y;
  return no_dnnl(error);
}

sg_status sg_dnnl_concat(sg_dnnl *dnnl, const sg_tensor *a, const sg_tensor *b, sg_tensor *y,
                         sg_error *error) {
  (void)dnnl, (void)a, (void)b, (void)y;
  return no_dnnl(error);
}

sg_status sg_dnnl_transpose(sg_dnnl *dnnl, const sg_tensor *x, sg_tensor *y, sg_error *error) {
  (void)dnnl, (void)x, (void)y;
  return no_dnnl(error);
}

sg_status sg_dnnl_attention(sg_dnnl *dnnl, const sg_tensor *q, const sg_tensor *k,
                            const sg_tensor *v, const sg_attention_params *params, sg_tensor *y,
                            sg_error *error) {
  (void)dnnl, (void)q, (void)k, (void)v, (void)params, (void)y;
  return no_dnnl(error);
}

sg_status sg_dnnl_gated(sg_dnnl *dnnl, const sg_tensor *x, sg_activation act, sg_tensor *y,
                        sg_error *error) {
  (void)dnnl, (void)x, (void)act, (void)y;
  return no_dnnl(error);
}
