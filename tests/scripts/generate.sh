#!/usr/bin/env bash
# generate.sh: builds the runner and generates an image; with no options it makes out.png from the
# README's example prompt with the default model in weights/default.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/scripts/build.sh >/dev/null
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--prompt "a red circle to the left of a blue square" --seed 1 --output out.png)
model=weights/default
if [ ! -f "$model/model_index.json" ]; then
  # No trained default model yet: a small model with random weights made by the recipe, with a
  # fixed conditioning file (the text encoders are not built yet). The image is noise-like.
  model=build/demo-model
  if [ ! -f "$model/model_index.json" ]; then
    PYTHONPATH=weights/recipe python3 weights/recipe/make_random_model.py \
      --unet-config weights/configs/test-unet-tiny.json \
      --decoder-config weights/configs/snapgen-decoder.json \
      --scheduler-config weights/configs/scheduler.json \
      --out "$model" --seed 1 --conditioning "$model/conditioning/default.safetensors" >&2
  fi
  echo "generate: no default model in weights/default yet; using $model (random weights)" >&2
fi
exec build/engine/snapgen generate --model "$model" "${args[@]}"
