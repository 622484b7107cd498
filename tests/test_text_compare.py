"""`maskedmha compare` on a strings-in model (maskedmha.text): random sentences or the user's
numpy string arrays, both graphs run with onnxruntime-extensions, one-line errors."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from maskedmha import bpe
from maskedmha.cli import main
from maskedmha.compare import compare
from maskedmha.inputs import random_feeds_described
from maskedmha.text import TextEncoder, export_text_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    tok = bpe.train(["the cat sat on the mat", "naïve café, 数据 模型"] * 2, 40)
    torch.manual_seed(0)
    model = TextEncoder(tok.vocab_size, d_model=16, nhead=2, num_layers=1, dim_feedforward=32,
                        max_positions=24).eval()
    path = str(tmp_path_factory.mktemp("text") / "text.onnx")
    export_text_model(model, tok, path)
    return path


def test_random_text_feeds():
    import onnx
    from onnx import TensorProto, helper

    m = helper.make_model(helper.make_graph(
        [], "g", [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])]))
    feeds, infos = random_feeds_described(m, {"batch": 6})
    texts = feeds["text"]
    assert texts.shape == (6,) and texts.dtype == object
    assert texts[0] == "" and all(isinstance(t, str) for t in texts)
    assert len({len(t) for t in texts}) > 2  # varied lengths: padding is exercised
    assert "random text" in infos[0].how and isinstance(m, onnx.ModelProto)


def test_compare_runs_both_graphs_on_text(model_path):
    result = compare(model_path, runs=2, sizes={"batch": 5})
    assert result.fused.outputs[0].shape == (5, 16)
    assert result.max_rel_diff < 1e-5 and result.nan_mismatch == 0
    assert any("GPT2Tokenizer" in k for k in result.decomposed.histogram)


def test_cli_with_string_inputs(model_path, tmp_path, capsys):
    good = tmp_path / "texts.npz"
    np.savez(good, text=np.array(["hello world", "", "naïve café 数据"]))
    assert main(["compare", model_path, "--inputs", str(good), "--runs", "2"]) == 0
    assert "text  str" in capsys.readouterr().out
    bad = tmp_path / "numbers.npz"
    np.savez(bad, text=np.array([1.0, 2.0]))
    assert main(["compare", model_path, "--inputs", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expects text" in err


def test_cli_without_onnxruntime_extensions(model_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime_extensions", None)  # import now fails
    assert main(["compare", model_path, "--runs", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "maskedmha[text]" in err, err
