# torch_check.py: turns PyTorch's oneDNN convolutions off on a CPU where they compute wrong.
"""Debian's PyTorch runs CPU convolutions on the system oneDNN, whose kernels give wrong outputs on
some CPUs (3.7.2 on an AMD EPYC of family 26, Zen 5: a 3x3 convolution of 24 channels on a 32x32
image is off by a relative L2 of 0.4; engine/src/ops_dnnl_check.c has the details). The recipe is
the engine's reference and trains the default model, so it must not be wrong: this module checks
a few such convolutions once, against float64 (which never runs on oneDNN), and where one is wrong
turns oneDNN off for PyTorch in this process (torch.backends.mkldnn), with a warning. PyTorch's
own convolution kernels are then used; they are right, and slower."""
import sys

import torch
import torch.nn.functional as F

# (in channels, out channels, kernel): output channel counts that leave tails in oneDNN's blocks
PROBES = ((24, 24, 3), (40, 40, 3), (32, 40, 1), (48, 80, 1))
PROBE_SIZE = 32  # PyTorch hands smaller images to its own kernels


def convolutions_right():
    """Whether PyTorch's float32 CPU convolutions match float64 on the probes (exact sums)."""
    generator = torch.Generator().manual_seed(0)
    for in_c, out_c, kernel in PROBES:
        # multiples of 1/8 below 1: every sum is exact in float32
        x = torch.randint(-8, 9, (1, in_c, PROBE_SIZE, PROBE_SIZE), generator=generator) / 8.0
        w = torch.randint(-8, 9, (out_c, in_c, kernel, kernel), generator=generator) / 8.0
        want = F.conv2d(x.double(), w.double(), padding=kernel // 2)
        for image in (x, x.contiguous(memory_format=torch.channels_last)):
            got = F.conv2d(image, w, padding=kernel // 2)
            if (got.double() - want).abs().max().item() > 1e-3:
                return False
    return True


def ensure_right_convolutions():
    """Turns oneDNN off for PyTorch in this process when its convolutions are wrong here; returns
    whether it had to."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    if convolutions_right():
        return False
    torch.backends.mkldnn.enabled = False
    print("sgrecipe: PyTorch's oneDNN convolutions are wrong on this CPU (see "
          "sgrecipe/torch_check.py); they are turned off for this process", file=sys.stderr)
    return True
