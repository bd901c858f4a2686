# report.py: the export and eval stages and the model card (weights/default/MODEL_CARD.md).
import json
import os
import shutil
import sys
import time

import torch

from sgrecipe import export, sampler
from sgrecipe.safetensors_io import save_file

from . import nets
from .common import count_parameters
from .data import load_autoencoder
from .diffusion import VARIANT_NAMES, VARIANTS, adversarial_times, load_student, load_teacher, \
    make_student, text_side

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_FEW_STEPS = "teacher, 4 steps (no step distillation)"
TEMPLATE = os.path.join(HERE, "model_card_template.md")


def few_step_scheduler(run):
    """The shipped model's scheduler: the adversarial stage's 4 timesteps, no guidance."""
    return {"timesteps": adversarial_times(run), "shift": 1.0, "default_steps": 4,
            "default_guidance": 1.0}


def _evaluate_module():
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import evaluate
    return evaluate


def _write_json(path, value):
    export._write_json(path, value)


def load_distilled(run, text_cfg):
    gen_model = make_student(run, text_cfg)
    state = torch.load(run.path("ckpt", "adversarial_final.pt"), map_location=run.device,
                       weights_only=True)
    gen_model.load_state_dict(state["ema"])
    return gen_model.eval()


def model_folder(run):
    """Where the export stage keeps the model folder (in the work folder; --out gets copies)."""
    return run.path("model", "default")


EVAL_FILES = ("eval.json", "eval.md", "samples.png", "samples.txt")


def publish(run, out):
    """Copies the exported folder to --out and the evaluation files beside it (so a resumed run
    on a fresh output folder gets them again)."""
    folder = model_folder(run)
    if not os.path.exists(os.path.join(folder, "model_index.json")):
        return
    if os.path.exists(out):
        shutil.rmtree(out)
    shutil.copytree(folder, out)
    for name in EVAL_FILES:
        if os.path.exists(run.path(name)):
            shutil.copyfile(run.path(name), os.path.join(os.path.dirname(out), name))


def write_engine_folder(run, out, unet, conditioner, text_encoder, decoder, scheduler, text_cfg,
                        dtype):
    """A model folder the C engine runs: unet/, decoder/, scheduler/, text_encoder/ (HF
    CLIPTextModelWithProjection), tokenizer/ (CLIPTokenizer files), conditioner/."""
    if os.path.exists(out):
        shutil.rmtree(out)
    extra = {"text_encoder": ["transformers", "CLIPTextModelWithProjection"],
             "tokenizer": ["transformers", "CLIPTokenizer"],
             "conditioner": ["snapgen", "SnapGenConditioner"]}
    export.write_model_folder(out, unet, unet.config, decoder, decoder.config, scheduler, extra,
                              dtype)
    enc_dir = os.path.join(out, "text_encoder")
    os.makedirs(enc_dir)
    _write_json(os.path.join(enc_dir, "config.json"), text_cfg)
    save_file(os.path.join(enc_dir, "model.safetensors"),
              {k: v.float() for k, v in text_encoder.state_dict().items()
               if v.is_floating_point()}, {"format": "pt"})
    shutil.copytree(run.path("text", "tokenizer"), os.path.join(out, "tokenizer"))
    cond_dir = os.path.join(out, "conditioner")
    os.makedirs(cond_dir)
    from .text import conditioner_config
    _write_json(os.path.join(cond_dir, "config.json"),
                conditioner_config(unet.config["context_dim"], text_cfg["projection_dim"]))
    save_file(os.path.join(cond_dir, "diffusion_pytorch_model.safetensors"),
              {k: v.float() for k, v in conditioner.state_dict().items()}, {"format": "pt"})


def export_teacher(run, out):
    """--teacher-folder: the teacher (EMA weights, float32) as a model folder that samples as the
    evaluation does (28 steps, CFG 4 by default: --eval-steps, --eval-guidance), so that the C
    engine can run and score it (evaluate.py --engine) before any student exists."""
    args = run.args
    tokenizer, text_cfg = text_side(run)
    teacher = load_teacher(run, text_cfg)
    decoder = load_autoencoder(run).decoder
    scheduler = {"shift": 1.0, "default_steps": args.eval_steps,
                 "default_guidance": args.eval_guidance}
    write_engine_folder(run, out, teacher["unet"], teacher["conditioner"],
                        teacher["text_encoder"], decoder, scheduler, text_cfg, "f32")
    with open(os.path.join(out, "TEACHER.md"), "w") as f:
        f.write(f"# Teacher at step {teacher.step}\n\nThe default model recipe's flow-matching "
                f"teacher (EMA weights, float32), written by train_default.py "
                f"--teacher-folder: {args.eval_steps} steps, CFG {args.eval_guidance:g} by "
                f"default. Not the shipped model.\n")
    run.log(f"teacher folder: {out} (step {teacher.step}, {args.eval_steps} steps, CFG "
            f"{args.eval_guidance:g})")


def stage_export(run, out):
    """Writes the 4-step model folder: unet/, decoder/, scheduler/, text_encoder/ (HF
    CLIPTextModelWithProjection), tokenizer/ (CLIPTokenizer files), conditioner/, MODEL_CARD.md;
    reloads it and checks it reproduces the in-memory model; copies it to out."""
    args = run.args
    final_out, out = out, model_folder(run)
    tokenizer, text_cfg = text_side(run)
    teacher = load_teacher(run, text_cfg)
    gen_model = load_distilled(run, text_cfg)
    decoder = load_autoencoder(run).decoder
    scheduler = few_step_scheduler(run)
    write_engine_folder(run, out, gen_model["unet"], gen_model["conditioner"],
                        teacher["text_encoder"], decoder, scheduler, text_cfg, args.export_dtype)

    # reload and compare one image's latent with the in-memory model (f16 storage rounds weights)
    ev = _evaluate_module()
    reloaded = ev.load_generator(out, run.device, "reloaded")
    reloaded.image_size = run.sizes["image_size"]
    memory = ev.Generator("memory", tokenizer, teacher["text_encoder"], gen_model["conditioner"],
                          gen_model["unet"], decoder,
                          sampler.timesteps(scheduler), 1.0,
                          run.device, False)
    memory.image_size = run.sizes["image_size"]
    prompt = "a photo of a red circle to the left of a blue square"
    cond_rel = check_reference_conditioner(out, prompt, reloaded)
    a = reloaded.latents([prompt], [42]).float()
    b = memory.latents([prompt], [42]).float()
    rel = float((a - b).norm() / b.norm().clamp_min(1e-12))
    sizes = {}
    for root, _, files in os.walk(out):
        for f in files:
            sizes[os.path.relpath(os.path.join(root, f), out)] = os.path.getsize(
                os.path.join(root, f))
    total = sum(sizes.values())
    run.log(f"export: {out}: {total / 1e6:.1f} MB ({args.export_dtype} UNet/decoder); reloaded "
            f"model's latent vs in-memory: relative L2 {rel:.2e}; batched conditioning vs "
            f"sgrecipe.conditioner: {cond_rel:.2e}")
    if rel > 2e-2 or cond_rel > (1e-2 if run.cuda else 1e-4):  # TF32 matmuls on the GPU
        run.log("export: WARNING: the exported folder does not reproduce the trained model "
                "closely; check the export before using it")
    run.mark_done("export", {"out": out, "bytes": total, "files": sizes, "reload_rel_l2": rel,
                             "unet_parameters": count_parameters(gen_model["unet"]),
                             "unet_gmac": nets.unet_macs(gen_model["unet"],
                                                         nets.latent_size(run.sizes), 77) / 1e9,
                             "text_encoder_parameters":
                                 count_parameters(teacher["text_encoder"]),
                             "decoder_parameters": count_parameters(decoder)})
    write_card(run, out, None)
    publish(run, final_out)


@torch.no_grad()
def check_reference_conditioner(folder, prompt, generator):
    """Relative L2 between the batched conditioning used in training/evaluation and the
    engine's reference path (sgrecipe.conditioner, one prompt, float32 on the CPU)."""
    from sgrecipe import conditioner as reference
    ev = _evaluate_module()
    cfg = export.read_json(os.path.join(folder, "conditioner", "config.json"))
    tokenizer, encoder, _ = ev.load_text_parts(folder, torch.device("cpu"))
    module = reference.SnapGenConditioner(cfg, [encoder.config["hidden_size"]])
    module.load_state_dict(ev._load_folder_tensors(os.path.join(folder, "conditioner")))
    out = reference.encoder_output("clip", encoder, tokenizer(prompt), cfg["encoders"][0])
    context, mask, pooled = module([out])
    mine_context, mine_pooled = generator.condition([prompt])
    want = torch.cat([context.flatten(), pooled])
    got = torch.cat([mine_context[0].cpu().flatten(), mine_pooled[0].cpu()])
    if float(mask.min()) != 1.0:
        raise RuntimeError("conditioner: CLIP tokens should all be visible (mask_padding false)")
    return float((got - want).norm() / want.norm())


def stage_eval(run, out, pool):
    """ShapeEval of the teacher (28 steps, CFG; and at the distilled model's 4 steps with the
    adversarial stage's CFG, the baseline without step distillation), the three students (28
    steps) and the exported 4-step model (float32, its own scheduler) on the held-out prompts.
    Models not
    trained yet are left out (e.g. `--stages teacher,eval` rates the teacher alone)."""
    final_out, out = out, model_folder(run)
    ev = _evaluate_module()
    args, sizes, dev = run.args, run.sizes, run.device
    tokenizer, text_cfg = text_side(run)
    teacher = load_teacher(run, text_cfg)
    decoder = load_autoencoder(run).decoder
    base_steps = sampler.timesteps({"shift": 1.0}, args.eval_steps)
    few_steps = sampler.timesteps(few_step_scheduler(run))
    gens = [ev.Generator("teacher", tokenizer, teacher["text_encoder"], teacher["conditioner"],
                         teacher["unet"], decoder, base_steps, args.eval_guidance, dev, True),
            ev.Generator(TEACHER_FEW_STEPS, tokenizer, teacher["text_encoder"],
                         teacher["conditioner"], teacher["unet"], decoder, few_steps,
                         args.adv_guidance, dev, True)]
    if run.stage_done("students"):
        for v in VARIANTS:
            student = load_student(run, text_cfg, v)
            gens.append(ev.Generator(VARIANT_NAMES[v], tokenizer, teacher["text_encoder"],
                                     student["conditioner"], student["unet"], decoder, base_steps,
                                     args.eval_guidance, dev, True))
        tas = load_student(run, text_cfg, "tas")  # the starting point of step distillation
        gens.append(ev.Generator("student (a) before step distillation", tokenizer,
                                 teacher["text_encoder"], tas["conditioner"], tas["unet"],
                                 decoder, few_steps, 1.0, dev, True))
    distilled = None
    if run.stage_done("export"):
        distilled = ev.load_generator(out, dev, "4-step distilled (shipped, float32)")
        gens.append(distilled)
    for g in gens:
        g.image_size = sizes["image_size"]
    jobs = ev.prompt_jobs(sizes["eval_prompts"], sizes["eval_seeds"])
    run.log(f"eval: {len(jobs)} images per model ({sizes['eval_prompts']} held-out prompts × "
            f"{sizes['eval_seeds']} seeds) at {sizes['image_size']}²")
    started = time.time()
    pending, entries = [], []
    for g in gens:
        if g is distilled and run.cuda:
            torch.set_float32_matmul_precision("highest")
        images, seconds = ev.sample_all(g, jobs, sizes["eval_batch"])
        pending.append((g, ev.score_async(pool, jobs, images), seconds, time.time()))
    for g, result, seconds, t0 in pending:
        entries.append(ev.make_entry(g, jobs, result.get(), seconds, time.time() - t0, run.log))

    # one sample sheet: a row per model, one prompt per category (first seed)
    picks = []
    for category in sorted(set(j[1] for j in jobs), key=[j[1] for j in jobs].index):
        picks.append(next(j for j in jobs if j[1] == category))
    rows = [g.full_images([j[2] for j in picks], [j[3] for j in picks]) for g in gens]
    labels = ["rows: " + "; ".join(g.name for g in gens),
              "columns: " + "; ".join(f"{j[2]} (seed {j[3]})" for j in picks)]
    info = (f"{len(jobs)} images per model ({sizes['eval_prompts']} held-out prompts × "
            f"{sizes['eval_seeds']} seeds) at {sizes['image_size']}², PyTorch "
            f"({run.device.type})")
    table = ev.markdown_table(entries, info)
    result = {"jobs": info, "models": entries, "seconds": time.time() - started}
    with open(run.path("eval.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(run.path("eval.md"), "w") as f:
        f.write(table)
    ev.write_sheet(run.path("samples.png"), rows, labels)
    run.log("eval: table\n" + table)
    if distilled is None:  # a partial evaluation: no model card, and eval stays to be done
        run.log(f"eval: {len(gens)} of 7 models rated (the others are not trained yet)")
        os.makedirs(os.path.dirname(final_out), exist_ok=True)
        for name in EVAL_FILES:
            if os.path.exists(run.path(name)):
                shutil.copyfile(run.path(name), os.path.join(os.path.dirname(final_out), name))
        return
    run.mark_done("eval", {"seconds": time.time() - started, "images_per_model": len(jobs)})
    write_card(run, out, result)
    publish(run, final_out)


# ---------------------------------------------------------------------------------------------
# model card


def _fmt_seconds(s):
    return f"{s:.0f} s" if s < 600 else f"{s / 60:.1f} min"


def ablation_text(result):
    """Plain statements of what the table shows (intervals overlapping or not)."""
    by_name = {e["name"]: e["table"]["overall"] for e in result["models"]}

    def compare(a, b, label):
        if a not in by_name or b not in by_name:
            return ""
        x, y = by_name[a], by_name[b]
        overlap = x["ci95"][0] <= y["ci95"][1] and y["ci95"][0] <= x["ci95"][1]
        verdict = "the 95% intervals overlap, so this run cannot tell them apart" if overlap \
            else ("higher" if x["rate"] > y["rate"] else "lower") + \
            ", and the 95% intervals do not overlap"
        return f"- {label}: {x['rate']:.3f} vs {y['rate']:.3f}; {verdict}.\n"

    names = [e["name"] for e in result["models"]]
    distilled = [n for n in names if n.startswith("4-step")]
    text = compare(VARIANT_NAMES["tas"], VARIANT_NAMES["plain"],
                   "Timestep-aware KD vs plain KD (overall)")
    text += compare(VARIANT_NAMES["tas"], VARIANT_NAMES["none"],
                    "Timestep-aware KD vs no KD (overall)")
    if distilled:
        text += compare(distilled[0], "teacher", "4-step distilled model vs the 28-step teacher")
        text += compare(distilled[0], TEACHER_FEW_STEPS,
                        "4-step distilled model vs the teacher at the same 4 steps with CFG")
        text += compare(distilled[0], VARIANT_NAMES["tas"],
                        "4-step distilled model vs its starting point at 28 steps with CFG")
        text += compare(distilled[0], "student (a) before step distillation",
                        "4-step distilled model vs its starting point at the same 4 steps")
    return text


def write_card(run, out, result):
    stats = {name: run.stage_stats(name) or {} for name in
             ("data", "ae", "latents", "teacher", "students", "adversarial", "export", "eval")}
    sizes, args = run.sizes, run.args
    exp = stats["export"]
    few_times = [round(t, 4) for t in adversarial_times(run)]
    device = next((s["device"] for s in stats.values() if s.get("device")), "unknown")
    summary = (f"A 4-step text-to-image model of SnapGen's architecture trained from scratch on "
               f"ShapeWorld, {sizes['image_size']}×{sizes['image_size']} output: UNet "
               f"{exp.get('unet_parameters', 0) / 1e6:.1f}M parameters, tiny decoder "
               f"{exp.get('decoder_parameters', 0) / 1e6:.2f}M, CLIP-form text encoder "
               f"{exp.get('text_encoder_parameters', 0) / 1e6:.2f}M; "
               f"{exp.get('bytes', 0) / 1e6:.1f} MB on disk. "
               f"Trained on {device}.")
    student, teacher = sizes["student"], sizes["teacher"]
    architecture = (
        f"- **UNet** (`unet/`, {args.export_dtype}): SnapGen's efficient UNet "
        f"(SPEC §2.3 reading): channels {student['block_channels']}, transformer depth "
        f"{student['transformer_depth']} (mid {student['mid_transformer_depth']}), self-attention "
        f"only at the lowest resolution, multi-query attention (head dim {student['head_dim']}), "
        f"GEGLU FFN ×{student['ffn_mult']}, expanded separable residual blocks (×"
        f"{student['expansion']}), QK RMS norm, context {student['context_dim']}, pooled "
        f"{student['pooled_dim']}; {exp.get('unet_gmac', 0):.2f} GMAC per step at "
        f"{nets.latent_size(sizes)}×{nets.latent_size(sizes)}×16 latents.\n"
        f"- **Decoder** (`decoder/`): TinyDecoder, no attention, separable convolutions, "
        f"channels {sizes['decoder']['channels']}, blocks {sizes['decoder']['blocks']}, ×"
        f"{nets.decoder_scale(sizes['decoder'])} upsampling, "
        f"{nets.decoder_macs(sizes['decoder'], sizes['image_size']) / 1e9:.1f} GMAC at "
        f"{sizes['image_size']}².\n"
        f"- **Text** (`text_encoder/`, `tokenizer/`, `conditioner/`): a tiny "
        f"CLIPTextModelWithProjection ({sizes['text']['layers']} layers, width "
        f"{sizes['text']['hidden']}, {sizes['text']['heads']} heads, quick-GELU, projection "
        f"{sizes['text']['projection']}, 77 tokens) with a CLIP BPE vocabulary learned on "
        f"ShapeWorld's words; context = Linear(last_hidden_state), pooled = text_embeds.\n"
        f"- **Sampler**: flow-matching Euler at t = {few_times} → 0, no guidance.")
    d, ae, lat = stats["data"], stats["ae"], stats["latents"]
    d = dict(d, images=d.get("images_after_ae", d.get("images", "?")))
    data = (
        f"{d.get('images', '?')} ShapeWorld renders (seed {args.seed}, training split: held-out "
        f"compositions never drawn) at {d.get('encoder_size', '?')}² for the encoder, the first "
        f"{d.get('hires_images', '?')} also at {d.get('image_size', '?')}² for the decoder; each "
        f"image also mirrored left-right with left/right swapped in its caption "
        f"({lat.get('latents', '?')} latents). Captions in GenEval's six categories; 10% "
        f"dropped to \"\" for classifier-free guidance.")
    t, s, a = stats["teacher"], stats["students"], stats["adversarial"]
    recipe = (
        f"1. **Autoencoder** (SPEC §4.4): TinyEncoder ({sizes['encoder_size']}² renders in, "
        f"training only) + TinyDecoder ({sizes['image_size']}² out, trained against "
        f"{sizes['image_size']}² renders of the same scenes), L1 (object pixels ×9) + "
        f"0.25·gradient L1 + L1 at 1/4 and 1/16 resolution on {ae.get('crop', '?')}² crops, "
        f"variance-preserving init, latent noise σ∈[0, 0.2], per-channel latent normalisation "
        f"folded into the encoder. Held-out "
        f"reconstruction PSNR {ae.get('psnr_db', 0):.2f} dB; ShapeEval passes "
        f"{ae.get('shapeeval_recon', 0):.3f} of reconstructions (renders: "
        f"{ae.get('shapeeval_renders', 0):.3f}) on {ae.get('holdout', '?')} held-out images.\n"
        f"2. **Teacher** (SPEC §5.1, §6.1): UNet {teacher['block_channels']}, depth "
        f"{teacher['transformer_depth']}, {t.get('parameters', 0) / 1e6:.1f}M parameters, "
        f"flow matching (v = ε − x0), logit-normal(0, 1) t, time shift {t.get('t_shift', 1)} "
        f"(in the run that finished the stage), AdamW lr {args.lr}, "
        f"{'bf16 autocast' if 'cuda' in str(run.device) else 'float32'}, EMA "
        f"{args.ema}; 10% caption dropout; text encoder trained "
        f"jointly. {t.get('steps', '?')} steps × batch {t.get('batch', '?')}.\n"
        f"3. **Students** (SPEC §6.2–6.3), three from the same initial weights on identical "
        f"batches: (a) timestep-aware multi-level KD: S = α_t·L_task + (1−α_t)·sg(L_task/L_kd)"
        f"·L_kd per sample, ratio clipped to [0.01, 100], α_t = logit-normal pdf(t)/pdf(0.5), "
        f"L_kd = output KD (teacher velocity) + feature KD (student up.1 last transformer → 1×1 "
        f"conv → teacher's, relative MSE); (b) plain KD 0.5·L_task + 0.5·L_kd; (c) no KD. "
        f"Text encoder frozen. {s.get('steps', '?')} steps × batch {s.get('batch', '?')} each.\n"
        f"4. **Adversarial step distillation** (SPEC §6.4) of (a) to t ∈ {few_times}: "
        f"x_t from real latents; KD target = the teacher's CFG-{a.get('guidance', '?')} velocity "
        f"over each step ({a.get('substeps', '?')} Euler substeps; 1 substep is SPEC's "
        f"velocity at (x_t, t)) + feature KD, under timestep-aware scaling with α_t × "
        f"{a.get('alpha_scale', '?')}; discriminator = frozen teacher (down stages 2–3 + mid) "
        f"with conv heads FiLM-conditioned on s and pooled text, hinge loss, real and generated "
        f"x0 re-noised to s ~ logit-normal with shared noise; λ_adv ramped to "
        f"{a.get('lambda_adv', '?')}; AdamW betas (0, 0.99), lr {a.get('lr_g', '?')} (G) / "
        f"{a.get('lr_d', '?')} (heads), EMA. {a.get('steps', '?')} steps × batch "
        f"{a.get('batch', '?')}.")
    rows = ["| stage | wall time | work |", "|---|---|---|"]
    work = {"data": f"{d.get('images', '?')} renders ({d.get('images_per_second', 0):.0f}/s; "
                    "rendering goes on in the background during ae)",
            "ae": f"{ae.get('steps', '?')} steps × {ae.get('batch', '?')} crops",
            "latents": f"{lat.get('latents', '?')} latents",
            "teacher": f"{t.get('steps', '?')} steps × {t.get('batch', '?')}",
            "students": f"3 × {s.get('steps', '?')} steps × {s.get('batch', '?')}",
            "adversarial": f"{a.get('steps', '?')} steps × {a.get('batch', '?')}",
            "eval": f"{stats['eval'].get('images_per_model', '?')} images × 6 model settings"}
    total = 0.0
    for name, text in work.items():
        seconds = stats[name].get("seconds")
        if seconds is not None:
            total += seconds
        rows.append(f"| {name} | {_fmt_seconds(seconds) if seconds is not None else '–'} | "
                    f"{text} |")
    compute = f"Device: {device}.\n\n" + "\n".join(rows) + \
        f"\n\nTotal of the stages: {_fmt_seconds(total)}."
    if result is None:
        evaluation = "Pending: run the `eval` stage."
    else:
        evaluation = ("ShapeEval (weights/recipe/shapeworld) on prompts whose compositions were "
                      "never in training. Teacher and students: "
                      f"{args.eval_steps} Euler steps with classifier-free guidance "
                      f"{args.eval_guidance:g} (uncond = the empty prompt), "
                      f"{'bf16' if run.cuda else 'float32'}; \"student (a) before step "
                      "distillation\": the shipped model's sampler (4 steps, no guidance) on "
                      "the timestep-aware student; the shipped model: its own 4 steps, no "
                      "guidance, float32, from the exported folder.\n\n"
                      + _evaluate_module().markdown_table(result["models"], result["jobs"])
                      + "\n" + ablation_text(result))
    reproduce = (
        "```\n"
        "bash weights/recipe/train_default.sh            # GPU: whole recipe, ~9 min\n"
        "python3 weights/recipe/train_default.py --device cpu --workdir /tmp/sgtrain \\\n"
        "    --out weights/default --threads 2 --budget-scale 40 --max-seconds 7000  "
        "# CPU, repeat until done\n"
        "python3 weights/recipe/evaluate.py --model weights/default --device cpu\n"
        "```\n"
        f"This run: `{' '.join(sys.argv)}`")
    with open(TEMPLATE) as f:
        card = f.read()
    card = card.split("\n", 1)[1] if card.startswith("<!--") else card
    for key, value in (("SUMMARY", summary), ("ARCHITECTURE", architecture), ("DATA", data),
                       ("RECIPE", recipe), ("COMPUTE", compute), ("EVAL", evaluation),
                       ("REPRODUCE", reproduce)):
        card = card.replace("{{" + key + "}}", value)
    first_line = "<!-- MODEL_CARD.md: what the default model is, how it was trained and how it " \
                 "scores (written by weights/recipe/train_default.py). -->\n"
    with open(os.path.join(out, "MODEL_CARD.md"), "w") as f:
        f.write(first_line + card)
