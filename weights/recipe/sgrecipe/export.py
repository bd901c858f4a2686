# export.py: writes and reads SnapGen model folders (diffusers-like layout, weights/README.md).
"""Model folder I/O: model_index.json, unet/, decoder/, scheduler/."""
import json
import os
import re

import torch

from . import decoder as decoder_module
from . import unet as unet_module
from .safetensors_io import load_file, save_file

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
# The same weights in bf16 (Hugging Face's variant naming), which the engine reads in bf16 mode.
BF16_VARIANT_FILE = "diffusion_pytorch_model.bf16.safetensors"
DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", None: "F32"}


def _write_json(path, value):
    """Indented JSON with lists of plain values kept on one line."""
    text = json.dumps(value, indent=2)
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]",
                  lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    with open(path, "w") as f:
        f.write(text + "\n")


def _write_part(folder, name, module, config, dtype):
    part = os.path.join(folder, name)
    os.makedirs(part, exist_ok=True)
    _write_json(os.path.join(part, "config.json"), config)
    tensors = {k: v.detach().float() for k, v in module.state_dict().items()}
    save_file(os.path.join(part, WEIGHTS_FILE), tensors, {"format": "pt"}, dtype=DTYPES[dtype])


def write_model_folder(path, unet, unet_cfg, decoder, dec_cfg, sched_cfg, extra_index=None,
                       dtype="f32"):
    """Writes a complete model folder (weights as f32, f16 or bf16)."""
    os.makedirs(os.path.join(path, "scheduler"), exist_ok=True)
    index = {"_class_name": "SnapGenPipeline",
             "unet": ["snapgen", "SnapGenUNet"],
             "decoder": ["snapgen", "SnapGenTinyDecoder"],
             "scheduler": ["snapgen", "FlowMatchEulerScheduler"]}
    index.update(extra_index or {})
    _write_json(os.path.join(path, "model_index.json"), index)
    _write_part(path, "unet", unet, unet_module.full_config(unet_cfg), dtype)
    _write_part(path, "decoder", decoder, decoder_module.full_config(dec_cfg), dtype)
    _write_json(os.path.join(path, "scheduler", "scheduler_config.json"), sched_cfg)


def write_bf16_variant(part):
    """Writes part/BF16_VARIANT_FILE from part/WEIGHTS_FILE (every float tensor rounded to bf16),
    through a temporary file so that a failure leaves no partial variant. Returns its path."""
    target = os.path.join(part, BF16_VARIANT_FILE)
    temporary = target + ".partial"
    tensors = load_file(os.path.join(part, WEIGHTS_FILE))
    try:
        save_file(temporary, tensors, {"format": "pt"}, dtype="BF16")
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return target


def read_json(path):
    with open(path) as f:
        return json.load(f)


def load_model_folder(path):
    """(unet, decoder, scheduler config) from a model folder, as float32 modules in eval mode."""
    modules = []
    for name, cls in (("unet", unet_module.SnapGenUNet), ("decoder", decoder_module.TinyDecoder)):
        part = os.path.join(path, name)
        module = cls(read_json(os.path.join(part, "config.json")))
        state = {}
        for file in sorted(os.listdir(part)):
            if file.endswith(".safetensors"):
                state.update(load_file(os.path.join(part, file)))
        module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
        modules.append(module.eval())
    sched = read_json(os.path.join(path, "scheduler", "scheduler_config.json"))
    return modules[0], modules[1], sched


def load_conditioning(path, prefix=""):
    """(context [S, D], pooled [P] or None, mask [S] or None) as tensors from a conditioning file."""
    tensors = load_file(path)

    def get(name):
        value = tensors.get(prefix + name)
        return None if value is None else torch.from_numpy(value.copy())

    return get("context"), get("pooled"), get("context_mask")
