# common.py: logging, time budgets, checkpoints, EMA and mixed precision for the training stages.
import contextlib
import json
import os
import time

import torch


class Run:
    """What every stage needs: the work folder, device, log, budgets and the invocation's deadline.

    A stage's budget is wall-clock seconds of its own work, summed over resumed invocations (the
    elapsed time is kept in its checkpoints). `deadline` (time.time() value or None) ends this
    invocation early: the stage checkpoints and the driver exits asking to be run again."""

    def __init__(self, workdir, device, budgets, deadline, ckpt_seconds, sizes, args):
        self.workdir = workdir
        self.device = device
        self.budgets = budgets
        self.deadline = deadline
        self.ckpt_seconds = ckpt_seconds
        self.sizes = sizes
        self.args = args
        os.makedirs(workdir, exist_ok=True)
        self.log_path = os.path.join(workdir, "log.txt")

    def log(self, message):
        line = f"{time.strftime('%H:%M:%S')} {message}"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def path(self, *parts):
        return os.path.join(self.workdir, *parts)

    def out_of_time(self):
        return self.deadline is not None and time.time() >= self.deadline

    @property
    def cuda(self):
        return self.device.type == "cuda"

    def autocast(self, cache=True):
        """bf16 autocast on the GPU; plain float32 on the CPU (bf16 there with --autocast-cpu,
        which tests the GPU's mixed-precision code paths). cache=False inside CUDA graphs."""
        if self.cuda:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16, cache_enabled=cache)
        if getattr(self.args, "autocast_cpu", False):
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16, cache_enabled=cache)
        return contextlib.nullcontext()

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def memory_note(self):
        """", 12.3 GiB GPU peak" on a GPU (torch's peak allocation so far), "" on the CPU: logged
        with the step rate, so a run shows how much room a larger batch would have."""
        if not self.cuda:
            return ""
        return f", {torch.cuda.max_memory_allocated(self.device) / 2 ** 30:.1f} GiB GPU peak"

    def resumed_elapsed(self, name, state):
        """The stage time a checkpoint carries, or 0 with --restart-schedule NAME: the weights
        and optimizer go on, the time-based learning-rate schedule starts again (e.g. when a
        stage begun on the CPU goes on on a GPU, where its budget is far shorter)."""
        if name in getattr(self.args, "restart_schedule", "").split(","):
            self.log(f"{name}: from step {state['step']}, learning-rate schedule restarted "
                     f"(was {state['elapsed']:.0f} s into the stage)")
            return 0.0
        return state["elapsed"]

    def stage_done(self, name):
        return os.path.exists(self.path("stages", name + ".json"))

    def mark_done(self, name, stats):
        os.makedirs(self.path("stages"), exist_ok=True)
        stats = dict(stats, device=device_name(self.device))
        with open(self.path("stages", name + ".json.part"), "w") as f:
            json.dump(stats, f, indent=2)
        os.replace(self.path("stages", name + ".json.part"), self.path("stages", name + ".json"))

    def stage_stats(self, name):
        try:
            with open(self.path("stages", name + ".json")) as f:
                return json.load(f)
        except FileNotFoundError:
            return None


class Interrupted(Exception):
    """Raised when the invocation's deadline is reached; the stage has checkpointed."""


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def save_checkpoint(path, state):
    """torch.save to path atomically."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path + ".part")
    os.replace(path + ".part", path)


def load_checkpoint(path, device):
    if not os.path.exists(path):
        return None
    return torch.load(path, map_location=device, weights_only=True)


class Clock:
    """Stage time: `elapsed` seconds so far (carried across resumes), checkpoint cadence."""

    def __init__(self, run, budget, elapsed=0.0):
        self.run = run
        self.budget = budget
        self.base = elapsed
        self.start = time.time()
        self.last_ckpt = self.start

    @property
    def elapsed(self):
        return self.base + time.time() - self.start

    @property
    def fraction(self):
        return min(1.0, self.elapsed / max(self.budget, 1e-9))

    def finished(self):
        return self.elapsed >= self.budget

    def checkpoint_due(self):
        if time.time() - self.last_ckpt >= self.run.ckpt_seconds or self.run.out_of_time():
            self.last_ckpt = time.time()
            return True
        return False


class EMA:
    """Exponential moving average of a module's parameters and buffers, decay warmed up as
    min(decay, (1 + step) / (10 + step))."""

    def __init__(self, module, decay):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()}
        self.pairs = None  # (module, shadow tensors, live tensors), made at the first update

    @torch.no_grad()
    def update(self, module, step):
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        if self.pairs is None or self.pairs[0] is not module:
            # state_dict() tensors share storage with the parameters, so the lists stay valid:
            # made once, they spare a state_dict() per step (hundreds of tensors, on the GPU
            # a noticeable share of a step's Python time)
            current = module.state_dict()
            floats = [k for k, v in self.shadow.items() if v.is_floating_point()]
            self.pairs = (module, [self.shadow[k] for k in floats],
                          [current[k] if current[k].dtype == torch.float32 else None
                           for k in floats])
        _, shadow, live = self.pairs
        if any(t is None for t in live):  # a non-f32 parameter: convert every step
            current = module.state_dict()
            live = [current[k].float() for k, v in self.shadow.items() if v.is_floating_point()]
        torch._foreach_lerp_(shadow, live, 1.0 - d)

    def state_dict(self):
        return self.shadow

    def load_state_dict(self, state):
        # copied into the current shadow where shapes match, so its memory layout (channels_last
        # on the GPU) stays that of the live weights
        self.shadow = {k: (self.shadow[k].copy_(v) if k in self.shadow and
                           self.shadow[k].shape == v.shape and self.shadow[k].is_floating_point()
                           else v.clone().float()) for k, v in state.items()}
        self.pairs = None

    def copy_to(self, module):
        module.load_state_dict(self.shadow)


def graphed(run, module, sample_args, name):
    """`module` with its forward and backward captured as CUDA graphs (make_graphed_callables):
    a training step then replays two graphs instead of launching thousands of small kernels from
    Python (written when launches were thought to hold the H200 at 5 steps/s). sample_args become
    the graph's fixed inputs (same shapes, dtypes and requires_grad at every call). The graphed
    output is checked against the eager module's; off CUDA, without --cuda-graphs, or on any
    failure the eager module is returned (and the reason logged). Off by default: on the H200
    the teacher ran at 5.2 steps/s graphed against 5.0 eager (batch 2048), and each capture
    took 30-47 s of the run, so the GPU time is in the kernels, not in their launches."""
    if not run.cuda or not getattr(run.args, "cuda_graphs", False):
        return module
    try:
        with torch.no_grad():
            reference = module(*sample_args)
            reference = (reference[0] if isinstance(reference, tuple) else reference).float()
        torch.cuda.synchronize()
        graphed_module = torch.cuda.make_graphed_callables(module, sample_args,
                                                           allow_unused_input=True)
        with torch.no_grad():
            out = graphed_module(*sample_args)
            out = (out[0] if isinstance(out, tuple) else out).float()
            error = float((out - reference).norm() / reference.norm().clamp_min(1e-12))
        if not error <= 2e-2:  # bf16 forward: a few 1e-3 expected
            raise RuntimeError(f"graphed output differs from eager: relative L2 {error:.2e}")
        run.log(f"{name}: forward and backward as CUDA graphs (vs eager: relative L2 "
                f"{error:.1e})")
        return graphed_module
    except Exception as exc:  # eager training still works; say why the graphs are off
        if "forward" in module.__dict__:  # make_graphed_callables patches forward in place
            del module.forward
        torch.cuda.synchronize()
        run.log(f"{name}: CUDA graphs not used ({type(exc).__name__}: {exc}); eager")
        return module


def _first_tensor(out):
    return out[0] if isinstance(out, tuple) else out


class Compiled:
    """--compile: `module` through torch.compile, which fuses the elementwise work, the norms and
    the bf16 casts between the convolutions into few kernels (a session-9 H200 profile of the
    teacher at batch 8192 spent 26% of its GPU time in copy_ and most of the rest in elementwise
    and norm kernels). The first call compiles the forward and backward (minutes; counted in the
    stage's time), checks the output against eager's and runs one backward; on any failure or
    mismatch it logs why and stays eager. Inputs must keep their shapes (a new batch size
    compiles again)."""

    def __init__(self, run, module, name):
        self.run, self.module, self.name = run, module, name
        self.compiled = torch.compile(module)
        self.checked = False

    def __call__(self, *args):
        if self.checked:
            return (self.compiled or self.module)(*args)
        self.checked = True
        started = time.time()
        try:
            with torch.no_grad():
                reference = _first_tensor(self.module(*args)).float()
            trial = self.compiled(*args)
            _first_tensor(trial).float().square().mean().backward()  # compiles the backward
            self.module.zero_grad(set_to_none=True)
            out = _first_tensor(trial).detach().float()
            error = float((out - reference).norm() / reference.norm().clamp_min(1e-12))
            if not error <= 2e-2:  # bf16 forward: a few 1e-3 expected
                raise RuntimeError(f"compiled output differs from eager: relative L2 {error:.2e}")
            self.run.log(f"{self.name}: torch.compile took {time.time() - started:.0f} s (vs "
                         f"eager: relative L2 {error:.1e})")
        except Exception as exc:  # eager training still works; say why compile is off
            self.compiled = None
            self.module.zero_grad(set_to_none=True)
            message = str(exc).strip().splitlines()
            self.run.log(f"{self.name}: torch.compile not used after {time.time() - started:.0f} "
                         f"s ({type(exc).__name__}: {message[0] if message else ''}); eager")
        return (self.compiled or self.module)(*args)


def compiled(run, module, name):
    """`module` itself, or with --compile a Compiled wrapper of it (above)."""
    return Compiled(run, module, name) if getattr(run.args, "compile", False) else module


class StepProfiler:
    """--profile-steps N: records N training steps, after 20 of warm-up, with torch.profiler
    and logs the operators that took the most device time (CPU time off CUDA), then the copies
    (copy_, _to_copy) by input shape, so that a short GPU run says where its time goes. Call after
    every step; costs nothing when off."""

    WARMUP = 20

    def __init__(self, run, name):
        self.run, self.name = run, name
        self.steps = getattr(run.args, "profile_steps", 0) or 0
        self.seen, self.profiler, self.started = 0, None, 0.0

    def after_step(self):
        if self.steps <= 0:
            return
        self.seen += 1
        try:
            if self.seen == self.WARMUP:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if self.run.cuda:
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                self.run.sync()
                self.started = time.time()
                self.profiler = torch.profiler.profile(activities=activities, record_shapes=True)
                self.profiler.__enter__()
            elif self.seen == self.WARMUP + self.steps and self.profiler is not None:
                self.run.sync()
                seconds = (time.time() - self.started) / self.steps
                self.profiler.__exit__(None, None, None)
                averages = self.profiler.key_averages()
                self._averages_by_shape = self.profiler.key_averages(group_by_input_shape=True)
                self.profiler = None
                # newer PyTorch names the device columns "device", older ones "cuda"
                keys = (["self_device_time_total", "self_cuda_time_total"] if self.run.cuda
                        else ["self_cpu_time_total"])
                for key in keys:
                    try:
                        table = averages.table(sort_by=key, row_limit=25,
                                               max_name_column_width=60)
                        break
                    except Exception:  # noqa: BLE001 (an unknown sort key in this version)
                        table = None
                if table is None:
                    raise RuntimeError(f"no sort key of {keys} is known to this PyTorch")
                self.run.log(f"{self.name}: profile of {self.steps} steps ({seconds * 1e3:.1f} "
                             f"ms per step while profiled), by {key}:\n{table}")
                self.log_copies(key)
        except Exception as exc:  # a profiler failure must not end the training
            self.profiler, self.steps = None, 0
            self.run.log(f"{self.name}: profiler failed ({type(exc).__name__}: {exc})")

    def log_copies(self, key):
        """The copies of the profiled steps by input shape, most time first: which tensors are
        cast or made contiguous (weights are small; whole activations are what costs)."""
        rows = [row for row in self._averages_by_shape
                if row.key in ("aten::copy_", "aten::_to_copy")]
        rows.sort(key=lambda row: -getattr(row, key, 0))
        lines = [f"{getattr(row, key, 0) / 1e3 / self.steps:9.2f} ms/step "
                 f"{row.count // self.steps:6d}/step  {row.key} {row.input_shapes}"
                 for row in rows[:15]]
        self.run.log(f"{self.name}: copies by input shape ({key}):\n" + "\n".join(lines))


def lr_factor(step, fraction, warmup_steps, decay_from=0.7, floor=0.1):
    """Linear warm-up over warmup_steps, constant, then linear decay to `floor` over the last
    (1 - decay_from) of the stage's time budget."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    if fraction <= decay_from:
        return warm
    return warm * (1.0 - (1.0 - floor) * (fraction - decay_from) / (1.0 - decay_from))


def set_lr(optimizer, base_lr, factor):
    for group in optimizer.param_groups:
        group["lr"] = group.get("base_lr", base_lr) * factor


def adamw(params, lr, run, betas=(0.9, 0.99), weight_decay=0.01):
    """AdamW, fused on the GPU."""
    params = [p for p in params if p.requires_grad]
    kwargs = {"fused": True} if run.cuda else {}
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, **kwargs)


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())
