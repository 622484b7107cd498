"""MaskedMHA's output shapes reach shape inference.

* ORT side: the library gives ORT an InferOutputShapeFn (ops/masked_mha_op.cc) that sets output 0
  to query's shape.  Checked through what ORT reports for the graph outputs and, as proof that
  ORT's optimiser really uses it, by constant folding of a downstream Shape node.  Output 1's shape
  is not set by the library (ORT's context does not tell how many outputs the node has); its
  element type is, and exported models carry its shape in value_info.
* ONNX side: exported models carry value_info for the MaskedMHA outputs (symbolic/attach.py), so
  onnx.shape_inference.infer_shapes gives the right output shapes."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import maskedmha
from helpers.graphs import make_model
from helpers.reference import assert_close, make_feeds, torch_reference

B, L, S, E, H = 2, 5, 7, 12, 3

# The library gives ORT its shape-inference hook only from ORT 1.24 on: 1.17 .. 1.23 crash
# building the hook's context for a node with an absent optional input (ops/ort_api.h;
# tests/test_ort_api.py checks the hook is off there).  Without the hook ORT infers no shape.
HOOK = tuple(int(x) for x in ort.__version__.split(".")[:2]) >= (1, 24)
needs_hook = pytest.mark.skipif(
    not HOOK, reason=f"ORT {ort.__version__} < 1.24 gets no shape-inference hook (ops/ort_api.h)")


def _session(model: bytes, optimized_path=None, level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = str(optimized_path)
    return maskedmha.InferenceSession(model, so)


def _set_input_dims(model: bytes, dims: dict) -> onnx.ModelProto:
    """dims: graph input name -> list of ints/str, or None for no shape at all."""
    m = onnx.load_from_string(model)
    for vi in m.graph.input:
        if vi.name in dims:
            tt = vi.type.tensor_type
            tt.ClearField("shape")
            if dims[vi.name] is not None:
                tt.shape.SetInParent()
                for d in dims[vi.name]:
                    dim = tt.shape.dim.add()
                    if isinstance(d, int):
                        dim.dim_value = d
                    elif d is not None:  # None: an unnamed unknown dim
                        dim.dim_param = d
    return m


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("config", ["packed_kpm", "separate_biaskv", "no_optional"])
def test_ort_output_shape_symbolic(config, need_weights):
    kw = {"packed_kpm": dict(kpm="bool", attn_mask="float3"),
          "separate_biaskv": dict(kdim=8, vdim=10, bias_kv=True),
          "no_optional": dict(bias=False)}[config]
    feeds = make_feeds(B, L, S, E, H, seed=3, **kw)
    sess = _session(make_model(feeds, H, need_weights))
    outs = sess.get_outputs()
    if HOOK:
        assert outs[0].shape == ["query_d0", "query_d1", "query_d2"]
    else:  # no hook on this release: nothing inferred (and, with absent inputs, no crash)
        assert outs[0].shape in ([], None)
    assert all(o.type == "tensor(float)" for o in outs)
    res = sess.run(None, feeds)
    assert res[0].shape == (B, L, E)


@needs_hook
def test_ort_output_shape_concrete_and_partly_symbolic():
    feeds = make_feeds(B, L, S, E, H, seed=4)
    m = _set_input_dims(make_model(feeds, H), {"query": ["batch", L, E]})
    sess = _session(m.SerializeToString())
    assert sess.get_outputs()[0].shape == ["batch", L, E]


def test_ort_unknown_query_shape_leaves_output_unknown():
    """No shape (not even a rank) on query, or an unnamed unknown dim: nothing is inferred,
    nothing breaks."""
    feeds = make_feeds(B, L, S, E, H, seed=5, kpm="bool")
    for dims in (None, [B, None, E]):
        m = _set_input_dims(make_model(feeds, H), {"query": dims})
        sess = _session(m.SerializeToString())
        shape = sess.get_outputs()[0].shape
        assert shape in ([], None) or all(not isinstance(d, int) or d >= 0 for d in shape)
        (out,) = sess.run(None, feeds)
        assert_close(out, torch_reference(feeds, H)[0])


def _with_shape_consumer(model: bytes) -> onnx.ModelProto:
    """MaskedMHA -> Shape -> Reshape(output, shape): the Shape node can be constant-folded only
    when ORT knows output 0's shape."""
    m = onnx.load_from_string(model)
    g = m.graph
    g.node.append(helper.make_node("Shape", ["output"], ["out_shape"]))
    g.node.append(helper.make_node("Reshape", ["output", "out_shape"], ["y"]))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    return m


@needs_hook
def test_ort_optimizer_uses_the_inferred_shape(tmp_path):
    feeds = make_feeds(B, L, S, E, H, seed=6, kpm="bool", attn_mask="bool2")
    static = {"query": [B, L, E]}
    m = _with_shape_consumer(_set_input_dims(make_model(feeds, H), static).SerializeToString())
    opt = tmp_path / "opt.onnx"
    sess = _session(m.SerializeToString(), opt)
    (y,) = sess.run(None, feeds)
    assert_close(y, torch_reference(feeds, H)[0])
    folded = onnx.load(str(opt))
    assert "Shape" not in [n.op_type for n in folded.graph.node], "Shape was not constant-folded"
    consts = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}
    reshape = next(n for n in folded.graph.node if n.op_type == "Reshape")
    np.testing.assert_array_equal(consts[reshape.input[1]], [B, L, E])
    # Control: with query's shape unknown the same graph keeps its Shape node.
    m2 = _with_shape_consumer(_set_input_dims(make_model(feeds, H), {"query": None})
                              .SerializeToString())
    opt2 = tmp_path / "opt2.onnx"
    _session(m2.SerializeToString(), opt2).run(None, feeds)
    assert "Shape" in [n.op_type for n in onnx.load(str(opt2)).graph.node]


# ----------------------------------------------------------------------------------------------
# Exported models (need torch.onnx export)

def _dims(vi):
    return [d.dim_param if d.HasField("dim_param") else
            d.dim_value if d.HasField("dim_value") else None
            for d in vi.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name,dynamic", [
    ("bias_kv_zero_attn_weights", False), ("bias_kv_zero_attn_weights", True),
    ("weights_avg", True), ("weights_per_head", False), ("cross_kdim_vdim", True)])
def test_exported_models_infer_output_shapes(tmp_path, name, dynamic):
    from helpers.cases import CASES, EXPORT_SHAPE, export_case
    case = next(c for c in CASES if c.name == name)
    path = export_case(case, str(tmp_path / "m.onnx"), dynamic=dynamic)
    model = onnx.shape_inference.infer_shapes(onnx.load(path), strict_mode=True)
    outs = {vi.name: vi for vi in model.graph.output}
    batch, tgt, src = EXPORT_SHAPE
    if case.self_attn:
        src = tgt
    Sp = src + case.add_bias_kv + case.add_zero_attn
    E_, H_ = case.embed_dim, case.num_heads
    b, t = ("batch", "tgt") if dynamic else (batch, tgt)
    s = ("tgt" if case.self_attn else "src") if dynamic else src
    want = [b, t, E_] if case.batch_first else [t, b, E_]
    assert _dims(outs["output"]) == want
    assert outs["output"].type.tensor_type.elem_type == TensorProto.FLOAT
    if case.need_weights:
        w = _dims(outs["attn_weights"])
        if not dynamic:
            sp = Sp
        elif Sp == src:
            sp = s
        else:  # S + X with a symbolic S: not expressible as one ONNX dim; must not be a number
            assert not isinstance(w[-1], int)
            sp = w[-1]
        assert w == ([b, t, sp] if case.average_attn_weights else [b, H_, t, sp])
    # The file's MaskedMHA node outputs carry the same shapes (value_info or graph output).
    vis = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.output)}
    node = next(n for n in model.graph.node if n.op_type == "MaskedMHA")
    assert _dims(vis[node.output[0]]) == [b, t, E_]
    # ORT agrees (the library's inference, merged with the file's value_info).
    ir = onnx.load(path, load_external_data=False).ir_version
    if ir > 9 and tuple(int(x) for x in ort.__version__.split(".")[:2]) < (1, 18):
        pytest.skip(f"ORT {ort.__version__} reads ONNX IR <= 9; the exported file is IR {ir} "
                    "(the ONNX-side checks above ran)")
    sess = maskedmha.InferenceSession(path)
    assert sess.get_outputs()[0].shape == want
