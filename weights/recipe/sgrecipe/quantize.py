# quantize.py: the engine's int8 weight storage (sg_quantize_rows_int8), as the values it computes.
"""Reference of `snapgen --int8`: symmetric int8 per output row, scale = max|row| / 127 (1 for an
all-zero row), codes = round half to even of w / scale clamped to [-127, 127], all in float32 as
engine/src/tensor.c does; the engine then computes with codes × scale."""
import numpy as np
import torch


def int8_rows(w):
    """The f32 values (codes × scale) the engine computes with for a weight matrix [N, K]."""
    w = w.detach().cpu().numpy().astype(np.float32)
    largest = np.abs(w).max(axis=1, keepdims=True)
    scale = np.where(largest > 0, largest / np.float32(127), np.float32(1)).astype(np.float32)
    codes = np.clip(np.rint(w / scale), -127, 127).astype(np.float32)
    return torch.from_numpy(codes * scale)


@torch.no_grad()
def int8_linears(module, keep=lambda name: True):
    """Replaces, in place, every 2-D parameter whose name `keep` accepts by int8_rows of it (the
    matrices the engine stores as int8: its linear layers' weights). Returns the module."""
    for name, param in module.named_parameters():
        if param.dim() == 2 and keep(name):
            param.copy_(int8_rows(param).to(param.dtype))
    return module
