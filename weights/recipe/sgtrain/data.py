# data.py: the data, autoencoder and latent stages (ShapeWorld renders -> tiny AE -> latent cache).
"""Stages `data`, `ae` and `latents`.

The world is resolution-independent (sample((seed, i)) is the same scene at every size) and
ShapeEval box-filters every image to 256² first, so everything the prompt asks for is visible at
256². The encoder therefore reads 256² renders (cheap: 16× fewer pixels than 1024²) and makes the
32×32×16 latent; the decoder turns that latent into the 1024² image and is trained against 1024²
renders of the same scenes (random crops). Only the decoder ships; the encoder exists to make the
training latents.
"""
import collections
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import nets, render
from .common import Clock, Interrupted, adamw, count_parameters, load_checkpoint, lr_factor, \
    save_checkpoint, set_lr
from .text import swap_left_right


# ---------------------------------------------------------------------------------------------
# data


def _open_array(path, shape, dtype=np.uint8):
    """A .npy memmap of the given shape, created (sparse) when missing."""
    if os.path.exists(path):
        array = np.load(path, mmap_mode="r+")
        if array.shape == tuple(shape):
            return array
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))


def _read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def _write_json(path, value):
    with open(path + ".part", "w") as f:
        json.dump(value, f)
    os.replace(path + ".part", path)


def stage_data(run, pool):
    """Renders ShapeWorld training pairs with the worker pool until the stage budget is spent (at
    least min_images, at most max_images): every image at encoder_size, the first hires_images
    also at image_size. Files: data/low.npy, data/high.npy (uint8 NHWC), data/meta.json."""
    sizes, seed = run.sizes, run.args.seed
    folder = run.path("data")
    os.makedirs(folder, exist_ok=True)
    low_size, high_size = sizes["encoder_size"], sizes["image_size"]
    n_max, n_high = sizes["max_images"], sizes["hires_images"]
    meta_path = os.path.join(folder, "meta.json")
    meta = _read_json(meta_path) or {"seed": seed, "low_size": low_size, "high_size": high_size,
                                     "count": 0, "captions": [], "categories": [],
                                     "elapsed": 0.0}
    low = _open_array(os.path.join(folder, "low.npy"), (n_max, low_size, low_size, 3))
    high = _open_array(os.path.join(folder, "high.npy"), (n_high, high_size, high_size, 3))
    clock = Clock(run, run.budgets["data"], meta["elapsed"])
    run.log(f"data: {meta['count']} images so far; budget {clock.budget:.0f} s, "
            f"{run.args.threads} worker processes")
    batch = max(8, 16 * run.args.threads)
    pending = collections.deque()
    next_index = meta["count"]
    started, done_here = time.time(), 0

    def enough():
        return meta["count"] >= n_max or (clock.finished() and meta["count"] >= max(
            n_high, sizes["min_images"]))

    def save():
        meta["elapsed"] = clock.elapsed
        low.flush()
        high.flush()
        _write_json(meta_path, meta)

    while True:
        while len(pending) < 2 and next_index < n_max and not enough():
            jobs = [(seed, i, low_size, high_size if i < n_high else 0)
                    for i in range(next_index, min(n_max, next_index + batch))]
            pending.append(pool.map_async(render.render_item, jobs, chunksize=2))
            next_index += len(jobs)
        if not pending:
            break
        for index, image_low, image_high, caption, category in pending.popleft().get():
            assert index == meta["count"], "renders must arrive in order"
            low[index] = image_low
            if image_high is not None:
                high[index] = image_high
            meta["captions"].append(caption)
            meta["categories"].append(category)
            meta["count"] += 1
            done_here += 1
        if clock.checkpoint_due():
            save()
            run.log(f"data: {meta['count']} images, {done_here / (time.time() - started):.0f}/s")
            if run.out_of_time():
                while pending:  # keep what is already rendered in order
                    pending.popleft().get()
                raise Interrupted()
        if enough():
            while pending:  # finish the batches in flight (at most two)
                for index, image_low, image_high, caption, category in pending.popleft().get():
                    low[index] = image_low
                    if image_high is not None:
                        high[index] = image_high
                    meta["captions"].append(caption)
                    meta["categories"].append(category)
                    meta["count"] += 1
                    done_here += 1
            break
    save()
    rate = done_here / max(time.time() - started, 1e-9)
    run.log(f"data: done, {meta['count']} images ({n_high} also at {high_size}²), "
            f"{rate:.0f} images/s")
    run.mark_done("data", {"images": meta["count"], "hires_images": n_high,
                           "seconds": clock.elapsed, "images_per_second": rate,
                           "encoder_size": low_size, "image_size": high_size})


def load_meta(run):
    return _read_json(run.path("data", "meta.json"))


# ---------------------------------------------------------------------------------------------
# autoencoder

AE_LR = 5e-4


def _nchw(images_uint8):
    return images_uint8.permute(0, 3, 1, 2).float() / 255.0


def _gradient_l1(a, b):
    dxa, dxb = a[..., :, 1:] - a[..., :, :-1], b[..., :, 1:] - b[..., :, :-1]
    dya, dyb = a[..., 1:, :] - a[..., :-1, :], b[..., 1:, :] - b[..., :-1, :]
    return (dxa - dxb).abs().mean() + (dya - dyb).abs().mean()


def ae_loss(out, target):
    """L1 with object pixels (chroma > 0.25) weighted 9×, so the few coloured pixels that
    ShapeEval reads are learnt before the background's fine texture; + 0.25 · gradient L1
    (edges); + L1 of 4× and 16× box-filtered images (4× is what ShapeEval sees of a 1024²
    image)."""
    chroma = target.max(1, keepdim=True).values - target.min(1, keepdim=True).values
    weight = 1 + 8 * (chroma > 0.25).float()
    loss = ((out - target).abs() * weight).mean() / weight.mean()
    loss = loss + 0.25 * _gradient_l1(out, target)
    for factor in (4, 16):
        if out.shape[-1] >= 2 * factor:
            loss = loss + (F.avg_pool2d(out, factor) - F.avg_pool2d(target, factor)).abs().mean()
    return loss


def to_eval_uint8(images, work_size=256):
    """[B,3,H,W] float ~[0,1] -> uint8 NHWC as the pipeline writes it (clamp, ×255, round half
    even), box-filtered to at most work_size (ShapeEval's own first step, done here on the
    device so 1024² images need not travel to the workers)."""
    u8 = torch.round(images.float().clamp(0, 1) * 255.0)
    factor = images.shape[-1] // work_size
    if factor > 1:
        u8 = torch.round(F.avg_pool2d(u8, factor))
    return u8.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def shapeeval_rate(pool, prompts, images_uint8):
    results = pool.map(render.evaluate_item, list(zip(prompts, images_uint8)), chunksize=4)
    return sum(r[0] for r in results) / max(1, len(results)), results


def stage_ae(run, pool):
    """Trains TinyEncoder (256² in) + TinyDecoder (1024² out) on random crops (ae_loss), with
    variance-preserving init, latent noise augmentation and per-channel latent normalisation
    folded into the encoder at the end."""
    sizes, dev = run.sizes, run.device
    meta = load_meta(run)
    n_high, holdout = sizes["hires_images"], sizes["ae_holdout"]
    n_train = n_high - holdout
    low = torch.from_numpy(np.load(run.path("data", "low.npy"), mmap_mode="r")[:n_high].copy())
    high = torch.from_numpy(np.load(run.path("data", "high.npy"), mmap_mode="r")[:n_high].copy())
    low, high = low.to(dev), high.to(dev)
    scale = nets.decoder_scale(sizes["decoder"])
    lat = nets.latent_size(sizes)
    crop = min(sizes["ae_crop"], lat)

    ae = nets.AutoEncoder(sizes["encoder"], sizes["decoder"]).to(dev)
    opt = adamw(ae.parameters(), AE_LR, run, weight_decay=0.0)
    ckpt_path = run.path("ckpt", "ae.pt")
    state = load_checkpoint(ckpt_path, dev)
    step, elapsed = 0, 0.0
    if state:
        ae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, elapsed = state["step"], state["elapsed"]
    clock = Clock(run, run.budgets["ae"], elapsed)
    run.log(f"ae: decoder {count_parameters(ae.decoder) / 1e6:.3f}M parameters, "
            f"{nets.decoder_macs(sizes['decoder'], sizes['image_size']) / 1e9:.2f} GMAC at "
            f"{sizes['image_size']}²; encoder {count_parameters(ae.encoder) / 1e6:.3f}M; "
            f"{n_train} training images, crops of {crop * scale}², from step {step}")
    batch = sizes["ae_batch"]
    gen = torch.Generator(device=dev).manual_seed(run.args.seed * 1000 + 11 + step)
    ae.train()
    losses = []

    def save():
        save_checkpoint(ckpt_path, {"model": ae.state_dict(), "opt": opt.state_dict(),
                                    "step": step, "elapsed": clock.elapsed})

    while not clock.finished():
        idx = torch.randint(n_train, (batch,), device=dev, generator=gen)
        y0, x0 = (int(v) for v in torch.randint(lat - crop + 1, (2,)))
        target = _nchw(high[idx, y0 * scale:(y0 + crop) * scale, x0 * scale:(x0 + crop) * scale])
        images = _nchw(low[idx])
        set_lr(opt, AE_LR, lr_factor(step, clock.fraction, 100))
        with run.autocast():
            z = ae.encode(images)
            noise = torch.rand(batch, 1, 1, 1, device=dev, generator=gen) * 0.2
            z = z + noise * torch.randn(z.shape, device=dev, generator=gen)
            out = ae.decoder(z[:, :, y0:y0 + crop, x0:x0 + crop]).float()
        loss = ae_loss(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(loss.detach())
        if step % 100 == 0:
            run.log(f"ae: step {step} loss {torch.stack(losses).mean().item():.4f} "
                    f"({clock.elapsed:.0f}/{clock.budget:.0f} s)")
            losses = []
        if clock.checkpoint_due():
            save()
            if run.out_of_time():
                raise Interrupted()
    run.sync()
    seconds = clock.elapsed
    ae.eval()
    with torch.no_grad():
        ae.fold_norm(_nchw(low[:min(n_train, 512)]))

    # held-out reconstructions: PSNR at full size, ShapeEval of reconstructions and of the renders
    with torch.no_grad():
        images = _nchw(low[n_train:])
        z = ae.encoder(images)
        recon = torch.cat([ae.decoder(z[i:i + 8]) for i in range(0, len(z), 8)])
        target = _nchw(high[n_train:])
        mse = (recon.clamp(0, 1) - target).pow(2).flatten(1).mean(1)
        psnr = float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean())
        mean = z.mean(dim=(0, 2, 3))
        std = z.std(dim=(0, 2, 3))
    prompts = meta["captions"][n_train:n_high]
    recon_rate, _ = shapeeval_rate(pool, prompts, to_eval_uint8(recon))
    truth_rate, _ = shapeeval_rate(pool, prompts, to_eval_uint8(target))
    run.log(f"ae: {step} steps in {seconds:.0f} s; held-out PSNR {psnr:.2f} dB; ShapeEval "
            f"reconstructions {recon_rate:.3f}, renders {truth_rate:.3f} ({len(prompts)} images); "
            f"latent channel mean {mean.abs().max().item():.3f} max |.|, std "
            f"{std.min().item():.3f}..{std.max().item():.3f}")
    save_checkpoint(run.path("ckpt", "ae_final.pt"), {"encoder": ae.encoder.state_dict(),
                                                      "decoder": ae.decoder.state_dict()})
    run.mark_done("ae", {"steps": step, "batch": batch, "crop": crop * scale,
                         "seconds": seconds, "psnr_db": psnr, "shapeeval_recon": recon_rate,
                         "shapeeval_renders": truth_rate, "holdout": len(prompts),
                         "decoder_parameters": count_parameters(ae.decoder),
                         "decoder_gmac": nets.decoder_macs(sizes["decoder"],
                                                           sizes["image_size"]) / 1e9})


def load_autoencoder(run):
    ae = nets.AutoEncoder(run.sizes["encoder"], run.sizes["decoder"])
    state = torch.load(run.path("ckpt", "ae_final.pt"), map_location="cpu", weights_only=True)
    ae.encoder.load_state_dict(state["encoder"])
    ae.decoder.load_state_dict(state["decoder"])
    return ae.to(run.device).eval()


# ---------------------------------------------------------------------------------------------
# latents


def stage_latents(run):
    """Encodes every training render and its mirror image (caption with left/right swapped):
    data/latents.npy float16 [2N, 16, h, w] and data/latents.json (captions, categories)."""
    meta = load_meta(run)
    n = meta["count"]
    ae = load_autoencoder(run)
    lat = nets.latent_size(run.sizes)
    channels = run.sizes["decoder"]["latent_channels"]
    low = np.load(run.path("data", "low.npy"), mmap_mode="r")
    out = _open_array(run.path("data", "latents.npy"), (2 * n, channels, lat, lat), np.float16)
    progress_path = run.path("data", "latents_progress.json")
    done = (_read_json(progress_path) or {"done": 0})["done"]
    chunk = 512 if run.cuda else 64
    started = time.time()
    with torch.no_grad():
        while done < n:
            end = min(n, done + chunk)
            images = _nchw(torch.from_numpy(low[done:end].copy()).to(run.device))
            z = ae.encoder(images)
            zf = ae.encoder(images.flip(-1))
            out[done:end] = z.cpu().numpy().astype(np.float16)
            out[n + done:n + end] = zf.cpu().numpy().astype(np.float16)
            done = end
            if time.time() - started > 60 or done == n or run.out_of_time():
                out.flush()
                _write_json(progress_path, {"done": done})
                if run.out_of_time() and done < n:
                    raise Interrupted()
    sample = torch.from_numpy(np.asarray(out[:min(2 * n, 4096)], np.float32))
    mean, std = sample.mean(dim=(0, 2, 3)), sample.std(dim=(0, 2, 3))
    captions = meta["captions"] + [swap_left_right(c) for c in meta["captions"]]
    _write_json(run.path("data", "latents.json"),
                {"captions": captions, "categories": meta["categories"] * 2})
    run.log(f"latents: {2 * n} latents of {channels}×{lat}×{lat} in {time.time() - started:.0f} s;"
            f" channel mean within ±{mean.abs().max().item():.3f}, std "
            f"{std.min().item():.3f}..{std.max().item():.3f}")
    run.mark_done("latents", {"latents": 2 * n, "seconds": time.time() - started})


def load_latents(run):
    """(latents float16 tensor on the device [M,C,h,w], captions list)."""
    latents = torch.from_numpy(np.load(run.path("data", "latents.npy")))
    info = _read_json(run.path("data", "latents.json"))
    return latents.to(run.device), info["captions"]
