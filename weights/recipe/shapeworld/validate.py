# Validates ShapeEval: accepts ground-truth renders, rejects deliberately wrong ones (per category).
import argparse
import io
import math
import sys
import time

import numpy as np
from PIL import Image, ImageFilter

from . import shapeeval, world
from .prompts import parse

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
CROSSWISE = {"left of": ["above", "below"], "right of": ["above", "below"],
             "above": ["left of", "right of"], "below": ["left of", "right of"]}

VIOLATIONS = {
    "single_object": ["wrong_shape", "missing"],
    "two_object": ["wrong_shape", "missing"],
    "counting": ["wrong_count", "wrong_count", "wrong_shape", "wrong_color"],
    "colors": ["wrong_color", "wrong_shape", "swapped_binding"],
    "position": ["swapped", "crosswise", "missing"],
    "color_attr": ["swapped_colors", "wrong_color", "missing"],
}


def wilson(successes, total, z=1.96):
    """95% Wilson score interval of a binomial proportion."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    center = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, center - half), min(1.0, center + half)


# A 16×16 latent decoded to 1024² rounds corners by about σ = 1.5–2% of the side (measured by
# eye against world.render(rounding=...); see README "Validation").
ROUNDING_MAX = 0.02


def degrade(image, rng, blur_max=1.3):
    """Imitates a generated image: soft edges (Gaussian blur up to blur_max pixels at 256²),
    noise, a slight colour cast and JPEG artefacts."""
    scale = image.size[0] / 256
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, blur_max) * scale))
    pixels = np.asarray(image, np.float32)
    noise = rng.standard_normal(pixels.shape, np.float32) * rng.uniform(1, 5)
    pixels = pixels + rng.uniform(-10, 10, 3).astype(np.float32) + noise
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    if rng.uniform() < 0.5:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(60, 95)))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image


def violating_objects(rng, requirement, kind, size):
    """Objects (placed) of a scene that breaks the requirement in the way `kind` names."""
    category, objs, relation = requirement["category"], requirement["objects"], \
        requirement["relation"]
    color_of = lambda req: req["color"] or world._pick(rng, world.COLORS)
    other_shape = lambda *shapes: world._pick(rng, world.SHAPES, exclude=shapes)
    other_color = lambda *colors: world._pick(rng, world.COLORS, exclude=colors)
    wanted = [(o["shape"], color_of(o)) for o in objs for _ in range(o["count"])]
    place_relation = None
    if kind == "missing":
        drawn = [] if len(wanted) == 1 else [wanted[int(rng.integers(2))]]
    elif kind == "wrong_shape":
        shapes = [o["shape"] for o in objs]
        index = int(rng.integers(len(objs)))
        drawn = [(other_shape(*shapes) if s == objs[index]["shape"] else s, c) for s, c in wanted]
    elif kind == "wrong_count":
        count = objs[0]["count"]
        new_count = world._pick(rng, [n for n in (count - 1, count + 1) if 0 <= n <= 5])
        drawn = [(objs[0]["shape"], color_of(objs[0])) for _ in range(new_count)]
    elif kind == "wrong_color":
        if category == "counting" and objs[0]["color"] is None:
            return None  # nothing to get wrong
        index = int(rng.integers(len(wanted)))
        drawn = [(s, other_color(*[o["color"] for o in objs]) if i == index else c)
                 for i, (s, c) in enumerate(wanted)]
    elif kind == "swapped_binding":  # "a red circle": a blue circle next to a red square
        shape, color = wanted[0]
        drawn = [(shape, other_color(color)), (other_shape(shape), color)]
    elif kind == "swapped_colors":
        (shape_a, color_a), (shape_b, color_b) = wanted
        drawn = [(shape_a, color_b), (shape_b, color_a)]
    elif kind == "swapped":
        drawn, place_relation = wanted, OPPOSITE[relation]
    elif kind == "crosswise":
        drawn, place_relation = wanted, world._pick(rng, CROSSWISE[relation])
    else:
        raise ValueError(kind)
    low, high = world._size_range(len(drawn))
    scene = [world._new_object(rng, shape, color, rng.uniform(low, high) * size)
             for shape, color in drawn]
    return world.place_objects(rng, scene, size, place_relation)


def make_case(seed, index, category, positive, size, rounding=0.0):
    """(prompt, image, violation kind or None) for one validation case, deterministic; rounding
    rounds the objects' corners (world.render)."""
    rng = np.random.default_rng([seed, index, 1 if positive else 2])
    if positive:
        prompt, spec = world.sample_spec(rng, category, size, split=None)
        return prompt, world.render(spec, size, rounding=rounding), None
    while True:
        requirement = world.random_requirement(rng, category, bool(rng.uniform() < 0.5))
        kind = world._pick(rng, VIOLATIONS[category])
        objects = violating_objects(rng, requirement, kind, size)
        if objects is not None:
            break
    prompt = world.caption_for(category, requirement["objects"], requirement["relation"])
    return prompt, world.render(world.finish_scene(rng, objects, size), size,
                                rounding=rounding), kind


def run_validation(positives, negatives, size=256, seed=20250, degrade_fraction=0.5,
                   verbose=False, blur_max=1.3, rounding_max=ROUNDING_MAX):
    """Evaluates `positives` ground-truth and `negatives` wrong renders, spread evenly over the
    categories; degraded images also get their corners rounded (up to rounding_max of the side).
    Returns {"pos": {cat: [n, ok]}, "neg": {cat: [n, ok]}, "kinds": {...}, "fails"}."""
    stats = {"pos": {c: [0, 0] for c in world.CATEGORIES},
             "neg": {c: [0, 0] for c in world.CATEGORIES}, "kinds": {}, "fails": []}
    for positive, total in ((True, positives), (False, negatives)):
        for index in range(total):
            category = world.CATEGORIES[index % len(world.CATEGORIES)]
            rng = np.random.default_rng([seed, index, 3 if positive else 4])
            degraded = rng.uniform() < degrade_fraction
            rounding = float(rng.uniform(0, rounding_max)) if degraded else 0.0
            prompt, image, kind = make_case(seed, index, category, positive, size, rounding)
            assert parse(prompt)["category"] == category, prompt
            if degraded:
                image = degrade(image, rng, blur_max)
            passed, _, details = shapeeval.evaluate(prompt, image)
            correct = passed == positive
            row = stats["pos" if positive else "neg"][category]
            row[0] += 1
            row[1] += int(correct)
            if not positive:
                kind_row = stats["kinds"].setdefault(f"{category}/{kind}", [0, 0])
                kind_row[0] += 1
                kind_row[1] += int(correct)
            if not correct:
                stats["fails"].append((positive, index, kind, degraded, prompt,
                                       details["reason"], details["objects"]))
                if verbose:
                    seen = [(o["color"], o["shape"], o["distance"]) for o in details["objects"]]
                    print(f"  wrong: {'pos' if positive else 'neg'} #{index} {kind or ''} "
                          f"degraded={degraded} {prompt!r}: {details['reason']}; {seen}")
    return stats


def print_table(stats, title):
    print(title)
    print(f"{'category':15s} {'truth n':>7s} {'accept':>7s} {'rate':>6s} {'95% CI':>13s}   "
          f"{'wrong n':>7s} {'reject':>7s} {'rate':>6s} {'95% CI':>13s}")
    totals = [0, 0, 0, 0]
    for category in world.CATEGORIES:
        pos, neg = stats["pos"][category], stats["neg"][category]
        totals = [totals[0] + pos[0], totals[1] + pos[1], totals[2] + neg[0], totals[3] + neg[1]]
        print(_row(category, pos, neg))
    print(_row("overall", totals[:2], totals[2:]))
    print("rejection by kind of error:")
    for kind, (n, ok) in sorted(stats["kinds"].items()):
        low, high = wilson(ok, n)
        print(f"  {kind:30s} {ok:4d}/{n:<4d} {ok / n:.3f} [{low:.3f}, {high:.3f}]")


def _row(name, pos, neg):
    def cell(n, ok):
        if n == 0:
            return f"{0:7d} {0:7d} {'-':>6s} {'-':>13s}"
        low, high = wilson(ok, n)
        return f"{n:7d} {ok:7d} {ok / n:6.3f} [{low:.3f},{high:.3f}]"
    return f"{name:15s} {cell(*pos)}   {cell(*neg)}"


def measure_prototypes(size=256):
    """Mean shape features of renders, per shape and corner rounding (ROUNDING_LEVELS, σ as a
    fraction of the object's size): the table ShapeEval classifies against."""
    result = {}
    for shape in world.SHAPES:
        result[shape] = []
        for level in shapeeval.ROUNDING_LEVELS:
            vectors = []
            for fraction in (0.15, 0.25, 0.35, 0.5):
                for rotation in (-6, -3, 0, 3, 6):
                    vectors.append(_prototype_features(shape, fraction, rotation, level, size))
            result[shape].append(np.mean(vectors, 0))
    return result


def _prototype_features(shape, fraction, rotation, level, size):
    obj = world._new_object(np.random.default_rng(0), shape, "blue", fraction * size)
    obj["rotation"] = 0.0 if shape in ("circle", "ring") else float(rotation)
    obj["center"] = [size / 2, size / 2]
    obj["rgb"] = list(world.COLORS["blue"])
    scene = {"background": {"kind": "plain", "color": [230, 230, 230], "noise": 0},
             "objects": [obj]}
    image = world.render(scene, size, rounding=level * fraction)
    pixels, _ = shapeeval.load_pixels(image)
    mask = shapeeval.open_mask(shapeeval.color_labels(pixels) ==
                               shapeeval.PALETTE_NAMES.index("blue"))
    rows, starts, ends, ids = shapeeval.label_runs(mask)
    biggest = np.bincount(ids, weights=ends - starts).argmax()
    mine = ids == biggest
    return shapeeval.feature_vector(shapeeval.shape_features(rows[mine], starts[mine], ends[mine]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__ or "Validates ShapeEval.")
    parser.add_argument("--positives", type=int, default=1200)
    parser.add_argument("--negatives", type=int, default=1200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=20250)
    parser.add_argument("--degrade", type=float, default=0.5,
                        help="fraction of images blurred, noised and JPEG-compressed")
    parser.add_argument("--blur-max", type=float, default=1.3,
                        help="strongest blur of degraded images, in pixels at 256x256")
    parser.add_argument("--rounding-max", type=float, default=ROUNDING_MAX,
                        help="strongest corner rounding of degraded images (σ as a fraction "
                             "of the side; world.render)")
    parser.add_argument("--threshold", type=float, default=0.98)
    parser.add_argument("--verbose", action="store_true", help="print every wrong decision")
    parser.add_argument("--prototypes", action="store_true",
                        help="print the prototype table measured on clean renders and exit")
    args = parser.parse_args(argv)
    if args.prototypes:
        for shape, vectors in measure_prototypes().items():
            print(f'    "{shape}": [')
            for vector in vectors:
                print(f'        [{", ".join(f"{v:.3f}" for v in vector)}],')
            print("    ],")
        return 0
    start = time.time()
    stats = run_validation(args.positives, args.negatives, args.size, args.seed, args.degrade,
                           args.verbose, args.blur_max, args.rounding_max)
    seconds = time.time() - start
    print_table(stats, f"ShapeEval validation: {args.size}x{args.size}, seed {args.seed}, "
                f"{args.degrade:.0%} degraded (blur <= {args.blur_max} px, rounding <= "
                f"{args.rounding_max}), {seconds:.1f} s")
    accept = sum(v[1] for v in stats["pos"].values()) / max(1, args.positives)
    reject = sum(v[1] for v in stats["neg"].values()) / max(1, args.negatives)
    ok = accept >= args.threshold and reject >= args.threshold
    print(f"{'PASS' if ok else 'FAIL'} accept={accept:.4f} reject={reject:.4f} "
          f"threshold={args.threshold}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
