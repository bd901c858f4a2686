# sampler.py: flow-matching Euler sampling (timesteps, time shift, CFG) and the whole generate loop.
"""Rectified flow: x_t = (1 − t)·x0 + t·ε, the UNet predicts v = ε − x0, Euler x ← x + (t_next − t)·v
down to t = 0 (weights/README.md "scheduler", SPEC §5)."""
import numpy as np
import torch

from . import rng

DEFAULT_SCHEDULER = {"timesteps": [1.0, 0.75, 0.5, 0.25], "shift": 3.0, "default_steps": 4,
                     "default_guidance": 1.0}


def time_shift(shift, t):
    """t' = α t / (1 + (α − 1) t), computed as α t / (α t + (1 − t)) as the engine does: exactly 1
    at t = 1 for every α."""
    return shift * t / (shift * t + (1.0 - t))


def timesteps(config, steps=None):
    """steps + 1 values (Python floats), decreasing, last 0. The explicit list when steps equals
    its length, else t_i = shift(1 − i/steps)."""
    listed = list(config.get("timesteps") or [])
    steps = steps or config.get("default_steps") or len(listed)
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if listed and steps == len(listed):
        return [float(t) for t in listed] + [0.0]
    shift = float(config.get("shift", 1.0))
    return [time_shift(shift, 1.0 - i / steps) for i in range(steps)] + [0.0]


def euler_step(x, v, t, t_next):
    """x + (t_next − t)·v, with the step rounded to float32 as the C engine does."""
    return x + float(np.float32(t_next - t)) * v


def guidance_combine(v_cond, v_uncond, w):
    """v_u + w (v_c − v_u)."""
    return v_uncond + w * (v_cond - v_uncond)


def empty_conditioning(context, pooled):
    """The pipeline's unconditional set when no negative prompt is given: zero tokens with only
    the first visible, and a zero pooled vector."""
    mask = torch.zeros(context.shape[:-1], dtype=torch.float32)
    mask[..., 0] = 1.0
    return torch.zeros_like(context), mask, None if pooled is None else torch.zeros_like(pooled)


def _batched(value, dims):
    """Adds a batch axis to an unbatched tensor (None stays None)."""
    if value is None:
        return None
    value = torch.as_tensor(value, dtype=torch.float32)
    return value.unsqueeze(0) if value.dim() == dims else value


@torch.no_grad()
def sample(unet, latent, context, pooled, mask, sched_cfg, steps=None, guidance=None,
           negative_context=None, negative_pooled=None, negative_mask=None):
    """Runs the Euler loop from latent (t = 1) and returns the final latent. Inputs are batched
    ([B, ...]); guidance > 1 adds an unconditional pass (negative set or the empty set)."""
    t = timesteps(sched_cfg, steps)
    if guidance is None:
        guidance = float(sched_cfg.get("default_guidance", 1.0))
    use_guidance = guidance > 1.0
    if use_guidance and negative_context is None:
        negative_context, negative_mask, negative_pooled = empty_conditioning(context, pooled)
    x = latent.clone()
    batch = x.shape[0]
    for i in range(len(t) - 1):
        timestep = torch.full((batch,), float(np.float32(t[i] * 1000.0)))
        v = unet(x, timestep, context, mask, pooled)
        if use_guidance:
            v_uncond = unet(x, timestep, negative_context, negative_mask, negative_pooled)
            v = guidance_combine(v, v_uncond, guidance)
        x = euler_step(x, v, t[i], t[i + 1])
    return x


@torch.no_grad()
def generate(unet, decoder, context, pooled, mask, seed, steps, height, width, sched_cfg,
             guidance=None, negative_context=None, negative_pooled=None, negative_mask=None):
    """One image as the engine makes it. context [S, D], pooled [P] or None, mask [S] or None
    (unbatched). Returns (image [3, H, W] float, not clamped; final latent [C, H/s, W/s])."""
    scale = decoder.scale
    stride = scale << (len(unet.config["block_channels"]) - 1)
    if height % stride or width % stride:
        raise ValueError(f"image size must be a multiple of {stride} pixels for this model")
    channels = unet.config["in_channels"]
    noise = rng.normal(seed, 0, (channels, height // scale, width // scale))
    latent = torch.from_numpy(noise).unsqueeze(0)
    latent = sample(unet, latent, _batched(context, 2), _batched(pooled, 1), _batched(mask, 1),
                    sched_cfg, steps, guidance, _batched(negative_context, 2),
                    _batched(negative_pooled, 1), _batched(negative_mask, 1))
    image = decoder(latent)
    return image[0], latent[0]


def to_uint8(image):
    """[3, H, W] float ~[0, 1] -> [H, W, 3] uint8, clamped and rounded as the pipeline does."""
    array = image.detach().float().clamp(0.0, 1.0).permute(1, 2, 0).numpy()
    return np.rint(array * 255.0).astype(np.uint8)
