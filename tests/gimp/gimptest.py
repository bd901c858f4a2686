# gimptest.py: shared helpers of the GIMP tests: a throwaway GIMP profile with the built plug-in
# and its catalogues installed, Script-Fu batch runs under a timeout, a test model, PASS/FAIL lines.
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROCEDURE = "plug-in-snapgen-text-to-image"
DOMAIN = "snapgen-gimp"
GIMP_TIMEOUT = 300  # seconds for one GIMP start, batch and quit

failures = []
passes = []


def check(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}".rstrip(), flush=True)
    (passes if ok else failures).append(name)
    return ok


def finish():
    """Prints the closing count line and exits nonzero when a check failed."""
    if failures:
        print("failed checks: " + ", ".join(failures), flush=True)
    print(f"{len(passes)} passed, {len(failures)} failed", flush=True)
    sys.exit(1 if failures else 0)


def require_env(name):
    value = os.environ.get(name)
    if not value:
        print(f"FAIL setup: environment variable {name} is not set", flush=True)
        sys.exit(1)
    return value


def scheme_string(text):
    """A Script-Fu string literal for text."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class GimpProfile:
    """A temporary HOME whose GIMP 3 profile holds the plug-in as GIMP would find it installed by
    `meson install -Duser_install=true`: plug-ins/snapgen/snapgen and plug-ins/snapgen/locale/."""

    def __init__(self, plugin_path, locale_build_dir):
        self.tmp = tempfile.mkdtemp(prefix="snapgen-gimp-test-")
        self.home = os.path.join(self.tmp, "home")
        self.plugin_dir = os.path.join(self.home, ".config", "GIMP", "3.0", "plug-ins", "snapgen")
        os.makedirs(self.plugin_dir)
        shutil.copy2(plugin_path, os.path.join(self.plugin_dir, "snapgen"))
        self.languages = []
        for lang in sorted(os.listdir(locale_build_dir)):
            mo = os.path.join(locale_build_dir, lang, "LC_MESSAGES", DOMAIN + ".mo")
            if os.path.isfile(mo):
                target = os.path.join(self.plugin_dir, "locale", lang, "LC_MESSAGES")
                os.makedirs(target)
                shutil.copy2(mo, target)
                self.languages.append(lang)

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def env(self, **extra):
        env = {
            "HOME": self.home,
            "XDG_CONFIG_HOME": os.path.join(self.home, ".config"),
            "XDG_DATA_HOME": os.path.join(self.home, ".local", "share"),
            "XDG_CACHE_HOME": os.path.join(self.home, ".cache"),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "LC_ALL": "",
            "LANGUAGE": "",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
        }
        env.update(extra)
        return {k: v for k, v in env.items() if v != ""}

    def start_gimp(self, script, gui=False, display=None, **extra_env):
        """Starts GIMP on one Script-Fu batch command, after which it quits: the console, or the
        GUI under xvfb-run, or the GUI on display (an X display the test runs, e.g. to send keys
        to). Returns the subprocess.Popen; its stdout holds stdout + stderr."""
        if display is not None:
            command = ["gimp-3.0", "--no-splash"]
            extra_env["DISPLAY"] = display
        elif gui:
            command = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", "gimp-3.0", "--no-splash"]
        else:
            command = ["gimp-console-3.0", "-i"]
        command = ["timeout", str(GIMP_TIMEOUT)] + command + [
            "--quit", "--batch-interpreter=plug-in-script-fu-eval", "-b", script]
        return subprocess.Popen(command, env=self.env(**extra_env), cwd=self.tmp,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace")

    def run_gimp(self, script, gui=False, **extra_env):
        """Runs one Script-Fu batch command in GIMP (console, or the GUI under Xvfb) and quits.
        Returns (exit code, stdout + stderr)."""
        process = self.start_gimp(script, gui, **extra_env)
        output, _ = process.communicate()
        return process.returncode, output

    def cleanup(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


class Xvfb:
    """A private X server (Xvfb picks a free display number), for tests that send keys to GIMP's
    windows with xdotool."""

    def __init__(self):
        read_fd, write_fd = os.pipe()
        self.process = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1280x1024x24", "-nolisten",
             "tcp"], pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            number = pipe.readline().decode().strip()  # written once the server is ready
        if not number.isdigit():
            self.close()
            raise RuntimeError("Xvfb did not start")
        self.display = ":" + number

    def xdotool(self, *args):
        """Runs xdotool on this display; returns (exit code, stdout + stderr)."""
        result = subprocess.run(["xdotool", *args], env=dict(os.environ, DISPLAY=self.display),
                                capture_output=True, text=True, timeout=60)
        return result.returncode, (result.stdout + result.stderr).strip()

    def close(self):
        self.process.terminate()
        self.process.wait()


def wait_for_file(path, process, seconds):
    """Waits until path exists (True), process has ended or seconds have passed (False)."""
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def touch(path):
    with open(path, "w"):
        pass


def plugin_i18n_complaint(output):
    """GIMP's complaint when our catalogue folder is missing, or None."""
    for line in output.splitlines():
        if line.startswith(f"[{PROCEDURE}]") and "catalog directory does not exist" in line:
            return line
    return None


def sgtest_values(output):
    """The `SGTEST key=value` lines a test script printed, as a dict."""
    values = {}
    for line in output.splitlines():
        if line.startswith("SGTEST "):
            key, _, value = line[len("SGTEST "):].partition("=")
            values[key] = value
    return values


# Script-Fu helpers prepended to test scripts: (sg-say "key" value) prints "SGTEST key=value".
SCHEME_PRELUDE = """
(define (sg-text v)
  (cond ((string? v) v) ((number? v) (number->string v)) ((eq? v #t) "#t") ((eq? v #f) "#f")
        ((null? v) "") ((pair? v) (string-append (sg-text (car v))
                                                 (if (null? (cdr v)) "" " ") (sg-text (cdr v))))
        ((vector? v) (sg-text (vector->list v))) (else "?")))
(define (sg-say key v) (display (string-append "SGTEST " key "=" (sg-text v))) (newline))
(define (sg-layer-count image) (vector-length (car (gimp-image-get-layers image))))
(define (sg-image-count) (vector-length (car (gimp-get-images))))
"""

# More helpers: (sg-say-state "key" image) prints key.layers (the count), key.ids (the layer ids,
# top first), key.selected (the selected layers' ids) and key.dirty (1 or 0: GIMP makes an image
# dirty on every undo step it records, even an empty undo group, so a test that calls
# gimp-image-clean-all first sees any undo step as dirty 1).
STATE_PRELUDE = """
(define (sg-layer-ids image) (car (gimp-image-get-layers image)))
(define (sg-selected-ids image) (car (gimp-image-get-selected-layers image)))
(define (sg-say-state key image)
  (sg-say (string-append key ".layers") (sg-layer-count image))
  (sg-say (string-append key ".ids") (sg-layer-ids image))
  (sg-say (string-append key ".selected") (sg-selected-ids image))
  (sg-say (string-append key ".dirty") (gimp-image-is-dirty image)))
"""


def image_side(model, smallest):
    """The smallest image side ≥ smallest that the model accepts: a multiple of the pixel stride
    that `snapgen info` reports (64 for the tiny test model, 256 for the trained ones)."""
    result = subprocess.run([require_env("SNAPGEN"), "info", "--model", model],
                            capture_output=True, text=True)
    found = re.search(r"^pixel stride: (\d+)$", result.stdout, re.M)
    if result.returncode != 0 or not found:
        raise RuntimeError(f"snapgen info --model {model} failed: {result.stdout}{result.stderr}")
    stride = int(found.group(1))
    return -(-smallest // stride) * stride


def test_model(workdir):
    """SNAPGEN_TEST_MODEL, or a small random model made with the recipe (needs python3-torch)."""
    model = os.environ.get("SNAPGEN_TEST_MODEL")
    if model:
        return model
    model = os.path.join(workdir, "test-model")
    configs = os.path.join(ROOT, "weights", "configs")
    recipe = os.path.join(ROOT, "weights", "recipe")
    result = subprocess.run(
        [sys.executable, os.path.join(recipe, "make_random_model.py"),
         "--unet-config", os.path.join(configs, "test-unet-tiny.json"),
         "--decoder-config", os.path.join(configs, "test-decoder-tiny.json"),
         "--out", model, "--seed", "11",
         "--conditioning", os.path.join(model, "conditioning", "default.safetensors")],
        env=dict(os.environ, PYTHONPATH=recipe), capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stdout + result.stderr, flush=True)
        return None
    return model
