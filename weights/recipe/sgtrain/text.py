# text.py: the default model's text side: a tiny CLIP BPE vocabulary, CLIP text encoder, conditioner.
"""Text side of the default model, in the Hugging Face forms the engine loads (weights/README.md
"Text side"):

* tokenizer/: vocab.json + merges.txt in CLIPTokenizer format (byte-level alphabet, "</w>" word
  ends, <|startoftext|> / <|endoftext|> last), learned by BPE on ShapeWorld's words so each word
  is one token;
* text_encoder/: a tiny CLIPTextModelWithProjection (HF tensor names), trained with the teacher;
* conditioner/: context_proj.0 = Linear(hidden -> context_dim); pooled = text_embeds.

sgrecipe.clip / sgrecipe.clip_tokenizer (the engine's reference twins) are used when present;
otherwise the small HF-compatible versions below stand in (same tensor names and token ids).
"""
import json
import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

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


class SimpleClipTokenizer:
    """CLIP BPE over vocab.json + merges.txt for plain text (lower-cased, white space collapsed;
    no ftfy/HTML clean-up). Stand-in for sgrecipe.clip_tokenizer; same ids on ShapeWorld text."""

    PATTERN = re.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"
                         r"[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE)

    def __init__(self, folder):
        with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
            self.vocab = json.load(f)
        with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
            lines = f.read().strip().split("\n")[1:]
        self.ranks = {tuple(line.split()): i for i, line in enumerate(lines)}
        self.byte_chars = bytes_to_unicode()
        self.bos_id, self.eos_id, self.pad_id = self.vocab[BOS], self.vocab[EOS], self.vocab[EOS]
        self.cache = {}

    def _bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        symbols = _word_symbols(word, self.byte_chars)
        while len(symbols) > 1:
            pairs = [(self.ranks.get(p, 1 << 30), p) for p in zip(symbols, symbols[1:])]
            rank, pair = min(pairs)
            if rank == 1 << 30:
                break
            symbols = _merge_pair(symbols, pair)
        self.cache[word] = symbols
        return symbols

    def encode(self, text):
        text = " ".join(text.split()).lower()
        ids = []
        for piece in self.PATTERN.findall(text):
            if piece in (BOS, EOS):
                ids.append(self.vocab[piece])
                continue
            ids.extend(self.vocab[s] for s in self._bpe(piece))
        return ids

    def __call__(self, text):
        """BOS, tokens (cut to 75), EOS, padded with the pad id to 77."""
        ids = [self.bos_id] + self.encode(text)[:MAX_LENGTH - 2] + [self.eos_id]
        return ids + [self.pad_id] * (MAX_LENGTH - len(ids))


def load_tokenizer(folder):
    """A callable text -> 77 ids. Uses sgrecipe.clip_tokenizer when it exists."""
    try:
        from sgrecipe import clip_tokenizer  # the engine's reference tokenizer (another file)
    except ImportError:
        return SimpleClipTokenizer(folder)
    return _ReferenceTokenizer(clip_tokenizer, folder)


class _ReferenceTokenizer:
    """Adapter over sgrecipe.clip_tokenizer (API probed: a class taking the folder, with a
    tokenize/__call__ giving padded ids)."""

    def __init__(self, module, folder):
        cls = getattr(module, "CLIPTokenizer", None) or getattr(module, "ClipTokenizer")
        loader = getattr(cls, "from_folder", None) or getattr(cls, "from_pretrained", None)
        self.tok = loader(folder) if loader else cls(folder)

    def __call__(self, text):
        tok = self.tok
        for name in ("tokenize_padded", "tokenize", "__call__"):
            fn = getattr(tok, name, None)
            if fn is None:
                continue
            out = fn(text)
            ids = out.get("input_ids") if isinstance(out, dict) else \
                getattr(out, "ids", None) or getattr(out, "input_ids", None) or out
            ids = list(ids[0] if ids and isinstance(ids[0], (list, tuple)) else ids)
            if len(ids) < MAX_LENGTH:  # pad like diffusers (max_length padding)
                ids += [ids[-1]] * (MAX_LENGTH - len(ids))
            return ids[:MAX_LENGTH]
        raise AttributeError("sgrecipe.clip_tokenizer: no tokenize method found")


# ---------------------------------------------------------------------------------------------
# CLIP text encoder (Hugging Face CLIPTextModelWithProjection names)


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


class _Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x, mask):
        b, n, d = x.shape
        split = lambda t: t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        scores = torch.matmul(q * (d // self.heads) ** -0.5, k.transpose(-1, -2)) + mask
        probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        return self.out_proj(torch.matmul(probs, v).transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.fc1 = nn.Linear(cfg["hidden_size"], cfg["intermediate_size"])
        self.fc2 = nn.Linear(cfg["intermediate_size"], cfg["hidden_size"])
        self.quick = cfg["hidden_act"] == "quick_gelu"

    def forward(self, x):
        h = self.fc1(x)
        h = h * torch.sigmoid(1.702 * h) if self.quick else F.gelu(h)
        return self.fc2(h)


class _Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        eps = cfg["layer_norm_eps"]
        self.self_attn = _Attention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg["hidden_size"], eps)
        self.mlp = _Mlp(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg["hidden_size"], eps)

    def forward(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class _TextTransformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.token_embedding = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.embeddings.position_embedding = nn.Embedding(cfg["max_position_embeddings"],
                                                          cfg["hidden_size"])
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.final_layer_norm = nn.LayerNorm(cfg["hidden_size"], cfg["layer_norm_eps"])


class SimpleCLIPTextModelWithProjection(nn.Module):
    """transformers' CLIPTextModelWithProjection (causal mask, pre-LN layers, final LN, pooled =
    EOS token, text_projection without bias); forward(input_ids) -> (last_hidden_state,
    text_embeds, hidden_states). Stand-in for sgrecipe.clip."""

    def __init__(self, config):
        super().__init__()
        self.config = dict(config)
        self.text_model = _TextTransformer(self.config)
        self.text_projection = nn.Linear(config["hidden_size"], config["projection_dim"],
                                         bias=False)
        self.apply(self._init)

    def _init(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def forward(self, input_ids):
        tm = self.text_model
        n = input_ids.shape[1]
        positions = torch.arange(n, device=input_ids.device)
        x = tm.embeddings.token_embedding(input_ids) + tm.embeddings.position_embedding(positions)
        mask = torch.full((n, n), float("-inf"), device=x.device).triu(1)
        hidden_states = [x]
        for layer in tm.encoder.layers:
            x = layer(x, mask)
            hidden_states.append(x)
        last = tm.final_layer_norm(x)
        eos = self.config["eos_token_id"]
        if eos == 2:  # transformers' legacy rule
            where = input_ids.to(torch.int64).argmax(dim=-1)
        else:
            where = (input_ids == eos).int().argmax(dim=-1)
        pooled = last[torch.arange(last.shape[0], device=last.device), where]
        return last, self.text_projection(pooled), tuple(hidden_states)


def make_text_encoder(config):
    """CLIPTextModelWithProjection(config): sgrecipe.clip's when present, else the stand-in."""
    try:
        from sgrecipe import clip
    except ImportError:
        return SimpleCLIPTextModelWithProjection(config)
    return clip.CLIPTextModelWithProjection(config)


def encoder_outputs(encoder, input_ids):
    """(last_hidden_state [B,L,H], text_embeds [B,P]) from either implementation."""
    out = encoder(input_ids)
    if isinstance(out, (tuple, list)):
        return out[0], out[1]
    return out["last_hidden_state"], out["text_embeds"]


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
