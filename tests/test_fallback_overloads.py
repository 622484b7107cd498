"""Files with several MaskedMHA nodes: the in-file fallback must be right or refused on every
runtime that loads the file, never silently wrong.

Measured (issue 11): ONNX Runtime 1.19.2 .. 1.26.0 ignore the IR-10 ``overload`` field and inline
the LAST function of ``model.functions`` with the node's (domain, name) for every node; ORT >= 1.27
honour overloads; ORT 1.17 reads IR <= 9 only.  With one function per configuration, a 4-head and
a 2-head node both ran the 2-head body on ORT 1.19-1.26.

These tests run under whatever onnxruntime the venv holds (.venv: 1.32; scripts/ort_venv.sh makes
others) and also simulate an overload-ignoring runtime on any release: a copy of the file keeping
only the last (or the first) same-named function, overloads stripped, must be refused at session
creation or be right.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import maskedmha
from maskedmha.symbolic.attach import (GUARD_OVERLOADS, attach_functions,
                                     lowest_ir_version, mha_nodes)
from maskedmha.symbolic.fallback import DOMAIN, GUARD_OP, OP_TYPE, Config
from maskedmha.symbolic.mha_call import reference
from maskedmha.symbolic.schema import INPUT_NAMES
from helpers.configs import E, assert_same, attrs_of, make_feeds, make_model
from helpers.graphs import stock_session as session
from helpers.ort_release import HONOURS_OVERLOADS



def chain(cfgs, opset=18) -> onnx.ModelProto:
    """Node i's query is node i-1's output; every other input of node i is its own graph input
    ``n{i}_<name>``; every node's outputs are graph outputs (no functions yet)."""
    nodes, inputs, prev = [], [], None
    for i, cfg in enumerate(cfgs):
        single = make_model(cfg, opset)
        node = single.graph.node[0]
        rename = {x.name: f"n{i}_{x.name}" for x in single.graph.input}
        if prev is not None:
            rename["query"] = prev
        for j, x in enumerate(node.input):
            if x:
                node.input[j] = rename[x]
        for j, x in enumerate(node.output):
            node.output[j] = f"n{i}_{x}"
        node.name = f"mha{i}"
        for x in single.graph.input:
            if x.name == "query" and prev is not None:
                continue
            x = copy.deepcopy(x)
            x.name = rename[x.name]
            for d in x.type.tensor_type.shape.dim:
                if d.dim_param == "BH":     # B * num_heads: differs between nodes
                    d.dim_param = f"BH{i}"
            inputs.append(x)
        nodes.append(node)
        prev = node.output[0]
    outputs = []  # every node's outputs, so no node loses its attn_weights output
    for node, cfg in zip(nodes, cfgs):
        shapes = [["B", "L", E]]
        if cfg.weights:
            shapes.append(["B", "L", None] if cfg.weights == "avg"
                          else ["B", cfg.num_heads, "L", None])
        outputs += [helper.make_tensor_value_info(o, TensorProto.FLOAT, shape)
                    for o, shape in zip(node.output, shapes)]
    graph = helper.make_graph(nodes, "chain", inputs, outputs)
    return helper.make_model(graph, ir_version=10, opset_imports=[
        helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)])


def chain_feeds(cfgs, B, L, S, seed, fully_masked=False):
    feeds = {}
    for i, cfg in enumerate(cfgs):
        for k, v in make_feeds(cfg, B, L, S, seed + 17 * i, fully_masked).items():
            if k != "query" or i == 0:
                feeds[f"n{i}_{k}"] = v
    return feeds


def chain_reference(cfgs, feeds):
    """The op's torch reference applied node by node: every node's outputs, in order."""
    q, outs = None, []
    for i, cfg in enumerate(cfgs):
        args = [torch.from_numpy(feeds[f"n{i}_{n}"]) if f"n{i}_{n}" in feeds else None
                for n in INPUT_NAMES]
        if q is not None:
            args[0] = q
        q, w = reference(*args, **attrs_of(cfg))
        outs += [q.numpy()] + ([w.numpy()] if cfg.weights else [])
    return outs


def right_or_refused(model, cfgs, what, shapes=((2, 4, 5), (3, 1, 7), (1, 6, 2)), extra=None):
    """Run ``model``: session creation may fail (returns the error text); if it succeeds every
    output must match the reference.  Returns None when it ran.  ``extra``: more feeds."""
    try:
        sess = session(model)
    except Exception as e:  # noqa: BLE001 - any refusal at session creation is acceptable here
        return str(e)
    for i, (B, L, S) in enumerate(shapes):
        feeds = chain_feeds(cfgs, B, L, S, seed=i, fully_masked=(i == 0))
        feeds.update(extra or {})
        assert_same(sess.run(None, feeds), chain_reference(cfgs, feeds), f"{what} {B, L, S}",
                    atol=3e-5)
    return None


def as_if_overloads_ignored(model, pick):
    """What a runtime that ignores ``overload`` runs: every MaskedMHA node with the one function
    of that (domain, name) it picks ("last": ORT 1.19-1.26, measured; "first": another plausible
    rule), overloads stripped."""
    ours = [f for f in model.functions if f.domain == DOMAIN and f.name == OP_TYPE]
    chosen = copy.deepcopy(ours[-1] if pick == "last" else ours[0])
    chosen.overload = ""
    m = copy.deepcopy(model)
    others = [f for f in m.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
    del m.functions[:]
    m.functions.extend(others + [chosen])
    for n in mha_nodes(m):
        n.overload = ""
    m.ir_version = lowest_ir_version(m)       # 9: ORT 1.17 reads the copy too
    return m


# Nodes that differ only in attributes (one signature each list) ...
SAME_SIGNATURE = {
    "heads_4_2": [Config(num_heads=4, kpm="b"), Config(num_heads=2, kpm="b")],
    "heads_4_2_float_kpm": [Config(num_heads=4, kpm="f"), Config(num_heads=2, kpm="f")],
    "heads_am_rank_3_2": [Config(num_heads=4, am="3b"), Config(num_heads=2, am="2b"),
                          Config(num_heads=6, am="3b")],
    "every_attribute": [
        Config(num_heads=4, kpm="b", am="3f", weights="avg", nan=True),
        Config(num_heads=2, kpm="b", am="2f", weights="all", add_zero_attn=True),
        Config(num_heads=3, kpm="b", am="3f", weights="avg", is_causal=True),
        Config(num_heads=1, kpm="b", am="2f", weights="all", nan=True, is_causal=True,
               add_zero_attn=True)],
    "bias_kv_zero_attn": [Config(num_heads=4, bias_kv=True, am="2f", add_zero_attn=True),
                          Config(num_heads=2, bias_kv=True, am="3f")],
    "causal_or_not": [Config(num_heads=3, is_causal=True), Config(num_heads=6),
                      Config(num_heads=2, is_causal=True)],
}
# ... and nodes that cannot share a function.
SEVERAL_SIGNATURES = {
    "kpm_bool_float": [Config(num_heads=4, kpm="b"), Config(num_heads=2, kpm="f")],
    "kpm_or_none": [Config(num_heads=4, kpm="b"), Config(num_heads=4)],
    "weights_or_not": [Config(num_heads=4, kpm="b"), Config(num_heads=2, kpm="b",
                                                           weights="avg")],
    "packed_sep_masks": [Config(num_heads=4, am="2b"), Config(num_heads=2, packed=False,
                                                               am="3f", in_bias=False),
                         Config(num_heads=3, am="3b", weights="all", nan=True)],
}


@pytest.mark.parametrize("name", SAME_SIGNATURE)
def test_nodes_differing_in_attributes_share_one_correct_function(name):
    cfgs = SAME_SIGNATURE[name]
    model = attach_functions(chain(cfgs))
    ours = [f for f in model.functions if f.domain == DOMAIN]
    assert len(ours) == 1 and ours[0].overload == ""
    assert all(n.overload == "" for n in model.graph.node)
    assert model.ir_version == 9               # ORT 1.17 reads it
    onnx.checker.check_model(model, full_check=True)
    # no overload anywhere: every runtime that loads the file runs this, and it is right
    assert right_or_refused(model, cfgs, name) is None
    dec = maskedmha.decompose(model)
    assert dec.ir_version == 9 and not dec.functions
    assert right_or_refused(dec, cfgs, f"{name} decomposed") is None


@pytest.mark.parametrize("name", sorted(SAME_SIGNATURE) + sorted(SEVERAL_SIGNATURES))
@pytest.mark.parametrize("pick", ["last", "first"])
def test_runtime_ignoring_overloads_is_right_or_refused(name, pick):
    """Fails on per-configuration functions (the 4- and 2-head nodes ran one head count)."""
    cfgs = {**SAME_SIGNATURE, **SEVERAL_SIGNATURES}[name]
    model = attach_functions(chain(cfgs))
    refusal = right_or_refused(as_if_overloads_ignored(model, pick), cfgs, f"{name} {pick}")
    if name in SEVERAL_SIGNATURES:
        assert refusal is not None and GUARD_OP in refusal, refusal


@pytest.mark.parametrize("name", sorted(SEVERAL_SIGNATURES))
def test_several_signatures_right_where_overloads_count_refused_elsewhere(name):
    cfgs = SEVERAL_SIGNATURES[name]
    model = attach_functions(chain(cfgs))
    sigs = list(dict.fromkeys(c.signature.id for c in cfgs))
    assert [f.overload for f in model.functions] == [GUARD_OVERLOADS[0], *sigs,
                                                     GUARD_OVERLOADS[1]]
    assert [n.overload for n in model.graph.node] == [c.signature.id for c in cfgs]
    assert model.ir_version == 10
    onnx.checker.check_model(model, full_check=True)
    refusal = right_or_refused(model, cfgs, name)
    if HONOURS_OVERLOADS:
        assert refusal is None, refusal
    else:  # ORT < 1.27: the guard names the problem (ORT 1.17: IR 10 is unsupported)
        assert refusal is not None
        assert GUARD_OP in refusal or "IR version" in refusal, refusal
    dec = maskedmha.decompose(model)          # works on every runtime
    assert dec.ir_version == 9 and not dec.functions
    assert all(n.domain == "" for n in dec.graph.node)
    assert right_or_refused(dec, cfgs, f"{name} decomposed") is None


def test_ir_version_is_the_lowest_the_file_needs():
    cfgs = SAME_SIGNATURE["heads_4_2"]
    assert attach_functions(chain(cfgs, opset=21)).ir_version == 10
    model = chain(cfgs)
    entry = model.graph.node[0].metadata_props.add()   # as torch.onnx's dynamo exporter writes
    entry.key, entry.value = "namespace", "mha"
    several = chain(SEVERAL_SIGNATURES["kpm_or_none"])
    several.graph.node[0].metadata_props.add().CopyFrom(entry)
    # metadata_props (IR 10) alone: dropped, IR 9; with overloads (IR 10 anyway): kept
    assert attach_functions(model).ir_version == 9
    assert not any(n.metadata_props for n in model.graph.node)
    assert attach_functions(several).ir_version == 10
    assert several.graph.node[0].metadata_props
    dec = maskedmha.decompose(several)        # drops them: IR 9, ORT 1.17 reads it
    assert dec.ir_version == 9 and not any(n.metadata_props for n in dec.graph.node)
    assert right_or_refused(dec, SEVERAL_SIGNATURES["kpm_or_none"], "decomposed") is None
    model = chain(cfgs)
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT4   # IR-10 content: kept
    assert attach_functions(model).ir_version == 10
    model = chain(cfgs)
    model.ir_version = 8                               # an older exporter's IR: raised to 9
    assert attach_functions(model).ir_version == 9


def test_attach_replaces_per_configuration_functions_of_older_files():
    """A file written by the per-configuration attach (overload = Config.id, IR 10) is rewritten
    to the shared function; decompose ignores its functions."""
    cfgs = SAME_SIGNATURE["heads_4_2"]
    model = chain(cfgs)
    for node, cfg in zip(model.graph.node, cfgs):
        node.overload = cfg.id
    model.functions.extend(copy.deepcopy(f) for f in attach_functions(chain(cfgs[1:])).functions)
    model.functions[0].overload = cfgs[1].id      # a 2-head body named for node 1 only
    dec = maskedmha.decompose(model)
    assert right_or_refused(dec, cfgs, "old file decomposed") is None
    attach_functions(model)
    assert [f.overload for f in model.functions] == [""]
    assert right_or_refused(model, cfgs, "old file re-attached") is None


def test_decompose_accepts_a_path_or_bytes(tmp_path):
    cfgs = SEVERAL_SIGNATURES["kpm_bool_float"]
    model = attach_functions(chain(cfgs))
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    for source in (str(path), path, path.read_bytes()):
        dec = maskedmha.decompose(source)
        assert not dec.functions and dec.ir_version == 9
        assert right_or_refused(dec, cfgs, f"decompose({type(source).__name__})") is None
    with pytest.raises(TypeError, match="ModelProto, a path or bytes"):
        maskedmha.decompose(42)


def in_if_body(cfgs) -> onnx.ModelProto:
    """``chain(cfgs)`` with the last node moved into both branches of an If (input ``cond``),
    as the torchscript exporter writes a MaskedMHA inside control flow."""
    model = chain(cfgs)
    inner = model.graph.node[-1]
    del model.graph.node[-1]
    branches = []
    for tag in ("then", "else"):
        node = copy.deepcopy(inner)
        node.output[:] = [f"{tag}_{o}" for o in inner.output]
        branches.append(helper.make_graph([node], tag, [], [
            helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in node.output]))
    model.graph.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    model.graph.node.append(helper.make_node("If", ["cond"], list(inner.output),
                                             then_branch=branches[0], else_branch=branches[1]))
    return model


@pytest.mark.parametrize("name,cfgs", [
    ("same_signature", [Config(num_heads=4, kpm="b"), Config(num_heads=2, kpm="b")]),
    ("no_kpm_inside", [Config(num_heads=4, kpm="b"), Config(num_heads=2)]),
    ("weights_inside", [Config(num_heads=4, kpm="b"), Config(num_heads=4, kpm="b",
                                                               weights="avg")]),
])
def test_nodes_inside_an_if_body_get_their_fallback(name, cfgs):
    """A node in a subgraph counts like any other: before, attach skipped it (it called the main
    graph's function whatever its signature) and decompose() failed on it."""
    model = attach_functions(in_if_body(cfgs))
    several = cfgs[0].signature != cfgs[1].signature
    assert len([f for f in model.functions if f.domain == DOMAIN]) == (4 if several else 1)
    onnx.checker.check_model(model, full_check=True)
    for cond in (True, False):
        extra = {"cond": np.array(cond)}
        refusal = right_or_refused(model, cfgs, f"{name} {cond}", extra=extra)
        if refusal is not None:
            assert several and not HONOURS_OVERLOADS, refusal
        for pick in ("last", "first"):
            refusal = right_or_refused(as_if_overloads_ignored(model, pick), cfgs,
                                       f"{name} {cond} {pick}", extra=extra)
            assert (refusal is not None and GUARD_OP in refusal) == several, refusal
        dec = maskedmha.decompose(model)
        assert dec.ir_version == 9 and not dec.functions
        assert right_or_refused(dec, cfgs, f"{name} {cond} decomposed", extra=extra) is None
