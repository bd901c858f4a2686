# conditioner.py: text encoder outputs -> UNet context, mask and pooled vector (weights/README.md).
"""SnapGenConditioner: the "Text side" of weights/README.md as a PyTorch module.

conditioner/config.json lists the encoders in order:
  {"context_dim": 1024, "pooled_dim": 2048, "encoders": [
     {"component": "text_encoder", "tokenizer": "tokenizer", "hidden_layer": -2, "pooled": true,
      "mask_padding": false}, ...,
     {"component": "text_encoder_3", "tokenizer": "tokenizer_3", "hidden_layer": "last",
      "pooled": false, "mask_padding": true, "max_tokens": 256}]}
Each present encoder's chosen hidden states [L_i, H_i] go through context_proj.{i} (Linear H_i ->
context_dim) and are concatenated along tokens in order; mask 1 for every token, or with
mask_padding only for the real ones. The pooled outputs of the encoders with "pooled" are
concatenated into [pooled_dim]. A missing (or dropped) encoder gives zero tokens with mask 0 —
none with mask_padding, else max_tokens when given, else 77 — and a zero pooled part (its width:
the entry's "pooled_dim", else what the present ones leave of pooled_dim). A context with no token
gets one zero token with mask 0. Same rules as engine/src/conditioner.c.
"""
import torch
import torch.nn as nn

from . import clip as clip_module

CLIP_SLOT_TOKENS = 77
GEMMA_DEFAULT_TOKENS = 256

DEFAULT_CONFIG = {
    "context_dim": 1024, "pooled_dim": 2048,
    "encoders": [
        {"component": "text_encoder", "tokenizer": "tokenizer", "hidden_layer": -2,
         "pooled": True, "mask_padding": False},
        {"component": "text_encoder_2", "tokenizer": "tokenizer_2", "hidden_layer": -2,
         "pooled": True, "mask_padding": False},
        {"component": "text_encoder_3", "tokenizer": "tokenizer_3", "hidden_layer": "last",
         "pooled": False, "mask_padding": True, "max_tokens": 256},
    ],
}


def select_hidden(out, hidden_layer):
    """hidden_states[hidden_layer], or last_hidden_state for "last"."""
    if hidden_layer in (None, "last"):
        return out["last_hidden_state"]
    return out["hidden_states"][hidden_layer]


def missing_tokens(entry):
    if entry.get("mask_padding"):
        return 0
    return entry.get("max_tokens") or CLIP_SLOT_TOKENS


class SnapGenConditioner(nn.Module):
    def __init__(self, config, hidden_widths):
        """hidden_widths[i]: the hidden width of encoder i (its context_proj input)."""
        super().__init__()
        self.config = config
        self.context_dim = config["context_dim"]
        self.pooled_dim = config.get("pooled_dim", 0)
        self.context_proj = nn.ModuleList(nn.Linear(h, self.context_dim) for h in hidden_widths)

    def pooled_widths(self, outputs):
        """Width of each encoder's pooled part (0 when it adds none)."""
        entries = self.config["encoders"]
        widths, unknown = [], []
        for i, (entry, out) in enumerate(zip(entries, outputs)):
            if not entry.get("pooled"):
                widths.append(0)
            elif out is not None:
                widths.append(out["pooled"].shape[-1])
            else:
                widths.append(entry.get("pooled_dim", 0))
                if not entry.get("pooled_dim"):
                    unknown.append(i)
        if len(unknown) == 1 and any(o is not None and e.get("pooled")
                                     for e, o in zip(entries, outputs)):
            widths[unknown[0]] = self.pooled_dim - sum(widths)
        return widths

    def forward(self, outputs):
        """outputs[i]: None for a missing encoder, else {"hidden": [L, H_i], "pooled": [P_i] or
        None, "real_tokens": int}. Returns context [S, context_dim], mask [S], pooled [pooled_dim]
        (None when pooled_dim is 0)."""
        entries = self.config["encoders"]
        contexts, masks = [], []
        for i, (entry, out) in enumerate(zip(entries, outputs)):
            if out is None:
                n = missing_tokens(entry)
                contexts.append(torch.zeros(n, self.context_dim))
                masks.append(torch.zeros(n))
                continue
            hidden = out["hidden"]
            contexts.append(self.context_proj[i](hidden))
            mask = torch.ones(hidden.shape[0])
            if entry.get("mask_padding"):
                mask[out["real_tokens"]:] = 0.0
            masks.append(mask)
        context, mask = torch.cat(contexts), torch.cat(masks)
        if context.shape[0] == 0:
            context, mask = torch.zeros(1, self.context_dim), torch.zeros(1)
        pooled = None
        if self.pooled_dim:
            parts = []
            for entry, out, width in zip(entries, outputs, self.pooled_widths(outputs)):
                if not entry.get("pooled"):
                    continue
                parts.append(out["pooled"] if out is not None else torch.zeros(width))
            pooled = torch.zeros(self.pooled_dim)
            if parts:
                joined = torch.cat(parts)
                pooled[:joined.shape[0]] = joined
        return context, mask, pooled


def encoder_output(kind, model, ids, entry, real_tokens=None):
    """Runs one encoder ("clip" or "gemma2") on a list of ids the way the engine does: CLIP on
    its padded ids with the causal mask only, Gemma-2 on its real tokens."""
    input_ids = torch.tensor([ids], dtype=torch.long)
    out = model(input_ids)
    hidden = select_hidden(out, entry.get("hidden_layer", "last"))[0]
    pooled = None
    if kind == "clip" and entry.get("pooled"):
        pooled = clip_module.pooled_of(model, out)[0]
    return {"hidden": hidden, "pooled": pooled,
            "real_tokens": len(ids) if real_tokens is None else real_tokens}
