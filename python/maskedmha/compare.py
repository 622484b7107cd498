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
from .inputs import FeedInfo, random_feeds_described
from .session import extensions_options, session_options


@dataclass
class GraphReport:
    name: str
    nodes: int
    histogram: dict[str, int]
    median_ms: float = float("nan")
    outputs: list = field(default_factory=list, repr=False)
    times_ms: list = field(default_factory=list, repr=False)

    @property
    def min_ms(self) -> float:
        return min(self.times_ms) if self.times_ms else float("nan")

    @property
    def max_ms(self) -> float:
        return max(self.times_ms) if self.times_ms else float("nan")


@dataclass
class Comparison:
    fused: GraphReport
    decomposed: GraphReport
    max_abs_diff: float
    max_rel_diff: float
    nan_mismatch: int
    inputs: list[FeedInfo] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.decomposed.median_ms / self.fused.median_ms

    @property
    def run_ratios(self) -> list[float]:
        """decomposed / fused time of each interleaved pair of runs: the spread of the speed-up
        (a min-over-max ratio would mix a quiet moment of one graph with a busy one of the other)."""
        return [d / f for f, d in zip(self.fused.times_ms, self.decomposed.times_ms) if f > 0]


def _histogram(model: onnx.ModelProto) -> dict[str, int]:
    names = (f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
             for n in model.graph.node)
    return dict(collections.Counter(names).most_common())


def _session(model: onnx.ModelProto, with_library: bool, threads: int | None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    # Both graphs keep any onnxruntime-extensions ops (a tokenizer in front): both need that
    # library when the model imports its domains; only the fused one gets ours.
    if with_library:
        opts = session_options(opts, model=model)
    else:
        opts = extensions_options(opts, model=model)
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
    from .decompose import decompose  # imports maskedmha.symbolic: only when comparing

    if isinstance(model, str):
        model = onnx.load(model)
    if not any(n.domain == DOMAIN and n.op_type == OP_TYPE for n in model.graph.node):
        raise ValueError(f"the model holds no {DOMAIN}::{OP_TYPE} node: nothing to compare")
    if feeds is None:
        feeds, infos = random_feeds_described(model, sizes)
    else:
        infos = [FeedInfo(k, np.asarray(v).dtype.name, tuple(np.shape(v)), "given")
                 for k, v in feeds.items()]
    decomposed = decompose(model)
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
        rep.times_ms = t
    worst_abs = worst_rel = 0.0
    nan_mismatch = 0
    for a, b in zip(reports[0].outputs, reports[1].outputs):
        d_abs, d_rel, d_nan = _diff(a, b)
        worst_abs, worst_rel = max(worst_abs, d_abs), max(worst_rel, d_rel)
        nan_mismatch += d_nan
    return Comparison(reports[0], reports[1], worst_abs, worst_rel, nan_mismatch, infos)


def _histogram_text(hist: dict[str, int], limit: int = 6) -> str:
    items = list(hist.items())
    text = ", ".join(f"{k}×{v}" for k, v in items[:limit])
    if len(items) > limit:
        text += f", … (+{len(items) - limit} op types)"
    return text


def format_inputs(infos: list[FeedInfo]) -> str:
    """One line per input: name, dtype, shape and where its values came from."""
    if not infos:
        return "inputs: none"
    rows = [(i.name, i.dtype, "(" + ", ".join(map(str, i.shape)) + ")", i.how) for i in infos]
    widths = [max(len(r[k]) for r in rows) for k in range(3)]
    return "inputs:\n" + "\n".join(
        "  " + "  ".join(s.ljust(w) for s, w in zip(r[:3], widths)) + "  " + r[3] for r in rows)


# Above this max/min ratio of one graph's latencies the machine was busy while timing: the
# medians are still the figure to quote, but say so rather than print a precise-looking number.
NOISY_SPREAD = 2.0


def _latency(r: GraphReport) -> str:
    return f"{r.min_ms:.3f} / {r.median_ms:.3f} / {r.max_ms:.3f} ms"


def format_table(c: Comparison) -> str:
    rows = [
        ("", "fused (maskedmha kernel)", "decomposed (stock ORT)"),
        ("nodes", str(c.fused.nodes), str(c.decomposed.nodes)),
        ("op histogram", _histogram_text(c.fused.histogram), _histogram_text(c.decomposed.histogram)),
        ("latency min / median / max", _latency(c.fused), _latency(c.decomposed)),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    line = lambda r: "| " + " | ".join(s.ljust(w) for s, w in zip(r, widths)) + " |"  # noqa: E731
    out = [format_inputs(c.inputs), ""] if c.inputs else []
    out += [line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows[1:]]
    out.append("")
    out.append(f"max |fused - decomposed|: {c.max_abs_diff:.3e} (relative {c.max_rel_diff:.3e})"
               + (f", NaN positions differ in {c.nan_mismatch} values" if c.nan_mismatch else ""))
    ratios = sorted(c.run_ratios)
    spread = (f" (ratio of medians; run by run over {len(ratios)} interleaved pairs: min "
              f"{ratios[0]:.2f}x, median {statistics.median(ratios):.2f}x, max {ratios[-1]:.2f}x)"
              if ratios else "")
    out.append(f"speed-up of fused over decomposed: {c.speedup:.2f}x{spread}")
    noisy = [r.name for r in (c.fused, c.decomposed)
             if r.times_ms and r.min_ms > 0 and r.max_ms / r.min_ms > NOISY_SPREAD]
    if noisy:
        out.append(f"note: {' and '.join(noisy)} latencies vary more than {NOISY_SPREAD:g}x from run "
                   "to run (a busy machine?): trust the medians, or use more --runs / --threads 1")
    return "\n".join(out)
