# with_tiny_model.py: makes a tiny random model folder (weights/configs/test-*-tiny.json) in a
# temporary folder and runs PROGRAM MODEL_DIR [ARGS...] with it; exits with the program's status.
# Usage: python3 with_tiny_model.py PROGRAM [ARGS...]   (needs PYTHONPATH=weights/recipe, torch)
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONFIGS = os.path.join(ROOT, "weights", "configs")


def main():
    if len(sys.argv) < 2:
        print("usage: with_tiny_model.py PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="sg-tiny-model-")
    try:
        model = os.path.join(tmp, "model")
        subprocess.run([sys.executable, os.path.join(ROOT, "weights", "recipe",
                                                     "make_random_model.py"),
                        "--unet-config", os.path.join(CONFIGS, "test-unet-tiny.json"),
                        "--decoder-config", os.path.join(CONFIGS, "test-decoder-tiny.json"),
                        "--out", model, "--seed", "5", "--conditioning",
                        os.path.join(model, "conditioning", "default.safetensors")],
                       check=True, capture_output=True)
        return subprocess.run([sys.argv[1], model, *sys.argv[2:]]).returncode
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
