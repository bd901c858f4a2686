/* ops_dnnl_check.h: whether oneDNN's convolution kernels compute right on this CPU. */
#ifndef SG_OPS_DNNL_CHECK_H
#define SG_OPS_DNNL_CHECK_H

#include <oneapi/dnnl/dnnl.h>

/* Runs a few small dense convolutions whose channel counts leave tails (f32, and bf16 when
 * with_bf16) on the kernels oneDNN picks and compares them with exact sums: 1 when all are right, 0
 * when one is wrong. A probe that cannot run does not count against the kernels. Takes a few
 * milliseconds. */
int sg_dnnl_check_convolutions(dnnl_engine_t engine, dnnl_stream_t stream, int with_bf16);
/* The same for depthwise convolutions (f32: the engine runs them in f32 only). */
int sg_dnnl_check_depthwise(dnnl_engine_t engine, dnnl_stream_t stream);

#endif
