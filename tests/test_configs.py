"""Every nn.MultiheadAttention configuration × both exporters, against PyTorch itself.

For each case the model is exported once (at EXPORT_SHAPE, with dynamic axes) and then run at the
export shape and at two other (batch, seq) shapes by: the fused session (our kernel), the same
file on stock ORT (its fallback function), and decompose()'s output."""
from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import maskedmha
from helpers.cases import (CASES, EXPORT_SHAPE, OTHER_SHAPES, assert_matches, build_module,
                       dynamic_axes, feeds, input_names, make_inputs, output_names, reference)

EXPORTERS = ["dynamo", "torchscript"]


@functools.lru_cache(maxsize=None)
def exported(case, exporter, tmp_dir):
    module = build_module(case)
    args = make_inputs(case, *EXPORT_SHAPE)
    path = f"{tmp_dir}/{case.name}.{exporter}.onnx"
    model = maskedmha.export(module, tuple(args.values()), path, input_names=input_names(case, args),
                             output_names=output_names(case), dynamic_axes=dynamic_axes(case),
                             exporter=exporter)
    return module, path, model


@pytest.fixture(scope="session")
def tmp_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("exports"))


def _run(session: ort.InferenceSession, all_feeds: dict) -> list[np.ndarray]:
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in all_feeds.items() if k in names})


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_case_matches_pytorch(case, exporter, tmp_dir):
    module, path, model = exported(case, exporter, tmp_dir)

    fused_nodes = [n for n in model.graph.node if n.domain == maskedmha.DOMAIN]
    assert [n.op_type for n in fused_nodes] == [maskedmha.OP_TYPE], "expected exactly one fused node"
    assert not any(n.op_type in ("Softmax", "MatMul", "Gemm") for n in model.graph.node), \
        "attention arithmetic left outside the fused node"

    plain = maskedmha.decompose(model)
    assert all(n.domain in ("", "ai.onnx") for n in plain.graph.node)
    onnx.checker.check_model(plain)

    runtimes = {
        "fused kernel": maskedmha.InferenceSession(path),
        "same file, no library": ort.InferenceSession(path, providers=["CPUExecutionProvider"]),
        "decompose()": ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"]),
    }
    for shape in [EXPORT_SHAPE, *OTHER_SHAPES]:
        args = make_inputs(case, *shape, seed=sum(shape))
        expected = reference(module, args)
        for label, session in runtimes.items():
            actual = _run(session, feeds(args))
            assert len(actual) == len(expected)
            for i, (a, e) in enumerate(zip(actual, expected)):
                assert_matches(a, e, f"{case.name}/{exporter}/{label}/shape {shape}/output {i}")


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_fused_false_writes_standard_ops(exporter, tmp_path):
    case = CASES[0]
    module = build_module(case)
    args = make_inputs(case, *EXPORT_SHAPE)
    path = str(tmp_path / "plain.onnx")
    model = maskedmha.export(module, tuple(args.values()), path, input_names=input_names(case, args),
                             output_names=output_names(case), dynamic_axes=dynamic_axes(case),
                             exporter=exporter, fused=False)
    assert all(n.domain in ("", "ai.onnx") for n in onnx.load(path).graph.node)
    assert not model.functions
    other = make_inputs(case, *OTHER_SHAPES[0], seed=3)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert_matches(_run(session, feeds(other))[0], reference(module, other)[0], "fused=False")


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("mask", ["kpm_bool", "kpm_float", "am_bool2"])
def test_fully_masked_rows_follow_pytorch(mask, need_weights, exporter, tmp_path):
    """PyTorch gives NaN rows with need_weights=True and out_proj.bias rows without: so do we."""
    from helpers.cases import Case
    case = Case("fully_masked", need_weights=need_weights,
                kpm=mask.split("_")[1] if mask.startswith("kpm") else None,
                attn_mask="bool2" if mask == "am_bool2" else None)
    module = build_module(case)
    args = make_inputs(case, 2, 5, 5)
    if case.kpm:
        args["key_padding_mask"][0] = True if case.kpm == "bool" else float("-inf")
    else:
        args["attn_mask"][1] = True
    path = str(tmp_path / "m.onnx")
    maskedmha.export(module, tuple(args.values()), path, input_names=input_names(case, args),
                     output_names=output_names(case), dynamic_axes=dynamic_axes(case), exporter=exporter)
    expected = reference(module, args)
    assert np.isnan(expected[0]).any() == need_weights  # guards the premise of this test
    for label, session in (("fused", maskedmha.InferenceSession(path)),
                           ("fallback", ort.InferenceSession(path, providers=["CPUExecutionProvider"]))):
        for i, (a, e) in enumerate(zip(_run(session, feeds(args)), expected)):
            assert_matches(a, e, f"{label} output {i}")
