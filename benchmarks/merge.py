"""Merge benchmark runs made in parts (e.g. a long grid split with --filter) into one report.

    python benchmarks/merge.py OUT_DIR part1/latest.json part2/latest.json ...

Each point keeps the numbers of the run that measured it (its ratios and % of peak are within
that run, as always); a point measured by several parts keeps the last.  The merged meta lists
every part's date, commit, alternatives and sgemm peak.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import report  # noqa: E402
from alternatives import ALTERNATIVES  # noqa: E402


def merge(paths: list[str]) -> tuple[dict, list]:
    parts, by_label = [], {}
    for path in paths:
        with open(path) as fh:
            data = json.load(fh)
        parts.append(data["meta"])
        for r in data["results"]:
            by_label[r["point"]["label"]] = r
    meta = dict(parts[0])
    meta["parts"] = [{k: m.get(k) for k in ("date", "commit", "grid", "alternatives", "sgemm_peak_gflops",
                                            "budget_s")} for m in parts]
    meta["alternatives"] = [a for a in ALTERNATIVES if any(a in m["alternatives"] for m in parts)]
    meta["sgemm_peak_gflops"] = max(m["sgemm_peak_gflops"] for m in parts)
    meta["date"] = " / ".join(sorted({m["date"] for m in parts}))
    return meta, list(by_label.values())


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print(__doc__)
        return 2
    meta, results = merge(argv[1:])
    report.write_all(argv[0], meta, results)
    print(f"merged {len(results)} points from {len(argv) - 1} parts into {argv[0]}/latest.*")
    return 0


if __name__ == "__main__":
    sys.exit(main())
