# Checks ShapeWorld's parser and generator; runs a reduced ShapeEval validation (256², 1024²).
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "weights",
                                "recipe"))

import numpy as np  # noqa: E402

from shapeworld import PromptError, evaluate, make_prompt_set, parse, sample, world  # noqa: E402
from shapeworld.validate import run_validation  # noqa: E402

THRESHOLD = 0.97
failures = []


def report(ok, name, detail=""):
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}".rstrip())
    if not ok:
        failures.append(name)


def check_parser():
    wrong = []
    for category in world.CATEGORIES:
        for colored in (False, True):
            for requirement in world.all_requirements(category, colored):
                caption = world.caption_for(category, requirement["objects"],
                                            requirement["relation"])
                if parse(caption) != {k: requirement[k] for k in ("category", "objects",
                                                                   "relation")}:
                    wrong.append(caption)
    report(not wrong, "parser round trip of every requirement's caption",
           f"wrong={len(wrong)} {wrong[:3]}")
    rejected = 0
    bad = ["a photo of a dog", "a photo of a red circle and", "a photo of two circle",
           "a photo of a circle near a square", "a photo of a magenta star",
           "a photo of a circle and a circle", "a photo of a orange circle",
           "a photo of a red circle and a square", "a photo of two stars and a circle"]
    for prompt in bad:
        try:
            parse(prompt)
        except PromptError:
            rejected += 1
    report(rejected == len(bad), "parser rejects unknown words and bad forms",
           f"{rejected}/{len(bad)}")


def check_generator():
    image_a, caption_a, _ = sample((7, 123))
    image_b, caption_b, _ = sample((7, 123))
    same = caption_a == caption_b and np.array_equal(np.asarray(image_a), np.asarray(image_b))
    report(same, "sample is deterministic from (seed, index)")
    captions = [sample((7, i))[1] for i in range(60)]
    categories = {parse(c)["category"] for c in captions}
    report(categories == set(world.CATEGORIES), "samples cover the six categories",
           str(sorted(categories)))
    prompts = make_prompt_set(60, 0)
    counts = {c: sum(1 for p in prompts if p[0] == c) for c in world.CATEGORIES}
    report(set(counts.values()) == {10} and all(parse(p)["category"] == c for c, p, _ in prompts),
           "make_prompt_set is balanced and parses", str(counts))
    held_out = [world.is_held_out(c, r["objects"], r["relation"]) for c, _, r in prompts
                if world.composition_key(c, r["objects"], r["relation"])]
    train = [world.is_held_out(s["category"], s["requirement"]["objects"],
                               s["requirement"]["relation"]) for s in
             (sample((7, i))[2] for i in range(30))]
    report(all(held_out) and not any(train), "held-out compositions stay out of training")
    image, caption, _ = sample((7, 5), size=1024)
    passed, _, details = evaluate(caption, image)
    report(image.size == (1024, 1024) and passed, "1024² sample passes ShapeEval",
           f"{caption!r}: {details['reason']}")


def check_validation(positives, negatives, size, degrade_fraction=0.5, label=""):
    started = time.time()
    stats = run_validation(positives, negatives, size=size, seed=4242,
                           degrade_fraction=degrade_fraction)
    seconds = time.time() - started
    for kind, name in (("pos", "ground truth accepted"), ("neg", "wrong renders rejected")):
        name = label + name
        total = sum(v[0] for v in stats[kind].values())
        good = sum(v[1] for v in stats[kind].values())
        per_category = " ".join(f"{c}={v[1]}/{v[0]}" for c, v in stats[kind].items())
        report(good >= THRESHOLD * total, f"{size}² {name}",
               f"rate={good / total:.3f} ({good}/{total}, {seconds:.1f} s) {per_category}")


check_parser()
check_generator()
check_validation(200, 200, 256)
# every image blurred and its corners rounded (up to σ = 2% of the side, as a 16×16 latent's
# decoder draws them): a rounded cross must still be a cross, and still not a circle
check_validation(120, 120, 256, degrade_fraction=1.0, label="rounded+blurred ")
check_validation(12, 12, 1024)
print(f"{'FAIL' if failures else 'PASS'} test_shapeeval ({len(failures)} failed)")
sys.exit(1 if failures else 0)
