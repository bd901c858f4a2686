# test_determinism.py: the same model, prompt, seed, settings and thread count give a
# byte-identical PNG on repeated runs (both backends, 1 and 2 threads), and 1 vs 2 threads stay
# within the documented bound: at most 1 level of 255 in any channel, on at most 1% of the values
# (oneDNN's parallel reductions change the summation order; the reference backend has measured
# identical so far, but is held only to the same bound). Env: SNAPGEN, PYTHONPATH=weights/recipe.
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONFIGS = os.path.join(ROOT, "weights", "configs")
SNAPGEN = os.environ.get("SNAPGEN", os.path.join(ROOT, "build", "engine", "snapgen"))
MAX_LEVEL_DIFF = 1
MAX_DIFFERING_FRACTION = 0.01
REPEATS = 3
failures = []


def check(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}".rstrip(), flush=True)
    if not ok:
        failures.append(name)


def generate(model, out, backend, threads, seed, size, guidance):
    result = subprocess.run([SNAPGEN, "generate", "--model", model, "--output", out, "--seed",
                             str(seed), "--width", str(size[0]), "--height", str(size[1]),
                             "--steps", "4", "--guidance", str(guidance), "--threads",
                             str(threads), "--backend", backend, "--prompt", "a red circle",
                             "--quiet"], capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        return None
    with open(out, "rb") as f:
        return f.read()


def main():
    tmp = tempfile.mkdtemp(prefix="sg-determinism-")
    try:
        model = os.path.join(tmp, "model")
        subprocess.run([sys.executable, os.path.join(ROOT, "weights", "recipe",
                                                     "make_random_model.py"),
                        "--unet-config", os.path.join(CONFIGS, "test-unet-tiny.json"),
                        "--decoder-config", os.path.join(CONFIGS, "test-decoder-tiny.json"),
                        "--out", model, "--seed", "21", "--conditioning",
                        os.path.join(model, "conditioning", "default.safetensors")],
                       check=True, capture_output=True)
        # the reference backend is slow: one small case
        cases = [("onednn", 11, (64, 64), 1.0, REPEATS), ("onednn", 12, (96, 64), 3.0, REPEATS),
                 ("reference", 13, (48, 48), 1.0, 2)]
        worst = 0
        for backend, seed, size, guidance, repeats in cases:
            label = f"{backend} seed={seed} {size[0]}x{size[1]} guidance={guidance}"
            images = {}
            for threads in (1, 2):
                runs = [generate(model, os.path.join(tmp, f"{threads}-{r}.png"), backend,
                                 threads, seed, size, guidance) for r in range(repeats)]
                same = runs[0] is not None and all(r == runs[0] for r in runs)
                check(f"{label} threads={threads}: {repeats} runs byte-identical", same)
                if runs[0] is None:
                    break
                images[threads] = np.asarray(Image.open(os.path.join(tmp, f"{threads}-0.png")),
                                             np.int16)
            if len(images) < 2:
                continue
            diff = np.abs(images[1] - images[2])
            fraction = float((diff > 0).mean())
            worst = max(worst, int(diff.max()))
            check(f"{label}: threads 1 vs 2 within {MAX_LEVEL_DIFF} level on "
                  f"{MAX_DIFFERING_FRACTION:.0%} of values",
                  diff.max() <= MAX_LEVEL_DIFF and fraction <= MAX_DIFFERING_FRACTION,
                  f"max diff {int(diff.max())}, {fraction:.4%} of values differ")
        print(f"largest 1-vs-2-thread difference seen: {worst} level(s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'FAILED: ' + ', '.join(failures) if failures else 'all determinism checks passed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
