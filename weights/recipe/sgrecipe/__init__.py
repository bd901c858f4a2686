# sgrecipe: PyTorch/NumPy executable specification of the SnapGen engine (UNet, decoder, sampler, RNG, I/O).
