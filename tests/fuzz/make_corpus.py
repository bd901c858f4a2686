#!/usr/bin/env python3
# make_corpus.py: writes the fuzz seed corpora in tests/fuzz/corpus/<target>/ (small valid and
# near-valid inputs; standard library only, so it runs anywhere). Rerun after changing it.
import json
import os
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
CORPUS = os.path.join(HERE, "corpus")

# The tiny model the prompt target loads (tests/fuzz/model/unet.json).
CONTEXT_DIM = 8
POOLED_DIM = 6


def safetensors(tensors, metadata=None, pad=True):
    """tensors: list of (name, dtype, shape, raw bytes); returns the file's bytes."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def f32(values):
    return struct.pack(f"<{len(values)}f", *values)


def f16(values):
    return struct.pack(f"<{len(values)}e", *values)


def bf16(values):
    return b"".join(struct.pack("<f", v)[2:] for v in values)


def write(target, name, data):
    folder = os.path.join(CORPUS, target)
    os.makedirs(folder, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(os.path.join(folder, name), mode) as f:
        f.write(data)


def safetensors_corpus():
    ramp = [0.5 * i - 1 for i in range(12)]
    valid = safetensors([("a.weight", "F32", [3, 4], f32(ramp)),
                         ("a.bias", "F32", [3], f32(ramp[:3]))], {"format": "pt"})
    write("safetensors", "valid-f32", valid)
    write("safetensors", "valid-f16-bf16", safetensors([
        ("h", "F16", [2, 2], f16([1.0, -2.0, 0.5, 65504.0])),
        ("b", "BF16", [4], bf16([1.0, -3.0, 1e30, 0.0]))]))
    write("safetensors", "valid-scalar-empty", safetensors([
        ("scalar", "F32", [], f32([7.0])), ("empty", "F32", [0, 5], b""),
        ("norm.weight", "F32", [2], f32([1.0, 1.0]))]))
    write("safetensors", "valid-metadata-only", safetensors([], {"k": "v", "format": "pt"}))
    write("safetensors", "valid-4d", safetensors([("conv.weight", "F32", [2, 1, 1, 2],
                                                    f32([1, 2, 3, 4]))]))
    write("safetensors", "near-truncated", valid[:len(valid) - 10])
    write("safetensors", "near-header-too-long", struct.pack("<Q", 1 << 40) + valid[8:])
    write("safetensors", "near-overlap", safetensors([
        ("x", "F32", [2], f32([1, 2])), ("y", "F32", [2], f32([3, 4]))]).replace(
        b'"data_offsets":[8,16]', b'"data_offsets":[4,12]'))
    write("safetensors", "near-wrong-dtype", safetensors([("x", "F64", [1], struct.pack("<d", 1))]))
    write("safetensors", "near-nan", safetensors([("x", "F32", [2], f32([1.0, float("nan")]))]))
    write("safetensors", "near-shape-mismatch", safetensors([("x", "F32", [3], f32([1, 2]))]))
    write("safetensors", "near-bad-json", struct.pack("<Q", 6) + b'{"x":[')


def config_corpus():
    configs = os.path.join(ROOT, "weights", "configs")
    for name in sorted(os.listdir(configs)):
        if name.endswith(".json"):
            shutil.copy(os.path.join(configs, name), os.path.join(CORPUS, "config", name))
    write("config", "model_index.json", json.dumps({
        "_class_name": "SnapGenPipeline", "unet": ["snapgen", "SnapGenUNet"],
        "decoder": ["snapgen", "SnapGenTinyDecoder"], "conditioning": "conditioning/d.safetensors"}))
    write("config", "near-absurd-channels.json", json.dumps({"block_channels": [1000000000]}))
    write("config", "near-stage-mismatch.json", json.dumps(
        {"block_channels": [32, 64], "down_res_blocks": [1], "channels": [8] * 7}))
    write("config", "near-types.json", json.dumps(
        {"head_dim": "16", "ffn_mult": True, "timesteps": [1.0, 1.5], "separable": 1,
         "latent_clamp": -1, "x": [1, 2.5, None]}))
    write("config", "near-floats.json", '{"ffn_mult": 2.9999999999, "expansion": 1e308, '
          '"in_channels": 16.0, "shift": 1e-400, "default_steps": 1e19, "x": 9.3e18}')


def prompt_input(width, height, steps, guidance, seed, prompt, conditioning, flags):
    """The fuzz_prompt layout: flags u8, width i16, height i16, steps i16, guidance f32, seed u64,
    prompt length u16, prompt bytes, then the conditioning file's bytes."""
    return (struct.pack("<BhhhfQH", flags, width, height, steps, guidance, seed, len(prompt)) +
            prompt + conditioning)


def conditioning(tokens, negative=False, mask=True, pooled=True):
    context = [((i * 7) % 11 - 5) / 5 for i in range(tokens * CONTEXT_DIM)]
    tensors = [("context", "F32", [tokens, CONTEXT_DIM], f32(context))]
    if mask:
        tensors.append(("context_mask", "F32", [tokens], f32([1.0] * (tokens - 1) + [0.0])))
    if pooled:
        tensors.append(("pooled", "F32", [POOLED_DIM], f32([0.1] * POOLED_DIM)))
    if negative:
        tensors.append(("negative_context", "F32", [tokens, CONTEXT_DIM], f32([0.0] * len(context))))
        tensors.append(("negative_pooled", "F32", [POOLED_DIM], f32([0.0] * POOLED_DIM)))
    return safetensors(tensors)


def prompt_corpus():
    use_file, run_to_end = 4, 8
    write("prompt", "default-conditioning", prompt_input(8, 8, 1, 1.0, 5, b"a red circle", b"",
                                                         run_to_end))
    write("prompt", "file-conditioning", prompt_input(8, 8, 1, 1.0, 1, b"x", conditioning(3),
                                                      use_file | run_to_end))
    write("prompt", "file-guidance-negative", prompt_input(8, 8, 1, 3.0, 2, b"cat",
                                                           conditioning(2, negative=True),
                                                           use_file | run_to_end | 2))
    write("prompt", "file-no-mask", prompt_input(64, 64, 4, 2.0, 3, b"",
                                                 conditioning(4, mask=False), use_file))
    write("prompt", "near-no-pooled", prompt_input(16, 16, 1, 1.0, 3, b"",
                                                   conditioning(2, pooled=False), use_file))
    write("prompt", "near-bad-size", prompt_input(70, -8, 0, -1.0, 0, b"", b"", 0))
    write("prompt", "near-big-steps", prompt_input(4096, 4096, 10000, float("nan"), 9, b"", b"", 0))
    write("prompt", "near-bad-utf8", prompt_input(8, 8, 1, 1.0, 4, b"\xff\xfe caf\xc3", b"",
                                                  run_to_end))


def main():
    shutil.rmtree(CORPUS, ignore_errors=True)
    for target in ("safetensors", "config", "prompt"):
        os.makedirs(os.path.join(CORPUS, target))
    safetensors_corpus()
    config_corpus()
    prompt_corpus()
    print(f"wrote {sum(len(f) for _, _, f in os.walk(CORPUS))} seed files in {CORPUS}")


if __name__ == "__main__":
    sys.exit(main())
