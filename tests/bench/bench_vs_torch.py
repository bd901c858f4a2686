#!/usr/bin/env python3
# bench_vs_torch.py: times the engine (`snapgen bench`) and the PyTorch recipe on the same weights.
"""Engine vs PyTorch, per component, on one random model folder (a benchmark, not a test).

Makes (or reuses) a model folder with random weights from the UNet and decoder configs
(weights/recipe/make_random_model.py), times the recipe's modules on it in PyTorch's best
configuration on this CPU (weights and activations in the precision, channels-last, inference
mode, attention as the recipe's plain matmul + softmax, --threads threads), in f32 and bf16, then
runs `snapgen bench --model FOLDER` on the same folder and prints per component the median times and
the ratio PyTorch / engine (> 1: the engine is faster). Run inside the build environment:

    python3 tests/bench/bench_vs_torch.py --snapgen build/engine/snapgen --size 512
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "weights", "recipe"))
from sgrecipe import clip, export, gemma2  # noqa: E402
from sgrecipe.safetensors_io import load_file  # noqa: E402

# Importing sgrecipe turns PyTorch's oneDNN convolutions off where they compute wrong on this CPU
# (sgrecipe/torch_check.py). They stay off here: on that CPU (AMD Zen 5) they are not only wrong,
# PyTorch's UNet dies inside oneDNN (SIGFPE while it sets up a convolution), so its own
# convolution kernels are the best configuration that runs.
# The text encoders have no convolutions: they run with oneDNN on (its matrix products are right
# there; off, PyTorch's bf16 products are its slow generic ones: CLIP-L 0.36 s against the engine's
# 0.06 s, measured in session 12).
MKLDNN_OFF_FOR_CONVOLUTIONS = not torch.backends.mkldnn.enabled and \
    torch.backends.mkldnn.is_available()
if MKLDNN_OFF_FOR_CONVOLUTIONS:
    print("PyTorch: oneDNN off for the UNet and decoder (its convolutions are wrong on this CPU), "
          "on for the text encoders")


def make_folder(args):
    """The random model folder: made once per (configs, seed), reused after."""
    done = os.path.join(args.model, "model_index.json")
    if os.path.exists(done):
        print(f"model folder: {args.model} (reused)")
    else:
        print(f"model folder: making {args.model} (random weights, seed {args.seed})", flush=True)
        subprocess.run([sys.executable,
                        os.path.join(ROOT, "weights", "recipe", "make_random_model.py"),
                        "--unet-config", args.unet_config, "--decoder-config", args.decoder_config,
                        "--out", args.model, "--seed", str(args.seed)], check=True)
    # the UNet's bf16 copy that the engine reads in bf16 mode, as a generation would
    unet = os.path.join(args.model, "unet")
    if not os.path.exists(os.path.join(unet, export.BF16_VARIANT_FILE)):
        print(f"model folder: adding {export.BF16_VARIANT_FILE}", flush=True)
        export.write_bf16_variant(unet)


def median_time(fn, repeat):
    """Median wall seconds of repeat calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def time_torch(args, dtype):
    """{component: median seconds} for the recipe's UNet step and decoder in dtype."""
    unet, decoder, _ = export.load_model_folder(args.model)
    unet = unet.to(dtype=dtype, memory_format=torch.channels_last)
    decoder = decoder.to(dtype=dtype, memory_format=torch.channels_last)
    scale = 2 ** (len(decoder.config["channels"]) - 1)
    side = args.size // scale
    cfg = unet.config
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg["in_channels"], side, side, generator=generator)
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    context = torch.randn(1, args.context_tokens, cfg["context_dim"], generator=generator)
    context = context.to(dtype)
    mask = torch.ones(1, args.context_tokens)
    pooled = None
    if cfg["pooled_dim"] > 0:
        pooled = torch.randn(1, cfg["pooled_dim"], generator=generator).to(dtype)
    timestep = torch.tensor([500.0])
    times = {"unet step": median_time(lambda: unet(x, timestep, context, mask, pooled),
                                      args.repeat)}
    latent = unet(x, timestep, context, mask, pooled).contiguous(memory_format=torch.channels_last)
    times["decoder"] = median_time(lambda: decoder(latent), args.repeat)
    return times


TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def load_text_encoder(folder, dtype):
    """(kind, module in dtype) of a text encoder folder. The file is read with its bf16 kept as
    bits (sgrecipe.safetensors_io) and each tensor goes to dtype and is dropped from the file's
    dict at once, so f32 Gemma-2-2b is never held in f32 twice."""
    config = export.read_json(os.path.join(folder, "config.json"))
    stored = load_file(os.path.join(folder, "model.safetensors"), keep_dtype=True)
    if config.get("model_type") == "gemma2" or "Gemma2" in str(config.get("architectures")):
        kind = "gemma2"
        with torch.device("meta"):
            model = gemma2.Gemma2Model(config)
    else:
        kind = "clip"
        with torch.device("meta"):
            model = clip.make_model(config)
    state = {}
    for name in list(stored):
        array = stored.pop(name)
        if array.dtype == np.uint16:  # BF16 bits
            tensor = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        else:
            tensor = torch.from_numpy(np.ascontiguousarray(array))
        # Gemma2ForCausalLM files put "model." in front of the module's names
        key = name[len("model."):] if kind == "gemma2" and name.startswith("model.") else name
        state[key] = tensor.to(dtype)
    model.load_state_dict(state, assign=True)
    return kind, model.eval()


@torch.inference_mode()
def time_torch_text(args, dtype, positions):
    """{component: median seconds} of each text encoder's forward on as many positions as the
    engine ran (CLIP: 77 padded positions with the causal mask; Gemma-2: the real tokens)."""
    times = {}
    generator = torch.Generator().manual_seed(1)
    torch.backends.mkldnn.enabled = torch.backends.mkldnn.is_available()
    try:
        for component in TEXT_ENCODERS:
            time_text_encoder(args, dtype, positions, component, generator, times)
    finally:
        torch.backends.mkldnn.enabled = not MKLDNN_OFF_FOR_CONVOLUTIONS
    return times


def time_text_encoder(args, dtype, positions, component, generator, times):
    """Adds component's median forward seconds to times when the folder has that encoder."""
    folder = os.path.join(args.model, component)
    if component not in positions or not os.path.isdir(folder):
        return
    kind, model = load_text_encoder(folder, dtype)
    vocab = model.config["vocab_size"]
    ids = torch.randint(1, min(vocab, 1000), (1, positions[component]), generator=generator)
    times[component] = median_time(lambda: model(ids), args.repeat)
    del model


def time_engine(args, bf16=False):
    """{component: median seconds} and the ceiling line from `snapgen bench` on the folder (with
    bf16: `--bf16`, bf16 compute, whose ceiling is a bf16 product)."""
    command = [args.snapgen, "bench", "--model", args.model, "--size", str(args.size),
               "--threads", str(args.threads), "--repeat", str(args.repeat),
               "--context-tokens", str(args.context_tokens)] + (["--bf16"] if bf16 else [])
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "passive"))
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    print(run.stdout, end="")
    if run.returncode != 0:
        sys.exit(f"snapgen bench failed ({run.returncode}): {run.stderr.strip()}")
    times, positions = {}, {}
    for line in run.stdout.splitlines():
        match = re.match(r"(unet step|decoder|text_encoder(?:_\d)?|ceiling matmul \S+):\s+"
                         r"([0-9]+\.[0-9]+)", line)
        if match:
            times[match.group(1)] = float(match.group(2))
        match = re.match(r"(text_encoder\S*): (\d+) positions", line)
        if match:
            positions[match.group(1)] = int(match.group(2))
    return times, positions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapgen", default=os.environ.get("SNAPGEN", "build/engine/snapgen"))
    parser.add_argument("--unet-config",
                        default=os.path.join(ROOT, "weights", "configs", "snapgen-unet-full.json"))
    parser.add_argument("--decoder-config",
                        default=os.path.join(ROOT, "weights", "configs", "snapgen-decoder.json"))
    parser.add_argument("--model", default=os.path.join(ROOT, "build-bench", "random-full"),
                        help="model folder to make or reuse (f32 random weights)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per component")
    parser.add_argument("--context-tokens", type=int, default=154)
    parser.add_argument("--precisions",
                        help="PyTorch precisions to time (f32, bf16; default both, or f32 alone "
                             "on a CPU without bf16 instructions, where PyTorch emulates bf16 "
                             "for many minutes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    make_folder(args)

    cpu_flags = open("/proc/cpuinfo").read().split("flags", 1)[-1].split("\n", 1)[0].split()
    bf16_hardware = [f for f in ("avx512_bf16", "amx_bf16", "avx_ne_convert") if f in cpu_flags]
    print(f"cpu bf16 instructions: {', '.join(bf16_hardware) or 'none'}; torch {torch.__version__}, "
          f"{args.threads} threads, {args.size}x{args.size}")
    if args.precisions is None:
        args.precisions = "f32,bf16" if bf16_hardware else "f32"
        if not bf16_hardware:
            print("PyTorch bf16 not timed (no bf16 instructions; --precisions f32,bf16 forces it)")
    # the engine first: PyTorch then runs the text encoders on as many positions
    engines = {"f32": time_engine(args)}
    positions = engines["f32"][1]
    if "bf16" in args.precisions.split(","):
        engines["bf16"] = time_engine(args, bf16=True)
    results = {}
    for name in args.precisions.split(","):
        dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[name]
        print(f"PyTorch {name}: timing ...", flush=True)
        results[name] = time_torch_text(args, dtype, positions)
        results[name].update(time_torch(args, dtype))
        print(f"PyTorch {name}: {json.dumps(results[name])}", flush=True)

    print(f"\n{'component':14s}", end="")
    for name in results:
        print(f" {'engine ' + name + ' s':>14s} {'torch ' + name + ' s':>14s} {'ratio':>6s}",
              end="")
    print()
    for component in TEXT_ENCODERS + ("unet step", "decoder"):
        if component not in engines["f32"][0]:
            continue
        print(f"{component:14s}", end="")
        for name, times in results.items():
            engine = engines[name][0][component]
            print(f" {engine:14.3f} {times[component]:14.3f} {times[component] / engine:6.2f}",
                  end="")
        print()
    print("ratio = PyTorch time / engine time (> 1: the engine is faster)")


if __name__ == "__main__":
    main()
