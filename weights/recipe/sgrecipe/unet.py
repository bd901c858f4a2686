# unet.py: SnapGen's efficient UNet denoiser in PyTorch (tensor names per weights/README.md).
"""SnapGenUNet: v = UNet(x_t, t·1000, context, pooled) (SPEC §2.3, weights/README.md).

Every module attribute path equals the tensor name in the model folder, so state_dict() can be
written out unchanged. Attention is plain matmul + softmax (faster than SDPA on the target CPUs).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_CONFIG = {
    "in_channels": 16, "out_channels": 16,
    "block_channels": [256, 512, 896],
    "down_res_blocks": [2, 2, 2], "up_res_blocks": [3, 3, 3],
    "transformer_depth": [1, 2, 4], "self_attention": [False, False, True],
    "mid_transformer_depth": 4, "mid_self_attention": True,
    "head_dim": 64, "num_kv_heads": 1, "context_dim": 1024,
    "ffn_type": "geglu", "ffn_mult": 3,
    "separable": True, "expansion": 2,
    "time_proj_dim": 256, "time_embed_dim": 1024, "flip_sin_to_cos": True,
    "pooled_dim": 2048,
    "norm_groups": 32, "norm_eps": 1e-5,
    "qk_norm": True, "qk_norm_eps": 1e-6,
}


def full_config(config):
    """config with defaults filled in and checked (raises ValueError naming the bad field)."""
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(config)
    n = len(cfg["block_channels"])
    for key in ("down_res_blocks", "up_res_blocks", "transformer_depth", "self_attention"):
        if len(cfg[key]) != n:
            raise ValueError(f"unet config: '{key}' needs {n} entries (one per stage)")
    if cfg["ffn_type"] not in ("geglu", "gelu"):
        raise ValueError("unet config: 'ffn_type' must be \"geglu\" or \"gelu\"")
    if cfg["time_proj_dim"] % 2:
        raise ValueError("unet config: 'time_proj_dim' must be even")
    groups = cfg["norm_groups"]
    for c in cfg["block_channels"]:
        inner_width(c, cfg["ffn_mult"])
        if c % groups or c % cfg["head_dim"] or \
                (cfg["separable"] and inner_width(c, cfg["expansion"]) % groups):
            raise ValueError(f"unet config: stage width {c} must divide by norm_groups and head_dim")
        if (c // cfg["head_dim"]) % cfg["num_kv_heads"]:
            raise ValueError(f"unet config: {c // cfg['head_dim']} heads do not split into "
                             f"{cfg['num_kv_heads']} K/V heads")
    pushes = 1 + sum(cfg["down_res_blocks"]) + n - 1
    if sum(cfg["up_res_blocks"]) != pushes:
        raise ValueError(f"unet config: up_res_blocks must add up to {pushes} (one per skip)")
    return cfg


def inner_width(channels, ratio):
    """Width of an expanded layer, ratio × channels, which must be a whole number (as in C)."""
    width = round(ratio * channels)
    if abs(ratio * channels - width) > 1e-6 or width < 1:
        raise ValueError(f"unet config: {ratio} x {channels} channels is not a whole width")
    return width


def conv3x3(cin, cout, stride=1, bias=True):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


class ResBlock(nn.Module):
    """Residual block with time conditioning; expanded separable (DW+PW) or dense 3×3."""

    def __init__(self, cin, cout, temb_dim, cfg):
        super().__init__()
        groups, eps = cfg["norm_groups"], cfg["norm_eps"]
        self.separable = cfg["separable"]
        self.norm1 = nn.GroupNorm(groups, cin, eps)
        if self.separable:
            hidden = inner_width(cout, cfg["expansion"])
            self.dw1 = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
            self.pw1 = nn.Conv2d(cin, hidden, 1)
            self.time_proj = nn.Linear(temb_dim, hidden)
            self.norm2 = nn.GroupNorm(groups, hidden, eps)
            self.dw2 = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
            self.pw2 = nn.Conv2d(hidden, cout, 1)
        else:
            self.conv1 = conv3x3(cin, cout)
            self.time_proj = nn.Linear(temb_dim, cout)
            self.norm2 = nn.GroupNorm(groups, cout, eps)
            self.conv2 = conv3x3(cout, cout)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb):
        h = F.silu(self.norm1(x))
        h = self.pw1(self.dw1(h)) if self.separable else self.conv1(h)
        h = h + self.time_proj(F.silu(temb))[:, :, None, None]
        h = F.silu(self.norm2(h))
        h = self.pw2(self.dw2(h)) if self.separable else self.conv2(h)
        return h + (self.shortcut(x) if self.shortcut is not None else x)


class RMSNorm(nn.Module):
    """x · rsqrt(mean(x²) + eps) · weight over the last axis."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def attention(q, k, v, heads, kv_heads, head_dim, key_mask=None):
    """Softmax attention, grouped-query: q [B,N,heads·d], k/v [B,S,kv·d] -> [B,N,heads·d].

    Query head h uses K/V head h // (heads/kv_heads). key_mask [B,S] bool: False keys get -inf;
    a row whose keys are all masked gives zeros.
    """
    b, n, _ = q.shape
    s = k.shape[1]
    group = heads // kv_heads
    # [B·kv, group·N, d]: the query heads sharing one K/V head are stacked along the rows. The
    # products are 3-D (bmm): torch.compile (2.6) fails on the 4-D matmul's backward here.
    q = q.reshape(b, n, kv_heads, group, head_dim).permute(0, 2, 3, 1, 4)
    q = q.reshape(b * kv_heads, group * n, head_dim)
    k = k.reshape(b, s, kv_heads, head_dim).permute(0, 2, 3, 1)  # [B, kv, d, S]
    k = k.reshape(b * kv_heads, head_dim, s)
    v = v.reshape(b, s, kv_heads, head_dim).transpose(1, 2)      # [B, kv, S, d]
    v = v.reshape(b * kv_heads, s, head_dim)
    scores = torch.bmm(q, k) * (1.0 / math.sqrt(head_dim))       # [B·kv, group·N, S]
    if key_mask is not None:
        row_empty = ~key_mask.any(dim=1)                          # [B]
        visible = key_mask | row_empty[:, None]                   # avoid all -inf rows (NaN)
        scores = scores.reshape(b, kv_heads, group * n, s)
        scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
        scores = scores.reshape(b * kv_heads, group * n, s)
    probs = torch.softmax(scores, dim=-1)
    if key_mask is not None:
        keep = (~row_empty).to(probs.dtype).repeat_interleave(kv_heads)
        probs = probs * keep[:, None, None]
    out = torch.bmm(probs, v)                                     # [B·kv, group·N, d]
    out = out.reshape(b, kv_heads, group, n, head_dim).permute(0, 3, 1, 2, 4)
    return out.reshape(b, n, heads * head_dim)


class Attention(nn.Module):
    """Multi-head (or multi-/grouped-query) attention with optional per-head q/k RMS norm."""

    def __init__(self, channels, kv_input_dim, cfg):
        super().__init__()
        self.head_dim = cfg["head_dim"]
        self.heads = channels // self.head_dim
        self.kv_heads = cfg["num_kv_heads"]
        kv_width = self.kv_heads * self.head_dim
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(kv_input_dim, kv_width, bias=False)
        self.to_v = nn.Linear(kv_input_dim, kv_width, bias=False)
        self.to_out = nn.Linear(channels, channels)
        if cfg["qk_norm"]:
            self.norm_q = RMSNorm(self.head_dim, cfg["qk_norm_eps"])
            self.norm_k = RMSNorm(self.head_dim, cfg["qk_norm_eps"])
        else:
            self.norm_q = self.norm_k = None

    def forward(self, x, context, key_mask=None):
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        if self.norm_q is not None:
            d = self.head_dim
            q = self.norm_q(q.unflatten(-1, (-1, d))).flatten(-2)
            k = self.norm_k(k.unflatten(-1, (-1, d))).flatten(-2)
        out = attention(q, k, v, self.heads, self.kv_heads, self.head_dim, key_mask)
        return self.to_out(out)


class FeedForward(nn.Module):
    """GEGLU (h·GELU(g), h first half) or GELU MLP, inner width ffn_mult × C."""

    def __init__(self, channels, cfg):
        super().__init__()
        inner = inner_width(channels, cfg["ffn_mult"])
        self.geglu = cfg["ffn_type"] == "geglu"
        self.proj_in = nn.Linear(channels, 2 * inner if self.geglu else inner)
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x):
        h = self.proj_in(x)
        if self.geglu:
            h, g = h.chunk(2, dim=-1)
            h = h * F.gelu(g)
        else:
            h = F.gelu(h)
        return self.proj_out(h)


class TransformerBlock(nn.Module):
    """[LN → self-attention →+] (where enabled), LN → cross-attention →+, LN → FFN →+."""

    def __init__(self, channels, self_attention, cfg):
        super().__init__()
        eps = cfg["norm_eps"]
        if self_attention:
            self.norm1 = nn.LayerNorm(channels, eps)
            self.attn1 = Attention(channels, channels, cfg)
        else:
            self.norm1 = self.attn1 = None
        self.norm2 = nn.LayerNorm(channels, eps)
        self.attn2 = Attention(channels, cfg["context_dim"], cfg)
        self.norm3 = nn.LayerNorm(channels, eps)
        self.ff = FeedForward(channels, cfg)

    def forward(self, x, context, key_mask):
        if self.attn1 is not None:
            h = self.norm1(x)
            x = x + self.attn1(h, h)
        x = x + self.attn2(self.norm2(x), context, key_mask)
        return x + self.ff(self.norm3(x))


class Transformer(nn.Module):
    """SDXL Transformer2DModel with linear projections: GN → proj_in → blocks → proj_out → +x."""

    def __init__(self, channels, depth, self_attention, cfg):
        super().__init__()
        self.norm = nn.GroupNorm(cfg["norm_groups"], channels, cfg["norm_eps"])
        self.proj_in = nn.Linear(channels, channels)
        self.blocks = nn.ModuleList(TransformerBlock(channels, self_attention, cfg)
                                    for _ in range(depth))
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x, context, key_mask):
        b, c, height, width = x.shape
        h = self.norm(x).permute(0, 2, 3, 1).reshape(b, height * width, c)
        h = self.proj_in(h)
        for block in self.blocks:
            h = block(h, context, key_mask)
        h = self.proj_out(h)
        return x + h.reshape(b, height, width, c).permute(0, 3, 1, 2)


class TimeEmbedding(nn.Module):
    """linear_1 → SiLU → linear_2 (used for the timestep sinusoid and the pooled text vector)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.linear_1 = nn.Linear(cin, cout)
        self.linear_2 = nn.Linear(cout, cout)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


def timestep_sinusoid(timestep, dim, flip_sin_to_cos=True):
    """[B] timesteps (t·1000, float32) -> [B, dim] float32: freq_i = exp(-ln(10000)·i/half),
    angle = timestep·freq_i, [cos, sin] if flipped; computed in double precision, then rounded."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    angles = timestep.float().double()[:, None] * freqs[None, :]
    parts = [torch.cos(angles), torch.sin(angles)] if flip_sin_to_cos else \
        [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=-1).float()


class Stage(nn.Module):
    """One resolution level: res.{j}, attn.{j} and an optional down/upsample conv."""

    def __init__(self):
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()


class Mid(nn.Module):
    def __init__(self, channels, temb_dim, cfg):
        super().__init__()
        self.res = nn.ModuleList([ResBlock(channels, channels, temb_dim, cfg),
                                  ResBlock(channels, channels, temb_dim, cfg)])
        depth = cfg["mid_transformer_depth"]
        self.attn = nn.ModuleList([Transformer(channels, depth, cfg["mid_self_attention"], cfg)]
                                  if depth > 0 else [])


class SnapGenUNet(nn.Module):
    """The denoiser. forward(x [B,C,H,W], timestep [B] (t·1000), context [B,S,D],
    context_mask [B,S] or None, pooled [B,P] or None) -> v [B,C,H,W].

    Stage arrays (block_channels, down/up_res_blocks, transformer_depth, self_attention) are
    indexed by resolution level (0 = highest); up.{i} is level n-1-i.
    """

    def __init__(self, config):
        super().__init__()
        cfg = full_config(config)
        self.config = cfg
        ch, n = cfg["block_channels"], len(cfg["block_channels"])
        temb = cfg["time_embed_dim"]
        self.conv_in = conv3x3(cfg["in_channels"], ch[0])
        self.time_embed = TimeEmbedding(cfg["time_proj_dim"], temb)
        self.pooled_embed = TimeEmbedding(cfg["pooled_dim"], temb) if cfg["pooled_dim"] > 0 else None

        skips, cur = [ch[0]], ch[0]
        self.down = nn.ModuleList()
        for i in range(n):
            stage = Stage()
            for _ in range(cfg["down_res_blocks"][i]):
                stage.res.append(ResBlock(cur, ch[i], temb, cfg))
                cur = ch[i]
                if cfg["transformer_depth"][i] > 0:
                    stage.attn.append(Transformer(cur, cfg["transformer_depth"][i],
                                                  cfg["self_attention"][i], cfg))
                skips.append(cur)
            if i < n - 1:
                stage.downsample = conv3x3(cur, cur, stride=2)
                skips.append(cur)
            self.down.append(stage)

        self.mid = Mid(cur, temb, cfg)

        self.up = nn.ModuleList()
        for i in range(n):
            level = n - 1 - i
            stage = Stage()
            for _ in range(cfg["up_res_blocks"][level]):
                stage.res.append(ResBlock(cur + skips.pop(), ch[level], temb, cfg))
                cur = ch[level]
                if cfg["transformer_depth"][level] > 0:
                    stage.attn.append(Transformer(cur, cfg["transformer_depth"][level],
                                                  cfg["self_attention"][level], cfg))
            if i < n - 1:
                stage.upsample = conv3x3(cur, cur)
            self.up.append(stage)

        self.norm_out = nn.GroupNorm(cfg["norm_groups"], ch[0], cfg["norm_eps"])
        self.conv_out = conv3x3(ch[0], cfg["out_channels"])

    def embed_time(self, timestep, pooled=None, batch=1):
        """temb [B, E]: MLP(sinusoid(t·1000)) + pooled MLP (pooled None = zero input)."""
        cfg = self.config
        dtype = self.conv_in.weight.dtype
        timestep = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).expand(batch)
        sinus = timestep_sinusoid(timestep, cfg["time_proj_dim"], cfg["flip_sin_to_cos"])
        temb = self.time_embed(sinus.to(dtype))
        if self.pooled_embed is not None:
            if pooled is None:
                pooled = torch.zeros(batch, cfg["pooled_dim"], dtype=dtype)
            temb = temb + self.pooled_embed(pooled.to(dtype))
        return temb

    def forward(self, x, timestep, context, context_mask=None, pooled=None,
                return_features=False):
        """v prediction; with return_features=True returns (v, features) where features maps
        block names ("down.0.res.1", "up.1.attn.2", "mid", ...) to their outputs and "kd" is the
        last transformer (else residual block) output of the second up stage (up.1)."""
        b = x.shape[0]
        temb = self.embed_time(timestep, pooled, b)
        context = context.to(x.dtype)
        key_mask = None if context_mask is None else context_mask.reshape(b, -1) > 0.5
        feats = {}

        def keep(name, value):
            if return_features:
                feats[name] = value
            return value

        h = self.conv_in(x)
        skips = [h]
        for i, stage in enumerate(self.down):
            for j, res in enumerate(stage.res):
                h = keep(f"down.{i}.res.{j}", res(h, temb))
                if len(stage.attn):
                    h = keep(f"down.{i}.attn.{j}", stage.attn[j](h, context, key_mask))
                skips.append(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
                skips.append(h)

        h = self.mid.res[0](h, temb)
        if len(self.mid.attn):
            h = self.mid.attn[0](h, context, key_mask)
        h = keep("mid", self.mid.res[1](h, temb))

        for i, stage in enumerate(self.up):
            for j, res in enumerate(stage.res):
                h = keep(f"up.{i}.res.{j}", res(torch.cat([h, skips.pop()], dim=1), temb))
                if len(stage.attn):
                    h = keep(f"up.{i}.attn.{j}", stage.attn[j](h, context, key_mask))
                if i == min(1, len(self.up) - 1) and j == len(stage.res) - 1:
                    keep("kd", h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(F.interpolate(h, scale_factor=2.0, mode="nearest"))

        v = self.conv_out(F.silu(self.norm_out(h)))
        return (v, feats) if return_features else v


def parameter_count(config):
    """Parameters implied by a config (analytic; equals sum of numel of SnapGenUNet(config))."""
    cfg = full_config(config)
    ch, n = cfg["block_channels"], len(cfg["block_channels"])
    temb, d = cfg["time_embed_dim"], cfg["head_dim"]

    def lin(i, o, bias=True):
        return i * o + (o if bias else 0)

    def conv(i, o, k=3, bias=True, groups=1):
        return (i // groups) * o * k * k + (o if bias else 0)

    def res(cin, cout):
        if cfg["separable"]:
            h = inner_width(cout, cfg["expansion"])
            p = 2 * cin + conv(cin, cin, 3, False, cin) + conv(cin, h, 1) + lin(temb, h) \
                + 2 * h + conv(h, h, 3, False, h) + conv(h, cout, 1)
        else:
            p = 2 * cin + conv(cin, cout) + lin(temb, cout) + 2 * cout + conv(cout, cout)
        return p + (conv(cin, cout, 1) if cin != cout else 0)

    def attn(c, kv_in):
        kv = cfg["num_kv_heads"] * d
        return lin(c, c, False) + 2 * lin(kv_in, kv, False) + lin(c, c) \
            + (2 * d if cfg["qk_norm"] else 0)

    def block(c, sa):
        inner = inner_width(c, cfg["ffn_mult"])
        ff = lin(c, 2 * inner if cfg["ffn_type"] == "geglu" else inner) + lin(inner, c)
        return (2 * c + attn(c, c) if sa else 0) + 2 * c + attn(c, cfg["context_dim"]) \
            + 2 * c + ff

    def transformer(c, depth, sa):
        return 0 if depth == 0 else 2 * c + 2 * lin(c, c) + depth * block(c, sa)

    total = conv(cfg["in_channels"], ch[0]) + lin(cfg["time_proj_dim"], temb) + lin(temb, temb)
    if cfg["pooled_dim"] > 0:
        total += lin(cfg["pooled_dim"], temb) + lin(temb, temb)
    skips, cur = [ch[0]], ch[0]
    for i in range(n):
        for _ in range(cfg["down_res_blocks"][i]):
            total += res(cur, ch[i]) + transformer(ch[i], cfg["transformer_depth"][i],
                                                   cfg["self_attention"][i])
            cur = ch[i]
            skips.append(cur)
        if i < n - 1:
            total += conv(cur, cur)
            skips.append(cur)
    total += 2 * res(cur, cur) + transformer(cur, cfg["mid_transformer_depth"],
                                             cfg["mid_self_attention"])
    for i in range(n):
        level = n - 1 - i
        for _ in range(cfg["up_res_blocks"][level]):
            total += res(cur + skips.pop(), ch[level]) + transformer(
                ch[level], cfg["transformer_depth"][level], cfg["self_attention"][level])
            cur = ch[level]
        if i < n - 1:
            total += conv(cur, cur)
    return total + 2 * ch[0] + conv(ch[0], cfg["out_channels"])
