"""Weights, inputs and one ONNX graph per ONNX Runtime alternative, all for the same Point.

Every graph takes the same named inputs — ``query`` (B, L, E), ``memory`` (B, S, E) for
cross-attention, ``key_padding_mask`` bool (B, S) True = pad, ``attn_mask`` bool (L, S) True =
hidden — with B, L, S symbolic, and holds the same weights as initializers.  Mask conversions an
alternative needs (int32 keep-masks, float biases, combined (B, 1, L, S) masks) are nodes of its
graph, so each one starts from what a user of nn.MultiheadAttention has."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from grid import Point

OPSET = 23          # ONNX Attention needs 23; every graph uses it so the stock ops are the same
IR_VERSION = 11


class NotApplicable(Exception):
    """This alternative cannot express the point (e.g. com.microsoft.Attention is self-attention only)."""


@dataclass
class Weights:
    w_in: np.ndarray    # (3E, E) packed [Wq; Wk; Wv], as nn.MultiheadAttention.in_proj_weight
    b_in: np.ndarray    # (3E,)
    w_out: np.ndarray   # (E, E)
    b_out: np.ndarray   # (E,)


def make_weights(E: int, seed: int = 0) -> Weights:
    """nn.MultiheadAttention's initialisation (xavier-uniform, fan (E, 3E)) with non-zero biases."""
    rng = np.random.default_rng(seed)
    a = np.sqrt(6.0 / (E + 3 * E))
    w_in = rng.uniform(-a, a, (3 * E, E)).astype(np.float32)
    b = 1.0 / np.sqrt(E)
    w_out = rng.uniform(-b, b, (E, E)).astype(np.float32)
    return Weights(w_in, rng.uniform(-0.1, 0.1, 3 * E).astype(np.float32),
                   w_out, rng.uniform(-0.1, 0.1, E).astype(np.float32))


def valid_lengths(B: int, S: int, pad: float) -> np.ndarray:
    """Per batch item number of real keys, so that the mean padded fraction is ``pad``: padded
    fractions spread evenly over [pad/2, 3·pad/2] (so no item is fully padded up to pad = 0.66)."""
    if B == 1:
        fracs = np.array([pad])
    else:
        fracs = pad * (0.5 + np.arange(B) / (B - 1))
    return np.clip(S - np.rint(fracs * S).astype(int), 1, S)


def make_inputs(p: Point, seed: int = 1) -> dict[str, np.ndarray]:
    """The graph inputs for ``p``: padding is a suffix of the keys; the random mask hides ~30% of
    (query, key) pairs but never key 0, so no row is ever fully masked."""
    rng = np.random.default_rng(seed)
    feeds = {"query": rng.standard_normal((p.B, p.L, p.E), dtype=np.float32)}
    if p.cross:
        feeds["memory"] = rng.standard_normal((p.B, p.S, p.E), dtype=np.float32)
    if p.pad > 0:
        lengths = valid_lengths(p.B, p.S, p.pad)
        feeds["key_padding_mask"] = np.arange(p.S)[None, :] >= lengths[:, None]
    if p.mask == "random":
        am = rng.random((p.L, p.S)) < 0.3
        am[:, 0] = False
        feeds["attn_mask"] = am
    return feeds


def causal_mask(L: int, S: int) -> np.ndarray:
    """bool (L, S), True = hidden: key j is hidden from query i when j > i (top-left aligned)."""
    return np.triu(np.ones((L, S), dtype=bool), 1)


# ----------------------------------------------------------------------------------------------
class _G:
    """A tiny graph builder: unique names, initializers, nodes."""

    def __init__(self, p: Point):
        self.p, self.nodes, self.inits, self.n = p, [], [], 0
        self.inputs = [helper.make_tensor_value_info("query", T.FLOAT, ["B", "L", p.E])]
        if p.cross:
            self.inputs.append(helper.make_tensor_value_info("memory", T.FLOAT, ["B", "S", p.E]))
        if p.pad > 0:
            self.inputs.append(helper.make_tensor_value_info("key_padding_mask", T.BOOL, ["B", "S"]))
        if p.mask == "random":
            self.inputs.append(helper.make_tensor_value_info("attn_mask", T.BOOL, ["L", "S"]))

    @property
    def kv(self) -> str:
        return "memory" if self.p.cross else "query"

    def init(self, name: str, arr) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def op(self, op_type: str, inputs, n_out: int = 1, domain: str = "", **attrs):
        self.n += 1
        outs = [f"{op_type.lower()}{self.n}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, domain=domain or None,
                                           name=f"{op_type}_{self.n}", **attrs))
        return outs[0] if n_out == 1 else outs

    def model(self, out: str, extra_opsets=()) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [out], ["output"], name="out"))
        g = helper.make_graph(self.nodes, "mha", self.inputs,
                              [helper.make_tensor_value_info("output", T.FLOAT, ["B", "L", self.p.E])],
                              initializer=self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]
                              + [helper.make_opsetid(d, v) for d, v in extra_opsets])
        m.ir_version = IR_VERSION
        return m

    # shared pieces
    def linear(self, x: str, w: np.ndarray, b: np.ndarray, name: str) -> str:
        """x · w^T + b (w as PyTorch stores it, (out, in))."""
        y = self.op("MatMul", [x, self.init(f"{name}_wT", w.T)])
        return self.op("Add", [y, self.init(f"{name}_b", b)])

    def qkv(self, w: Weights):
        """Projected Q, K, V (B, *, E): one packed GEMM for self-attention, Q and a packed K|V GEMM
        for cross-attention."""
        E = self.p.E
        if not self.p.cross:
            packed = self.linear("query", w.w_in, w.b_in, "in_proj")
            return self.op("Split", [packed, self.init("split3", np.array([E, E, E], np.int64))],
                           n_out=3, axis=-1)
        q = self.linear("query", w.w_in[:E], w.b_in[:E], "q_proj")
        kv = self.linear("memory", w.w_in[E:], w.b_in[E:], "kv_proj")
        k, v = self.op("Split", [kv, self.init("split2", np.array([E, E], np.int64))], n_out=2, axis=-1)
        return q, k, v

    def keep_kpm(self) -> str:
        """bool (B, S), True = real key."""
        return self.op("Not", ["key_padding_mask"])

    def causal_hidden(self) -> str:
        """bool (L, S), True = hidden (j > i), from the runtime shapes."""
        l = self.op("Slice", [self.op("Shape", ["query"]), self.init("i1", np.array([1], np.int64)),
                              self.init("i2", np.array([2], np.int64))])
        s = self.op("Slice", [self.op("Shape", [self.kv]), "i1", "i2"])
        ones = self.op("ConstantOfShape", [self.op("Concat", [l, s], axis=0)],
                       value=helper.make_tensor("one", T.FLOAT, [1], [1.0]))
        upper = self.op("Trilu", [ones, self.init("k1", np.array(1, np.int64))], upper=1)
        return self.op("Cast", [upper], to=T.BOOL)


def fused(p: Point, w: Weights) -> onnx.ModelProto:
    """One com.maskedmha::MaskedMHA node; causal as the is_causal attribute."""
    g = _G(p)
    ins = ["query", g.kv, g.kv, g.init("in_proj_weight", w.w_in), "", "", g.init("in_proj_bias", w.b_in),
           g.init("out_proj_weight", w.w_out), g.init("out_proj_bias", w.b_out), "", "",
           "key_padding_mask" if p.pad > 0 else "", "attn_mask" if p.mask == "random" else ""]
    while not ins[-1]:
        ins.pop()
    out = g.op("MaskedMHA", ins, domain="com.maskedmha", num_heads=p.H, is_causal=int(p.mask == "causal"))
    return g.model(out, [("com.maskedmha", 1)])


def fused_skip(p: Point, w: Weights) -> onnx.ModelProto:
    """The fused node with skip_padded_queries=1 (opt-in; docs/MaskedMHA.md): padded query rows
    are not computed and come out 0.  Self-attention with key padding only."""
    if p.cross or p.pad <= 0:
        raise NotApplicable("skip_padded_queries needs self-attention with a key padding mask")
    model = fused(p, w)
    node = next(n for n in model.graph.node if n.op_type == "MaskedMHA")
    node.attribute.append(helper.make_attribute("skip_padded_queries", 1))
    return model


def ort_attention(p: Point, w: Weights) -> onnx.ModelProto:
    """com.microsoft.Attention (packed QKV projection inside) + MatMul/Add output projection.
    mask_index int32 1 = keep: (B, S) for padding, (B, L, S) when a random mask is combined in."""
    if p.cross:
        raise NotApplicable("com.microsoft.Attention is self-attention only")
    g = _G(p)
    mask = ""
    if p.mask == "random":
        keep = g.op("Not", ["attn_mask"])                                   # (L, S)
        if p.pad > 0:
            kpm = g.op("Unsqueeze", [g.keep_kpm(), g.init("ax1", np.array([1], np.int64))])
            keep = g.op("And", [kpm, keep])                                 # (B, L, S)
        else:
            shape = g.op("Concat", [g.op("Shape", ["query"], end=1), g.op("Shape", ["attn_mask"])], axis=0)
            keep = g.op("Expand", [keep, shape])
        mask = g.op("Cast", [keep], to=T.INT32)
    elif p.pad > 0:
        mask = g.op("Cast", [g.keep_kpm()], to=T.INT32)                     # (B, S)
    ins = ["query", g.init("qkv_w", w.w_in.T), g.init("qkv_b", w.b_in)] + ([mask] if mask else [])
    att = g.op("Attention", ins, domain="com.microsoft", num_heads=p.H,
               unidirectional=int(p.mask == "causal"))
    return g.model(g.linear(att, w.w_out, w.b_out, "out_proj"), [("com.microsoft", 1)])


def ort_mha(p: Point, w: Weights) -> onnx.ModelProto:
    """MatMul/Add projections + com.microsoft.MultiHeadAttention (key_padding_mask int32 1 = keep,
    attention_bias float (1, 1, L, S) for masks, unidirectional for causal self-attention) +
    output projection."""
    g = _G(p)
    q, k, v = g.qkv(w)
    kpm = g.op("Cast", [g.keep_kpm()], to=T.INT32) if p.pad > 0 else ""
    bias, uni = "", 0
    hidden = "attn_mask" if p.mask == "random" else None
    if p.mask == "causal":
        if p.cross:   # unidirectional is not top-left causal when S != L: use a bias instead
            hidden = g.causal_hidden()
        else:
            uni = 1
    if hidden:
        b = g.op("Where", [hidden, g.init("neg_inf", np.array(-np.inf, np.float32)),
                           g.init("zero", np.array(0.0, np.float32))])
        bias = g.op("Unsqueeze", [b, g.init("ax01", np.array([0, 1], np.int64))])
    ins = [q, k, v, "", kpm, bias]
    while not ins[-1]:
        ins.pop()
    att = g.op("MultiHeadAttention", ins, domain="com.microsoft", num_heads=p.H, unidirectional=uni)
    return g.model(g.linear(att, w.w_out, w.b_out, "out_proj"), [("com.microsoft", 1)])


def onnx_attention(p: Point, w: Weights) -> onnx.ModelProto:
    """MatMul/Add projections + ONNX Attention (opset 23, 3-D Q/K/V with q/kv_num_heads) + output
    projection.  attn_mask bool True = attend, (B, 1, L, S) with padding (ORT needs the full L dim),
    (1, 1, L, S) for a random mask alone; causal as is_causal."""
    g = _G(p)
    q, k, v = g.qkv(w)
    mask = ""
    if p.mask == "random":
        mask = g.op("Unsqueeze", [g.op("Not", ["attn_mask"]), g.init("ax01", np.array([0, 1], np.int64))])
    if p.pad > 0:
        kpm = g.op("Unsqueeze", [g.keep_kpm(), g.init("ax12", np.array([1, 2], np.int64))])  # (B,1,1,S)
        if mask:
            mask = g.op("And", [kpm, mask])
        else:
            shape = g.op("Concat", [g.op("Shape", ["query"], end=1), g.init("c1", np.array([1], np.int64)),
                                    g.op("Shape", ["query"], start=1, end=2),
                                    g.op("Shape", [g.kv], start=1, end=2)], axis=0)
            mask = g.op("Expand", [kpm, shape])
    ins = [q, k, v] + ([mask] if mask else [])
    att = g.op("Attention", ins, q_num_heads=p.H, kv_num_heads=p.H, is_causal=int(p.mask == "causal"))
    return g.model(g.linear(att, w.w_out, w.b_out, "out_proj"))


def decomposed(p: Point, w: Weights) -> onnx.ModelProto:
    """maskedmha.decompose() of the fused graph: MaskedMHA replaced by standard ops."""
    import maskedmha
    return maskedmha.decompose(fused(p, w))


BUILDERS = {"fused": fused, "fused_skip": fused_skip, "decomposed": decomposed, "ort_attention": ort_attention,
            "ort_mha": ort_mha, "onnx_attention": onnx_attention}
