#!/usr/bin/env python3
# make_text_model.py: makes the fuzz_prompt target's second model: the tiny UNet and decoder of
# tests/fuzz/model/ plus the small CLIP, OpenCLIP-bigG-like and Gemma-2-like text encoders, their
# tokenizers and a conditioner, as tests/ref/test_text.py builds them (make_small_model), so the
# prompt goes through the tokenizers and encoders. Usage: make_text_model.py OUT_FOLDER
# (PYTHONPATH=weights/recipe; needs torch).
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))
import test_text  # noqa: E402  (its make_small_model and CONDITIONER_CONFIG)


def main():
    out = sys.argv[1]
    with open(os.path.join(HERE, "model", "unet.json")) as f:
        unet = json.load(f)
    unet["context_dim"] = test_text.CONDITIONER_CONFIG["context_dim"]
    unet["pooled_dim"] = test_text.CONDITIONER_CONFIG["pooled_dim"]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(unet, f)
        unet_path = f.name
    try:
        subprocess.run([sys.executable, os.path.join(ROOT, "weights", "recipe",
                                                     "make_random_model.py"),
                        "--unet-config", unet_path,
                        "--decoder-config", os.path.join(HERE, "model", "decoder.json"),
                        "--out", out, "--seed", "9"], check=True, capture_output=True)
    finally:
        os.unlink(unet_path)
    index_path = os.path.join(out, "model_index.json")
    with open(index_path) as f:
        index = json.load(f)
    test_text.make_small_model(out)  # rewrites model_index.json with the text parts only
    with open(index_path) as f:
        index.update(json.load(f))
    with open(index_path, "w") as f:
        json.dump(index, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
