"""Peak memory split into session creation and runs, with the model given as bytes (as in
run.py) and as a file whose weights are external data, for a few points.

    python benchmarks/memory_phases.py [--points "B,L,E,H,cross,pad,mask;..."]
                                       [--alternatives fused,ort_attention,torch] [--threads 2]

Prints a Markdown table (MB above the child's baseline, see memory.py): the creation peak, what
stays resident after creation, the peak during the runs, and the overall peak that run.py
reports.  The default points are the quick-grid points where fused used more memory than the
best alternative (docs/memory.md, "by phase", quotes this table).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import alternatives as A  # noqa: E402
import graphs  # noqa: E402
import memory  # noqa: E402
from grid import Point  # noqa: E402

DEFAULT_POINTS = "1,32,512,8,0,0,none;8,32,1024,16,0,0.5,random;1,128,768,12,0,0,causal"


def parse_point(text: str) -> Point:
    B, L, E, H, cross, pad, mask = text.split(",")
    return Point(int(B), int(L), int(E), int(H), cross=cross == "1", pad=float(pad), mask=mask)


def rows_for(p: Point, alts: list[str], threads: int, library: str | None) -> list[str]:
    w = graphs.make_weights(p.E, seed=0)
    feeds = graphs.make_inputs(p, seed=1)
    models = {}
    for a in alts:
        if a != "torch":
            try:
                models[a] = A.model_for(a, p, w)
            except graphs.NotApplicable:
                continue
    out = []
    with tempfile.TemporaryDirectory(prefix="mha_phases_") as d:
        memory.write_point_dir(d, p, w, feeds, models, external=True)
        for a in alts:
            if a != "torch" and a not in models:
                continue
            for external in ((False,) if a == "torch" else (False, True)):
                m = memory.measure(d, a, threads, library=library if a == "fused" else None,
                                   external=external)
                how = "" if a == "torch" else (", external data" if external else ", bytes")
                if "error" in m:
                    out.append(f"| {p.label} | {a}{how} | {m['error']} | | | |")
                    continue
                cells = [m.get(k) for k in ("create_peak_mb", "after_create_mb", "run_peak_mb")]
                out.append(f"| {p.label} | {a}{how} | " + " | ".join(
                    "?" if c is None else f"{c:.1f}" for c in cells) + f" | {m['peak_mb']:.1f} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default=DEFAULT_POINTS, help="B,L,E,H,cross(0/1),pad,mask;...")
    ap.add_argument("--alternatives", default="fused,ort_attention,torch")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    try:
        alts = A.parse_names(args.alternatives)
    except ValueError as exc:
        ap.error(str(exc))
    library = A.library_path() if "fused" in alts else None
    print("| point | alternative | creation peak MB | after creation MB | run peak MB | overall peak MB |")
    print("|---|---|---:|---:|---:|---:|")
    for text in args.points.split(";"):
        for row in rows_for(parse_point(text), alts, args.threads, library):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
