/* ops.h: the math the models use, with two implementations chosen at run time: oneDNN
 * (primitives created once per shape and cached) and plain C (the reference the tests trust). */
#ifndef SG_OPS_H
#define SG_OPS_H

#include "tensor.h"

/* All activations are f32, contiguous, in the layouts tensor.h describes. Weights are f32 tensors
 * in PyTorch's layouts. Images [C,H,W] may be stored channels-last (SG_FORMAT_NHWC) or in blocks
 * of 8 channels (SG_FORMAT_BLOCKED8) for the convolutions (x, y and residual each in any of them;
 * residual as y) and upsampling (y as x): the layouts oneDNN's CPU convolutions work in, so
 * chains of convolutions need no reorders between them. Group norm also takes channels-last
 * images. The other ops take the plain layout. Output tensors are allocated by the caller with
 * the right shape.
 * Every function returns SG_OK or fills error. In-place (y == x) is allowed for eltwise,
 * binary (y == a), group/layer/rms norm; not for conv, linear, attention. */
typedef struct sg_backend sg_backend;

sg_backend *sg_backend_new(sg_backend_kind kind, int threads, sg_error *error);
void sg_backend_free(sg_backend *backend);
sg_backend_kind sg_backend_kind_of(const sg_backend *backend);
const char *sg_backend_name(const sg_backend *backend);
/* Whether images are best kept channels-last (SG_FORMAT_NHWC) between this backend's ops: true
 * where its convolutions work in that layout, so that they need no reorder. */
int sg_backend_prefers_channels_last(sg_backend *backend);
/* Whether this backend's convolutions run on its own fast kernels: false where oneDNN's failed
 * the check of ops_dnnl_check.c on this CPU (they then run on their fallback, which is slower). */
int sg_backend_convolutions_checked(sg_backend *backend);
/* Whether chains of convolutions alone (no norms between them, as in the decoder) run faster with
 * their images in blocks of 8 channels (SG_FORMAT_BLOCKED8): true on the oneDNN backend where its
 * best instructions are AVX2 (its kernels for that layout beat its channels-last ones there). */
int sg_backend_prefers_blocked8(sg_backend *backend);
/* bf16 compute (off by default): dense convolutions and the linear layers of model weights
 * (f32 tensors with a constant_id) read bf16 copies of their input and weights and accumulate and
 * write f32 (an op without a fast bf16 kernel for its shape stays f32); everything else stays f32.
 * Refused with the reason: SG_ERR_BACKEND on CPUs without bf16 instructions,
 * SG_ERR_INVALID_ARGUMENT on the reference backend. */
sg_status sg_backend_set_bf16(sg_backend *backend, int on, sg_error *error);
/* The oneDNN backend keeps model weights (tensors with a constant_id) reordered into the layouts
 * its primitives prefer, made at their first use, and then may give back the memory of the plain
 * values as their sg_weight_memory allows. Bytes held by those copies (0 for the
 * reference backend), and dropping them all (e.g. after freeing the weights they came from while
 * the backend lives on). */
size_t sg_backend_packed_weight_bytes(const sg_backend *backend);
void sg_backend_drop_packed_weights(sg_backend *backend);
/* Bytes of plain weights the backend released after packing them (tensor.h, SG_WEIGHT_HANDOFF;
 * dropping the packed copies loses those weights, so drop only after freeing them). */
size_t sg_backend_released_weight_bytes(const sg_backend *backend);

typedef enum {
  SG_ACT_NONE = 0,
  SG_ACT_SILU,
  SG_ACT_GELU_ERF,
  SG_ACT_GELU_TANH,
  SG_ACT_QUICK_GELU, /* x * sigmoid(1.702 x), CLIP */
  SG_ACT_RELU,
  SG_ACT_TANH
} sg_activation;

/* y[Co,Ho,Wo] = act(conv2d(x[Ci,H,W], w[Co, Ci/groups, kh, kw]) + b[Co]); square stride/padding.
 * b may be NULL. Depthwise: groups == Ci == Co. */
sg_status sg_conv2d(sg_backend *be, const sg_tensor *x, const sg_tensor *w, const sg_tensor *b,
                    int stride, int padding, int groups, sg_activation act, sg_tensor *y,
                    sg_error *error);

/* y = conv2d(act(conv2d(x, w) + b), dw): a 1x1 convolution (w [Cm,Ci,1,1], b [Cm] or NULL)
 * and its activation, then a depthwise 3x3 one (dw [Cm,1,3,3], stride 1, padding 1, no bias), as
 * chains of separable convolutions have them. The oneDNN backend runs both as one primitive
 * where that is faster (blocked images in and out, sg_backend_prefers_blocked8: the
 * intermediate stays in cache); otherwise the intermediate goes through mid ([Cm,H,W], any image
 * layout), which the op may overwrite either way. y [Cm,H,W] may not share memory with x or mid. */
sg_status sg_pointwise_depthwise(sg_backend *be, const sg_tensor *x, const sg_tensor *w,
                                 const sg_tensor *b, sg_activation act, const sg_tensor *dw,
                                 sg_tensor *mid, sg_tensor *y, sg_error *error);

/* The second half of a 3x3 convolution (stride 1, padding 1) with few outputs, computed as a 1x1
 * convolution into 9 planes per output (oneDNN runs that near its peak; its 3x3 kernels for 3
 * outputs do not): y[o] = b[o] + the sum over taps t = 3·ky + kx of plane z[9·o + t] shifted by
 * (ky − 1, kx − 1), zero outside. z [≥ 9·Co, H, W] in any image layout (planes past 9·Co are
 * ignored), b [Co] or NULL, y [Co, H, W] plain. */
sg_status sg_sum_taps3x3(sg_backend *be, const sg_tensor *z, const sg_tensor *b, sg_tensor *y,
                         sg_error *error);

/* y[M,N] = act(x[M,K] · w[N,K]ᵀ + b[N]); b may be NULL. (PyTorch nn.Linear.) w may be f32, or
 * SG_I8 / SG_BF16 (tensor.h): then it is widened to f32 a few MiB of rows at a time, each block's
 * product computed while the block is in cache. */
sg_status sg_linear(sg_backend *be, const sg_tensor *x, const sg_tensor *w, const sg_tensor *b,
                    sg_activation act, sg_tensor *y, sg_error *error);

/* The same with a block's residual add fused in: y = act(conv2d(x, w) + b + residual), and
 * y = act(x · wᵀ + b + residual). residual has y's shape and may be y itself (then the product is
 * added into y); NULL: none. */
sg_status sg_conv2d_residual(sg_backend *be, const sg_tensor *x, const sg_tensor *w,
                             const sg_tensor *b, int stride, int padding, int groups,
                             sg_activation act, const sg_tensor *residual, sg_tensor *y,
                             sg_error *error);
sg_status sg_linear_residual(sg_backend *be, const sg_tensor *x, const sg_tensor *w,
                             const sg_tensor *b, sg_activation act, const sg_tensor *residual,
                             sg_tensor *y, sg_error *error);

/* y = act(x) elementwise, any shape. */
sg_status sg_eltwise(sg_backend *be, sg_activation act, const sg_tensor *x, sg_tensor *y,
                     sg_error *error);

typedef enum { SG_BINARY_ADD = 0, SG_BINARY_MUL } sg_binary_op;
/* y = a op b. b has the shape of a, or is broadcast: b [C] over a [C,H,W] (per channel) or over
 * a [M,C] (per row element, i.e. along the last dim); or b has a single element. */
sg_status sg_binary(sg_backend *be, sg_binary_op op, const sg_tensor *a, const sg_tensor *b,
                    sg_tensor *y, sg_error *error);

/* Group norm over x [C,H,W] (or [C,L]); gamma/beta [C]; then act (SILU fused, or NONE). An image
 * may be stored channels-last; y then must be too. */
sg_status sg_group_norm(sg_backend *be, const sg_tensor *x, int groups, const sg_tensor *gamma,
                        const sg_tensor *beta, float eps, sg_activation act, sg_tensor *y,
                        sg_error *error);

/* Layer norm over the last dim of x [M,C]; gamma/beta [C] (beta may be NULL). */
sg_status sg_layer_norm(sg_backend *be, const sg_tensor *x, const sg_tensor *gamma,
                        const sg_tensor *beta, float eps, sg_tensor *y, sg_error *error);

/* RMS norm over the last dim of x [M,C]: y = x / sqrt(mean(x²) + eps) * (w + weight_offset);
 * weight_offset is 0 (QK-norm) or 1 (Gemma's (1+w)). x may be viewed as [M*heads, head_dim]. */
sg_status sg_rms_norm(sg_backend *be, const sg_tensor *x, const sg_tensor *w, float eps,
                      float weight_offset, sg_tensor *y, sg_error *error);

/* Softmax over the last dim of x [M,N]. */
sg_status sg_softmax(sg_backend *be, const sg_tensor *x, sg_tensor *y, sg_error *error);

/* Nearest-neighbour ×2 upsampling: x [C,H,W] -> y [C,2H,2W]. */
sg_status sg_upsample_nearest2x(sg_backend *be, const sg_tensor *x, sg_tensor *y,
                                sg_error *error);

/* Channel concatenation: a [Ca,H,W], b [Cb,H,W] -> y [Ca+Cb,H,W] (also [M,Ka],[M,Kb] on the last
 * dim for 2-D tensors). */
sg_status sg_concat(sg_backend *be, const sg_tensor *a, const sg_tensor *b, sg_tensor *y,
                    sg_error *error);

/* y[B,A] = x[A,B]ᵀ: turns an image [C,H*W] into tokens [H*W,C] and back. */
sg_status sg_transpose(sg_backend *be, const sg_tensor *x, sg_tensor *y, sg_error *error);

/* Scaled dot-product attention with grouped/multi-query K/V.
 * q [T, heads*head_dim], k and v [S, kv_heads*head_dim], heads % kv_heads == 0; query head h uses
 * kv head h / (heads/kv_heads). scores = q·kᵀ * scale; if softcap > 0: scores = softcap *
 * tanh(scores/softcap); key_mask [S] (may be NULL): keys with mask 0 are excluded; causal: key j is
 * excluded for query i when j > i (with window > 0 also when i - j >= window). y [T, heads*head_dim].
 * A query with every key excluded gets zeros. */
typedef struct {
  int heads, kv_heads, head_dim;
  float scale;
  float softcap;
  int causal;
  int window;
  const float *key_mask;
} sg_attention_params;

sg_status sg_attention(sg_backend *be, const sg_tensor *q, const sg_tensor *k, const sg_tensor *v,
                       const sg_attention_params *params, sg_tensor *y, sg_error *error);

/* GEGLU: x [M, 2N] split along the last dim into h = x[:, :N] and g = x[:, N:];
 * y [M,N] = h * act(g) (act GELU_ERF for the UNet, GELU_TANH for Gemma's MLP). */
sg_status sg_gated(sg_backend *be, const sg_tensor *x, sg_activation act, sg_tensor *y,
                   sg_error *error);

/* The reference implementation of one activation on one value (shared by both backends). */
float sg_activation_apply(sg_activation act, float x);

#endif
