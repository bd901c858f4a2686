# test_text.py: the engine's text encoders, conditioner and CLIP tokenizer against sgrecipe.
"""Each check draws random weights and token ids, writes a case file (format: top of
tests/tools/check_text.c), runs `$SGCHECK text-KIND case out` and compares with the PyTorch twins in
weights/recipe/sgrecipe (clip.py, gemma2.py, conditioner.py, clip_tokenizer.py): relative L2 =
||engine - recipe|| / ||recipe|| <= 1e-4 for f32 weights on both backends. Every small model is
also compared with deliberately wrong references (a changed weight, the sliding window on the
wrong layers, no soft-capping, another activation, ...), which must fail: so the comparison can
catch such mistakes.

The full-size checks (CLIP-L 12x768, OpenCLIP bigG 32x1280, Gemma-2-2b 26x2304) write random
weights as bf16 safetensors under the Hugging Face names and the published config.json into a
model folder that the engine loads unchanged; tolerance 1e-2 (the engine computes in f32 on the
bf16 values, like the reference). Gemma-2-2b needs about 16 GB of memory and 5.2 GB of disk.

Usage: SGCHECK=build/tests/sgcheck PYTHONPATH=weights/recipe \
       python3 tests/ref/test_text.py [NAME-SUBSTRING] [--small] [--bench]
  --small   skip the full-size checks;  --bench  time each full-size encoder (f32 and bf16 files)
            on a 20-word prompt through the conditioner (no comparisons).
Environment: SG_CLIP_TOKENIZER_DIR (a real CLIP vocab.json + merges.txt) and
SG_GEMMA_TOKENIZER (a real Gemma tokenizer.json) are used when set: the CLIP tokenizer is then
also compared with tests/tokenizers/data/clip_expected.tsv, and --bench uses both.
"""
import copy
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from sgrecipe import clip as clip_module
from sgrecipe import clip_tokenizer
from sgrecipe import conditioner as conditioner_module
from sgrecipe import gemma2 as gemma_module
from sgrecipe import quantize
from sgrecipe import safetensors_io as stio

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SGCHECK = os.environ.get("SGCHECK") or os.path.join(ROOT, "build", "tests", "sgcheck")
BACKENDS = ("onednn", "reference")
TOLERANCE = 1e-4
TOLERANCE_BF16 = 1e-2

torch.set_num_threads(2)
generator = torch.Generator().manual_seed(20250309)
failures = []


def randn(*shape):
    return torch.randn(*shape, generator=generator)


def randomize(module, norm_offset=1.0):
    """Weights ~ N(0, 1/fan_in), biases ~ N(0, 0.2²), 1-D scales ~ norm_offset + N(0, 0.3²)
    (Gemma's RMSNorm already adds 1, so its weights get norm_offset 0)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.2 * randn(*p.shape))
            elif p.dim() == 1:
                p.copy_(norm_offset + 0.3 * randn(*p.shape))
            else:
                p.copy_(randn(*p.shape) / math.sqrt(p[0].numel()))
    return module.eval()


def weights_of(module):
    return {k: v.detach().float().contiguous() for k, v in module.state_dict().items()}


def rel_l2(engine, reference):
    engine = np.asarray(engine, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if engine.shape != reference.shape:
        return float("inf")
    return float(np.linalg.norm(engine - reference) / max(np.linalg.norm(reference), 1e-30))


def run_engine(kind, tensors, metadata, workdir, name, expect_error=False):
    """Writes the case, runs sgcheck; returns (outputs, metadata, stdout) or None (message
    printed). With expect_error, returns the completed process instead."""
    case = os.path.join(workdir, f"{name}.case.safetensors")
    out = os.path.join(workdir, f"{name}.out.safetensors")
    if os.path.exists(out):
        os.remove(out)
    if not tensors:
        tensors = {"unused": np.zeros(1, np.float32)}
    stio.save_file(case, tensors, {k: str(v) for k, v in metadata.items()}, dtype="F32")
    # Passive OpenMP waiting: on a busy machine (tests run side by side) spinning threads slow
    # the many small ops of a text encoder down several times.
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "passive")
    result = subprocess.run([SGCHECK, kind, case, out], capture_output=True, text=True,
                            timeout=900, env=env)
    if expect_error:
        return result
    if result.returncode != 0:
        print(f"  sgcheck {kind} failed ({result.returncode}): {result.stderr.strip()}")
        return None
    return stio.load_file(out), stio.load_metadata(out), result.stdout


def record(name, ok, detail):
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}", flush=True)
    if not ok:
        failures.append(name)


def report(name, outputs, references, tolerance=TOLERANCE):
    """One PASS/FAIL line comparing each named output with its reference."""
    if outputs is None:
        record(name, False, "(engine error)")
        return {}
    errors = {k: rel_l2(outputs.get(k, np.zeros(0)), v) for k, v in references.items()}
    detail = " ".join(f"{k}:relL2={e:.2e}" for k, e in errors.items())
    record(name, max(errors.values()) <= tolerance, detail)
    return errors


def report_detects(name, outputs, wrong_references, tolerance=TOLERANCE):
    """The engine's output must NOT match a deliberately wrong reference."""
    if outputs is None:
        record(name, False, "(engine error)")
        return
    errors = {k: rel_l2(outputs.get(k, np.zeros(0)), v) for k, v in wrong_references.items()}
    worst = max(errors.values())
    record(name, worst > tolerance, f"relL2 against the wrong reference={worst:.2e} "
                                    f"(must exceed {tolerance:g})")


def as_ids(ids):
    return torch.tensor(ids, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Small models


def clip_ids(vocab, count, length, eos, pad):
    """BOS (vocab-2), random tokens, EOS, then padding up to count."""
    body = torch.randint(0, vocab - 2, (length - 2,), generator=generator).tolist()
    ids = [vocab - 2] + body + [eos]
    return ids + [pad] * (count - len(ids))


def check_clip(name, config, ids, hidden_layers, workdir):
    model = randomize(clip_module.make_model(config))
    with_projection = isinstance(model, clip_module.CLIPTextModelWithProjection)
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    tensors = weights_of(model)
    tensors["input_ids"] = as_ids(ids)
    last_outputs = None
    for hidden_layer in hidden_layers:
        reference = {"hidden": conditioner_module.select_hidden(out, hidden_layer)[0].numpy(),
                     "pooled": clip_module.pooled_of(model, out)[0].numpy()}
        metadata = {"config": json.dumps(config), "hidden_layer": hidden_layer, "pooled": 1,
                    "with_projection": int(with_projection)}
        for backend in BACKENDS:
            metadata["backend"] = backend
            result = run_engine("text-clip", tensors, metadata, workdir, f"{name}-{backend}")
            outputs = result[0] if result else None
            report(f"{name} hidden_layer={hidden_layer} [{backend}]", outputs, reference)
            last_outputs = outputs
    return model, out, last_outputs


def check_clip_small(workdir):
    base = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 160,
            "num_hidden_layers": 3, "num_attention_heads": 4, "max_position_embeddings": 16,
            "projection_dim": 48, "layer_norm_eps": 1e-5}
    # CLIP-L style: quick GELU, legacy eos_token_id 2 (pooled at the largest id), pad = EOS.
    config_l = dict(base, hidden_act="quick_gelu", eos_token_id=2,
                    architectures=["CLIPTextModelWithProjection"])
    ids = clip_ids(300, 16, 9, eos=299, pad=299)
    model, out, outputs = check_clip("clip-small-quick-gelu-projection", config_l, ids,
                                     [-2, "last", 0, 3], workdir)
    # Wrong references: another activation; a changed attention weight; no causal mask.
    wrong = clip_module.make_model(dict(config_l, hidden_act="gelu"))
    wrong.load_state_dict(model.state_dict())
    with torch.no_grad():
        wrong_out = wrong(torch.tensor([ids]))
        report_detects("clip-small detects gelu instead of quick_gelu", outputs,
                       {"hidden": wrong_out["hidden_states"][3][0].numpy()})
        changed = copy.deepcopy(model)
        changed.text_model.encoder.layers[1].self_attn.v_proj.weight.mul_(1.02)
        report_detects("clip-small detects a 2% change of one v_proj",
                       outputs, {"hidden": changed(torch.tensor([ids]))["hidden_states"][3][0]
                                 .numpy()})
        no_causal = model.text_model
        x = no_causal.embeddings(torch.tensor([ids]))
        for layer in no_causal.encoder.layers:
            x = layer(x, torch.zeros(len(ids), len(ids)))
        report_detects("clip-small detects a missing causal mask", outputs,
                       {"hidden": x[0].numpy()})
        eos_first = model.text_model.final_layer_norm(out["hidden_states"][3])[0, 0]
        report_detects("clip-small detects pooling the wrong token", outputs,
                       {"pooled": model.text_projection(eos_first).numpy()})
    # bigG style: erf GELU, first-EOS rule (eos_token_id set), pad "!" (id 0), no projection.
    config_g = dict(base, hidden_act="gelu", eos_token_id=299, architectures=["CLIPTextModel"])
    ids = clip_ids(300, 16, 12, eos=299, pad=0)
    check_clip("clip-small-gelu-no-projection", config_g, ids, [-2, "last"], workdir)
    # A config with the tanh GELU and a prompt filling all positions.
    config_t = dict(base, hidden_act="gelu_new", eos_token_id=299,
                    architectures=["CLIPTextModelWithProjection"])
    check_clip("clip-small-gelu-tanh-full-length", config_t, clip_ids(300, 16, 16, 299, 299),
               [-1], workdir)


GEMMA_SMALL = {"vocab_size": 400, "hidden_size": 64, "intermediate_size": 96,
               "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
               "head_dim": 24, "max_position_embeddings": 64, "rms_norm_eps": 1e-6,
               "rope_theta": 10000.0, "query_pre_attn_scalar": 16, "attn_logit_softcapping": 2.0,
               "final_logit_softcapping": 30.0, "sliding_window": 3, "attention_bias": False,
               "hidden_activation": "gelu_pytorch_tanh"}


def check_gemma_small(workdir):
    config = dict(GEMMA_SMALL)
    model = randomize(gemma_module.Gemma2Model(config), norm_offset=0.0)
    ids = [2] + torch.randint(0, 400, (10,), generator=generator).tolist()
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    for prefix_name, tensors in (("", weights_of(model)),
                                 ("model.", gemma_module.causal_lm_names(weights_of(model)))):
        tensors = dict(tensors)
        tensors["input_ids"] = as_ids(ids)
        for hidden_layer in ("last", 2, 0):
            reference = {"hidden": conditioner_module.select_hidden(out, hidden_layer)[0].numpy()}
            metadata = {"config": json.dumps(config), "hidden_layer": hidden_layer}
            for backend in BACKENDS:
                metadata["backend"] = backend
                name = f"gemma2-small names='{prefix_name}*' hidden_layer={hidden_layer}"
                result = run_engine("text-gemma2", tensors, metadata, workdir, "gemma2-small")
                outputs = result[0] if result else None
                report(f"{name} [{backend}]", outputs, reference)
                if hidden_layer == "last" and backend == "onednn" and not prefix_name:
                    engine_last = outputs
    # Wrong references must fail: each one a mistake the engine could make.
    wrong_cases = {
        "sliding window on the odd layers": lambda m: [
            setattr(layer.self_attn, "window", 3 if i % 2 else None)
            for i, layer in enumerate(m.layers)],
        "no sliding window": lambda m: [setattr(layer.self_attn, "window", None)
                                        for layer in m.layers],
        "no soft-capping": lambda m: [setattr(layer.self_attn, "softcap", None)
                                      for layer in m.layers],
        "scale head_dim^-0.5": lambda m: [setattr(layer.self_attn, "scale", 24 ** -0.5)
                                          for layer in m.layers],
        # (Scaling a whole matrix would vanish in the post-norms: change one column.)
        "a change of one up_proj column": lambda m: m.layers[2].mlp.up_proj.weight[:, 0].add_(
            0.05),
    }
    with torch.no_grad():
        for what, change in wrong_cases.items():
            wrong = copy.deepcopy(model)
            change(wrong)
            report_detects(f"gemma2-small detects {what}", engine_last,
                           {"hidden": wrong(torch.tensor([ids]))["last_hidden_state"][0].numpy()})
        # RMSNorm without the +1, and the embedding without the sqrt(hidden) factor.
        wrong = copy.deepcopy(model)
        for module in wrong.modules():
            if isinstance(module, gemma_module.Gemma2RMSNorm):
                module.weight.sub_(1.0)
        report_detects("gemma2-small detects RMSNorm without (1+w)", engine_last,
                       {"hidden": wrong(torch.tensor([ids]))["last_hidden_state"][0].numpy()})


# ---------------------------------------------------------------------------------------------
# Tokenizer and conditioner

CORPUS = ("a photo of a cat riding a bike on the moon highly detailed painting of the sea "
          "at sunset with red and blue boats there are three dogs playing in the park while "
          "people walk by the river don't it's they're we've i'm you'll she'd 2024 42 hello "
          "world").split()

TRICKY = [
    "", " ", "a", "A PHOTO OF A CAT", "  a   photo\tof\n\na cat  ", "don't STOP it's 'sup",
    "hello&amp;world &lt;3 &#65;&#x42; &amp;amp; &nbsp;x &apos;q &bogus; &#0;", "3.14159 v2 x86_64",
    "Ünïcödé café naïve ΣΊΣΥΦΟΣ", "İstanbul ǅemal Ⅻ ⓐⒷ", "東京タワー 한국어 텍스트 ١٢٣",
    "emoji 😀🎉 👩‍👩‍👧 flags 🇫🇷", "e\u0301 combining a\u0308",
    "tabs\u00a0nbsp\u2003em\u3000ideo\u180emvs",
    "<|startoftext|>hi<|endoftext|> there <|endoftext|>", "!!!??? ... --- ___ ***",
    "word" * 40, "x" * 300, "a,b;c:d", "\u0085next\u2028line\u2029para\u000bvt\u001cfs",
]


def learn_merges(words, count):
    """A small BPE merge list learned from words (each a list of symbols), most frequent pair
    first (ties: the smallest pair)."""
    words = [list(w) for w in words]
    merges = []
    for _ in range(count):
        pairs = {}
        for w in words:
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + 1
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w in words:
            k = 0
            while k < len(w) - 1:
                if (w[k], w[k + 1]) == best:
                    w[k:k + 2] = [w[k] + w[k + 1]]
                k += 1
    return merges


def make_clip_tokenizer(folder, max_length, pad=None):
    """A small CLIP tokenizer folder: GPT-2 byte characters (with and without </w>), merges
    learned from CORPUS, and the two special tokens as the largest ids (as in CLIP)."""
    os.makedirs(folder, exist_ok=True)
    chars = clip_tokenizer.byte_characters()
    tokens = chars + [c + "</w>" for c in chars]
    words = []
    for word in CORPUS:
        symbols = [chars[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        words.append(symbols)
    merges = learn_merges(words, 120)
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {"model_max_length": max_length, "bos_token": "<|startoftext|>",
              "eos_token": "<|endoftext|>", "pad_token": pad or "<|endoftext|>"}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return len(tokens)


def make_gemma_tokenizer(folder):
    """A small Gemma-style tokenizer.json: <pad> <eos> <bos> <unk>, 256 byte tokens, "▁", the
    letters and digits, and merges learned from CORPUS."""
    os.makedirs(folder, exist_ok=True)
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += ["▁"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789'")
    merges = learn_merges([["▁"] + list(w) for w in CORPUS], 80)
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    special = lambda i, t: {"id": i, "content": t, "single_word": False, "lstrip": False,
                            "rstrip": False, "normalized": False, "special": True}
    data = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [special(i, t) for i, t in enumerate(tokens[:4])],
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "},
                          "behavior": "MergedWithPrevious", "invert": False},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<bos>", "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}}},
        "decoder": None,
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [f"{a} {b}" for a, b in merges]},
    }
    with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
    return len(tokens)


def check_tokenizer_folder(name, folder, texts, workdir, expected=None):
    """The Python tokenizer (clip_tokenizer.py) against the engine's on texts (bytes), and both
    against expected ids when given."""
    tokenizer = clip_tokenizer.CLIPTokenizer(folder)
    for start in range(0, len(texts), 60):
        chunk = texts[start:start + 60]
        metadata = {"tokenizer_dir": folder, "prompts_hex": "\n".join(t.hex() for t in chunk)}
        result = run_engine("text-tokenize", {}, metadata, workdir, "tokenize")
        if result is None:
            record(f"{name} (engine error)", False, "")
            return
        outputs, meta, _ = result
        mismatches = []
        for k, text in enumerate(chunk):
            try:
                python_ids = tokenizer.encode(text)
            except ValueError:
                python_ids = None
            engine_ids = None
            if f"ids.{k}" in outputs:
                engine_ids = [int(v) for v in outputs[f"ids.{k}"]]
                engine_ids = [] if engine_ids == [-1] else engine_ids
            want = expected[start + k] if expected is not None else python_ids
            if python_ids != engine_ids or want != engine_ids:
                mismatches.append((text, python_ids, engine_ids, want))
        for text, p, e, w in mismatches[:3]:
            print(f"  {text!r}: python {p} engine {e} expected {w}")
        record(f"{name} [{start}:{start + len(chunk)}]", not mismatches,
               f"{len(chunk) - len(mismatches)}/{len(chunk)} identical")


def check_tokenizer(workdir):
    folder = os.path.join(workdir, "clip-tokenizer-synthetic")
    make_clip_tokenizer(folder, 77)
    texts = [t.encode("utf-8") for t in TRICKY] + [b"\xff invalid", b"ok \xc3"]
    texts += [" ".join(CORPUS[i:i + 7]).encode() for i in range(0, len(CORPUS), 5)]
    check_tokenizer_folder("clip-tokenizer python=engine (synthetic vocab)", folder, texts,
                           workdir)
    real = os.environ.get("SG_CLIP_TOKENIZER_DIR")
    fixture = os.path.join(ROOT, "tests", "tokenizers", "data", "clip_expected.tsv")
    if real and os.path.exists(os.path.join(real, "vocab.json")):
        texts, expected = [], []
        with open(fixture, encoding="utf-8") as f:
            for line in f:
                if line.startswith("#") or "\t" not in line:
                    continue
                text_hex, ids = line.rstrip("\n").split("\t")
                texts.append(bytes.fromhex(text_hex))
                expected.append(None if ids == "ERROR" else [int(v) for v in ids.split()])
        check_tokenizer_folder("clip-tokenizer python=engine=published (real vocab, fixture)",
                               real, texts, workdir, expected)
    else:
        print("SKIP clip-tokenizer on the real vocabulary (set SG_CLIP_TOKENIZER_DIR)")


CONDITIONER_CONFIG = {
    "context_dim": 40, "pooled_dim": 48 + 56,
    "encoders": [
        {"component": "text_encoder", "tokenizer": "tokenizer", "hidden_layer": -2,
         "pooled": True, "mask_padding": False},
        {"component": "text_encoder_2", "tokenizer": "tokenizer_2", "hidden_layer": -2,
         "pooled": True, "mask_padding": False},
        {"component": "text_encoder_3", "tokenizer": "tokenizer_3", "hidden_layer": "last",
         "pooled": False, "mask_padding": True, "max_tokens": 12}]}


def make_small_model(folder):
    """A model folder with small CLIP-L-like, bigG-like and Gemma-2-like encoders, their
    tokenizers and a conditioner (no UNet: the conditioner needs only its own parts)."""
    vocab_l = make_clip_tokenizer(os.path.join(folder, "tokenizer"), 16)
    vocab_g = make_clip_tokenizer(os.path.join(folder, "tokenizer_2"), 16, pad="!")
    vocab_gemma = make_gemma_tokenizer(os.path.join(folder, "tokenizer_3"))
    base = {"num_hidden_layers": 3, "max_position_embeddings": 16, "eos_token_id": 2,
            "layer_norm_eps": 1e-5}
    configs = {
        "text_encoder": dict(base, vocab_size=vocab_l, hidden_size=32, intermediate_size=64,
                             num_attention_heads=4, projection_dim=48, hidden_act="quick_gelu",
                             architectures=["CLIPTextModelWithProjection"]),
        "text_encoder_2": dict(base, vocab_size=vocab_g, hidden_size=48, intermediate_size=96,
                               num_attention_heads=4, projection_dim=56, hidden_act="gelu",
                               architectures=["CLIPTextModelWithProjection"]),
        "text_encoder_3": dict(GEMMA_SMALL, vocab_size=vocab_gemma, hidden_size=40,
                               num_hidden_layers=3, architectures=["Gemma2Model"]),
    }
    models = {}
    for component, config in configs.items():
        os.makedirs(os.path.join(folder, component), exist_ok=True)
        if component == "text_encoder_3":
            model = randomize(gemma_module.Gemma2Model(config), norm_offset=0.0)
        else:
            model = randomize(clip_module.make_model(config))
        models[component] = model
        with open(os.path.join(folder, component, "config.json"), "w") as f:
            json.dump(config, f)
        stio.save_file(os.path.join(folder, component, "model.safetensors"), weights_of(model))
    widths = [32, 48, 40]
    conditioner = randomize(conditioner_module.SnapGenConditioner(CONDITIONER_CONFIG, widths))
    os.makedirs(os.path.join(folder, "conditioner"), exist_ok=True)
    with open(os.path.join(folder, "conditioner", "config.json"), "w") as f:
        json.dump(CONDITIONER_CONFIG, f)
    stio.save_file(os.path.join(folder, "conditioner", "diffusion_pytorch_model.safetensors"),
                   weights_of(conditioner))
    write_model_index(folder, ["text_encoder", "text_encoder_2", "text_encoder_3"])
    return models, conditioner


def write_model_index(folder, present):
    classes = {"text_encoder": "CLIPTextModelWithProjection",
               "text_encoder_2": "CLIPTextModelWithProjection", "text_encoder_3": "Gemma2Model"}
    index = {"_class_name": "SnapGenPipeline", "conditioner": ["snapgen", "SnapGenConditioner"],
             "tokenizer": ["transformers", "CLIPTokenizer"],
             "tokenizer_2": ["transformers", "CLIPTokenizer"],
             "tokenizer_3": ["transformers", "GemmaTokenizerFast"]}
    for component, name in classes.items():
        index[component] = ["transformers", name] if component in present else [None, None]
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f)


def reference_conditioning(folder, models, conditioner, present, prompt, engine_ids):
    """The recipe's conditioning for prompt; CLIP ids from clip_tokenizer.py (checked against
    the engine's), Gemma ids as the engine tokenized them."""
    outputs, problems = [], []
    for i, entry in enumerate(CONDITIONER_CONFIG["encoders"]):
        component = entry["component"]
        if component not in present:
            outputs.append(None)
            continue
        model = models[component]
        if component == "text_encoder_3":
            ids = [int(v) for v in engine_ids[f"ids.{i}"]]
            kind, real = "gemma2", None
        else:
            tokenizer = clip_tokenizer.CLIPTokenizer(os.path.join(folder, entry["tokenizer"]))
            ids, real = tokenizer(prompt)
            engine = [int(v) for v in engine_ids.get(f"ids.{i}", [])]
            if engine != ids:
                problems.append(f"{component} ids python {ids} engine {engine}")
            kind = "clip"
        with torch.no_grad():
            outputs.append(conditioner_module.encoder_output(kind, model, ids, entry, real))
    with torch.no_grad():
        context, mask, pooled = conditioner(outputs)
    return {"context": context.numpy(), "context_mask": mask.numpy(),
            "pooled": pooled.numpy()}, problems


def quantize_linears(model):
    """A copy of a text encoder whose encoder-layer linear weights hold the engine's int8 values
    (the embeddings and the projection stay f32, as in the engine)."""
    return quantize.int8_linears(copy.deepcopy(model),
                                 lambda name: ".layers." in name or name.startswith("layers."))


def check_conditioner(workdir):
    folder = os.path.join(workdir, "small-model")
    models, conditioner = make_small_model(folder)
    prompt = "A photo of a cat riding a bike on the moon, highly detailed"
    everything = ["text_encoder", "text_encoder_2", "text_encoder_3"]
    for backend in BACKENDS:
        metadata = {"model_dir": folder, "prompt": prompt, "negative": "", "backend": backend}
        result = run_engine("text-conditioner", {}, metadata, workdir, "conditioner")
        outputs = result[0] if result else None
        if outputs is None:
            record(f"conditioner all encoders [{backend}]", False, "(engine error)")
            continue
        reference, problems = reference_conditioning(folder, models, conditioner, everything,
                                                     prompt, outputs)
        for p in problems:
            print("  " + p)
        record(f"conditioner token ids python=engine [{backend}]", not problems, "")
        report(f"conditioner all encoders [{backend}]", outputs, reference)
        neg = {k[len("negative_"):]: v for k, v in outputs.items() if k.startswith("negative_")}
        reference, _ = reference_conditioning(folder, models, conditioner, everything, "", neg)
        report(f"conditioner empty prompt [{backend}]", neg, reference)
    # int8 linear weights (snapgen --int8): the reference gets the same quantized matrices
    quantized = {name: quantize_linears(model) for name, model in models.items()}
    result = run_engine("text-conditioner", {}, {"model_dir": folder, "prompt": prompt,
                                                 "negative": "", "int8": "1"}, workdir,
                        "conditioner")
    if result:
        reference, _ = reference_conditioning(folder, quantized, conditioner, everything, prompt,
                                              result[0])
        report("conditioner all encoders, int8 linear weights", result[0], reference)
        plain, _ = reference_conditioning(folder, models, conditioner, everything, prompt,
                                          result[0])
        moved = rel_l2(result[0]["context"], plain["context"])
        record("int8 linear weights change the context a little", 1e-4 < moved < 5e-2,
               f"relL2 vs f32 weights {moved:.2e}")
    else:
        record("conditioner all encoders, int8 linear weights", False, "(engine error)")
    # The empty prompt twice: the second copy comes from the cache and must be identical.
    result = run_engine("text-conditioner", {}, {"model_dir": folder, "prompt": "",
                                                 "negative": ""}, workdir, "conditioner")
    if result:
        outputs = result[0]
        same = all(np.array_equal(outputs[k], outputs["negative_" + k])
                   for k in ("context", "context_mask", "pooled"))
        record("conditioner empty prompt cached (identical twice)", same, "")
    # A long prompt: CLIP cut to its 16 tokens (EOS kept), Gemma to max_tokens 12.
    long_prompt = " ".join(CORPUS * 3)
    result = run_engine("text-conditioner", {}, {"model_dir": folder, "prompt": long_prompt},
                        workdir, "conditioner")
    if result:
        outputs, meta, _ = result
        reference, problems = reference_conditioning(folder, models, conditioner, everything,
                                                     long_prompt, outputs)
        with open(os.path.join(folder, "tokenizer", "vocab.json")) as f:
            eos = json.load(f)["<|endoftext|>"]
        ok = (len(outputs["ids.0"]) == 16 and len(outputs["ids.2"]) == 12 and
              outputs["ids.0"][-1] == eos)
        record("conditioner long prompt truncated (CLIP 16 with EOS last, Gemma 12)",
               ok and not problems, f"ids lengths {len(outputs['ids.0'])}, "
                                    f"{len(outputs['ids.2'])}")
        report("conditioner long prompt", outputs, reference)
    # Missing encoders: CLIP-L's folder gone (its pooled part from pooled_dim), Gemma not in
    # model_index.json (0 tokens).
    partial = os.path.join(workdir, "partial-model")
    shutil.copytree(folder, partial, symlinks=True)
    shutil.rmtree(os.path.join(partial, "text_encoder"))
    write_model_index(partial, ["text_encoder", "text_encoder_2"])
    with open(os.path.join(partial, "model_index.json")) as f:
        index = json.load(f)
    index["text_encoder_3"] = [None, None]
    with open(os.path.join(partial, "model_index.json"), "w") as f:
        json.dump(index, f)
    result = run_engine("text-conditioner", {}, {"model_dir": partial, "prompt": prompt},
                        workdir, "conditioner")
    outputs = result[0] if result else None
    if outputs is not None:
        reference, _ = reference_conditioning(partial, models, conditioner, ["text_encoder_2"],
                                              prompt, outputs)
        report("conditioner CLIP-L and Gemma missing", outputs, reference)
        shape_ok = (outputs["context"].shape[0] == 77 + 16 and
                    outputs["context_mask"][:77].sum() == 0)
        record("conditioner missing CLIP slot = 77 masked zero tokens, missing Gemma = none",
               shape_ok, f"context {outputs['context'].shape}")
    else:
        record("conditioner CLIP-L and Gemma missing", False, "(engine error)")
    # Only Gemma.
    only = os.path.join(workdir, "gemma-only-model")
    shutil.copytree(folder, only, symlinks=True)
    write_model_index(only, ["text_encoder_3"])
    result = run_engine("text-conditioner", {}, {"model_dir": only, "prompt": prompt,
                                                 "report": 1}, workdir, "conditioner")
    if result:
        outputs, _, stdout = result
        reference, _ = reference_conditioning(only, models, conditioner, ["text_encoder_3"],
                                              prompt, outputs)
        report("conditioner only Gemma (zero pooled)", outputs, reference)
        record("conditioner report (snapgen encode) prints each encoder",
               "encoder 2: text_encoder_3 (Gemma2Model" in stdout and "missing" in stdout and
               "context [" in stdout, stdout.strip().splitlines()[-1] if stdout else "")
    else:
        record("conditioner only Gemma", False, "(engine error)")
    check_conditioner_errors(folder, workdir)
    # Invalid UTF-8 is refused in words.
    result = run_engine("text-conditioner", {}, {"model_dir": folder, "prompt_hex": "61ff62"},
                        workdir, "conditioner", expect_error=True)
    record("conditioner refuses invalid UTF-8 (invalid argument, in words)",
           result.returncode != 0 and "UTF-8" in result.stderr and
           "(invalid argument)" in result.stderr, result.stderr.strip()[:200])


def check_conditioner_errors(folder, workdir):
    """Broken model folders give an error in words that names the file, field or tensor."""
    def broken(name, change, expected):
        copy_dir = os.path.join(workdir, "broken-model")
        shutil.rmtree(copy_dir, ignore_errors=True)
        shutil.copytree(folder, copy_dir, symlinks=True)
        change(copy_dir)
        result = run_engine("text-conditioner", {}, {"model_dir": copy_dir, "prompt": "a cat"},
                            workdir, "conditioner", expect_error=True)
        message = result.stderr.strip()
        record(f"conditioner error: {name}", result.returncode == 1 and
               all(e in message for e in expected), message[:220])

    def edit_config(changes):
        def apply(copy_dir):
            path = os.path.join(copy_dir, "conditioner", "config.json")
            with open(path) as f:
                config = json.load(f)
            changes(config)
            with open(path, "w") as f:
                json.dump(config, f)
        return apply

    def set_layer(config):
        config["encoders"][1]["hidden_layer"] = 9

    def pooled_sum(config):
        config["pooled_dim"] = 100

    def drop_proj(copy_dir):
        path = os.path.join(copy_dir, "conditioner", "diffusion_pytorch_model.safetensors")
        tensors = stio.load_file(path)
        del tensors["context_proj.2.weight"]
        stio.save_file(path, tensors)

    def odd_class(copy_dir):
        with open(os.path.join(copy_dir, "model_index.json")) as f:
            index = json.load(f)
        index["text_encoder"] = ["transformers", "T5EncoderModel"]
        with open(os.path.join(copy_dir, "model_index.json"), "w") as f:
            json.dump(index, f)

    def no_tokenizer(copy_dir):
        shutil.rmtree(os.path.join(copy_dir, "tokenizer_3"))

    def wrong_width(copy_dir):
        path = os.path.join(copy_dir, "text_encoder_2", "config.json")
        with open(path) as f:
            config = json.load(f)
        config["intermediate_size"] = 100
        with open(path, "w") as f:
            json.dump(config, f)

    def nan_embedding(dtype):
        # a NaN in every row of the CLIP-L token table: f32 files are checked when loaded, bf16
        # tables (left in the file's dtype) when a prompt's row is read
        def apply(copy_dir):
            path = os.path.join(copy_dir, "text_encoder", "model.safetensors")
            tensors = stio.load_file(path)
            table = np.array(tensors["text_model.embeddings.token_embedding.weight"],
                             dtype=np.float32)
            table[:, 1] = np.nan
            tensors["text_model.embeddings.token_embedding.weight"] = table
            stio.save_file(path, tensors, dtype=dtype)
        return apply

    broken("NaN in the token embedding (f32 file)", nan_embedding("F32"),
           ["text_model.embeddings.token_embedding.weight", "NaN/Inf"])
    broken("NaN in the token embedding (bf16 file, found at lookup)", nan_embedding("BF16"),
           ["text_model.embeddings.token_embedding.weight", "NaN/Inf", "row"])
    broken("hidden_layer out of range", edit_config(set_layer),
           ["conditioner/config.json", "encoders[1]", "hidden_layer 9"])
    broken("pooled widths do not add up", edit_config(pooled_sum), ["pooled_dim is 100"])
    broken("missing context_proj tensor", drop_proj, ["context_proj.2.weight"])
    broken("unknown encoder class", odd_class, ["model_index.json", "T5EncoderModel"])
    broken("tokenizer folder missing", no_tokenizer, ["text_encoder_3", "tokenizer_3"])
    broken("encoder config does not match its weights", wrong_width,
           ["text_encoder_2", "mlp.fc1.weight"])


# ---------------------------------------------------------------------------------------------
# Full-size models with random bf16 weights


def bf16_random_bits(rng, count, scale):
    """count random bf16 values (raw bits), symmetric, magnitudes in [scale/2, 2·scale): built
    from random integers (a sign, an exponent of two choices, 7 random mantissa bits) because
    drawing billions of normal values takes minutes here."""
    exponent = int(math.floor(math.log2(scale))) + 127
    r = rng.integers(0, 1 << 16, size=count, dtype=np.uint16)
    return (r & np.uint16(0x807F)) | (np.uint16(exponent << 7) - (r & np.uint16(0x80)))


def write_random_bf16(path, specs, seed):
    """Streams a bf16 safetensors file: specs is a list of (name, shape, kind, scale) with kind
    "matrix" (bf16_random_bits), "norm" (offset + N(0, scale²)) or "bias" (N(0, scale²))."""
    header, offset = {}, 0
    for name, shape, _, _ in specs:
        nbytes = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, shape, kind, scale in specs:
            count = int(np.prod(shape))
            if kind == "matrix":
                for start in range(0, count, 1 << 25):
                    f.write(bf16_random_bits(rng, min(1 << 25, count - start), scale).tobytes())
            else:
                offset_value = kind[len("norm"):] if kind.startswith("norm") else ""
                values = scale * rng.standard_normal(count).astype(np.float32)
                values += float(offset_value or 0.0)
                f.write(stio.f32_to_bf16_bits(values).tobytes())


def clip_specs(config):
    h, inner = config["hidden_size"], config["intermediate_size"]
    specs = [("text_model.embeddings.token_embedding.weight", (config["vocab_size"], h),
              "matrix", 0.02),
             ("text_model.embeddings.position_embedding.weight",
              (config["max_position_embeddings"], h), "matrix", 0.01)]
    for i in range(config["num_hidden_layers"]):
        p = f"text_model.encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            specs += [(p + norm + ".weight", (h,), "norm1", 0.1), (p + norm + ".bias", (h,),
                                                                  "bias", 0.02)]
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            specs += [(p + f"self_attn.{proj}.weight", (h, h), "matrix", h ** -0.5),
                      (p + f"self_attn.{proj}.bias", (h,), "bias", 0.02)]
        specs += [(p + "mlp.fc1.weight", (inner, h), "matrix", h ** -0.5),
                  (p + "mlp.fc1.bias", (inner,), "bias", 0.02),
                  (p + "mlp.fc2.weight", (h, inner), "matrix", inner ** -0.5),
                  (p + "mlp.fc2.bias", (h,), "bias", 0.02)]
    specs += [("text_model.final_layer_norm.weight", (h,), "norm1", 0.1),
              ("text_model.final_layer_norm.bias", (h,), "bias", 0.02),
              ("text_projection.weight", (config["projection_dim"], h), "matrix", h ** -0.5)]
    return specs


def gemma_specs(config, prefix="model."):
    h, inner = config["hidden_size"], config["intermediate_size"]
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    specs = [(prefix + "embed_tokens.weight", (config["vocab_size"], h), "matrix", h ** -0.5)]
    for i in range(config["num_hidden_layers"]):
        p = f"{prefix}layers.{i}."
        specs += [(p + "input_layernorm.weight", (h,), "norm", 0.1),
                  (p + "self_attn.q_proj.weight", (q, h), "matrix", h ** -0.5),
                  (p + "self_attn.k_proj.weight", (kv, h), "matrix", h ** -0.5),
                  (p + "self_attn.v_proj.weight", (kv, h), "matrix", h ** -0.5),
                  (p + "self_attn.o_proj.weight", (h, q), "matrix", q ** -0.5),
                  (p + "post_attention_layernorm.weight", (h,), "norm", 0.1),
                  (p + "pre_feedforward_layernorm.weight", (h,), "norm", 0.1),
                  (p + "mlp.gate_proj.weight", (inner, h), "matrix", h ** -0.5),
                  (p + "mlp.up_proj.weight", (inner, h), "matrix", h ** -0.5),
                  (p + "mlp.down_proj.weight", (h, inner), "matrix", inner ** -0.5),
                  (p + "post_feedforward_layernorm.weight", (h,), "norm", 0.1)]
    specs.append((prefix + "norm.weight", (h,), "norm", 0.1))
    return specs


class Bf16File:
    """Tensors of a bf16 safetensors file read one at a time (memory-mapped) as float32."""

    def __init__(self, path):
        with open(path, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            self.header = json.loads(f.read(size))
        self.path, self.start = path, 8 + size
        self.raw = np.memmap(path, dtype=np.uint16, mode="r")

    def bits(self, name):
        info = self.header[name]
        begin, end = info["data_offsets"]
        return self.raw[(self.start + begin) // 2:(self.start + end) // 2].reshape(info["shape"])

    def get(self, name):
        return torch.from_numpy(stio.bf16_bits_to_f32(np.asarray(self.bits(name))))


def write_folder(folder, config, specs, seed):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    path = os.path.join(folder, "model.safetensors")
    start = time.time()
    write_random_bf16(path, specs, seed)
    return path, time.time() - start


def check_clip_full(name, config, workdir, seed):
    folder = os.path.join(workdir, name)
    path, made = write_folder(folder, config, clip_specs(config), seed)
    ids = clip_ids(49408, 77, 22, eos=49407, pad=49407)
    metadata = {"model_dir": folder, "hidden_layer": -2, "pooled": 1, "with_projection": 1}
    start = time.time()
    result = run_engine("text-clip", {"input_ids": as_ids(ids)}, metadata, workdir, name)
    engine_seconds = time.time() - start
    outputs, meta = (result[0], result[1]) if result else (None, {})
    start = time.time()
    file = Bf16File(path)
    with torch.device("meta"):
        model = clip_module.make_model(config)
    model.load_state_dict({k: file.get(k) for k in file.header}, assign=True)
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    reference = {"hidden": out["hidden_states"][-2][0].numpy(),
                 "pooled": out["text_embeds"][0].numpy()}
    del model, file
    report(f"{name} bf16 weights, 77 tokens, hidden_states[-2] + text_embeds [onednn]", outputs,
           reference, TOLERANCE_BF16)
    print(f"  {name}: weights written in {made:.1f} s; engine {engine_seconds:.1f} s (load "
          f"{float(meta.get('load_seconds', 0)):.1f} s, forward "
          f"{float(meta.get('forward_seconds', 0)):.2f} s, peak RSS "
          f"{int(meta.get('max_rss_bytes', 0)) / 2**30:.2f} GiB); reference "
          f"{time.time() - start:.1f} s", flush=True)
    shutil.rmtree(folder)


def check_gemma_full(workdir):
    name = "gemma-2-2b-full"
    config = gemma_module.GEMMA2_2B_CONFIG
    cfg = gemma_module.full_config(config)
    folder = os.path.join(workdir, name)
    path, made = write_folder(folder, config, gemma_specs(config), 7)
    ids = [2] + torch.randint(0, 256000, (7,), generator=generator).tolist()
    metadata = {"model_dir": folder, "hidden_layer": "last"}
    start = time.time()
    result = run_engine("text-gemma2", {"input_ids": as_ids(ids)}, metadata, workdir, name)
    engine_seconds = time.time() - start
    outputs, meta = (result[0], result[1]) if result else (None, {})
    start = time.time()
    file = Bf16File(path)
    with torch.no_grad():
        table = file.bits("model.embed_tokens.weight")
        rows = torch.from_numpy(stio.bf16_bits_to_f32(np.asarray(table[ids])))
        x = rows[None] * torch.tensor(cfg["hidden_size"] ** 0.5, dtype=torch.float32)
        cos, sin = gemma_module.rope_tables(cfg, len(ids))
        for i in range(cfg["num_hidden_layers"]):
            with torch.device("meta"):
                layer = gemma_module.Gemma2DecoderLayer(cfg, i)
            prefix = f"model.layers.{i}."
            layer.load_state_dict({k: file.get(prefix + k) for k in layer.state_dict()},
                                  assign=True)
            x = layer(x, cos, sin)
        norm = gemma_module.Gemma2RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        norm.weight.data = file.get("model.norm.weight")
        x = norm(x)
    del file
    report(f"{name} bf16 weights, {len(ids)} tokens, last_hidden_state [onednn]", outputs,
           {"hidden": x[0].numpy()}, TOLERANCE_BF16)
    print(f"  {name}: weights written in {made:.1f} s; engine {engine_seconds:.1f} s (load "
          f"{float(meta.get('load_seconds', 0)):.1f} s, forward "
          f"{float(meta.get('forward_seconds', 0)):.2f} s, peak RSS "
          f"{int(meta.get('max_rss_bytes', 0)) / 2**30:.2f} GiB); reference "
          f"{time.time() - start:.1f} s", flush=True)
    shutil.rmtree(folder)


# ---------------------------------------------------------------------------------------------
# Timing (--bench): each full-size encoder alone through the conditioner, f32 and bf16 files.

BENCH_PROMPT = ("a red fox sitting in a snowy forest at dawn, soft golden light through tall "
                "pine trees, detailed fur, shallow depth of field")  # 20 words


def to_f32_file(bf16_path, f32_path):
    file = Bf16File(bf16_path)
    header, offset = {}, 0
    for name, info in file.header.items():
        nbytes = 4 * int(np.prod(info["shape"]))
        header[name] = {"dtype": "F32", "shape": info["shape"],
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(f32_path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in file.header:
            bits = file.bits(name).reshape(-1)
            for start in range(0, bits.size, 1 << 25):
                f.write(stio.bf16_bits_to_f32(np.asarray(bits[start:start + (1 << 25)]))
                        .tobytes())


def bench(workdir):
    clip_dir = os.environ.get("SG_CLIP_TOKENIZER_DIR")
    gemma_json = os.environ.get("SG_GEMMA_TOKENIZER")
    if not clip_dir or not gemma_json:
        print("bench needs SG_CLIP_TOKENIZER_DIR and SG_GEMMA_TOKENIZER (real tokenizers)")
        return
    encoders = [("text_encoder", "tokenizer", clip_module.CLIP_L_CONFIG, clip_specs,
                 "CLIPTextModelWithProjection", -2, True),
                ("text_encoder_2", "tokenizer_2", clip_module.CLIP_BIGG_CONFIG, clip_specs,
                 "CLIPTextModelWithProjection", -2, True),
                ("text_encoder_3", "tokenizer_3", gemma_module.GEMMA2_2B_CONFIG, gemma_specs,
                 "Gemma2ForCausalLM", "last", False)]
    for component, tokenizer, config, specs, class_name, layer, pooled in encoders:
        for dtype in ("bf16", "f32"):
            folder = os.path.join(workdir, "bench-model")
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(os.path.join(folder, "conditioner"))
            encoder_dir = os.path.join(folder, component)
            path, _ = write_folder(encoder_dir, config, specs(config), 11)
            if dtype == "f32":
                to_f32_file(path, path + ".f32")
                os.replace(path + ".f32", path)
            if component == "text_encoder_3":
                os.makedirs(os.path.join(folder, tokenizer))
                shutil.copy(gemma_json, os.path.join(folder, tokenizer, "tokenizer.json"))
            else:
                shutil.copytree(clip_dir, os.path.join(folder, tokenizer))
            entry = {"component": component, "tokenizer": tokenizer, "hidden_layer": layer,
                     "pooled": pooled, "mask_padding": not pooled, "max_tokens": 256}
            width = config.get("projection_dim", 0) if pooled else 0
            cond = {"context_dim": 1024, "pooled_dim": width, "encoders": [entry]}
            with open(os.path.join(folder, "conditioner", "config.json"), "w") as f:
                json.dump(cond, f)
            h = config["hidden_size"]
            stio.save_file(os.path.join(folder, "conditioner",
                                        "diffusion_pytorch_model.safetensors"),
                           {"context_proj.0.weight": np.full((1024, h), 0.01, np.float32),
                            "context_proj.0.bias": np.zeros(1024, np.float32)})
            with open(os.path.join(folder, "model_index.json"), "w") as f:
                json.dump({"conditioner": ["snapgen", "SnapGenConditioner"],
                           component: ["transformers", class_name],
                           tokenizer: ["transformers", "Tokenizer"]}, f)
            subprocess.run(["sync"])
            metadata = {"model_dir": folder, "prompt": BENCH_PROMPT, "negative": BENCH_PROMPT}
            result = run_engine("text-conditioner", {}, metadata, workdir, "bench")
            if result:
                _, meta, _ = result
                print(f"BENCH {component} {dtype} file: tokens {meta['encoder.0.tokens']} "
                      f"(real {meta['encoder.0.real_tokens']}), load "
                      f"{float(meta['encoder.0.load_seconds']):.2f} s, forward (second run) "
                      f"{float(meta['encoder.0.forward_seconds']) * 1e3:.0f} ms, peak RSS "
                      f"{int(meta['max_rss_bytes']) / 2**30:.2f} GiB", flush=True)
            shutil.rmtree(folder)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    wanted = args[0] if args else ""
    small_only = "--small" in sys.argv
    if not os.path.exists(SGCHECK):
        print(f"FAIL setup: sgcheck not found at {SGCHECK} (set SGCHECK)")
        return 1
    checks = [
        ("clip-small", check_clip_small),
        ("gemma2-small", check_gemma_small),
        ("clip-tokenizer", check_tokenizer),
        ("conditioner", check_conditioner),
    ]
    if not small_only:
        checks += [
            ("clip-l-full", lambda d: check_clip_full("clip-l-full", clip_module.CLIP_L_CONFIG,
                                                      d, 5)),
            ("clip-bigg-full", lambda d: check_clip_full("clip-bigg-full",
                                                         clip_module.CLIP_BIGG_CONFIG, d, 6)),
            ("gemma-2-2b-full", check_gemma_full),
        ]
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="test-text-", dir=os.environ.get("SG_TEST_TMP")) \
            as workdir:
        if "--bench" in sys.argv:
            bench(workdir)
            return 0
        for name, check in checks:
            if wanted in name:
                begun = time.time()
                check(workdir)
                print(f"  ({name}: {time.time() - begun:.1f} s)", flush=True)
    print(f"{len(failures)} failed, {time.time() - start:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
