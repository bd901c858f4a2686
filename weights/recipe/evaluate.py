#!/usr/bin/env python3
# evaluate.py: ShapeEval of text-to-image models on held-out ShapeWorld prompts, with 95% intervals.
"""Generates images for the held-out prompt set (shapeworld.make_prompt_set) with the same noise
the C engine draws (sgrecipe.rng.normal(seed, 0, [C, h, w])), scores them with ShapeEval and writes
a JSON file and a Markdown table.

  python3 weights/recipe/evaluate.py --model weights/default --out eval.json      # PyTorch
  python3 weights/recipe/evaluate.py --write-manifest manifest.jsonl      # jobs for the C engine
  python3 weights/recipe/evaluate.py --images DIR --manifest manifest.jsonl --out c.json
  python3 weights/recipe/evaluate.py --engine build/engine/snapgen --model weights/default \
      --images DIR --out c.json       # the C engine makes DIR/*.png (kept), then ShapeEval

Seeds: prompt i, image k uses seed i·seeds + k. Images are made at full size (1024² for the
default model), turned into uint8 as the pipeline does (clamp, ×255, round), and box-filtered to
256² (ShapeEval's own first step, done on the device in batches) before ShapeEval.
"""
import argparse
import contextlib
import json
import math
import multiprocessing
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from sgrecipe import export, rng, sampler  # noqa: E402
from sgrecipe.safetensors_io import load_file  # noqa: E402
from sgtrain import nets, render  # noqa: E402
from sgtrain.data import to_eval_uint8  # noqa: E402
from sgtrain.text import Conditioner, encoder_outputs, load_tokenizer, make_text_encoder  # noqa
from shapeworld import CATEGORIES, make_prompt_set  # noqa: E402


def wilson(successes, total, z=1.96):
    """95% Wilson score interval (low, high) of a proportion."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    denom = 1 + z * z / total
    center = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, center - half), min(1.0, center + half)


_NOISE = {}


def seed_noise(seed, shape):
    """rng.normal(seed, 0, shape): the engine's initial latent for a seed (cached: every model
    of an evaluation uses the same seeds)."""
    key = (int(seed), tuple(shape))
    if key not in _NOISE:
        _NOISE[key] = rng.normal(seed, 0, shape)
    return _NOISE[key]


class Generator:
    """A text-to-image model for evaluation: tokenizer + text encoder + conditioner + UNet +
    decoder, sampling batches with batched classifier-free guidance (uncond = encode(""))."""

    def __init__(self, name, tokenizer, text_encoder, conditioner, unet, decoder, timesteps,
                 guidance, device, bf16):
        self.name, self.tokenizer = name, tokenizer
        self.text_encoder, self.conditioner = text_encoder.eval(), conditioner.eval()
        self.unet, self.decoder = unet.eval(), decoder.eval()
        self.timesteps, self.guidance = timesteps, guidance
        self.device, self.bf16 = device, bf16 and device.type == "cuda"
        self.guidance_max_t = 1.0  # guidance only at t <= this (above it: the conditional alone)

    def describe(self):
        steps = len(self.timesteps) - 1
        return {"name": self.name, "steps": steps, "guidance": self.guidance,
                "guidance_max_t": self.guidance_max_t,
                "timesteps": [round(t, 6) for t in self.timesteps],
                "precision": "bf16 autocast" if self.bf16 else "float32"}

    def _autocast(self):
        if self.bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def condition(self, prompts):
        ids = torch.tensor([self.tokenizer(p) for p in prompts], device=self.device)
        with self._autocast():
            hidden, pooled = encoder_outputs(self.text_encoder, ids)
            context = self.conditioner(hidden)
        return context.float(), pooled.float()

    @torch.no_grad()
    def latents(self, prompts, seeds, on_step=None):
        """Final latents for prompts[i] with seeds[i] (Euler as sgrecipe.sampler, batched).
        on_step(i, t, x, v), if given, sees each step's latents and guided velocity."""
        shape = (self.unet.config["in_channels"], self.latent_side, self.latent_side)
        x = torch.from_numpy(np.stack([seed_noise(s, shape) for s in seeds])).to(self.device)
        context, pooled = self.condition(prompts)
        guided = self.guidance > 1.0
        if guided:
            context_u, pooled_u = self.condition([""])
            context = torch.cat([context, context_u.expand(len(prompts), -1, -1)])
            pooled = torch.cat([pooled, pooled_u.expand(len(prompts), -1)])
        ts = self.timesteps
        for i in range(len(ts) - 1):
            timestep = torch.full((x.shape[0] * (2 if guided else 1),),
                                  float(np.float32(ts[i] * 1000.0)), device=self.device)
            with self._autocast():
                v = self.unet(torch.cat([x, x]) if guided else x, timestep, context, None, pooled)
            v = v.float()
            if guided:
                v_c, v_u = v.chunk(2)
                w = self.guidance if ts[i] <= self.guidance_max_t else 1.0
                v = sampler.guidance_combine(v_c, v_u, w)
            if on_step:
                on_step(i, ts[i], x, v)
            x = sampler.euler_step(x, v, ts[i], ts[i + 1])
        return x

    @torch.no_grad()
    def images_uint8(self, prompts, seeds, decode_batch=16):
        """uint8 NHWC images at ≤256² (box-filtered as ShapeEval does) for the prompts."""
        x = self.latents(prompts, seeds)
        out = []
        for i in range(0, len(x), decode_batch):
            with self._autocast():
                image = self.decoder(x[i:i + decode_batch]).float()
            out.append(to_eval_uint8(image))
        return np.concatenate(out)

    @torch.no_grad()
    def full_images(self, prompts, seeds):
        """Full-size float images [B,3,H,W] on the CPU (for sample sheets)."""
        x = self.latents(prompts, seeds)
        with self._autocast():
            return self.decoder(x).float().clamp(0, 1).cpu()

    @property
    def latent_side(self):
        return self.image_size // self.decoder.scale

    image_size = 1024


def load_text_parts(folder, device):
    """(tokenizer, text encoder, conditioner) from a model folder's text side."""
    index = export.read_json(os.path.join(folder, "model_index.json"))
    cond_cfg = export.read_json(os.path.join(folder, "conditioner", "config.json"))
    entry = cond_cfg["encoders"][0]
    enc_dir = os.path.join(folder, entry["component"])
    tokenizer = load_tokenizer(os.path.join(folder, entry["tokenizer"]))
    text_cfg = export.read_json(os.path.join(enc_dir, "config.json"))
    encoder = make_text_encoder(text_cfg)
    encoder.load_state_dict(_load_folder_tensors(enc_dir), strict=False)
    conditioner = Conditioner(text_cfg["hidden_size"], cond_cfg["context_dim"])
    conditioner.load_state_dict(_load_folder_tensors(os.path.join(folder, "conditioner")))
    if "text_encoder" not in index:
        raise ValueError(f"{folder}: model_index.json names no text_encoder")
    return tokenizer, encoder.to(device).eval(), conditioner.to(device).eval()


def _load_folder_tensors(folder):
    state = {}
    for file in sorted(os.listdir(folder)):
        if file.endswith(".safetensors"):
            state.update({k: torch.from_numpy(v.copy())
                          for k, v in load_file(os.path.join(folder, file)).items()})
    return state


def load_generator(folder, device, name="model", steps=None, guidance=None, bf16=False):
    """A Generator for an exported model folder (its scheduler's defaults unless given)."""
    unet, decoder, sched = export.load_model_folder(folder)
    device_unet = nets.UNet(unet.config)
    device_unet.load_state_dict(unet.state_dict())
    tokenizer, encoder, conditioner = load_text_parts(folder, device)
    ts = sampler.timesteps(sched, steps)
    if guidance is None:
        guidance = float(sched.get("default_guidance", 1.0))
    gen = Generator(name, tokenizer, encoder, conditioner,
                    nets.gpu_layout(device_unet.to(device), device),
                    nets.gpu_layout(decoder.to(device), device), ts, guidance, device, bf16)
    return gen


def prompt_jobs(n_prompts, n_seeds, prompt_seed=0):
    """[(index, category, prompt, seed)] for the held-out set."""
    jobs = []
    for i, (category, prompt, _) in enumerate(make_prompt_set(n_prompts, prompt_seed)):
        for k in range(n_seeds):
            jobs.append((len(jobs), category, prompt, i * n_seeds + k))
    return jobs


def score(results, jobs):
    """Per-category and overall pass rates with Wilson 95% intervals."""
    table = {}
    for category in CATEGORIES + ["overall"]:
        picked = [r for r, j in zip(results, jobs) if category in (j[1], "overall")]
        if not picked:
            continue
        passed = sum(1 for r in picked if r[0])
        low, high = wilson(passed, len(picked))
        table[category] = {"passed": passed, "total": len(picked), "rate": passed / len(picked),
                           "ci95": [low, high]}
    # GenEval's overall is the mean over categories (equal to the pooled rate when balanced)
    table["overall"]["category_mean"] = float(np.mean([table[c]["rate"] for c in CATEGORIES
                                                       if c in table]))
    return table


def sample_all(gen, jobs, batch):
    """uint8 images (≤256², NHWC) for every job, and the seconds it took."""
    started = time.time()
    images = []
    for i in range(0, len(jobs), batch):
        chunk = jobs[i:i + batch]
        images.append(gen.images_uint8([j[2] for j in chunk], [j[3] for j in chunk]))
    if gen.device.type == "cuda":
        torch.cuda.synchronize()
    return np.concatenate(images), time.time() - started


def score_async(pool, jobs, images):
    """ShapeEval of the images in the worker pool (an AsyncResult of per-image results)."""
    return pool.map_async(render.evaluate_item, [(j[2], im) for j, im in zip(jobs, images)],
                          chunksize=8)


def make_entry(gen, jobs, results, sample_seconds, eval_seconds, log=print):
    table = score(results, jobs)
    entry = dict(gen.describe(), table=table, sample_seconds=sample_seconds,
                 eval_seconds=eval_seconds,
                 failures=[{"prompt": j[2], "seed": j[3], "reason": r[2]}
                           for j, r in zip(jobs, results) if not r[0]][:40])
    o = table["overall"]
    log(f"eval: {gen.name}: overall {o['rate']:.3f} [{o['ci95'][0]:.3f}, {o['ci95'][1]:.3f}] "
        f"({sample_seconds:.1f} s sampling)")
    return entry


def evaluate_generator(gen, jobs, pool, batch, log=print):
    images, sample_seconds = sample_all(gen, jobs, batch)
    started = time.time()
    results = score_async(pool, jobs, images).get()
    return make_entry(gen, jobs, results, sample_seconds, time.time() - started, log), images


def markdown_table(entries, jobs_info):
    head = "| model | steps | CFG | " + " | ".join(CATEGORIES) + " | overall (95% CI) |"
    lines = [head, "|" + "---|" * (len(CATEGORIES) + 4)]
    for e in entries:
        t = e["table"]
        cells = [f"{t[c]['rate']:.3f}" if c in t else "–" for c in CATEGORIES]
        o = t["overall"]
        steps = e["steps"] if e.get("steps") else "–"
        guidance = f"{e['guidance']:g}" if e.get("guidance") else "–"
        lines.append(f"| {e['name']} | {steps} | {guidance} | " + " | ".join(cells)
                     + f" | **{o['rate']:.3f}** [{o['ci95'][0]:.3f}, {o['ci95'][1]:.3f}] |")
    lines.append("")
    lines.append(f"{jobs_info}. Per-category cells are pass rates; each category's 95% Wilson "
                 "interval is in the JSON. Two seeds of one prompt are not independent, so the "
                 "intervals are slightly optimistic.")
    return "\n".join(lines) + "\n"


def write_sheet(path, rows, labels):
    """A PNG sample sheet: rows of [3,H,W] float images, shrunk to 256² each."""
    from PIL import Image
    cells = [[np.asarray(Image.fromarray(
        (im.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)).resize((256, 256),
                                                                           Image.BOX))
              for im in row] for row in rows]
    sheet = np.concatenate([np.concatenate(r, axis=1) for r in cells], axis=0)
    Image.fromarray(sheet).save(path)
    with open(os.path.splitext(path)[0] + ".txt", "w") as f:
        f.write("\n".join(labels) + "\n")


def engine_images(engine, model, folder, jobs, workers, steps=None, guidance=None,
                  extra_args=()):
    """Generates every job's PNG with the C runner (`snapgen generate`, one thread per process,
    `workers` processes at once) into folder; existing PNGs are kept (resumable). Returns the
    manifest entries and the seconds spent."""
    import subprocess
    os.makedirs(folder, exist_ok=True)
    manifest = [{"name": f"{index:05d}.png", "prompt": prompt, "seed": seed,
                 "category": category} for index, category, prompt, seed in jobs]
    todo = [m for m in manifest if not os.path.exists(os.path.join(folder, m["name"]))]
    started = time.time()
    running = []
    env = dict(os.environ, OMP_WAIT_POLICY="passive")
    for m in todo + [None] * workers:
        while len(running) >= workers or (m is None and running):
            proc, job = running.pop(0)
            if proc.wait() != 0:
                raise RuntimeError(f"snapgen failed (exit {proc.returncode}) on {job}: "
                                   f"{proc.stderr.read().decode(errors='replace').strip()}")
            if m is None:
                break
        if m is None:
            continue
        cmd = [engine, "generate", "--model", model, "--prompt", m["prompt"], "--seed",
               str(m["seed"]), "--output", os.path.join(folder, m["name"]), "--threads", "1",
               "--quiet"]
        if steps:
            cmd += ["--steps", str(steps)]
        if guidance is not None:
            cmd += ["--guidance", str(guidance)]
        cmd += list(extra_args)
        running.append((subprocess.Popen(cmd, stderr=subprocess.PIPE, env=env), m))
    with open(os.path.join(folder, "manifest.jsonl"), "w") as f:
        for m in manifest:
            f.write(json.dumps(m) + "\n")
    return manifest, time.time() - started


def main():
    parser = argparse.ArgumentParser(description="ShapeEval of a model folder or of PNG images.")
    parser.add_argument("--model", help="exported model folder (PyTorch generation)")
    parser.add_argument("--images", help="folder of PNGs named by --manifest (e.g. C engine)")
    parser.add_argument("--engine", help="C runner (build/engine/snapgen): generate the PNGs of "
                        "--model into --images first")
    parser.add_argument("--engine-int8", action="store_true",
                        help="run the C engine with --int8 (int8 linear weights)")
    parser.add_argument("--manifest", help="JSONL of {name, prompt, seed, category}")
    parser.add_argument("--write-manifest", help="write the prompt/seed list as JSONL and stop")
    parser.add_argument("--prompts", type=int, default=504)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--prompt-seed", type=int, default=0)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--guidance-max-t", type=float, default=1.0,
                        help="PyTorch generation: classifier-free guidance only at steps with "
                             "t <= this (a guidance interval); the conditional alone above it")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", help="JSON results (a .md table is written beside it)")
    args = parser.parse_args()

    jobs = prompt_jobs(args.prompts, args.seeds, args.prompt_seed)
    if args.write_manifest:
        with open(args.write_manifest, "w") as f:
            for index, category, prompt, seed in jobs:
                f.write(json.dumps({"name": f"{index:05d}.png", "prompt": prompt, "seed": seed,
                                    "category": category}) + "\n")
        print(f"wrote {len(jobs)} jobs to {args.write_manifest}")
        return 0
    pool = multiprocessing.get_context("fork").Pool(args.workers)
    torch.set_num_threads(max(1, os.cpu_count() // 2))
    engine_seconds = None
    if args.engine:
        if not (args.model and args.images):
            parser.error("--engine needs --model and --images")
        manifest, engine_seconds = engine_images(args.engine, args.model, args.images, jobs,
                                                 args.workers, args.steps, args.guidance,
                                                 ["--int8"] if args.engine_int8 else [])
        print(f"engine: {len(manifest)} images in {args.images} ({engine_seconds:.0f} s)")
    if args.images:
        if not args.engine:
            with open(args.manifest) as f:
                manifest = [json.loads(line) for line in f if line.strip()]
        jobs = [(i, m["category"], m["prompt"], m["seed"]) for i, m in enumerate(manifest)]
        # ShapeEval opens each PNG in its worker (a path is accepted like an array)
        results = pool.map(render.evaluate_item,
                           [(m["prompt"], os.path.join(args.images, m["name"]))
                            for m in manifest], chunksize=8)
        name = os.path.basename(os.path.normpath(args.images))
        entry = {"name": f"C engine: {name}" if args.engine else name, "steps": args.steps,
                 "guidance": args.guidance, "table": score(results, jobs),
                 "engine_seconds": engine_seconds,
                 "failures": [{"prompt": j[2], "seed": j[3], "reason": r[2]}
                              for j, r in zip(jobs, results) if not r[0]][:40]}
    else:
        device = torch.device(args.device)
        gen = load_generator(args.model, device, os.path.basename(os.path.normpath(args.model)),
                             args.steps, args.guidance)
        gen.image_size = args.image_size
        gen.guidance_max_t = args.guidance_max_t
        entry, _ = evaluate_generator(gen, jobs, pool, args.batch)
    info = f"{len(jobs)} images ({args.prompts} held-out prompts × {args.seeds} seeds)"
    table = markdown_table([entry], info)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"jobs": info, "models": [entry]}, f, indent=1)
        with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
            f.write(table)
    pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
