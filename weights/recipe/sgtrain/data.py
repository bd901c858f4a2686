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


class Renderer:
    """Renders ShapeWorld training pairs in the worker pool, in order, into data/low.npy and
    data/high.npy (uint8 NHWC memmaps) with captions in data/meta.json. Image i is sample((seed,
    i)) at encoder_size, and also at image_size when i < hires_images. At most two batches are
    in flight, so the main process can keep rendering going while it trains on the GPU."""

    def __init__(self, run, pool):
        sizes = run.sizes
        data_seed = getattr(run.args, "data_seed", None)
        self.run, self.pool = run, pool
        self.seed = run.args.seed if data_seed is None else data_seed
        folder = run.path("data")
        os.makedirs(folder, exist_ok=True)
        self.low_size, self.high_size = sizes["encoder_size"], sizes["image_size"]
        self.n_max, self.n_high = sizes["max_images"], sizes["hires_images"]
        self.meta_path = os.path.join(folder, "meta.json")
        self.meta = _read_json(self.meta_path) or {
            "seed": self.seed, "low_size": self.low_size, "high_size": self.high_size,
            "count": 0, "captions": [], "categories": [], "elapsed": 0.0}
        if self.meta["seed"] != self.seed:
            raise SystemExit(f"data: {folder} holds renders of seed {self.meta['seed']}, not "
                             f"{self.seed} (--data-seed): use a new work folder")
        self.low = _open_array(os.path.join(folder, "low.npy"),
                               (self.n_max, self.low_size, self.low_size, 3))
        self.high = _open_array(os.path.join(folder, "high.npy"),
                                (self.n_high, self.high_size, self.high_size, 3))
        self.batch = max(8, 16 * run.args.threads)
        self.pending = collections.deque()
        self.next_index = self.meta["count"]
        self.rendered = 0

    @property
    def count(self):
        return self.meta["count"]

    def submit(self):
        while len(self.pending) < 2 and self.next_index < self.n_max:
            end = min(self.n_max, self.next_index + self.batch)
            jobs = [(self.seed, i, self.low_size, self.high_size if i < self.n_high else 0)
                    for i in range(self.next_index, end)]
            self.pending.append(self.pool.map_async(render.render_item, jobs, chunksize=2))
            self.next_index = end

    def collect(self, wait):
        """Stores the oldest batch in flight when it is ready (or waits for it)."""
        if not self.pending or not (wait or self.pending[0].ready()):
            return
        meta = self.meta
        for index, image_low, image_high, caption, category in self.pending.popleft().get():
            assert index == meta["count"], "renders must arrive in order"
            self.low[index] = image_low
            if image_high is not None:
                self.high[index] = image_high
            meta["captions"].append(caption)
            meta["categories"].append(category)
            meta["count"] += 1
            self.rendered += 1

    def pump(self):
        """Non-blocking: stores finished batches, keeps two in flight."""
        while self.pending and self.pending[0].ready():
            self.collect(wait=False)
        self.submit()

    def drain(self):
        while self.pending:
            self.collect(wait=True)

    def save(self, elapsed=None):
        if elapsed is not None:
            self.meta["elapsed"] = elapsed
        self.low.flush()
        self.high.flush()
        _write_json(self.meta_path, self.meta)


def stage_data(run, pool):
    """Renders training pairs until the stage budget is spent (at least hires_images and
    min_images, at most max_images). Rendering goes on in the background during the ae stage."""
    sizes = run.sizes
    renderer = Renderer(run, pool)
    clock = Clock(run, run.budgets["data"], renderer.meta["elapsed"])
    run.log(f"data: {renderer.count} images so far; budget {clock.budget:.0f} s, "
            f"{run.args.threads} worker processes")
    started = time.time()
    need = min(renderer.n_max, max(renderer.n_high, sizes["min_images"]))
    while renderer.count < renderer.n_max and not (clock.finished() and renderer.count >= need):
        renderer.submit()
        renderer.collect(wait=True)
        if clock.checkpoint_due():
            renderer.drain()
            renderer.save(clock.elapsed)
            run.log(f"data: {renderer.count} images, "
                    f"{renderer.rendered / (time.time() - started):.0f}/s")
            if run.out_of_time():
                raise Interrupted()
    renderer.drain()
    renderer.save(clock.elapsed)
    rate = renderer.rendered / max(time.time() - started, 1e-9)
    run.log(f"data: done, {renderer.count} images ({renderer.n_high} also at "
            f"{renderer.high_size}²), {rate:.0f} images/s")
    run.mark_done("data", {"images": renderer.count, "hires_images": renderer.n_high,
                           "seconds": clock.elapsed, "images_per_second": rate,
                           "encoder_size": renderer.low_size,
                           "image_size": renderer.high_size})


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

    ae = nets.gpu_layout(nets.AutoEncoder(sizes["encoder"], sizes["decoder"]).to(dev), dev)
    opt = adamw(ae.parameters(), AE_LR, run, weight_decay=0.0)
    ckpt_path = run.path("ckpt", "ae.pt")
    state = load_checkpoint(ckpt_path, dev)
    step, elapsed = 0, 0.0
    if state:
        ae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, elapsed = state["step"], run.resumed_elapsed("ae", state)
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

    renderer = Renderer(run, pool)  # more training images while the GPU trains the AE
    while not clock.finished():
        if step % 5 == 0:
            renderer.pump()
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
            renderer.drain()
            renderer.save()
            if run.out_of_time():
                raise Interrupted()
    run.sync()
    seconds = clock.elapsed
    save()  # so --redo ae with a larger budget continues from here
    renderer.drain()
    renderer.save()
    data_stats = run.stage_stats("data") or {}
    data_stats["images_after_ae"] = renderer.count
    run.mark_done("data", data_stats)
    run.log(f"ae: {renderer.rendered} more images rendered meanwhile ({renderer.count} in all)")
    meta = load_meta(run)
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
    return nets.gpu_layout(ae.to(run.device), run.device).eval()


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
