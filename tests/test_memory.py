"""10,000 runs of one session must not grow the process: no leak per run in the kernel."""
from __future__ import annotations

import os

import maskedmha
from helpers.cases import CASES, export_case, feeds, make_inputs

RUNS = int(os.environ.get("MASKEDMHA_MEMORY_RUNS", "10000"))
BOUND_MB = 8.0


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_no_rss_growth_over_many_runs(tmp_path):
    case = next(c for c in CASES if c.name == "bias_kv_zero_attn_weights")
    path = export_case(case, str(tmp_path / "m.onnx"))
    session = maskedmha.InferenceSession(path)
    # Alternate two shapes so shape-dependent scratch sizes are exercised as well.
    f1 = feeds(make_inputs(case, 3, 9, 9, seed=1))
    f2 = feeds(make_inputs(case, 2, 17, 17, seed=2))
    for _ in range(200):  # warm-up: arenas and caches reach their steady size
        session.run(None, f1)
        session.run(None, f2)
    before = _rss_mb()
    for i in range(RUNS):
        session.run(None, f1 if i % 2 else f2)
    growth = _rss_mb() - before
    print(f"RSS growth over {RUNS} runs: {growth:.2f} MB")
    assert growth < BOUND_MB, f"RSS grew {growth:.1f} MB over {RUNS} runs (bound {BOUND_MB} MB)"
