"""The benchmark's encoder and concurrency modes run at a tiny size and check what they time
against PyTorch (no timing is asserted)."""
import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import concurrency  # noqa: E402
import encoder  # noqa: E402
from grid import Point  # noqa: E402


def test_encoder_mode_checks_every_path_against_the_nested_tensor_fast_path(tmp_path):
    assert encoder.main(["--grid", "tiny", "--budget", "0", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "latest.json") as f:
        rows = json.load(f)["results"]
    assert [r["case"]["layers"] for r in rows] == [0, 2]
    for r in rows:
        alts = r["alts"]
        for name in ("fused", "ort_stock", "torch_fast", "torch_slow"):
            assert alts[name]["status"] == "ok", (r["case"]["label"], name, alts[name])
            assert alts[name]["reps"] >= 5
        assert alts["fused"]["attention_ops"] == ["com.maskedmha::MaskedMHA"]
        # remove_padding: timed when this maskedmha has it, else said why not
        assert alts["packed"]["status"] == ("ok" if encoder.has_remove_padding() else "n/a")
        assert alts["ort_transformers"]["status"] in ("ok", "error")
    assert "| layer 3x16 E32/H4 pad25% |" in (tmp_path / "latest.md").read_text()


def test_encoder_check_compares_valid_positions_only():
    ref = np.ones((1, 3, 2))
    valid = np.array([[True, True, False]])
    out = ref.copy()
    out[0, 2] = 100.0  # a padded position: the dense paths compute it, the fast path returns 0
    assert encoder.check(out, ref, valid)[0]
    out[0, 1, 0] += 1e-3  # a valid one, off by 1e-3 relative
    ok, rel = encoder.check(out, ref, valid)
    assert not ok and rel == pytest.approx(1e-3)


def test_encoder_model_takes_the_fast_path_for_the_reference():
    """torch_fast is what the others are checked against: padded outputs are exactly 0 there for
    the encoder (nested tensors), unlike the slow path's."""
    c = encoder.Case(2, 32, 4, 3, 16, 0.5)
    model = encoder.Model(c)
    x, kpm = encoder.make_inputs(c)
    fast = encoder.TorchEncoder(model, (x, kpm), slow=False)()
    slow = encoder.TorchEncoder(model, (x, kpm), slow=True)()
    assert kpm.any() and np.all(fast[kpm.numpy()] == 0) and not np.all(slow[kpm.numpy()] == 0)
    assert encoder.check(slow, fast, ~kpm.numpy())[0]


def test_concurrency_mode_runs_sessions_in_processes_and_checks_them(tmp_path):
    torch.set_num_threads(1)
    res = concurrency.measure(Point(2, 8, 32, 4, pad=0.25), n_sessions=2, threads=1, rounds=2,
                              calls=2, seed=0)
    for name in concurrency.ALTS:
        assert res[name]["status"] == "ok", res[name]
        assert res[name]["calls"] == 2 * 2 * 2  # rounds x sessions x calls
    assert res["ratio"] > 0 and res["throughput_ratio"] > 0
    md = concurrency.markdown({"date": "d", "cpu": "c", "cores": 2, "kernel_isa": "k",
                               "onnxruntime": "o", "threads": 1, "rounds": 2},
                              [{"point": "p", "config": "2", "res": res}])
    assert "| p | 2 |" in md


def test_concurrency_mode_times_another_build_side_by_side(tmp_path):
    """--library NAME=PATH: another build of the library runs the fused model as alternative NAME,
    checked like fused, with its own ratios against ORT's Attention in the table."""
    import maskedmha
    torch.set_num_threads(1)
    extra = {"fused_copy": maskedmha.get_library_path()}
    res = concurrency.measure(Point(2, 8, 32, 4, pad=0.25), n_sessions=1, threads=1, rounds=2,
                              calls=2, seed=0, extra=extra)
    assert res["fused_copy"]["status"] == "ok" and res["fused_copy"]["calls"] == 4
    assert res["ratio_fused_copy"] > 0 and res["throughput_ratio_fused_copy"] > 0
    md = concurrency.markdown({"date": "d", "cpu": "c", "cores": 2, "kernel_isa": "k",
                               "onnxruntime": "o", "threads": 1, "rounds": 2},
                              [{"point": "p", "config": "1", "res": res}], tuple(extra))
    assert "fused_copy ms | fused_copy ratio | fused_copy throughput ratio |" in md
    with pytest.raises(SystemExit):  # not NAME=PATH of an existing file
        concurrency.main(["--library", "fused_copy", "--out", str(tmp_path)])


def test_busy_core_process_is_started_and_ended():
    proc = concurrency.start_busy_core()
    try:
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
