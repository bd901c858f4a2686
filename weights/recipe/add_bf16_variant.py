#!/usr/bin/env python3
# add_bf16_variant.py: adds the bf16 copy of a model folder's UNet weights that the engine reads
# in bf16 mode (diffusion_pytorch_model.bf16.safetensors beside the f32 file).
"""Write MODEL/unet/diffusion_pytorch_model.bf16.safetensors from the folder's f32 UNet file.

In bf16 mode (snapgen --bf16) the engine then reads the UNet's matrices from this file's pages
instead of packing bf16 copies of the f32 ones in memory at the first step.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sgrecipe import export  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model folder (with unet/%s)" % export.WEIGHTS_FILE)
    args = parser.parse_args()
    part = os.path.join(args.model, "unet")
    if not os.path.isfile(os.path.join(part, export.WEIGHTS_FILE)):
        sys.exit(f"add_bf16_variant: {part} has no {export.WEIGHTS_FILE}")
    path = export.write_bf16_variant(part)
    print(json.dumps({"wrote": path, "bytes": os.path.getsize(path)}))


if __name__ == "__main__":
    main()
