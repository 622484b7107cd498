"""Benchmark the fused MaskedMHA kernel against ONNX Runtime's attention ops, the decomposed
graph, OpenVINO, torch.compile and PyTorch eager, interleaved, on the same inputs and weights.

    python benchmarks/run.py [--threads 2] [--grid quick|full|anchors|tiny] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import subprocess
import sys
import tempfile
import traceback

# PyTorch's OpenMP threads otherwise spin for a while after each eager run, taking a core from
# whichever session is timed next.  ORT's pools are run without spinning (see alternatives.py);
# torch gets the same policy.  Must be set before torch is imported.  (--spin turns both on.)
if "--spin" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# --isa lowers the instruction set of the fused kernel (MASKEDMHA_ISA) and of PyTorch (MKL and
# ATen's own kernels) to what a CPU without AVX-512 has, so the portable paths can be measured on
# this machine.  ORT's MLAS has no such switch: its alternatives keep the CPU's best ISA, hence
# --isa times fused and torch only unless --alternatives says otherwise.  Neither is OpenVINO
# limited: its f32 FullyConnected runs MLAS too (compiled primitive `gemm_mlas_f32`; with
# ONEDNN_MAX_CPU_ISA=AVX2 a 1024x768 . 768x2304 Linear ran at 466 GFLOP/s on 2 threads of an
# AMD EPYC whose AVX2 FMA peak is 248).  Read before torch is imported (both libraries read their
# variable once).
ISA_ENV = {
    # ONEDNN_MAX_CPU_ISA: oneDNN's cap (OpenVINO's other primitives; not its MLAS projections).
    "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "generic": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ATEN_CPU_CAPABILITY": "default"},
}


def _argv_value(flag: str):
    for i, a in enumerate(sys.argv):
        if a == flag and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


if _argv_value("--isa") in ISA_ENV:
    os.environ["MASKEDMHA_ISA"] = _argv_value("--isa")
    os.environ.update(ISA_ENV[_argv_value("--isa")])

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

import alternatives as A  # noqa: E402
import graphs  # noqa: E402
import memory  # noqa: E402
import report  # noqa: E402
import timing  # noqa: E402
from grid import GRIDS, Point  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"


def prepare(p: Point, alts, w, feeds, threads, spin):
    """Build, run once and check every alternative.  Returns (runners that matched PyTorch,
    per-alternative result dicts, ONNX models by name)."""
    ref = A.reference(p, w, feeds)
    runners, res, models = {}, {}, {}
    for name in alts:
        try:
            if name not in A.TORCH_BASED:
                models[name] = A.model_for(name, p, w)
            runner = A.make_runner(name, p, w, feeds, threads, spin, models.get(name))
            ok, abs_diff, rel = A.check(runner(), A.expected(name, ref, feeds))
        except graphs.NotApplicable as exc:
            res[name] = {"status": "n/a", "note": str(exc)}
            continue
        except NotImplementedError as exc:
            res[name] = {"status": "n/a", "note": _short(exc)}
            continue
        except Exception as exc:  # noqa: BLE001 - reported, never timed
            res[name] = {"status": "error", "note": _short(exc)}
            continue
        res[name] = {"status": "ok" if ok else "FAIL", "max_abs_diff": abs_diff, "rel_diff": rel}
        if ok:
            runners[name] = runner
        else:
            res[name]["note"] = f"max |diff| {abs_diff:.3g} (relative {rel:.3g} > {A.REL_TOL:g}) vs PyTorch"
    return runners, res, models


def measure_memory(p, w, feeds, models, res, threads, library):
    with tempfile.TemporaryDirectory(prefix="mha_mem_") as d:
        memory.write_point_dir(d, p, w, feeds, models)
        for name, r in res.items():
            if r["status"] != "ok":
                continue
            if name in A.NO_MEMORY_CHILD:
                r["peak_mb_error"] = "not measured (no memory child for this alternative)"
                continue
            m = memory.measure(d, name, threads, library=library if name in A.OURS else None)
            if "error" in m:
                r["peak_mb_error"] = m["error"]
            else:
                r["peak_mb"] = m["peak_mb"]
                for k in ("create_peak_mb", "after_create_mb", "run_peak_mb"):  # see memory.py
                    if k in m:
                        r[k] = m[k]


def bench_point(p: Point, args, peak: float, library) -> dict:
    w = graphs.make_weights(p.E, seed=args.seed)
    feeds = graphs.make_inputs(p, seed=args.seed + 1)
    runners, res, models = prepare(p, args.alternatives, w, feeds, args.threads, args.spin)
    samples = timing.interleaved(runners, budget_s=args.budget, min_reps=args.min_reps, seed=args.seed)
    for name, ms in samples.items():
        res[name].update(timing.summary(ms))
        res[name]["gflops"] = p.flops / (res[name]["median_ms"] * 1e-3) / 1e9
        res[name]["pct_peak"] = 100 * res[name]["gflops"] / peak
    del runners
    gc.collect()
    out = {"point": p.as_dict(), "flops": p.flops, "alts": res, "best_alt": None, "speedup": None}
    others = {a: r["median_ms"] for a, r in res.items() if a not in A.OURS and r["status"] == "ok"}
    if others:
        best = min(others, key=others.get)
        out["best_alt"] = best
        if res.get("fused", {}).get("status") == "ok":
            out["speedup"] = others[best] / res["fused"]["median_ms"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads and torch threads (default 2)")
    ap.add_argument("--grid", choices=sorted(GRIDS), default="quick")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="directory for latest.{json,md,png}")
    ap.add_argument("--alternatives", default=None,
                    help="comma-separated subset of " + ",".join(A.ALTERNATIVES) + " (default: all; "
                         "fused,torch with --isa)")
    ap.add_argument("--filter", default="", help="only points whose label contains this text")
    ap.add_argument("--budget", type=float, default=4.0, help="seconds of timed runs per point (default 4)")
    ap.add_argument("--min-reps", type=int, default=7, help="at least this many runs per alternative")
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory children")
    ap.add_argument("--spin", action="store_true", help="let ORT's intra-op threads spin between runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--isa", choices=sorted(ISA_ENV),
                    help="run the fused kernel and torch with at most this instruction set (ORT's ops "
                         "cannot be lowered: they are left out unless --alternatives names them)")
    args = ap.parse_args(argv)
    if args.isa and os.environ.get("MASKEDMHA_ISA") != args.isa:
        ap.error("--isa must be given on the command line (it is read before torch is imported)")
    if args.alternatives is None:
        # torch.compile compiles every point afresh (5-30 s each): on the full grid (360 points)
        # that alone is hours, so it is timed there only when --alternatives names it.
        default = [a for a in A.ALTERNATIVES if not (args.grid == "full" and a == "torch_compile")]
        args.alternatives = "fused,torch" if args.isa else ",".join(default)
    try:
        args.alternatives = A.parse_names(args.alternatives)
    except ValueError as exc:
        ap.error(str(exc))
    os.makedirs(args.out, exist_ok=True)
    points = [p for p in GRIDS[args.grid]() if args.filter in p.label]

    torch.set_num_threads(args.threads)
    try:
        library = A.library_path()
    except Exception as exc:  # noqa: BLE001 - fused is then reported as an error per point
        library = None
        print(f"warning: {_short(exc)}", file=sys.stderr)
    peak = timing.sgemm_peak_gflops(args.threads)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                                 text=True).stdout.strip() or "?",
        "threads": args.threads, "grid": args.grid, "alternatives": args.alternatives,
        "spin": args.spin, "budget_s": args.budget, "library": library,
        "onnxruntime": ort.__version__, "onnx": onnx.__version__, "torch": torch.__version__,
        "python": platform.python_version(), "cpu": _cpu_model(), "cores": os.cpu_count(),
        "sgemm_peak_gflops": peak, "rel_tol": A.REL_TOL, "isa": args.isa, "kernel_isa": _kernel_isa(),
        "ops_commit": subprocess.run(["git", "log", "-1", "--format=%h", "--", "ops"], cwd=HERE,
                                     capture_output=True, text=True).stdout.strip() or "?",
        "library_mtime": (datetime.datetime.fromtimestamp(os.path.getmtime(library), datetime.timezone.utc)
                          .strftime("%Y-%m-%d %H:%M UTC") if library else None),
    }
    isa_note = f", fused and torch limited to {args.isa}" if args.isa else ""
    print(f"{len(points)} points, {args.threads} threads, sgemm peak {peak:.0f} GFLOP/s{isa_note}\n")
    print(report.progress_header(args.alternatives), flush=True)
    results, points_done = [], []
    for p in points:
        # The machine is shared: re-measure the sgemm peak (best of 3) before every point, keep the best.
        peak = max(peak, timing.sgemm_peak_gflops(args.threads, repeats=3))
        try:
            r = bench_point(p, args, peak, library)
        except Exception:  # noqa: BLE001 - one broken point must not lose the others
            traceback.print_exc()
            continue
        results.append(r)
        points_done.append(p)
        print(report.progress_row(r, args.alternatives), flush=True)
        report.write_json(os.path.join(args.out, "latest.json"), meta, results)
    if args.memory:
        # After all timing, so no child process runs between timed points.
        print("\npeak memory (fresh child process per alternative and point) ...", flush=True)
        for p, r in zip(points_done, results):
            w = graphs.make_weights(p.E, seed=args.seed)
            feeds = graphs.make_inputs(p, seed=args.seed + 1)
            models = {a: A.model_for(a, p, w) for a, x in r["alts"].items() if x["status"] == "ok" and a not in A.TORCH_BASED}
            measure_memory(p, w, feeds, models, r["alts"], args.threads, library)
    # The peak is the best of the measurements before, during and after the grid (shared machine).
    meta["sgemm_peak_gflops_start"] = peak
    meta["sgemm_peak_gflops_end"] = timing.sgemm_peak_gflops(args.threads)
    meta["sgemm_peak_gflops"] = peak = max(peak, meta["sgemm_peak_gflops_end"])
    for r in results:
        for x in r["alts"].values():
            if "gflops" in x:
                x["pct_peak"] = 100 * x["gflops"] / peak
    report.write_all(args.out, meta, results)
    print(f"\nwrote {args.out}/latest.json, latest.md, latest.png")
    return 0


def _kernel_isa() -> str:
    """The instruction set the fused kernel runs with here (maskedmha doctor's rule: the CPU's
    best, lowered by MASKEDMHA_ISA)."""
    try:
        from maskedmha.doctor import kernel_isa
        isa, why = kernel_isa()
        return f"{isa} ({why})"
    except Exception as exc:  # noqa: BLE001 - informational only
        return f"? ({_short(exc)})"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
