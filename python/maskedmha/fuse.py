"""``maskedmha.fuse``: an ONNX file exported the stock way (``torch.onnx.export``, TorchScript or
dynamo exporter) -> the same model with every ``nn.MultiheadAttention`` subgraph replaced by ONE
``com.maskedmha::MaskedMHA`` node carrying its fallback function, as ``maskedmha.export`` writes.

Safety first: a replacement is kept only when the rewritten file gives the original file's numbers
(within 1e-5 relative, at the shapes the original runs at: two where it can, one where its baked
Reshape sizes allow only the export shape).  Everything else is left exactly as it was, with the
reason in the report.  The matcher is symbolic/fuse_match.py; this module finds shapes to run
at, runs, verifies and reports."""
from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from .symbolic.attach import attach_functions
from .symbolic.fuse_match import GraphIndex, Reject, apply, read_candidate

RTOL = 1e-5
_NP = {TensorProto.FLOAT: np.float32, TensorProto.BOOL: np.bool_, TensorProto.INT64: np.int64,
       TensorProto.INT32: np.int32, TensorProto.DOUBLE: np.float64,
       TensorProto.FLOAT16: np.float16}
# Sizes tried for symbolic dimensions, before the small integers found in the graph's constants
# (a TorchScript file with dynamic axes runs only at its export shape, baked into Reshapes).
_BASE_SIZES = [2, 3, 5, 7, 4, 6, 8, 9]
_MAX_TRIES = 6000
_SEARCH_SECONDS = 30.0


class FuseError(ValueError):
    """The file cannot be fused at all (it does not run, or no shape to verify at)."""


@dataclass
class ReportRow:
    softmax: str           # the anchor node
    status: str            # "fused" | "left unchanged"
    detail: str            # heads, masks, ... or the reason


def fuse(model: onnx.ModelProto | str, report: list | None = None) -> onnx.ModelProto:
    """A fused copy of ``model`` (a ModelProto or a path).  ``report``: a list that receives one
    :class:`ReportRow` per attention-like subgraph (Softmax) found."""
    if isinstance(model, str):
        model = onnx.load(model)
    original = _named(model)
    rows = report if report is not None else []
    shapes = working_feeds(original)
    refs = [_run(original, f, library=False) for f in shapes]
    probe = _probe(original, shapes[0])
    gi = GraphIndex(original, probe)
    current = copy.deepcopy(original)
    fused = 0
    for node in list(original.graph.node):
        if node.op_type != "Softmax":
            continue
        try:
            cand = read_candidate(gi, node)
        except Reject as exc:
            rows.append(ReportRow(node.name, "left unchanged", str(exc)))
            continue
        reason = None
        for roles in cand.roles:
            trial = copy.deepcopy(current)
            try:
                apply(trial, cand, roles, f"fused_mha_{fused}")
            except Reject as exc:
                reason = str(exc)
                break
            checked = attach_functions(copy.deepcopy(trial))
            bad = _disagreement(checked, shapes, refs)
            if bad is None:
                current = trial
                fused += 1
                rows.append(ReportRow(node.name, "fused", _describe(cand, roles, len(shapes))))
                reason = None
                break
            reason = f"numbers differ from the original: {bad}"
        if reason:
            rows.append(ReportRow(node.name, "left unchanged", reason))
    if fused:
        attach_functions(current)
    return current


def _describe(cand, roles, n_shapes) -> str:
    masks = [f"{'key_padding_mask' if r == 'kpm' else 'attn_mask'} {np.dtype(dt).name} "
             f"{rank}-D" for (_, dt, rank), r in zip(cand.masks, roles)]
    parts = [f"{cand.num_heads} heads", "packed" if "k_proj_weight" not in cand.weights
             else "kdim/vdim"]
    parts += masks
    if cand.is_causal:
        parts.append("causal")
    if "bias_k" in cand.weights:
        parts.append("bias_kv")
    if cand.add_zero_attn:
        parts.append("add_zero_attn")
    if cand.attn_weights:
        parts.append("weights " + ("averaged" if cand.average else "per head"))
    parts.append(f"verified at {n_shapes} shape{'s' if n_shapes > 1 else ''}")
    return ", ".join(parts)


def format_report(rows: list) -> str:
    """The --report table: one row per Softmax found."""
    head = ("Softmax node", "result", "details")
    table = [head] + [(r.softmax, r.status, r.detail) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(2)]
    lines = [f"| {a.ljust(widths[0])} | {b.ljust(widths[1])} | {c} |" for a, b, c in table]
    lines.insert(1, f"|{'-' * (widths[0] + 2)}|{'-' * (widths[1] + 2)}|---------|")
    if not rows:
        lines.append("(no Softmax node: nothing that looks like attention)")
    return "\n".join(lines)


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose main-graph nodes all have distinct names (the matcher refers to nodes by
    name)."""
    m = copy.deepcopy(model)
    seen = set()
    for i, n in enumerate(m.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.name or n.op_type}__fuse{i}"
        seen.add(n.name)
    return m


# --- running ---------------------------------------------------------------------------------

def _inputs(model):
    inits = {i.name for i in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def _feeds(model, sizes: dict, seed: int = 0) -> dict:
    """Random inputs: floats normal; bool inputs (masks) hide ~30% of the keys but never key 0,
    float inputs named *mask* likewise hold -inf there and random values elsewhere."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in _inputs(model):
        tt = vi.type.tensor_type
        dtype = _NP.get(tt.elem_type)
        if dtype is None:
            raise FuseError(f"input {vi.name!r} has an element type fuse cannot generate")
        shape = [d.dim_value if d.HasField("dim_value") else sizes[d.dim_param or "?"]
                 for d in tt.shape.dim]
        if dtype == np.bool_ or ("mask" in vi.name.lower() and dtype == np.float32):
            hidden = rng.random(shape) < 0.3
            if shape and shape[-1]:
                hidden[..., 0] = False
            feeds[vi.name] = hidden if dtype == np.bool_ else np.where(
                hidden, -np.inf, rng.standard_normal(shape)).astype(np.float32)
        elif np.issubdtype(dtype, np.integer):
            positive = [d for d in shape if d > 0]
            feeds[vi.name] = rng.integers(0, min(positive) if positive else 1,
                                          size=shape).astype(dtype)
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _session(model, library: bool) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    if library:
        from .session import session_options
        opts = session_options(opts)
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _run(model, feeds, library: bool):
    return _session(model, library).run(None, feeds)


def _dim_params(model) -> list:
    out = []
    for vi in _inputs(model):
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                name = d.dim_param or "?"
                if name not in out:
                    out.append(name)
    return out


def _constant_sizes(model) -> list:
    """Small positive integers in the graph's small int64 constants (candidate baked sizes)."""
    found = []
    tensors = [i for i in model.graph.initializer]
    tensors += [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute
                if a.name == "value"]
    for t in tensors:
        if t.data_type == TensorProto.INT64 and np.prod(t.dims, dtype=np.int64) <= 8:
            for v in numpy_helper.to_array(t).reshape(-1).tolist():
                if 1 <= v <= 64 and v not in found:
                    found.append(int(v))
    return found


def working_feeds(model: onnx.ModelProto, wanted: int = 2) -> list:
    """Up to ``wanted`` feeds dicts at different shapes at which ``model`` runs (stock ORT)."""
    dims = _dim_params(model)
    sess = _session(model, library=False)
    if not dims:
        feeds = _feeds(model, {})
        try:
            sess.run(None, feeds)
        except Exception as exc:  # noqa: BLE001 - ORT raises several exception types
            raise FuseError(f"the model does not run on random inputs: "
                            f"{' '.join(str(exc).split())[:300]}") from None
        return [feeds]
    values = list(dict.fromkeys(_BASE_SIZES + _constant_sizes(model)))
    if len(dims) >= 4:
        values = values[:max(4, int(6000 ** (1 / len(dims))))]
    combos = sorted(itertools.product(values, repeat=len(dims)),
                    key=lambda c: (len(c) - len(set(c)), sum(c)))
    found, t0 = [], time.perf_counter()
    for tries, combo in enumerate(combos):
        if tries >= _MAX_TRIES or time.perf_counter() - t0 > _SEARCH_SECONDS:
            break
        sizes = dict(zip(dims, combo))
        feeds = _feeds(model, sizes, seed=len(found))
        try:
            sess.run(None, feeds)
        except Exception:  # noqa: BLE001 - a shape the baked sizes refuse
            continue
        found.append(feeds)
        if len(found) == wanted:
            break
    if not found:
        raise FuseError(f"found no sizes for the symbolic dimensions {', '.join(dims)} at which "
                        "the model runs (tried the small sizes and those in its constants)")
    return found


def _probe(model, feeds) -> dict:
    """Every main-graph value at one run of ``model``."""
    m = copy.deepcopy(model)
    have = {o.name for o in m.graph.output}
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False)
        types = {vi.name: vi.type for vi in inferred.graph.value_info}
    except Exception:  # noqa: BLE001 - best effort
        types = {}
    for n in m.graph.node:
        for o in n.output:
            if o and o not in have:
                vi = m.graph.output.add()
                vi.name = o
                if o in types:
                    vi.type.CopyFrom(types[o])
                have.add(o)
    sess = _session(m, library=False)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds))) | feeds


def _disagreement(fused, shapes, refs) -> str | None:
    """None when ``fused`` gives ``refs`` at every feeds dict, else what differs."""
    try:
        sess = _session(fused, library=_library_available())
    except Exception as exc:  # noqa: BLE001
        return f"the rewritten model does not load: {' '.join(str(exc).split())[:200]}"
    for feeds, ref in zip(shapes, refs):
        try:
            got = sess.run(None, feeds)
        except Exception as exc:  # noqa: BLE001
            return f"the rewritten model fails: {' '.join(str(exc).split())[:200]}"
        for g, r in zip(got, ref):
            g, r = np.asarray(g), np.asarray(r)
            if g.shape != r.shape:
                return f"output shape {list(g.shape)} != {list(r.shape)}"
            if g.dtype.kind == "f":
                gn, rn = np.isnan(g), np.isnan(r)
                if not np.array_equal(gn, rn):
                    return "NaN at other positions"
                ok = ~rn
                if ok.any():
                    scale = max(1.0, float(np.max(np.abs(r[ok]))))
                    err = float(np.max(np.abs(g[ok].astype(np.float64) - r[ok])))
                    if err > RTOL * scale:
                        return f"max |diff| {err:.2e} > {RTOL * scale:.1e}"
            elif not np.array_equal(g, r):
                return "non-float output differs"
    return None


_LIB = None


def _library_available() -> bool:
    """Verification runs the kernel when the library loads, else the fallback function."""
    global _LIB
    if _LIB is None:
        try:
            from .session import session_options
            session_options()
            _LIB = True
        except Exception:  # noqa: BLE001 - LibraryNotFoundError / LibraryLoadError
            _LIB = False
    return _LIB


__all__ = ["fuse", "format_report", "ReportRow", "FuseError", "working_feeds"]
