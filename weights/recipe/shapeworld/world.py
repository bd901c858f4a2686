# ShapeWorld: vocabulary, scene sampler and anti-aliased renderer of the procedural dataset.
import math
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CATEGORIES = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]

SHAPES = ["circle", "square", "triangle", "star", "heart", "diamond", "ring", "cross"]
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "heart": "hearts", "diamond": "diamonds", "ring": "rings", "cross": "crosses"}

# Saturated colours, far apart in hue; backgrounds are near-grey, so hue + chroma separates them.
COLORS = {
    "red": (225, 30, 35),
    "orange": (250, 120, 10),
    "yellow": (245, 230, 25),
    "green": (25, 170, 55),
    "cyan": (20, 185, 205),
    "blue": (35, 85, 225),
    "purple": (130, 40, 205),
    "pink": (235, 45, 165),
}

COUNT_WORDS = ["one", "two", "three", "four"]
RELATIONS = ["left of", "right of", "above", "below"]
RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of",
                    "above": "above", "below": "below"}

POSITION_THRESHOLD = 0.1  # GenEval's: half-sizes are discounted by 10% of both boxes' sides
COLOR_JITTER = 8  # per channel, in 0..255 units
ROTATION_JITTER_DEG = 6.0
HELD_OUT_MODULUS = 8  # 1 in 8 compositions (two objects, position, colour pairs) is for evaluation


def _normalize(points):
    """Centres a polygon's bounding box on the origin and scales its longer side to 2."""
    points = np.asarray(points, dtype=np.float64)
    low, high = points.min(0), points.max(0)
    return (points - (low + high) / 2) * (2.0 / (high - low).max())


def _regular(count, radius=1.0, phase=-math.pi / 2):
    angles = phase + np.arange(count) * 2 * math.pi / count
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], 1)


def _unit_shapes():
    """Each shape as (filled polygons, hole polygons) in a [-1, 1] box, y pointing down."""
    star = _regular(10, 1.0, -math.pi / 2)
    star[1::2] *= 0.45
    t = np.linspace(0, 2 * math.pi, 256, endpoint=False)
    heart = np.stack([16 * np.sin(t) ** 3,
                      -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))], 1)
    a = 1 / 3
    cross = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a),
             (-1, a), (-1, -a), (-a, -a)]
    circle = _regular(256)
    return {
        "circle": ([circle], []),
        "square": ([[(-1, -1), (1, -1), (1, 1), (-1, 1)]], []),
        "triangle": ([_normalize(_regular(3))], []),
        "star": ([_normalize(star)], []),
        "heart": ([_normalize(heart)], []),
        "diamond": ([[(0, -1), (0.72, 0), (0, 1), (-0.72, 0)]], []),
        "ring": ([circle], [0.55 * circle]),
        "cross": ([cross], []),
    }


UNIT_SHAPES = {name: ([np.asarray(p, float) for p in fills], [np.asarray(p, float) for p in holes])
               for name, (fills, holes) in _unit_shapes().items()}


def shape_polygons(obj):
    """An object's (filled, hole) polygons in image pixel coordinates."""
    fills, holes = UNIT_SHAPES[obj["shape"]]
    angle = math.radians(obj["rotation"])
    rotate = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    place = lambda poly: poly @ rotate.T * (obj["size"] / 2) + np.asarray(obj["center"])
    return [place(p) for p in fills], [place(p) for p in holes]


def object_bbox(obj):
    fills, _ = shape_polygons(obj)
    points = np.concatenate(fills)
    return [float(v) for v in (*points.min(0), *points.max(0))]


def relations_between(box_a, box_b, threshold=POSITION_THRESHOLD):
    """GenEval's relative position of box A to box B (x0, y0, x1, y1; y down): a set of
    relations."""
    box_a, box_b = np.asarray(box_a, float), np.asarray(box_b, float)
    offset = (box_a[:2] + box_a[2:]) / 2 - (box_b[:2] + box_b[2:]) / 2
    dims = (box_a[2:] - box_a[:2]) + (box_b[2:] - box_b[:2])
    revised = np.maximum(np.abs(offset) - threshold * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    found = set()
    if dx < -0.5: found.add("left of")
    if dx > 0.5: found.add("right of")
    if dy < -0.5: found.add("above")
    if dy > 0.5: found.add("below")
    return found


# ---------------------------------------------------------------------------------------------
# Captions


def article(word):
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(shape, color=None, count=None):
    """'a red circle', 'three stars', 'one green star'."""
    words = ([color] if color else []) + [shape if (count or 1) == 1 else PLURALS[shape]]
    lead = COUNT_WORDS[count - 1] if count else article(words[0])
    return " ".join([lead] + words)


def caption_for(category, objects, relation=None):
    """The caption of a requirement: objects are dicts with shape, color (or None), count."""
    if category in ("single_object", "colors"):
        body = noun_phrase(objects[0]["shape"], objects[0]["color"])
    elif category == "counting":
        body = noun_phrase(objects[0]["shape"], objects[0]["color"], objects[0]["count"])
    elif category in ("two_object", "color_attr"):
        body = " and ".join(noun_phrase(o["shape"], o["color"]) for o in objects)
    elif category == "position":
        a, b = objects
        body = f"{noun_phrase(a['shape'], a['color'])} {RELATION_PHRASES[relation]} " \
               f"{noun_phrase(b['shape'], b['color'])}"
    else:
        raise ValueError(f"unknown category {category!r}")
    return "a photo of " + body


def composition_key(category, objects, relation=None):
    """The part of a requirement that the held-out split is made on (None: not split)."""
    if category == "two_object":
        return f"two:{objects[0]['shape']}+{objects[1]['shape']}"
    if category == "position":
        return f"pos:{objects[0]['shape']}:{relation}:{objects[1]['shape']}"
    if category == "color_attr":
        return "attr:" + "+".join(f"{o['color']}-{o['shape']}" for o in objects)
    return None


def is_held_out(category, objects, relation=None):
    key = composition_key(category, objects, relation)
    return key is not None and zlib.crc32(key.encode()) % HELD_OUT_MODULUS == 0


# ---------------------------------------------------------------------------------------------
# Requirements (what a caption asks for) and scenes (what is drawn)


def _pick(rng, items, exclude=()):
    choices = [x for x in items if x not in exclude]
    return choices[int(rng.integers(len(choices)))]


def random_requirement(rng, category, mention_colors=False):
    """A random requirement of a category. mention_colors adds colours to counting/position."""
    shape_a = _pick(rng, SHAPES)
    shape_b = _pick(rng, SHAPES, exclude=[shape_a])
    color_a = _pick(rng, COLORS)
    color_b = _pick(rng, COLORS, exclude=[color_a])
    obj = lambda shape, color=None, count=1: {"shape": shape, "color": color, "count": count}
    relation = None
    if category == "single_object":
        objects = [obj(shape_a)]
    elif category == "two_object":
        objects = [obj(shape_a), obj(shape_b)]
    elif category == "counting":
        objects = [obj(shape_a, color_a if mention_colors else None, int(rng.integers(1, 5)))]
    elif category == "colors":
        objects = [obj(shape_a, color_a)]
    elif category == "position":
        relation = _pick(rng, RELATIONS)
        if mention_colors:
            objects = [obj(shape_a, color_a), obj(shape_b, color_b)]
        else:
            objects = [obj(shape_a), obj(shape_b)]
    elif category == "color_attr":
        objects = [obj(shape_a, color_a), obj(shape_b, color_b)]
    else:
        raise ValueError(f"unknown category {category!r}")
    return {"category": category, "objects": objects, "relation": relation}


def _size_range(object_count):
    """Object sizes (longer bbox side) as fractions of the image side, by how many are drawn."""
    return {0: (0.2, 0.5), 1: (0.22, 0.5), 2: (0.16, 0.34), 3: (0.14, 0.28)}.get(
        object_count, (0.13, 0.24))


def _new_object(rng, shape, color, size_px):
    rotation = 0.0 if shape in ("circle", "ring") else float(
        rng.uniform(-ROTATION_JITTER_DEG, ROTATION_JITTER_DEG))
    return {"shape": shape, "color": color, "size": float(size_px), "rotation": rotation,
            "center": [0.0, 0.0]}


def _overlaps(box, boxes, gap):
    return any(box[0] < b[2] + gap and b[0] < box[2] + gap and box[1] < b[3] + gap
               and b[1] < box[3] + gap for b in boxes)


def place_objects(rng, objects, image_size, relation=None, tries=400):
    """Puts objects at random non-overlapping places. With a relation, objects[0] must stand in
    that GenEval relation (and no other) to objects[1]. Shrinks sizes when nothing fits."""
    margin, gap = 0.03 * image_size, 0.04 * image_size
    for _ in range(20):
        boxes = []
        for obj in objects:
            half = obj["size"] / 2
            for _ in range(tries):
                obj["center"] = [float(rng.uniform(margin + half, image_size - margin - half))
                                 for _ in range(2)]
                box = object_bbox(obj)
                if min(box[:2]) < margin or max(box[2:]) > image_size - margin:
                    continue
                if _overlaps(box, boxes, gap):
                    continue
                if relation and len(boxes) == 1 and relations_between(boxes[0], box) != {
                        relation}:
                    continue
                boxes.append(box)
                break
            else:
                break
        if len(boxes) == len(objects):
            for obj, box in zip(objects, boxes):
                obj["bbox"] = box
            return objects
        for obj in objects:
            obj["size"] *= 0.9
    raise RuntimeError("could not place objects")


def scene_for(rng, requirement, image_size):
    """A scene (list of objects) that satisfies the requirement exactly."""
    objects = []
    for req in requirement["objects"]:
        for _ in range(req["count"]):
            objects.append((req["shape"], req["color"]))
    # Unstated colours are random; a colour-free two-object scene may repeat a colour.
    low, high = _size_range(len(objects))
    scene = [_new_object(rng, shape, color or _pick(rng, COLORS),
                         rng.uniform(low, high) * image_size) for shape, color in objects]
    return place_objects(rng, scene, image_size, requirement.get("relation"))


# ---------------------------------------------------------------------------------------------
# Rendering


def _tint(rng, tone):
    """A near-grey colour: light, dark or mid grey with a small tint (chroma <= 16)."""
    level = {"light": (195, 245), "dark": (12, 60), "mid": (95, 160)}[tone]
    grey = rng.uniform(*level)
    return np.clip(grey + rng.uniform(-8, 8, 3), 0, 255)


def random_background(rng):
    """A background description: plain or gradient near-grey tints, optional mild noise."""
    tone = _pick(rng, ["light", "light", "dark", "dark", "mid"])
    background = {"kind": _pick(rng, ["plain", "gradient"]),
                  "color": [float(v) for v in _tint(rng, tone)]}
    if background["kind"] == "gradient":
        tone_b = tone if rng.uniform() < 0.7 else _pick(rng, ["light", "dark", "mid"])
        background["color_b"] = [float(v) for v in _tint(rng, tone_b)]
        background["angle"] = float(rng.uniform(0, 360))
    background["noise"] = float(rng.uniform(1, 4)) if rng.uniform() < 0.5 else 0.0
    background["noise_seed"] = int(rng.integers(2 ** 31))
    return background


def render_background(background, image_size):
    color = np.asarray(background["color"], np.float32)
    pixels = np.empty((image_size, image_size, 3), np.float32)
    pixels[:] = color
    if background["kind"] == "gradient":
        angle = math.radians(background["angle"])
        coords = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size - 0.5
        t = coords[None, :] * math.cos(angle) + coords[:, None] * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        pixels += t[..., None] * (np.asarray(background["color_b"], np.float32) - color)
    if background["noise"] > 0:
        noise_rng = np.random.default_rng(background["noise_seed"])
        pixels += noise_rng.standard_normal(pixels.shape, np.float32) * background["noise"]
    return pixels


def round_corners(mask, radius):
    """A binary mask ("L", 0/255) with its corners rounded: Gaussian blur of σ = radius pixels,
    then the 50% level again (level-set smoothing: convex corners are cut, concave ones filled,
    straight edges stay where they are). Imitates a decoder that cannot draw sharp corners."""
    if radius <= 0:
        return mask
    blurred = mask.filter(ImageFilter.GaussianBlur(radius))
    return blurred.point(lambda v: 255 if v >= 128 else 0)


def render(scene, image_size, supersample=None, rounding=0.0):
    """Draws a scene (dict with background and objects) anti-aliased; returns a PIL RGB image.
    rounding > 0 rounds every object's corners (round_corners, σ = rounding × the image side)."""
    if supersample is None:
        supersample = 4 if image_size <= 512 else 2
    big = image_size * supersample
    coverage = Image.new("L", (big, big), 0)
    paint = Image.new("RGB", (big, big), (0, 0, 0))
    for obj in scene["objects"]:
        rgb = tuple(int(v) for v in obj["rgb"])
        fills, holes = shape_polygons(obj)
        # PIL puts pixel centres on integers; our coordinates put them at +0.5.
        to_big = lambda poly: [tuple(p) for p in (poly * supersample - 0.5)]
        mask = Image.new("L", (big, big), 0)
        draw_mask = ImageDraw.Draw(mask)
        for poly in fills:
            draw_mask.polygon(to_big(poly), fill=255)
        for poly in holes:
            draw_mask.polygon(to_big(poly), fill=0)
        if rounding > 0:  # blur only around the object (a whole-image blur per object is slow)
            x0, y0, x1, y1 = mask.getbbox() or (0, 0, 1, 1)
            margin = int(3 * rounding * big) + 2
            box = (max(0, x0 - margin), max(0, y0 - margin), min(big, x1 + margin),
                   min(big, y1 + margin))
            mask.paste(round_corners(mask.crop(box), rounding * big), box)
        # objects never overlap, so each one's mask is simply painted over the others
        coverage.paste(255, mask=mask)
        paint.paste(rgb, mask=mask)
    size = (image_size, image_size)
    alpha = np.asarray(coverage.resize(size, Image.BOX), np.float32)[..., None] / 255
    premultiplied = np.asarray(paint.resize(size, Image.BOX), np.float32)
    pixels = render_background(scene["background"], image_size) * (1 - alpha) + premultiplied
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def finish_scene(rng, objects, image_size, background=None):
    """Gives each object its jittered colour and returns the full scene dict."""
    for obj in objects:
        base = np.asarray(COLORS[obj["color"]], float)
        obj["rgb"] = [float(v) for v in
                      np.clip(base + rng.uniform(-COLOR_JITTER, COLOR_JITTER, 3), 0, 255)]
        obj["center"] = [float(v) for v in obj["center"]]
        box = obj["bbox"]
        obj["bbox"] = [float(v) for v in box]
    return {"image_size": image_size, "background": background or random_background(rng),
            "objects": objects}


# ---------------------------------------------------------------------------------------------
# Public API


def make_rng(rng_or_seed):
    """A numpy Generator from a Generator, an int seed or a (seed, index) pair."""
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    if isinstance(rng_or_seed, (tuple, list)):
        return np.random.default_rng([int(v) for v in rng_or_seed])
    return np.random.default_rng(int(rng_or_seed))


def sample_spec(rng_or_seed, category=None, size=256, split="train", mention_colors=None):
    """The caption and scene of one training pair, without drawing it: (caption, spec)."""
    rng = make_rng(rng_or_seed)
    if category is None:
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
    if mention_colors is None:
        mention_colors = bool(rng.uniform() < 0.5)
    for _ in range(1000):
        requirement = random_requirement(rng, category, mention_colors)
        if split is None or composition_key(category, requirement["objects"],
                                            requirement["relation"]) is None:
            break
        if is_held_out(category, requirement["objects"], requirement["relation"]) == (
                split == "eval"):
            break
    caption = caption_for(category, requirement["objects"], requirement["relation"])
    scene = finish_scene(rng, scene_for(rng, requirement, size), size)
    return caption, {"caption": caption, "category": category, "requirement": requirement,
                     **scene}


def sample(rng_or_seed, category=None, size=256, split="train", mention_colors=None):
    """One training pair: (PIL image, caption, spec). rng_or_seed: a numpy Generator, an int or a
    (seed, index) pair (the dataset's pairs are sample((seed, index))). category: one of
    CATEGORIES or None (uniform). split: "train" avoids the held-out compositions, "eval" keeps
    only them, None allows all. mention_colors (None: 50% chance) adds colours to counting and
    position captions. spec holds the requirement and the drawn scene (objects with shape, color,
    rgb, center, size, rotation and bbox in pixels; background). The same seed gives the same
    scene at every size, scaled."""
    caption, spec = sample_spec(rng_or_seed, category, size, split, mention_colors)
    return render(spec, size), caption, spec


def all_requirements(category, mention_colors=False):
    """Every distinct requirement of a category (GenEval forms unless mention_colors)."""
    found = []
    if category == "single_object":
        found = [[(s, None, 1)] for s in SHAPES]
    elif category == "colors":
        found = [[(s, c, 1)] for s in SHAPES for c in COLORS]
    elif category == "counting":
        colors = list(COLORS) if mention_colors else [None]
        found = [[(s, c, n)] for s in SHAPES for c in colors for n in range(1, 5)]
    elif category == "two_object":
        found = [[(a, None, 1), (b, None, 1)] for a in SHAPES for b in SHAPES if a != b]
    elif category == "color_attr":
        found = [[(a, ca, 1), (b, cb, 1)] for a in SHAPES for b in SHAPES if a != b
                 for ca in COLORS for cb in COLORS if ca != cb]
    elif category == "position":
        pairs = [(None, None)] if not mention_colors else [
            (ca, cb) for ca in COLORS for cb in COLORS if ca != cb]
        return [{"category": category, "relation": rel, "objects": [
            {"shape": a, "color": ca, "count": 1}, {"shape": b, "color": cb, "count": 1}]}
            for a in SHAPES for b in SHAPES if a != b for rel in RELATIONS for ca, cb in pairs]
    return [{"category": category, "relation": None,
             "objects": [{"shape": s, "color": c, "count": n} for s, c, n in objs]}
            for objs in found]


def make_prompt_set(n, seed):
    """n held-out evaluation prompts in GenEval's forms, balanced over the six categories:
    a list of (category, prompt, requirement). Compositional categories use only held-out
    compositions; the others cycle through every distinct prompt."""
    rng = np.random.default_rng([int(seed), 7919])
    result = []
    for index, category in enumerate(CATEGORIES):
        want = n // len(CATEGORIES) + (1 if index < n % len(CATEGORIES) else 0)
        pool = [r for r in all_requirements(category)
                if composition_key(category, r["objects"], r["relation"]) is None
                or is_held_out(category, r["objects"], r["relation"])]
        chosen = []
        while len(chosen) < want:
            chosen += [pool[i] for i in rng.permutation(len(pool))]
        for requirement in chosen[:want]:
            prompt = caption_for(category, requirement["objects"], requirement["relation"])
            result.append((category, prompt, requirement))
    return result
