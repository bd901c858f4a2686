# test_ops.py: checks every op of engine/src/ops.h, on both backends, against torch.nn.functional.
"""Each case draws fresh random inputs, computes the reference in float64 with PyTorch, writes a
case file, runs `$SGCHECK op case out` for the oneDNN and the reference backend and compares:
relative L2 = ||c - ref|| / ||ref|| <= 1e-4. The convolution and linear cases also run on the
oneDNN backend in bf16 compute (bf16 inputs and weights, f32 accumulation): relative L2 <= 1e-2;
on a CPU without bf16 instructions sgcheck refuses them (exit 3) and they are counted as skipped,
not passed. Prints one PASS/FAIL/SKIP line per check; exits 1 on any
failure. SEED=n reproduces a run (the seed used is printed); ONLY=text runs the checks whose name
contains text; SG_TEST_QUICK=1 leaves out the large cases (for slow runs, e.g. arm64 under qemu)."""
import json
import math
import os
import random
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "weights",
                                "recipe"))
from sgrecipe import quantize  # noqa: E402  (the engine's int8 weights)

try:
    from sgrecipe.safetensors_io import load_file, save_file
except ImportError:  # the recipe package is not on PYTHONPATH: a tiny local F32 reader/writer

    def save_file(path, tensors, metadata=None):
        header, blobs, offset = {}, [], 0
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        for name, value in tensors.items():
            data = np.ascontiguousarray(np.asarray(value, dtype="<f4"))
            header[name] = {"dtype": "F32", "shape": list(data.shape),
                            "data_offsets": [offset, offset + data.nbytes]}
            blobs.append(data.tobytes())
            offset += data.nbytes
        text = json.dumps(header).encode()
        text += b" " * ((8 - len(text) % 8) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))

    def load_file(path):
        with open(path, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(size))
            raw = f.read()
        out = {}
        for name, info in header.items():
            if name != "__metadata__":
                begin, end = info["data_offsets"]
                out[name] = np.frombuffer(raw[begin:end], dtype="<f4").reshape(info["shape"])
        return out


TOLERANCE = 1e-4
BACKENDS = ("onednn", "reference")
# bf16 compute: inputs and weights rounded to bf16 (relative error up to 2^-9 each), f32 sums
BF16_TOLERANCE = 1e-2
BF16_OPS = ("conv2d", "linear")
ACTIVATIONS = {
    "none": lambda x: x,
    "silu": F.silu,
    "gelu_erf": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "tanh": torch.tanh,
}


def rand(*shape):
    return torch.randn(*shape, dtype=torch.float32)


def d(t):
    """float64 copy for the reference computation."""
    return t.double()


# ---- cases: (name, metadata, inputs, reference output) ----

def product_extras(meta, inputs, y, residual, constant_weights, repeat):
    """Options shared by conv2d and linear: a residual r added before the activation (passed as
    its own tensor, or as y itself with residual="in_y"; in place allows one run only), weights
    passed as non-constant (reordered at every run), repeated runs (packed weights reused)."""
    meta.update(constant_weights=constant_weights, repeat=repeat)
    if residual:
        r = rand(*y.shape)
        inputs["r"] = r
        y = y + d(r)
        meta["residual_in_y"] = int(residual == "in_y")
        if residual == "in_y":
            meta["repeat"] = 1
    return y


def conv2d_case(name, cin, cout, h, w, k, stride, padding, groups, act="none", bias=True,
                residual=None, constant_weights=1, repeat=1):
    x, wt = rand(cin, h, w), rand(cout, cin // groups, k, k) / math.sqrt(cin // groups * k * k)
    inputs = {"x": x, "w": wt}
    b = None
    if bias:
        b = rand(cout)
        inputs["b"] = b
    y = F.conv2d(d(x)[None], d(wt), d(b) if bias else None, stride, padding, 1, groups)[0]
    meta = {"op": "conv2d", "stride": stride, "padding": padding, "groups": groups, "act": act}
    y = product_extras(meta, inputs, y, residual, constant_weights, repeat)
    return name, meta, inputs, ACTIVATIONS[act](y)


def linear_case(name, m, k, n, act="none", bias=True, repeat=1, residual=None,
                constant_weights=1, w_int8=False, w_bf16=False, widen_block_kb=0):
    x, wt = rand(m, k), rand(n, k) / math.sqrt(k)
    inputs = {"x": x, "w": wt}
    b = None
    if bias:
        b = rand(n)
        inputs["b"] = b
    # int8 / bf16: the engine quantizes or rounds w itself; the reference uses the same values
    # (torch rounds to bf16 to nearest even, as sg_f32_to_bf16 does)
    stored = quantize.int8_rows(wt) if w_int8 else wt.bfloat16().float() if w_bf16 else wt
    y = F.linear(d(x), d(stored), d(b) if bias else None)
    meta = {"op": "linear", "act": act}
    if w_int8:
        meta["w_int8"] = 1
    if w_bf16:
        meta["w_bf16"] = 1
    if widen_block_kb:
        meta["widen_block_kb"] = widen_block_kb
    y = product_extras(meta, inputs, y, residual, constant_weights, repeat)
    return name, meta, inputs, ACTIVATIONS[act](y)


def nhwc(case, x_nhwc, y_nhwc):
    """The case run with x and/or y (and the residual) stored channels-last (1) or in blocks of
    8 channels (2) by sgcheck."""
    name, meta, inputs, y = case
    return name, dict(meta, x_nhwc=x_nhwc, y_nhwc=y_nhwc), inputs, y


def weights_memory(case, kind):
    """The case run with w in memory the oneDNN backend may release once it has packed it:
    "handoff" (a mapping of its own, unmapped after packing; linear then also runs on its first
    M-1 rows on a primitive made after that) or "file" (the case file's pages, dropped)."""
    name, meta, inputs, y = case
    return name, dict(meta, weights_memory=kind), inputs, y


def second_input(case, h, w):
    """A conv2d case that also runs its weights on another input x2 [Ci,h,w] (no residual) into
    y2: a primitive made after the first, which may want the weights in another layout."""
    name, meta, inputs, y = case
    x2 = rand(inputs["x"].shape[0], h, w)
    b = d(inputs["b"]) if "b" in inputs else None
    y2 = F.conv2d(d(x2)[None], d(inputs["w"]), b, meta["stride"], meta["padding"], 1,
                  meta["groups"])[0]
    return name, meta, dict(inputs, x2=x2), {"y": y, "y2": ACTIVATIONS[meta["act"]](y2)}


def eltwise_case(name, shape, act, inplace=0):
    x = rand(*shape) * 3
    return name, {"op": "eltwise", "act": act, "inplace": inplace}, {"x": x}, ACTIVATIONS[act](d(x))


def binary_case(name, a_shape, b_shape, op, torch_b_shape=None, inplace=0):
    a, b = rand(*a_shape), rand(*b_shape)
    bb = d(b).reshape(torch_b_shape) if torch_b_shape else d(b)
    y = d(a) + bb if op == "add" else d(a) * bb
    return name, {"op": "binary", "binary": op, "inplace": inplace}, {"a": a, "b": b}, y


def group_norm_case(name, shape, groups, act="none", affine=True, inplace=0, eps=1e-5,
                    offset=0.5):
    x = rand(*shape) * 2 + offset
    inputs = {"x": x}
    gamma = beta = None
    if affine:
        gamma, beta = rand(shape[0]), rand(shape[0])
        inputs.update(gamma=gamma, beta=beta)
    y = F.group_norm(d(x)[None], groups, d(gamma) if affine else None,
                     d(beta) if affine else None, eps)[0]
    meta = {"op": "group_norm", "groups": groups, "eps": eps, "act": act, "inplace": inplace}
    return name, meta, inputs, ACTIVATIONS[act](y)


def layer_norm_case(name, m, c, beta=True, inplace=0, eps=1e-5):
    x, gamma = rand(m, c) + 1, rand(c)
    inputs = {"x": x, "gamma": gamma}
    b = None
    if beta:
        b = rand(c)
        inputs["beta"] = b
    y = F.layer_norm(d(x), (c,), d(gamma), d(b) if beta else None, eps)
    return name, {"op": "layer_norm", "eps": eps, "inplace": inplace}, inputs, y


def rms_norm_case(name, m, c, offset, eps=1e-6, inplace=0):
    x, w = rand(m, c), rand(c) * 0.5
    y = F.rms_norm(d(x), (c,), d(w) + offset, eps)
    meta = {"op": "rms_norm", "eps": eps, "weight_offset": offset, "inplace": inplace}
    return name, meta, {"x": x, "w": w}, y


def softmax_case(name, m, n, inplace=0):
    x = rand(m, n) * 4
    return name, {"op": "softmax", "inplace": inplace}, {"x": x}, F.softmax(d(x), dim=-1)


def pointwise_depthwise_case(name, cin, cmid, h, w, act="relu", bias=True, repeat=1):
    """A 1x1 convolution and its activation, then a depthwise 3x3 one (sg_pointwise_depthwise)."""
    x, wt = rand(cin, h, w), rand(cmid, cin, 1, 1) / math.sqrt(cin)
    dw = rand(cmid, 1, 3, 3) / 3.0
    inputs = {"x": x, "w": wt, "dw": dw}
    b = None
    if bias:
        b = rand(cmid)
        inputs["b"] = b
    mid = ACTIVATIONS[act](F.conv2d(d(x)[None], d(wt), d(b) if bias else None))
    y = F.conv2d(mid, d(dw), None, 1, 1, 1, cmid)[0]
    return name, {"op": "pointwise_depthwise", "act": act, "repeat": repeat}, inputs, y


def sum_taps3x3_case(name, planes, outputs, h, w, bias=True):
    """sg_sum_taps3x3: y[o] = b[o] + the 9 planes z[9o + 3ky + kx] shifted by (ky-1, kx-1), as a
    grouped convolution with one-hot 3x3 kernels in PyTorch."""
    z = rand(planes, h, w)
    inputs = {"z": z}
    b = None
    if bias:
        b = rand(outputs)
        inputs["b"] = b
    one_hot = torch.zeros(outputs, 9, 3, 3, dtype=torch.float64)
    for t in range(9):
        one_hot[:, t, t // 3, t % 3] = 1.0
    y = F.conv2d(d(z[:9 * outputs])[None], one_hot, d(b) if bias else None, 1, 1, 1, outputs)[0]
    return name, {"op": "sum_taps3x3", "outputs": outputs}, inputs, y


def upsample_case(name, c, h, w):
    x = rand(c, h, w)
    y = F.interpolate(d(x)[None], scale_factor=2, mode="nearest")[0]
    return name, {"op": "upsample"}, {"x": x}, y


def concat_case(name, a_shape, b_shape):
    a, b = rand(*a_shape), rand(*b_shape)
    axis = 0 if len(a_shape) == 3 else 1
    return name, {"op": "concat"}, {"a": a, "b": b}, torch.cat([d(a), d(b)], axis)


def transpose_case(name, rows, cols):
    x = rand(rows, cols)
    return name, {"op": "transpose"}, {"x": x}, d(x).t()


def attention_reference(q, k, v, heads, kv_heads, head_dim, scale, softcap, causal, window,
                        key_mask):
    t, s = q.shape[0], k.shape[0]
    qh = q.reshape(t, heads, head_dim).transpose(0, 1)  # [H, T, D]
    kh = k.reshape(s, kv_heads, head_dim).transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
    vh = v.reshape(s, kv_heads, head_dim).transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
    scores = qh @ kh.transpose(1, 2) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    keep = torch.ones(t, s, dtype=torch.bool)
    if key_mask is not None:
        keep &= key_mask[None, :] != 0
    i, j = torch.arange(t)[:, None], torch.arange(s)[None, :]
    if causal:
        keep &= j <= i
        if window > 0:
            keep &= (i - j) < window
    scores = scores.masked_fill(~keep, float("-inf"))
    probs = F.softmax(scores, dim=-1)
    probs = torch.where(keep.any(-1)[None, :, None], probs, torch.zeros_like(probs))
    return (probs @ vh).transpose(0, 1).reshape(t, heads * head_dim)


def attention_case(name, t, s, heads, kv_heads, head_dim, mask=False, causal=0, window=0,
                   softcap=0.0, scale=None, mask_first=False):
    q, k, v = rand(t, heads * head_dim), rand(s, kv_heads * head_dim), rand(s, kv_heads * head_dim)
    scale = 1 / math.sqrt(head_dim) if scale is None else scale
    inputs = {"q": q, "k": k, "v": v}
    key_mask = None
    if mask:
        key_mask = (torch.rand(s) > 0.3).float()
        key_mask[s // 2] = 1
        if mask_first:
            key_mask[0] = 0  # with causal, query 0 sees no key: its output must be zeros
        inputs["key_mask"] = key_mask
    y = attention_reference(d(q), d(k), d(v), heads, kv_heads, head_dim, scale, softcap, causal,
                            window, key_mask)
    meta = {"op": "attention", "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
            "scale": repr(scale), "softcap": softcap, "causal": causal, "window": window}
    return name, meta, inputs, y


def gated_case(name, m, n, act):
    x = rand(m, 2 * n)
    y = d(x)[:, :n] * ACTIVATIONS[act](d(x)[:, n:])
    return name, {"op": "gated", "act": act}, {"x": x}, y


def all_cases():
    cases = [
        conv2d_case("conv2d 3x3", 16, 32, 12, 10, 3, 1, 1, 1, "silu"),
        conv2d_case("conv2d rgb stride2 nobias", 3, 8, 9, 7, 3, 2, 1, 1, bias=False),
        conv2d_case("conv2d depthwise", 24, 24, 11, 9, 3, 1, 1, 24),
        conv2d_case("conv2d depthwise stride2 silu", 32, 32, 10, 14, 3, 2, 1, 32, "silu"),
        conv2d_case("conv2d grouped stride2 gelu", 16, 32, 8, 12, 3, 2, 1, 4, "gelu_erf"),
        conv2d_case("conv2d 1x1", 32, 16, 7, 13, 1, 1, 0, 1, "relu"),
        conv2d_case("conv2d 5x5 tanh", 8, 12, 10, 6, 5, 1, 2, 1, "tanh"),
        conv2d_case("conv2d 3x3 nopad quick_gelu", 6, 10, 9, 11, 3, 1, 0, 1, "quick_gelu"),
        linear_case("linear", 7, 33, 17, "gelu_tanh"),
        linear_case("linear nobias", 64, 128, 96, bias=False, repeat=2),
        linear_case("linear one row silu", 1, 256, 320, "silu"),
        linear_case("linear quick_gelu", 10, 64, 48, "quick_gelu"),
        linear_case("linear int8 weights", 79, 256, 320, "gelu_tanh", w_int8=True),
        linear_case("linear int8 weights repeat", 3, 96, 160, repeat=2, w_int8=True),
        linear_case("linear int8 weights residual", 33, 64, 48, residual="other", w_int8=True),
        # int8 / bf16 weights widened a block of rows at a time (the last block shorter): 64 KiB
        # of 256 f32 columns is 64 rows, 16 KiB of 64 columns also 64 rows
        linear_case("linear int8 weights blocks", 79, 256, 320, "gelu_tanh", w_int8=True,
                    widen_block_kb=64),
        linear_case("linear int8 weights blocks residual", 33, 64, 150, "gelu_erf",
                    residual="other", w_int8=True, widen_block_kb=16),
        linear_case("linear bf16 weights", 3, 96, 160, "silu", w_bf16=True, repeat=2),
        linear_case("linear bf16 weights blocks", 79, 256, 320, "gelu_tanh", w_bf16=True,
                    widen_block_kb=64),
        linear_case("linear bf16 weights blocks residual in y", 33, 64, 150, "silu",
                    residual="in_y", w_bf16=True, widen_block_kb=16),
        linear_case("linear bf16 weights blocks no bias", 5, 64, 150, bias=False, w_bf16=True,
                    widen_block_kb=16, repeat=2),
        # Packed (blocked) weights: made at the first run and reused; or reordered at every run.
        conv2d_case("conv2d 1x1 packed repeat", 64, 96, 12, 10, 1, 1, 0, 1, repeat=3),
        conv2d_case("conv2d 3x3 packed repeat", 48, 64, 9, 11, 3, 1, 1, 1, "silu", repeat=2),
        conv2d_case("conv2d 3x3 not constant", 48, 64, 9, 11, 3, 1, 1, 1, constant_weights=0,
                    repeat=2),
        linear_case("linear packed repeat", 40, 96, 160, "gelu_erf", repeat=3),
        linear_case("linear not constant", 40, 96, 160, constant_weights=0, repeat=2),
        # A block's residual add fused into the product (before the activation).
        conv2d_case("conv2d 1x1 residual", 64, 32, 8, 12, 1, 1, 0, 1, residual="other"),
        conv2d_case("conv2d 1x1 residual in y", 64, 32, 8, 12, 1, 1, 0, 1, residual="in_y"),
        conv2d_case("conv2d 3x3 residual relu", 24, 24, 10, 9, 3, 1, 1, 1, "relu",
                    residual="other", repeat=2),
        conv2d_case("conv2d 3x3 residual in y relu", 24, 24, 10, 9, 3, 1, 1, 1, "relu",
                    residual="in_y"),
        conv2d_case("conv2d depthwise residual", 16, 16, 7, 9, 3, 1, 1, 16, residual="other"),
        linear_case("linear residual", 33, 64, 48, residual="other", repeat=2),
        linear_case("linear residual in y", 33, 64, 48, residual="in_y"),
        linear_case("linear residual in y silu", 5, 32, 24, "silu", bias=False, residual="in_y"),
        # Images stored channels-last (NHWC) in and/or out.
        nhwc(conv2d_case("conv2d 1x1 nhwc", 48, 80, 9, 13, 1, 1, 0, 1, "relu", repeat=2), 1, 1),
        nhwc(conv2d_case("conv2d depthwise nhwc", 40, 40, 12, 7, 3, 1, 1, 40), 1, 1),
        # The channels-last depthwise loop: 16 channels at a time, and the rest one by one.
        nhwc(conv2d_case("conv2d depthwise nhwc stride2 silu no bias", 32, 32, 11, 14, 3, 2, 1, 32,
                         "silu", bias=False), 1, 1),
        nhwc(conv2d_case("conv2d depthwise nhwc 5x5", 21, 21, 9, 6, 5, 1, 2, 21), 1, 1),
        nhwc(conv2d_case("conv2d depthwise nhwc 9x9", 16, 16, 10, 11, 9, 1, 4, 16), 1, 1),
        nhwc(conv2d_case("conv2d 3x3 plain to nhwc", 16, 64, 8, 8, 3, 1, 1, 1, "relu"), 0, 1),
        nhwc(conv2d_case("conv2d 3x3 nhwc to plain", 48, 3, 10, 12, 3, 1, 1, 1), 1, 0),
        nhwc(conv2d_case("conv2d 1x1 nhwc residual relu", 32, 32, 6, 10, 1, 1, 0, 1, "relu",
                         residual="other"), 1, 1),
        nhwc(conv2d_case("conv2d 3x3 nhwc residual in y", 16, 16, 6, 5, 3, 1, 1, 1,
                         residual="in_y"), 1, 1),
        nhwc(conv2d_case("conv2d grouped stride2 nhwc", 16, 32, 9, 12, 3, 2, 1, 4, "silu"), 1, 1),
        nhwc(upsample_case("upsample nhwc", 24, 5, 7), 1, 1),
        # Images stored in blocks of 8 channels (nChw8c; 2), from and to the other layouts.
        nhwc(conv2d_case("conv2d 1x1 blocked relu", 48, 80, 9, 13, 1, 1, 0, 1, "relu", repeat=2),
             2, 2),
        nhwc(conv2d_case("conv2d depthwise blocked", 40, 40, 12, 7, 3, 1, 1, 40), 2, 2),
        nhwc(conv2d_case("conv2d 3x3 plain to blocked", 16, 64, 8, 8, 3, 1, 1, 1, "relu"), 0, 2),
        nhwc(conv2d_case("conv2d 3x3 blocked to plain", 48, 3, 10, 12, 3, 1, 1, 1), 2, 0),
        nhwc(conv2d_case("conv2d 3x3 blocked to nhwc", 24, 16, 7, 9, 3, 1, 1, 1, "silu"), 2, 1),
        nhwc(conv2d_case("conv2d 1x1 blocked residual relu", 32, 32, 6, 10, 1, 1, 0, 1, "relu",
                         residual="other"), 2, 2),
        nhwc(conv2d_case("conv2d 3x3 blocked residual in y", 16, 16, 6, 5, 3, 1, 1, 1,
                         residual="in_y"), 2, 2),
        nhwc(upsample_case("upsample blocked", 24, 5, 7), 2, 2),
        # The tap sum that finishes a 3x3 convolution with few outputs (the decoder's conv_out).
        nhwc(sum_taps3x3_case("sum_taps3x3 blocked", 32, 3, 19, 23), 2, 0),
        sum_taps3x3_case("sum_taps3x3 plain no bias", 27, 3, 8, 5, bias=False),
        nhwc(sum_taps3x3_case("sum_taps3x3 nhwc two outputs", 24, 2, 6, 11), 1, 0),
        nhwc(sum_taps3x3_case("sum_taps3x3 blocked one column", 16, 1, 7, 1), 2, 0),
        sum_taps3x3_case("sum_taps3x3 one row", 9, 1, 1, 6),
        # A 1x1 convolution chained with a depthwise one: fused by oneDNN for blocked images.
        nhwc(pointwise_depthwise_case("pointwise_depthwise blocked", 48, 80, 13, 11, repeat=2), 2,
             2),
        nhwc(pointwise_depthwise_case("pointwise_depthwise blocked no bias silu", 16, 24, 9, 17,
                                      "silu", bias=False), 2, 2),
        nhwc(pointwise_depthwise_case("pointwise_depthwise blocked one row", 8, 16, 1, 7), 2, 2),
        nhwc(pointwise_depthwise_case("pointwise_depthwise nhwc", 32, 40, 10, 9), 1, 1),
        pointwise_depthwise_case("pointwise_depthwise plain", 24, 16, 7, 12, "none"),
        nhwc(pointwise_depthwise_case("pointwise_depthwise plain to blocked", 12, 32, 6, 6), 0,
             2),
        # Plain weights released after packing (the packed copy is then the only one).
        weights_memory(linear_case("linear handoff repeat", 40, 96, 160, "gelu_erf", repeat=2),
                       "handoff"),
        weights_memory(linear_case("linear handoff two rows", 2, 256, 320, "silu"), "handoff"),
        weights_memory(linear_case("linear handoff residual in y", 33, 64, 48, residual="in_y"),
                       "handoff"),
        weights_memory(linear_case("linear handoff residual", 17, 64, 48, residual="other"),
                       "handoff"),
        weights_memory(conv2d_case("conv2d 3x3 handoff repeat", 48, 64, 9, 11, 3, 1, 1, 1,
                                   "silu", repeat=2), "handoff"),
        weights_memory(nhwc(conv2d_case("conv2d depthwise nhwc handoff", 40, 40, 12, 7, 3, 1, 1,
                                        40, repeat=2), 1, 1), "handoff"),
        # 64x64 gets another convolution kernel here (AVX2), with its own weights layout: made
        # from the packed copy, the plain one being gone.
        weights_memory(second_input(conv2d_case("conv2d 3x3 handoff second layout", 48, 64, 9,
                                                11, 3, 1, 1, 1, "relu"), 64, 64), "handoff"),
        weights_memory(conv2d_case("conv2d 1x1 file pages repeat", 64, 96, 12, 10, 1, 1, 0, 1,
                                   repeat=3), "file"),
    ]
    for act in ACTIVATIONS:
        cases.append(eltwise_case(f"eltwise {act}", (3, 5, 7), act))
    cases += [
        eltwise_case("eltwise silu inplace", (4, 33), "silu", inplace=1),
        binary_case("binary add same shape", (4, 5, 6), (4, 5, 6), "add"),
        binary_case("binary mul per channel", (8, 5, 6), (8,), "mul", (8, 1, 1)),
        binary_case("binary add rows", (7, 24), (24,), "add"),
        binary_case("binary mul scalar", (3, 4, 5), (1,), "mul"),
        binary_case("binary add [C,1,1]", (6, 3, 7), (6, 1, 1), "add"),
        binary_case("binary mul inplace", (5, 9), (5, 9), "mul", inplace=1),
        group_norm_case("group_norm silu", (32, 8, 8), 8, "silu"),
        # Channels-last images (the UNet's layout on oneDNN): the engine's own loop there. An
        # offset far from zero checks that the variance does not cancel.
        nhwc(group_norm_case("group_norm nhwc silu", (64, 9, 11), 32, "silu"), 1, 0),
        nhwc(group_norm_case("group_norm nhwc", (48, 16, 16), 4, offset=100.0), 1, 0),
        nhwc(group_norm_case("group_norm nhwc inplace no affine", (24, 5, 6), 3, "silu",
                             affine=False, inplace=1), 1, 0),
        group_norm_case("group_norm 32 groups", (64, 5, 7), 32),
        group_norm_case("group_norm [C,L]", (16, 20), 4, "silu"),
        group_norm_case("group_norm no affine inplace", (12, 6, 6), 3, "silu", affine=False,
                        inplace=1),
        layer_norm_case("layer_norm", 10, 48),
        layer_norm_case("layer_norm no beta", 7, 64, beta=False),
        layer_norm_case("layer_norm inplace", 5, 40, inplace=1),
        rms_norm_case("rms_norm qk", 12, 64, 0.0),
        rms_norm_case("rms_norm gemma", 5, 256, 1.0),
        rms_norm_case("rms_norm inplace", 6, 32, 1.0, inplace=1),
        softmax_case("softmax", 9, 31),
        softmax_case("softmax wide", 4, 1000),
        softmax_case("softmax inplace", 3, 17, inplace=1),
        upsample_case("upsample", 5, 4, 6),
        upsample_case("upsample 1x1", 3, 1, 1),
        concat_case("concat channels", (3, 4, 5), (6, 4, 5)),
        concat_case("concat rows", (7, 10), (7, 3)),
        transpose_case("transpose", 13, 37),
        transpose_case("transpose tokens", 64, 48),
        attention_case("attention mqa self", 20, 20, 4, 1, 16),
        attention_case("attention mqa cross mask", 30, 11, 6, 1, 32, mask=True),
        attention_case("attention mqa 14x64", 64, 77, 14, 1, 64),
        attention_case("attention gqa kv2 mask", 17, 13, 4, 2, 8, mask=True),
        attention_case("attention gqa causal window", 24, 24, 4, 2, 16, causal=1, window=5),
        attention_case("attention causal softcap", 19, 19, 8, 4, 16, causal=1, softcap=5.0),
        attention_case("attention empty query", 10, 10, 2, 1, 8, mask=True, causal=1,
                       mask_first=True),
        attention_case("attention gqa empty query", 9, 9, 4, 2, 8, mask=True, causal=1,
                       mask_first=True),
        attention_case("attention blocks", 1100, 1024, 4, 1, 16),
        attention_case("attention gqa blocks mask", 1000, 1100, 4, 2, 8, mask=True),
        gated_case("gated gelu_erf", 6, 40, "gelu_erf"),
        gated_case("gated gelu_tanh", 3, 64, "gelu_tanh"),
    ]
    return cases


# Left out with SG_TEST_QUICK=1: the cases that dominate the time under emulation.
LARGE_CASES = {"attention blocks", "attention gqa blocks mask"}


# Bad arguments must fail with a message in words (not crash): (name, metadata, inputs, words).
def error_cases():
    return [
        ("error conv2d channels", {"op": "conv2d"}, {"x": rand(16, 5, 5), "w": rand(64, 3, 3, 3)},
         "does not match input channels 16"),
        ("error linear features", {"op": "linear"}, {"x": rand(4, 8), "w": rand(5, 9)},
         "does not match input"),
        # compressed weights, whole and in blocks (8 KiB of 16 f32 columns: 128 rows)
        ("error linear bf16 features", {"op": "linear", "w_bf16": 1},
         {"x": rand(4, 8), "w": rand(5, 9)}, "weight [5, 9] does not match input [4, 8]"),
        ("error linear int8 blocks features", {"op": "linear", "w_int8": 1, "widen_block_kb": 8},
         {"x": rand(4, 15), "w": rand(300, 16)}, "weight [300, 16] does not match input [4, 15]"),
        ("error linear bf16 blocks bias", {"op": "linear", "w_bf16": 1, "widen_block_kb": 8},
         {"x": rand(4, 16), "w": rand(300, 16), "b": rand(299)}, "bias"),
        ("error attention heads", {"op": "attention", "heads": 3, "kv_heads": 2, "head_dim": 4},
         {"q": rand(5, 12), "k": rand(5, 8), "v": rand(5, 8)}, "kv_heads"),
        ("error binary broadcast", {"op": "binary"}, {"a": rand(4, 5), "b": rand(3)},
         "does not broadcast"),
    ]


def run_check(sgcheck, workdir, name, meta, inputs, backend):
    case_path = os.path.join(workdir, "case.safetensors")
    out_path = os.path.join(workdir, "out.safetensors")
    if os.path.exists(out_path):
        os.remove(out_path)
    metadata = {k: str(v) for k, v in meta.items()}
    metadata["backend"] = backend
    save_file(case_path, {k: v.contiguous() for k, v in inputs.items()}, metadata=metadata)
    run = subprocess.run([sgcheck, "op", case_path, out_path], capture_output=True, text=True,
                         timeout=300)
    return run, out_path


def main():
    sgcheck = os.environ.get("SGCHECK", "build/tests/sgcheck")
    seed = int(os.environ.get("SEED", random.randrange(1 << 31)))
    torch.manual_seed(seed)
    print(f"test_ops: seed {seed} (SEED={seed} reproduces), sgcheck {sgcheck}")
    failures, checks, worst, skipped = 0, 0, {}, 0
    only = os.environ.get("ONLY", "")
    quick = os.environ.get("SG_TEST_QUICK", "") not in ("", "0")
    with tempfile.TemporaryDirectory() as workdir:
        for name, meta, inputs, expected in all_cases():
            if only not in name or (quick and name in LARGE_CASES):
                continue
            outputs = expected if isinstance(expected, dict) else {"y": expected}
            backends = BACKENDS + (("onednn-bf16",) if meta["op"] in BF16_OPS else ())
            for backend in backends:
                tolerance = BF16_TOLERANCE if backend == "onednn-bf16" else TOLERANCE
                run, out_path = run_check(sgcheck, workdir, name, meta, inputs, backend)
                label = f"{name} [{backend}]"
                if run.returncode == 3 and backend == "onednn-bf16":
                    skipped += 1
                    if skipped == 1:
                        print(f"SKIP {label}: {run.stderr.strip()} (and the other bf16 checks)")
                    continue
                if run.returncode != 0:
                    checks += 1
                    failures += 1
                    print(f"FAIL {label}: sgcheck exit {run.returncode}: {run.stderr.strip()}")
                    continue
                results = load_file(out_path)
                for output, want in outputs.items():
                    checks += 1
                    want = want.numpy()
                    if output != "y":
                        label = f"{name} {output} [{backend}]"
                    if output not in results or results[output].shape != want.shape:
                        failures += 1
                        print(f"FAIL {label}: no output {output} of shape {want.shape}")
                        continue
                    got = results[output].astype(np.float64)
                    norm = np.linalg.norm(want)
                    rel = np.linalg.norm(got - want) / (norm if norm > 0 else 1.0)
                    key = (meta["op"], backend)
                    worst[key] = max(worst.get(key, 0.0), rel)
                    ok = rel <= tolerance and np.all(np.isfinite(got))
                    failures += not ok
                    print(f"{'PASS' if ok else 'FAIL'} {label} relL2={rel:.3g}")
        for name, meta, inputs, words in error_cases():
            if only not in name:
                continue
            for backend in BACKENDS:
                checks += 1
                run, _ = run_check(sgcheck, workdir, name, meta, inputs, backend)
                ok = run.returncode == 1 and words in run.stderr
                failures += not ok
                print(f"{'PASS' if ok else 'FAIL'} {name} [{backend}]: {run.stderr.strip()}")
    print("worst relL2 per op and backend:")
    for (op, backend), rel in sorted(worst.items()):
        print(f"  {op:11s} {backend:9s} {rel:.3g}")
    why = " (bf16 compute not available on this CPU)" if skipped else ""
    print(f"test_ops: {checks - failures}/{checks} checks passed, {skipped} skipped{why} "
          f"(seed {seed})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
