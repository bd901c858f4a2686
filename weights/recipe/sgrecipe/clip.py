# clip.py: CLIP's text transformer in PyTorch, state_dict keys identical to Hugging Face's.
"""CLIPTextModel / CLIPTextModelWithProjection written from the published architecture (Radford et
al. 2021, the OpenAI and OpenCLIP text towers), with the configuration fields and parameter names
of Hugging Face's `CLIPTextConfig` checkpoints so that their files load unchanged:

    text_model.embeddings.token_embedding.weight        [vocab, H]
    text_model.embeddings.position_embedding.weight     [positions, H]
    text_model.encoder.layers.{i}.layer_norm1.{weight,bias}
    text_model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj.{weight,bias}
    text_model.encoder.layers.{i}.layer_norm2.{weight,bias}
    text_model.encoder.layers.{i}.mlp.fc1.{weight,bias}, mlp.fc2.{weight,bias}
    text_model.final_layer_norm.{weight,bias}
    text_projection.weight                              [projection_dim, H] (with projection)

Pre-norm transformer with a causal mask; the pooled output is the final-normed state at the EOS
token (legacy configs with eos_token_id == 2: the position of the largest id).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_CONFIG = {
    "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
    "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 512,
    "eos_token_id": 49407,
}

# Published configurations (the text towers of SDXL / SD3: text_encoder and text_encoder_2).
CLIP_L_CONFIG = {
    "architectures": ["CLIPTextModelWithProjection"], "vocab_size": 49408, "hidden_size": 768,
    "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    "projection_dim": 768, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
    "model_type": "clip_text_model",
}
CLIP_BIGG_CONFIG = {
    "architectures": ["CLIPTextModelWithProjection"], "vocab_size": 49408, "hidden_size": 1280,
    "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
    "max_position_embeddings": 77, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
    "projection_dim": 1280, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
    "model_type": "clip_text_model",
}


def full_config(config):
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(config)
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise ValueError("clip config: hidden_size must split into num_attention_heads")
    activation(cfg["hidden_act"])
    return cfg


def activation(name):
    """The activation a Hugging Face hidden_act name stands for."""
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    raise ValueError(f"clip config: unknown hidden_act {name!r}")


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.position_embedding = nn.Embedding(cfg["max_position_embeddings"], cfg["hidden_size"])

    def forward(self, input_ids):
        positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
        return self.token_embedding(input_ids) + self.position_embedding(positions)


class CLIPAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        width = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.head_dim = width // self.heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x, bias):
        b, t, width = x.shape

        def split(y):
            return y.view(b, t, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim) + bias
        out = torch.softmax(scores, dim=-1) @ v
        return self.out_proj(out.transpose(1, 2).reshape(b, t, width))


class CLIPMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.act = activation(cfg["hidden_act"])
        self.fc1 = nn.Linear(cfg["hidden_size"], cfg["intermediate_size"])
        self.fc2 = nn.Linear(cfg["intermediate_size"], cfg["hidden_size"])

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        eps = cfg["layer_norm_eps"]
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg["hidden_size"], eps=eps)
        self.mlp = CLIPMLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg["hidden_size"], eps=eps)

    def forward(self, x, bias):
        x = x + self.self_attn(self.layer_norm1(x), bias)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg["num_hidden_layers"]))


class CLIPTextTransformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.embeddings = CLIPTextEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_eps"])

    def forward(self, input_ids, attention_mask=None):
        """input_ids [B, T] -> dict of last_hidden_state, hidden_states (T+1 entries: embeddings,
        then each layer's output before the final norm) and pooler_output."""
        t = input_ids.shape[-1]
        x = self.embeddings(input_ids)
        bias = torch.full((t, t), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
        if attention_mask is not None:  # padding keys, as transformers takes them
            pad = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
            bias = bias + pad
        hidden_states = [x]
        for layer in self.encoder.layers:
            x = layer(x, bias)
            hidden_states.append(x)
        last = self.final_layer_norm(x)
        eos = eos_positions(input_ids, self.config["eos_token_id"])
        pooled = last[torch.arange(last.shape[0]), eos]
        return {"last_hidden_state": last, "hidden_states": tuple(hidden_states),
                "pooler_output": pooled}


def eos_positions(input_ids, eos_token_id):
    """Where the pooled token is, per sequence (transformers' rule)."""
    if eos_token_id == 2:  # legacy configs: the EOS id is the largest one
        return input_ids.argmax(dim=-1)
    return (input_ids == eos_token_id).int().argmax(dim=-1)


class CLIPTextModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = full_config(config)
        self.text_model = CLIPTextTransformer(self.config)

    def forward(self, input_ids, attention_mask=None):
        return self.text_model(input_ids, attention_mask)


class CLIPTextModelWithProjection(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = full_config(config)
        self.text_model = CLIPTextTransformer(self.config)
        self.text_projection = nn.Linear(self.config["hidden_size"], self.config["projection_dim"],
                                         bias=False)

    def forward(self, input_ids, attention_mask=None):
        out = self.text_model(input_ids, attention_mask)
        out["text_embeds"] = self.text_projection(out["pooler_output"])
        return out


def make_model(config):
    """The class config["architectures"] names (default: with projection)."""
    names = config.get("architectures") or ["CLIPTextModelWithProjection"]
    if names[0] == "CLIPTextModel":
        return CLIPTextModel(config)
    return CLIPTextModelWithProjection(config)


def pooled_of(model, out):
    """The pooled vector the conditioner takes: text_embeds with the projection, else
    pooler_output."""
    return out["text_embeds"] if "text_embeds" in out else out["pooler_output"]
