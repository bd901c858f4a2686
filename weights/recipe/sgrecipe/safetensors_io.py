# safetensors_io.py: read and write .safetensors files with NumPy only (F32, F16, BF16).
"""Minimal safetensors reader/writer.

File layout: u64 little-endian header size N, N bytes of JSON header
({name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}),
then the raw little-endian tensor bytes.
"""
import json
import struct

import numpy as np

try:
    import torch
except ImportError:  # torch is optional here; tensors may be NumPy arrays only
    torch = None

_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64,
                 "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                 "U8": np.uint8, "BOOL": np.bool_}
_DTYPE_NAMES = {np.dtype(v): k for k, v in _NUMPY_DTYPES.items()}
_ITEM_SIZE = {"BF16": 2, **{k: np.dtype(v).itemsize for k, v in _NUMPY_DTYPES.items()}}


def f32_to_bf16_bits(array):
    """Round float32 values to bfloat16 (nearest even) and return the raw uint16 bits."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    is_nan = np.isnan(array)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    rounded = ((bits + rounding) >> 16).astype(np.uint16)
    return np.where(is_nan, np.uint16(0x7FC0), rounded)


def bf16_bits_to_f32(bits):
    """Widen raw bfloat16 bits (uint16) to float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _to_bytes(value, dtype):
    """(dtype name, shape, bytes) of one tensor; dtype None keeps the tensor's own type."""
    if torch is not None and isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            array = value.contiguous().view(torch.int16).numpy().view(np.uint16)
            if dtype in (None, "BF16"):
                return "BF16", array.shape, array.tobytes()
            value = bf16_bits_to_f32(array)
        else:
            value = value.numpy()
    array = np.asarray(value)
    if dtype is None:
        dtype = _DTYPE_NAMES.get(array.dtype)
        if dtype is None:
            raise ValueError(f"unsupported NumPy dtype {array.dtype}")
    if dtype == "BF16":
        data = f32_to_bf16_bits(array.astype(np.float32))
    else:
        data = np.ascontiguousarray(array, dtype=_NUMPY_DTYPES[dtype])
    return dtype, array.shape, data.astype(data.dtype.newbyteorder("<")).tobytes()


def save_file(path, tensors, metadata=None, dtype=None):
    """Write tensors (name -> np.ndarray or torch.Tensor) to path.

    dtype: None keeps each tensor's type (torch bf16 stays BF16); "F32", "F16" or "BF16" converts
    all floating tensors. metadata: optional str -> str map stored as "__metadata__".
    """
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs, offset = [], 0
    for name in sorted(tensors):
        value = tensors[name]
        want = dtype
        if want is not None and not _is_float(value):
            want = None
        kind, shape, data = _to_bytes(value, want)
        header[name] = {"dtype": kind, "shape": [int(s) for s in shape],
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)  # keep tensor data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in blobs:
            f.write(data)


def _is_float(value):
    if torch is not None and isinstance(value, torch.Tensor):
        return value.is_floating_point()
    return np.issubdtype(np.asarray(value).dtype, np.floating)


def _read_header(f):
    size = struct.unpack("<Q", f.read(8))[0]
    if size > 16 * 1024 * 1024:  # as the engine (SG_SAFETENSORS_MAX_HEADER)
        raise ValueError(f"safetensors header of {size} bytes is too large")
    return json.loads(f.read(size).decode("utf-8")), 8 + size


def load_metadata(path):
    """The "__metadata__" string map of a safetensors file ({} when absent)."""
    with open(path, "rb") as f:
        header, _ = _read_header(f)
    return dict(header.get("__metadata__", {}))


def load_file(path, keep_dtype=False):
    """name -> np.ndarray. F16/BF16 are widened to float32 unless keep_dtype (then BF16 comes
    back as raw uint16 bits and F16 as float16)."""
    with open(path, "rb") as f:
        header, start = _read_header(f)
        f.seek(0, 2)
        file_size = f.tell()
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            kind, shape = info["dtype"], tuple(info["shape"])
            begin, end = info["data_offsets"]
            count = int(np.prod(shape, dtype=np.int64))
            if kind not in _ITEM_SIZE:
                raise ValueError(f"{path}: tensor {name} has unsupported dtype {kind}")
            if end - begin != count * _ITEM_SIZE[kind] or start + end > file_size:
                raise ValueError(f"{path}: tensor {name} has inconsistent data offsets")
            f.seek(start + begin)
            raw = f.read(end - begin)
            if kind == "BF16":
                array = np.frombuffer(raw, dtype="<u2").reshape(shape)
                array = array.copy() if keep_dtype else bf16_bits_to_f32(array).reshape(shape)
            else:
                array = np.frombuffer(raw, dtype=np.dtype(_NUMPY_DTYPES[kind]).newbyteorder("<"))
                array = array.reshape(shape).astype(_NUMPY_DTYPES[kind])
                if kind == "F16" and not keep_dtype:
                    array = array.astype(np.float32)
            out[name] = array
    return out
