"""The standard-op fallback (one FunctionProto per node signature, attributes read at run time)
and maskedmha.decompose (one specialised body per node), on single-node MaskedMHA models built by
hand: every configuration the op allows, opsets 17..25, run on stock ORT at several shapes
against the op's torch reference.  Files with several nodes and signatures, and runtimes that
ignore function overloads: test_fallback_overloads.py."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import maskedmha
from maskedmha.symbolic.attach import GUARD_OVERLOADS, attach_functions
from maskedmha.symbolic.fallback import Config, Signature, build_function
from helpers import ort_release
from helpers.configs import E, H, assert_same, make_feeds, make_model, torch_reference
from helpers.graphs import stock_session

# What an older ORT says about an opset or IR version newer than it reads (ORT 1.17: opset 20,
# IR 9; 1.19/1.20: opset 21, IR 10): the model is not for that runtime, so the test is skipped.
TOO_NEW = ("Unsupported model IR version", "Current official support for domain ai.onnx is till")


def run_stock(model, feeds):
    try:
        sess = stock_session(model)
    except Exception as e:  # noqa: BLE001
        if any(t in str(e) for t in TOO_NEW) and ort_release.VERSION < (1, 32):
            pytest.skip(f"onnxruntime {ort.__version__} does not read this opset / IR version")
        raise
    return sess.run(None, feeds)


CONFIGS = [
    Config(num_heads=H),
    Config(num_heads=H, packed=False, in_bias=False, out_bias=False, kpm="f", am="3b",
           weights="all"),
    Config(num_heads=H, bias_kv=True, add_zero_attn=True, kpm="b", am="2f", nan=True,
           weights="avg"),
    Config(num_heads=H, am="3f", kpm="b", weights="avg", nan=True),
    Config(num_heads=H, am="2b", bias_kv=True, weights="all"),
    Config(num_heads=H, is_causal=True),
    Config(num_heads=H, kpm="b", am="3b", nan=True),
    Config(num_heads=H, is_causal=True, add_zero_attn=True, kpm="b", weights="avg"),
    Config(num_heads=1, packed=False, add_zero_attn=True, kpm="b", am="3f"),
]


@pytest.mark.parametrize("opset", [17, 18, 20, 23, 25])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.id)
def test_fallback_matches_reference(cfg, opset):
    if opset > onnx.defs.onnx_opset_version():   # the onnx floor (1.17) knows opsets <= 22
        pytest.skip(f"onnx {onnx.__version__} does not know opset {opset}")
    model = attach_functions(make_model(cfg, opset))
    # one signature: one shared function, no overload, IR 9 unless the opset needs more
    # (opset 21, 22: IR 10; 23, 24: 11; 25: 12 by onnx's version table)
    ir = max(9, helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
    assert [f.overload for f in model.functions] == [""]
    assert model.graph.node[0].overload == ""
    assert model.ir_version == ir
    onnx.checker.check_model(model, full_check=True)
    dec = maskedmha.decompose(model)
    onnx.checker.check_model(dec, full_check=True)
    assert all(n.domain in ("", "ai.onnx") for n in dec.graph.node)
    assert not dec.functions
    assert dec.ir_version == ir
    for i, (B, L, S) in enumerate([(2, 4, 5), (3, 1, 7), (1, 6, 2)]):
        feeds = make_feeds(cfg, B, L, S, seed=i, fully_masked=(i == 0))
        ref = torch_reference(cfg, feeds)
        assert_same(run_stock(model, feeds), ref, f"{cfg.id} opset {opset} fallback {B,L,S}")
        assert_same(run_stock(dec, feeds), ref, f"{cfg.id} opset {opset} decomposed {B,L,S}")


@pytest.mark.parametrize("nan", [False, True])
def test_fully_masked_rows(nan):
    cfg = Config(num_heads=H, kpm="b", am="2b", nan=nan, weights="avg")
    model = attach_functions(make_model(cfg, 18))
    feeds = make_feeds(cfg, 2, 3, 4, seed=0, fully_masked=True)
    out, w = run_stock(model, feeds)
    if nan:
        assert np.isnan(out[-1]).all() and np.isnan(w[-1]).all()
    else:  # attention contributes 0: the row equals out_proj_bias; weights 0
        np.testing.assert_allclose(out[-1], np.broadcast_to(feeds["out_proj_bias"], (3, E)),
                                   rtol=1e-6)
        assert (w[-1] == 0).all()
    assert np.isfinite(out[0]).all()


@pytest.mark.parametrize("B,L,S", [(0, 3, 4), (2, 0, 4), (2, 3, 0)])
def test_empty_tensors(B, L, S):
    cfg = Config(num_heads=H, kpm="b", weights="avg", nan=True)
    model = attach_functions(make_model(cfg, 18))
    feeds = make_feeds(cfg, B, L, S, seed=0)
    assert_same(run_stock(model, feeds), torch_reference(cfg, feeds), f"{B,L,S}")


def test_decompose_attaches_missing_functions_and_keeps_input_model():
    cfg = Config(num_heads=H, kpm="b", am="3f", weights="all")
    bare = make_model(cfg, 18)  # no functions, no overload
    before = bare.SerializeToString()
    dec = maskedmha.decompose(bare)
    assert bare.SerializeToString() == before
    onnx.checker.check_model(dec, full_check=True)
    assert not any(i.domain == maskedmha.DOMAIN for i in dec.opset_import)
    feeds = make_feeds(cfg, 2, 3, 4, seed=1)
    assert_same(run_stock(dec, feeds), torch_reference(cfg, feeds), "decomposed bare model")


def test_two_configs_in_one_model_get_their_own_functions():
    a = Config(num_heads=H, kpm="b")
    b = Config(num_heads=H, am="2f", weights="all")
    ma, mb = make_model(a, 18), make_model(b, 18)
    # chain: b's query is a's output
    nb = mb.graph.node[0]
    nb.input[0] = "output"
    for i, o in enumerate(nb.output):
        nb.output[i] = "b_" + o
    graph = ma.graph
    graph.node.append(nb)
    names = {i.name for i in graph.input}
    graph.input.extend([i for i in mb.graph.input if i.name not in names and i.name != "query"])
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info("b_output", TensorProto.FLOAT, None),
                         helper.make_tensor_value_info("b_attn_weights", TensorProto.FLOAT,
                                                       None)])
    model = attach_functions(ma)
    attach_functions(model)  # idempotent
    # two signatures: one function each, told apart by overload, between the two guards
    assert [f.overload for f in model.functions] == [
        GUARD_OVERLOADS[0], a.signature.id, b.signature.id, GUARD_OVERLOADS[1]]
    assert [n.overload for n in model.graph.node] == [a.signature.id, b.signature.id]
    assert model.ir_version == 10
    onnx.checker.check_model(model, full_check=True)
    fa, fb = make_feeds(a, 2, 3, 3, seed=0), make_feeds(b, 2, 3, 3, seed=1)
    feeds = dict(fb)
    feeds.update(fa)
    if ort_release.VERSION < (1, 27):
        # ORT 1.19-1.26 ignore overloads (ORT 1.17 does not read IR 10): refused, never wrong
        with pytest.raises(Exception, match="needs_function_overloads|IR version"):
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = None
    else:
        got = run_stock(model, feeds)
    ref_a = torch_reference(a, fa)[0]
    fb2 = dict(fb)
    fb2.update({k: fa[k] for k in ("key", "value", "in_proj_weight", "in_proj_bias",
                                   "out_proj_weight", "out_proj_bias")})
    fb2["query"] = ref_a
    ref_b = torch_reference(b, fb2)
    if got is not None:
        assert_same(got, ref_b, "chained")
    assert_same(run_stock(maskedmha.decompose(model), feeds), ref_b, "chained, decomposed")


def test_unsupported_opset_is_a_clear_error():
    with pytest.raises(ValueError, match="opset 16"):
        build_function(Config(num_heads=2), 16)


def test_signature_ids_are_distinct_and_ignore_attributes():
    flags = list(itertools.product([True, False], repeat=5))
    ids = {Signature(packed=p, in_bias=ib, out_bias=ob, bias_kv=bkv, weights=w).id
           for p, ib, ob, bkv, w in flags}
    assert len(ids) == len(flags)
    a = Config(num_heads=8, am="3f", kpm="b", is_causal=True, nan=True, weights="avg")
    b = Config(num_heads=2, am="2f", kpm="b", add_zero_attn=True, weights="all")
    assert a.signature == b.signature
    assert a.signature.id == "packed.ib.ob.kpm_b.am_f.w"


def test_config_ids_are_distinct():
    flags = list(itertools.product([True, False], repeat=4))
    ids = {Config(num_heads=2, packed=p, in_bias=ib, out_bias=ob, bias_kv=bkv).id
           for p, ib, ob, bkv in flags}
    assert len(ids) == len(flags)
    assert Config(num_heads=8, in_bias=True, out_bias=True, kpm="b", am="3f",
                  weights="avg").id == "h8.packed.ib.ob.kpm_b.am3_f.w_avg"
