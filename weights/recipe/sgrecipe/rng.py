# rng.py: counter-based Philox-4x32-10 + Box-Muller noise in NumPy, bit-identical to engine/src/rng.c.
"""Seeded noise that is the same on every platform (weights/README.md "Seeds and noise").

Block b of stream s under seed k is Philox-4x32-10 with key = (k low 32 bits, k high 32 bits) and
counter = (b low 32 bits, b high 32 bits, s, 0). Normal element 2b is r·cos(2π u2) and element
2b+1 is r·sin(2π u2) with u1 = (w0 + 0.5)/2^32, u2 = (w1 + 0.5)/2^32, r = sqrt(-2 ln u1), computed
in double precision and rounded to float32. Uniform element i uses word 0 of block i:
lo + (hi - lo)·w0/2^32 (double, then float32).
"""
import numpy as np

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_MASK = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)


def philox4x32(counter, key, rounds=10):
    """Philox-4x32 over arrays. counter: 4 uint arrays (or ints), key: 2 uint values.
    Returns 4 uint32 arrays (the output words)."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & _MASK for c in counter)
    k0, k1 = (np.uint64(int(k) & 0xFFFFFFFF) for k in key)
    for r in range(rounds):
        if r > 0:  # the key is bumped between rounds
            k0 = (k0 + _W0) & _MASK
            k1 = (k1 + _W1) & _MASK
        p0 = _M0 * c0  # < 2^64: exact in uint64
        p1 = _M1 * c2
        hi0, lo0 = p0 >> _SHIFT, p0 & _MASK
        hi1, lo1 = p1 >> _SHIFT, p1 & _MASK
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return tuple(c.astype(np.uint32) for c in (c0, c1, c2, c3))


def blocks(seed, stream, first, count):
    """Output words of Philox blocks first .. first+count-1 of (seed, stream): 4 uint32 arrays."""
    index = np.arange(first, first + count, dtype=np.uint64)
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    counter = (index & _MASK, index >> _SHIFT, np.full(count, int(stream) & 0xFFFFFFFF, np.uint64),
               np.zeros(count, np.uint64))
    return philox4x32(counter, (seed & 0xFFFFFFFF, seed >> 32))


def _shape(shape):
    """An int or a sequence of ints as a tuple."""
    return tuple(int(s) for s in np.atleast_1d(shape))


def normal(seed, stream, shape):
    """Standard normal float32 array of the given shape (row-major element order)."""
    shape = _shape(shape)
    count = int(np.prod(shape, dtype=np.int64))
    w0, w1, _, _ = blocks(seed, stream, 0, (count + 1) // 2)
    u1 = (w0.astype(np.float64) + 0.5) / 4294967296.0
    u2 = (w1.astype(np.float64) + 0.5) / 4294967296.0
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    pairs = np.empty((u1.shape[0], 2), dtype=np.float64)
    pairs[:, 0] = radius * np.cos(angle)
    pairs[:, 1] = radius * np.sin(angle)
    return pairs.reshape(-1)[:count].astype(np.float32).reshape(shape)


def uniform(seed, stream, shape, lo=0.0, hi=1.0):
    """Uniform float32 values in [lo, hi): element i = lo + (hi - lo)·w0(block i)/2^32."""
    shape = _shape(shape)
    count = int(np.prod(shape, dtype=np.int64))
    w0 = blocks(seed, stream, 0, count)[0]
    u = w0.astype(np.float64) / 4294967296.0
    return (lo + (hi - lo) * u).astype(np.float32).reshape(shape)


def known_answer_test():
    """Random123 Philox-4x32-10 known-answer vectors; raises AssertionError on mismatch."""
    cases = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
              (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, key, want in cases:
        got = tuple(int(w) for w in philox4x32(counter, key))
        assert got == want, f"Philox KAT failed: {[hex(g) for g in got]} != {[hex(w) for w in want]}"
