#!/usr/bin/env python3
# make_random_model.py: makes a model folder with random (but well-scaled) weights, for tests.
"""Random SnapGen model folder for engine tests.

Weights: PyTorch default init, then norm weights 1 ± 0.1 and biases ± 0.1 random (so missing biases
show up), residual-branch outputs halved, and conv_out rescaled on a probe input so the UNet's output
has std ≈ 1 and the decoder's output mean ≈ 0.5, std ≈ 0.25 per channel.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sgrecipe import export  # noqa: E402
from sgrecipe.decoder import TinyDecoder  # noqa: E402
from sgrecipe.safetensors_io import save_file  # noqa: E402
from sgrecipe.sampler import DEFAULT_SCHEDULER  # noqa: E402
from sgrecipe.unet import SnapGenUNet  # noqa: E402

RESIDUAL_OUTPUTS = ("pw2", "conv2", "to_out", "ff.proj_out", "proj_out", "conv3")


@torch.no_grad()
def randomize(module, generator):
    """Norm weights 1 ± 0.1, all biases and norm shifts ± 0.1, residual branch outputs halved."""
    for name, param in module.named_parameters():
        leaf = name.rsplit(".", 2)
        is_norm = any(part.startswith("norm") for part in leaf[:-1])
        if is_norm and name.endswith("weight"):
            param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
        elif name.endswith("bias"):
            param.copy_(0.2 * torch.rand(param.shape, generator=generator) - 0.1)
        elif name.endswith("weight") and any(f".{r}." in f".{name}" for r in RESIDUAL_OUTPUTS):
            param.mul_(0.5)


def random_conditioning(cfg, tokens, generator):
    """context [S, D] ~ N(0,1), pooled [P] ~ N(0,1), mask [S] with the last quarter masked."""
    context = torch.randn(tokens, cfg["context_dim"], generator=generator)
    mask = torch.ones(tokens)
    mask[tokens - tokens // 4:] = 0.0
    cond = {"context": context, "context_mask": mask}
    if cfg["pooled_dim"] > 0:
        cond["pooled"] = torch.randn(cfg["pooled_dim"], generator=generator)
    return cond


@torch.no_grad()
def calibrate_unet(unet, cond, generator):
    """Scales conv_out so v has std ≈ 1 on a small probe latent."""
    cfg = unet.config
    side = 4 << (len(cfg["block_channels"]) - 1)
    x = torch.randn(1, cfg["in_channels"], side, side, generator=generator)
    pooled = cond.get("pooled")
    v = unet(x, torch.tensor([500.0]), cond["context"][None], cond["context_mask"][None],
             None if pooled is None else pooled[None])
    scale = 1.0 / max(float(v.std()), 1e-6)
    unet.conv_out.weight.mul_(scale)
    unet.conv_out.bias.mul_(scale)


@torch.no_grad()
def calibrate_decoder(decoder, generator):
    """Scales conv_out so the image has per-channel mean ≈ 0.5 and std ≈ 0.25."""
    x = torch.randn(1, decoder.config["latent_channels"], 8, 8, generator=generator)
    image = decoder(x)
    bias = decoder.conv_out.bias
    scale = 0.25 / max(float((image - bias[None, :, None, None]).std()), 1e-6)
    decoder.conv_out.weight.mul_(scale)
    mean = (image - bias[None, :, None, None]).mean(dim=(0, 2, 3)) * scale
    bias.copy_(0.5 - mean + 0.05 * (torch.rand(bias.shape, generator=generator) - 0.5))


def make_random_model(unet_cfg, dec_cfg, seed):
    """(unet, decoder) with random weights, deterministic for a seed."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    unet = SnapGenUNet(unet_cfg).eval()
    decoder = TinyDecoder(dec_cfg).eval()
    randomize(unet, generator)
    randomize(decoder, generator)
    cond = random_conditioning(unet.config, 16, generator)
    calibrate_unet(unet, cond, generator)
    calibrate_decoder(decoder, generator)
    return unet, decoder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unet-config", required=True)
    parser.add_argument("--decoder-config", required=True)
    parser.add_argument("--scheduler-config", help="default: the 4-step schedule")
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32")
    parser.add_argument("--conditioning", help="also write a random conditioning file here")
    parser.add_argument("--context-tokens", type=int, default=16)
    args = parser.parse_args()

    unet_cfg = export.read_json(args.unet_config)
    dec_cfg = export.read_json(args.decoder_config)
    sched_cfg = export.read_json(args.scheduler_config) if args.scheduler_config \
        else dict(DEFAULT_SCHEDULER)
    unet, decoder = make_random_model(unet_cfg, dec_cfg, args.seed)

    extra = {}
    if args.conditioning:
        generator = torch.Generator().manual_seed(args.seed + 1)
        cond = random_conditioning(unet.config, args.context_tokens, generator)
        folder = os.path.dirname(os.path.abspath(args.conditioning))
        os.makedirs(folder, exist_ok=True)
        save_file(args.conditioning, cond)
        relative = os.path.relpath(os.path.abspath(args.conditioning), os.path.abspath(args.out))
        if not relative.startswith(".."):
            extra["conditioning"] = relative  # the model's fixed conditioning
    export.write_model_folder(args.out, unet, unet_cfg, decoder, dec_cfg, sched_cfg, extra,
                              args.dtype)
    count = sum(p.numel() for p in unet.parameters())
    print(json.dumps({"out": args.out, "unet_parameters": count,
                      "decoder_parameters": sum(p.numel() for p in decoder.parameters())}))


if __name__ == "__main__":
    main()
