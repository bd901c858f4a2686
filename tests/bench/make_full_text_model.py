#!/usr/bin/env python3
# make_full_text_model.py: a full-size model folder (three text encoders + UNet + decoder), random.
"""Adds the published full-size text encoders (CLIP-L, OpenCLIP bigG, Gemma-2-2b: random bf16
files, as tests/ref/test_text.py writes them), small learned tokenizers and a full-size
conditioner (context 1024, pooled 768 + 1280) to a copy of a random UNet + decoder folder, so that
`snapgen bench --model OUT` times the whole pipeline's components in one run (a benchmark aid,
not a test). About 9 GB on disk. Run inside the build environment:

    python3 tests/bench/make_full_text_model.py --from build-bench/random-full --out /tmp/full
    build/engine/snapgen bench --model /tmp/full --size 1024 --repeat 1

The tokenizers are small (learned on test_text's corpus), so a prompt's token count differs from
the real tokenizers': CLIP always runs 77 positions; Gemma runs the real tokens (at most 256).
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "ref"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "weights", "recipe"))
import test_text as tt  # noqa: E402  (its writers of random full-size files)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", required=True,
                        help="a model folder with unet/, decoder/, scheduler/")
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-tokens", type=int, default=256, help="Gemma's token limit")
    args = parser.parse_args()
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    for part in ("unet", "decoder", "scheduler"):
        os.symlink(os.path.abspath(os.path.join(args.source, part)), os.path.join(args.out, part))
    vocab_l = tt.make_clip_tokenizer(os.path.join(args.out, "tokenizer"), 77)
    vocab_g = tt.make_clip_tokenizer(os.path.join(args.out, "tokenizer_2"), 77, pad="!")
    vocab_gemma = tt.make_gemma_tokenizer(os.path.join(args.out, "tokenizer_3"))
    configs = [("text_encoder", tt.clip_module.CLIP_L_CONFIG, tt.clip_specs, vocab_l),
               ("text_encoder_2", tt.clip_module.CLIP_BIGG_CONFIG, tt.clip_specs, vocab_g),
               ("text_encoder_3", tt.gemma_module.GEMMA2_2B_CONFIG, tt.gemma_specs, vocab_gemma)]
    for seed, (component, config, specs, vocab) in enumerate(configs, 21):
        # the tokenizer's ids stay below its own vocabulary; the embedding keeps the full size
        assert vocab <= config["vocab_size"]
        path, seconds = tt.write_folder(os.path.join(args.out, component), config,
                                        specs(config), seed)
        print(f"{component}: {os.path.getsize(path) / 2**30:.2f} GiB written in {seconds:.0f} s",
              flush=True)
    widths = [tt.clip_module.CLIP_L_CONFIG["hidden_size"],
              tt.clip_module.CLIP_BIGG_CONFIG["hidden_size"],
              tt.gemma_module.GEMMA2_2B_CONFIG["hidden_size"]]
    config = {"context_dim": 1024,
              "pooled_dim": tt.clip_module.CLIP_L_CONFIG["projection_dim"]
              + tt.clip_module.CLIP_BIGG_CONFIG["projection_dim"],
              "encoders": [dict(e) for e in tt.CONDITIONER_CONFIG["encoders"]]}
    config["encoders"][2]["max_tokens"] = args.max_tokens
    conditioner = tt.randomize(tt.conditioner_module.SnapGenConditioner(config, widths))
    os.makedirs(os.path.join(args.out, "conditioner"))
    with open(os.path.join(args.out, "conditioner", "config.json"), "w") as f:
        json.dump(config, f)
    tt.stio.save_file(os.path.join(args.out, "conditioner", "diffusion_pytorch_model.safetensors"),
                      tt.weights_of(conditioner))
    tt.write_model_index(args.out, ["text_encoder", "text_encoder_2", "text_encoder_3"])
    with open(os.path.join(args.out, "model_index.json")) as f:
        index = json.load(f)
    with open(os.path.join(args.source, "model_index.json")) as f:
        index.update({k: v for k, v in json.load(f).items() if k != "_class_name"})
    with open(os.path.join(args.out, "model_index.json"), "w") as f:
        json.dump(index, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
