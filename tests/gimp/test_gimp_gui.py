#!/usr/bin/env python3
# test_gimp_gui.py: the plug-in in the GIMP 3 GUI under Xvfb: the dialog opens in Korean
# (LANGUAGE=ko), a picture of it is saved and is not blank; the progress window's own Cancel
# stops the engine within one step and leaves the image and its undo history untouched; and a
# generation is exactly one undo step: one Ctrl+Z in the image window (sent with xdotool; GIMP's
# PDB has no undo) takes the image back to its state before, Ctrl+Y brings the layer back.
#
# Environment: SNAPGEN_PLUGIN, SNAPGEN_LOCALE_BUILD_DIR (as for test_gimp_batch.py),
# SNAPGEN_TEST_MODEL (optional), SNAPGEN_SCREENSHOT_OUT (optional: where to copy the picture,
# e.g. ui/screenshots/dialog-ko.png). Needs xvfb-run, Xvfb, xdotool, localedef (Debian package
# locales) and a Korean font (fonts-nanum).
import os
import re
import shutil
import subprocess
import sys
import traceback

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gimptest  # noqa: E402
from gimptest import (PROCEDURE, ROOT, SCHEME_PRELUDE, STATE_PRELUDE, check,  # noqa: E402
                      scheme_string)

KOREAN_PROMPT = "파란 나무 탁자 위의 빨간 사과, 위에서 부드러운 빛으로 찍은 사진"
CANCEL_AT_STEP, CANCEL_STEPS = 2, 12
UNDO_WAIT = 20  # seconds GIMP gets to act on Ctrl+Z / Ctrl+Y (a failing check waits this long)


def po_translation(lang, msgid):
    """The msgstr of a one-line msgid in po/LANG.po."""
    text = open(os.path.join(ROOT, "po", lang + ".po"), encoding="utf-8").read()
    match = re.search(r'^msgid "' + re.escape(msgid) + r'"\nmsgstr "(.*)"$', text, re.M)
    return match.group(1) if match else None


def korean_locale(workdir):
    """A private ko_KR.UTF-8 locale (LOCPATH): gettext ignores LANGUAGE in the C locale."""
    folder = os.path.join(workdir, "locales")
    os.makedirs(folder, exist_ok=True)
    result = subprocess.run(["localedef", "--no-archive", "-i", "ko_KR", "-f", "UTF-8",
                             os.path.join(folder, "ko_KR.UTF-8")], capture_output=True, text=True)
    ok = os.path.isdir(os.path.join(folder, "ko_KR.UTF-8"))
    return folder if ok else None, result.stderr.strip()


def test_dialog(profile, model):
    locpath, why = korean_locale(profile.tmp)
    if not check("Korean locale", locpath is not None,
                 "" if locpath else why or "localedef failed (Debian package locales?)"):
        return
    fonts = subprocess.run(["fc-list", ":lang=ko"], capture_output=True, text=True).stdout
    check("Korean font", fonts.strip() != "",
          "" if fonts.strip() else "no font for Korean (Debian package fonts-nanum)")

    picture = profile.path("dialog-ko.png")
    script = (f"({PROCEDURE} #:run-mode RUN-INTERACTIVE #:prompt {scheme_string(KOREAN_PROMPT)} "
              f"#:seed 42 #:model-folder {scheme_string(model)})")
    code, output = profile.run_gimp(script, gui=True, LANG="ko_KR.UTF-8", LANGUAGE="ko",
                                    LOCPATH=locpath, SNAPGEN_DIALOG_SCREENSHOT=picture)
    if not check("GUI run", code == 0, f"exit code {code}"):
        print(output[-4000:], flush=True)
    complaint = gimptest.plugin_i18n_complaint(output)
    check("catalogue folder found", complaint is None, complaint or "")

    match = re.search(r"snapgen: dialog screenshot saved to .* \(title: (.*)\)", output)
    expected_title = po_translation("ko", "SnapGen Text to Image")
    check("dialog title in Korean", match is not None and match.group(1) == expected_title,
          f"{match.group(1) if match else '(no screenshot line)'} (expected {expected_title})")
    if not check("dialog picture saved", os.path.isfile(picture)):
        return
    image = Image.open(picture).convert("RGB")
    pixels = np.asarray(image).astype(np.float64)
    check("dialog picture size", image.width >= 300 and image.height >= 300,
          f"{image.width}x{image.height}")
    check("dialog picture not blank", float(pixels.std()) > 10.0, f"pixel std {pixels.std():.1f}")
    # Korean text is drawn: the label rows differ from an empty window's flat background.
    distinct = len(np.unique(pixels.reshape(-1, 3), axis=0))
    check("dialog picture has text and widgets", distinct > 50, f"{distinct} distinct colours")

    out = os.environ.get("SNAPGEN_SCREENSHOT_OUT")
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        shutil.copyfile(picture, out)
        print(f"screenshot copied to {out}", flush=True)


def test_cancel(profile, model):
    # Repeat-last runs (no dialog) get the progress window too; the test hook presses its Cancel
    # button when denoising reaches CANCEL_AT_STEP.
    side = gimptest.image_side(model, 256)
    script = SCHEME_PRELUDE + STATE_PRELUDE + f"""
(let* ((image (car (gimp-image-new 128 128 RGB)))
       (bg (car (gimp-layer-new image "background" 128 128 RGB-IMAGE 100 LAYER-MODE-NORMAL))))
  (gimp-image-insert-layer image bg 0 0)
  (gimp-image-clean-all image)
  (sg-say "cancel.before.ids" (sg-layer-ids image))
  (sg-say "cancel.result" (catch "error"
    ({PROCEDURE} #:run-mode RUN-WITH-LAST-VALS #:image image #:prompt "x" #:seed 3
     #:steps {CANCEL_STEPS} #:width {side} #:height {side} #:model-folder {scheme_string(model)})))
  (sg-say-state "cancel" image)
  (gimp-image-delete image))
"""
    code, output = profile.run_gimp(script, gui=True,
                                    SNAPGEN_TEST_CANCEL_AT_STEP=str(CANCEL_AT_STEP))
    values = gimptest.sgtest_values(output)
    if not check("cancel run", code == 0, f"exit code {code}"):
        print(output[-4000:], flush=True)
    check("cancel: PDB status CANCEL (not an error)", values.get("cancel.result") == "#f",
          values.get("cancel.result", "(no result)"))
    check("cancel: image untouched", values.get("cancel.layers") == "1"
          and "cancel.before.ids" in values
          and values.get("cancel.ids") == values["cancel.before.ids"],
          f"layers {values.get('cancel.ids')!r} (before {values.get('cancel.before.ids')!r})")
    check("cancel: no undo step (image still clean)", values.get("cancel.dirty") == "0",
          f"dirty {values.get('cancel.dirty')}")
    match = re.search(r"pressed Cancel at step (\d+); the engine stopped at step (\d+)", output)
    check("cancel: engine stopped within one step",
          match is not None and int(match.group(2)) <= int(match.group(1)) + 1
          and int(match.group(2)) < CANCEL_STEPS,
          match.group(0) if match else "(no cancel report)")


def send_key(xvfb, key):
    """Focuses the image window (its title holds "[Untitled]") and presses key there."""
    code, windows = xvfb.xdotool("search", "--onlyvisible", "--name", r"\[Untitled\]")
    if code != 0 or not windows:
        return f"no image window ({windows or 'xdotool search found none'})"
    window = windows.split()[0]
    for args in (("windowfocus", "--sync", window), ("key", "--clearmodifiers", key)):
        code, text = xvfb.xdotool(*args)
        if code != 0:
            return f"xdotool {' '.join(args)}: {text}"
    return None


def test_undo(profile, model):
    """A generation in an image shown in a window, then one Ctrl+Z and one Ctrl+Y sent to that
    window. The script waits (polling the layers) for each key; the test touches a file once it
    has sent one, after which the script gives GIMP UNDO_WAIT seconds to act on it."""
    files = {name: profile.path(name) for name in ("generated", "undo-sent", "undone", "redo-sent")}
    side = gimptest.image_side(model, 64)
    script = SCHEME_PRELUDE + STATE_PRELUDE + f"""
(define (sg-touch path) (close-output-port (open-output-file path)))
(define (sg-wait-until ready? seconds)
  (let loop ((left (* seconds 20)))
    (if (and (> left 0) (not (ready?))) (begin (usleep 50000) (loop (- left 1))))))
(define (sg-wait-for-key sent-file image layers)
  (sg-wait-until (lambda () (file-exists? sent-file)) {gimptest.GIMP_TIMEOUT})
  (sg-wait-until (lambda () (= (sg-layer-count image) layers)) {UNDO_WAIT}))
(let* ((image (car (gimp-image-new 128 128 RGB)))
       (bg (car (gimp-layer-new image "background" 128 128 RGB-IMAGE 100 LAYER-MODE-NORMAL)))
       (display (begin (gimp-image-insert-layer image bg 0 0) (car (gimp-display-new image)))))
  (gimp-image-clean-all image)
  (sg-say-state "undo.before" image)
  (sg-say "undo.result" (catch "error"
    ({PROCEDURE} #:run-mode RUN-NONINTERACTIVE #:image image #:prompt "x" #:seed 3 #:steps 2
     #:width {side} #:height {side} #:model-folder {scheme_string(model)})))
  (gimp-displays-flush)
  (sg-say-state "undo.generated" image)
  (sg-touch {scheme_string(files["generated"])})
  (sg-wait-for-key {scheme_string(files["undo-sent"])} image 1)
  (sg-say-state "undo.undone" image)
  (sg-touch {scheme_string(files["undone"])})
  (sg-wait-for-key {scheme_string(files["redo-sent"])} image 2)
  (sg-say-state "undo.redone" image)
  (gimp-image-clean-all image)
  (gimp-display-delete display))
"""
    xvfb = gimptest.Xvfb()
    try:
        gimp = profile.start_gimp(script, display=xvfb.display)
        problems = []
        # Whatever happens, the files are touched so that the script goes on and GIMP quits.
        for ready, key, sent in (("generated", "ctrl+z", "undo-sent"),
                                 ("undone", "ctrl+y", "redo-sent")):
            if gimptest.wait_for_file(files[ready], gimp, gimptest.GIMP_TIMEOUT):
                problem = send_key(xvfb, key)
                if problem:
                    problems.append(f"{key}: {problem}")
            gimptest.touch(files[sent])
        output, _ = gimp.communicate()
    finally:
        xvfb.close()
    values = gimptest.sgtest_values(output)
    if not check("undo run", gimp.returncode == 0 and not problems,
                 f"exit code {gimp.returncode}; {'; '.join(problems)}"):
        print(output[-4000:], flush=True)

    def state(key):
        return {part: values.get(f"undo.{key}.{part}") for part in ("ids", "selected", "dirty")}

    before, generated, undone, redone = (state(key) for key in
                                         ("before", "generated", "undone", "redone"))
    check("undo: generation adds a layer and dirties the image",
          values.get("undo.generated.layers") == "2" and generated["dirty"] == "1",
          f"{generated} (before {before})")
    check("undo: one Ctrl+Z takes the layer away",
          before["ids"] is not None and undone["ids"] == before["ids"],
          f"layers {undone['ids']!r} (before {before['ids']!r})")
    check("undo: one Ctrl+Z gives back the image as it was (clean: the generation was one "
          "undo step)", undone == before and before["dirty"] == "0",
          f"{undone} (before {before})")
    check("redo: Ctrl+Y brings back the same layer", redone == generated,
          f"{redone} (after the generation {generated})")


def main():
    plugin = gimptest.require_env("SNAPGEN_PLUGIN")
    locale_dir = gimptest.require_env("SNAPGEN_LOCALE_BUILD_DIR")
    profile = gimptest.GimpProfile(plugin, locale_dir)
    try:
        check("Korean catalogue built", "ko" in profile.languages, f"languages {profile.languages}")
        model = gimptest.test_model(profile.tmp)
        if check("test model", model is not None, str(model)):
            test_dialog(profile, model)
            test_cancel(profile, model)
            test_undo(profile, model)
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
