"""maskedmha.fuse on stock torch.onnx exports (issue 15): every export test case x both exporters x
opset 17 and the newest each writes, and the demo nn.Transformer, fused to one MaskedMHA per
attention and checked against PyTorch itself -- at the export shape and at two new shapes (where
the stock TorchScript file, its sizes baked into Reshapes, fails)."""
from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch

import maskedmha
from helpers.cases import (CASES, EXPORT_SHAPE, OTHER_SHAPES, assert_matches, build_module, feeds,
                           make_inputs, reference)
from helpers.exporting import count_mha
from helpers.reference import no_fastpath
from helpers.stock import OPSETS, stock_case, stock_demo
from maskedmha.fuse import fuse

MATRIX = [(exporter, opset) for exporter in ("torchscript", "dynamo")
          for opset in OPSETS[exporter]]


def _run(model: onnx.ModelProto, feed: dict, library: bool):
    sess = maskedmha.InferenceSession(model.SerializeToString()) if library else \
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feed.items() if k in names})


def _stock_runs(model, feed) -> bool:
    try:
        _run(model, feed, library=False)
    except Exception:  # noqa: BLE001 - ORT's Fail / InvalidGraph / InvalidArgument
        return False
    return True


@pytest.mark.parametrize("exporter,opset", MATRIX, ids=[f"{e}{o}" for e, o in MATRIX])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_stock_export_fuses_to_one_exact_node(case, exporter, opset):
    stock = onnx.load_from_string(stock_case(case.name, exporter, opset))
    report = []
    fused = fuse(stock, report)
    assert count_mha(fused) == 1, [r.detail for r in report]
    assert [r.status for r in report if r.status != "repaired"] == ["fused"], report
    module = build_module(case)
    for shape in [EXPORT_SHAPE] + OTHER_SHAPES:
        args = make_inputs(case, *shape)
        expected = reference(module, args)
        for library in (True, False):   # our kernel, and the fallback function on stock ORT
            got = _run(fused, feeds(args), library)
            for g, e, name in zip(got, expected, ["output", "attn_weights"]):
                assert_matches(g, e, f"{name} at {shape} ({'kernel' if library else 'fallback'})")


@pytest.mark.parametrize("case", [c for c in CASES if c.name in ("cross_kdim_vdim", "bias_kv",
                                                                 "kpm_float_am_bool3")], ids=str)
def test_opset_14_file_is_converted_to_17_and_fused(case):
    """Files older than the fallback's opset 17: converted (the report says so), then fused."""
    stock = onnx.load_from_string(stock_case(case.name, "torchscript", 14))
    report = []
    fused = fuse(stock, report)
    assert count_mha(fused) == 1 and any("opset 14 converted" in r.detail for r in report)
    args = make_inputs(case, *OTHER_SHAPES[0])
    for g, e in zip(_run(fused, feeds(args), True), reference(build_module(case), args)):
        assert_matches(g, e, "opset-14 file fused")


def test_stock_torchscript_file_runs_only_at_its_export_shape():
    """The reason for the new-shape checks above: the stock TorchScript file with dynamic axes
    fails at a new batch size (bsz*num_heads baked into a Reshape); the fused one runs."""
    case = CASES[0]
    stock = onnx.load_from_string(stock_case(case.name, "torchscript", 17))
    assert _stock_runs(stock, feeds(make_inputs(case, *EXPORT_SHAPE)))
    other = feeds(make_inputs(case, *OTHER_SHAPES[0]))
    assert not _stock_runs(stock, other)
    assert _stock_runs(fuse(stock), other)


@pytest.mark.parametrize("exporter,opset", MATRIX, ids=[f"{e}{o}" for e, o in MATRIX])
def test_stock_transformer_fuses_all_six_attentions(exporter, opset):
    from maskedmha.demo import NAMES, DemoTranslator, demo_inputs
    stock = onnx.load_from_string(stock_demo(exporter, opset))
    report = []
    fused = fuse(stock, report)
    assert count_mha(fused) == 6, [r.detail for r in report]
    assert len(fused.graph.node) < len(stock.graph.node) / 4
    torch.manual_seed(0)
    model = DemoTranslator().eval()
    for shape in [(2, 12, 10), (3, 20, 15), (1, 5, 7)]:
        args = demo_inputs(*shape, seed=1)
        with no_fastpath(), torch.no_grad():
            expected = model(*args).numpy()
        got = _run(fused, {n: a.numpy() for n, a in zip(NAMES, args)}, library=True)[0]
        assert_matches(got, expected, f"Transformer output at {shape}")
