# ShapeWorld prompt parser: caption -> requirement (category, objects, colours, counts, relation).
import re

from .world import COLORS, COUNT_WORDS, PLURALS, RELATIONS, SHAPES

SINGULAR = {plural: shape for shape, plural in PLURALS.items()}
PREFIXES = [["a", "photo", "of"], ["an", "image", "of"], ["a", "picture", "of"]]
# Longest first, so "to the left of" wins over "left of".
RELATION_WORDS = sorted([(["to", "the"] + rel.split(), rel) for rel in ("left of", "right of")]
                        + [(rel.split(), rel) for rel in RELATIONS], key=lambda p: -len(p[0]))


class PromptError(ValueError):
    """A prompt that is not in ShapeWorld's language."""


def _object_phrase(words, at, prompt):
    """Parses '[a|an|one..four] [colour] shape' at words[at]; returns (object, next index)."""
    def word(i):
        if i >= len(words):
            raise PromptError(f"prompt {prompt!r} ends early: expected a shape")
        return words[i]

    lead = word(at)
    if lead in ("a", "an"):
        count = 1
    elif lead in COUNT_WORDS:
        count = COUNT_WORDS.index(lead) + 1
    else:
        raise PromptError(f"unknown word {lead!r} in {prompt!r}: expected a, an or a number word")
    at += 1
    color = None
    if word(at) in COLORS:
        color = word(at)
        at += 1
    noun = word(at)
    if noun in SHAPES:
        shape, plural = noun, False
    elif noun in SINGULAR:
        shape, plural = SINGULAR[noun], True
    else:
        raise PromptError(f"unknown word {noun!r} in {prompt!r}: expected a colour or a shape")
    if plural != (count > 1):
        raise PromptError(f"{lead!r} does not agree with {noun!r} in {prompt!r}")
    if lead in ("a", "an") and lead != ("an" if (color or shape)[0] in "aeiou" else "a"):
        raise PromptError(f"wrong article {lead!r} before {(color or shape)!r} in {prompt!r}")
    return {"shape": shape, "color": color, "count": count}, at + 1, lead in COUNT_WORDS


def parse(prompt):
    """Returns {"category", "objects": [{"shape", "color" (or None), "count"}], "relation"}.
    Position means objects[0] stands in `relation` to objects[1]. Raises PromptError."""
    words = re.sub(r"[.!]+\s*$", "", prompt.strip().lower()).split()
    for prefix in PREFIXES:
        if words[:len(prefix)] == prefix:
            words = words[len(prefix):]
            break
    first, at, counted = _object_phrase(words, 0, prompt)
    if at == len(words):
        if counted:
            category = "counting"
        else:
            category = "colors" if first["color"] else "single_object"
        return {"category": category, "objects": [first], "relation": None}

    relation = None
    if words[at] == "and":
        at += 1
    else:
        for phrase, name in RELATION_WORDS:
            if words[at:at + len(phrase)] == phrase:
                relation, at = name, at + len(phrase)
                break
        else:
            raise PromptError(f"unknown word {words[at]!r} in {prompt!r}: expected 'and' or a "
                              "relation (left of, right of, above, below)")
    second, at, counted_second = _object_phrase(words, at, prompt)
    if at != len(words):
        raise PromptError(f"unexpected words {' '.join(words[at:])!r} at the end of {prompt!r}")
    if counted or counted_second:
        raise PromptError(f"number words only go in single-phrase counting prompts: {prompt!r}")
    if first["shape"] == second["shape"]:
        raise PromptError(f"the two objects of {prompt!r} must be different shapes")
    if relation:
        category = "position"
    elif first["color"] and second["color"]:
        category = "color_attr"
    elif not first["color"] and not second["color"]:
        category = "two_object"
    else:
        raise PromptError(f"give both objects a colour or neither: {prompt!r}")
    if (first["color"] is None) != (second["color"] is None):
        raise PromptError(f"give both objects a colour or neither: {prompt!r}")
    return {"category": category, "objects": [first, second], "relation": relation}
