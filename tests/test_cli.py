"""The two commands users run: `maskedmha demo` and `maskedmha compare MODEL.onnx`."""
from __future__ import annotations

import re
import subprocess
import sys

from mha_cases import CASES, export_case


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maskedmha", *args], capture_output=True, text=True,
                          timeout=600)


def test_compare_prints_table(tmp_path):
    case = CASES[0]
    path = export_case(case, str(tmp_path / "m.onnx"))
    res = _cli("compare", path, "--runs", "3", "--dim", "batch=3", "--dim", "tgt=6")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert re.search(r"\| nodes\s+\| 1\s+\| \d+", out), out
    assert "com.maskedmha::MaskedMHA×1" in out
    diff = float(re.search(r"max \|fused - decomposed\|: (\S+)", out).group(1))
    assert diff < 1e-4
    assert re.search(r"speed-up of fused over decomposed: [\d.]+x", out)


def test_compare_rejects_model_without_fused_node(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = str(tmp_path / "relu.onnx")
    onnx.save(helper.make_model(g), path)
    res = _cli("compare", path)
    assert res.returncode == 2 and "no com.maskedmha::MaskedMHA node" in res.stderr


def test_demo_runs_and_matches_pytorch(tmp_path):
    res = _cli("demo", "--out", str(tmp_path), "--runs", "3")
    assert res.returncode == 0, res.stderr
    for label in ("fused", "decomposed"):
        diff = float(re.search(rf"max \|{label} - PyTorch\|:\s+(\S+)", res.stdout).group(1))
        assert diff < 1e-4, res.stdout
    assert (tmp_path / "demo_transformer.onnx").exists()
    assert (tmp_path / "demo_transformer.decomposed.onnx").exists()
