"""Feeds for an ONNX model's inputs, so `compare` can run any exported file: random ones, or the
user's .npz checked against the model's inputs (one-line errors, not ORT's).

Random mask inputs get realistic content rather than noise: a bool mask hides a suffix of keys
(padding) but never a whole row, a float mask holds 0 and -inf the same way, so both graphs
compute finite, comparable numbers.

Integer inputs are usually indices (token ids, positions, PyG edge indices) and random int64
values crash the graph (Gather/ScatterND out of range).  They get values in [0, m) where m is the
smallest positive size among the input's OWN axes: an index tensor is, in practice, sized by the
things it indexes (an edge_index (2, num_edges) into num_nodes >= 2 nodes, token ids (B, L) into a
vocabulary far larger than B or L), and 0 is valid for every non-empty axis; the values are still
varied, so a kernel that ignored them would show.  A graph that needs other values (e.g. indices
into a fixed table smaller than that) takes real inputs with --inputs.

String inputs (a model with an in-graph tokenizer, see maskedmha.text) get random sentences of
0 to ``MAX_WORDS`` words, some non-ASCII, one of them empty, so the padding to the longest row and
the key padding mask it implies are exercised; --inputs takes numpy string arrays (dtype '<U...',
what np.savez writes for a list of str)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx

from .modelfile import UsageError, check_readable_file

_NP = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.BOOL: np.bool_, onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32, onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.INT16: np.int16, onnx.TensorProto.UINT16: np.uint16,
    onnx.TensorProto.UINT32: np.uint32, onnx.TensorProto.UINT64: np.uint64,
}


WORDS = ("the", "a", "padding", "mask", "attention", "of", "sentence", "token", "naïve", "café",
         "数据", "模型", "😀", "it's", "12", "déjà", "vu", ",", ".")
MAX_WORDS = 12


def random_texts(shape: list[int], rng: np.random.Generator) -> np.ndarray:
    """Random sentences (object array of str) of 0 to MAX_WORDS words from WORDS; the first one
    empty, the lengths otherwise varied."""
    count = int(np.prod(shape)) if shape else 1
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(1, MAX_WORDS + 1))) for _ in range(count)]
    if texts:
        texts[0] = ""
    out = np.empty(count, dtype=object)
    out[:] = texts
    return out.reshape(shape)


def _is_string(vi: onnx.ValueInfoProto) -> bool:
    return vi.type.tensor_type.elem_type == onnx.TensorProto.STRING


@dataclass
class FeedInfo:
    """What `compare` fed one input, for the printed table."""
    name: str
    dtype: str
    shape: tuple
    how: str            # "given", "random normal", "padding mask", "integers in [0, 4)", ...


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller must feed (initializers that are also listed as inputs excluded)."""
    inits = {i.name for i in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def dim_names(model: onnx.ModelProto) -> list[str]:
    """The symbolic dimension names (dim_param) of the model's inputs, in order of appearance."""
    out: list[str] = []
    for vi in graph_inputs(model):
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value") and d.dim_param and d.dim_param not in out:
                out.append(d.dim_param)
    return out


def check_sizes(model: onnx.ModelProto, sizes: dict[str, int]) -> None:
    """Every --dim must name a symbolic dimension of an input: a typo would otherwise be ignored
    silently and the default size used."""
    known = dim_names(model)
    for name in sizes:
        if name not in known:
            have = ", ".join(known) if known else "none: every input dimension is fixed"
            raise UsageError(f"--dim {name}={sizes[name]}: the model's inputs have no dimension "
                             f"named {name!r} (symbolic dimensions: {have})")


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


def index_bound(shape: list[int]) -> int:
    """Exclusive upper bound of random integer values: the smallest positive axis size (see the
    module docstring), 1 (all zeros) for a scalar or an input without positive axes."""
    positive = [d for d in shape if d > 0]
    return min(positive) if positive else 1


def _elem_dtype(vi: onnx.ValueInfoProto):
    elem = vi.type.tensor_type.elem_type
    dtype = _NP.get(elem)
    if dtype is None:
        name = onnx.TensorProto.DataType.Name(elem) if elem else "not a tensor"
        raise UsageError(f"input {vi.name!r} has element type {name}, which compare cannot "
                         "generate: give the inputs with --inputs FILE.npz")
    return dtype


def random_feeds_described(model: onnx.ModelProto, sizes: dict[str, int] | None = None,
                           default_dim: int = 4, seed: int = 0
                           ) -> tuple[dict[str, np.ndarray], list[FeedInfo]]:
    """One array per graph input and a description of each. ``sizes`` maps dim_param names to
    values; other symbolic dimensions get ``default_dim``."""
    rng = np.random.default_rng(seed)
    sizes = sizes or {}
    feeds, infos = {}, []
    for vi in graph_inputs(model):
        shape = _dims(vi, sizes, default_dim)
        if _is_string(vi):
            feeds[vi.name] = random_texts(shape, rng)
            infos.append(FeedInfo(vi.name, "str", tuple(shape), f"random text (0 to {MAX_WORDS} "
                                  "words, some non-ASCII, the first one empty)"))
            continue
        dtype = _elem_dtype(vi)
        if "mask" in vi.name.lower() and dtype in (np.bool_, np.float32):
            hidden = _padding(shape, rng)
            feeds[vi.name] = hidden if dtype == np.bool_ else np.where(hidden, -np.inf, 0).astype(np.float32)
            how = "padding mask (a random suffix of each row hidden, never all of it)"
        elif dtype == np.bool_:
            feeds[vi.name] = rng.random(shape) < 0.5
            how = "random bool"
        elif np.issubdtype(dtype, np.integer):
            bound = index_bound(shape)
            feeds[vi.name] = rng.integers(0, bound, size=shape).astype(dtype)
            how = (f"integers in [0, {bound}) (index-safe: smallest axis of this input; "
                   "use --inputs for real indices)")
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
            how = "random normal"
        infos.append(FeedInfo(vi.name, np.dtype(dtype).name, tuple(shape), how))
    return feeds, infos


def random_feeds(model: onnx.ModelProto, sizes: dict[str, int] | None = None,
                 default_dim: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """One array per graph input (initializers excluded). ``sizes`` maps dim_param names to values."""
    return random_feeds_described(model, sizes, default_dim, seed)[0]


def load_feeds(path: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz file (np.savez), one line of error for anything else."""
    check_readable_file(path, "--inputs")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError/OSError/zipfile errors
        raise UsageError(f"--inputs {path} is not an .npz file written by numpy.savez "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise UsageError(f"--inputs {path} holds a single array (.npy); save one array per graph "
                         "input with numpy.savez(path, name=array, ...)")
    try:
        with data:
            return {k: data[k] for k in data.files}
    except Exception as exc:  # noqa: BLE001 - a member that is pickled or corrupt
        raise UsageError(f"--inputs {path}: cannot read its arrays ({exc})") from None


def check_feeds(model: onnx.ModelProto, feeds: dict[str, np.ndarray], path: str) -> list[FeedInfo]:
    """``feeds`` must give every graph input, nothing else, with the model's element type, rank
    and fixed sizes: ORT's own messages for these are a multi-line traceback."""
    where = f"--inputs {os.path.basename(path)}"
    inputs = graph_inputs(model)
    names = [vi.name for vi in inputs]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise UsageError(f"{where} lacks graph input(s) {', '.join(map(repr, missing))} "
                         f"(it holds: {', '.join(map(repr, feeds)) or 'nothing'})")
    extra = [n for n in feeds if n not in names]
    if extra:
        raise UsageError(f"{where} holds {', '.join(map(repr, extra))}, which the model has no "
                         f"input for (inputs: {', '.join(map(repr, names))})")
    infos = []
    for vi in inputs:
        arr = feeds[vi.name]
        if _is_string(vi):
            if arr.dtype.kind != "U":  # what np.savez writes for str; bytes or numbers are not text
                raise UsageError(f"{where}: {vi.name!r} is {arr.dtype}, the model expects text "
                                 "(a numpy str array, e.g. np.array(['a sentence', ...]))")
        else:
            want = np.dtype(_elem_dtype(vi))
            if arr.dtype != want:
                raise UsageError(f"{where}: {vi.name!r} is {arr.dtype}, the model expects {want}")
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                    for d in tt.shape.dim]
            if arr.ndim != len(dims):
                raise UsageError(f"{where}: {vi.name!r} has rank {arr.ndim} (shape {arr.shape}), "
                                 f"the model expects rank {len(dims)} ({', '.join(map(str, dims))})")
            for axis, (have, d) in enumerate(zip(arr.shape, dims)):
                if isinstance(d, int) and have != d:
                    raise UsageError(f"{where}: {vi.name!r} has size {have} on axis {axis}, the "
                                     f"model fixes it at {d} (shape {arr.shape})")
        infos.append(FeedInfo(vi.name, arr.dtype.name, tuple(arr.shape), "given"))
    return infos
