#!/usr/bin/env python3
# train_default.py: trains, exports and evaluates the default model (SnapGen recipe, ShapeWorld).
"""One driver for the whole recipe. Stages, in order (each resumable from --workdir):

  data         ShapeWorld renders with a process pool (256² for the encoder, some also at 1024²)
  ae           TinyEncoder + TinyDecoder (1024² out) on random crops; latent normalisation
  latents      every render and its mirror image -> 32×32×16 latents (cached .npy)
  teacher      flow-matching teacher UNet + tiny CLIP text encoder + conditioner
  students     three students at the same budget: timestep-aware KD, plain KD, no KD
  adversarial  adversarial step distillation of the timestep-aware student to 4 steps
  export       the 4-step model as a model folder (--out) with MODEL_CARD.md
  eval         ShapeEval of teacher, students and the exported model; eval.json/.md, samples.png

Stages with a budget stop when their wall-clock budget (seconds × --budget-scale, summed over
resumed runs) is spent, checkpointing every --ckpt-seconds. --max-seconds (or Ctrl+C / SIGTERM)
ends this invocation early after a checkpoint (exit status 75); run the same command again to
continue. Finished stages are skipped
(--redo STAGE,... runs them again).

  GPU:   python3 weights/recipe/train_default.py --device cuda --workdir /tmp/sgtrain \
             --out OUT/default --threads 14
  CPU:   python3 weights/recipe/train_default.py --device cpu --workdir ~/sgtrain \
             --out weights/default --threads 2 --budget-scale 40 --max-seconds 7000
  smoke: python3 weights/recipe/train_default.py --smoke --device cpu --workdir /tmp/sgsmoke \
             --out /tmp/sgsmoke/out/default --threads 2 --budget-scale 0.02
"""
import argparse
import json
import multiprocessing
import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

STAGES = ["data", "ae", "latents", "teacher", "students", "adversarial", "export", "eval"]
BUDGETS = {"data": 40, "ae": 70, "teacher": 125, "students": 95, "adversarial": 35}
EXIT_RESUME = 75


def positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0 (got {text})")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--workdir", required=True, help="checkpoints, data, logs (outside the repo)")
    p.add_argument("--out", required=True, help="model folder to write (e.g. weights/default)")
    p.add_argument("--threads", type=int, default=2, help="worker processes and torch threads")
    p.add_argument("--stages", default="all",
                   help="comma list of stages to run (default all; none: only --teacher-folder)")
    p.add_argument("--redo", default="", help="comma list of finished stages to run again")
    p.add_argument("--restart-schedule", default="", metavar="STAGE,...",
                   help="resume these stages' weights and optimizer but restart their "
                        "time-based learning-rate schedule (a stage moved from CPU to GPU)")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiplies every budget")
    p.add_argument("--budget", action="append", default=[], metavar="STAGE=SECONDS",
                   help="override one stage's budget (before --budget-scale)")
    p.add_argument("--max-seconds", type=float, help="stop this invocation after this long")
    p.add_argument("--ckpt-seconds", type=float, help="checkpoint interval (default 300 on "
                   "cuda, 600 on cpu)")
    p.add_argument("--probe-seconds", type=float,
                   help="score the teacher's EMA weights on 48 held-out prompts with ShapeEval "
                        "every this many seconds of training (default 1800 on cpu, 120 on cuda; "
                        "0: never); logged to log.txt and probes.jsonl")
    p.add_argument("--smoke", action="store_true", help="tiny models, 256² images (tests)")
    p.add_argument("--preset", choices=["full", "cpu", "smoke"], default="full",
                   help="size table: full (GPU), cpu (the 2-core machine), smoke (tests)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="override one entry of the size table (sgtrain/nets.py FULL/SMOKE), "
                        "e.g. --set hires_images=512 --set batch=128")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int,
                   help="render training image i as sample((DATA_SEED, i)) (default --seed): "
                        "another image set of the same world, e.g. for check_teacher_fit.py "
                        "(the work folder's data/ must be new)")
    p.add_argument("--batch", type=int, help="teacher/student batch (default by size)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--t-shift", type=positive_float, default=1.0,
                   help="time shift α of the teacher's and students' training t (logit-normal, "
                        "then α t / (1 + (α − 1) t)); above 1 trains more at high noise, where "
                        "the samples' colours and layout are decided")
    p.add_argument("--adv-lr", type=float, default=1e-4)
    p.add_argument("--adv-lr-d", type=float, default=2e-4)
    p.add_argument("--adv-ema", type=float, default=0.99)
    p.add_argument("--adv-guidance", type=float, default=3.0,
                   help="teacher CFG scale inside the KD target")
    p.add_argument("--adv-substeps", type=int, default=3,
                   help="teacher Euler substeps per student step in the KD target (1 = SPEC's "
                        "velocity at (x_t, t))")
    p.add_argument("--adv-lambda", type=float, default=0.1, help="final adversarial weight")
    p.add_argument("--adv-ramp", type=float, default=0.3,
                   help="fraction of the stage budget over which λ_adv ramps up from 0")
    p.add_argument("--adv-shift", type=positive_float, default=2.0,
                   help="time shift α of the distilled model's 4 timesteps (1: 1, .75, .5, .25; "
                        "2: 1, .857, .667, .4), chosen on validation prompts (weights/recipe/"
                        "runs/2026-11-28-s10-sampler-sweep.md)")
    p.add_argument("--adv-alpha-scale", type=float, default=0.5,
                   help="α_t multiplier in the adversarial stage's timestep-aware scaling")
    p.add_argument("--autocast-cpu", action="store_true",
                   help="bf16 autocast on the CPU too (tests the GPU's mixed-precision paths)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="replay teacher and student forward+backward as CUDA graphs (measured "
                        "no faster on an H200, and each capture costs 30-47 s)")
    p.add_argument("--compile", action="store_true",
                   help="run teacher and student forward+backward through torch.compile "
                        "(checked against eager at the first step, which compiles; eager on "
                        "any failure). Replaces --cuda-graphs")
    p.add_argument("--profile-steps", type=int, default=0, metavar="N",
                   help="log a torch.profiler table of N teacher/student steps (after 20)")
    p.add_argument("--export-dtype", choices=["f32", "f16", "bf16"], default="f16")
    p.add_argument("--teacher-folder", metavar="DIR",
                   help="after the stages, write the trained teacher as a model folder the C "
                        "engine runs (--eval-steps steps, CFG --eval-guidance)")
    p.add_argument("--eval-prompts", type=int, help="held-out prompts (default 504; smoke 12)")
    p.add_argument("--eval-seeds", type=int, help="seeds per prompt (default 2)")
    p.add_argument("--eval-steps", type=int, default=28, help="steps of teacher and students")
    p.add_argument("--eval-guidance", type=float, default=4.0,
                   help="CFG of teacher and students in the evaluation")
    return p.parse_args(argv)


def _ignore_ctrl_c():
    # Ctrl+C reaches the whole process group; the driver handles it (below) and ends the pool.
    # SIGTERM stays deadly to the workers: Pool.terminate() ends them with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def main(argv=None):
    args = parse_args(argv)
    # The pool is forked before torch starts threads or CUDA, so its workers stay clean.
    # Workers ignore Ctrl+C (SIGINT): the driver handles it and ends the pool itself.
    pool = multiprocessing.get_context("fork").Pool(max(1, args.threads),
                                                    initializer=_ignore_ctrl_c)
    import torch
    from sgtrain import nets
    from sgtrain.common import Interrupted, Run
    from sgtrain.data import stage_ae, stage_data, stage_latents
    from sgtrain.diffusion import stage_adversarial, stage_students, stage_teacher
    from sgtrain.report import export_teacher, publish, stage_eval, stage_export

    torch.set_num_threads(max(1, args.threads))
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.benchmark = True
    preset = "smoke" if args.smoke else args.preset
    sizes = dict({"full": nets.FULL, "cpu": nets.CPU, "smoke": nets.SMOKE}[preset])
    for item in args.set:
        key, value = item.split("=", 1)
        if key not in sizes:
            raise SystemExit(f"--set: unknown key {key!r} (one of {', '.join(sizes)})")
        sizes[key] = json.loads(value)
    if args.batch:
        sizes["batch"] = args.batch
    if args.eval_prompts:
        sizes["eval_prompts"] = args.eval_prompts
    if args.eval_seeds:
        sizes["eval_seeds"] = args.eval_seeds
    budgets = dict(BUDGETS)
    for item in args.budget:
        name, value = item.split("=")
        if name not in budgets:
            raise SystemExit(f"--budget: unknown stage {name!r} (one of {', '.join(budgets)})")
        budgets[name] = float(value)
    budgets = {k: v * args.budget_scale for k, v in budgets.items()}
    deadline = time.time() + args.max_seconds if args.max_seconds else None
    ckpt_seconds = args.ckpt_seconds or (300 if device.type == "cuda" else 600)
    run = Run(os.path.abspath(args.workdir), device, budgets, deadline, ckpt_seconds, sizes,
              args)
    run.probe_seconds = (args.probe_seconds if args.probe_seconds is not None
                         else 120.0 if device.type == "cuda" else 1800.0)
    out = os.path.abspath(args.out)
    wanted = (STAGES if args.stages == "all" else
              [] if args.stages == "none" else args.stages.split(","))
    redo = set(filter(None, args.redo.split(",")))
    for name in list(wanted) + list(redo):
        if name not in STAGES:
            raise SystemExit(f"unknown stage {name!r} (stages: {', '.join(STAGES)})")
    def stop_soon(signum, frame):
        # Ctrl+C or SIGTERM: the running stage checkpoints at its next step and the driver
        # exits as at --max-seconds (status 75); the same command continues.
        run.log(f"signal {signal.Signals(signum).name}: checkpointing and stopping")
        run.deadline = time.time()

    signal.signal(signal.SIGINT, stop_soon)
    signal.signal(signal.SIGTERM, stop_soon)
    run.log(f"start: {' '.join(sys.argv)}")
    run.log(f"torch {torch.__version__} on {device}"
            + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
            + f"; budgets {', '.join(f'{k} {v:.0f} s' for k, v in budgets.items())}")
    started = time.time()
    actions = {"data": lambda: stage_data(run, pool), "ae": lambda: stage_ae(run, pool),
               "latents": lambda: stage_latents(run), "teacher": lambda: stage_teacher(run),
               "students": lambda: stage_students(run),
               "adversarial": lambda: stage_adversarial(run),
               "export": lambda: stage_export(run, out),
               "eval": lambda: stage_eval(run, out, pool)}
    try:
        for name in STAGES:
            if name not in wanted:
                continue
            if run.stage_done(name) and name not in redo:
                run.log(f"{name}: already done, skipped")
                continue
            if run.out_of_time():
                raise Interrupted()
            stage_start = time.time()
            actions[name]()
            run.log(f"{name}: finished in {time.time() - stage_start:.0f} s "
                    f"(total {time.time() - started:.0f} s)")
    except Interrupted:
        run.log(f"stopped (--max-seconds or a signal) after {time.time() - started:.0f} s; "
                "run the same command again to continue")
        pool.terminate()
        publish(run, out)
        return EXIT_RESUME
    pool.close()
    pool.join()
    publish(run, out)
    if args.teacher_folder:
        export_teacher(run, os.path.abspath(args.teacher_folder))
    run.log(f"all requested stages done in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
