#!/usr/bin/env python3
# check_autoencoder.py: how many autoencoder reconstructions of held-out scenes pass ShapeEval.
"""Renders COUNT eval-split scenes (categories in turn, seeds (777, i)) at the encoder's size,
encodes and decodes them with a work folder's trained autoencoder (ckpt/ae_final.pt), and scores
the full-size reconstructions with ShapeEval (box-filtered to 256² as the evaluation does); the
same scenes rendered at 256² are scored too, as the ground truth. Prints per category and the
failures. Inside the build root:

    PYTHONPATH=weights/recipe python3 weights/recipe/check_autoencoder.py \\
        --workdir /var/cache/sgtrain-cpu --preset cpu --count 240
"""
import argparse
import collections
import os
import sys
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sgtrain import nets  # noqa: E402
from sgtrain.data import load_autoencoder, to_eval_uint8  # noqa: E402
from shapeworld import evaluate, world  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--preset", choices=["full", "cpu", "smoke"], default="cpu")
    parser.add_argument("--count", type=int, default=240)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = {"full": nets.FULL, "cpu": nets.CPU, "smoke": nets.SMOKE}[args.preset]
    run = types.SimpleNamespace(sizes=dict(sizes), device=torch.device("cpu"),
                                path=lambda *p: os.path.join(args.workdir, *p))
    ae = load_autoencoder(run)
    size = sizes["encoder_size"]
    stats = collections.defaultdict(lambda: [0, 0, 0])  # n, reconstructions passed, truths passed
    failures = []
    for i in range(args.count):
        category = world.CATEGORIES[i % len(world.CATEGORIES)]
        caption, spec = world.sample_spec((777, i), category, size, "eval")
        pixels = np.asarray(world.render(spec, size), np.float32) / 255.0
        with torch.no_grad():
            image = ae.decoder(ae.encoder(torch.from_numpy(pixels).permute(2, 0, 1)[None]))
        passed, _, details = evaluate(caption, to_eval_uint8(image)[0])
        truth = world.render(world.sample_spec((777, i), category, 256, "eval")[1], 256)
        row = stats[category]
        row[0] += 1
        row[1] += int(passed)
        row[2] += int(evaluate(caption, np.asarray(truth))[0])
        if not passed:
            failures.append(f"{category}: {caption!r}: {details['reason']}")
    for category, (n, recon, truth) in stats.items():
        print(f"{category:14s} reconstructions {recon}/{n}, ground truth {truth}/{n}")
    total = sum(r[1] for r in stats.values())
    print(f"overall: reconstructions passing {total}/{args.count} ({total / args.count:.3f})")
    for line in failures:
        print("  failed: " + line)


if __name__ == "__main__":
    main()
