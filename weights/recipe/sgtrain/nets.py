# nets.py: model sizes, the device-ready UNet, autoencoder wrapper, discriminator heads and losses.
import copy
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from sgrecipe import decoder as decoder_module
from sgrecipe import unet as unet_module

# ---------------------------------------------------------------------------------------------
# Sizes. "full" is the shipped model (1024² images, 32×32×16 latents); "smoke" the CPU test.

_UNET_COMMON = {"in_channels": 16, "out_channels": 16, "down_res_blocks": [2, 2, 2],
                "up_res_blocks": [3, 3, 3], "self_attention": [False, False, True],
                "mid_self_attention": True, "head_dim": 64, "num_kv_heads": 1,
                "ffn_type": "geglu", "ffn_mult": 3, "separable": True, "expansion": 2,
                "time_proj_dim": 128, "flip_sin_to_cos": True, "pooled_dim": 128,
                "norm_groups": 32, "norm_eps": 1e-5, "qk_norm": True, "qk_norm_eps": 1e-6}

FULL = {
    "image_size": 1024,      # decoder output
    "encoder_size": 256,     # encoder input (ShapeEval's working size; see data notes)
    "decoder": {"latent_channels": 16, "out_channels": 3,
                "channels": [256, 160, 96, 64, 32, 16], "blocks": [4, 3, 3, 2, 1, 1],
                "separable": True, "latent_clamp": 3.0},
    "encoder": {"latent_channels": 16, "out_channels": 3, "channels": [160, 128, 96, 48],
                "blocks": [2, 2, 1, 1], "separable": True, "latent_clamp": 0.0},
    "text": {"hidden": 128, "layers": 3, "heads": 4, "intermediate": 512, "projection": 128},
    "teacher": dict(_UNET_COMMON, block_channels=[128, 256, 384], transformer_depth=[1, 2, 3],
                    mid_transformer_depth=2, context_dim=256, time_embed_dim=512),
    "student": dict(_UNET_COMMON, block_channels=[64, 128, 256], transformer_depth=[1, 1, 2],
                    mid_transformer_depth=1, context_dim=128, time_embed_dim=256),
    "disc_channels": 128,
    "hires_images": 1280,    # renders at image_size for the autoencoder (and at encoder_size)
    "max_images": 48000,     # cap of encoder-size renders (×2 latents with mirrors)
    "min_images": 4096,
    "ae_holdout": 48,
    "ae_crop": 12,           # latent pixels per side of an autoencoder training crop
    "ae_batch": 64,
    "batch": 256,
    "adv_batch": 128,
    "eval_prompts": 504,
    "eval_seeds": 2,
    "eval_batch": 256,
}

# "cpu" trains on the 2-core machine in a few hours: 16×16×16 latents (decoder scale 64, so the
# UNets see 4× fewer positions than "full"), 128² encoder input, smaller UNets. PyTorch's CPU
# depthwise-conv backward is slow, so every net is kept narrow rather than shallow.
_CPU_UNET = dict(_UNET_COMMON, down_res_blocks=[1, 1, 1], up_res_blocks=[2, 2, 2], head_dim=32,
                 norm_groups=16)

CPU = dict(FULL, **{
    "encoder_size": 128,
    "decoder": {"latent_channels": 16, "out_channels": 3,
                "channels": [128, 96, 64, 48, 32, 16, 8], "blocks": [2, 2, 1, 1, 1, 0, 0],
                "separable": True, "latent_clamp": 3.0},
    "encoder": {"latent_channels": 16, "out_channels": 3, "channels": [128, 96, 64, 32],
                "blocks": [1, 1, 1, 1], "separable": True, "latent_clamp": 0.0},
    "teacher": dict(_CPU_UNET, block_channels=[64, 128, 192], transformer_depth=[1, 1, 2],
                    mid_transformer_depth=1, context_dim=128, time_embed_dim=256),
    "student": dict(_CPU_UNET, block_channels=[32, 64, 128], transformer_depth=[1, 1, 1],
                    mid_transformer_depth=1, context_dim=64, time_embed_dim=128),
    "disc_channels": 64,
    "hires_images": 1024, "max_images": 16000, "min_images": 4096, "ae_holdout": 48,
    "ae_crop": 4, "ae_batch": 16, "batch": 64, "adv_batch": 32, "eval_batch": 32,
})

_SMOKE_UNET = {"in_channels": 16, "out_channels": 16, "down_res_blocks": [1, 1, 1],
               "up_res_blocks": [2, 2, 2], "self_attention": [False, False, True],
               "mid_self_attention": True, "head_dim": 16, "num_kv_heads": 1,
               "ffn_type": "geglu", "ffn_mult": 3, "separable": True, "expansion": 2,
               "time_proj_dim": 32, "flip_sin_to_cos": True, "pooled_dim": 32,
               "norm_groups": 8, "norm_eps": 1e-5, "qk_norm": True, "qk_norm_eps": 1e-6}

SMOKE = dict(FULL, **{
    "image_size": 256, "encoder_size": 64,
    "decoder": {"latent_channels": 16, "out_channels": 3, "channels": [32, 24, 16, 16, 8, 8],
                "blocks": [1, 1, 1, 1, 1, 1], "separable": True, "latent_clamp": 3.0},
    "encoder": {"latent_channels": 16, "out_channels": 3, "channels": [32, 24, 16, 8],
                "blocks": [1, 1, 1, 1], "separable": True, "latent_clamp": 0.0},
    "text": {"hidden": 32, "layers": 2, "heads": 2, "intermediate": 64, "projection": 32},
    "teacher": dict(_SMOKE_UNET, block_channels=[32, 48, 64], transformer_depth=[1, 1, 1],
                    mid_transformer_depth=1, context_dim=32, time_embed_dim=64),
    "student": dict(_SMOKE_UNET, block_channels=[16, 32, 32], transformer_depth=[1, 1, 1],
                    mid_transformer_depth=1, context_dim=16, time_embed_dim=32),
    "disc_channels": 16,
    "hires_images": 24, "max_images": 400, "min_images": 64, "ae_holdout": 8, "ae_crop": 4,
    "ae_batch": 4, "batch": 8, "adv_batch": 4, "eval_prompts": 12, "eval_seeds": 2,
    "eval_batch": 8,
})


def decoder_scale(cfg):
    return 2 ** (len(cfg["channels"]) - 1)


def latent_size(sizes):
    return sizes["image_size"] // decoder_scale(sizes["decoder"])


# ---------------------------------------------------------------------------------------------
# UNet that runs on any device (sgrecipe's embed_time builds its sinusoid on the CPU).


class UNet(unet_module.SnapGenUNet):
    """SnapGenUNet with the timestep/pooled inputs moved to the weights' device. Same tensor
    names, so state dicts load into either class."""

    def embed_time(self, timestep, pooled=None, batch=1):
        cfg = self.config
        weight = self.conv_in.weight
        timestep = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).to(weight.device)
        timestep = timestep.expand(batch)
        half = cfg["time_proj_dim"] // 2
        freqs = torch.exp(-math.log(10000.0) *
                          torch.arange(half, dtype=torch.float64, device=weight.device) / half)
        angles = timestep.double()[:, None] * freqs[None, :]
        parts = [torch.cos(angles), torch.sin(angles)]
        if not cfg["flip_sin_to_cos"]:
            parts.reverse()
        sinus = torch.cat(parts, dim=-1).float()
        temb = self.time_embed(sinus.to(weight.dtype))
        if self.pooled_embed is not None:
            if pooled is None:
                pooled = torch.zeros(batch, cfg["pooled_dim"], dtype=weight.dtype,
                                     device=weight.device)
            temb = temb + self.pooled_embed(pooled.to(weight.dtype))
        return temb


def _channels_last_input(module, args):
    x = args[0]
    if x.dim() == 4 and not x.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    return (x,) + tuple(args[1:])


def gpu_layout(module, device):
    """On CUDA, puts conv weights and every conv's input in channels_last (NHWC). PyTorch sends
    NCHW bf16 depthwise convolutions to its own CUDA kernels, whose backward pass is very slow
    (the first H200 run trained the autoencoder at 0.85 s/step and the teacher at 2 steps/s);
    channels_last ones go to cuDNN. Tensor names and values are unchanged. No-op on the CPU
    unless SGTRAIN_CHANNELS_LAST=1 (to test this path without a GPU)."""
    if device.type != "cuda" and os.environ.get("SGTRAIN_CHANNELS_LAST") != "1":
        return module
    module.to(memory_format=torch.channels_last)
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_pre_hook(_channels_last_input)
    return module


def unet_features(unet, x, timestep, context, pooled, names):
    """The named intermediate outputs of the UNet's down path and middle block (a truncated
    forward for the discriminator; mirrors SnapGenUNet.forward)."""
    b = x.shape[0]
    temb = unet.embed_time(timestep, pooled, b)
    context = context.to(x.dtype)
    feats, wanted = {}, set(names)
    h = unet.conv_in(x)
    for i, stage in enumerate(unet.down):
        for j, res in enumerate(stage.res):
            h = res(h, temb)
            if f"down.{i}.res.{j}" in wanted:
                feats[f"down.{i}.res.{j}"] = h
            if len(stage.attn):
                h = stage.attn[j](h, context, None)
                if f"down.{i}.attn.{j}" in wanted:
                    feats[f"down.{i}.attn.{j}"] = h
        if hasattr(stage, "downsample"):
            h = stage.downsample(h)
    if "mid" in wanted:
        h = unet.mid.res[0](h, temb)
        if len(unet.mid.attn):
            h = unet.mid.attn[0](h, context, None)
        feats["mid"] = unet.mid.res[1](h, temb)
    return [feats[n] for n in names]


def discriminator_layers(cfg):
    """Teacher layers the discriminator reads, with their widths: the last output of each down
    stage below the first, and the middle block."""
    names, channels = [], []
    for i in range(1, len(cfg["block_channels"])):
        kind = "attn" if cfg["transformer_depth"][i] > 0 else "res"
        names.append(f"down.{i}.{kind}.{cfg['down_res_blocks'][i] - 1}")
        channels.append(cfg["block_channels"][i])
    return names + ["mid"], channels + [cfg["block_channels"][-1]]


class DiscriminatorHead(nn.Module):
    """Conv3×3 → GroupNorm → FiLM(timestep, pooled text) → LeakyReLU → Conv1×1 → logit map."""

    def __init__(self, channels, width, cond_dim):
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3, padding=1)
        self.norm = nn.GroupNorm(min(32, width // 4), width)
        self.film = nn.Linear(cond_dim, 2 * width)
        self.out = nn.Conv2d(width, 1, 1)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, feature, cond):
        h = self.norm(self.conv(feature.float()))
        scale, shift = self.film(cond).chunk(2, dim=-1)
        h = h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        return self.out(F.leaky_relu(h, 0.2))


class Discriminator(nn.Module):
    """Heads over frozen teacher features (the teacher is passed in, never owned)."""

    def __init__(self, teacher_cfg, width, pooled_dim):
        super().__init__()
        self.names, channels = discriminator_layers(teacher_cfg)
        self.sinus_dim = 128
        cond_dim = self.sinus_dim + pooled_dim
        self.heads = nn.ModuleList(DiscriminatorHead(c, width, cond_dim) for c in channels)

    def forward(self, teacher, x, s, context, pooled):
        """Mean hinge-ready logits per head: list of [B, 1, h, w] maps."""
        feats = unet_features(teacher, x, s * 1000.0, context, pooled, self.names)
        half = self.sinus_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device) / half)
        angles = (s.float() * 1000.0)[:, None] * freqs[None, :]
        cond = torch.cat([torch.cos(angles), torch.sin(angles), pooled.float()], dim=-1)
        return [head(f, cond) for head, f in zip(self.heads, feats)]


# ---------------------------------------------------------------------------------------------
# Autoencoder


@torch.no_grad()
def init_tiny_convnet(module):
    """Variance-preserving initialisation for TinyDecoder/TinyEncoder (no normalisation layers):
    depthwise 3×3 N(0, 1/9), pointwise and dense convs He-normal (ReLU gain), biases 0, and the
    last conv of each residual block 0 so blocks start as the identity. PyTorch's default init
    shrinks the signal about 10× per separable conv, so a 6-stage decoder would start with an
    output independent of its input and learn very slowly."""
    for name, conv in module.named_modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        if conv.groups > 1 and conv.groups == conv.in_channels:
            nn.init.normal_(conv.weight, std=(1.0 / 9.0) ** 0.5)
        else:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        parts = name.split(".")
        if "conv3" in parts and parts[-1] in ("conv3", "pw"):
            nn.init.zeros_(conv.weight)


class AutoEncoder(nn.Module):
    """TinyEncoder (training only) whose output is normalised per channel (BatchNorm without
    affine; its running statistics are folded into encoder.conv_out at the end) + TinyDecoder."""

    def __init__(self, enc_cfg, dec_cfg):
        super().__init__()
        self.encoder = decoder_module.TinyEncoder(enc_cfg)
        self.norm = nn.BatchNorm2d(enc_cfg["latent_channels"], affine=False, momentum=0.01)
        self.decoder = decoder_module.TinyDecoder(dec_cfg)
        init_tiny_convnet(self.encoder)
        init_tiny_convnet(self.decoder)

    def encode(self, image):
        return self.norm(self.encoder(image))

    @torch.no_grad()
    def fold_norm(self, images, batch=64):
        """Measures the encoder's per-channel mean/std on `images` (what the decoder saw in
        training through batch statistics) and folds them into encoder.conv_out, so the encoder
        itself gives the normalised latent; the norm is then unused."""
        outs = [self.encoder(images[i:i + batch]) for i in range(0, len(images), batch)]
        z = torch.cat(outs)
        mean = z.mean(dim=(0, 2, 3))
        std = torch.sqrt(z.var(dim=(0, 2, 3)) + self.norm.eps)
        conv = self.encoder.conv_out
        conv.weight.div_(std[:, None, None, None])
        conv.bias.sub_(mean).div_(std)


def decoder_macs(cfg, out_size):
    """Multiply-accumulates of one TinyDecoder forward producing an out_size² image."""
    ch, sep = cfg["channels"], cfg["separable"]
    side = out_size // decoder_scale(cfg)

    def conv(cin, cout, pixels, dense=False):
        return pixels * (9 * cin * cout if dense or not sep else 9 * cin + cin * cout)

    total = conv(cfg["latent_channels"], ch[0], side * side, dense=True)
    for i, c in enumerate(ch):
        total += 3 * cfg["blocks"][i] * conv(c, c, side * side)
        if i + 1 < len(ch):
            side *= 2
            total += conv(c, ch[i + 1], side * side)
    return total + conv(ch[-1], cfg["out_channels"], side * side, dense=True)


def unet_macs(unet, latent, context_tokens):
    """Multiply-accumulates of one UNet forward at latent² (convolutions, linear layers and the
    two attention products), counted with forward hooks."""
    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total[0] += output.numel() * k * module.in_channels // module.groups
        elif isinstance(module, nn.Linear):
            total[0] += output.numel() * module.in_features
        else:  # Attention: q·k and p·v over all heads
            queries, keys = inputs[0].shape[1], inputs[1].shape[1]
            total[0] += 2 * queries * keys * module.heads * module.head_dim

    kinds = (nn.Conv2d, nn.Linear, unet_module.Attention)
    handles = [m.register_forward_hook(hook) for m in unet.modules() if isinstance(m, kinds)]
    cfg = unet.config
    device = unet.conv_in.weight.device
    with torch.no_grad():
        x = torch.zeros(1, cfg["in_channels"], latent, latent, device=device)
        ctx = torch.zeros(1, context_tokens, cfg["context_dim"], device=device)
        unet(x, torch.tensor([500.0]), ctx, None,
             torch.zeros(1, cfg["pooled_dim"], device=device))
    for h in handles:
        h.remove()
    return total[0]


def frozen_copy(module):
    clone = copy.deepcopy(module)
    clone.requires_grad_(False)
    return clone.eval()


# ---------------------------------------------------------------------------------------------
# Flow matching, timesteps and distillation losses (SPEC §5.1, §6.1–6.3)


def logit_normal(batch, device, generator=None, mean=0.0, std=1.0, shift=1.0):
    """t = sigmoid(N(mean, std)), then the time shift α t / (1 + (α − 1) t)."""
    t = torch.sigmoid(mean + std * torch.randn(batch, device=device, generator=generator))
    return shift * t / (1.0 + (shift - 1.0) * t)


def logit_normal_pdf(t, mean=0.0, std=1.0):
    t = t.clamp(1e-6, 1 - 1e-6)
    z = (torch.log(t) - torch.log1p(-t) - mean) / std
    return torch.exp(-0.5 * z * z) / (std * math.sqrt(2 * math.pi) * t * (1 - t))


def task_weight(t):
    """α_t = logit-normal pdf(t) / pdf(0.5) (SPEC §8 #13): 1 in the middle, → 0 at the ends."""
    return logit_normal_pdf(t) / logit_normal_pdf(torch.tensor(0.5, device=t.device))


def per_sample_mse(a, b):
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)


def timestep_aware(task, kd, t, alpha_scale=1.0):
    """S = α_t L_task + (1 − α_t) · sg(L_task / L_kd) · L_kd per sample, the ratio clipped to
    [0.01, 100] (SPEC §6.3 in SnapGen++'s form); returns the batch mean."""
    alpha = task_weight(t) * alpha_scale
    ratio = (task.detach() / kd.detach().clamp_min(1e-12)).clamp(0.01, 100.0)
    return (alpha * task + (1 - alpha) * ratio * kd).mean()


def feature_kd(student_feat, projector, teacher_feat):
    """Per-sample MSE of the projected student feature to the teacher's, relative to the teacher
    feature's mean square (so its scale does not depend on the layer)."""
    target = teacher_feat.float()
    scale = target.pow(2).flatten(1).mean(1).clamp_min(1e-6)
    return per_sample_mse(projector(student_feat.float()), target) / scale
