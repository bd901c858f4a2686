# compare_png.py: compares two 8-bit images: max |difference| <= MAX_LEVELS and PSNR >= MIN_PSNR dB.
"""Usage: compare_png.py A.png B.png MAX_LEVELS MIN_PSNR. Prints one line with the numbers; exits 0
when both bounds hold, 1 otherwise (also when an image is missing or the shapes differ)."""
import sys

import numpy as np
from PIL import Image


def main():
    path_a, path_b, max_levels, min_psnr = sys.argv[1], sys.argv[2], float(sys.argv[3]), \
        float(sys.argv[4])
    try:
        a, b = (np.asarray(Image.open(p).convert("RGB"), dtype=np.float64)
                for p in (path_a, path_b))
    except OSError as error:
        print(f"cannot read an image: {error}")
        return 1
    if a.shape != b.shape:
        print(f"shapes differ: {a.shape} and {b.shape}")
        return 1
    diff = np.abs(a - b)
    mse = float(np.mean(diff ** 2))
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
    print(f"max |diff| {diff.max():.0f} levels (bound {max_levels:g}), PSNR {psnr:.1f} dB "
          f"(bound {min_psnr:g}), {np.mean(diff > 0) * 100:.1f}% of values differ")
    return 0 if diff.max() <= max_levels and psnr >= min_psnr else 1


if __name__ == "__main__":
    sys.exit(main())
