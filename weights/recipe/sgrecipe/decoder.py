# decoder.py: the compact attention-free latent->RGB decoder (TAESD-style) and its training encoder.
"""TinyDecoder (tensor names per weights/README.md) and TinyEncoder (training only).

Decoder: c·tanh(x/c) → conv_in (dense 3×3) → ReLU → per stage: blocks, then (except after the
last stage) nearest ×2 and `stages.{i}.upsample` → conv_out (dense 3×3). A block is
conv1 → ReLU → conv2 → ReLU → conv3, + x, ReLU; each conv is dense 3×3 or depthwise 3×3 (`.dw`,
no bias) + pointwise 1×1 (`.pw`).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_CONFIG = {"latent_channels": 16, "out_channels": 3, "channels": [64, 64, 64, 64],
                  "blocks": [3, 3, 3, 1], "separable": True, "latent_clamp": 3.0}


def full_config(config):
    """config with defaults filled in and checked."""
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(config)
    if len(cfg["channels"]) != len(cfg["blocks"]) or not cfg["channels"]:
        raise ValueError("decoder config: 'channels' and 'blocks' need one entry per stage")
    return cfg


class SeparableConv(nn.Module):
    """Depthwise 3×3 (no bias) then pointwise 1×1 cin -> cout; stride applies to the depthwise."""

    def __init__(self, cin, cout, bias=True, stride=1):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False)
        self.pw = nn.Conv2d(cin, cout, 1, bias=bias)

    def forward(self, x):
        return self.pw(self.dw(x))


def make_conv(cin, cout, separable, bias=True, stride=1):
    if separable:
        return SeparableConv(cin, cout, bias, stride)
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


class Block(nn.Module):
    """relu(x + conv3(relu(conv2(relu(conv1(x))))))."""

    def __init__(self, channels, separable):
        super().__init__()
        self.conv1 = make_conv(channels, channels, separable)
        self.conv2 = make_conv(channels, channels, separable)
        self.conv3 = make_conv(channels, channels, separable)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        return F.relu(x + self.conv3(h))


class DecoderStage(nn.Module):
    def __init__(self, channels, blocks, next_channels, separable):
        super().__init__()
        self.blocks = nn.ModuleList(Block(channels, separable) for _ in range(blocks))
        if next_channels is not None:
            self.upsample = make_conv(channels, next_channels, separable, bias=False)


class TinyDecoder(nn.Module):
    """latent [B, latent_channels, h, w] -> image [B, out_channels, h·s, w·s], s = 2^(stages-1),
    values ≈ [0, 1] (not clamped)."""

    def __init__(self, config):
        super().__init__()
        cfg = full_config(config)
        self.config = cfg
        ch, sep = cfg["channels"], cfg["separable"]
        self.conv_in = nn.Conv2d(cfg["latent_channels"], ch[0], 3, padding=1)
        self.stages = nn.ModuleList(
            DecoderStage(c, cfg["blocks"][i], ch[i + 1] if i + 1 < len(ch) else None, sep)
            for i, c in enumerate(ch))
        self.conv_out = nn.Conv2d(ch[-1], cfg["out_channels"], 3, padding=1)

    @property
    def scale(self):
        return 2 ** (len(self.config["channels"]) - 1)

    def forward(self, latent):
        c = self.config["latent_clamp"]
        x = c * torch.tanh(latent / c) if c > 0 else latent
        x = F.relu(self.conv_in(x))
        for stage in self.stages:
            for block in stage.blocks:
                x = block(x)
            if hasattr(stage, "upsample"):
                x = stage.upsample(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv_out(x)


def parameter_count(config):
    """Parameters implied by a decoder config (analytic)."""
    cfg = full_config(config)
    ch, sep = cfg["channels"], cfg["separable"]

    def conv(cin, cout, bias=True):
        if sep:
            return 9 * cin + cin * cout + (cout if bias else 0)
        return 9 * cin * cout + (cout if bias else 0)

    total = 9 * cfg["latent_channels"] * ch[0] + ch[0] + 9 * ch[-1] * cfg["out_channels"] \
        + cfg["out_channels"]
    for i, c in enumerate(ch):
        total += 3 * cfg["blocks"][i] * conv(c, c)
        if i + 1 < len(ch):
            total += conv(c, ch[i + 1], bias=False)
    return total


class TinyEncoder(nn.Module):
    """image [B, 3, H, W] in [0, 1] -> latent [B, latent_channels, H/s, W/s]: the decoder mirrored
    (stride-2 convs instead of upsampling). Used only to train the decoder and to make latents."""

    def __init__(self, config):
        super().__init__()
        cfg = full_config(config)
        self.config = cfg
        ch = list(reversed(cfg["channels"]))
        blocks = list(reversed(cfg["blocks"]))
        sep = cfg["separable"]
        self.conv_in = nn.Conv2d(cfg["out_channels"], ch[0], 3, padding=1)
        self.stages = nn.ModuleList()
        for i, c in enumerate(ch):
            stage = nn.Module()
            stage.blocks = nn.ModuleList(Block(c, sep) for _ in range(blocks[i]))
            if i + 1 < len(ch):
                stage.downsample = make_conv(c, ch[i + 1], sep, bias=False, stride=2)
            self.stages.append(stage)
        self.conv_out = nn.Conv2d(ch[-1], cfg["latent_channels"], 3, padding=1)

    def forward(self, image):
        x = F.relu(self.conv_in(image))
        for stage in self.stages:
            for block in stage.blocks:
                x = block(x)
            if hasattr(stage, "downsample"):
                x = stage.downsample(x)
        return self.conv_out(x)
