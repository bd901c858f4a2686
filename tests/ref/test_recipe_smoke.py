# test_recipe_smoke.py: the whole training recipe end to end at smoke size, stopped and resumed.
"""train_default.py --smoke on the CPU: a first run stopped by --max-seconds must checkpoint and
exit 75 (in bounded time: the worker pool once kept such an exit waiting for ever); the same
command must then finish every stage (exit 0) with a model folder, an evaluation table and a
model card; and the C engine must make the same images as the recipe from that folder
(test_default_model.py --no-shapeeval: PSNR >= 40 dB at 256²). Also the --compile wrapper's
decisions, with torch.compile replaced by stand-ins (a real compile takes minutes here): it keeps
a compiled module that matches eager, and stays eager when compiling fails or the output differs."""
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TRAIN = os.path.join(ROOT, "weights", "recipe", "train_default.py")
failures = []


def check(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}".rstrip(), flush=True)
    if not ok:
        failures.append(name)


def train(work, extra, timeout):
    cmd = [sys.executable, TRAIN, "--smoke", "--device", "cpu", "--workdir", work, "--out",
           os.path.join(work, "out", "default"), "--threads", "2", "--budget-scale", "0.05",
           "--eval-prompts", "6"] + extra
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, ""
    return proc.returncode, proc.stdout + proc.stderr


def check_compile_wrapper():
    sys.path.insert(0, os.path.join(ROOT, "weights", "recipe"))
    import torch
    from sgtrain import common

    class FakeRun:
        def __init__(self):
            self.lines = []

        def log(self, line):
            self.lines.append(line)

    def stand_in(kind):
        def compile_(module):
            def call(*args):
                if kind == "fails":
                    raise RuntimeError("backend failed")
                out = module(*args)
                return out * 1.5 if kind == "differs" else out
            return call
        return compile_

    torch.manual_seed(0)
    module = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    real_compile = torch.compile
    try:
        for kind, kept, words in (("works", True, "torch.compile took"),
                                  ("fails", False, "backend failed"),
                                  ("differs", False, "differs from eager")):
            torch.compile = stand_in(kind)
            run = FakeRun()
            wrapper = common.Compiled(run, module, "test")
            first, second = wrapper(x), wrapper(x)
            want = module(x)
            check(f"compile wrapper ({kind}): {'compiled' if kept else 'eager'}",
                  (wrapper.compiled is not None) == kept and torch.equal(first, want)
                  and torch.equal(second, want) and module.weight.grad is None
                  and any(words in line for line in run.lines), "; ".join(run.lines))
    finally:
        torch.compile = real_compile


def main():
    check_compile_wrapper()
    with tempfile.TemporaryDirectory() as work:
        rc, log = train(work, ["--max-seconds", "8"], 180)
        check("stopped run checkpoints and exits 75", rc == 75,
              "timed out (180 s)" if rc is None else f"exit {rc}")
        if rc != 75:
            print(log[-3000:])
        rc, log = train(work, [], 600)
        check("resumed run finishes every stage", rc == 0,
              "timed out (600 s)" if rc is None else f"exit {rc}")
        if rc != 0:
            print(log[-3000:])
            print(f"{len(failures)} failed")
            return 1
        check("resumed, not restarted", "already done, skipped" in log)
        model = os.path.join(work, "out", "default")
        for name in ("model_index.json", "MODEL_CARD.md", "unet", "decoder", "text_encoder",
                     "tokenizer", "scheduler", "conditioner"):
            check(f"model folder has {name}", os.path.exists(os.path.join(model, name)))
        # --adv-shift 2 (the default): trained and shipped at t = 1, 6/7, 2/3, 0.4
        with open(os.path.join(model, "scheduler", "scheduler_config.json")) as f:
            times = json.load(f).get("timesteps")
        want = [1.0, 6 / 7, 2 / 3, 0.4]
        check("shipped scheduler has the adversarial stage's shifted timesteps",
              times is not None and len(times) == 4
              and all(abs(a - b) < 1e-9 for a, b in zip(times, want)), str(times))
        with open(os.path.join(work, "out", "eval.json")) as f:
            rows = [m["name"] for m in json.load(f)["models"]]
        check("evaluation rates teacher (28 and 4 steps), three students, student (a) at 4 "
              "steps and the 4-step model", len(rows) == 7,
              "; ".join(rows))
        # the fit check on the trained teacher: its own renders against themselves differ by 0
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "weights", "recipe",
                                                            "check_teacher_fit.py"),
                               "--train", work, "--fresh", work, "--preset", "smoke",
                               "--count", "16", "--draws", "1"], capture_output=True, text=True)
        check("check_teacher_fit runs (same renders: gap 0)",
              proc.returncode == 0 and "fresh / train − 1 = +0.00%" in proc.stdout,
              (proc.stdout + proc.stderr).strip()[-1500:])
        # the C engine on the trained folder through evaluate.py, then inspect_failures on it
        snapgen = os.environ.get("SNAPGEN", os.path.join(ROOT, "build", "engine", "snapgen"))
        recipe = os.path.join(ROOT, "weights", "recipe")
        images = os.path.join(work, "engine-images")
        proc = subprocess.run([sys.executable, os.path.join(recipe, "evaluate.py"), "--engine",
                               snapgen, "--model", model, "--images", images, "--prompts", "6",
                               "--seeds", "1", "--out", os.path.join(work, "engine.json")],
                              capture_output=True, text=True)
        check("evaluate.py --engine scores the trained folder", proc.returncode == 0
              and os.path.exists(os.path.join(images, "manifest.jsonl")),
              (proc.stdout + proc.stderr).strip()[-1500:])
        proc = subprocess.run([sys.executable, os.path.join(recipe, "inspect_failures.py"),
                               "reasons", images], capture_output=True, text=True)
        counted = re.findall(r"^(\w+): (\d+) of (\d+) failed$", proc.stdout, re.M)
        check("inspect_failures reasons counts all 6 images",
              proc.returncode == 0 and sum(int(n) for _, _, n in counted) == 6,
              (proc.stdout + proc.stderr).strip()[-1500:])
        # renders of another --data-seed never go into a folder of seed 0's
        rc, log = train(work, ["--data-seed", "5", "--redo", "data", "--stages", "data"], 120)
        check("--data-seed refuses a folder rendered with another seed",
              rc not in (0, None) and "holds renders of seed 0, not 5" in log, f"exit {rc}")
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "ref",
                                                            "test_default_model.py"), model,
                               "--size", "256", "--no-shapeeval"], capture_output=True, text=True)
        print(proc.stdout.strip())
        check("C engine vs recipe on the trained folder", proc.returncode == 0,
              proc.stderr.strip()[-2000:])
    print(f"{len(failures)} failed" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
