# Writes ShapeWorld samples (PNG + captions.jsonl) or the held-out prompt set to a folder.
import argparse
import json
import os
import sys
import time

from . import world


def write_samples(out_dir, count, seed, start=0, size=256, category=None, split="train"):
    """Writes samples start..start+count-1 as NNNNNNN.png and their captions and specs as
    captions-START-END.jsonl. Existing PNGs are kept (so an interrupted run resumes)."""
    os.makedirs(out_dir, exist_ok=True)
    jsonl_path = os.path.join(out_dir, f"captions-{start:07d}-{start + count:07d}.jsonl")
    with open(jsonl_path + ".part", "w") as jsonl:
        for index in range(start, start + count):
            caption, spec = world.sample_spec((seed, index), category, size, split)
            name = f"{index:07d}.png"
            path = os.path.join(out_dir, name)
            if not os.path.exists(path):
                world.render(spec, size).save(path + ".part.png")
                os.replace(path + ".part.png", path)
            jsonl.write(json.dumps({"index": index, "seed": seed, "file": name,
                                    "caption": caption, "category": spec["category"],
                                    "spec": spec}) + "\n")
    os.replace(jsonl_path + ".part", jsonl_path)
    return jsonl_path


def write_prompt_set(path, count, seed):
    with open(path, "w") as out:
        for category, prompt, requirement in world.make_prompt_set(count, seed):
            out.write(json.dumps({"category": category, "prompt": prompt,
                                  "requirement": requirement}) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Write ShapeWorld training samples, or the held-out evaluation prompts.")
    parser.add_argument("out", help="output folder (samples) or .jsonl file (--prompt-set)")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first sample index")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--category", choices=world.CATEGORIES, default=None)
    parser.add_argument("--split", choices=["train", "eval", "all"], default="train")
    parser.add_argument("--prompt-set", action="store_true",
                        help="write --count held-out evaluation prompts as JSONL instead")
    args = parser.parse_args(argv)
    started = time.time()
    if args.prompt_set:
        write_prompt_set(args.out, args.count, args.seed)
        print(f"wrote {args.count} prompts to {args.out}")
        return 0
    split = None if args.split == "all" else args.split
    path = write_samples(args.out, args.count, args.seed, args.start, args.size, args.category,
                         split)
    print(f"wrote {args.count} samples to {args.out} ({path}) in {time.time() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
