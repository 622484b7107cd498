"""``maskedmha.fuse``: an ONNX file exported the stock way (``torch.onnx.export``, TorchScript or
dynamo exporter) -> the same model with every ``nn.MultiheadAttention`` subgraph replaced by ONE
``com.maskedmha::MaskedMHA`` node carrying its fallback function, as ``maskedmha.export`` writes.

Safety first: a replacement is kept only when the rewritten file gives the original file's numbers
(within 1e-5 relative, at the shapes the original runs at: two where it can, one where its baked
Reshape sizes allow only the export shape).  Everything else is left exactly as it was, with the
reason in the report.  The matcher is symbolic/fuse_match.py; this module finds shapes to run
at, runs, verifies and reports.

Covered (torch 2.13, measured by tests/test_fuse.py): TorchScript exporter at opsets 14-20 (files
below 17, the fallback's opset, are converted first), dynamo exporter at 17-23, every case of
tests/helpers/cases.py and nn.Transformer.  Not covered: attention inside If/Loop/Scan bodies or
model-local functions (only the main graph is searched), fp16/bf16 models, weights that are graph
inputs rather than constants, files already optimized by ORT (fused MatMul+Add, com.microsoft
ops), other torch versions' exporters (untested; what is not recognised is reported, never
changed).  Fully masked rows: the stock graph returns NaN there; the node returns PyTorch's own
answer (``fully_masked_row`` "nan" when the weights are an output, else "zero").  The random
inputs never mask a whole row, so the verification does not see that difference."""
from __future__ import annotations

import copy
import itertools
import re
import time
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

from .symbolic.attach import attach_functions
from .symbolic.fuse_match import ANCHORS, GraphIndex, Reject, apply, read_candidate

RTOL = 1e-5
_NP = {TensorProto.FLOAT: np.float32, TensorProto.BOOL: np.bool_, TensorProto.INT64: np.int64,
       TensorProto.INT32: np.int32, TensorProto.DOUBLE: np.float64,
       TensorProto.FLOAT16: np.float16}
# Sizes tried for symbolic dimensions, before the small integers found in the graph's constants
# (a TorchScript file with dynamic axes runs only at its export shape, baked into Reshapes).
_BASE_SIZES = [2, 3, 5, 7, 4, 6, 8, 9]
_MAX_TRIES = 6000
_MAX_SHAPES = 40
_SEARCH_SECONDS = 30.0


class FuseError(ValueError):
    """The file cannot be fused at all (it does not run, or no shape to verify at)."""


@dataclass
class ReportRow:
    node: str              # the anchor: a Softmax or an ONNX Attention node ("(file)": a repair)
    status: str            # "fused" | "left unchanged"
    detail: str            # heads, masks, ... or the reason


def fuse(model: onnx.ModelProto | str, report: list | None = None) -> onnx.ModelProto:
    """A fused copy of ``model`` (a ModelProto or a path); ``model`` itself when nothing was
    fused.  ``report``: a list that receives one :class:`ReportRow` per attention-like subgraph
    (a Softmax or an ONNX Attention node of the main graph) and per repair made to the file.
    Raises FuseError when the file cannot be run (nothing can be verified)."""
    if isinstance(model, str):
        model = onnx.load(model)
    original = _named(model)
    repairs = _repair(original)
    before_upgrade = None
    if _opset(original) < _MIN_OPSET:
        # the fallback functions need opset 17 (the oldest maskedmha writes): convert the whole
        # file; the converted file's numbers are checked against the given one below
        before_upgrade = original
        try:
            original = onnx.version_converter.convert_version(original, _MIN_OPSET)
        except Exception as exc:  # noqa: BLE001 - the converter's own errors
            raise FuseError(f"opset {_opset(before_upgrade)} cannot be converted to "
                            f"{_MIN_OPSET}, which the fallback function needs: "
                            f"{' '.join(str(exc).split())[:200]}") from None
        repairs.append(f"opset {_opset(before_upgrade)} converted to {_MIN_OPSET} (the "
                       "fallback functions need it), checked to give the same numbers")
    rows = report if report is not None else []
    anchors = [n for n in original.graph.node if n.op_type in ANCHORS]
    shapes, refs, read = [], [], {}
    search = working_feeds(original) if anchors else iter(())
    # shapes until every anchor reads at one of them (a shape the original runs at only by
    # accident, a baked size that happens to fit, reads as nonsense: skip to the next one)
    while anchors and len(shapes) < _MAX_SHAPES:
        pending = [a for a in anchors if not isinstance(read.get(a.name), tuple)]
        if not pending and len(shapes) >= 2:
            break
        feeds = next(search, None)
        if feeds is None:
            break
        shapes.append(feeds)
        refs.append(_run(original, feeds, library=False))
        if before_upgrade is not None and _differs(refs[-1], _run(before_upgrade, feeds, False)):
            raise FuseError(f"the file converted from opset {_opset(before_upgrade)} to "
                            f"{_MIN_OPSET} gives other numbers")
        gi = GraphIndex(original, _probe(original, feeds))
        for a in pending:
            try:
                read[a.name] = (read_candidate(gi, a), len(shapes) - 1)
            except Reject as exc:
                read.setdefault(a.name, str(exc))
    current = copy.deepcopy(original)
    fused = 0
    for node in list(original.graph.node):
        if node.op_type not in ANCHORS:
            continue
        got = read.get(node.name, "no shape found at which it reads")
        if not isinstance(got, tuple):
            rows.append(ReportRow(node.name, "left unchanged", got))
            continue
        cand, primary = got
        reason = None
        for roles in cand.roles:
            trial = copy.deepcopy(current)
            try:
                apply(trial, cand, roles, f"fused_mha_{fused}")
            except Reject as exc:
                reason = str(exc)
                break
            checked = attach_functions(copy.deepcopy(trial))
            results = _compare(checked, shapes, refs)
            bad = next((r for r in results if r.startswith("differ")), None)
            if bad is None and results[primary] == "agree":
                current = trial
                fused += 1
                agreed = results.count("agree")
                refused = len(results) - agreed
                rows.append(ReportRow(node.name, "fused", _describe(cand, roles, agreed) + (
                    f" (refused {refused} shape(s) the original runs at only through a baked "
                    "size)" if refused else "")))
                reason = None
                break
            reason = f"numbers differ from the original: {bad or results[primary]}"
        if reason:
            rows.append(ReportRow(node.name, "left unchanged", reason))
    if not fused:
        return copy.deepcopy(model)  # left exactly as it was (no renamed nodes, no repairs)
    for text in repairs:
        rows.append(ReportRow("(file)", "repaired", text))
    attach_functions(current)
    return current


_MIN_OPSET = 17


def _opset(model: onnx.ModelProto) -> int:
    return next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)


def _repair(model: onnx.ModelProto) -> list:
    """In place: fix what makes a stock file invalid before anything runs it; what was done.

    torch 2.13's dynamo exporter writes opset 18 and converts down; at opset 17 it leaves
    ``Split(num_outputs=n)`` (an opset-18 attribute: ORT refuses the file).  Before opset 18,
    Split without ``split`` sizes cuts into as many equal parts as it has outputs, which is
    what ``num_outputs`` asks when the axis divides evenly (ORT fails the run otherwise)."""
    opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
    done = 0
    if opset < 18:
        for n in model.graph.node:
            if n.op_type == "Split" and any(a.name == "num_outputs" for a in n.attribute):
                keep = [a for a in n.attribute if a.name != "num_outputs"]
                del n.attribute[:]
                n.attribute.extend(keep)
                done += 1
    return [f"{done} Split node(s) with the opset-18 attribute num_outputs in an opset-{opset} "
            "file (torch's dynamo exporter down-conversion) rewritten as equal splits"] \
        if done else []


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
    head = ("attention (Softmax / Attention node)", "result", "details")
    table = [head] + [(r.node, r.status, r.detail) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(2)]
    lines = [f"| {a.ljust(widths[0])} | {b.ljust(widths[1])} | {c} |" for a, b, c in table]
    lines.insert(1, f"|{'-' * (widths[0] + 2)}|{'-' * (widths[1] + 2)}|---------|")
    if not rows:
        lines.append("(no Softmax or Attention node: nothing that looks like attention)")
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


_NAME = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


def _split_dims(dims: list):
    """(free symbols, derived dims): the dynamo exporter names a dimension computed from others
    like ``4*s5``; only the free symbols are searched, the derived ones are evaluated."""
    derived = [d for d in dims if not _NAME.fullmatch(d)]
    free = [d for d in dims if _NAME.fullmatch(d)]
    for d in derived:
        for name in _NAME.findall(d):
            if name not in free:
                free.append(name)
    return free, derived


def _evaluate(expr: str, sizes: dict):
    if not re.fullmatch(r"[A-Za-z_0-9*+\- ()/]+", expr):
        return None
    try:
        value = eval(expr, {"__builtins__": {}}, dict(sizes))  # noqa: S307 - checked above
    except Exception:  # noqa: BLE001
        return None
    return int(value) if float(value).is_integer() and value > 0 else None


def _partitions(items: list):
    """Set partitions of ``items``, finest (all apart) first, coarser ones after."""
    def rec(rest):
        if not rest:
            yield []
            return
        first, tail = rest[0], rest[1:]
        for part in rec(tail):
            yield [[first]] + part
            for i in range(len(part)):
                yield part[:i] + [[first] + part[i]] + part[i + 1:]
    return sorted(rec(list(items)), key=len, reverse=True)


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


# Block sizes of the first and the second shape tried per partition: all different, so a
# key_padding_mask (B, S) cannot pass for an attn_mask (L, S).
_FIRST, _SECOND = [2, 5, 7, 3, 11, 13, 4, 6], [3, 4, 9, 5, 6, 8, 10, 12]


def working_feeds(model: onnx.ModelProto):
    """Feeds dicts, at different shapes, at which ``model`` runs (stock ORT), best first; a
    generator (the caller stops when it has what it needs).

    Symbolic dimensions are searched: first which of them must be equal (set partitions, finest
    first, blocks at different sizes); a partition that runs at two sizes is the answer.  A
    TorchScript file with dynamic axes runs only at its export shape (baked into Reshapes) and
    sometimes at others by accident (a baked size that happens to fit); for those, sizes are
    tried one combination after the other, and the caller skips shapes that read as nonsense.
    Raises FuseError when the file runs nowhere."""
    dims = _dim_params(model)
    sess = _session(model, library=False)
    any_found = False

    def runs(sizes: dict, seed: int):
        full = dict(sizes)
        for d in derived:
            value = _evaluate(d, sizes)
            if value is None:
                return None
            full[d] = value
        feeds = _feeds(model, full, seed=seed)
        try:
            sess.run(None, feeds)
        except Exception:  # noqa: BLE001 - a shape the file refuses
            return None
        return feeds

    if not dims:
        feeds = _feeds(model, {})
        try:
            sess.run(None, feeds)
        except Exception as exc:  # noqa: BLE001 - ORT raises several exception types
            raise FuseError(f"the model does not run on random inputs: "
                            f"{' '.join(str(exc).split())[:300]}") from None
        yield feeds
        return
    free, derived = _split_dims(dims)
    t0 = time.perf_counter()
    accidental = []
    for part in _partitions(free)[:300]:
        if len(part) > len(_FIRST):
            continue
        found = []
        for values in (_FIRST, _SECOND):
            sizes = {d: values[i] for i, block in enumerate(part) for d in block}
            feeds = runs(sizes, seed=len(found))
            if feeds is not None:
                found.append(feeds)
        if len(found) == 2:
            yield from found  # consistent sizes: the file runs at more than one shape
            return
        accidental += found
        if time.perf_counter() - t0 > _SEARCH_SECONDS / 2:
            break
    yield from accidental
    any_found = bool(accidental)
    # ORT's Attention (opset 23) refuses a (B, H, 1, S) key padding mask unless L == 1: a
    # dynamo file with one runs only at length 1 there.  Try each block at size 1.
    for part in _partitions(free)[:60]:
        hit = False
        for one in range(len(part)):
            sizes = {d: 1 if i == one else _FIRST[i] for i, block in enumerate(part)
                     for d in block}
            feeds = runs(sizes, seed=0)
            if feeds is not None:
                any_found = hit = True
                yield feeds
                break
        if hit:
            break
    values = list(dict.fromkeys(_BASE_SIZES + _constant_sizes(model)))
    if len(free) >= 4:
        values = values[:max(4, int(_MAX_TRIES ** (1 / len(free))))]
    combos = sorted(itertools.product(values, repeat=len(free)),
                    key=lambda c: (len(c) - len(set(c)), sum(c)))
    for tries, combo in enumerate(combos):
        if tries >= _MAX_TRIES or time.perf_counter() - t0 > _SEARCH_SECONDS:
            break
        feeds = runs(dict(zip(free, combo)), seed=tries)
        if feeds is not None:
            any_found = True
            yield feeds
    if not any_found:
        raise FuseError(f"found no sizes for the symbolic dimensions {', '.join(dims)} at which "
                        "the model runs (tried the small sizes and those in its constants)")


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


def _compare(fused, shapes, refs) -> list:
    """Per feeds dict: "agree", "refused: ..." (the rewritten model raises an error) or
    "differs: ..." (it runs and gives other numbers)."""
    try:
        sess = _session(fused, library=_library_available())
    except Exception as exc:  # noqa: BLE001
        return [f"differs: the rewritten model does not load: "
                f"{' '.join(str(exc).split())[:200]}"] * len(shapes)
    out = []
    for feeds, ref in zip(shapes, refs):
        try:
            got = sess.run(None, feeds)
        except Exception as exc:  # noqa: BLE001
            out.append(f"refused: {' '.join(str(exc).split())[:200]}")
            continue
        out.append(_differs(got, ref) or "agree")
    return out


def _differs(got, ref) -> str | None:
    for g, r in zip(got, ref):
        g, r = np.asarray(g), np.asarray(r)
        if g.shape != r.shape:
            return f"differs: output shape {list(g.shape)} != {list(r.shape)}"
        if g.dtype.kind == "f":
            gn, rn = np.isnan(g), np.isnan(r)
            if not np.array_equal(gn, rn):
                return "differs: NaN at other positions"
            ok = ~rn
            if ok.any():
                scale = max(1.0, float(np.max(np.abs(r[ok]))))
                err = float(np.max(np.abs(g[ok].astype(np.float64) - r[ok])))
                if err > RTOL * scale:
                    return f"differs: max |diff| {err:.2e} > {RTOL * scale:.1e}"
        elif not np.array_equal(g, r):
            return "differs: a non-float output"
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


# --- the command line: `maskedmha fuse` and `maskedmha compare FUSED --original STOCK` -------

def fuse_file(path_in: str, path_out: str, report: bool = False) -> str:
    """Fuse the file ``path_in`` into ``path_out``; the summary line (and the report table)."""
    from .modelfile import UsageError, load_model

    model = load_model(path_in)
    rows = []
    try:
        fused = fuse(model, rows)
    except ValueError as exc:  # FuseError, or attach's refusal of the file's opset
        raise UsageError(f"{path_in}: {str(exc).removeprefix('maskedmha: ')}") from None
    onnx.save(fused, path_out)
    done = sum(r.status == "fused" for r in rows)
    found = sum(r.status != "repaired" for r in rows)
    text = (f"wrote {path_out}: {done} of {found} attention subgraph(s) fused into MaskedMHA "
            f"nodes, {len(model.graph.node)} -> {len(fused.graph.node)} nodes"
            + ("" if done == found else " (see --report for what was left unchanged and why)"
               if not report else ""))
    return text + ("\n\n" + format_report(rows) if report else "")


def compare_with_original(fused: onnx.ModelProto, original: onnx.ModelProto,
                          feeds: dict | None = None, runs: int = 20,
                          threads: int | None = None, sizes: dict | None = None):
    """``maskedmha.compare.compare``'s table for a fused file against the stock file it was made
    from (instead of against its own decomposition): same inputs, interleaved timed runs."""
    from .compare import Comparison, GraphReport, _diff, _histogram
    from .compare import _session as compare_session
    from .inputs import FeedInfo, random_feeds_described

    if feeds is None:
        feeds, infos = random_feeds_described(fused, sizes)
    else:
        infos = [FeedInfo(k, np.asarray(v).dtype.name, tuple(np.shape(v)), "given")
                 for k, v in feeds.items()]
    reports, sessions = [], []
    for name, m, lib in (("fused", fused, True), ("original", original, False)):
        sess = compare_session(m, lib, threads)
        rep = GraphReport(name, len(m.graph.node), _histogram(m))
        wanted = {i.name for i in sess.get_inputs()}
        try:
            rep.outputs = sess.run(None, {k: v for k, v in feeds.items() if k in wanted})
        except Exception as exc:  # noqa: BLE001 - ORT's Fail / InvalidArgument
            raise RuntimeError(f"the {name} file fails on these inputs"
                               + (" (a stock TorchScript file runs only at the sizes baked into "
                                  "it)" if name == "original" else "")
                               + f": {' '.join(str(exc).split())[:300]}") from None
        reports.append(rep)
        sessions.append((sess, {k: v for k, v in feeds.items() if k in wanted}))
    for _ in range(max(1, runs)):
        for rep, (sess, f) in zip(reports, sessions):
            t0 = time.perf_counter()
            sess.run(None, f)
            rep.times_ms.append((time.perf_counter() - t0) * 1e3)
    for rep in reports:
        rep.median_ms = float(np.median(rep.times_ms))
    worst_abs = worst_rel = 0.0
    nan = 0
    for a, b in zip(reports[0].outputs, reports[1].outputs):
        d_abs, d_rel, d_nan = _diff(a, b)
        worst_abs, worst_rel, nan = max(worst_abs, d_abs), max(worst_rel, d_rel), nan + d_nan
    return Comparison(reports[0], reports[1], worst_abs, worst_rel, nan, infos)


def format_pair(result) -> str:
    """compare's table with the right-hand column named for what it is: the original file."""
    from .compare import format_table
    return (format_table(result).replace("decomposed (stock ORT)", "original (stock ORT)")
            .replace("fused - decomposed", "fused - original")
            .replace("fused over decomposed", "fused over original"))
