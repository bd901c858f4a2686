#!/usr/bin/env python3
# selftest.py: quick checks of the recipe package (runs in well under a minute on 2 cores).
"""Prints PASS/FAIL lines; exits nonzero on any failure."""
import os
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_random_model import make_random_model, random_conditioning  # noqa: E402
from sgrecipe import decoder as dec, export, rng, sampler, unet as un  # noqa: E402
from sgrecipe.safetensors_io import load_file, load_metadata, save_file  # noqa: E402

CONFIGS = os.path.join(HERE, "..", "configs")
failures = []


def check(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}".rstrip())
    if not ok:
        failures.append(name)


def config(name):
    return export.read_json(os.path.join(CONFIGS, name))


def test_rng():
    try:
        rng.known_answer_test()
        check("rng_philox_kat", True)
    except AssertionError as e:
        check("rng_philox_kat", False, str(e))
    first = rng.normal(42, 0, [8])
    print("  rng.normal(42, 0, [8]) =", " ".join(f"{v:.9g}" for v in first))
    same = np.array_equal(rng.normal(42, 0, (2, 3, 5)).reshape(-1)[:8], first)
    big = rng.normal(7, 3, (200000,))
    check("rng_normal", same and abs(big.mean()) < 0.01 and abs(big.std() - 1) < 0.01,
          f"mean={big.mean():.4f} std={big.std():.4f}")


def test_safetensors(tmp):
    path = os.path.join(tmp, "t.safetensors")
    a = np.random.randn(3, 4).astype(np.float32)
    b = torch.randn(7, 2).bfloat16()
    c = np.random.randn(5).astype(np.float16)
    save_file(path, {"a": a, "b": b, "c": c}, {"kind": "test"})
    back = load_file(path)
    ok = np.array_equal(back["a"], a) and np.array_equal(back["b"], b.float().numpy()) \
        and np.array_equal(back["c"], c.astype(np.float32)) and back["b"].dtype == np.float32
    ok = ok and load_metadata(path) == {"kind": "test"}
    x = torch.randn(1000)
    save_file(path, {"x": x}, dtype="BF16")
    ok = ok and np.array_equal(load_file(path)["x"], x.bfloat16().float().numpy())
    check("safetensors_roundtrip", ok)


def test_parameter_counts():
    full = un.parameter_count(config("snapgen-unet-full.json"))
    check("unet_full_parameter_count", abs(full / 379e6 - 1) < 0.03, f"{full:,}")
    d = dec.parameter_count(config("snapgen-decoder.json"))
    check("decoder_parameter_count", abs(d / 1.38e6 - 1) < 0.05, f"{d:,}")
    for name in ("snapgen-decoder.json", "test-decoder-tiny.json", "test-decoder-tiny-dense.json"):
        m = dec.TinyDecoder(config(name))
        check(f"decoder_numel[{name}]", sum(p.numel() for p in m.parameters())
              == dec.parameter_count(config(name)))


def reference_attention(q, k, v, heads, kv_heads, d, mask):
    """SDPA with repeated K/V heads (the semantics attention() must have)."""
    b, n, _ = q.shape
    q = q.reshape(b, n, heads, d).transpose(1, 2)
    k = k.reshape(b, -1, kv_heads, d).transpose(1, 2).repeat_interleave(heads // kv_heads, 1)
    v = v.reshape(b, -1, kv_heads, d).transpose(1, 2).repeat_interleave(heads // kv_heads, 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    return out.transpose(1, 2).reshape(b, n, heads * d)


def test_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 64), torch.randn(2, 7, 32), torch.randn(2, 7, 32)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    got = un.attention(q, k, v, 4, 2, 16, mask)
    want = reference_attention(q, k, v, 4, 2, 16, mask)
    check("attention_gqa_masked", torch.allclose(got, want, atol=1e-5))
    mask[1, :] = False
    got = un.attention(q, k, v, 4, 2, 16, mask)
    check("attention_fully_masked_row_is_zero", bool((got[1] == 0).all()) and
          torch.allclose(got[0], want[0], atol=1e-5))


def test_unet(name):
    cfg = config(name)
    torch.manual_seed(1)
    model = un.SnapGenUNet(cfg).eval()
    check(f"unet_numel[{name}]", sum(p.numel() for p in model.parameters())
          == un.parameter_count(cfg))
    gen = torch.Generator().manual_seed(2)
    cond = random_conditioning(model.config, 6, gen)
    x = torch.randn(2, cfg["in_channels"], 16, 12, generator=gen)
    ctx = cond["context"][None].repeat(2, 1, 1)
    mask = cond["context_mask"][None].repeat(2, 1)
    pooled = cond["pooled"][None].repeat(2, 1) if "pooled" in cond else None
    with torch.no_grad():
        v, feats = model(x, torch.tensor([1000.0, 250.0]), ctx, mask, pooled, return_features=True)
        ctx2 = ctx.clone()
        ctx2[:, mask[0] < 0.5] = 5.0  # masked tokens must not matter
        v2 = model(x, torch.tensor([1000.0, 250.0]), ctx2, mask, pooled)
    check(f"unet_forward[{name}]", v.shape == x.shape and bool(torch.isfinite(v).all())
          and "kd" in feats and torch.equal(v, v2), f"std={v.std():.3f} kd={tuple(feats['kd'].shape)}")


def test_decoder():
    torch.manual_seed(3)
    for name in ("test-decoder-tiny.json", "test-decoder-tiny-dense.json"):
        model = dec.TinyDecoder(config(name)).eval()
        with torch.no_grad():
            image = model(torch.randn(1, 16, 5, 6))
        s = model.scale
        check(f"decoder_forward[{name}]", image.shape == (1, 3, 5 * s, 6 * s))
    enc = dec.TinyEncoder(config("test-decoder-tiny.json"))
    with torch.no_grad():
        latent = enc(torch.rand(1, 3, 16, 24))
    check("encoder_forward", latent.shape == (1, 16, 4, 6))


def test_sampling(tmp):
    t4 = sampler.timesteps(config("scheduler.json"))
    t2 = sampler.timesteps(config("scheduler.json"), 2)
    check("timesteps", t4 == [1.0, 0.75, 0.5, 0.25, 0.0] and
          np.allclose(t2, [1.0, 0.75, 0.0]), f"2 steps: {t2}")
    ucfg, dcfg = config("test-unet-tiny.json"), config("test-decoder-tiny.json")
    unet, decoder = make_random_model(ucfg, dcfg, seed=5)
    cond = random_conditioning(unet.config, 8, torch.Generator().manual_seed(6))
    sched = config("scheduler.json")
    image, latent = sampler.generate(unet, decoder, cond["context"], cond["pooled"],
                                     cond["context_mask"], 42, 4, 32, 48, sched)
    ok = image.shape == (3, 32, 48) and latent.shape == (16, 8, 12)
    ok = ok and bool(torch.isfinite(image).all()) and 0.0 < float(image.mean()) < 1.0
    check("generate_4_steps", ok, f"latent std={latent.std():.3f} image mean={image.mean():.3f}")
    image_cfg, _ = sampler.generate(unet, decoder, cond["context"], cond["pooled"],
                                    cond["context_mask"], 42, 4, 32, 48, sched, guidance=3.0)
    check("generate_cfg", bool(torch.isfinite(image_cfg).all()) and
          not torch.equal(image_cfg, image))
    folder = os.path.join(tmp, "model")
    export.write_model_folder(folder, unet, ucfg, decoder, dcfg, sched)
    unet2, decoder2, sched2 = export.load_model_folder(folder)
    image2, _ = sampler.generate(unet2, decoder2, cond["context"], cond["pooled"],
                                 cond["context_mask"], 42, 4, 32, 48, sched2)
    check("model_folder_roundtrip", torch.equal(image, image2))


def main():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        test_rng()
        test_safetensors(tmp)
        test_parameter_counts()
        test_attention()
        test_unet("test-unet-tiny.json")
        test_unet("test-unet-tiny-dense.json")
        test_decoder()
        test_sampling(tmp)
    print("selftest:", "FAILED " + ", ".join(failures) if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
