# sgrecipe: PyTorch/NumPy executable specification of the SnapGen engine (UNet, decoder, sampler, RNG, I/O).
try:
    import torch  # noqa: F401
except ImportError:  # the NumPy-only parts (safetensors_io, rng) work without PyTorch
    pass
else:
    from .torch_check import ensure_right_convolutions

    ensure_right_convolutions()
