"""Random feeds for an ONNX model's inputs, so `compare` can run any exported file.

Mask inputs get realistic content rather than noise: a bool mask hides a suffix of keys (padding)
but never a whole row, a float mask holds 0 and -inf the same way, so both graphs compute finite,
comparable numbers."""
from __future__ import annotations

import numpy as np
import onnx

_NP = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.BOOL: np.bool_, onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32, onnx.TensorProto.FLOAT16: np.float16,
}


def _dims(value_info: onnx.ValueInfoProto, sizes: dict[str, int], default: int) -> list[int]:
    out = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        else:
            out.append(sizes.get(d.dim_param, default))
    return out


def _padding(shape: list[int], rng: np.random.Generator) -> np.ndarray:
    """True where a key is padding: a random-length suffix of the last axis, key 0 always kept."""
    hidden = np.zeros(shape, dtype=bool)
    if not shape or shape[-1] == 0:
        return hidden
    flat = hidden.reshape(-1, shape[-1])
    for row in flat:
        valid = rng.integers(1, shape[-1] + 1)
        row[valid:] = True
    return hidden


def random_feeds(model: onnx.ModelProto, sizes: dict[str, int] | None = None,
                 default_dim: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """One array per graph input (initializers excluded). ``sizes`` maps dim_param names to values."""
    rng = np.random.default_rng(seed)
    sizes = sizes or {}
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        elem = vi.type.tensor_type.elem_type
        shape = _dims(vi, sizes, default_dim)
        dtype = _NP.get(elem)
        if dtype is None:
            raise ValueError(f"input {vi.name!r}: element type {elem} is not supported by compare")
        if "mask" in vi.name.lower() and dtype in (np.bool_, np.float32):
            hidden = _padding(shape, rng)
            feeds[vi.name] = hidden if dtype == np.bool_ else np.where(hidden, -np.inf, 0).astype(np.float32)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            feeds[vi.name] = rng.integers(0, 10, size=shape).astype(dtype)
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
    return feeds
