# test_pipeline.py: end-to-end checks of the `snapgen` runner against the PyTorch recipe, plus its
# error handling (bad model files, bad arguments, unwritable outputs) and determinism.
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

from sgrecipe import export, quantize, sampler
from sgrecipe.safetensors_io import load_file, save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONFIGS = os.path.join(ROOT, "weights", "configs")
SNAPGEN = os.environ.get("SNAPGEN", os.path.join(ROOT, "build", "engine", "snapgen"))
failures = []


def check(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}".rstrip(), flush=True)
    if not ok:
        failures.append(name)


def run(*args):
    return subprocess.run([SNAPGEN, *args], capture_output=True, text=True)


def make_model(folder, seed, unet_config="test-unet-tiny.json",
               decoder_config="test-decoder-tiny.json"):
    subprocess.run([sys.executable, os.path.join(ROOT, "weights", "recipe", "make_random_model.py"),
                    "--unet-config", os.path.join(CONFIGS, unet_config),
                    "--decoder-config", os.path.join(CONFIGS, decoder_config),
                    "--out", folder, "--seed", str(seed),
                    "--conditioning", os.path.join(folder, "conditioning", "default.safetensors")],
                   check=True, capture_output=True)


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def reference_image(model, seed, steps, width, height, guidance):
    unet, decoder, sched = export.load_model_folder(model)
    context, pooled, mask = export.load_conditioning(
        os.path.join(model, "conditioning", "default.safetensors"))
    image, _ = sampler.generate(unet, decoder, context, pooled, mask, seed, steps, height, width,
                                sched, guidance)
    return sampler.to_uint8(image)


def engine_image(model, out, seed, steps, width, height, guidance, *extra):
    result = run("generate", "--model", model, "--seed", str(seed), "--steps", str(steps),
                 "--width", str(width), "--height", str(height), "--guidance", str(guidance),
                 "--output", out, "--quiet", *extra)
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        return None, result
    return np.asarray(Image.open(out).convert("RGB")), result


def test_against_recipe(tmp):
    model = os.path.join(tmp, "model")
    make_model(model, seed=int(np.random.randint(1 << 30)))
    seed = int(np.random.randint(1 << 31))
    for backend in ("onednn", "reference"):
        for steps, guidance, (w, h) in ((4, 1.0, (96, 64)), (3, 3.0, (64, 80))):
            out = os.path.join(tmp, f"out-{backend}-{steps}.png")
            got, _ = engine_image(model, out, seed, steps, w, h, guidance, "--backend", backend)
            want = reference_image(model, seed, steps, w, h, guidance)
            ok = got is not None and got.shape == want.shape
            value = psnr(got, want) if ok else 0.0
            check(f"pipeline {backend} steps={steps} guidance={guidance} {w}x{h}",
                  ok and value >= 40.0, f"psnr={value:.1f}dB seed={seed}")
    return model


def test_int8(tmp, model):
    """--int8: the engine against the recipe with every UNet matrix (the linear layers) replaced
    by its int8 values; and how far int8 moves the image from f32."""
    seed, steps, w, h = int(np.random.randint(1 << 31)), 4, 64, 64
    got, _ = engine_image(model, os.path.join(tmp, "int8.png"), seed, steps, w, h, 1.0, "--int8")
    f32, _ = engine_image(model, os.path.join(tmp, "f32.png"), seed, steps, w, h, 1.0)
    unet, decoder, sched = export.load_model_folder(model)
    quantize.int8_linears(unet)
    context, pooled, mask = export.load_conditioning(
        os.path.join(model, "conditioning", "default.safetensors"))
    image, _ = sampler.generate(unet, decoder, context, pooled, mask, seed, steps, h, w, sched, 1.0)
    want = sampler.to_uint8(image)
    ok = got is not None and f32 is not None and got.shape == want.shape
    value = psnr(got, want) if ok else 0.0
    check("--int8 matches the recipe with int8-quantized UNet matrices", ok and value >= 40.0,
          f"psnr={value:.1f}dB seed={seed}")
    moved = psnr(got, f32) if ok else 0.0
    check("--int8 changes the image, a little", ok and 20.0 <= moved < float("inf"),
          f"psnr int8 vs f32 = {moved:.1f}dB")


def test_png_and_determinism(tmp, model):
    a, b = os.path.join(tmp, "a.png"), os.path.join(tmp, "b.png")
    engine_image(model, a, 5, 4, 64, 64, 1.0, "--threads", "2", "--prompt", "a red circle")
    engine_image(model, b, 5, 4, 64, 64, 1.0, "--threads", "2", "--prompt", "a red circle")
    same = open(a, "rb").read() == open(b, "rb").read()
    check("determinism: same seed and threads give a byte-identical PNG", same)
    text = Image.open(a).text
    check("png text chunks carry prompt and seed",
          text.get("snapgen:prompt") == "a red circle" and text.get("snapgen:seed") == "5",
          str(text))
    c = os.path.join(tmp, "c.png")
    engine_image(model, c, 5, 4, 64, 64, 1.0, "--threads", "1")
    diff = np.abs(np.asarray(Image.open(a), np.int16) - np.asarray(Image.open(c), np.int16)).max()
    check("threads 1 vs 2 differ by at most 1 level", diff <= 1, f"max diff {diff}")
    d = os.path.join(tmp, "d.png")
    engine_image(model, d, 6, 4, 64, 64, 1.0)
    check("another seed gives another image",
          not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(d))))


def expect_error(name, args, code, must_mention, out=None):
    result = run(*args)
    lines = result.stderr.strip().splitlines()
    ok = result.returncode == code and len(lines) == 1 and must_mention in result.stderr
    if out is not None:
        ok = ok and not os.path.exists(out) and not any(
            f.startswith(os.path.basename(out)) for f in os.listdir(os.path.dirname(out)))
    check(f"error: {name}", ok, f"exit={result.returncode} stderr={result.stderr.strip()!r}")


def broken_copy(tmp, model, name, damage):
    copy = os.path.join(tmp, name)
    shutil.copytree(model, copy)
    weights = os.path.join(copy, "unet", "diffusion_pytorch_model.safetensors")
    damage(weights)
    return copy, weights


def test_errors(tmp, model):
    out = os.path.join(tmp, "err", "out.png")
    os.makedirs(os.path.dirname(out))
    gen = ["generate", "--width", "64", "--height", "64", "--output", out, "--quiet", "--model"]

    def truncate(path):
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size // 2)

    def corrupt_header(path):
        with open(path, "r+b") as f:
            f.seek(8)
            f.write(b"{\"oops")

    def huge_header(path):
        with open(path, "r+b") as f:
            f.write((1 << 62).to_bytes(8, "little"))

    def wrong_dtype(path):
        tensors = load_file(path)
        first = sorted(tensors)[0]
        save_file(path, {k: (v.astype(np.float64) if k == first else v)
                         for k, v in tensors.items()})

    def nan_weight(path):
        tensors = load_file(path)
        name = "conv_in.bias"
        tensors[name] = tensors[name].copy()
        tensors[name][0] = np.nan
        save_file(path, tensors)

    def missing_tensor(path):
        tensors = load_file(path)
        del tensors["conv_out.weight"]
        save_file(path, tensors)

    def wrong_shape(path):
        tensors = load_file(path)
        tensors["conv_in.bias"] = np.concatenate([tensors["conv_in.bias"], [0.5]]).astype(np.float32)
        save_file(path, tensors)

    for name, damage in (("truncated", truncate), ("corrupt-header", corrupt_header),
                         ("oversized-header", huge_header), ("wrong-dtype", wrong_dtype),
                         ("nan-weight", nan_weight), ("missing-tensor", missing_tensor),
                         ("wrong-shape", wrong_shape)):
        copy, weights = broken_copy(tmp, model, name, damage)
        # a missing tensor is missing from the whole folder, so the folder is named
        named = os.path.dirname(weights) if name == "missing-tensor" else weights
        expect_error(f"{name} safetensors names the file", gen + [copy], 3, named, out)

    # Just over the 16 MiB header limit, in a file long enough to hold such a header: refused by
    # the limit itself (a 100 MiB limit would have parsed 16 MiB of zeros as JSON).
    def header_over_limit(path):
        with open(path, "r+b") as f:
            f.write((16 * 1024 * 1024 + 1).to_bytes(8, "little"))
            f.truncate(max(os.path.getsize(path), 17 * 1024 * 1024))

    copy, weights = broken_copy(tmp, model, "header-over-16-mib", header_over_limit)
    expect_error("header of 16 MiB + 1 byte is over the limit", gen + [copy], 3,
                 f"{weights}: header length 16777217 exceeds the limit of 16777216 bytes", out)

    expect_error("missing model folder", gen + [os.path.join(tmp, "nowhere")], 4, "nowhere", out)
    expect_error("width not a multiple of the stride",
                 ["generate", "--model", model, "--width", "70", "--height", "64", "--output", out],
                 2, "multiple", out)
    expect_error("width zero", ["generate", "--model", model, "--width", "0", "--output", out],
                 2, "size", out)
    expect_error("width beyond the maximum",
                 ["generate", "--model", model, "--width", "8192", "--output", out], 2, "size", out)
    expect_error("steps 0", ["generate", "--model", model, "--steps", "0", "--output", out],
                 2, "--steps", out)
    expect_error("unwritable output",
                 ["generate", "--model", model, "--width", "64", "--height", "64", "--quiet",
                  "--output", "/nonexistent-dir/x.png"], 4, "/nonexistent-dir")
    expect_error("unknown option", ["generate", "--colour", "red"], 2, "--colour")


def test_info_and_bench():
    result = subprocess.run([SNAPGEN, "bench", "--unet-config",
                             os.path.join(CONFIGS, "test-unet-tiny.json"), "--decoder-config",
                             os.path.join(CONFIGS, "test-decoder-tiny.json"), "--size", "128"],
                            capture_output=True, text=True)
    check("bench runs a config with random weights",
          result.returncode == 0 and "unet step:" in result.stdout and "decoder:" in result.stdout,
          result.stderr.strip())
    tmp = tempfile.mkdtemp()
    try:
        for part, name in (("unet", "snapgen-unet-full.json"), ("decoder", "snapgen-decoder.json")):
            os.makedirs(os.path.join(tmp, part))
            shutil.copy(os.path.join(CONFIGS, name), os.path.join(tmp, part, "config.json"))
        result = run("info", "--model", tmp)
        counts = dict(line.split(": ") for line in result.stdout.strip().splitlines())
        unet = int(counts.get("unet parameters", 0))
        decoder = int(counts.get("decoder parameters", 0))
        check("full-size UNet within 3% of 379M", abs(unet - 379e6) <= 0.03 * 379e6, f"{unet}")
        check("SnapGen-size decoder about 1.4M", abs(decoder - 1.38e6) <= 0.05 * 1.38e6,
              f"{decoder}")
    finally:
        shutil.rmtree(tmp)


def test_bf16_variant(tmp):
    """--bf16 with the UNet's bf16 variant (unet/diffusion_pytorch_model.bf16.safetensors, whose
    matrices the products read in place): against the recipe with bf16-rounded UNet weights, and
    proof that the variant is what is read (a damaged variant is an error naming it in bf16 mode,
    while f32 runs ignore it). On a CPU without bf16 instructions --bf16 must be refused in words;
    the checks that need it are then listed as skipped (as test_ops does), not passed."""
    model = os.path.join(tmp, "model-bf16")
    make_model(model, seed=int(np.random.randint(1 << 30)))
    seed, steps, w, h = int(np.random.randint(1 << 31)), 4, 96, 64
    before, _ = engine_image(model, os.path.join(tmp, "f32-before.png"), seed, steps, w, h, 1.0)
    plain, result = engine_image(model, os.path.join(tmp, "plain-bf16.png"), seed, steps, w, h,
                                 1.0, "--bf16")
    has_bf16 = plain is not None
    if not has_bf16:
        check("--bf16 is refused in words on a CPU without bf16 instructions",
              result.returncode == 7 and "bf16 instructions" in result.stderr,
              f"exit={result.returncode} stderr={result.stderr.strip()!r}")
    variant = export.write_bf16_variant(os.path.join(model, "unet"))
    after, _ = engine_image(model, os.path.join(tmp, "f32-after.png"), seed, steps, w, h, 1.0)
    check("f32 runs ignore the bf16 variant (byte-identical image)",
          before is not None and after is not None and np.array_equal(before, after))
    skipped = ["--bf16 with the variant against the recipe", "--bf16 variant vs packed weights",
               "a NaN in a bf16 variant matrix", "a truncated bf16 variant"]
    if has_bf16:
        got, _ = engine_image(model, os.path.join(tmp, "bf16.png"), seed, steps, w, h, 1.0,
                              "--bf16")
        unet, decoder, sched = export.load_model_folder(model)
        with torch.no_grad():
            for parameter in unet.parameters():
                parameter.copy_(parameter.bfloat16().float())
        context, pooled, mask = export.load_conditioning(
            os.path.join(model, "conditioning", "default.safetensors"))
        image, _ = sampler.generate(unet, decoder, context, pooled, mask, seed, steps, h, w, sched,
                                    1.0)
        want = sampler.to_uint8(image)
        ok = got is not None and got.shape == want.shape
        value = psnr(got, want) if ok else 0.0
        # bf16 compute also rounds each product's input to bf16 (54 dB measured on this model)
        check("--bf16 with the bf16 variant matches the recipe with bf16 UNet weights",
              ok and value >= 40.0, f"psnr={value:.1f}dB seed={seed}")
        # the variant holds the f32 values rounded as the engine rounds them when it packs them
        check("--bf16 gives the same image from the variant as from packing the f32 weights",
              ok and psnr(got, plain) >= 40.0, f"psnr={psnr(got, plain):.1f}dB")

        # a NaN in the last value of the largest matrix: the scan of bf16 files must reach it
        tensors = load_file(variant, keep_dtype=True)
        largest = max((k for k in tensors if tensors[k].ndim == 2), key=lambda k: tensors[k].size)
        tensors[largest] = tensors[largest].copy()
        tensors[largest].reshape(-1)[-1] = 0x7fc0  # a bf16 NaN
        save_file(variant, {k: torch.from_numpy(v.view(np.int16)).view(torch.bfloat16)
                            for k, v in tensors.items()})
        out = os.path.join(tmp, "err-bf16.png")
        expect_error("a NaN in a bf16 variant matrix is named when --bf16 reads it",
                     ["generate", "--model", model, "--width", "64", "--height", "64", "--quiet",
                      "--bf16", "--output", out], 3, f"{largest}' contains NaN/Inf", out)
    with open(variant, "r+b") as f:
        f.truncate(os.path.getsize(variant) // 2)
    if has_bf16:
        expect_error("a truncated bf16 variant is named when --bf16 reads it",
                     ["generate", "--model", model, "--width", "64", "--height", "64", "--quiet",
                      "--bf16", "--output", out], 3, variant, out)
    f32, _ = engine_image(model, os.path.join(tmp, "f32-damaged.png"), seed, steps, w, h, 1.0)
    check("f32 runs do not read the damaged variant", f32 is not None and np.array_equal(f32, before))
    if not has_bf16:
        for name in skipped:
            print(f"SKIP {name} (no bf16 instructions on this CPU; not counted as passed)")


def main():
    torch.set_num_threads(2)
    tmp = tempfile.mkdtemp(prefix="sg-pipeline-")
    if sys.argv[1:] == ["--bf16"]:
        try:
            test_bf16_variant(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"{'FAILED: ' + ', '.join(failures) if failures else 'all bf16 checks run passed'}")
        return 1 if failures else 0
    try:
        model = test_against_recipe(tmp)
        test_png_and_determinism(tmp, model)
        test_int8(tmp, model)
        test_errors(tmp, model)
        test_info_and_bench()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'FAILED: ' + ', '.join(failures) if failures else 'all pipeline checks passed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
