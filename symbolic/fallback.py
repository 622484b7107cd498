"""The standard-op fallback of ``com.maskedmha::MaskedMHA``: one ``FunctionProto`` per
configuration (the node's ``overload``), its body the decomposition of docs/MaskedMHA.md.

Shapes stay dynamic: B, L, S, E come from ``Shape`` at run time (Reshape uses 0/-1 codes);
only H (part of the configuration) is a constant.  Default-domain opsets 17..25 are supported (tested with ORT 1.32)
(ReduceMean/ReduceMax take ``axes`` as an attribute before 18 and as an input from 18; Split
takes ``num_outputs`` from 18).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .mha_call import INPUT_NAMES

DOMAIN = "com.maskedmha"
OP_TYPE = "MaskedMHA"
ATTRIBUTES = ("num_heads", "is_causal", "add_zero_attn", "fully_masked_row",
              "average_attn_weights")
MIN_OPSET, MAX_OPSET = 17, 25


@dataclass(frozen=True)
class Config:
    """Everything that changes the fallback body of one MaskedMHA node."""
    num_heads: int
    packed: bool = True          # inputs 4/5 absent
    in_bias: bool = True         # input 6
    out_bias: bool = True        # input 8
    bias_kv: bool = False        # inputs 9/10
    kpm: str | None = None       # None, "b" (bool) or "f" (float)
    am: str | None = None        # None or "2b", "2f", "3b", "3f" (rank + kind)
    is_causal: bool = False
    add_zero_attn: bool = False
    nan: bool = False            # fully_masked_row == "nan"
    weights: str | None = None   # None (one output), "avg" or "all"

    @property
    def id(self) -> str:
        parts = [f"h{self.num_heads}", "packed" if self.packed else "sep"]
        if self.in_bias:
            parts.append("ib")
        if self.out_bias:
            parts.append("ob")
        if self.bias_kv:
            parts.append("bkv")
        if self.add_zero_attn:
            parts.append("za")
        if self.kpm:
            parts.append(f"kpm_{self.kpm}")
        if self.am:
            parts.append(f"am{self.am[0]}_{self.am[1]}")
        if self.is_causal:
            parts.append("causal")
        if self.nan:
            parts.append("nan")
        if self.weights:
            parts.append(f"w_{self.weights}")
        return ".".join(parts)


class _Builder:
    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self._n = 0

    def name(self, hint):
        self._n += 1
        return f"_{hint}_{self._n}"

    def op(self, op_type, inputs, hint=None, n_out=1, **attrs):
        outs = [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, dtype=np.int64, hint="c"):
        arr = np.array(value, dtype=dtype)
        out = self.name(hint)
        self.nodes.append(helper.make_node(
            "Constant", [], [out], value=numpy_helper.from_array(arr, out)))
        return out

    def ints(self, *values):
        return self.const(list(values))

    def dim(self, x, start, end=None):
        """Shape(x)[start:end] as a 1-D int64 tensor."""
        if end is None:
            end = start + 1
        if start == -1 and end == 0:
            return self.op("Shape", [x], "dim", start=-1)
        return self.op("Shape", [x], "dim", start=start, end=end)

    def transpose(self, x, perm):
        return self.op("Transpose", [x], "tr", perm=list(perm))

    def reduce(self, op_type, x, axes, keepdims):
        if self.opset >= 18:
            return self.op(op_type, [x, self.ints(*axes)], keepdims=keepdims)
        return self.op(op_type, [x], axes=list(axes), keepdims=keepdims)

    def split3(self, x):
        if self.opset >= 18:
            return self.op("Split", [x], "split", n_out=3, axis=0, num_outputs=3)
        return self.op("Split", [x], "split", n_out=3, axis=0)


def _canon(b: _Builder, mask: str, kind: str) -> str:
    """Boolean mask -> additive float mask (-inf where true); float masks pass through."""
    if kind == "f":
        return mask
    ninf = b.const(-np.inf, np.float32, "ninf")
    zero = b.const(0.0, np.float32, "zero")
    return b.op("Where", [mask, ninf, zero], "canon")


def build_function(cfg: Config, opset: int) -> onnx.FunctionProto:
    """The FunctionProto ``com.maskedmha::MaskedMHA`` (overload ``cfg.id``) for ``cfg``, whose
    body uses only default-domain ops of ``opset``."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"maskedmha: default-domain opset {opset} is not supported "
                         f"({MIN_OPSET}..{MAX_OPSET})")
    b = _Builder(opset)
    query, key, value, w_in, w_k, w_v, b_in, w_out, b_out, bias_k, bias_v, kpm, am = INPUT_NAMES
    H = cfg.num_heads

    # --- input projections -------------------------------------------------------------
    if cfg.packed:
        wq, wk, wv = b.split3(w_in)
    else:
        wq, wk, wv = w_in, w_k, w_v
    projected = []
    biases = b.split3(b_in) if cfg.in_bias else (None, None, None)
    for x, w, bias, hint in ((query, wq, biases[0], "q"), (key, wk, biases[1], "k"),
                             (value, wv, biases[2], "v")):
        y = b.op("MatMul", [x, b.transpose(w, (1, 0))], hint)
        if bias is not None:
            y = b.op("Add", [y, bias], hint)
        projected.append(y)
    q, k, v = projected                                           # (B, L|S, E)

    if cfg.bias_kv:
        shape_b1e = b.op("Concat", [b.dim(k, 0), b.ints(1), b.dim(k, 2)], axis=0)
        for name, extra in (("k", bias_k), ("v", bias_v)):
            ext = b.op("Expand", [b.op("Reshape", [extra, b.ints(1, 1, -1)]), shape_b1e])
            if name == "k":
                k = b.op("Concat", [k, ext], "k", axis=1)
            else:
                v = b.op("Concat", [v, ext], "v", axis=1)

    # --- heads: q (B,H,L,D), kT (B,H,D,S'), v (B,H,S',D) --------------------------------
    # explicit sizes, not -1: Reshape cannot infer -1 when B, L or S is 0
    e_dim = b.dim(w_out, 0)
    heads = b.op("Concat", [b.ints(0, 0, H), b.op("Div", [e_dim, b.ints(H)])], axis=0)
    q4 = b.transpose(b.op("Reshape", [q, heads]), (0, 2, 1, 3))
    kT = b.transpose(b.op("Reshape", [k, heads]), (0, 2, 3, 1))
    v4 = b.transpose(b.op("Reshape", [v, heads]), (0, 2, 1, 3))
    if cfg.add_zero_attn:
        zero = b.const([0.0], np.float32, "zero")
        zk = b.op("Expand", [zero, b.op("Concat", [b.dim(kT, 0, 3), b.ints(1)], axis=0)])
        kT = b.op("Concat", [kT, zk], "kT", axis=3)
        zv = b.op("Expand", [zero, b.op("Concat", [b.dim(v4, 0, 2), b.ints(1), b.dim(v4, 3)],
                                         axis=0)])
        v4 = b.op("Concat", [v4, zv], "v4", axis=2)

    # --- scores ---------------------------------------------------------------------------
    d = b.op("Cast", [b.dim(q4, 3)], to=TensorProto.FLOAT)
    scale = b.op("Sqrt", [b.op("Div", [b.const(1.0, np.float32, "one"), d])], "scale")
    scores = b.op("MatMul", [b.op("Mul", [q4, scale]), kT], "scores")  # (B,H,L,S')

    # --- masks (cover the S given keys; the X extra keys are padded with 0) ----------------
    mask = None
    if cfg.am:
        m = _canon(b, am, cfg.am[1])
        if cfg.am[0] == "3":   # (B*H, L, S) -> (B, H, L, S)
            m = b.op("Reshape", [m, b.op("Concat", [b.dim(query, 0), b.ints(H),
                                                    b.dim(am, 1, 3)], axis=0)])
        mask = m
    if cfg.kpm:
        m = _canon(b, kpm, cfg.kpm)
        m = b.op("Unsqueeze", [m, b.ints(1, 2)], "kpm4")       # (B,1,1,S)
        mask = m if mask is None else b.op("Add", [mask, m], "mask")
    if mask is not None:
        extra = int(cfg.bias_kv) + int(cfg.add_zero_attn)
        if extra:
            rank = 4 if (cfg.kpm or (cfg.am and cfg.am[0] == "3")) else 2
            pads = b.ints(*([0] * (2 * rank - 1) + [extra]))
            mask = b.op("Pad", [mask, pads, b.const(0.0, np.float32, "zero")], "mask")
        scores = b.op("Add", [scores, mask], "scores")
    if cfg.is_causal:
        n_l = b.op("Squeeze", [b.dim(scores, 2)])
        n_s = b.op("Squeeze", [b.dim(scores, 3)])
        zero_i, one_i = b.const(0), b.const(1)
        rows = b.op("Unsqueeze", [b.op("Range", [zero_i, n_l, one_i]), b.ints(1)])
        cols = b.op("Range", [zero_i, n_s, one_i])
        hidden = b.op("Greater", [cols, rows], "causal")         # (L, S')
        causal = b.op("Where", [hidden, b.const(-np.inf, np.float32, "ninf"),
                                b.const(0.0, np.float32, "zero")])
        scores = b.op("Add", [scores, causal], "scores")

    # --- softmax, fully masked rows ----------------------------------------------------------
    p = b.op("Softmax", [scores], "p", axis=-1)
    row_max = b.reduce("ReduceMax", scores, [-1], 1)
    dead = b.op("Equal", [row_max, b.const(-np.inf, np.float32, "ninf")], "dead")
    fill = b.const(np.nan if cfg.nan else 0.0, np.float32, "fill")
    p = b.op("Where", [dead, fill, p], "p")

    # --- output ------------------------------------------------------------------------------
    o = b.op("MatMul", [p, v4], "o")                                  # (B,H,L,D)
    shape_ble = b.op("Concat", [b.ints(0, 0), e_dim], axis=0)
    o = b.op("Reshape", [b.transpose(o, (0, 2, 1, 3)), shape_ble], "o")  # (B,L,E)
    out = b.op("MatMul", [o, b.transpose(w_out, (1, 0))], "out")
    outputs = ["output"]
    if cfg.out_bias:
        b.nodes.append(helper.make_node("Add", [out, b_out], ["output"]))
    else:
        b.nodes.append(helper.make_node("Identity", [out], ["output"]))
    if cfg.weights:
        outputs.append("attn_weights")
        if cfg.weights == "avg":
            w = b.reduce("ReduceMean", p, [1], 0)
            b.nodes.append(helper.make_node("Identity", [w], ["attn_weights"]))
        else:
            b.nodes.append(helper.make_node("Identity", [p], ["attn_weights"]))

    return helper.make_function(
        DOMAIN, OP_TYPE, list(INPUT_NAMES), outputs, b.nodes,
        [helper.make_opsetid("", opset)], attributes=list(ATTRIBUTES), overload=cfg.id)
