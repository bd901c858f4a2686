# gemma2.py: the Gemma-2 decoder stack in PyTorch as a text encoder, Hugging Face's keys.
"""Gemma2Model written from the published architecture (Gemma Team 2024, "Gemma 2: Improving Open
Language Models at a Practical Size"), with the configuration fields and parameter names of Hugging
Face's `Gemma2Config` checkpoints (a Gemma2Model state_dict; Gemma2ForCausalLM files put "model."
in front of every name):

    embed_tokens.weight                                  [vocab, H]
    layers.{i}.input_layernorm.weight                    RMSNorm, scale (1 + w)
    layers.{i}.self_attn.{q,k,v,o}_proj.weight           no bias (attention_bias false)
    layers.{i}.post_attention_layernorm.weight
    layers.{i}.pre_feedforward_layernorm.weight
    layers.{i}.mlp.{gate,up,down}_proj.weight            down(act(gate(x)) * up(x)), act GELU tanh
    layers.{i}.post_feedforward_layernorm.weight
    norm.weight

Embeddings × sqrt(H) (the factor rounded to the compute dtype), grouped-query attention with
rotary position embedding (rotate-half pairing), scale query_pre_attn_scalar^-0.5, logits
soft-capped c·tanh(s/c), causal mask, and on the even layers (0, 2, ...) a sliding window (key j
is hidden from query i when i - j >= sliding_window).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_CONFIG = {
    "vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216,
    "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "query_pre_attn_scalar": 256, "attn_logit_softcapping": None, "final_logit_softcapping": None,
    "sliding_window": None, "attention_bias": False, "hidden_activation": "gelu_pytorch_tanh",
}

# The published google/gemma-2-2b configuration.
GEMMA2_2B_CONFIG = {
    "architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid",
    "eos_token_id": 1, "final_logit_softcapping": 30.0, "head_dim": 256,
    "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 2304, "initializer_range": 0.02, "intermediate_size": 9216,
    "max_position_embeddings": 8192, "model_type": "gemma2", "num_attention_heads": 8,
    "num_hidden_layers": 26, "num_key_value_heads": 4, "pad_token_id": 0,
    "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
    "sliding_window": 4096, "torch_dtype": "float32", "vocab_size": 256000,
}


def full_config(config):
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(config)
    if "hidden_activation" not in config and "hidden_act" in config:
        cfg["hidden_activation"] = config["hidden_act"]
    if cfg["num_attention_heads"] % cfg["num_key_value_heads"] or cfg["head_dim"] % 2:
        raise ValueError("gemma2 config: heads must split into K/V groups; head_dim must be even")
    activation(cfg["hidden_activation"])
    return cfg


def activation(name):
    if name in ("gelu_pytorch_tanh", "gelu_new"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu
    raise ValueError(f"gemma2 config: unknown hidden_activation {name!r}")


class Gemma2RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · (1 + w), computed in float32."""

    def __init__(self, width, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(width))

    def forward(self, x):
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).type_as(x)


def rope_tables(cfg, count, dtype=torch.float32):
    """cos, sin [count, head_dim] for positions 0..count-1 (float32 angles, rotate-half layout)."""
    dim = cfg["head_dim"]
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv_freq = 1.0 / (cfg["rope_theta"] ** exponents)
    angles = torch.arange(count).float()[:, None] * inv_freq[None, :]
    both = torch.cat([angles, angles], dim=-1)
    return both.cos().to(dtype), both.sin().to(dtype)


def rotate(x, cos, sin):
    """x [B, heads, T, d]: x·cos + rotate_half(x)·sin with rotate_half(x) = [-x2, x1]."""
    half = x.shape[-1] // 2
    turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + turned * sin


class Gemma2Attention(nn.Module):
    def __init__(self, cfg, index):
        super().__init__()
        self.heads, self.kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.head_dim = cfg["head_dim"]
        self.scale = cfg["query_pre_attn_scalar"] ** -0.5
        self.softcap = cfg["attn_logit_softcapping"]
        self.window = cfg["sliding_window"] if index % 2 == 0 else None
        width, bias = cfg["hidden_size"], cfg["attention_bias"]
        self.q_proj = nn.Linear(width, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(width, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(width, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, width, bias=bias)

    def forward(self, x, cos, sin, key_mask=None):
        b, t, _ = x.shape

        def split(y, heads):
            return y.view(b, t, heads, self.head_dim).transpose(1, 2)

        q = rotate(split(self.q_proj(x), self.heads), cos, sin)
        k = rotate(split(self.k_proj(x), self.kv_heads), cos, sin)
        v = split(self.v_proj(x), self.kv_heads)
        group = self.heads // self.kv_heads
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        scores = (q @ k.transpose(-1, -2)) * self.scale
        if self.softcap:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        i = torch.arange(t)[:, None]
        j = torch.arange(t)[None, :]
        hidden = j > i
        if self.window:
            hidden = hidden | (i - j >= self.window)
        if key_mask is not None:
            hidden = hidden | (key_mask[:, None, None, :] < 0.5)
        scores = scores.masked_fill(hidden, float("-inf"))
        out = torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class Gemma2MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        width, inner = cfg["hidden_size"], cfg["intermediate_size"]
        self.act = activation(cfg["hidden_activation"])
        self.gate_proj = nn.Linear(width, inner, bias=False)
        self.up_proj = nn.Linear(width, inner, bias=False)
        self.down_proj = nn.Linear(inner, width, bias=False)

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Gemma2DecoderLayer(nn.Module):
    def __init__(self, cfg, index):
        super().__init__()
        width, eps = cfg["hidden_size"], cfg["rms_norm_eps"]
        self.self_attn = Gemma2Attention(cfg, index)
        self.mlp = Gemma2MLP(cfg)
        self.input_layernorm = Gemma2RMSNorm(width, eps)
        self.post_attention_layernorm = Gemma2RMSNorm(width, eps)
        self.pre_feedforward_layernorm = Gemma2RMSNorm(width, eps)
        self.post_feedforward_layernorm = Gemma2RMSNorm(width, eps)

    def forward(self, x, cos, sin, key_mask=None):
        x = x + self.post_attention_layernorm(
            self.self_attn(self.input_layernorm(x), cos, sin, key_mask))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


def embed(cfg, table, input_ids):
    """Token embeddings × sqrt(hidden_size), the factor rounded to the table's dtype first."""
    x = F.embedding(input_ids, table)
    return x * torch.tensor(cfg["hidden_size"] ** 0.5, dtype=x.dtype)


class Gemma2Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = full_config(config)
        cfg = self.config
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList(Gemma2DecoderLayer(cfg, i)
                                    for i in range(cfg["num_hidden_layers"]))
        self.norm = Gemma2RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])

    def forward(self, input_ids, attention_mask=None):
        """input_ids [B, T] (positions 0..T-1) -> dict of last_hidden_state (after the final norm)
        and hidden_states (T+1 entries: embeddings, the outputs of layers 1..L-1, and last)."""
        x = embed(self.config, self.embed_tokens.weight, input_ids)
        cos, sin = rope_tables(self.config, input_ids.shape[-1], x.dtype)
        hidden_states = []
        for layer in self.layers:
            hidden_states.append(x)
            x = layer(x, cos, sin, attention_mask)
        x = self.norm(x)
        hidden_states.append(x)
        return {"last_hidden_state": x, "hidden_states": tuple(hidden_states)}


def causal_lm_names(state_dict):
    """A Gemma2Model state_dict under Gemma2ForCausalLM's names ("model." prefix)."""
    return {"model." + k: v for k, v in state_dict.items()}
