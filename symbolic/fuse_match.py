"""Find the subgraphs that compute ``F.multi_head_attention_forward`` in a stock-exported ONNX file
and read the ``MaskedMHA`` node that replaces each one (``maskedmha.fuse`` verifies and applies).

What the stock exporters emit (torch 2.13; read from the exports of tests/helpers/cases.py):

- TorchScript (``dynamo=False``, opsets 17-20), self-attention, ``batch_first=True``::

      Transpose[1,0,2](x) -> MatMul(., W_in^T[E,3E]) -> Add(b_in) -> Reshape(L,B,3,E)
      -> Unsqueeze -> Transpose[3,1,2,0,4] -> Squeeze -> Gather 0|1|2        (q, k, v)
      -> Reshape(L, B*H, D) -> Transpose[1,0,2] -> Reshape(B,H,L,D)
      q: Mul(sqrt(scale)); k: Transpose[0,1,3,2] -> Mul(sqrt(scale))     (scale from Shape)
      MatMul(q, k^T) -> Add(mask) -> Softmax -> MatMul(., v) -> Transpose[2,0,1,3]
      -> Reshape(L*B, E) -> Gemm(W_out, b_out, transB=1) -> Reshape(L,B,E) -> Transpose[1,0,2]

  cross-attention has one MatMul(+Add) per projection (kdim/vdim: W_k^T[Kd,E], W_v^T[Vd,E]);
  the masks go through Cast/Where(-inf)/Reshape(B,1,1,S)/Expand/Reshape/Unsqueeze/Add/Pad;
  ``is_causal`` (SDPA path) builds Where(Equal(Trilu(Expand(1))), 0, -inf) from shapes only;
  ``add_bias_kv`` is Concat(k, Tile(bias_k)) before the head split, ``add_zero_attn`` a
  Concat(k, zeros) after it; ``need_weights`` uses one scale Mul on q, MatMul, Add(mask)
  (baddbmm), Softmax, and Reshape(B,H,L,S') [-> ReduceMean over heads] as output 1.
  Sizes the tracer saw (``bsz*num_heads``, lengths) are baked into Reshape shape constants.
- dynamo (``dynamo=True``, opsets 17 (converted from 18)-23): the same dataflow with
  ``Reshape(allowzero=1)`` on shapes computed from ``Shape`` slices, constant scales
  (``Mul(q, D**-0.25)``, ``Mul(k^T, D**-0.25)`` for SDPA, ``Mul(q, D**-0.5)`` for baddbmm),
  ``Where(kpm, -inf, 0)``, ``Tile``/``Expand(0)`` for bias_kv / zero_attn, ``Pad`` on masks,
  ``Split`` of in_proj_weight for cross-attention, the causal mask as ``Where(.., -3.4e38, 0)``,
  and an output projection without bias when the bias is all zeros.  At opset 23 the SDPA path
  (need_weights=False) is one ONNX ``Attention(q, k, v, mask)`` on 4-D (B, H, L|S, D) values
  instead of MatMul/Softmax/MatMul (ORT 1.32 runs it with a (B, H, 1, S) padding mask only
  when L == 1: such stock files fail at their own export shape; fused, they run).

Why a dataflow reader here and not ``onnxscript.rewriter`` patterns: the exported sequence differs
in every dimension the op has (mask kind x merge x bias_kv x add_zero_attn x need_weights x
average x packed/k-is-v/separate projections x batch_first x exporter x opset: several hundred
fixed node sequences, each also differing in where the scale Mul sits and which shape subgraph
feeds each Reshape).  Instead this module anchors at each ``Softmax``, walks the dataflow
backwards and forwards through the op kinds listed above (layout ops, constant scales, bias
Concats, mask preparation), and *reads* what it needs: weights and biases from the constant
operands of the projection MatMul/Gemm/Add nodes, head count, lengths and extra keys from the
shapes of the values at one run of the original file (``probe``), scales and bias_k/bias_v from
their values.  Anything it does not recognise rejects the candidate with a reason (the
``--report`` line).  Shape subgraphs are not matched at all: they die with the nodes they fed
(``apply``), which is what removes the baked sizes.  ``maskedmha.fuse`` then keeps a candidate
only when the original and the rewritten file agree numerically.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .schema import DOMAIN, OP_TYPE

# Ops that move data without computing on it (walked through on the q/k/v paths).
_LAYOUT = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Gather",
           "Slice", "Split", "Expand"}
# Ops that prepare a mask (walked through from the Add that puts it on the scores).
_MASK_OPS = {"Cast", "Where", "Reshape", "Expand", "Unsqueeze", "Squeeze", "Add", "Or", "Not",
             "Concat", "Pad", "Transpose", "Tile", "Slice", "Identity", "Flatten", "Mul",
             "Neg", "Sub", "Equal"}
# Ops on the attention weights between the Softmax and output 1.
_WEIGHT_OPS = {"Reshape", "ReduceMean", "ReduceSum", "Div", "Transpose", "Squeeze",
               "Unsqueeze", "Identity"}
_SHAPE_ONLY = {"Shape", "Size"}


class Reject(Exception):
    """A candidate that is not (recognisably) nn.MultiheadAttention: the message says why."""


@dataclass
class Candidate:
    """One Softmax's attention, read from the graph: what the MaskedMHA node needs."""
    anchor: str                        # the Softmax or Attention node read (for the report)
    query: str
    key: str
    value: str
    q_transpose: bool                  # True: the value is (L, B, E): transpose it first
    k_transpose: bool
    v_transpose: bool
    weights: dict                      # op input name -> numpy array (projections, biases, ...)
    num_heads: int
    add_zero_attn: bool
    is_causal: bool
    output: str                        # the value the node's output 0 replaces
    out_transpose: bool                # True: output must be (L, B, E)
    attn_weights: str | None = None    # the value output 1 replaces
    average: bool = True
    masks: list = field(default_factory=list)   # [(value name, numpy dtype, rank)]
    roles: list = field(default_factory=list)   # candidate role tuples for the masks
    core: list = field(default_factory=list)    # node names that must die with the match
    mask_types: dict = field(default_factory=dict)


class GraphIndex:
    """Producers, consumers and constant values of the main graph."""

    def __init__(self, model: onnx.ModelProto, probe: dict):
        g = model.graph
        self.model = model
        self.probe = probe
        self.producer = {}
        self.consumers = {}
        for n in g.node:
            for o in n.output:
                if o:
                    self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.inits = {i.name: i for i in g.initializer}
        self.graph_inputs = {i.name for i in g.input} - set(self.inits)
        self.graph_outputs = {o.name for o in g.output}
        self._dd = {}

    def readers(self, name: str) -> list:
        """The nodes that read ``name``'s values (Shape/Size read only its shape, which a
        replacement keeps)."""
        return [n for n in self.consumers.get(name, []) if n.op_type not in _SHAPE_ONLY]

    def data_dependent(self, name: str) -> bool:
        """Whether ``name``'s values (not just its shape) depend on a graph input."""
        if not name:
            return False
        stack, order = [name], []
        while stack:                                 # iterative: graphs can be deep
            v = stack.pop()
            if v in self._dd:
                continue
            n = self.producer.get(v)
            if n is None or n.op_type in _SHAPE_ONLY:
                self._dd[v] = v in self.graph_inputs
                continue
            pending = [i for i in n.input if i and i not in self._dd]
            if pending:
                stack.append(v)
                stack.extend(pending)
                continue
            self._dd[v] = any(self._dd.get(i, False) for i in n.input if i)
            order.append(v)
        return self._dd[name]

    def value(self, name: str):
        """The numpy value of ``name`` at the probe run (initializers included)."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        if name in self.probe:
            return self.probe[name]
        raise Reject(f"value {name!r} was not computed by the probe run")

    def const(self, name: str):
        """The value of a constant (not data-dependent) operand, or None."""
        if not name or self.data_dependent(name):
            return None
        return self.value(name)


def _scalar(a) -> float | None:
    a = np.asarray(a)
    return float(a.reshape(-1)[0]) if a.size == 1 and np.issubdtype(a.dtype, np.floating) else None


@dataclass
class _Proj:
    x: str               # data input of the projection
    w: np.ndarray        # (in, out): x @ w
    b: np.ndarray | None
    node: str
    scale: float         # product of constant scale factors met on the way
    extras: list         # Concat operands met on the way (values), projection side first


def _walk_to_projection(gi: GraphIndex, v: str, core: list) -> _Proj:
    scale, extras = 1.0, []
    for _ in range(200):
        n = gi.producer.get(v)
        if n is None:
            raise Reject(f"{v!r} does not come from a projection (MatMul/Gemm with constant "
                         "weights)")
        op = n.op_type
        core.append(n.name)
        if op == "Gemm":
            w = gi.const(n.input[1])
            if w is None:
                break
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            if attrs.get("transA", 0):
                break
            w = w.T if attrs.get("transB", 0) else w
            w = w * attrs.get("alpha", 1.0)
            b = gi.const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            if b is not None:
                b = np.broadcast_to(b * attrs.get("beta", 1.0), (w.shape[1],)).copy()
            return _Proj(n.input[0], w, b, n.name, scale, extras[::-1])
        if op == "MatMul":
            w = gi.const(n.input[1])
            if w is None or w.ndim != 2:
                break
            return _Proj(n.input[0], w, None, n.name, scale, extras[::-1])
        if op == "Add":
            a, b = n.input
            ca, cb = gi.const(a), gi.const(b)
            bias, other = (ca, b) if ca is not None else (cb, a)
            prod = gi.producer.get(other)
            if bias is None or prod is None or prod.op_type not in ("MatMul", "Gemm"):
                break
            p = _walk_to_projection(gi, other, core)
            if p.b is not None or bias.ndim > 1 and bias.size != bias.shape[-1]:
                break
            p.b = bias.reshape(-1).copy()
            p.scale *= scale
            p.extras = p.extras + extras[::-1]
            return p
        if op in ("Mul", "Div"):
            a, b = n.input
            sa = _scalar(gi.value(a)) if not gi.data_dependent(a) else None
            sb = _scalar(gi.value(b)) if not gi.data_dependent(b) else None
            if op == "Mul" and sa is not None:
                scale, v = scale * sa, b
            elif sb is not None:
                scale, v = (scale * sb, a) if op == "Mul" else (scale / sb, a)
            else:
                break
            continue
        if op == "Concat":
            dd = [i for i in n.input if gi.data_dependent(i)]
            if len(dd) != 1 or n.input[0] != dd[0]:
                break
            extras.extend(gi.value(i) for i in reversed(n.input[1:]))
            v = dd[0]
            continue
        if op in _LAYOUT:
            if any(gi.data_dependent(i) for i in n.input[1:]):
                break
            v = n.input[0]
            continue
        break
    raise Reject(f"node {n.name!r} ({n.op_type}) on the way to a projection is not part of "
                 "nn.MultiheadAttention's graph")


def _mask_sources(gi: GraphIndex, v: str, seen: set, out: list, constants: list) -> None:
    """Data-dependent values a mask operand is prepared from (graph inputs or values computed
    outside the attention), in order; ``constants`` receives the constant operands of the Adds
    that merge masks (e.g. a causal float mask the tracer baked, added to a padding mask)."""
    if v in seen or not gi.data_dependent(v):
        return
    seen.add(v)
    n = gi.producer.get(v)
    if n is None or n.op_type not in _MASK_OPS:
        out.append(v)
        return
    if n.op_type == "Add":
        constants.extend(i for i in n.input if not gi.data_dependent(i))
    for i in n.input:
        _mask_sources(gi, i, seen, out, constants)


def _additive(m) -> np.ndarray:
    """A mask operand as added to the scores (an ONNX Attention bool mask: True = attend)."""
    m = np.asarray(m)
    return np.where(m, 0.0, -np.inf) if m.dtype == np.bool_ else m.astype(np.float64)


def _is_causal(m: np.ndarray) -> bool:
    """``m`` (additive, broadcast over leading axes) is -inf exactly above the diagonal."""
    if m.ndim < 2:
        return False
    L, S = m.shape[-2:]
    upper = np.arange(S)[None, :] > np.arange(L)[:, None]
    flat = m.reshape(-1, L, S)
    # -inf, or the lowest float (-3.4e38, the dynamo exporter's SDPA): exp() is 0 either way
    return bool(np.all(flat[:, upper] <= -1e30) and np.all(flat[:, ~upper] == 0))


def _forward_chain(gi: GraphIndex, v: str, ops: set, core: list) -> str:
    """Follow single-consumer nodes of kinds ``ops`` from ``v``; the last value reached."""
    while v not in gi.graph_outputs:
        cons = gi.readers(v)
        if len(cons) != 1 or cons[0].op_type not in ops or cons[0].input[0] != v:
            break
        n = cons[0]
        if any(gi.data_dependent(i) for i in n.input[1:]):
            break
        core.append(n.name)
        v = n.output[0]
    return v


ANCHORS = ("Softmax", "Attention")


def _read_softmax(gi: GraphIndex, softmax: onnx.NodeProto, core: list):
    """Scores side of an explicit attention: [Reshape] <- Add(mask)* <- [Mul/Div scale] <-
    MatMul(q, k^T) -> Softmax -> MatMul(., v) [-> weights output]."""
    attrs = {a.name: helper.get_attribute_value(a) for a in softmax.attribute}
    scores_shape = gi.value(softmax.input[0]).shape
    if attrs.get("axis", -1) not in (-1, len(scores_shape) - 1):
        raise Reject("Softmax is not over the last axis")
    if len(scores_shape) not in (3, 4):
        raise Reject(f"scores have rank {len(scores_shape)}, expected 3 or 4")
    v, mask_operands, scale = softmax.input[0], [], 1.0
    qk = None
    for _ in range(50):
        n = gi.producer.get(v)
        if n is None:
            break
        core.append(n.name)
        if n.op_type == "MatMul" and all(gi.data_dependent(i) for i in n.input):
            qk = n
            break
        if n.op_type in ("Reshape", "Identity", "Squeeze", "Unsqueeze"):
            v = n.input[0]
        elif n.op_type == "Add":
            a, b = n.input
            # the scores side leads to the q.k MatMul; the other operand is a mask
            if _leads_to_qk(gi, a):
                mask_operands.append(b)
                v = a
            elif _leads_to_qk(gi, b):
                mask_operands.append(a)
                v = b
            else:
                raise Reject(f"Add {n.name!r} before the Softmax: neither operand is the scores")
        elif n.op_type in ("Mul", "Div"):
            a, b = n.input
            s = _scalar(gi.value(b)) if not gi.data_dependent(b) else None
            if s is None:
                raise Reject(f"{n.op_type} {n.name!r} on the scores is not by a constant scalar")
            scale = scale * s if n.op_type == "Mul" else scale / s
            v = a
        else:
            raise Reject(f"{n.op_type} {n.name!r} between the scores and the Softmax is not "
                         "part of nn.MultiheadAttention's graph")
    if qk is None:
        raise Reject("the Softmax's input is not a q.k MatMul")
    p = softmax.output[0]
    cons = gi.readers(p)
    pv = [c for c in cons if c.op_type == "MatMul" and c.input[0] == p]
    if len(pv) != 1:
        raise Reject("the Softmax's output does not feed one MatMul with the values")
    pv = pv[0]
    core.append(pv.name)
    others = [c for c in cons if c is not pv]
    weights_out = None
    if others or p in gi.graph_outputs:
        if len(others) > 1 or (others and p in gi.graph_outputs):
            raise Reject("the attention weights are used more than once")
        weights_out = p if not others else None
        if others:
            n = others[0]
            if n.op_type not in _WEIGHT_OPS or n.input[0] != p:
                raise Reject(f"the attention weights feed {n.op_type} {n.name!r}")
            core.append(n.name)
            weights_out = _forward_chain(gi, n.output[0], _WEIGHT_OPS, core)
    return (qk.input[0], qk.input[1], pv.input[1], pv.output[0], mask_operands, scale,
            scores_shape, weights_out, False)


def _read_attention(gi: GraphIndex, node: onnx.NodeProto, core: list):
    """ONNX ``Attention`` (opset 23; the dynamo exporter's SDPA): 4-D q, k, v (B, H, L|S, D),
    an optional additive/bool mask, ``is_causal``, ``scale``."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    ins = list(node.input) + [""] * 6
    if ins[4] or ins[5] or any(o for o in node.output[1:]):
        raise Reject("Attention with a KV cache or extra outputs is not nn.MultiheadAttention")
    if attrs.get("softcap", 0.0):
        raise Reject("Attention with softcap is not nn.MultiheadAttention")
    q, k = gi.value(ins[0]), gi.value(ins[1])
    if q.ndim != 4 or k.ndim != 4 or k.shape[1] != q.shape[1]:
        raise Reject("Attention with 3-D or grouped-query inputs is not nn.MultiheadAttention")
    D = q.shape[-1]
    scale = attrs.get("scale", 1.0 / math.sqrt(D)) if D else 1.0
    masks = [ins[3]] if ins[3] else []
    causal = bool(attrs.get("is_causal", 0))
    if causal and masks:
        raise Reject("Attention with both is_causal and a mask")
    shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    return ins[0], ins[1], ins[2], node.output[0], masks, scale, shape, None, causal


def read_candidate(gi: GraphIndex, anchor: onnx.NodeProto) -> Candidate:
    """The MaskedMHA node equivalent to the attention around ``anchor`` (a Softmax, or an ONNX
    Attention node), or Reject."""
    core = [anchor.name]
    read = _read_softmax if anchor.op_type == "Softmax" else _read_attention
    (q_heads, kt_heads, v_heads, attn_out, mask_operands, scale, scores_shape, weights_out,
     causal_attr) = read(gi, anchor, core)
    # --- q, k, v projections
    qp = _walk_to_projection(gi, q_heads, core)
    kp = _walk_to_projection(gi, kt_heads, core)
    vp = _walk_to_projection(gi, v_heads, core)
    scale *= qp.scale * kp.scale
    # --- output projection: layout ops, then Gemm / MatMul[+Add] with constant weights
    o = _forward_chain(gi, attn_out, {"Transpose", "Reshape", "Identity", "Squeeze",
                                           "Unsqueeze", "Flatten"}, core)
    cons = gi.readers(o)
    if len(cons) != 1 or o in gi.graph_outputs:
        raise Reject("the attention output does not feed one output projection")
    n = cons[0]
    core.append(n.name)
    out_b = None
    if n.op_type == "Gemm" and n.input[0] == o:
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        wo = gi.const(n.input[1])
        if wo is None or a.get("transA", 0):
            raise Reject("the output projection's weight is not a constant")
        wo = (wo if a.get("transB", 0) else wo.T) * a.get("alpha", 1.0)
        if len(n.input) > 2 and n.input[2]:
            out_b = gi.const(n.input[2])
            if out_b is None:
                raise Reject("the output projection's bias is not a constant")
            out_b = np.broadcast_to(out_b * a.get("beta", 1.0), (wo.shape[0],)).copy()
        out = n.output[0]
    elif n.op_type == "MatMul" and n.input[0] == o and gi.const(n.input[1]) is not None:
        wo = gi.const(n.input[1]).T
        out = n.output[0]
        cons = gi.readers(out)
        if len(cons) == 1 and cons[0].op_type == "Add" and out not in gi.graph_outputs:
            other = [i for i in cons[0].input if i != out]
            b = gi.const(other[0]) if len(other) == 1 else None
            if b is not None and b.size == wo.shape[0]:
                out_b = b.reshape(-1).copy()
                core.append(cons[0].name)
                out = cons[0].output[0]
    else:
        raise Reject(f"the attention output feeds {n.op_type} {n.name!r}, not an output "
                     "projection with constant weights")
    E = wo.shape[0]
    if wo.shape != (E, E):
        raise Reject(f"output projection weight has shape {list(wo.shape)}, expected square")
    # after the projection: Reshape back to (L, B, E), Transpose to (B, L, E) if batch_first
    chain = []
    final = _forward_chain(gi, out, {"Reshape"}, chain)
    out_transpose = True
    cons = gi.readers(final)
    if (final not in gi.graph_outputs and len(cons) == 1 and cons[0].op_type == "Transpose"
            and _perm(cons[0]) == [1, 0, 2]):
        chain.append(cons[0].name)
        final = cons[0].output[0]
        out_transpose = False
    core.extend(chain)
    # --- inputs and their layout
    q, qt = _unbatch_first(gi, qp.x)
    k, kt = _unbatch_first(gi, kp.x)
    vv, vt = _unbatch_first(gi, vp.x)
    for name, shape in ((q, 3), (k, 3), (vv, 3)):
        if gi.value(name).ndim != shape:
            raise Reject(f"input {name!r} has rank {gi.value(name).ndim}, expected 3")
    # the layout is read from the shapes where they tell (a hand-written batch-first attention
    # has no Transpose in front of its projections); the Transpose decides otherwise
    qt = _seq_first(gi.value(q).shape, scores_shape[-2], qt)
    qv = gi.value(q)
    B, L = (qv.shape[1], qv.shape[0]) if qt else (qv.shape[0], qv.shape[1])
    kt = not _seq_first(gi.value(k).shape, B, not kt)
    vt = not _seq_first(gi.value(vv).shape, B, not vt)
    S = gi.value(k).shape[0 if kt else 1]
    out_transpose = _seq_first(gi.value(final).shape, L, out_transpose)
    # --- head count, extra keys, scale
    if len(scores_shape) == 3:
        if B == 0 or scores_shape[0] % B:
            raise Reject(f"head count could not be read: scores {list(scores_shape)} for "
                         f"batch {B}")
        H = scores_shape[0] // B
    else:
        H = scores_shape[1]
    if H < 1 or E % H:
        raise Reject(f"head count could not be read: {H} heads for embed_dim {E}")
    D = E // H
    want = 1.0 / math.sqrt(D)
    if not math.isclose(scale, want, rel_tol=1e-5):
        raise Reject(f"scores are scaled by {scale:.6g}, not 1/sqrt(head_dim) = {want:.6g}: "
                     "not nn.MultiheadAttention")
    extra = scores_shape[-1] - S
    if scores_shape[-2] != L:
        raise Reject(f"scores have {scores_shape[-2]} rows for {L} queries")
    # --- weights: packed [Wq; Wk; Wv] unless kdim/vdim differ
    w = {}
    bias_k = bias_v = None
    zero_attn = False
    kx, vx = kp.extras, vp.extras
    if len(kx) != len(vx):
        raise Reject("keys and values have different extra positions")
    for i, (ek, ev) in enumerate(zip(kx, vx)):
        ek, ev = np.asarray(ek), np.asarray(ev)
        if not np.any(ek) and not np.any(ev) and (i == len(kx) - 1) and (
                len(kx) == 2 or ek.shape[-1] == D and H > 1 or len(kx) == 1):
            zero_attn = True
        elif ek.shape[-1] == E and ev.shape[-1] == E:
            rk, rv = ek.reshape(-1, E), ev.reshape(-1, E)
            if not (np.all(rk == rk[:1]) and np.all(rv == rv[:1])):
                raise Reject("a Concat on the keys adds values that differ per batch item")
            bias_k, bias_v = rk[0].copy(), rv[0].copy()
        else:
            raise Reject("a Concat on the keys is neither bias_k nor add_zero_attn")
    if extra != int(bias_k is not None) + int(zero_attn):
        raise Reject(f"{extra} extra key positions, but found "
                     f"{int(bias_k is not None) + int(zero_attn)}")
    wq, wk, wv = qp.w, kp.w, vp.w
    bq, bk, bv = qp.b, kp.b, vp.b
    if wq.shape[1] not in (E, 3 * E):
        raise Reject(f"query projection has {wq.shape[1]} outputs")
    # a packed projection computes q, k, v (or k, v) at once: take its thirds in order
    if qp.node == kp.node == vp.node:
        if wq.shape[1] != 3 * E:
            raise Reject("one projection feeds q, k and v but is not 3*embed_dim wide")
        wq, wk, wv = wq[:, :E], wq[:, E:2 * E], wq[:, 2 * E:]
        if bq is not None:
            bq, bk, bv = bq[:E], bq[E:2 * E], bq[2 * E:]
    elif kp.node == vp.node:
        if wk.shape[1] != 2 * E or wq.shape[1] != E:
            raise Reject("the key/value projection is not 2*embed_dim wide")
        wk, wv = wk[:, :E], wk[:, E:]
        if bk is not None:
            bk, bv = bk[:E], bk[E:]
    elif qp.node in (kp.node, vp.node):
        raise Reject("query shares a projection with only one of key/value")
    for name, m in (("query", wq), ("key", wk), ("value", wv)):
        if m.shape[1] != E:
            raise Reject(f"{name} projection has {m.shape[1]} outputs, expected {E}")
    if sum(b is None for b in (bq, bk, bv)) not in (0, 3):
        # an exporter drops an all-zero bias (the default init of nn.MultiheadAttention)
        bq, bk, bv = (np.zeros(E, np.float32) if b is None else b for b in (bq, bk, bv))
    if wk.shape[0] == E and wv.shape[0] == E:
        w["in_proj_weight"] = np.concatenate([wq.T, wk.T, wv.T]).astype(np.float32)
    else:
        w["in_proj_weight"] = wq.T.astype(np.float32).copy()
        w["k_proj_weight"] = wk.T.astype(np.float32).copy()
        w["v_proj_weight"] = wv.T.astype(np.float32).copy()
    if bq is not None:
        w["in_proj_bias"] = np.concatenate([bq, bk, bv]).astype(np.float32)
    if out_b is not None:
        w["out_proj_bias"] = out_b.astype(np.float32)
    w["out_proj_weight"] = wo.astype(np.float32).copy()
    if bias_k is not None:
        w["bias_k"], w["bias_v"] = bias_k.astype(np.float32), bias_v.astype(np.float32)
    # --- masks
    sources, seen, constants = [], set(), []
    for m in mask_operands:
        if gi.data_dependent(m):
            _mask_sources(gi, m, seen, sources, constants)
        else:
            constants.append(m)
    sources = [s for s in sources if s not in (q, k, vv)]
    is_causal = causal_attr
    if constants:
        total = sum(_additive(gi.value(m)) for m in constants)
        if _is_causal(np.broadcast_to(total, total.shape)):
            if is_causal:
                raise Reject("a causal mask on top of is_causal")
            is_causal = True
        elif np.any(total):
            raise Reject("a constant mask that is not the causal one is added to the scores")
    masks, roles = [], []
    for s in sources:
        a = gi.value(s)
        if a.dtype not in (np.bool_, np.float32):
            raise Reject(f"mask {s!r} has element type {a.dtype}")
        masks.append((s, a.dtype, a.ndim))
    if len(masks) > 2:
        raise Reject(f"the scores' mask is computed from {len(masks)} values")
    roles = _mask_roles(masks, [gi.value(s).shape for s, _, _ in masks], B, L, S, H)
    if masks and not roles:
        raise Reject("the masks' shapes fit neither key_padding_mask (B, S) nor attn_mask "
                     "(L, S) / (B*H, L, S)")
    average = True
    if weights_out is not None:
        wshape = gi.value(weights_out).shape
        if wshape == (B, L, S + extra):
            average = True
        elif wshape == (B, H, L, S + extra):
            average = False
        else:
            raise Reject(f"attention weights output has shape {list(wshape)}")
    return Candidate(anchor=anchor.name, query=q, key=k, value=vv, q_transpose=qt,
                     k_transpose=kt, v_transpose=vt, weights=w, num_heads=H,
                     add_zero_attn=zero_attn, is_causal=is_causal, output=final,
                     out_transpose=out_transpose, attn_weights=weights_out, average=average,
                     masks=masks, roles=roles, core=[c for c in core if c],
                     mask_types={s: (dt, r) for s, dt, r in masks})


def _mask_roles(masks, shapes, B, L, S, H) -> list:
    """Assignments of the mask sources to (key_padding_mask, attn_mask), most likely first."""
    if not masks:
        return [()]
    import itertools
    out = []
    for roles in itertools.product(("kpm", "am"), repeat=len(masks)):
        if len(masks) == 2 and roles[0] == roles[1]:
            continue
        ok = True
        for role, shape in zip(roles, shapes):
            if role == "kpm":
                ok &= tuple(shape) == (B, S)
            else:
                ok &= tuple(shape) in ((L, S), (B * H, L, S))
        if ok:
            out.append(roles)
    return out


def _seq_first(shape, length: int, default: bool) -> bool:
    """Whether a (d0, d1, E) value has ``length`` on axis 0 (and not on axis 1)."""
    if len(shape) == 3 and shape[0] == length and shape[1] != length:
        return True
    if len(shape) == 3 and shape[1] == length and shape[0] != length:
        return False
    return default


def _perm(n) -> list:
    for a in n.attribute:
        if a.name == "perm":
            return list(a.ints)
    return []


def _unbatch_first(gi: GraphIndex, x: str):
    """(value the node reads, whether it is seq-first): a Transpose[1,0,2] in front of a
    projection is batch_first's ``query.transpose(1, 0)``."""
    n = gi.producer.get(x)
    if n is not None and n.op_type == "Transpose" and _perm(n) == [1, 0, 2]:
        return n.input[0], False
    return x, True


def _leads_to_qk(gi: GraphIndex, v: str, depth: int = 0) -> bool:
    """Whether ``v`` is the scores: a MatMul of two data-dependent values, reached through
    reshapes, constant scales and mask Adds (the other operand of an Add is a mask)."""
    n = gi.producer.get(v)
    if n is None or depth > 20:
        return False
    if n.op_type == "MatMul":
        return all(gi.data_dependent(i) for i in n.input)
    if n.op_type in ("Reshape", "Identity", "Squeeze", "Unsqueeze"):
        return _leads_to_qk(gi, n.input[0], depth + 1)
    if n.op_type in ("Mul", "Div"):
        dd = [i for i in n.input if gi.data_dependent(i)]
        return len(dd) == 1 and _leads_to_qk(gi, dd[0], depth + 1)
    if n.op_type == "Add":
        return any(_leads_to_qk(gi, i, depth + 1) for i in n.input)
    return False


def apply(model: onnx.ModelProto, cand: Candidate, roles: tuple, tag: str) -> None:
    """In place: replace the attention ``cand`` describes by one MaskedMHA node (plus Transposes
    for seq-first values), then remove the nodes nothing reads any more.  Raises Reject when a
    node of the match stays alive (an intermediate value is used outside the match)."""
    g = model.graph
    dead_before = _dead(model)
    nodes = []

    def name(s):
        return f"{tag}/{s}"

    def transposed(v, t, label):
        if not t:
            return v
        out = name(label + "_batch_first")
        nodes.append(helper.make_node("Transpose", [v], [out], name=name(label + "_transpose"),
                                      perm=[1, 0, 2]))
        return out

    ins = {"query": transposed(cand.query, cand.q_transpose, "query")}
    ins["key"] = ins["query"] if (cand.key, cand.k_transpose) == (cand.query, cand.q_transpose) \
        else transposed(cand.key, cand.k_transpose, "key")
    ins["value"] = ins["key"] if (cand.value, cand.v_transpose) == (cand.key, cand.k_transpose) \
        else transposed(cand.value, cand.v_transpose, "value")
    for k, arr in cand.weights.items():
        init = numpy_helper.from_array(arr, name(k))
        g.initializer.append(init)
        ins[k] = init.name
    for (src, _, _), role in zip(cand.masks, roles):
        ins["key_padding_mask" if role == "kpm" else "attn_mask"] = src
    from .schema import INPUT_NAMES
    node_inputs = [ins.get(n, "") for n in INPUT_NAMES]
    while node_inputs and not node_inputs[-1]:
        node_inputs.pop()
    out0 = name("output_batch_first") if cand.out_transpose else cand.output
    outputs = [out0] + ([cand.attn_weights] if cand.attn_weights else [])
    nodes.append(helper.make_node(
        OP_TYPE, node_inputs, outputs, name=name("MaskedMHA"), domain=DOMAIN,
        num_heads=cand.num_heads, is_causal=int(cand.is_causal),
        add_zero_attn=int(cand.add_zero_attn),
        fully_masked_row="nan" if cand.attn_weights else "zero",
        average_attn_weights=int(cand.average)))
    if cand.out_transpose:
        nodes.append(helper.make_node("Transpose", [out0], [cand.output],
                                      name=name("output_transpose"), perm=[1, 0, 2]))
    replaced = set(outputs) | {cand.output}
    # the nodes that produced the replaced values go; everything they alone fed follows
    kept = [n for n in g.node if not (set(n.output) & replaced)]
    # insert the new nodes where the last replaced producer stood (topological order holds:
    # every input of the new nodes is produced before the match began)
    pos = next(i for i, n in enumerate(g.node) if set(n.output) & replaced)
    before = sum(1 for n in list(g.node)[:pos] if not (set(n.output) & replaced))
    new_nodes = kept[:before] + nodes + kept[before:]
    del g.node[:]
    g.node.extend(new_nodes)
    _remove_dead(model, dead_before)
    alive = {n.name for n in g.node}
    stuck = [c for c in cand.core if c in alive]
    if stuck:
        raise Reject(f"node {stuck[0]!r} of the match is still read outside it")
    for s, (dt, rank) in cand.mask_types.items():
        _ensure_type(model, s, TensorProto.BOOL if dt == np.bool_ else TensorProto.FLOAT, rank)


def _ensure_type(model, name, elem, rank):
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.name == name and vi.type.tensor_type.elem_type:
            return
    vi = g.value_info.add()
    vi.name = name
    vi.type.tensor_type.elem_type = elem
    vi.type.tensor_type.shape.SetInParent()
    for _ in range(rank):
        vi.type.tensor_type.shape.dim.add()


def _dead(model) -> set:
    """Names of main-graph nodes whose outputs nothing reads (graph outputs count as read).
    Node names are unique (maskedmha.fuse names every node first)."""
    g = model.graph
    live = {o.name for o in g.output}
    dead = set()
    for n in reversed(list(g.node)):
        if any(o in live for o in n.output):
            live.update(i for i in n.input if i)
            live.update(_subgraph_reads(n))
        else:
            dead.add(n.name)
    return dead


def _subgraph_reads(n) -> set:
    """Outer-scope names a node's If/Loop/Scan bodies may read."""
    out = set()
    for a in n.attribute:
        for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for sn in sub.node:
                out.update(sn.input)
                out.update(_subgraph_reads(sn))
    return out


def _remove_dead(model, keep: set) -> None:
    """Drop the nodes that became dead (those dead before are left as they were), and the
    initializers and value_info nothing refers to any more."""
    g = model.graph
    dead = _dead(model) - keep
    nodes = [n for n in g.node if n.name not in dead]
    del g.node[:]
    g.node.extend(nodes)
    used = {o.name for o in g.output} | {i.name for i in g.input}
    for n in g.node:
        used.update(n.input)
        used.update(n.output)
        used.update(_subgraph_reads(n))
    inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    vis = [vi for vi in g.value_info if vi.name in used]
    del g.value_info[:]
    g.value_info.extend(vis)
