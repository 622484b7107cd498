"""One-node MaskedMHA models described by ``maskedmha.symbolic.fallback.Config`` (which inputs are
present, mask kinds, attributes), their random feeds and the op's torch reference: what the
fallback and decompose tests build on."""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from maskedmha.symbolic.fallback import Config
from maskedmha.symbolic.mha_call import reference
from maskedmha.symbolic.schema import DOMAIN, INPUT_NAMES, OP_TYPE, OPSET_VERSION

E, H, KD, VD = 12, 3, 10, 6


def attrs_of(cfg: Config) -> dict:
    """The node attributes ``cfg`` stands for."""
    return dict(num_heads=cfg.num_heads, is_causal=int(cfg.is_causal),
                add_zero_attn=int(cfg.add_zero_attn),
                fully_masked_row="nan" if cfg.nan else "zero",
                average_attn_weights=int(cfg.weights != "all"))



def make_model(cfg: Config, opset: int) -> onnx.ModelProto:
    """One MaskedMHA node (no functions yet) with every present input a graph input."""
    kd, vd = (E, E) if cfg.packed else (KD, VD)
    f32, b = TensorProto.FLOAT, TensorProto.BOOL
    specs = {
        "query": (f32, ["B", "L", E]), "key": (f32, ["B", "S", kd]),
        "value": (f32, ["B", "S", vd]),
        "in_proj_weight": (f32, [3 * E if cfg.packed else E, E]),
        "k_proj_weight": (f32, [E, KD]) if not cfg.packed else None,
        "v_proj_weight": (f32, [E, VD]) if not cfg.packed else None,
        "in_proj_bias": (f32, [3 * E]) if cfg.in_bias else None,
        "out_proj_weight": (f32, [E, E]),
        "out_proj_bias": (f32, [E]) if cfg.out_bias else None,
        "bias_k": (f32, [E]) if cfg.bias_kv else None,
        "bias_v": (f32, [E]) if cfg.bias_kv else None,
        "key_padding_mask": ((b if cfg.kpm == "b" else f32, ["B", "S"]) if cfg.kpm else None),
        "attn_mask": None,
        "sequence_offsets": None,   # the variable-length mode: tests/test_fallback_varlen.py
    }
    if cfg.am:
        specs["attn_mask"] = (b if cfg.am[1] == "b" else f32,
                              ["L", "S"] if cfg.am[0] == "2" else ["BH", "L", "S"])
    inputs = [helper.make_tensor_value_info(n, *specs[n]) for n in INPUT_NAMES if specs[n]]
    node_inputs = [n if specs[n] else "" for n in INPUT_NAMES]
    outputs = [helper.make_tensor_value_info("output", f32, None)]
    if cfg.weights:
        outputs.append(helper.make_tensor_value_info("attn_weights", f32, None))
    node = helper.make_node(OP_TYPE, node_inputs, [o.name for o in outputs], domain=DOMAIN,
                            **attrs_of(cfg))
    graph = helper.make_graph([node], "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid(DOMAIN, OPSET_VERSION)],
                             ir_version=10)


def make_feeds(cfg: Config, B, L, S, seed, fully_masked=False):
    """Random inputs for ``cfg``'s node; ``fully_masked``: the last batch item's keys all padded."""
    rng = np.random.default_rng(seed)
    kd, vd = (E, E) if cfg.packed else (KD, VD)
    f = {"query": rng.standard_normal((B, L, E)), "key": rng.standard_normal((B, S, kd)),
         "value": rng.standard_normal((B, S, vd)),
         "in_proj_weight": rng.standard_normal((3 * E if cfg.packed else E, E)) * 0.3,
         "out_proj_weight": rng.standard_normal((E, E)) * 0.3}
    if not cfg.packed:
        f["k_proj_weight"] = rng.standard_normal((E, KD)) * 0.3
        f["v_proj_weight"] = rng.standard_normal((E, VD)) * 0.3
    if cfg.in_bias:
        f["in_proj_bias"] = rng.standard_normal(3 * E)
    if cfg.out_bias:
        f["out_proj_bias"] = rng.standard_normal(E)
    if cfg.bias_kv:
        f["bias_k"], f["bias_v"] = rng.standard_normal(E), rng.standard_normal(E)
    f = {k: v.astype(np.float32) for k, v in f.items()}
    if cfg.kpm:
        m = rng.random((B, S)) < 0.3
        if S:
            m[:, 0] = False
        if fully_masked and B:
            m[-1, :] = True
        f["key_padding_mask"] = m if cfg.kpm == "b" else np.where(
            m, -np.inf, rng.standard_normal((B, S))).astype(np.float32)
    if cfg.am:
        shape = (L, S) if cfg.am[0] == "2" else (B * cfg.num_heads, L, S)
        m = rng.random(shape) < 0.3
        if S:
            m[..., 0] = False
        f["attn_mask"] = m if cfg.am[1] == "b" else np.where(
            m, -np.inf, rng.standard_normal(shape)).astype(np.float32)
    return f


def torch_reference(cfg: Config, feeds):
    """The op's torch reference (maskedmha.symbolic.mha_call.reference) for ``cfg``'s node."""
    args = [torch.from_numpy(feeds[n]) if n in feeds else None for n in INPUT_NAMES]
    out, w = reference(*args, **attrs_of(cfg))
    return [out.numpy()] + ([w.numpy()] if cfg.weights else [])


def assert_same(got, ref, what, atol=2e-5):
    """Same number of outputs, shapes and NaN positions; the rest close."""
    assert len(got) == len(ref), what
    for g, r in zip(got, ref):
        assert g.shape == r.shape, what
        assert np.array_equal(np.isnan(g), np.isnan(r)), what
        np.testing.assert_allclose(np.nan_to_num(g), np.nan_to_num(r), rtol=1e-5, atol=atol,
                                   err_msg=what)
