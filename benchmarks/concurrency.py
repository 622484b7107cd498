"""Fused against ORT's com.microsoft.Attention when the cores are shared: N sessions running at
once (each with its own intra-op pool of --threads threads, as a server runs one session per
model instance), and one session while another process keeps one core busy.

    python benchmarks/concurrency.py [--sessions 1,2,4] [--threads 2] [--rounds 12] [--out DIR]
                                     [--library NAME=PATH ...]

Each session runs in its own process (spawned).  A C++ server (Triton's onnxruntime backend)
would host its model instances as threads of one process, each with its own intra-op pool: the
same 2·N pool threads competing for the cores.  Threads of *this* Python process cannot stand in
for that: between calls each caller needs the GIL back, and its hand-over delays serialise small
calls (measured: 1x32 E512 with 4 sessions as threads had the same median as 1 session, for both
alternatives -- the calls hardly overlapped).  Processes overlap as the server's threads would.

Each round runs every alternative once, in a new shuffled order: all N sessions of that
alternative start together (barrier) and each makes --calls calls back to back.  Per call
latency over all rounds and sessions -> median; ratio = ORT Attention median / fused median
(> 1: fused faster).  Both alternatives are checked against float64 PyTorch first.  The busy
core is a child process spinning in a loop pinned to core 0 (started for the 'busy' rows only,
ended by its pid).  Pools do not spin between calls (allow_spinning = 0), as in run.py.
--library NAME=PATH adds another build of the library as alternative NAME (the fused model on
sessions that register PATH), timed in the same rounds: old and new builds side by side.
Writes DIR/latest.json and DIR/latest.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import statistics
import subprocess
import sys
import multiprocessing as mp
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as run.py: torch (the reference) must not spin

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

import alternatives as A  # noqa: E402
import graphs  # noqa: E402
from grid import Point  # noqa: E402

ALTS = ("fused", "ort_attention")
# The small calls the issue measured under load (1x32 E768: 0.73x with 4 sessions), a causal
# one, and a mid-size padded batch.
POINTS = {
    "quick": [Point(1, 32, 512, 8), Point(1, 32, 768, 12), Point(1, 128, 768, 12, mask="causal"),
              Point(8, 128, 768, 12, pad=0.25)],
    "tiny": [Point(1, 16, 64, 4), Point(2, 16, 64, 4, pad=0.25)],
}

BUSY_LOOP = "import os\nos.sched_setaffinity(0, {0})\nwhile True:\n    pass\n"


def start_busy_core() -> subprocess.Popen:
    """A process that keeps core 0 busy until it is ended (by the caller, by its pid)."""
    return subprocess.Popen([sys.executable, "-c", BUSY_LOOP])


def _worker(model_bytes: dict, feeds: dict, threads: int, libraries: dict, barrier, conn) -> None:
    """One session per alternative in this process (libraries: alternative -> the custom-op
    library its session registers); on ("run", name, calls) waits at the barrier with the other
    workers, then makes `calls` calls and sends back their ms."""
    runners = {name: A.OrtRunner(m, feeds, threads, False, libraries.get(name))
               for name, m in model_bytes.items()}
    conn.send({name: r() for name, r in runners.items()})  # first call (packing, pool start)
    while True:
        msg = conn.recv()
        if msg is None:
            return
        _, name, calls = msg
        barrier.wait()
        ms = []
        for _ in range(calls):
            t0 = time.perf_counter()
            runners[name]()
            ms.append((time.perf_counter() - t0) * 1e3)
        conn.send(ms)


class Sessions:
    """n_sessions processes, each holding one session of every alternative (spawned, not forked:
    this process has ORT and torch threads running)."""

    def __init__(self, n_sessions: int, model_bytes: dict, feeds: dict, threads: int,
                 libraries: dict):
        ctx = mp.get_context("spawn")
        self.barrier = ctx.Barrier(n_sessions)
        self.conns, self.procs = [], []
        for _ in range(n_sessions):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, daemon=True,
                               args=(model_bytes, feeds, threads, libraries, self.barrier, child))
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        self.first_outputs = [c.recv() for c in self.conns]

    def run_round(self, name: str, calls: int) -> tuple[list[float], float]:
        """All sessions of `name` call at once, `calls` times each: (latencies ms, wall s)."""
        t0 = time.perf_counter()
        for c in self.conns:
            c.send(("run", name, calls))
        lat = [x for c in self.conns for x in c.recv()]
        return lat, time.perf_counter() - t0

    def close(self) -> None:
        for c in self.conns:
            c.send(None)
        for proc in self.procs:
            proc.join(timeout=30)


def measure(p: Point, n_sessions: int, threads: int, rounds: int, calls: int, seed: int,
            extra: dict | None = None) -> dict:
    """One point under n_sessions concurrent sessions: per alternative median / mean / p90 latency,
    calls per second (all sessions together), and the check against PyTorch.  extra: more builds
    of the library, name -> path, run as the fused model."""
    extra = extra or {}
    alts = (*ALTS, *extra)
    w, feeds = graphs.make_weights(p.E, seed=seed), graphs.make_inputs(p, seed=seed + 1)
    ref = A.reference(p, w, feeds)
    models = {name: A.model_for("fused" if name in extra else name, p, w).SerializeToString()
              for name in alts}
    libraries = {"fused": A.library_path(), **extra}
    sessions = Sessions(n_sessions, models, feeds, threads, libraries)
    try:
        out = {}
        for name in alts:
            checks = [A.check(first[name], ref) for first in sessions.first_outputs]
            out[name] = {"status": "ok" if all(c[0] for c in checks) else "FAIL",
                         "rel_diff": max(c[2] for c in checks)}
        ok = [name for name in alts if out[name]["status"] == "ok"]
        lat = {k: [] for k in ok}
        wall = {k: 0.0 for k in ok}
        rng = random.Random(seed)
        for _ in range(rounds):
            rng.shuffle(ok)
            for name in ok:
                ms, s = sessions.run_round(name, calls)
                lat[name] += ms
                wall[name] += s
    finally:
        sessions.close()
    for name in lat:
        q = statistics.quantiles(lat[name], n=10)
        out[name].update({"median_ms": statistics.median(lat[name]), "p90_ms": q[8],
                          "mean_ms": statistics.fmean(lat[name]),
                          "calls_per_s": len(lat[name]) / wall[name], "calls": len(lat[name])})
    for name in ("fused", *extra):
        if out[name]["status"] == "ok" and out["ort_attention"]["status"] == "ok":
            suffix = "" if name == "fused" else f"_{name}"
            out["ratio" + suffix] = out["ort_attention"]["median_ms"] / out[name]["median_ms"]
            out["throughput_ratio" + suffix] = (out[name]["calls_per_s"]
                                                / out["ort_attention"]["calls_per_s"])
    return out


def calls_for(p: Point) -> int:
    """Calls per session per round: ~20 ms of work per session at one session's speed."""
    return max(2, min(40, int(2e9 / p.flops)))


def markdown(meta: dict, rows: list[dict], extra: tuple = ()) -> str:
    out = [f"Run {meta['date']} · CPU {meta['cpu']} ({meta['cores']} cores), fused kernel ISA "
           f"{meta['kernel_isa']} · onnxruntime {meta['onnxruntime']} · {meta['threads']} intra-op "
           f"threads per session, no spinning · {meta['rounds']} rounds", "",
           "Per-call latency (ms) with N sessions calling at once (one process each): median (mean, "
           "p90); ratio = ORT Attention median / fused median (> 1: fused faster); throughput ratio = "
           "fused calls/s / ORT calls/s over whole rounds (follows the mean: the tails count). busy: "
           "another process spins on core 0."
           + "".join(f" {e}: another build of the library (`--library`), its ratios likewise."
                     for e in extra), "",
           "| point | sessions | fused ms | ort_attention ms | ratio | throughput ratio |"
           + "".join(f" {e} ms | {e} ratio | {e} throughput ratio |" for e in extra),
           "|---|---|---:|---:|---:|---:|" + "---:|---:|---:|" * len(extra)]
    cell = lambda x: (f"{x['median_ms']:.3f} ({x['mean_ms']:.3f}, {x['p90_ms']:.3f})"  # noqa: E731
                      if "median_ms" in x else x["status"])
    nan = float("nan")
    for r in rows:
        res = r["res"]
        f, o = res["fused"], res["ort_attention"]
        line = (f"| {r['point']} | {r['config']} | {cell(f)} | {cell(o)} | "
                f"{res.get('ratio', nan):.2f} | {res.get('throughput_ratio', nan):.2f} |")
        for e in extra:
            line += (f" {cell(res[e])} | {res.get('ratio_' + e, nan):.2f} | "
                     f"{res.get('throughput_ratio_' + e, nan):.2f} |")
        out.append(line)
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", default="1,2,4", help="concurrent session counts (default 1,2,4)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads per session")
    ap.add_argument("--points", choices=sorted(POINTS), default="quick")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--calls", type=int, default=0, help="calls per session per round (0: by size)")
    ap.add_argument("--no-busy", dest="busy", action="store_false", help="skip the busy-core rows")
    ap.add_argument("--filter", default="", help="only points whose label contains this text")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "concurrency"))
    ap.add_argument("--library", action="append", default=[], metavar="NAME=PATH",
                    help="another build of the library, timed as alternative NAME (repeatable)")
    args = ap.parse_args(argv)
    extra = {}
    for item in args.library:
        name, sep, path = item.partition("=")
        if not sep or not name or name in ALTS or name in extra or not os.path.isfile(path):
            ap.error(f"--library {item!r}: expected NAME=PATH with a new NAME and an existing file")
        extra[name] = os.path.abspath(path)
    counts = [int(x) for x in args.sessions.split(",") if x.strip()]
    configs = [(n, False) for n in counts] + ([(1, True), (max(counts), True)] if args.busy else [])
    from run import _cpu_model, _kernel_isa
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": _cpu_model(), "cores": os.cpu_count(), "kernel_isa": _kernel_isa(),
            "onnxruntime": ort.__version__, "threads": args.threads, "rounds": args.rounds}
    os.makedirs(args.out, exist_ok=True)
    rows = []
    busy = None
    try:
        for n, is_busy in configs:
            if is_busy and busy is None:
                busy = start_busy_core()
                time.sleep(0.5)
            for p in POINTS[args.points]:
                if args.filter not in p.label:
                    continue
                res = measure(p, n, args.threads, args.rounds, args.calls or calls_for(p), args.seed,
                              extra)
                config = f"{n}{' + busy core' if is_busy else ''}"
                rows.append({"point": p.label, "sessions": n, "busy": is_busy, "config": config, "res": res})
                print(f"{p.label:<36} {config:<14} ratio {res.get('ratio', float('nan')):.2f}  "
                      + "  ".join(f"{a} {res[a].get('median_ms', float('nan')):.3f} ms"
                                  for a in (*ALTS, *extra)), flush=True)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    with open(os.path.join(args.out, "latest.json"), "w") as f:
        json.dump({"meta": {**meta, "libraries": extra}, "results": rows}, f, indent=1)
    with open(os.path.join(args.out, "latest.md"), "w") as f:
        f.write(markdown(meta, rows, tuple(extra)))
    print(f"wrote {args.out}/latest.json, latest.md")
    fails = [r["point"] for r in rows if any(r["res"][a]["status"] != "ok" for a in (*ALTS, *extra))]
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
