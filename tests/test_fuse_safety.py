"""maskedmha.fuse never rewrites into other numbers: attention that is not nn.MultiheadAttention
(another scale) is left unchanged and reported; a replacement whose numbers differ from the
original is dropped by the verification; a hand-written attention with the same numbers is
fused; the command line (`maskedmha fuse`, `maskedmha compare --original`)."""
from __future__ import annotations

import math
import sys

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import maskedmha
from helpers.cases import CASES
from helpers.exporting import count_mha
from helpers.stock import stock_case, stock_export
from maskedmha import cli
from maskedmha.fuse import fuse
from maskedmha.symbolic import fuse_match


class HandWritten(nn.Module):
    """Batch-first self-attention written out by hand, scores scaled by ``scale``."""

    def __init__(self, scale: float, E: int = 32, H: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.qkv, self.out, self.H, self.scale = nn.Linear(E, 3 * E), nn.Linear(E, E), H, scale

    def forward(self, x):
        B, L, E = x.shape
        q, k, v = (t.reshape(B, L, self.H, E // self.H).transpose(1, 2)
                   for t in self.qkv(x).chunk(3, dim=-1))
        p = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
        return self.out((p @ v).transpose(1, 2).reshape(B, L, E))


def _hand_written(scale: float) -> tuple[onnx.ModelProto, nn.Module]:
    module = HandWritten(scale).eval()
    x = torch.randn(2, 5, 32)
    return stock_export(module, (x,), "torchscript", 17, ["x"], ["y"],
                        {"x": {0: "batch", 1: "len"}}), module


def test_attention_with_another_scale_is_left_unchanged_and_reported():
    stock, _ = _hand_written(1.0 / 8)          # 1/head_dim, not 1/sqrt(head_dim)
    report = []
    fused = fuse(stock, report)
    assert fused.SerializeToString() == stock.SerializeToString()
    assert [r.status for r in report] == ["left unchanged"]
    assert "not 1/sqrt(head_dim)" in report[0].detail


def test_hand_written_attention_with_the_same_numbers_is_fused():
    stock, module = _hand_written(1.0 / math.sqrt(8))
    fused = fuse(stock)
    assert count_mha(fused) == 1
    x = torch.randn(3, 9, 32)
    with torch.no_grad():
        expected = module(x).numpy()
    got = maskedmha.InferenceSession(fused.SerializeToString()).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_a_candidate_with_other_numbers_is_dropped_by_the_verification(monkeypatch):
    """The reader is made to get one weight slightly wrong: the verification must refuse it."""
    read = fuse_match.read_candidate

    def off_by_a_little(gi, anchor):
        cand = read(gi, anchor)
        cand.weights["out_proj_weight"] = cand.weights["out_proj_weight"] * np.float32(1.001)
        return cand

    monkeypatch.setattr(sys.modules["maskedmha.fuse"], "read_candidate", off_by_a_little)
    stock = onnx.load_from_string(stock_case(CASES[0].name, "dynamo", 23))
    report = []
    fused = fuse(stock, report)
    assert count_mha(fused) == 0
    assert fused.SerializeToString() == stock.SerializeToString()
    assert report[0].status == "left unchanged" and "differ" in report[0].detail


def test_cli_fuse_writes_the_file_and_the_report(tmp_path, capsys):
    src, out = tmp_path / "stock.onnx", tmp_path / "fused.onnx"
    src.write_bytes(stock_case(CASES[0].name, "torchscript", 17))
    assert cli.main(["fuse", str(src), str(out), "--report"]) == 0
    text = capsys.readouterr().out
    assert "1 of 1 attention subgraph(s) fused" in text and "| fused " in text
    assert count_mha(onnx.load(str(out))) == 1
    assert cli.main(["compare", str(out), "--original", str(src), "--runs", "2",
                     "--dim", "batch=2", "--dim", "tgt=5"]) == 0
    table = capsys.readouterr().out
    assert "original (stock ORT)" in table and "speed-up of fused over original" in table


@pytest.mark.parametrize("argv,message", [
    (["fuse", "missing.onnx", "out.onnx"], "no such file"),
    (["fuse", "IN", "/no/such/folder/out.onnx"], "does not exist"),
])
def test_cli_fuse_user_errors_are_one_line_exit_2(tmp_path, capsys, argv, message):
    src = tmp_path / "stock.onnx"
    src.write_bytes(stock_case(CASES[0].name, "torchscript", 17))
    argv = [str(src) if a == "IN" else a for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("maskedmha: ")
