# test_models.py: the engine's UNet modules, UNet, decoder and sampler against the PyTorch recipe.
"""Each check draws fresh random weights (nonzero biases, norm scales away from 1, so a wrong sign
or a missing term shows) and inputs, writes a case file (format: top of
tests/tools/check_models.c), runs `$SGCHECK KIND case out` on both backends and compares with
sgrecipe: relative L2 = ||engine - recipe|| / ||recipe|| <= 1e-4. Also checks parameter counts
(engine analytic = loaded = module = recipe) and FLOPs (engine formula = torch's FlopCounterMode).
Prints PASS/FAIL lines; exits 1 on a failure.

Usage: SGCHECK=build/tests/sgcheck PYTHONPATH=weights/recipe \
       python3 tests/ref/test_models.py [NAME-SUBSTRING]
"""
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from sgrecipe import decoder as decoder_module
from sgrecipe import export
from sgrecipe import safetensors_io as stio
from sgrecipe import sampler as sampler_module
from sgrecipe import unet as unet_module

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "weights", "configs")
SGCHECK = os.environ.get("SGCHECK") or os.path.join(ROOT, "build", "tests", "sgcheck")
BACKENDS = ("onednn", "reference")
TOLERANCE = 1e-4

torch.set_num_threads(2)
generator = torch.Generator().manual_seed(20241209)
failures = []


def randn(*shape):
    return torch.randn(*shape, generator=generator)


def read_config(name, **changes):
    with open(os.path.join(CONFIGS, name)) as f:
        config = json.load(f)
    config.update(changes)
    return config


def randomize(module):
    """Weights ~ N(0, 1/fan_in), biases ~ N(0, 0.2²), 1-D scales (norms) ~ 1 + N(0, 0.3²)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.2 * randn(*p.shape))
            elif p.dim() == 1:
                p.copy_(1.0 + 0.3 * randn(*p.shape))
            else:
                p.copy_(randn(*p.shape) / math.sqrt(p[0].numel()))
    return module.eval()


def weights_of(module):
    return {k: v.detach().float().contiguous() for k, v in module.state_dict().items()}


def rel_l2(engine, reference):
    engine = np.asarray(engine, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if engine.shape != reference.shape:
        return float("inf")
    return float(np.linalg.norm(engine - reference) / max(np.linalg.norm(reference), 1e-30))


def run_engine(kind, tensors, metadata, workdir, name, with_metadata=False):
    """Writes the case, runs sgcheck; returns the output tensors (and the output's metadata when
    with_metadata), or None (message printed)."""
    case = os.path.join(workdir, f"{name}.case.safetensors")
    out = os.path.join(workdir, f"{name}.out.safetensors")
    if os.path.exists(out):
        os.remove(out)
    stio.save_file(case, tensors, {k: str(v) for k, v in metadata.items()}, dtype="F32")
    result = subprocess.run([SGCHECK, kind, case, out], capture_output=True, text=True,
                            timeout=600)
    if result.returncode != 0:
        print(f"  sgcheck {kind} failed ({result.returncode}): {result.stderr.strip()}")
        return (None, {}) if with_metadata else None
    if with_metadata:
        return stio.load_file(out), stio.load_metadata(out)
    return stio.load_file(out)


def report(name, outputs, references):
    """One PASS/FAIL line comparing each named output with its reference."""
    if outputs is None:
        print(f"FAIL {name} (engine error)")
        failures.append(name)
        return
    errors = {k: rel_l2(outputs.get(k, np.zeros(0)), v) for k, v in references.items()}
    worst = max(errors.values())
    detail = " ".join(f"{k}:relL2={e:.2e}" for k, e in errors.items()) if len(errors) > 1 else \
        f"relL2={worst:.2e}"
    ok = worst <= TOLERANCE
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}", flush=True)
    if not ok:
        failures.append(name)


def check_unet_module(kind, name, config, module_name, workdir, height=8, width=8):
    """One residual block or transformer of a randomly weighted UNet."""
    unet = randomize(unet_module.SnapGenUNet(config))
    module = unet.get_submodule(module_name)
    cfg = unet.config
    metadata = {"config": json.dumps(config), "module": module_name}
    tensors = weights_of(unet)
    with torch.no_grad():
        if kind == "resblock":
            in_channels = module.norm1.num_channels
            out_channels = (module.pw2 if module.separable else module.conv2).out_channels
            x, temb = randn(in_channels, height, width), randn(cfg["time_embed_dim"])
            reference = module(x[None], temb[None])[0]
            tensors.update({"x": x, "temb": temb})
            metadata["out_channels"] = out_channels
        else:
            channels = module.norm.num_channels
            tokens = 7
            x, context = randn(channels, height, width), randn(tokens, cfg["context_dim"])
            mask = torch.ones(tokens)
            mask[5:] = 0.0  # padded tokens
            reference = module(x[None], context[None], mask[None] > 0.5)[0]
            tensors.update({"x": x, "context": context, "context_mask": mask})
    for backend in BACKENDS:
        metadata["backend"] = backend
        outputs = run_engine(kind, tensors, metadata, workdir, f"{name}-{backend}")
        report(f"{name} [{backend}]", outputs, {"out": reference.numpy()})


def check_unet(name, config, workdir, height=16, width=16, with_pooled=True):
    unet = randomize(unet_module.SnapGenUNet(config))
    cfg = unet.config
    tokens = 6
    x, context = randn(cfg["in_channels"], height, width), randn(tokens, cfg["context_dim"])
    mask = torch.tensor([1, 1, 1, 1, 0, 0], dtype=torch.float32)
    timestep = torch.tensor([float(np.float32(1000.0 * torch.rand(1, generator=generator)[0]))])
    pooled = randn(cfg["pooled_dim"]) if cfg["pooled_dim"] > 0 and with_pooled else None
    with torch.no_grad():
        reference = unet(x[None], timestep, context[None], mask[None],
                         None if pooled is None else pooled[None])[0]
    tensors = weights_of(unet)
    tensors.update({"x": x, "timestep": timestep, "context": context, "context_mask": mask})
    if pooled is not None:
        tensors["pooled"] = pooled
    metadata = {"config": json.dumps(config)}
    counts = {}
    for backend in BACKENDS:
        metadata["backend"] = backend
        outputs, counts = run_engine("unet", tensors, metadata, workdir, f"{name}-{backend}",
                                     with_metadata=True)
        report(f"{name} [{backend}]", outputs, {"out": reference.numpy()})
    numel = sum(p.numel() for p in unet.parameters())
    check_counts(f"{name} parameters", counts, numel, unet_module.parameter_count(config))
    check_flops(f"{name} flops", counts.get("flops"), config, height, width, tokens)


def check_counts(name, counts, numel, recipe_count):
    """Engine's analytic count = what it loaded = the module's parameters = the recipe's count."""
    engine = int(counts.get("parameter_count", -1))
    loaded = int(counts.get("loaded_parameter_count", -1))
    ok = engine == loaded == numel == recipe_count
    print(f"{'PASS' if ok else 'FAIL'} {name} engine={engine} loaded={loaded} module={numel} "
          f"recipe={recipe_count}", flush=True)
    if not ok:
        failures.append(name)


def recipe_flops(config, height, width, tokens):
    """2 x multiply-accumulates of one recipe forward (convolutions, linear layers, attention
    matmuls), counted by torch on meta tensors (no memory, no arithmetic)."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        unet = unet_module.SnapGenUNet(config)
        cfg = unet.config
        x = torch.zeros(1, cfg["in_channels"], height, width)
        context = torch.zeros(1, tokens, cfg["context_dim"])
        pooled = torch.zeros(1, cfg["pooled_dim"]) if cfg["pooled_dim"] > 0 else None
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            unet(x, torch.zeros(1), context, None, pooled)
    return counter.get_total_flops()


def check_flops(name, engine_flops, config, height, width, tokens):
    reference = recipe_flops(config, height, width, tokens)
    engine = float(engine_flops) if engine_flops is not None else float("nan")
    ok = abs(engine - reference) <= 1e-9 * reference
    print(f"{'PASS' if ok else 'FAIL'} {name} engine={engine:.6g} recipe={reference:.6g}",
          flush=True)
    if not ok:
        failures.append(name)


def check_full_size(workdir):
    """The full-size config (weights/configs/snapgen-unet-full.json): parameter count and FLOPs
    of one 1024x1024 step (latent 128x128, 77 tokens), without weights."""
    config = read_config("snapgen-unet-full.json")
    metadata = {"config": json.dumps(config), "count_only": 1, "height": 128, "width": 128,
                "tokens": 77}
    _, counts = run_engine("unet", {}, metadata, workdir, "full-size", with_metadata=True)
    recipe_count = unet_module.parameter_count(config)
    engine = int(counts.get("parameter_count", -1))
    ok = engine == recipe_count
    print(f"{'PASS' if ok else 'FAIL'} unet-full-size parameters engine={engine} "
          f"recipe={recipe_count}", flush=True)
    if not ok:
        failures.append("unet-full-size parameters")
    check_flops("unet-full-size flops at 128x128 latent", counts.get("flops"), config, 128, 128,
                77)


def check_decoder(name, config, workdir, height=8, width=8, tile=0, whole_stages=-1):
    """With tile > 0 the engine also decodes in tiles of that many latent pixels, which must match
    the reference and its own untiled decode (the margins cover the receptive field: exact up to
    rounding)."""
    decoder = randomize(decoder_module.TinyDecoder(config))
    latent = 2.5 * randn(decoder.config["latent_channels"], height, width)  # reaches the clamp
    with torch.no_grad():
        reference = decoder(latent[None])[0]
    tensors = weights_of(decoder)
    tensors["latent"] = latent
    metadata = {"config": json.dumps(config), "tile": tile, "whole_stages": whole_stages}
    counts = {}
    for backend in BACKENDS:
        metadata["backend"] = backend
        outputs, counts = run_engine("decoder", tensors, metadata, workdir, f"{name}-{backend}",
                                     with_metadata=True)
        references = {"image": reference.numpy()}
        if tile > 0:
            references["image_tiled"] = reference.numpy()
        report(f"{name} [{backend}]", outputs, references)
        if tile > 0 and outputs is not None:
            untiled, tiled = outputs["image"], outputs.get("image_tiled", np.zeros(0))
            seam = rel_l2(tiled, untiled)
            ok = seam <= 1e-6
            print(f"{'PASS' if ok else 'FAIL'} {name} tiled vs untiled [{backend}] "
                  f"relL2={seam:.2e} max|diff|={np.abs(tiled - untiled).max():.2e}", flush=True)
            if not ok:
                failures.append(f"{name} tiled vs untiled [{backend}]")
    numel = sum(p.numel() for p in decoder.parameters())
    check_counts(f"{name} parameters", counts, numel, decoder_module.parameter_count(config))


def check_sampler(name, workdir, steps, guidance, dtype, seed, height=64, width=64):
    """The whole loop: noise from the seed, UNet steps (with guidance), Euler, decoder."""
    unet_config = read_config("test-unet-tiny.json")
    decoder_config = read_config("test-decoder-tiny.json")
    scheduler = read_config("scheduler.json")
    unet = randomize(unet_module.SnapGenUNet(unet_config))
    decoder = randomize(decoder_module.TinyDecoder(decoder_config))
    folder = os.path.join(workdir, f"{name}-model")
    export.write_model_folder(folder, unet, unet_config, decoder, decoder_config, scheduler,
                              dtype=dtype)
    # The reference runs on the weights as stored (rounded to bf16/f16 when so exported).
    unet, decoder, scheduler = export.load_model_folder(folder)
    cfg = unet.config
    tokens = 5
    context = randn(tokens, cfg["context_dim"])
    mask = torch.tensor([1, 1, 1, 0, 0], dtype=torch.float32)
    pooled = randn(cfg["pooled_dim"])
    tensors = {"context": context, "context_mask": mask, "pooled": pooled}
    negative = {}
    if guidance > 1:
        neg_context, neg_mask, neg_pooled = sampler_module.empty_conditioning(context, pooled)
        negative = {"negative_context": neg_context, "negative_mask": neg_mask,
                    "negative_pooled": neg_pooled}
        tensors.update({"negative_context": neg_context, "negative_context_mask": neg_mask,
                        "negative_pooled": neg_pooled})
    image, latent = sampler_module.generate(unet, decoder, context, pooled, mask, seed, steps,
                                            height, width, scheduler, guidance, **negative)
    metadata = {"model_dir": folder, "seed": seed, "steps": steps, "guidance": guidance,
                "height": height, "width": width}
    for backend in BACKENDS:
        metadata["backend"] = backend
        outputs = run_engine("sampler", tensors, metadata, workdir, f"{name}-{backend}")
        report(f"{name} [{backend}]", outputs,
               {"latent": latent.numpy(), "image": image.numpy()})


def main():
    wanted = sys.argv[1] if len(sys.argv) > 1 else ""
    if not os.path.exists(SGCHECK):
        print(f"FAIL setup: sgcheck not found at {SGCHECK} (set SGCHECK)")
        return 1
    tiny = read_config("test-unet-tiny.json")  # separable, GEGLU, GQA (kv 2), qk norm
    dense = read_config("test-unet-tiny-dense.json")  # dense, GELU, MQA, no qk norm, no pooled
    mqa = read_config("test-unet-tiny.json", num_kv_heads=1)
    checks = [
        ("resblock-separable", lambda d: check_unet_module("resblock", "resblock-separable",
                                                           tiny, "down.0.res.0", d)),
        ("resblock-separable-shortcut",
         lambda d: check_unet_module("resblock", "resblock-separable-shortcut", tiny,
                                     "up.0.res.1", d)),
        ("resblock-dense", lambda d: check_unet_module("resblock", "resblock-dense", dense,
                                                       "down.1.res.0", d)),
        ("transformer-self-cross-mqa-qknorm",
         lambda d: check_unet_module("transformer", "transformer-self-cross-mqa-qknorm", mqa,
                                     "down.1.attn.0", d)),
        ("transformer-self-cross-gqa",
         lambda d: check_unet_module("transformer", "transformer-self-cross-gqa", tiny,
                                     "mid.attn.0", d)),
        ("transformer-cross-only-gelu",
         lambda d: check_unet_module("transformer", "transformer-cross-only-gelu", dense,
                                     "up.1.attn.1", d, height=4, width=4)),
        ("unet-tiny", lambda d: check_unet("unet-tiny", tiny, d)),
        ("unet-tiny-no-pooled", lambda d: check_unet("unet-tiny-no-pooled", tiny, d,
                                                     height=8, width=16, with_pooled=False)),
        ("unet-tiny-dense-gelu", lambda d: check_unet("unet-tiny-dense-gelu", dense, d)),
        ("unet-full-size", check_full_size),
        ("decoder-separable", lambda d: check_decoder(
            "decoder-separable", read_config("test-decoder-tiny.json"), d)),
        ("decoder-dense", lambda d: check_decoder(
            "decoder-dense", read_config("test-decoder-tiny-dense.json"), d, 6, 10)),
        # Tiles smaller than the margins and uneven ones (5x4 and 4x3 tiles), from the latent on
        # or after stages run on the whole image.
        ("decoder-separable-tiled", lambda d: check_decoder(
            "decoder-separable-tiled", read_config("test-decoder-tiny.json"), d, 40, 28, tile=8,
            whole_stages=0)),
        ("decoder-separable-tiled-auto", lambda d: check_decoder(
            "decoder-separable-tiled-auto", read_config("test-decoder-tiny.json"), d, 40, 28,
            tile=8)),
        ("decoder-separable-tiled-from-stage-1", lambda d: check_decoder(
            "decoder-separable-tiled-from-stage-1", read_config("test-decoder-tiny.json"), d, 40,
            28, tile=8, whole_stages=1)),
        ("decoder-separable-tiled-from-stage-2", lambda d: check_decoder(
            "decoder-separable-tiled-from-stage-2", read_config("test-decoder-tiny.json"), d, 40,
            28, tile=8, whole_stages=2)),
        ("decoder-dense-tiled", lambda d: check_decoder(
            "decoder-dense-tiled", read_config("test-decoder-tiny-dense.json"), d, 26, 20,
            tile=7, whole_stages=0)),
        ("sampler-4-steps", lambda d: check_sampler("sampler-4-steps", d, 4, 1.0, "f32", 42)),
        ("sampler-3-steps-guidance-bf16",
         lambda d: check_sampler("sampler-3-steps-guidance-bf16", d, 3, 3.0, "bf16",
                                 2**40 + 7, height=32, width=64)),
    ]
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="test-models-") as workdir:
        for name, check in checks:
            if wanted in name:
                check(workdir)
    print(f"{len(failures)} failed, {time.time() - start:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
