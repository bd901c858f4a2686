#!/usr/bin/env python3
# compare_images.py: PSNR of each PNG in one folder against its twin (same name) in another.
"""Usage: python3 weights/recipe/compare_images.py REFERENCE_DIR OTHER_DIR

Prints the number of pairs, the median, 5th percentile and minimum PSNR (uint8 RGB, peak 255)
and how many pairs fall under 40 dB; e.g. to compare the images of `evaluate.py --engine` made
with and without --engine-int8. Identical images count as 99 dB.
"""
import os
import sys

import numpy as np
from PIL import Image


def psnr(reference, other):
    a = np.asarray(Image.open(reference).convert("RGB"), dtype=np.float64)
    b = np.asarray(Image.open(other).convert("RGB"), dtype=np.float64)
    if a.shape != b.shape:
        raise SystemExit(f"{other}: size {b.shape[1]}x{b.shape[0]} differs from {reference}")
    mse = ((a - b) ** 2).mean()
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    reference_dir, other_dir = sys.argv[1:]
    names = sorted(n for n in os.listdir(other_dir) if n.endswith(".png"))
    if not names:
        raise SystemExit(f"{other_dir}: no PNG files")
    values = [psnr(os.path.join(reference_dir, n), os.path.join(other_dir, n)) for n in names]
    p = np.array(values)
    worst = names[int(p.argmin())]
    print(f"{len(p)} pairs: median {np.median(p):.1f} dB, 5th percentile "
          f"{np.percentile(p, 5):.1f} dB, minimum {p.min():.1f} dB ({worst}), "
          f"under 40 dB: {int((p < 40).sum())}")


if __name__ == "__main__":
    main()
