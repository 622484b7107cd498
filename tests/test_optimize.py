"""maskedmha.optimize: the ORT-optimized file keeps one MaskedMHA node per attention and its
fallback, so it runs fused with the library and on a stock ORT without it, with PyTorch's numbers."""
from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest

import maskedmha
from helpers.cases import (EXPORT_SHAPE, OTHER_SHAPES, Case, assert_matches, build_module, export_case,
                       feeds, make_inputs, reference)

CASE = Case("optimize", kpm="bool", attn_mask="float2")


def _saved_by_ort(path_in, path_out):
    """What ORT alone writes: the optimized graph without our fallback functions."""
    opts = maskedmha.session_options()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = path_out
    ort.InferenceSession(path_in, sess_options=opts, providers=["CPUExecutionProvider"])
    return onnx.load(path_out)


@pytest.mark.parametrize("level", ["basic", "extended"])
def test_optimized_file_runs_with_and_without_the_library(level, tmp_path):
    path = export_case(CASE, str(tmp_path / "m.onnx"))
    # The premise: ORT's own saved file has lost the fallback.
    plain = _saved_by_ort(path, str(tmp_path / "ort.onnx"))
    assert not [f for f in plain.functions if f.domain == maskedmha.DOMAIN]
    with pytest.raises(Exception):
        ort.InferenceSession(str(tmp_path / "ort.onnx"), providers=["CPUExecutionProvider"])

    out = str(tmp_path / "opt.onnx")
    model = maskedmha.optimize(path, out, level=level)
    assert sum(n.domain == maskedmha.DOMAIN for n in model.graph.node) == 1
    assert [f for f in onnx.load(out).functions if f.domain == maskedmha.DOMAIN]
    module = build_module(CASE)
    sessions = {"fused": maskedmha.InferenceSession(out),
                "no library": ort.InferenceSession(out, providers=["CPUExecutionProvider"])}
    for shape in [EXPORT_SHAPE, *OTHER_SHAPES]:
        args = make_inputs(CASE, *shape, seed=sum(shape))
        expected = reference(module, args)
        for label, sess in sessions.items():
            assert_matches(sess.run(None, feeds(args))[0], expected[0], f"{label} {shape}")


def test_unknown_level_is_refused(tmp_path):
    path = export_case(CASE, str(tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match="level 'all'"):
        maskedmha.optimize(path, str(tmp_path / "o.onnx"), level="all")
