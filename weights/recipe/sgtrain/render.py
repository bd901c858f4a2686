# render.py: ShapeWorld rendering and ShapeEval for the pipeline's worker processes (no torch).
"""Worker functions for multiprocessing pools. They import neither torch nor CUDA, so a pool forked
before CUDA starts can render and evaluate while the main process trains."""
import numpy as np

from shapeworld import evaluate, world


def render_item(job):
    """job = (seed, index, low_size, high_size): the training pair sample((seed, index)) drawn at
    low_size (the encoder's input) and, when high_size > 0, at high_size (the decoder's target).
    Returns (index, low uint8 [S,S,3], high uint8 [H,H,3] or None, caption, category)."""
    seed, index, low_size, high_size = job
    caption, spec = world.sample_spec((seed, index), None, low_size)
    low = np.asarray(world.render(spec, low_size), np.uint8)
    high = None
    if high_size:
        _, spec_high = world.sample_spec((seed, index), None, high_size)
        high = np.asarray(world.render(spec_high, high_size), np.uint8)
    return index, low, high, caption, spec["category"]


def evaluate_item(job):
    """job = (prompt, uint8 image [H,W,3]) -> (passed, category, reason)."""
    prompt, image = job
    passed, category, details = evaluate(prompt, image)
    return bool(passed), category, str(details.get("reason", ""))
