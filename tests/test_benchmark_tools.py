"""The benchmark's bookkeeping, without timing anything: the goal check reads results the way the
issue states the goals, and the interleaved timer shuffles the order of alternatives."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import goals  # noqa: E402
import timing  # noqa: E402
from grid import Point  # noqa: E402


def _result(p: Point, fused_ms: float, others: dict, pct_peak: float = 50.0, mem=None):
    alts = {"fused": {"status": "ok", "median_ms": fused_ms, "pct_peak": pct_peak}}
    for name, ms in others.items():
        alts[name] = {"status": "ok", "median_ms": ms} if ms is not None else {"status": "n/a"}
    for name, mb in (mem or {}).items():
        alts[name]["peak_mb"] = mb
    return {"point": p.as_dict(), "alts": alts}


def test_goals_use_the_fastest_alternative_and_the_issue_thresholds():
    res = [
        # padded, B*L = 1024: 1.25x against the fastest (ort_mha), although 2x against another
        _result(Point(8, 128, 64, 4, pad=0.25), 10.0, {"ort_mha": 12.5, "torch": 20.0, "ort_attention": None}),
        # padded, B*L = 1024: 1.5x
        _result(Point(8, 128, 64, 4, pad=0.5), 10.0, {"ort_mha": 15.0}),
        # padded but B*L = 256: not part of the padded goal
        _result(Point(8, 32, 64, 4, pad=0.5), 10.0, {"ort_mha": 10.5}),
        # unpadded, L = 512: 1.12x, 91 % of peak
        _result(Point(2, 512, 64, 4), 10.0, {"ort_mha": 11.2}, pct_peak=91.0),
        # unpadded, L = 32: 1.05x; memory higher than the best alternative's
        _result(Point(1, 32, 64, 4), 10.0, {"ort_mha": 10.5}, mem={"fused": 5.0, "ort_mha": 4.0}),
    ]
    by_name = {name: (met, n, misses) for name, met, n, misses in goals.check(res)}
    met, n, misses = by_name["padded (25-50 %), B*L >= 512: >= 1.3x"]
    assert (met, n) == (1, 2) and "1.25x vs ort_mha" in misses[0]
    met, n, misses = by_name["unpadded: >= 1.1x"]
    assert (met, n) == (1, 2) and misses[0].startswith("1x32")
    assert by_name["unpadded L >= 512: >= 90 % of sgemm peak"][:2] == (1, 1)
    met, n, misses = by_name["peak memory <= best alternative"]
    assert (met, n) == (0, 1) and "5 MB vs 4 MB" in misses[0]


def test_interleaved_shuffles_the_order_each_round():
    calls = []
    runners = {name: (lambda name=name: calls.append(name)) for name in "abcdef"}
    samples = timing.interleaved(runners, budget_s=0.0, min_reps=30, max_reps=30, warmup=1, seed=3)
    assert all(len(v) == 30 for v in samples.values())
    rounds = [tuple(calls[i:i + 6]) for i in range(6, len(calls), 6)]  # after the warm-up round
    assert all(sorted(r) == list("abcdef") for r in rounds)
    # Every alternative follows torch-like "f" sometimes, not always the same one.
    followers = {r[r.index("f") + 1] for r in rounds if r.index("f") < 5}
    assert len(followers) >= 4


def test_microbenchmarks_build_and_compute_correct_results(tmp_path):
    """benchmarks/micro: both programs compile with the library's flags and their results match
    a double-precision reference (odd sizes: ragged tiles, padding, causal), so the numbers the
    README quotes from them come from working code.  No timing is checked."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "benchmarks", "micro"))
    import json
    import subprocess

    import compare_gemm

    exe = compare_gemm.build(str(tmp_path))
    run = lambda *a: json.loads(subprocess.run([*a], check=True, capture_output=True,  # noqa: E731
                                               text=True).stdout.strip().splitlines()[-1])
    for m, n, k in [(37, 41, 29), (12, 32, 16), (1, 100, 3)]:
        r = run(exe["gemm_bench"], str(m), str(n), str(k), "2", "2")
        assert r["max_rel_err"] < 1e-5, r
    for args in [("3", "77", "4", "2", "2", "0.3", "1"), ("2", "130", "2", "2", "2", "0", "0"),
                 ("1", "33", "3", "1", "2", "0.5", "0")]:
        r = run(exe["attention_bench"], *args)
        assert r["max_rel_err"] < 1e-5, r


def test_run_with_a_lower_isa_checks_fused_and_torch_against_pytorch(tmp_path):
    """``run.py --isa avx2`` (the path of CPUs without AVX-512): the kernel and torch run with the
    lowered instruction set, only they are timed by default (ORT's MLAS cannot be lowered), every
    result is checked against PyTorch before timing, and the run says which ISA it used."""
    import json
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "MASKEDMHA_ISA"}
    r = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "run.py"), "--grid", "tiny",
                        "--isa", "avx2", "--no-memory", "--budget", "0.02", "--min-reps", "2",
                        "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(tmp_path / "latest.json") as f:
        data = json.load(f)
    assert data["meta"]["isa"] == "avx2" and data["meta"]["alternatives"] == ["fused", "torch"]
    assert data["results"], "no point was benchmarked"
    for res in data["results"]:
        assert {a: x["status"] for a, x in res["alts"].items()} == {"fused": "ok", "torch": "ok"}, res
    assert "limited to avx2" in (tmp_path / "latest.md").read_text()


def test_memory_child_splits_the_peak_at_session_creation(tmp_path):
    """benchmarks/memory.py: a fresh child per measurement reports the creation peak, what stays
    resident, the run peak and their maximum as the overall peak, for a session created from the
    model's bytes and from a file with external data (the weights then live in ALT.data)."""
    import alternatives as A
    import graphs
    import memory
    p = Point(2, 16, 64, 4, pad=0.25)
    w = graphs.make_weights(p.E, seed=0)
    feeds = graphs.make_inputs(p, seed=1)
    memory.write_point_dir(str(tmp_path), p, w, feeds, {"fused": A.model_for("fused", p, w)},
                           external=True)
    assert (tmp_path / "fused.data").stat().st_size >= 4 * p.E * p.E * 4  # the weights moved out
    for external in (False, True):
        m = memory.measure(str(tmp_path), "fused", 2, runs=2, library=A.library_path(),
                           external=external)
        assert "error" not in m, m
        if m["exact"]:
            assert m["peak_mb"] == max(m["create_peak_mb"], m["run_peak_mb"])
            assert m["after_create_mb"] <= m["create_peak_mb"] + 1e-9


def test_compare_builds_times_two_libraries_in_one_run(tmp_path):
    """benchmarks/compare_builds.py: two builds (here two copies of this one) registered on their
    own sessions in one process, outputs checked equal, a row with both times and their ratio per
    point; a missing library is a usage error."""
    import shutil
    import subprocess

    import maskedmha
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tool = os.path.join(root, "benchmarks", "compare_builds.py")
    copy = tmp_path / "copy.so"
    shutil.copy(maskedmha.get_library_path(), copy)
    r = subprocess.run([sys.executable, tool, maskedmha.get_library_path(), str(copy), "--grid",
                        "tiny", "--budget", "0.02"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| 2x16")]
    assert len(rows) == 3 and all(float(ln.rstrip(" |").rsplit("|", 1)[1]) > 0 for ln in rows), r.stdout
    assert "geometric mean old/new" in r.stdout
    r = subprocess.run([sys.executable, tool, str(tmp_path / "missing.so"), str(copy)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no such file" in r.stderr
