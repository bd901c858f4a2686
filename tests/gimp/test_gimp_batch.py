#!/usr/bin/env python3
# test_gimp_batch.py: the plug-in in real GIMP 3 batch mode (gimp-console-3.0, Script-Fu with named
# arguments): registration, translations found, a generated layer's count, size, name, position,
# offsets and parasite, pixels equal to the headless runner's, error paths that leave images and
# their undo history as they were (the image stays clean: GIMP dirties an image on every undo
# step, even an empty group) and let GIMP exit normally, and a SIGTERM to the plug-in in the
# middle of a generation that stops it like Cancel.
#
# Environment: SNAPGEN_PLUGIN (the built plug-in), SNAPGEN_LOCALE_BUILD_DIR (build/po, holding
# LANG/LC_MESSAGES/snapgen-gimp.mo), SNAPGEN (the headless runner), SNAPGEN_TEST_MODEL (optional:
# a model folder; by default a small random one is made with weights/recipe/make_random_model.py).
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gimptest  # noqa: E402
from gimptest import (PROCEDURE, SCHEME_PRELUDE, STATE_PRELUDE, check,  # noqa: E402
                      scheme_string)

PROMPT = "A small red apple on a blue wooden table,\n photographed from above in soft light"
SEED, STEPS = 1234, 2
# Sizes for the tiny test model; use_model_sizes changes them for a model with a larger stride.
WIDTH, HEIGHT = 64, 64
BIG_W, BIG_H = 96, 80      # canvas larger than the layer: centred at (16, 8)
SMALL_W, SMALL_H = 48, 40  # canvas smaller than the layer: centred at (-8, -12), not scaled
MISSING_MODEL = "/nonexistent/snapgen-model"
# A generation that lasts long past TERM_DELAY, stopped by SIGTERM. 128² and 200 steps took a
# minute on the AVX2 machine of sessions 1-10; on the AVX-512 one of session 12, 512² reached
# step 19 of 200 in 0.2 s, and with a 1.5 s delay the generation had ended before the signal.
TERM_SIDE, TERM_STEPS = 1024, 200
TERM_DELAY = 0.2                  # seconds after the engine thread starts (signals are guarded then)
TERM_STOP_SECONDS = 60            # SIGTERM to the plug-in's end (a step, and room for a busy CPU)


def use_model_sizes(model):
    """The sizes above for the model (SNAPGEN_TEST_MODEL may be a trained one, whose sides are
    multiples of 256): the layer the smallest side ≥ 64 it accepts, the canvases around it."""
    global WIDTH, HEIGHT, BIG_W, BIG_H, SMALL_W, SMALL_H, TERM_SIDE
    WIDTH = HEIGHT = gimptest.image_side(model, 64)
    BIG_W, BIG_H = WIDTH + 32, HEIGHT + 16
    SMALL_W, SMALL_H = WIDTH - 16, HEIGHT - 24
    TERM_SIDE = gimptest.image_side(model, 2 * WIDTH)


def layer_name(prompt):
    """What the plug-in names the layer (see snapgen_layer_name in plugin/layer-insert.c)."""
    collapsed = " ".join(prompt.split())
    if not collapsed:
        return "SnapGen image"
    if len(collapsed) <= 40:
        return collapsed
    return collapsed[:39].rstrip() + "…"


def call(model, *extra):
    """A Script-Fu call of the procedure with named arguments; each of extra ("#:width 100")
    adds an argument or replaces a default."""
    args = {"run-mode": "RUN-NONINTERACTIVE", "prompt": scheme_string(PROMPT), "seed": SEED,
            "steps": STEPS, "width": WIDTH, "height": HEIGHT,
            "model-folder": scheme_string(model), "threads": 2}
    for argument in extra:
        name, value = argument[len("#:"):].split(" ", 1)
        args[name] = value
    return f"({PROCEDURE} {' '.join(f'#:{name} {value}' for name, value in args.items())})"


def batch_script(model, corrupt_model, out_new, out_big, out_int8):
    return SCHEME_PRELUDE + STATE_PRELUDE + f"""
(begin
  (sg-say "registered" (gimp-pdb-procedure-exists "{PROCEDURE}"))
  (define images-before (sg-image-count))

  ; No image: the plug-in makes one of the generated size and returns it.
  (let* ((r {call(model)}) (image (car r)) (layer (cadr r)))
    (sg-say "new.layers" (sg-layer-count image))
    (sg-say "new.image-size" (list (car (gimp-image-get-width image))
                                   (car (gimp-image-get-height image))))
    (sg-say "new.layer-size" (list (car (gimp-drawable-get-width layer))
                                   (car (gimp-drawable-get-height layer))))
    (sg-say "new.layer-name" (car (gimp-item-get-name layer)))
    (sg-say "new.has-alpha" (car (gimp-drawable-has-alpha layer)))
    (sg-say "new.seed" (caddr r))
    (sg-say "new.parasite" (caddr (car (gimp-item-get-parasite layer "snapgen-settings"))))
    (gimp-file-save RUN-NONINTERACTIVE image {scheme_string(out_new)} -1)
    (gimp-image-delete image))

  ; Low memory: int8 linear weights (its pixels are compared with the runner's --int8 below).
  (let* ((r {call(model, "#:int8-weights TRUE")}) (image (car r)))
    (sg-say "int8.layers" (sg-layer-count image))
    (gimp-file-save RUN-NONINTERACTIVE image {scheme_string(out_int8)} -1)
    (gimp-image-delete image))

  ; A larger canvas with two layers, the lower one selected: the new layer goes right above it,
  ; centred; then errors on the same image must leave it as it is.
  (let* ((image (car (gimp-image-new {BIG_W} {BIG_H} RGB)))
         (bg (car (gimp-layer-new image "background" {BIG_W} {BIG_H} RGB-IMAGE 100
                                  LAYER-MODE-NORMAL)))
         (top (car (gimp-layer-new image "top" {BIG_W} {BIG_H} RGBA-IMAGE 100
                                   LAYER-MODE-NORMAL))))
    (gimp-image-insert-layer image bg 0 0)
    (gimp-image-insert-layer image top 0 0)
    (gimp-image-set-selected-layers image (vector bg))
    (gimp-image-clean-all image)
    (let* ((r {call(model, "#:image image")}) (layer (cadr r)))
      (sg-say "big.dirty" (gimp-image-is-dirty image))
      (sg-say "big.same-image" (= (car r) image))
      (sg-say "big.layers" (sg-layer-count image))
      (sg-say "big.position" (car (gimp-image-get-item-position image layer)))
      (sg-say "big.offsets" (gimp-drawable-get-offsets layer))
      (sg-say "big.layer-size" (list (car (gimp-drawable-get-width layer))
                                     (car (gimp-drawable-get-height layer))))
      (gimp-item-set-visible bg FALSE)
      (gimp-item-set-visible top FALSE)
      (gimp-file-save RUN-NONINTERACTIVE image {scheme_string(out_big)} -1))
    ; The errors start from a clean image: any undo step would make it dirty again.
    (gimp-image-clean-all image)
    (sg-say "err.before.ids" (sg-layer-ids image))
    (sg-say "err.before.selected" (sg-selected-ids image))
    (sg-say "err.missing" (catch "error" {call(MISSING_MODEL, "#:image image")}))
    (sg-say-state "err.missing" image)
    (sg-say "err.corrupt" (catch "error" {call(corrupt_model, "#:image image")}))
    (sg-say-state "err.corrupt" image)
    (sg-say "err.size" (catch "error" {call(model, "#:image image", "#:width 100")}))
    (sg-say-state "err.size" image)
    (gimp-image-delete image))

  ; A smaller canvas: the layer keeps its size and hangs over the edges, centred.
  (let* ((image (car (gimp-image-new {SMALL_W} {SMALL_H} RGB)))
         (bg (car (gimp-layer-new image "background" {SMALL_W} {SMALL_H} RGB-IMAGE 100
                                  LAYER-MODE-NORMAL))))
    (gimp-image-insert-layer image bg 0 0)
    (let* ((r {call(model, "#:image image")}) (layer (cadr r)))
      (sg-say "small.offsets" (gimp-drawable-get-offsets layer))
      (sg-say "small.layer-size" (list (car (gimp-drawable-get-width layer))
                                       (car (gimp-drawable-get-height layer))))
      (sg-say "small.image-size" (list (car (gimp-image-get-width image))
                                       (car (gimp-image-get-height image)))))
    (gimp-image-delete image))

  ; A grayscale image is refused before any computing, and left as it is.
  (let* ((image (car (gimp-image-new {WIDTH} {HEIGHT} GRAY)))
         (bg (car (gimp-layer-new image "background" {WIDTH} {HEIGHT} GRAY-IMAGE 100
                                  LAYER-MODE-NORMAL))))
    (gimp-image-insert-layer image bg 0 0)
    (gimp-image-clean-all image)
    (sg-say "err.gray" (catch "error" {call(model, "#:image image")}))
    (sg-say "err.gray.layers" (sg-layer-count image))
    (sg-say "err.gray.dirty" (gimp-image-is-dirty image))
    (gimp-image-delete image))

  ; An error without an image leaves no image behind.
  (sg-say "err.noimage" (catch "error" {call(MISSING_MODEL)}))
  (sg-say "images-left" (- (sg-image-count) images-before)))
"""


def plugin_with_worker(plugin_path):
    """The pid of a running copy of plugin_path whose engine thread ("snapgen-worker") runs."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/exe") != plugin_path:
                continue
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/comm") as f:
                    if f.read().strip() == "snapgen-worker":
                        return int(pid)
        except OSError:  # gone meanwhile
            continue
    return None


def test_sigterm(profile, model):
    """SIGTERM to the plug-in in the middle of a generation: the engine stops within a step as on
    Cancel (PDB status CANCEL, not a crash), the image and its undo history stay as they were, and
    GIMP goes on. (libgimp's own handler would call exit() with the engine still running.)"""
    size = [f"#:width {TERM_SIDE}", f"#:height {TERM_SIDE}", f"#:steps {TERM_STEPS}"]
    script = SCHEME_PRELUDE + STATE_PRELUDE + f"""
(let* ((image (car (gimp-image-new {TERM_SIDE} {TERM_SIDE} RGB)))
       (bg (car (gimp-layer-new image "background" {TERM_SIDE} {TERM_SIDE} RGB-IMAGE 100
                                LAYER-MODE-NORMAL))))
  (gimp-image-insert-layer image bg 0 0)
  (gimp-image-clean-all image)
  (sg-say "term.before.ids" (sg-layer-ids image))
  (sg-say "term.result" (catch "error" {call(model, "#:image image", *size)}))
  (sg-say-state "term" image)
  (gimp-image-delete image)
  (sg-say "term.gimp-goes-on" (sg-image-count)))
"""
    plugin_path = os.path.join(profile.plugin_dir, "snapgen")
    gimp = profile.start_gimp(script)
    pid, deadline = None, time.monotonic() + gimptest.GIMP_TIMEOUT
    while pid is None and gimp.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        pid = plugin_with_worker(plugin_path)
    stop_seconds = None
    if pid is not None:
        time.sleep(TERM_DELAY)
        os.kill(pid, signal.SIGTERM)
        sent = time.monotonic()
        while os.path.exists(f"/proc/{pid}") and time.monotonic() - sent < 300:
            time.sleep(0.05)
        stop_seconds = time.monotonic() - sent
    output, _ = gimp.communicate()
    values = gimptest.sgtest_values(output)
    if not check("SIGTERM: plug-in caught generating", pid is not None):
        print(output[-4000:], flush=True)
        return
    check("SIGTERM: GIMP run", gimp.returncode == 0, f"exit code {gimp.returncode}")
    check("SIGTERM: plug-in ended soon", stop_seconds < TERM_STOP_SECONDS,
          f"{stop_seconds:.1f} s after the signal (limit {TERM_STOP_SECONDS} s)")
    check("SIGTERM: PDB status CANCEL (not a crash or an error)",
          values.get("term.result") == "#f", values.get("term.result", "(no result)"))
    signalled = re.search(r"snapgen: termination signal at step (\d+) of \d+", output)
    stopped = re.search(r"snapgen: the engine stopped at step (\d+) of \d+", output)
    check("SIGTERM: the engine stopped within one step",
          signalled is not None and stopped is not None
          and int(stopped.group(1)) <= int(signalled.group(1)) + 1,
          f"{signalled.group(0) if signalled else '(no signal report)'}; "
          f"{stopped.group(0) if stopped else '(no stop report)'}")
    check("SIGTERM: no exit() from libgimp's handler, no crash",
          "terminated: Terminated" not in output and "crashed" not in output.lower())
    check("SIGTERM: same layers, no undo step (image still clean)",
          "term.before.ids" in values and values.get("term.ids") == values["term.before.ids"]
          and values.get("term.dirty") == "0",
          f"ids {values.get('term.ids')!r} (before {values.get('term.before.ids')!r}), "
          f"dirty {values.get('term.dirty')}")
    check("SIGTERM: GIMP goes on", values.get("term.gimp-goes-on") is not None)


def pluginrc_entry(profile):
    """Our procedure's registration as GIMP recorded it in the profile's pluginrc."""
    try:
        text = open(os.path.join(profile.home, ".config", "GIMP", "3.0", "pluginrc"),
                    encoding="utf-8", errors="replace").read()
    except OSError:
        return ""
    start = text.find(f'(proc-def "{PROCEDURE}"')
    return text[start:text.find("(plug-in-def", start)] if start >= 0 else ""


def load_rgba(path):
    return np.asarray(Image.open(path).convert("RGBA")).astype(np.int32)


def compare(name, image, reference):
    if image.shape != reference.shape:
        return check(name, False, f"shape {image.shape} != {reference.shape}")
    diff = np.abs(image - reference)
    differing = int((diff.max(axis=2) > 0).sum())
    return check(name, int(diff.max()) == 0,
                 f"max difference {int(diff.max())}, {differing} pixels differ")


def main():
    plugin = gimptest.require_env("SNAPGEN_PLUGIN")
    locale_dir = gimptest.require_env("SNAPGEN_LOCALE_BUILD_DIR")
    runner = gimptest.require_env("SNAPGEN")
    profile = gimptest.GimpProfile(plugin, locale_dir)
    try:
        check("catalogues built", {"de", "ko"} <= set(profile.languages),
              f"languages {profile.languages}")
        model = gimptest.test_model(profile.tmp)
        if not check("test model", model is not None and os.path.isfile(
                os.path.join(model, "model_index.json")), str(model)):
            return
        use_model_sizes(model)

        # A copy of the model with the UNet weights cut in half: "corrupt weights".
        corrupt = profile.path("corrupt-model")
        shutil.copytree(model, corrupt)
        unet_dir = os.path.join(corrupt, "unet")
        for name in os.listdir(unet_dir):
            if name.endswith(".safetensors"):
                path = os.path.join(unet_dir, name)
                os.truncate(path, os.path.getsize(path) // 2)

        out_new, out_big = profile.path("new.png"), profile.path("big.png")
        out_int8 = profile.path("int8.png")
        code, output = profile.run_gimp(batch_script(model, corrupt, out_new, out_big, out_int8))
        values = gimptest.sgtest_values(output)
        if not check("batch run", code == 0, f"exit code {code}"):
            print(output[-6000:], flush=True)

        check("registered", values.get("registered") in ("1", "#t"), values.get("registered", ""))
        registration = pluginrc_entry(profile)
        check("menu: Filters > Render", '(menu-path "<Image>/Filters/Render")' in registration)
        check("menu label", '"SnapGen Text to _Image…"' in registration)
        check("usable without an image (sensitivity ALWAYS)",
              re.search(r'^\s*"\*"\s*\n\s*2147483647\s*$', registration, re.M) is not None)
        complaint = gimptest.plugin_i18n_complaint(output)
        check("catalogue folder found", complaint is None, complaint or "")

        # The new image.
        check("new image: one layer", values.get("new.layers") == "1", values.get("new.layers", ""))
        check("new image: size", values.get("new.image-size") == f"{WIDTH} {HEIGHT}",
              values.get("new.image-size", ""))
        check("new layer: size", values.get("new.layer-size") == f"{WIDTH} {HEIGHT}",
              values.get("new.layer-size", ""))
        check("new layer: RGBA", values.get("new.has-alpha") in ("1", "#t"))
        check("new layer: named after the prompt",
              values.get("new.layer-name") == layer_name(PROMPT),
              repr(values.get("new.layer-name")))
        check("returned seed", values.get("new.seed") == str(SEED), values.get("new.seed", ""))
        try:
            settings = json.loads(values.get("new.parasite", ""))
        except ValueError:
            settings = {}
        check("parasite snapgen-settings",
              settings.get("prompt") == PROMPT and settings.get("seed") == SEED
              and settings.get("steps") == STEPS and settings.get("width") == WIDTH
              and settings.get("height") == HEIGHT and settings.get("model") == model
              and "guidance" in settings and settings.get("int8_weights") is False,
              values.get("new.parasite", "")[:200])

        # The larger and smaller canvases.
        check("existing image: result in the same image",
              values.get("big.same-image") in ("1", "#t"))
        check("existing image: one layer more", values.get("big.layers") == "3",
              values.get("big.layers", ""))
        check("existing image: above the selected layer", values.get("big.position") == "1",
              f"position {values.get('big.position')} (0 is the top layer, 'top' is above)")
        big_offsets = f"{(BIG_W - WIDTH) // 2} {(BIG_H - HEIGHT) // 2}"
        check("larger canvas: centred", values.get("big.offsets") == big_offsets,
              f"{values.get('big.offsets')} (expected {big_offsets})")
        check("larger canvas: layer not scaled",
              values.get("big.layer-size") == f"{WIDTH} {HEIGHT}", values.get("big.layer-size", ""))
        small_offsets = f"{(SMALL_W - WIDTH) // 2} {(SMALL_H - HEIGHT) // 2}"
        check("smaller canvas: centred", values.get("small.offsets") == small_offsets,
              f"{values.get('small.offsets')} (expected {small_offsets})")
        check("smaller canvas: layer and canvas not scaled",
              values.get("small.layer-size") == f"{WIDTH} {HEIGHT}"
              and values.get("small.image-size") == f"{SMALL_W} {SMALL_H}",
              f"layer {values.get('small.layer-size')}, canvas {values.get('small.image-size')}")

        check("generation makes the image dirty (an undo step)",
              values.get("big.dirty") == "1", values.get("big.dirty", ""))

        # Errors: a PDB error each, the image and its undo history untouched, nothing left behind.
        before_ids = values.get("err.before.ids")
        before_selected = values.get("err.before.selected")
        check("error cases start from 3 layers", len((before_ids or "").split()) == 3,
              f"ids {before_ids!r}")
        for key, what in (("missing", "missing model folder"), ("corrupt", "corrupt weights"),
                          ("size", "bad size")):
            check(f"error, {what}: PDB error", values.get(f"err.{key}") == "error",
                  values.get(f"err.{key}", "(no result)"))
            check(f"error, {what}: image unchanged", values.get(f"err.{key}.layers") == "3",
                  f"{values.get(f'err.{key}.layers')} layers")
            check(f"error, {what}: same layers and selection",
                  values.get(f"err.{key}.ids") == before_ids
                  and values.get(f"err.{key}.selected") == before_selected,
                  f"ids {values.get(f'err.{key}.ids')!r} (before {before_ids!r}), selected "
                  f"{values.get(f'err.{key}.selected')!r} (before {before_selected!r})")
            check(f"error, {what}: no undo step (image still clean)",
                  values.get(f"err.{key}.dirty") == "0", f"dirty {values.get(f'err.{key}.dirty')}")
        check("error, grayscale image: PDB error", values.get("err.gray") == "error")
        check("error, grayscale image: image unchanged", values.get("err.gray.layers") == "1")
        check("error, grayscale image: no undo step (image still clean)",
              values.get("err.gray.dirty") == "0", f"dirty {values.get('err.gray.dirty')}")
        check("error message says to convert to RGB", "convert the image to RGB first" in output)
        check("error message names the model folder",
              f"Could not load the SnapGen model from “{MISSING_MODEL}”" in output)
        check("error without image: PDB error", values.get("err.noimage") == "error")
        check("no image left behind", values.get("images-left") == "0",
              values.get("images-left", ""))
        check("no stray image", "stray image" not in output)

        # Pixels equal the headless runner's for the same seed and settings.
        reference = profile.path("runner.png")
        result = subprocess.run([runner, "generate", "--model", model, "--prompt", PROMPT,
                                 "--seed", str(SEED), "--steps", str(STEPS), "--width", str(WIDTH),
                                 "--height", str(HEIGHT), "--threads", "2", "--output", reference,
                                 "--quiet"], capture_output=True, text=True)
        if check("headless runner", result.returncode == 0, result.stderr.strip()[-300:]):
            ref = load_rgba(reference)
            if check("exported PNG (new image)", os.path.isfile(out_new)):
                compare("pixels equal the runner's (new image)", load_rgba(out_new), ref)
            if check("exported PNG (larger canvas)", os.path.isfile(out_big)):
                big = load_rgba(out_big)
                x0, y0 = (BIG_W - WIDTH) // 2, (BIG_H - HEIGHT) // 2
                compare("pixels equal the runner's (larger canvas)",
                        big[y0:y0 + HEIGHT, x0:x0 + WIDTH], ref)
                outside = big.copy()
                outside[y0:y0 + HEIGHT, x0:x0 + WIDTH] = 0
                check("nothing drawn outside the layer", int(outside[..., 3].max()) == 0)

        # --int8 through the plug-in: the runner's --int8 pixels, and not the f32 ones.
        reference8 = profile.path("runner-int8.png")
        result = subprocess.run([runner, "generate", "--model", model, "--prompt", PROMPT,
                                 "--seed", str(SEED), "--steps", str(STEPS), "--width", str(WIDTH),
                                 "--height", str(HEIGHT), "--threads", "2", "--int8", "--output",
                                 reference8, "--quiet"], capture_output=True, text=True)
        check("low memory (int8): one layer", values.get("int8.layers") == "1",
              values.get("int8.layers", ""))
        if check("headless runner --int8", result.returncode == 0, result.stderr.strip()[-300:]) \
                and check("exported PNG (int8)", os.path.isfile(out_int8)):
            int8 = load_rgba(out_int8)
            compare("int8 pixels equal the runner's --int8", int8, load_rgba(reference8))
            check("int8 pixels differ from the f32 ones",
                  os.path.isfile(reference) and int(np.abs(int8 - load_rgba(reference)).max()) > 0)

        test_sigterm(profile, model)

        # An uncaught error ends the batch with a PDB error; GIMP still exits by itself.
        code, output = profile.run_gimp(call(MISSING_MODEL))
        check("uncaught error: GIMP exits normally", code not in (124, 137) and code >= 0,
              f"exit code {code}")
        check("uncaught error: reported as a PDB error",
              f"Procedure execution of {PROCEDURE} failed" in output
              and "Could not load the SnapGen model" in output)
    except Exception:  # a broken check is a failure, not a silent stop
        traceback.print_exc()
        check("test script ran to the end", False)
    finally:
        if os.environ.get("SNAPGEN_KEEP_TEST_FILES"):
            print(f"kept {profile.tmp}", flush=True)
        else:
            profile.cleanup()
    gimptest.finish()


if __name__ == "__main__":
    main()
