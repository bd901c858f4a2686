# ShapeEval: exact evaluator of ShapeWorld prompts (colour segmentation, shape features, rules).
import math

import numpy as np
from PIL import Image

from .prompts import parse
from .world import COLORS, relations_between

WORK_SIZE = 256  # larger images are box-filtered down to this longer side first
CHROMA_MIN = 70.0  # max - min channel (0..255); backgrounds stay well under it
HUE_TOLERANCE_DEG = 25.0  # farther than this from every palette hue: no colour
MIN_AREA_FRACTION = 0.002  # components smaller than this fraction of the image are noise
RAY_COUNT = 64
# Corner roundings (Gaussian σ of world.round_corners as a fraction of the object's size) with a
# prototype each: a decoder working from a coarse latent rounds corners, and a rounded cross is
# still a cross.
ROUNDING_LEVELS = (0.0, 0.035, 0.07, 0.105)


def _hue_degrees(rgb):
    """Hue in degrees (HSV convention) of an (..., 3) float array; 0 where grey."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high = np.maximum(np.maximum(r, g), b)
    low = np.minimum(np.minimum(r, g), b)
    chroma = np.maximum(high - low, 1e-6)
    hue = np.where(high == r, ((g - b) / chroma) % 6,
                   np.where(high == g, (b - r) / chroma + 2, (r - g) / chroma + 4))
    return hue * 60.0


PALETTE_NAMES = list(COLORS)
PALETTE_HUES = _hue_degrees(np.asarray([COLORS[c] for c in PALETTE_NAMES], np.float64))


def load_pixels(image):
    """(RGB float32 array 0..255 box-filtered to WORK_SIZE, input pixels per working pixel) from a
    PIL image, a uint8 array or a path."""
    if isinstance(image, str):
        image = Image.open(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, np.uint8))
    image = image.convert("RGB")
    scale = 1.0
    if max(image.size) > WORK_SIZE:
        scale = max(image.size) / WORK_SIZE
        size = (max(1, round(image.size[0] / scale)), max(1, round(image.size[1] / scale)))
        image = image.resize(size, Image.BOX)
    return np.asarray(image, np.float32), scale


def color_labels(pixels):
    """Per pixel: index into PALETTE_NAMES, or -1 for background / no colour. A pixel has a colour
    when its chroma is high and its hue is within HUE_TOLERANCE_DEG of that colour's hue (the
    nearest one). Blends with the near-grey background keep their hue, so soft edges stay right."""
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    high = np.maximum(np.maximum(r, g), b)
    low = np.minimum(np.minimum(r, g), b)
    colored = (high - low) >= CHROMA_MIN
    labels = np.full(r.shape, -1, np.int64)
    hue = _hue_degrees(pixels[colored])
    labels[colored] = HUE_TABLE[np.clip((hue * HUE_TABLE_STEPS / 360).astype(np.int64), 0,
                                        HUE_TABLE_STEPS - 1)]
    return labels


def _hue_table(steps):
    """Palette index (or -1) for each hue bin."""
    centers = (np.arange(steps) + 0.5) * 360 / steps
    distance = np.abs(centers[:, None] - PALETTE_HUES[None, :])
    distance = np.minimum(distance, 360 - distance)
    return np.where(distance.min(1) <= HUE_TOLERANCE_DEG, distance.argmin(1), -1)


HUE_TABLE_STEPS = 720
HUE_TABLE = _hue_table(HUE_TABLE_STEPS)


NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _combine_neighbours(mask, combine):
    """combine(mask, each of its 8 neighbour-shifted copies); outside the image is False."""
    height, width = mask.shape
    padded = np.pad(mask, 1)
    out = mask.copy()
    for dy, dx in NEIGHBOURS:
        combine(out, padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width], out=out)
    return out


def open_mask(mask):
    """Morphological opening with a 3x3 square: removes the thin anti-aliased rims of edges."""
    eroded = _combine_neighbours(mask, np.logical_and)
    return _combine_neighbours(eroded, np.logical_or) & mask


def runs_of(mask):
    """Horizontal runs of a boolean mask: arrays row, start, end (exclusive), row-major order."""
    height, width = mask.shape
    padded = np.zeros((height, width + 2), np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)
    rows, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)
    return rows, starts, ends


def label_runs(mask, diagonal=True):
    """Connected components (8-connected if diagonal, else 4) of a boolean mask, found by joining
    overlapping runs of neighbouring rows. Returns (rows, starts, ends, component id per run)."""
    rows, starts, ends = runs_of(mask)
    parent = list(range(len(rows)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    touch = 0 if diagonal else 1
    row_first = np.searchsorted(rows, np.arange(mask.shape[0] + 1)).tolist()
    starts_list, ends_list = starts.tolist(), ends.tolist()
    for y in range(1, mask.shape[0]):
        i, i_end = row_first[y - 1], row_first[y]
        j, j_end = row_first[y], row_first[y + 1]
        while i < i_end and j < j_end:
            if starts_list[i] + touch <= ends_list[j] and starts_list[j] + touch <= ends_list[i]:
                root_i, root_j = find(i), find(j)
                if root_i != root_j:
                    parent[max(root_i, root_j)] = min(root_i, root_j)
            if ends_list[i] < ends_list[j]:
                i += 1
            else:
                j += 1
    roots = np.array([find(i) for i in range(len(rows))], np.int64)
    _, ids = np.unique(roots, return_inverse=True)
    return rows, starts, ends, ids


def _paint_runs(shape, rows, starts, ends, offset=(0, 0)):
    crop = np.zeros(shape, bool)
    for y, x0, x1 in zip(rows.tolist(), starts.tolist(), ends.tolist()):
        crop[y - offset[0], x0 - offset[1]:x1 - offset[1]] = True
    return crop


def _hull_area(points):
    """Area of the convex hull of (N, 2) points (Andrew's monotone chain)."""
    points = sorted(set(map(tuple, points.tolist())))
    if len(points) < 3:
        return 0.0

    def half(seq):
        chain = []
        for p in seq:
            while len(chain) >= 2 and ((chain[-1][0] - chain[-2][0]) * (p[1] - chain[-2][1]) -
                                       (chain[-1][1] - chain[-2][1]) * (p[0] - chain[-2][0])) <= 0:
                chain.pop()
            chain.append(p)
        return chain

    hull = np.asarray(half(points)[:-1] + half(points[::-1])[:-1], np.float64)
    x, y = hull[:, 0], hull[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _radial_profile(filled, center):
    """Distance from the centre to the shape's outer edge along RAY_COUNT rays (bilinear)."""
    height, width = filled.shape
    field = np.pad(filled.astype(np.float32), 1)
    step = 0.25
    radii = np.arange(0, math.hypot(height, width) + 1, step, dtype=np.float32)
    angles = np.arange(RAY_COUNT, dtype=np.float32) * (2 * math.pi / RAY_COUNT)
    # Pixel (y, x) has its centre at (y + 0.5, x + 0.5); the padded field shifts by one.
    xs = center[1] + np.cos(angles)[:, None] * radii[None, :] - 0.5 + 1
    ys = center[0] + np.sin(angles)[:, None] * radii[None, :] - 0.5 + 1
    x0 = np.clip(np.floor(xs).astype(np.int64), 0, width)
    y0 = np.clip(np.floor(ys).astype(np.int64), 0, height)
    fx = np.clip(xs - x0, 0, 1)
    fy = np.clip(ys - y0, 0, 1)
    value = (field[y0, x0] * (1 - fx) * (1 - fy) + field[y0, x0 + 1] * fx * (1 - fy) +
             field[y0 + 1, x0] * (1 - fx) * fy + field[y0 + 1, x0 + 1] * fx * fy)
    inside = value >= 0.5
    last = np.where(inside.any(1), inside.shape[1] - 1 - np.argmax(inside[:, ::-1], 1), 0)
    return (last + 1) * step


def shape_features(rows, starts, ends):
    """Scale-free features of one component given by its runs."""
    top, left = int(rows.min()), int(starts.min())
    height, width = int(rows.max()) - top + 1, int(ends.max()) - left
    crop = _paint_runs((height + 2, width + 2), rows, starts, ends, (top - 1, left - 1))
    # Holes: background parts that do not reach the crop's border (4-connected background).
    b_rows, b_starts, b_ends, b_ids = label_runs(~crop, diagonal=False)
    outside_ids = set(b_ids[(b_rows == 0)].tolist())
    hole_runs = ~np.isin(b_ids, list(outside_ids))
    hole_area = int((b_ends - b_starts)[hole_runs].sum())
    filled = crop | _paint_runs(crop.shape, b_rows[hole_runs], b_starts[hole_runs],
                                b_ends[hole_runs])
    area = int((ends - starts).sum())
    filled_area = area + hole_area
    corners = np.concatenate([np.stack([starts, rows], 1), np.stack([ends, rows], 1),
                              np.stack([starts, rows + 1], 1), np.stack([ends, rows + 1], 1)])
    ys, xs = np.nonzero(filled)
    center = (ys.mean() + 0.5, xs.mean() + 0.5)
    profile = _radial_profile(filled, center)
    spectrum = np.abs(np.fft.rfft(profile)) / max(float(profile.sum()), 1e-6)
    return {
        "area": area,
        "hole_ratio": hole_area / filled_area,
        "extent": filled_area / (height * width),
        "solidity": filled_area / max(_hull_area(corners), 1.0),
        "aspect": width / height,
        "harmonics": [float(v) for v in spectrum[1:7]],
        "profile_min": float(profile.min() / profile.mean()),
    }


# Mean features of renders (sizes 0.15-0.5 of the image, rotations within +-6 degrees), one row per
# corner rounding in ROUNDING_LEVELS; regenerate with `python3 -m shapeworld.validate --prototypes`.
PROTOTYPES = {shape: np.array(vectors) for shape, vectors in {
    "circle": [
        [0.000, 0.788, 0.978, 0.000, 0.985, 0.001, 0.000, 0.001, 0.000, 0.001, 0.001],
        [0.000, 0.785, 0.978, 0.000, 0.987, 0.000, 0.000, 0.001, 0.001, 0.001, 0.000],
        [0.000, 0.790, 0.979, 0.000, 0.989, 0.001, 0.001, 0.001, 0.001, 0.001, 0.001],
        [0.000, 0.783, 0.978, 0.000, 0.989, 0.001, 0.001, 0.001, 0.001, 0.001, 0.000],
    ],
    "square": [
        [0.000, 0.905, 0.981, 0.000, 0.885, 0.001, 0.001, 0.000, 0.069, 0.001, 0.001],
        [0.000, 0.906, 0.981, 0.003, 0.886, 0.001, 0.001, 0.001, 0.068, 0.001, 0.001],
        [0.000, 0.915, 0.983, 0.005, 0.891, 0.001, 0.001, 0.001, 0.062, 0.001, 0.001],
        [0.000, 0.909, 0.983, 0.001, 0.900, 0.001, 0.001, 0.001, 0.054, 0.001, 0.001],
    ],
    "triangle": [
        [0.000, 0.528, 0.954, 0.105, 0.786, 0.001, 0.001, 0.135, 0.002, 0.002, 0.050],
        [0.000, 0.559, 0.957, 0.093, 0.789, 0.001, 0.001, 0.133, 0.001, 0.001, 0.047],
        [0.000, 0.617, 0.961, 0.079, 0.800, 0.001, 0.001, 0.121, 0.001, 0.001, 0.036],
        [0.000, 0.678, 0.965, 0.061, 0.820, 0.001, 0.001, 0.101, 0.001, 0.001, 0.021],
    ],
    "star": [
        [0.000, 0.443, 0.620, 0.028, 0.716, 0.001, 0.002, 0.003, 0.003, 0.154, 0.002],
        [0.000, 0.495, 0.685, 0.025, 0.756, 0.001, 0.003, 0.003, 0.002, 0.139, 0.002],
        [0.000, 0.603, 0.819, 0.017, 0.822, 0.001, 0.002, 0.002, 0.002, 0.095, 0.002],
        [0.000, 0.729, 0.949, 0.015, 0.910, 0.001, 0.002, 0.002, 0.001, 0.042, 0.002],
    ],
    "heart": [
        [0.000, 0.638, 0.916, 0.136, 0.420, 0.019, 0.085, 0.100, 0.005, 0.026, 0.004],
        [0.000, 0.654, 0.927, 0.157, 0.525, 0.017, 0.082, 0.097, 0.003, 0.022, 0.002],
        [0.000, 0.689, 0.940, 0.200, 0.613, 0.015, 0.078, 0.088, 0.002, 0.014, 0.002],
        [0.000, 0.716, 0.951, 0.223, 0.680, 0.012, 0.074, 0.075, 0.001, 0.006, 0.003],
    ],
    "diamond": [
        [0.000, 0.553, 0.949, -0.319, 0.862, 0.001, 0.065, 0.001, 0.072, 0.001, 0.016],
        [0.000, 0.580, 0.952, -0.298, 0.865, 0.001, 0.064, 0.001, 0.069, 0.001, 0.015],
        [0.000, 0.643, 0.960, -0.275, 0.880, 0.001, 0.062, 0.001, 0.055, 0.001, 0.013],
        [0.000, 0.697, 0.963, -0.259, 0.900, 0.001, 0.060, 0.002, 0.037, 0.001, 0.008],
    ],
    "ring": [
        [0.296, 0.788, 0.978, 0.000, 0.985, 0.001, 0.000, 0.001, 0.000, 0.001, 0.001],
        [0.292, 0.785, 0.978, 0.000, 0.987, 0.000, 0.000, 0.001, 0.001, 0.001, 0.000],
        [0.283, 0.790, 0.979, 0.000, 0.989, 0.001, 0.001, 0.001, 0.001, 0.001, 0.001],
        [0.273, 0.781, 0.977, 0.000, 0.986, 0.001, 0.000, 0.001, 0.002, 0.001, 0.001],
    ],
    "cross": [
        [0.000, 0.545, 0.717, 0.005, 0.594, 0.001, 0.001, 0.002, 0.168, 0.001, 0.002],
        [0.000, 0.550, 0.758, 0.005, 0.646, 0.001, 0.001, 0.003, 0.159, 0.002, 0.002],
        [0.000, 0.550, 0.809, 0.000, 0.716, 0.001, 0.001, 0.001, 0.136, 0.001, 0.001],
        [0.000, 0.563, 0.873, 0.001, 0.796, 0.001, 0.001, 0.001, 0.103, 0.001, 0.001],
    ],
}.items()}
# How far a feature may plausibly wander: distances are measured in these units.
FEATURE_SCALES = np.array([0.04, 0.08, 0.05, 0.08, 0.06, 0.01, 0.02, 0.02, 0.02, 0.02, 0.02])
MAX_SHAPE_DISTANCE = 4.5  # farther than this from every prototype: not a known shape
# Counting's "no more than N" also counts blobs this near to the shape (doubt goes against a pass).
LENIENT_SHAPE_DISTANCE = 8.0


def feature_vector(features):
    """hole ratio, extent, solidity, log aspect, profile min, radial harmonics 1..6."""
    return np.array([features["hole_ratio"], features["extent"], features["solidity"],
                     math.log(features["aspect"]), features["profile_min"]]
                    + features["harmonics"][:6])


def classify_shape(features):
    """(nearest prototype's shape, distance to it)."""
    vector = feature_vector(features)
    best, best_distance = None, float("inf")
    for shape, prototypes in PROTOTYPES.items():
        distances = np.sqrt((((vector - prototypes) / FEATURE_SCALES) ** 2).sum(axis=1))
        distance = float(distances.min())
        if distance < best_distance:
            best, best_distance = shape, distance
    return best, best_distance


def detect_objects(image):
    """Every coloured object in the image, largest first: dicts with shape (None: unknown), color,
    bbox (x0, y0, x1, y1 in the input image's pixels), area (pixels of the working image), nearest
    (the nearest prototype's shape) and distance (to it)."""
    pixels, scale = load_pixels(image)
    labels = color_labels(pixels)
    height, width = labels.shape
    min_area = MIN_AREA_FRACTION * height * width
    found = []
    for color_index, color in enumerate(PALETTE_NAMES):
        mask = open_mask(labels == color_index)
        if not mask.any():
            continue
        rows, starts, ends, ids = label_runs(mask)
        areas = np.bincount(ids, weights=ends - starts)
        for component in np.nonzero(areas >= min_area)[0]:
            mine = ids == component
            features = shape_features(rows[mine], starts[mine], ends[mine])
            nearest, distance = classify_shape(features)
            shape = nearest if distance <= MAX_SHAPE_DISTANCE else None
            box = [float(starts[mine].min()), float(rows[mine].min()),
                   float(ends[mine].max()), float(rows[mine].max() + 1)]
            found.append({"shape": shape, "color": color, "bbox": [v * scale for v in box],
                          "area": int(areas[component]), "nearest": nearest,
                          "distance": round(distance, 3)})
    found.sort(key=lambda o: -o["area"])
    return found


def check(requirement, objects):
    """GenEval's rules on detected objects: (passed, reason). For each object phrase the
    `count` largest objects of that shape must exist and carry its colour; counting also needs no
    more objects that might be that shape; position compares the largest of the first shape with
    the largest of the second."""
    groups = []
    for req in requirement["objects"]:
        of_shape = [o for o in objects if o["shape"] == req["shape"]]
        found = of_shape[:req["count"]]
        name = (req["color"] + " " if req["color"] else "") + req["shape"]
        if len(found) < req["count"]:
            return False, f"expected {req['count']} {name}, found {len(of_shape)} {req['shape']}"
        if req["color"]:
            wrong = [o["color"] for o in found if o["color"] != req["color"]]
            if wrong:
                return False, f"expected {name}, found {' and '.join(wrong)} {req['shape']}"
        if requirement["category"] == "counting":
            maybe = [o for o in objects if o["nearest"] == req["shape"]
                     and o["distance"] <= LENIENT_SHAPE_DISTANCE]
            if len(maybe) > req["count"]:
                return False, (f"expected exactly {req['count']} {req['shape']}, found "
                               f"{len(maybe)} that may be one")
        groups.append(found)
    if requirement["relation"]:
        for target in groups[1]:
            relations = relations_between(groups[0][0]["bbox"], target["bbox"])
            if requirement["relation"] not in relations:
                return False, (f"expected {requirement['objects'][0]['shape']} "
                               f"{requirement['relation']} {requirement['objects'][1]['shape']}, "
                               f"found {' and '.join(sorted(relations)) or 'no relation'}")
    return True, "ok"


def evaluate(prompt, image):
    """Does the image satisfy the prompt? Returns (passed, category, details) where details has
    the parsed requirement, the detected objects and the reason."""
    requirement = parse(prompt) if isinstance(prompt, str) else prompt
    objects = detect_objects(image)
    passed, reason = check(requirement, objects)
    return passed, requirement["category"], {"requirement": requirement, "objects": objects,
                                             "reason": reason}
