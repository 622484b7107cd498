"""Checks a benchmark result (latest.json) against issue 3's goals and prints where each is met.

    python benchmarks/goals.py [benchmarks/results/full/latest.json]

Goals (fp32, ratios within one run): padded batches (25-50 % padding) >= 1.3x faster than the
fastest alternative at every point with B*L >= 512; unpadded >= 1.1x; dense-equivalent GFLOP/s
>= 90 % of the run's sgemm peak on unpadded L >= 512; peak memory no higher than the best
alternative's (when the run measured memory).
"""
from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _best_alt(r):
    alts = {k: v for k, v in r["alts"].items()
            if k not in ("fused", "fused_skip") and v.get("status") == "ok"}
    if not alts:
        return None, None
    name = min(alts, key=lambda k: alts[k]["median_ms"])
    return name, alts[name]


def check(results: list[dict]) -> list[tuple[str, int, int, list[str]]]:
    """(goal, points met, points checked, misses as 'label: value') per goal."""
    goals = []

    def add(name, rows):
        met = [lab for lab, ok, _ in rows if ok]
        goals.append((name, len(met), len(rows), [f"{lab}: {v}" for lab, ok, v in rows if not ok]))

    padded, unpadded, peak, memory = [], [], [], []
    for r in results:
        p, f = r["point"], r["alts"].get("fused", {})
        if f.get("status") != "ok":
            continue
        name, best = _best_alt(r)
        if best is None:
            continue
        speedup = best["median_ms"] / f["median_ms"]
        label = p["label"]
        if p["pad"] > 0 and p["B"] * p["L"] >= 512:
            padded.append((label, speedup >= 1.3, f"{speedup:.2f}x vs {name}"))
        if p["pad"] == 0:
            unpadded.append((label, speedup >= 1.1, f"{speedup:.2f}x vs {name}"))
            if p["L"] >= 512:
                peak.append((label, f["pct_peak"] >= 90, f"{f['pct_peak']:.0f}% of peak"))
        mems = {k: v.get("peak_mb") for k, v in r["alts"].items() if v.get("peak_mb") is not None}
        if "fused" in mems and len(mems) > 1:
            other = min(v for k, v in mems.items() if k != "fused")
            memory.append((label, mems["fused"] <= other, f"{mems['fused']:.0f} MB vs {other:.0f} MB"))
    add("padded (25-50 %), B*L >= 512: >= 1.3x", padded)
    add("unpadded: >= 1.1x", unpadded)
    add("unpadded L >= 512: >= 90 % of sgemm peak", peak)
    if memory:
        add("peak memory <= best alternative", memory)
    return goals


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else os.path.join(HERE, "results", "latest.json")
    with open(path) as fh:
        data = json.load(fh)
    print(f"{path}: {len(data['results'])} points, {data['meta'].get('date')}")
    print("| goal | met | misses |\n|---|---:|---|")
    for name, met, n, misses in check(data["results"]):
        shown = "; ".join(misses[:12]) + (f"; … {len(misses) - 12} more" if len(misses) > 12 else "")
        print(f"| {name} | {met}/{n} | {shown or 'none'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
