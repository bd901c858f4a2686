# text.py: the default model's text side: tiny CLIP BPE vocabulary, CLIP text encoder, conditioner.
"""Text side of the default model, in the Hugging Face forms the engine loads (weights/README.md
"Text side"):

* tokenizer/: vocab.json + merges.txt in CLIPTokenizer format (byte-level alphabet, "</w>" word
  ends, <|startoftext|> / <|endoftext|> last), learned by BPE on ShapeWorld's words so each word
  is one token;
* text_encoder/: a tiny CLIPTextModelWithProjection (HF tensor names), trained with the teacher;
* conditioner/: context_proj.0 = Linear(hidden -> context_dim); pooled = text_embeds.

The modules are sgrecipe.clip / sgrecipe.clip_tokenizer (the engine's reference twins); only the
vocabulary is made here.
"""
import json
import os
import re

import torch
import torch.nn as nn

from sgrecipe import clip, clip_tokenizer
from shapeworld import world

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77


def shapeworld_words():
    """Every word a ShapeWorld caption or prompt can use (the parser's prefixes included)."""
    words = {"a", "an", "photo", "image", "picture", "of", "and"}
    words.update(world.SHAPES)
    words.update(world.PLURALS.values())
    words.update(world.COLORS)
    words.update(world.COUNT_WORDS)
    for phrase in list(world.RELATION_PHRASES.values()) + list(world.RELATIONS):
        words.update(phrase.split())
    return sorted(words)


def bytes_to_unicode():
    """GPT-2/CLIP's byte -> printable character table (as an ordered dict: byte order of CLIP)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _word_symbols(word, byte_chars):
    chars = [byte_chars[b] for b in word.encode("utf-8")]
    return chars[:-1] + [chars[-1] + "</w>"]


def _merge_pair(symbols, pair):
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def learn_bpe(words):
    """BPE merges learned on the word list until every word is one symbol (ties: smallest pair)."""
    byte_chars = bytes_to_unicode()
    sequences = [_word_symbols(w, byte_chars) for w in words]
    merges = []
    while True:
        counts = {}
        for seq in sequences:
            for pair in zip(seq, seq[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        sequences = [_merge_pair(seq, best) for seq in sequences]


def write_tokenizer(folder, words=None):
    """Writes vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json (CLIP form).
    Returns the vocabulary size."""
    os.makedirs(folder, exist_ok=True)
    merges = learn_bpe(words or shapeworld_words())
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    for pair in merges:
        if pair[0] + pair[1] not in tokens:
            tokens.append(pair[0] + pair[1])
    tokens += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({**special, "model_max_length": MAX_LENGTH, "do_lower_case": True,
                   "add_prefix_space": False, "clean_up_tokenization_spaces": True,
                   "errors": "replace", "tokenizer_class": "CLIPTokenizer"}, f, indent=2)
    return len(vocab)


def load_tokenizer(folder):
    """A callable text -> 77 ids (BOS, tokens, EOS, padding): sgrecipe.clip_tokenizer, the
    engine's rules."""
    tokenizer = clip_tokenizer.CLIPTokenizer(folder)
    return lambda text: tokenizer(text)[0]


# ---------------------------------------------------------------------------------------------
# CLIP text encoder (Hugging Face CLIPTextModelWithProjection names, sgrecipe.clip)


def clip_config(vocab_size, bos_id, eos_id, hidden=128, layers=3, heads=4, intermediate=512,
                projection=128):
    """A transformers CLIPTextConfig dict for the tiny encoder."""
    return {"architectures": ["CLIPTextModelWithProjection"], "model_type": "clip_text_model",
            "vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": intermediate,
            "projection_dim": projection, "num_hidden_layers": layers,
            "num_attention_heads": heads, "max_position_embeddings": MAX_LENGTH,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "attention_dropout": 0.0,
            "dropout": 0.0, "initializer_range": 0.02, "initializer_factor": 1.0,
            "pad_token_id": eos_id, "bos_token_id": bos_id, "eos_token_id": eos_id,
            "torch_dtype": "float32"}


def make_text_encoder(config):
    """CLIPTextModelWithProjection(config), initialised as CLIP is (normal 0.02, zero biases)."""
    model = clip.CLIPTextModelWithProjection(config)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
    return model


def encoder_outputs(encoder, input_ids):
    """(last_hidden_state [B,L,H], text_embeds [B,P]): sgrecipe.clip's forward, step by step
    with its own modules, except that the pooled row index is made on the device (clip.py
    builds it on the CPU, which costs a GPU synchronisation per call in training). The export
    stage checks this against the reference path."""
    tm = encoder.text_model
    x = tm.embeddings(input_ids)
    length = input_ids.shape[-1]
    bias = torch.full((length, length), float("-inf"), device=x.device).triu(1)
    for layer in tm.encoder.layers:
        x = layer(x, bias)
    last = tm.final_layer_norm(x)
    eos = clip.eos_positions(input_ids, encoder.config["eos_token_id"])
    pooled = last[torch.arange(last.shape[0], device=last.device), eos]
    return last, encoder.text_projection(pooled)


class Conditioner(nn.Module):
    """context = context_proj.0(last_hidden_state) (all 77 tokens, none masked, as CLIP's
    mask_padding false); pooled = text_embeds."""

    def __init__(self, hidden, context_dim):
        super().__init__()
        self.context_proj = nn.ModuleList([nn.Linear(hidden, context_dim)])

    def forward(self, last_hidden_state):
        return self.context_proj[0](last_hidden_state)


def conditioner_config(context_dim, pooled_dim):
    return {"context_dim": context_dim, "pooled_dim": pooled_dim,
            "encoders": [{"component": "text_encoder", "tokenizer": "tokenizer",
                          "hidden_layer": "last", "pooled": True, "mask_padding": False}]}


def swap_left_right(caption):
    """The caption of the horizontally mirrored scene."""
    return re.sub(r"\b(left|right)\b", lambda m: "right" if m.group(1) == "left" else "left",
                  caption)


def tokenize_all(tokenizer, captions):
    """LongTensor [N, 77] of ids for a list of captions (each distinct caption tokenized once)."""
    cache = {}
    rows = []
    for caption in captions:
        if caption not in cache:
            cache[caption] = tokenizer(caption)
        rows.append(cache[caption])
    return torch.tensor(rows, dtype=torch.int64)
