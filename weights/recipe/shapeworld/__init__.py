# ShapeWorld: a procedural text-to-image world with GenEval-style prompts and an exact evaluator.
from .world import CATEGORIES, COLORS, SHAPES, make_prompt_set, render, sample, sample_spec
from .prompts import PromptError, parse
from .shapeeval import evaluate

__all__ = ["CATEGORIES", "COLORS", "SHAPES", "PromptError", "evaluate", "make_prompt_set", "parse",
           "render", "sample", "sample_spec"]
