"""Our projection GEMM against torch.mm (MKL) on the op's GEMM shapes, same threads, one run.

    python benchmarks/micro/compare_gemm.py [--threads 2] [--shapes M,N,K;M,N,K ...]

Builds benchmarks/micro/gemm_bench.cc (and attention_bench.cc) with the library's flags into
build/micro/ (the C++ compiler from $CXX, else c++), then prints a Markdown table: GFLOP/s of
ours and of torch.mm per shape, and the register-only FMA peak of the same threads.  Shapes are
(B*L) x E . E x (E, 2E or 3E): the Q/K/V, K/V and output projections of the benchmark grid.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, "benchmarks", "micro")
DEFAULT_SHAPES = [(1024, 2304, 768), (1024, 768, 768), (768, 1536, 768), (2048, 2304, 768),
                  (1024, 3072, 1024), (256, 2304, 768), (128, 3072, 1024), (32, 1536, 512)]
# The library's flags (CMakeLists.txt): -O3, no -march (the ISA is chosen at run time).
FLAGS = ["-std=c++17", "-O3", "-Wall", "-Wextra", "-Wno-psabi", "-pthread"]


def build(out_dir: str) -> dict[str, str]:
    """Compiles both microbenchmarks; returns {name: path}."""
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise SystemExit("no C++ compiler found (set CXX)")
    os.makedirs(out_dir, exist_ok=True)
    ops = os.path.join(ROOT, "ops")
    sources = {"gemm_bench": ["gemm.cc", "cpu.cc"], "attention_bench": ["attention.cc", "attention_keys.cc", "cpu.cc"]}
    paths = {}
    for name, deps in sources.items():
        exe = os.path.join(out_dir, name)
        cmd = [cxx, *FLAGS, "-I", ops, os.path.join(HERE, name + ".cc"),
               *[os.path.join(ops, d) for d in deps], "-o", exe]
        subprocess.run(cmd, check=True)
        paths[name] = exe
    return paths


def run_json(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def torch_mm_gflops(m: int, n: int, k: int, reps: int) -> float:
    import torch
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        torch.mm(a, b)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        ts.append(time.perf_counter() - t)
    ts.sort()
    return 2.0 * m * n * k / ts[len(ts) // 2] / 1e9


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--shapes", default="", help="M,N,K;M,N,K ... (default: the grid's projections)")
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build", "micro"))
    args = ap.parse_args(argv)
    shapes = ([tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
              if args.shapes else DEFAULT_SHAPES)
    exe = build(args.build_dir)["gemm_bench"]
    import torch
    torch.set_num_threads(args.threads)
    peak = run_json([exe, "--peak", str(args.threads)])
    print(f"FMA peak ({args.threads} threads, {peak.get('isa')}): {peak.get('peak_gflops')} GFLOP/s\n")
    print("| M x K . K x N | ours GFLOP/s | torch.mm GFLOP/s | ours / torch.mm | ours % of FMA peak |")
    print("|---|---:|---:|---:|---:|")
    for m, n, k in shapes:
        ours = run_json([exe, str(m), str(n), str(k), str(args.threads), str(args.reps)])
        if ours["max_rel_err"] > 1e-5:
            raise SystemExit(f"gemm_bench {m}x{n}x{k}: wrong result (rel. error {ours['max_rel_err']})")
        mkl = torch_mm_gflops(m, n, k, args.reps)
        pct = 100 * ours["gflops"] / peak["peak_gflops"] if peak.get("peak_gflops") else float("nan")
        print(f"| {m}x{k} . {k}x{n} | {ours['gflops']:.0f} | {mkl:.0f} | {ours['gflops'] / mkl:.2f} | {pct:.0f} % |",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
