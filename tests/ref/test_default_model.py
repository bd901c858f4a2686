# test_default_model.py: the shipped model (weights/default) in the C engine vs the PyTorch recipe.
"""Checks, for the model folder in weights/default (or the folder given as argv[1]):

  1. the C runner and the recipe (evaluate.load_generator: tokenizer, text encoder, conditioner,
     UNet, sampler, decoder, all in PyTorch float32) make the same 1024² image for the same prompt
     and seed: PSNR >= 40 dB on the uint8 images, for prompts from each ShapeEval category;
  2. the README's example prompt and seed make an image that passes ShapeEval.

Options: --size N (image side, default 1024), --no-shapeeval (check 1 only: for models that
are not trained to pass it, e.g. the recipe smoke test's).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "weights", "recipe"))
import evaluate  # noqa: E402
from shapeworld import evaluate as shapeeval  # noqa: E402

SNAPGEN = os.environ.get("SNAPGEN", os.path.join(ROOT, "build", "engine", "snapgen"))
README_PROMPT = "a red circle to the left of a blue square"  # tests/scripts/generate.sh
README_SEED = 1
CASES = [("a photo of a green star", 11), ("a photo of three yellow hearts", 12),
         ("a photo of a purple ring below an orange triangle", 13), (README_PROMPT, README_SEED)]
failures = []


def check(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}".rstrip(), flush=True)
    if not ok:
        failures.append(name)


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default=os.path.join(ROOT, "weights", "default"))
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--no-shapeeval", action="store_true")
    args = parser.parse_args()
    model = args.model
    torch.set_num_threads(2)
    gen = evaluate.load_generator(model, torch.device("cpu"))
    gen.image_size = args.size
    with tempfile.TemporaryDirectory() as tmp:
        for prompt, seed in CASES:
            path = os.path.join(tmp, "out.png")
            proc = subprocess.run([SNAPGEN, "generate", "--model", model, "--prompt", prompt,
                                   "--seed", str(seed), "--output", path, "--quiet",
                                   "--width", str(args.size), "--height", str(args.size)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                check(f"engine {prompt!r}", False, proc.stderr.strip())
                continue
            engine = np.asarray(Image.open(path).convert("RGB"))
            image = gen.full_images([prompt], [seed])[0]
            # the pipeline's conversion: clamp, ×255, round half to even
            recipe = torch.round(image.clamp(0, 1) * 255.0).to(torch.uint8)
            recipe = recipe.permute(1, 2, 0).numpy()
            value = psnr(engine, recipe)
            check(f"C engine vs recipe {prompt!r} seed {seed}",
                  engine.shape == recipe.shape and value >= 40.0,
                  f"{engine.shape[1]}x{engine.shape[0]} PSNR {value:.1f} dB (limit 40)")
            if (prompt, seed) == (README_PROMPT, README_SEED) and not args.no_shapeeval:
                passed, _, details = shapeeval(prompt, engine)
                check(f"README example passes ShapeEval {prompt!r}", passed,
                      str(details.get("reason", "")))
    print(f"{len(failures)} failed" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
