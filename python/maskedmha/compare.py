"""`maskedmha compare`: the fused graph (our kernel) against its decomposition (stock ORT) on the
same inputs — structure, agreement and speed in one table."""
from __future__ import annotations

import collections
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from . import DOMAIN, OP_TYPE
from .decompose import decompose
from .inputs import random_feeds
from .session import session_options


@dataclass
class GraphReport:
    name: str
    nodes: int
    histogram: dict[str, int]
    median_ms: float = float("nan")
    outputs: list = field(default_factory=list, repr=False)


@dataclass
class Comparison:
    fused: GraphReport
    decomposed: GraphReport
    max_abs_diff: float
    max_rel_diff: float
    nan_mismatch: int

    @property
    def speedup(self) -> float:
        return self.decomposed.median_ms / self.fused.median_ms


def _histogram(model: onnx.ModelProto) -> dict[str, int]:
    names = (f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
             for n in model.graph.node)
    return dict(collections.Counter(names).most_common())


def _session(model: onnx.ModelProto, with_library: bool, threads: int | None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if with_library:
        opts = session_options(opts)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _diff(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    mismatch = int(np.count_nonzero(nan_a != nan_b))
    ok = ~(nan_a | nan_b)
    if not ok.any():
        return 0.0, 0.0, mismatch
    abs_diff = float(np.max(np.abs(a[ok] - b[ok])))
    scale = float(np.max(np.abs(b[ok])))
    return abs_diff, abs_diff / scale if scale else abs_diff, mismatch


def compare(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray] | None = None,
            runs: int = 20, threads: int | None = None, sizes: dict[str, int] | None = None) -> Comparison:
    """Run ``model`` fused (with our library) and decomposed (without it) on the same feeds."""
    if isinstance(model, str):
        model = onnx.load(model)
    if not any(n.domain == DOMAIN and n.op_type == OP_TYPE for n in model.graph.node):
        raise ValueError(f"the model holds no {DOMAIN}::{OP_TYPE} node: nothing to compare")
    decomposed = decompose(model)
    feeds = feeds if feeds is not None else random_feeds(model, sizes)
    reports = []
    sessions = []
    for name, m, lib in (("fused", model, True), ("decomposed", decomposed, False)):
        sess = _session(m, lib, threads)
        rep = GraphReport(name, len(m.graph.node), _histogram(m))
        rep.outputs = sess.run(None, feeds)  # also the warm-up run
        reports.append(rep)
        sessions.append(sess)
    # Interleave the timed runs so machine noise hits both graphs alike.
    times = [[], []]
    for _ in range(max(1, runs)):
        for i, sess in enumerate(sessions):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times[i].append((time.perf_counter() - t0) * 1e3)
    for rep, t in zip(reports, times):
        rep.median_ms = statistics.median(t)
    worst_abs = worst_rel = 0.0
    nan_mismatch = 0
    for a, b in zip(reports[0].outputs, reports[1].outputs):
        d_abs, d_rel, d_nan = _diff(a, b)
        worst_abs, worst_rel = max(worst_abs, d_abs), max(worst_rel, d_rel)
        nan_mismatch += d_nan
    return Comparison(reports[0], reports[1], worst_abs, worst_rel, nan_mismatch)


def _histogram_text(hist: dict[str, int], limit: int = 6) -> str:
    items = list(hist.items())
    text = ", ".join(f"{k}×{v}" for k, v in items[:limit])
    if len(items) > limit:
        text += f", … (+{len(items) - limit} op types)"
    return text


def format_table(c: Comparison) -> str:
    rows = [
        ("", "fused (maskedmha kernel)", "decomposed (stock ORT)"),
        ("nodes", str(c.fused.nodes), str(c.decomposed.nodes)),
        ("op histogram", _histogram_text(c.fused.histogram), _histogram_text(c.decomposed.histogram)),
        ("median latency", f"{c.fused.median_ms:.3f} ms", f"{c.decomposed.median_ms:.3f} ms"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    line = lambda r: "| " + " | ".join(s.ljust(w) for s, w in zip(r, widths)) + " |"  # noqa: E731
    out = [line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows[1:]]
    out.append("")
    out.append(f"max |fused - decomposed|: {c.max_abs_diff:.3e} (relative {c.max_rel_diff:.3e})"
               + (f", NaN positions differ in {c.nan_mismatch} values" if c.nan_mismatch else ""))
    out.append(f"speed-up of fused over decomposed: {c.speedup:.2f}x")
    return "\n".join(out)
