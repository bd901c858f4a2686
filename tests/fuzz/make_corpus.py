#!/usr/bin/env python3
# make_corpus.py: writes the fuzz seed corpora in tests/fuzz/corpus/<target>/ (small valid and
# near-valid inputs) and the small tokenizer files in tests/fuzz/tokenizers/ (standard library
# only, so it runs anywhere). Rerun after changing it.
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
    # Found by the fuzzer: with shift 0.2 the old time-shift formula gave 1 + 2^-52 at t = 1.
    write("config", "found-shift-below-one.json", json.dumps(
        {"timesteps": [1.0, 0.75, 0.5], "shift": 0.2, "default_steps": 5, "default_guidance": 1.0}))


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


TOKENIZERS = os.path.join(HERE, "tokenizers")
CLIP_WORDS = ["the", "a", "red", "circle", "on", "blue", "square", "photo", "of", "cat", "<3"]


def byte_characters():
    """GPT-2's byte -> printable character table, as CLIP's vocabulary uses it."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + \
        list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def small_clip():
    """A tiny CLIP-layout vocabulary: every byte character with and without </w>, the merges
    that spell CLIP_WORDS, and the two special tokens."""
    chars = byte_characters()
    vocab, merges = {}, []
    for b in range(256):
        vocab[chars[b]] = len(vocab)
    for b in range(256):
        vocab[chars[b] + "</w>"] = len(vocab)
    for word in CLIP_WORDS:
        pieces = [chars[c] for c in word.encode()]
        pieces[-1] += "</w>"
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            if merged not in vocab:
                merges.append(f"{pieces[0]} {pieces[1]}")
                vocab[merged] = len(vocab)
            pieces = [merged] + pieces[2:]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder = os.path.join(TOKENIZERS, "clip")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return "#version: 0.2\n" + "\n".join(merges) + "\n"


def small_gemma():
    """A tiny Gemma-layout tokenizer.json: special tokens, <0xNN> byte fallback, some letters and
    merges, Replace normalizer, Split pre-tokenizer, <bos> template, one added turn token."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in "\u2581abcdefghijklmnopqrstuvwxyz.,":
        vocab[c] = len(vocab)
    merges = []
    for word in ("\u2581the", "\u2581red", "\u2581circle", "\u2581a", "ing"):
        pieces = list(word)
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            if merged not in vocab:
                merges.append(f"{pieces[0]} {pieces[1]}")
                vocab[merged] = len(vocab)
            pieces = [merged] + pieces[2:]
    vocab["<start_of_turn>"] = len(vocab)
    added = [{"id": vocab[t], "content": t, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}
             for t in ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>")]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "},
                          "behavior": "MergedWithPrevious", "invert": False},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2],
                                                        "tokens": ["<bos>"]}}},
        "decoder": None,
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges}}
    folder = os.path.join(TOKENIZERS, "gemma")
    os.makedirs(folder, exist_ok=True)
    text = json.dumps(tokenizer, ensure_ascii=False, indent=1)
    with open(os.path.join(folder, "tokenizer.json"), "w") as f:
        f.write(text)
    return text


# Tokenizer targets: first byte < 0xF0 (text mode): the rest is the prompt; 0xF0..0xF7: the rest
# is a tokenizer file (CLIP: merges.txt; Gemma: tokenizer.json); 0xF8..0xFF (CLIP only): the rest
# is tokenizer_config.json.
TEXTS = [b"a red circle on a blue square", b"A Photo of THE Cat &amp; &lt;3 <|endoftext|>!",
         "Caf\u00e9 \u03a3\u03bf\u03c6\u03af\u03b1\u03a3 \u4e2d\u6587 \U0001F600\u200d"
         "\U0001F466 \t\n  spaces".encode(),
         b"<start_of_turn>user the red circle<eos>", b"bad \xc3\x28 utf8", b"x" * 300]


def tokenizer_corpus():
    merges = small_clip()
    gemma = small_gemma()
    for i, text in enumerate(TEXTS):
        write("clip", f"text-{i}", bytes([i * 7 % 0xF0]) + text)
        write("gemma", f"text-{i}", bytes([i * 37 % 0xF0]) + text)
    write("clip", "file-merges", b"\xf0" + merges.encode())
    write("clip", "file-merges-bad", b"\xf0#version: 0.2\nt h\nzz q\n")
    write("clip", "file-config", b"\xf8" + json.dumps(
        {"bos_token": {"content": "<|startoftext|>"}, "eos_token": "<|endoftext|>",
         "pad_token": "!", "model_max_length": 77}).encode())
    write("gemma", "file-tokenizer", b"\xf0" + gemma.encode())
    write("gemma", "file-tokenizer-bad", b"\xf0" + gemma.replace('"BPE"', '"Unigram"').encode())
    # Found by the fuzzer (session 7): a template id that no token has must fail at load.
    sparse = json.loads(gemma)
    sparse["post_processor"]["special_tokens"]["<bos>"]["ids"] = [9999]
    write("gemma", "found-template-id-not-in-vocab", b"\xf0" + json.dumps(sparse).encode())


def prompt_text_corpus():
    """fuzz_prompt on the text model (make_text_model.py): the prompt goes through the tokenizers
    and text encoders; flag 2 makes it the negative prompt too (used with guidance > 1)."""
    run_to_end = 8
    for i, text in enumerate(TEXTS + [b"", "A photo of a cat &amp; a dog, \u00c9T\u00c9 "
                                      "\u03a3\u039f\u03a6\u0399\u0391\u03a3".encode()]):
        flags = run_to_end if i % 2 == 0 else 2
        guidance = 1.0 if i % 2 == 0 else 3.0
        write("prompt_text", f"text-{i}", prompt_input(8, 8, 1, guidance, i, text, b"", flags))


def main():
    shutil.rmtree(CORPUS, ignore_errors=True)
    for target in ("safetensors", "config", "prompt", "prompt_text", "clip", "gemma"):
        os.makedirs(os.path.join(CORPUS, target))
    safetensors_corpus()
    config_corpus()
    prompt_corpus()
    tokenizer_corpus()
    prompt_text_corpus()
    print(f"wrote {sum(len(f) for _, _, f in os.walk(CORPUS))} seed files in {CORPUS}")


if __name__ == "__main__":
    sys.exit(main())
