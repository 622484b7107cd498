"""Two builds of the kernel library side by side, in one interleaved run: did a change (a
refactoring, a new tile size) keep the speed?  Each point's fused graph gets one session per
library (each library registered on its own SessionOptions), both outputs are checked equal, then
both sessions are timed round-robin in shuffled order (timing.interleaved).

    python benchmarks/compare_builds.py OLD.so NEW.so [--grid quick|tiny] [--threads 2]

Prints, per point, each build's median and min (ms) and old/new of the medians (> 1: new faster).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import graphs  # noqa: E402
import timing  # noqa: E402
from grid import quick_grid, tiny_grid  # noqa: E402


def _session(model_bytes: bytes, library: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    # Without this the pool of the session that just ran keeps spinning and takes the cores the
    # other session is being timed on (as benchmarks/alternatives.py does for every ORT session).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.register_custom_ops_library(library)
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return platform.processor()
    isa = "AVX-512F" if " avx512f" in flags else "AVX2" if " avx2" in flags else "SSE"
    return f"{name} ({isa})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="the reference build (libmaskedmha_ops.so)")
    parser.add_argument("new", help="the build under test")
    parser.add_argument("--grid", choices=["quick", "tiny"], default="quick")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads per session")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timing per point")
    args = parser.parse_args(argv)
    for path in (args.old, args.new):
        if not os.path.isfile(path):
            parser.error(f"{path}: no such file")
    points = quick_grid() if args.grid == "quick" else tiny_grid()
    print(f"# {args.old} vs {args.new}: {_cpu()}, {args.threads} threads, onnxruntime {ort.__version__}")
    print("| point | old median (min) ms | new median (min) ms | old/new |")
    print("|---|---:|---:|---:|")
    ratios = []
    for p in points:
        w = graphs.make_weights(p.E)
        model = graphs.fused(p, w).SerializeToString()
        feeds = graphs.make_inputs(p)
        sessions = {"old": _session(model, args.old, args.threads),
                    "new": _session(model, args.new, args.threads)}
        outs = {k: s.run(None, feeds)[0] for k, s in sessions.items()}
        diff = float(np.nanmax(np.abs(outs["old"] - outs["new"]))) if outs["old"].size else 0.0
        if diff > 1e-4 * max(1.0, float(np.nanmax(np.abs(outs["old"])))):
            print(f"| {p.label} | builds disagree: max |diff| {diff:.2e} | | |")
            return 1
        ms = timing.interleaved({k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()},
                                budget_s=args.budget)
        old, new = timing.summary(ms["old"]), timing.summary(ms["new"])
        ratio = old["median_ms"] / new["median_ms"]
        ratios.append(ratio)
        print(f"| {p.label} | {old['median_ms']:.3f} ({old['min_ms']:.3f}) | "
              f"{new['median_ms']:.3f} ({new['min_ms']:.3f}) | {ratio:.3f} |", flush=True)
    print(f"\ngeometric mean old/new: {float(np.exp(np.mean(np.log(ratios)))):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
