#!/usr/bin/env python3
# inspect_failures.py: why a model fails ShapeEval: reasons by category, failure sheets, trajectories.
"""Three views of an evaluation's failures (inside the build root, PYTHONPATH=weights/recipe):

  inspect_failures.py reasons DIR                 # ShapeEval's reasons, counted per category
  inspect_failures.py sheet DIR CATEGORY OUT.png  # the first --count failures, with reasons
  inspect_failures.py trajectory MODEL OUT.png --job "a photo of a ring=0" ...
                                                  # predicted x0 along the sampling path

DIR is an image folder written by `evaluate.py --engine` (PNGs and manifest.jsonl). The trajectory
view re-samples each (prompt, seed) job with the PyTorch recipe (--steps, --guidance) and decodes
x0 = x_t − t·v at a few steps, to show at which t an image's layout and colours are decided.
"""
import argparse
import collections
import json
import multiprocessing
import os
import re
import sys

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sgtrain import render  # noqa: E402

TILE = 256


def scored(folder, workers):
    """[(manifest entry, (passed, category, reason))] for every image of an evaluation folder."""
    with open(os.path.join(folder, "manifest.jsonl")) as f:
        manifest = [json.loads(line) for line in f if line.strip()]
    jobs = [(m["prompt"], os.path.join(folder, m["name"])) for m in manifest]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return list(zip(manifest, pool.map(render.evaluate_item, jobs, chunksize=8)))


def reasons(args):
    counts = collections.defaultdict(collections.Counter)
    totals = collections.Counter()
    for m, (passed, _, reason) in scored(args.folder, args.workers):
        totals[m["category"]] += 1
        if not passed:
            # "found 2 circles" and "found 3 circles" count as one reason
            counts[m["category"]][re.sub(r"found \d+", "found N", reason)] += 1
    for category, total in totals.items():
        failed = sum(counts[category].values())
        print(f"{category}: {failed} of {total} failed")
        for reason, n in counts[category].most_common(args.top):
            print(f"  {n:4d}  {reason}")


def save_sheet(tiles, columns, out):
    """tiles: [(PIL image, caption lines)] laid out in a grid with captions under each."""
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (TILE * columns, (TILE + 26) * rows), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, lines) in enumerate(tiles):
        x, y = TILE * (i % columns), (TILE + 26) * (i // columns)
        sheet.paste(image.convert("RGB").resize((TILE, TILE), Image.BOX), (x, y))
        for k, line in enumerate(lines[:2]):
            draw.text((x + 2, y + TILE + 2 + 11 * k), line[:46], fill="black" if k == 0 else "red")
    sheet.save(out)


def sheet(args):
    tiles = []
    for m, (passed, _, reason) in scored(args.folder, args.workers):
        if m["category"] == args.category and not passed:
            tiles.append((Image.open(os.path.join(args.folder, m["name"])),
                          [f"{m['name']}: {m['prompt']}", reason]))
            print(f"{m['name']}  {m['prompt']}  (seed {m['seed']}): {reason}")
        if len(tiles) == args.count:
            break
    if not tiles:
        raise SystemExit(f"no failures of category {args.category!r} in {args.folder}")
    save_sheet(tiles, 4, args.out)


def trajectory(args):
    import torch
    import evaluate as ev
    torch.set_num_threads(args.workers)
    gen = ev.load_generator(args.model, torch.device("cpu"), "model", args.steps, args.guidance)
    ts = gen.timesteps
    shown = sorted(set(np.linspace(0, len(ts) - 2, args.columns).round().astype(int).tolist()))
    tiles = []
    for job in args.job:
        prompt, seed = job.rsplit("=", 1)

        def show(i, t, x, v, prompt=prompt):
            if i in shown:
                x0 = gen.decoder(x - t * v).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()
                image = Image.fromarray((x0 * 255).round().astype(np.uint8))
                tiles.append((image, [f"t = {t:.2f}", prompt if i == 0 else ""]))

        gen.latents([prompt], [int(seed)], on_step=show)  # the evaluation's own sampler
    save_sheet(tiles, len(shown), args.out)
    print(f"{args.out}: rows {', '.join(args.job)}; columns t = "
          + ", ".join(f"{ts[i]:.2f}" for i in shown))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    sub = parser.add_subparsers(dest="view", required=True)
    p = sub.add_parser("reasons", help="ShapeEval's reasons for failing, per category")
    p.add_argument("folder")
    p.add_argument("--top", type=int, default=8)
    p = sub.add_parser("sheet", help="a sheet of one category's first failures")
    p.add_argument("folder")
    p.add_argument("category")
    p.add_argument("out")
    p.add_argument("--count", type=int, default=12)
    p = sub.add_parser("trajectory", help="decoded x0 predictions along the sampling path")
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--job", action="append", required=True, metavar="PROMPT=SEED")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--columns", type=int, default=8)
    args = parser.parse_args()
    {"reasons": reasons, "sheet": sheet, "trajectory": trajectory}[args.view](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
