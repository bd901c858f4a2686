#!/usr/bin/env python3
# check_teacher_fit.py: the teacher's flow-matching loss on its training renders and on fresh ones.
"""Does the teacher memorise its training images? Compares the trained teacher's loss on latents of
images it trained on with its loss on fresh images of the same world (another --data-seed), with the
same t and noise draws for both, overall and by fifths of t. Equal losses mean more images would
not help; more training would. Make the two work folders first, inside the build root:

    for s in 0 777; do python3 weights/recipe/train_default.py --preset cpu --device cpu \\
        --workdir /var/cache/fit-s$s --out /tmp/fit-out --data-seed $s --set max_images=2048 \\
        --set min_images=2048 --set hires_images=1 --stages data,latents; done

(each with ckpt/ae_final.pt, ckpt/teacher_final.pt, stages/ae.json and text/ copied from the
training run's work folder; seed 0 is the training data's seed), then

    PYTHONPATH=weights/recipe python3 weights/recipe/check_teacher_fit.py \\
        --train /var/cache/fit-s0 --fresh /var/cache/fit-s777 --preset cpu
"""
import argparse
import contextlib
import os
import sys
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sgtrain import nets  # noqa: E402
from sgtrain.data import load_latents  # noqa: E402
from sgtrain.diffusion import TeacherForward, expand, load_teacher, text_side  # noqa: E402
from sgtrain.text import tokenize_all  # noqa: E402

BINS = 5


def fit_loss(forward, run, tokenizer, count, draws, batch):
    """(mean loss, its standard error, mean loss per fifth of t) over the first count latents,
    draws times each, with a fixed generator so that every folder gets the same t and noise."""
    latents, captions = load_latents(run)
    count = min(count, len(latents))
    latents = latents[:count].float()
    ids = tokenize_all(tokenizer, captions[:count])
    gen = torch.Generator().manual_seed(1234)
    losses, times = [], []
    with torch.no_grad():
        for _ in range(draws):
            for start in range(0, count, batch):
                x0 = latents[start:start + batch]
                t = nets.logit_normal(len(x0), torch.device("cpu"), gen)
                eps = torch.randn(x0.shape, generator=gen)
                xt = (1 - expand(t, x0)) * x0 + expand(t, x0) * eps
                v = forward(xt, t * 1000.0, ids[start:start + batch]).float()
                losses.append(nets.per_sample_mse(v, eps - x0))
                times.append(t)
    losses, times = torch.cat(losses), torch.cat(times)
    bins = torch.clamp((times * BINS).long(), max=BINS - 1)
    by_bin = [losses[bins == k].mean().item() for k in range(BINS)]
    return losses.mean().item(), losses.std().item() / len(losses) ** 0.5, by_bin


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="work folder of training-seed renders")
    parser.add_argument("--fresh", required=True, help="work folder of another seed's renders")
    parser.add_argument("--preset", choices=["full", "cpu", "smoke"], default="cpu")
    parser.add_argument("--count", type=int, default=2048, help="latents per folder")
    parser.add_argument("--draws", type=int, default=4, help="(t, noise) draws per latent")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = dict({"full": nets.FULL, "cpu": nets.CPU, "smoke": nets.SMOKE}[args.preset])

    def run_for(folder):
        return types.SimpleNamespace(sizes=sizes, device=torch.device("cpu"),
                                     path=lambda *p: os.path.join(folder, *p))

    tokenizer, text_cfg = text_side(run_for(args.train))
    teacher = load_teacher(run_for(args.train), text_cfg)
    forward = TeacherForward(teacher, lambda cache=True: contextlib.nullcontext())
    print(f"teacher at step {teacher.step}; {args.count} latents × {args.draws} draws per folder")
    results = {}
    for name, folder in (("train", args.train), ("fresh", args.fresh)):
        mean, err, by_bin = fit_loss(forward, run_for(folder), tokenizer, args.count, args.draws,
                                     args.batch)
        results[name] = mean
        print(f"{name:5s} {folder}: loss {mean:.5f} ± {err:.5f}; by fifth of t: "
              + " ".join(f"{v:.4f}" for v in by_bin), flush=True)
    gap = results["fresh"] / results["train"] - 1
    print(f"fresh / train − 1 = {gap:+.2%}")
    return 0 if np.isfinite(gap) else 1


if __name__ == "__main__":
    sys.exit(main())
