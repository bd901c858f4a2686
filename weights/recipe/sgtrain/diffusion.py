# diffusion.py: teacher flow matching, the student KD ablation, adversarial step distillation.
"""Stages `teacher`, `students` and `adversarial` (SPEC §5.1, §6.1–6.4).

All three train on the cached latents with captions; every batch is drawn on the device (the
whole latent set lives there), so no data loader is involved.
"""
import json
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from sgrecipe import sampler

from . import nets
from .common import EMA, Clock, Interrupted, StepProfiler, adamw, compiled, count_parameters, \
    graphed, load_checkpoint, lr_factor, save_checkpoint, set_lr
from .data import load_latents
from .text import Conditioner, clip_config, encoder_outputs, load_tokenizer, make_text_encoder, \
    tokenize_all, write_tokenizer

CAPTION_DROPOUT = 0.1
VARIANTS = ("tas", "plain", "none")  # timestep-aware KD, fixed-weight KD, no KD
VARIANT_NAMES = {"tas": "student, timestep-aware multi-level KD",
                 "plain": "student, plain KD (0.5 task + 0.5 KD)",
                 "none": "student, no KD"}
FEW_STEPS = 4


def few_step_times(shift):
    """The distilled model's 4 timesteps: 1, 0.75, 0.5, 0.25 through the time shift α."""
    return [sampler.time_shift(shift, 1.0 - i / FEW_STEPS) for i in range(FEW_STEPS)]


def adversarial_times(run):
    """The timesteps the adversarial stage trains (trained) on: those it recorded when it is done,
    else from --adv-shift."""
    stats = run.stage_stats("adversarial")
    if stats and "times" in stats:
        return [float(t) for t in stats["times"]]
    return few_step_times(run.args.adv_shift)


# ---------------------------------------------------------------------------------------------
# text side and model construction


def text_side(run):
    """(tokenizer, text encoder config), writing the tokenizer folder on first use."""
    folder = run.path("text", "tokenizer")
    if not os.path.exists(os.path.join(folder, "merges.txt")):
        write_tokenizer(folder)
    with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    t = run.sizes["text"]
    cfg = clip_config(len(vocab), vocab["<|startoftext|>"], vocab["<|endoftext|>"], t["hidden"],
                      t["layers"], t["heads"], t["intermediate"], t["projection"])
    return load_tokenizer(folder), cfg


def zero_init(unet):
    """Residual branches (res pw2/conv2, transformer proj_out) and conv_out start at zero, so
    every block starts as the identity (ADM/SD practice)."""
    for name, module in unet.named_modules():
        parts = name.split(".")
        res_out = parts[-1] in ("pw2", "conv2")
        transformer_out = parts[-1] == "proj_out" and len(parts) > 1 and parts[-2] != "ff"
        if res_out or transformer_out or name == "conv_out":
            nn.init.zeros_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def make_teacher(run, text_cfg):
    sizes = run.sizes
    unet = nets.UNet(sizes["teacher"])
    zero_init(unet)
    teacher = nn.ModuleDict({"text_encoder": make_text_encoder(text_cfg),
                             "conditioner": Conditioner(text_cfg["hidden_size"],
                                                        sizes["teacher"]["context_dim"]),
                             "unet": unet}).to(run.device)
    return nets.gpu_layout(teacher, run.device)


def kd_channels(cfg):
    n = len(cfg["block_channels"])
    return cfg["block_channels"][n - 1 - min(1, n - 1)]


def make_student(run, text_cfg):
    sizes = run.sizes
    unet = nets.UNet(sizes["student"])
    zero_init(unet)
    student = nn.ModuleDict({
        "conditioner": Conditioner(text_cfg["hidden_size"], sizes["student"]["context_dim"]),
        "unet": unet,
        "projector": nn.Conv2d(kd_channels(sizes["student"]), kd_channels(sizes["teacher"]), 1),
    }).to(run.device)
    return nets.gpu_layout(student, run.device)


def load_teacher(run, text_cfg):
    """The teacher's EMA weights (text encoder, conditioner, UNet), frozen; .step is the
    training step they are from."""
    teacher = make_teacher(run, text_cfg)
    state = torch.load(run.path("ckpt", "teacher_final.pt"), map_location=run.device,
                       weights_only=True)
    teacher.load_state_dict(state["ema"])
    teacher = nets.frozen_copy(teacher)
    teacher.step = state["step"]
    return teacher


def load_student(run, text_cfg, variant, final_name="students_final.pt"):
    student = make_student(run, text_cfg)
    state = torch.load(run.path("ckpt", final_name), map_location=run.device, weights_only=True)
    student.load_state_dict(state["ema"][variant] if variant else state["ema"])
    return student


class Batches:
    """Random training batches drawn on the device: latents, caption ids (with dropout to "")."""

    def __init__(self, run, tokenizer, seed_offset):
        self.latents, captions = load_latents(run)
        ids_path = run.path("data", "caption_ids.pt")  # tokenized once, reused by later stages
        ids = torch.load(ids_path, weights_only=True) if os.path.exists(ids_path) else None
        if ids is None or len(ids) != len(captions):
            ids = tokenize_all(tokenizer, captions)
            torch.save(ids, ids_path)
        self.ids = ids.to(run.device)
        self.empty = torch.tensor(tokenizer(""), device=run.device)
        self.device = run.device
        self.gen = torch.Generator(device=run.device).manual_seed(run.args.seed * 7919 +
                                                                  seed_offset)

    def reseed(self, value):
        self.gen.manual_seed(value)

    def __len__(self):
        return len(self.latents)

    def draw(self, batch, dropout=CAPTION_DROPOUT):
        idx = torch.randint(len(self.latents), (batch,), device=self.device, generator=self.gen)
        x0 = self.latents[idx].float()
        ids = self.ids[idx]
        if dropout > 0:
            drop = torch.rand(batch, device=self.device, generator=self.gen) < dropout
            ids = torch.where(drop[:, None], self.empty[None, :], ids)
        return x0, ids

    def noise_like(self, x):
        return torch.randn(x.shape, device=self.device, generator=self.gen)


def expand(t, x):
    return t.reshape(-1, *([1] * (x.dim() - 1)))


# ---------------------------------------------------------------------------------------------
# teacher


class TeacherForward(nn.Module):
    """The teacher's trained forward as one module (caption ids → velocity), so that it can be
    captured as one CUDA graph."""

    def __init__(self, system, autocast):
        super().__init__()
        self.system = system
        self.autocast = autocast

    def forward(self, xt, timestep, ids):
        with self.autocast(cache=False):
            hidden, pooled = encoder_outputs(self.system["text_encoder"], ids)
            context = self.system["conditioner"](hidden)
            return self.system["unet"](xt, timestep, context, None, pooled)


class StudentForward(nn.Module):
    """A student's trained forward as one module: (velocity, KD feature) from the teacher's text
    states, or the velocity alone when it learns without KD."""

    def __init__(self, student, with_features, autocast):
        super().__init__()
        # not the KD projector: the loss uses it outside the graph
        self.conditioner = student["conditioner"]
        self.unet = student["unet"]
        self.with_features = with_features
        self.autocast = autocast

    def forward(self, xt, timestep, hidden, pooled):
        with self.autocast(cache=False):
            context = self.conditioner(hidden)
            out = self.unet(xt, timestep, context, None, pooled,
                            return_features=self.with_features)
        return (out[0], out[1]["kd"]) if self.with_features else out


def sample_inputs(data, batch):
    """Fixed inputs of a CUDA graph capture: noise latents, timesteps, caption ids (drawn from
    the default generator, so the training batches stay as without graphs)."""
    dev = data.latents.device
    shape = (batch,) + tuple(data.latents.shape[1:])
    ids = data.ids[torch.arange(batch, device=dev) % len(data.ids)].clone()
    return (torch.randn(shape, device=dev), torch.rand(batch, device=dev) * 1000.0, ids)



class TeacherProbe:
    """Scores the teacher's EMA weights on PROBE_PROMPTS held-out prompts (one seed each, the
    evaluation's steps and guidance, full-size images, ShapeEval) every run.probe_seconds of
    training, so a long run logs its learning curve (log.txt and probes.jsonl). Its time is not
    counted as training time."""

    PROBE_PROMPTS = 48

    def __init__(self, run, text_cfg, tokenizer):
        self.run, self.text_cfg, self.tokenizer = run, text_cfg, tokenizer
        self.every = getattr(run, "probe_seconds", 0) or 0
        self.last = time.time()
        self.generator = None

    def due(self):
        return self.every > 0 and time.time() - self.last >= self.every

    @torch.no_grad()
    def __call__(self, ema, step):
        from sgrecipe import sampler
        from shapeworld import evaluate as shapeeval, make_prompt_set
        from .data import load_autoencoder
        from .report import _evaluate_module
        started = time.time()
        run, args = self.run, self.run.args
        if self.generator is None:
            model = make_teacher(run, self.text_cfg).eval()
            decoder = load_autoencoder(run).decoder
            steps = sampler.timesteps({"shift": 1.0}, args.eval_steps)
            self.generator = _evaluate_module().Generator(
                "teacher probe", self.tokenizer, model["text_encoder"], model["conditioner"],
                model["unet"], decoder, steps, args.eval_guidance, run.device, True)
            self.generator.image_size = run.sizes["image_size"]
            self.model = model
        ema.copy_to(self.model)
        prompts = make_prompt_set(self.PROBE_PROMPTS, 0)
        images = []
        batch = max(1, min(run.sizes["eval_batch"], 16))
        for i in range(0, len(prompts), batch):
            chunk = prompts[i:i + batch]
            images.extend(self.generator.images_uint8([p for _, p, _ in chunk],
                                                      list(range(i, i + len(chunk)))))
        passed = sum(bool(shapeeval(p, image)[0]) for (_, p, _), image in zip(prompts, images))
        seconds = time.time() - started
        run.log(f"teacher: probe at step {step}: ShapeEval {passed}/{len(prompts)} "
                f"({passed / len(prompts):.3f}) on held-out prompts ({args.eval_steps} steps, "
                f"CFG {args.eval_guidance:g}; {seconds:.0f} s, not counted as training)")
        with open(run.path("probes.jsonl"), "a") as f:
            f.write(json.dumps({"stage": "teacher", "step": step, "passed": passed,
                                "prompts": len(prompts), "steps": args.eval_steps,
                                "guidance": args.eval_guidance, "seconds": round(seconds, 1),
                                "time": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        self.last = time.time()
        return seconds


def stage_teacher(run):
    """Flow matching with logit-normal t, time-shifted by --t-shift (1 by default: the 16×16 latent
    is below the token count at which SD3's resolution rule gives α = 1; but ShapeWorld's flat
    colours survive noise longer, and the samples' colours are decided at t > 0.85, where α = 1
    puts 4% of the training t, α = 2 15%), 10% caption dropout to "", AdamW, bf16 autocast, EMA.
    The tiny CLIP text encoder and the conditioner train jointly with the UNet."""
    sizes, dev, args = run.sizes, run.device, run.args
    tokenizer, text_cfg = text_side(run)
    data = Batches(run, tokenizer, 1)
    system = make_teacher(run, text_cfg)
    params = [p for p in system.parameters()]
    opt = adamw(params, args.lr, run)
    ema = EMA(system, args.ema)
    ckpt_path = run.path("ckpt", "teacher.pt")
    step, elapsed = 0, 0.0
    state = load_checkpoint(ckpt_path, dev)
    warm_from = 0  # the step the learning-rate warm-up counts from
    if state and "opt" not in state:
        # teacher_final.pt copied to teacher.pt (e.g. brought back from a GPU run): the EMA
        # weights go on training with fresh AdamW moments and a new warm-up
        run.log(f"teacher: warm start from EMA weights at step {state['step']} (no optimizer "
                "state)")
        system.load_state_dict(state["ema"])
        ema.load_state_dict(state["ema"])
        step = warm_from = state["step"]
        data.reseed(args.seed * 7919 + 1 + step)
    elif state:
        system.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        ema.load_state_dict(state["ema"])
        step, elapsed = state["step"], run.resumed_elapsed("teacher", state)
        warm_from = state.get("warm_from", 0)
        data.reseed(args.seed * 7919 + 1 + step)
    clock = Clock(run, run.budgets["teacher"], elapsed)
    unet = system["unet"]
    macs = nets.unet_macs(unet, nets.latent_size(sizes), 77)
    run.log(f"teacher: UNet {count_parameters(unet) / 1e6:.2f}M parameters, {macs / 1e9:.2f} "
            f"GMAC/forward; text encoder {count_parameters(system['text_encoder']) / 1e6:.3f}M; "
            f"{len(data)} latents; batch {sizes['batch']}; from step {step}")
    batch = sizes["batch"]
    losses, t0, s0 = [], time.time(), step

    def save(path=ckpt_path):
        save_checkpoint(path, {"model": system.state_dict(), "opt": opt.state_dict(),
                               "ema": ema.state_dict(), "step": step, "elapsed": clock.elapsed,
                               "warm_from": warm_from})

    system.train()
    if getattr(args, "compile", False):
        forward = compiled(run, TeacherForward(system, run.autocast), "teacher")
    else:
        forward = graphed(run, TeacherForward(system, run.autocast), sample_inputs(data, batch),
                          "teacher")
    probe = TeacherProbe(run, text_cfg, tokenizer)
    profiler = StepProfiler(run, "teacher")

    def train_step():
        x0, ids = data.draw(batch)
        t = nets.logit_normal(batch, dev, data.gen, shift=args.t_shift)
        eps = data.noise_like(x0)
        xt = (1 - expand(t, x0)) * x0 + expand(t, x0) * eps
        v = forward(xt, t * 1000.0, ids)
        loss = F.mse_loss(v.float(), eps - x0)
        set_lr(opt, args.lr, lr_factor(step - warm_from, clock.fraction, args.warmup))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss

    while not clock.finished():
        out_of_memory = False
        try:
            loss = train_step()
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True
        if out_of_memory:  # handled outside the except block so the failed graph is freed
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            if batch <= 16:
                raise RuntimeError("teacher: out of GPU memory even at batch 16")
            batch //= 2
            forward = TeacherForward(system, run.autocast)  # eager: a graph has a fixed batch
            run.log(f"teacher: out of GPU memory, batch halved to {batch} (eager)")
            continue
        step += 1
        ema.update(system, step)
        profiler.after_step()
        losses.append(loss.detach())
        if step % 100 == 0:
            rate = (step - s0) / (time.time() - t0)
            run.log(f"teacher: step {step} loss {torch.stack(losses).mean().item():.4f} "
                    f"{rate:.2f} steps/s ({clock.elapsed:.0f}/{clock.budget:.0f} s"
                    f"{run.memory_note()})")
            losses = []
        if clock.checkpoint_due():
            save()
            if run.out_of_time():
                raise Interrupted()
        if probe.due():
            clock.base -= probe(ema, step)
    run.sync()
    save()  # so --redo teacher with a larger budget continues from here
    save_checkpoint(run.path("ckpt", "teacher_final.pt"), {"ema": ema.state_dict(), "step": step})
    run.log(f"teacher: {step} steps of batch {batch} in {clock.elapsed:.0f} s")
    run.mark_done("teacher", {"steps": step, "batch": batch, "seconds": clock.elapsed,
                              "parameters": count_parameters(unet), "gmac_per_forward": macs / 1e9,
                              "text_encoder_parameters": count_parameters(system["text_encoder"]),
                              "lr": args.lr, "ema": args.ema, "t_shift": args.t_shift,
                              "config": sizes["teacher"]})


# ---------------------------------------------------------------------------------------------
# students: three variants trained side by side on identical batches


def student_loss(variant, student, v_student, f_student, target, v_teacher, f_teacher, t):
    """(loss, task, kd) for one variant; task/kd are per-sample (kd None without KD)."""
    task = nets.per_sample_mse(v_student, target)
    if variant == "none":
        return task.mean(), task, None
    kd = nets.per_sample_mse(v_student, v_teacher) + \
        nets.feature_kd(f_student, student["projector"], f_teacher)
    if variant == "tas":
        return nets.timestep_aware(task, kd, t), task, kd
    return (0.5 * task + 0.5 * kd).mean(), task, kd


def stage_students(run):
    """Students (a) timestep-aware multi-level KD, (b) plain KD, (c) no KD, from scratch, on the
    same batches, same t, same noise, same steps (one shared teacher forward per step). KD: output
    (teacher velocity, no CFG) + feature (student up.1 last transformer → 1×1 conv → teacher's)."""
    sizes, dev, args = run.sizes, run.device, run.args
    tokenizer, text_cfg = text_side(run)
    teacher = load_teacher(run, text_cfg)
    data = Batches(run, tokenizer, 2)
    students = {v: make_student(run, text_cfg) for v in VARIANTS}
    for v in VARIANTS[1:]:  # identical initial weights for a fair comparison
        students[v].load_state_dict(students[VARIANTS[0]].state_dict())
    opts = {v: adamw(students[v].parameters(), args.lr, run) for v in VARIANTS}
    emas = {v: EMA(students[v], args.ema) for v in VARIANTS}
    ckpt_path = run.path("ckpt", "students.pt")
    step, elapsed, warm_from = 0, 0.0, 0
    state = load_checkpoint(ckpt_path, dev)
    if state and "opt" not in state:
        # EMA weights alone (students_ema.pt brought back from an unfinished GPU run, copied to
        # students.pt): they go on with fresh AdamW moments, a new warm-up and a new budget
        run.log(f"students: warm start from EMA weights at step {state['step']} (no optimizer "
                "state)")
        for v in VARIANTS:
            students[v].load_state_dict(state["ema"][v])
            emas[v].load_state_dict(state["ema"][v])
        step = warm_from = state["step"]
        data.reseed(args.seed * 7919 + 2 + step)
    elif state:
        for v in VARIANTS:
            students[v].load_state_dict(state["model"][v])
            opts[v].load_state_dict(state["opt"][v])
            emas[v].load_state_dict(state["ema"][v])
        step, elapsed = state["step"], run.resumed_elapsed("students", state)
        warm_from = state.get("warm_from", 0)
        data.reseed(args.seed * 7919 + 2 + step)
    clock = Clock(run, run.budgets["students"], elapsed)
    unet = students["tas"]["unet"]
    macs = nets.unet_macs(unet, nets.latent_size(sizes), 77)
    run.log(f"students: UNet {count_parameters(unet) / 1e6:.2f}M parameters, {macs / 1e9:.2f} "
            f"GMAC/forward; variants {', '.join(VARIANTS)}; batch {sizes['batch']}; "
            f"from step {step}")
    batch = sizes["batch"]
    sums = {v: [] for v in VARIANTS}
    t0, s0 = time.time(), step

    def save(path=ckpt_path):
        save_checkpoint(path, {"model": {v: students[v].state_dict() for v in VARIANTS},
                               "opt": {v: opts[v].state_dict() for v in VARIANTS},
                               "ema": {v: emas[v].state_dict() for v in VARIANTS},
                               "step": step, "elapsed": clock.elapsed, "warm_from": warm_from})

    for v in VARIANTS:
        students[v].train()
    sample = sample_inputs(data, batch)
    with torch.no_grad(), run.autocast():
        sample_text = encoder_outputs(teacher["text_encoder"], sample[2])
    if getattr(args, "compile", False):
        forwards = {v: compiled(run, StudentForward(students[v], v != "none", run.autocast),
                                f"student {v}") for v in VARIANTS}
    else:
        forwards = {v: graphed(run, StudentForward(students[v], v != "none", run.autocast),
                               sample[:2] + tuple(x.clone() for x in sample_text),
                               f"student {v}") for v in VARIANTS}
    profiler = StepProfiler(run, "students")
    while not clock.finished():
        x0, ids = data.draw(batch)
        t = nets.logit_normal(batch, dev, data.gen, shift=args.t_shift)
        eps = data.noise_like(x0)
        xt = (1 - expand(t, x0)) * x0 + expand(t, x0) * eps
        target = eps - x0
        with torch.no_grad(), run.autocast():
            hidden, pooled = encoder_outputs(teacher["text_encoder"], ids)
            v_teacher, t_feats = teacher["unet"](xt, t * 1000.0, teacher["conditioner"](hidden),
                                                 None, pooled, return_features=True)
            f_teacher = t_feats["kd"]
        factor = lr_factor(step - warm_from, clock.fraction, args.warmup)
        for v in VARIANTS:
            student = students[v]
            out = forwards[v](xt, t * 1000.0, hidden, pooled)
            v_student, f_student = out if v != "none" else (out, None)
            with run.autocast():
                loss, task, kd = student_loss(v, student, v_student, f_student, target,
                                              v_teacher, f_teacher, t)
            set_lr(opts[v], args.lr, factor)
            opts[v].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opts[v].step()
            emas[v].update(student, step + 1)
            sums[v].append(torch.stack([loss.detach(), task.mean().detach(),
                                        kd.mean().detach() if kd is not None
                                        else torch.zeros((), device=dev)]))
        step += 1
        profiler.after_step()
        if step % 100 == 0:
            rate = (step - s0) / (time.time() - t0)
            parts = []
            for v in VARIANTS:
                loss, task, kd = torch.stack(sums[v]).mean(0).tolist()
                parts.append(f"{v} loss {loss:.4f} task {task:.4f} kd {kd:.4f}")
                sums[v] = []
            run.log(f"students: step {step} {'; '.join(parts)} {rate:.2f} steps/s "
                    f"({clock.elapsed:.0f}/{clock.budget:.0f} s{run.memory_note()})")
        if clock.checkpoint_due():
            save()
            if run.out_of_time():
                raise Interrupted()
    run.sync()
    save()
    save_checkpoint(run.path("ckpt", "students_final.pt"),
                    {"ema": {v: emas[v].state_dict() for v in VARIANTS}, "step": step})
    run.log(f"students: {step} steps of batch {batch} each in {clock.elapsed:.0f} s")
    run.mark_done("students", {"steps": step, "batch": batch, "seconds": clock.elapsed,
                               "parameters": count_parameters(unet),
                               "gmac_per_forward": macs / 1e9, "lr": args.lr,
                               "t_shift": args.t_shift, "config": sizes["student"]})


# ---------------------------------------------------------------------------------------------
# adversarial step distillation


@torch.no_grad()
def guided_segment_velocity(run, teacher, xt, t, t_next, context, pooled, context_u, pooled_u,
                            guidance, substeps):
    """The teacher's classifier-free-guided ODE from t to t_next in `substeps` Euler steps,
    as one velocity (x_t − x_{t_next}) / (t − t_next); with substeps = 1 it is the guided
    velocity at (x_t, t) (SPEC §6.4's KD target). Also returns the teacher's conditional "kd"
    feature at (x_t, t)."""
    b = xt.shape[0]
    x = xt
    feature = None
    ctx2 = torch.cat([context, context_u.expand(b, -1, -1)])
    pooled2 = torch.cat([pooled, pooled_u.expand(b, -1)])
    for j in range(substeps):
        tau = t - (t - t_next) * (j / substeps)
        tau_next = t - (t - t_next) * ((j + 1) / substeps)
        with run.autocast():
            v2, feats = teacher["unet"](torch.cat([x, x]), torch.cat([tau, tau]) * 1000.0, ctx2,
                                        None, pooled2, return_features=True)
        v_c, v_u = v2.float().chunk(2)
        if j == 0:
            feature = feats["kd"][:b]
        x = x + expand(tau_next - tau, x) * (v_u + guidance * (v_c - v_u))
    return (xt - x) / expand(t - t_next, x), feature


def hinge_d(real_logits, fake_logits):
    return sum(F.relu(1 - r.float()).mean() + F.relu(1 + f.float()).mean()
               for r, f in zip(real_logits, fake_logits))


def stage_adversarial(run):
    """Student (a) → 4 steps t ∈ {1, .75, .5, .25} shifted by --adv-shift (SPEC §6.4; α = 2 gives
    {1, .857, .667, .4}): x_t from real latents; KD target
    = the teacher's CFG-guided velocity over the step (substeps Euler; SPEC's target when 1), plus
    the feature KD, under timestep-aware scaling; adversarial term: x̂0 = x_t − t·v and the real x0
    re-noised to s ~ logit-normal with shared noise, discriminator = frozen teacher features (2
    down stages + mid) with conv heads FiLM-conditioned on s and pooled text, hinge loss, λ_adv
    ramped from 0. AdamW betas (0, 0.99), EMA on the generator."""
    sizes, dev, args = run.sizes, run.device, run.args
    tokenizer, text_cfg = text_side(run)
    teacher = load_teacher(run, text_cfg)
    data = Batches(run, tokenizer, 3)
    gen_model = load_student(run, text_cfg, "tas")
    disc = nets.gpu_layout(nets.Discriminator(sizes["teacher"], sizes["disc_channels"],
                                              sizes["teacher"]["pooled_dim"]).to(dev), dev)
    opt_g = adamw(gen_model.parameters(), args.adv_lr, run, betas=(0.0, 0.99))
    opt_d = adamw(disc.parameters(), args.adv_lr_d, run, betas=(0.0, 0.99))
    ema = EMA(gen_model, args.adv_ema)
    ckpt_path = run.path("ckpt", "adversarial.pt")
    step, elapsed = 0, 0.0
    few_times = few_step_times(args.adv_shift)
    state = load_checkpoint(ckpt_path, dev)
    if state:
        # a resumed stage keeps the times it began with (checkpoints before --adv-shift: shift 1)
        begun = [float(t) for t in state.get("times", few_step_times(1.0))]
        if begun != few_times:
            run.log(f"adversarial: resuming at the times it began with, {begun} (not those of "
                    f"--adv-shift {args.adv_shift:g})")
        few_times = begun
        gen_model.load_state_dict(state["model"])
        disc.load_state_dict(state["disc"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        ema.load_state_dict(state["ema"])
        step, elapsed = state["step"], run.resumed_elapsed("adversarial", state)
        data.reseed(args.seed * 7919 + 3 + step)
    clock = Clock(run, run.budgets["adversarial"], elapsed)
    with torch.no_grad(), run.autocast():
        hidden_u, pooled_u = encoder_outputs(teacher["text_encoder"], data.empty[None])
        context_u = teacher["conditioner"](hidden_u)
    times = torch.tensor(few_times + [0.0], device=dev)
    batch = sizes["adv_batch"]
    run.log(f"adversarial: 4 steps at t = {', '.join(f'{t:.4f}' for t in few_times)}, "
            f"batch {batch}, teacher CFG "
            f"{args.adv_guidance} over {args.adv_substeps} substeps, λ_adv {args.adv_lambda} "
            f"(ramp {args.adv_ramp:.0%} of the budget), discriminator layers {disc.names}; "
            f"from step {step}")
    sums, t0, s0 = [], time.time(), step

    def save(path=ckpt_path):
        save_checkpoint(path, {"model": gen_model.state_dict(), "disc": disc.state_dict(),
                               "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                               "ema": ema.state_dict(), "step": step, "elapsed": clock.elapsed,
                               "times": few_times})

    gen_model.train()
    disc.train()
    while not clock.finished():
        x0, ids = data.draw(batch, dropout=0.0)
        k = torch.randint(len(few_times), (batch,), device=dev, generator=data.gen)
        t, t_next = times[k], times[k + 1]
        eps = data.noise_like(x0)
        xt = (1 - expand(t, x0)) * x0 + expand(t, x0) * eps
        with torch.no_grad(), run.autocast():
            hidden, pooled = encoder_outputs(teacher["text_encoder"], ids)
            t_context = teacher["conditioner"](hidden)
        v_target, f_teacher = guided_segment_velocity(
            run, teacher, xt, t, t_next, t_context, pooled.float(), context_u, pooled_u.float(),
            args.adv_guidance, args.adv_substeps)
        s = nets.logit_normal(batch, dev, data.gen)
        eps_s = data.noise_like(x0)
        x_s = (1 - expand(s, x0)) * x0 + expand(s, x0) * eps_s

        # generator
        with run.autocast():
            v, feats = gen_model["unet"](xt, t * 1000.0, gen_model["conditioner"](hidden), None,
                                         pooled, return_features=True)
            task = nets.per_sample_mse(v, eps - x0)
            kd = nets.per_sample_mse(v, v_target) + \
                nets.feature_kd(feats["kd"], gen_model["projector"], f_teacher)
            distill = nets.timestep_aware(task, kd, t, args.adv_alpha_scale)
            x0_hat = xt - expand(t, xt) * v.float()
            fake_s = (1 - expand(s, x0)) * x0_hat + expand(s, x0) * eps_s
            adv = -sum(f.float().mean() for f in disc(teacher["unet"], fake_s, s, t_context,
                                                      pooled))
        lam = args.adv_lambda * min(1.0, clock.fraction / max(args.adv_ramp, 1e-9))
        loss_g = distill + lam * adv
        set_lr(opt_g, args.adv_lr, lr_factor(step, clock.fraction, 20, decay_from=0.8))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        torch.nn.utils.clip_grad_norm_(gen_model.parameters(), 1.0)
        opt_g.step()
        ema.update(gen_model, step + 1)

        # discriminator
        with run.autocast():
            real = disc(teacher["unet"], x_s, s, t_context, pooled)
            fake = disc(teacher["unet"], fake_s.detach(), s, t_context, pooled)
            loss_d = hinge_d(real, fake)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        step += 1
        sums.append(torch.stack([distill.detach(), task.mean().detach(), kd.mean().detach(),
                                 adv.detach(), loss_d.detach()]))
        if step % 50 == 0:
            rate = (step - s0) / (time.time() - t0)
            d, ta, kd_m, a, ld = torch.stack(sums).mean(0).tolist()
            run.log(f"adversarial: step {step} distill {d:.4f} (task {ta:.4f} kd {kd_m:.4f}) "
                    f"adv_g {a:.3f} d {ld:.3f} λ {lam:.3f} {rate:.2f} steps/s "
                    f"({clock.elapsed:.0f}/{clock.budget:.0f} s{run.memory_note()})")
            sums = []
        if clock.checkpoint_due():
            save()
            if run.out_of_time():
                raise Interrupted()
    run.sync()
    save()
    save_checkpoint(run.path("ckpt", "adversarial_final.pt"), {"ema": ema.state_dict(),
                                                               "step": step})
    run.log(f"adversarial: {step} steps of batch {batch} in {clock.elapsed:.0f} s")
    run.mark_done("adversarial", {"steps": step, "batch": batch, "seconds": clock.elapsed,
                                  "guidance": args.adv_guidance, "substeps": args.adv_substeps,
                                  "lambda_adv": args.adv_lambda, "lr_g": args.adv_lr,
                                  "lr_d": args.adv_lr_d, "alpha_scale": args.adv_alpha_scale,
                                  "times": few_times})
