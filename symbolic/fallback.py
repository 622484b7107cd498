"""The standard-op fallback of ``com.maskedmha::MaskedMHA``: model-local ``FunctionProto``s whose
bodies are the decomposition of docs/MaskedMHA.md.

Two kinds of body come out of one builder:

- ``build_function(Signature, opset)``: the body carried in exported files.  It reads the six
  attributes (num_heads, is_causal, add_zero_attn, fully_masked_row, average_attn_weights,
  skip_padded_queries) from the calling node through attribute references
  (``AttributeProto.ref_attr_name``), so every node with the same *input/output signature*
  shares ONE function that is right for each of them.  This matters because ONNX Runtime
  1.19.2 .. 1.26.0 ignore the ``overload`` field and inline the LAST function of
  ``model.functions`` with the node's (domain, name) for every node (measured: with
  per-configuration functions for 4 and 2 heads both nodes ran the last one's head count).
  What cannot be an attribute (which optional inputs are present, sequence_offsets included,
  the element type of each mask, whether attn_weights is an output) is the Signature; a file
  with several signatures is handled in attach.py (overloads plus guard functions).
- ``build_function(Config, opset)``: a body specialised to one node's attribute values, used by
  ``maskedmha.decompose`` (which inlines one per node, so nothing is shared): fewer ops, no
  run-time branching on attributes.

Attribute references, function attribute defaults (``attribute_proto``, IR >= 9) and string
``Unique`` were measured to work on ORT 1.17.3, 1.19.2, 1.20.1, 1.24.4, 1.26.0, 1.27.0 and 1.32.0.
fully_masked_row is a string: string ``Equal`` exists only from opset 19 and ``StringNormalizer``
fails at session creation on ORT <= 1.26 on machines without the en_US.UTF-8 locale (measured),
so ``"nan"`` is recognised by ``Unique(Concat([value, "nan"]))`` having one element.

The variable-length mode (input 13 sequence_offsets) runs the same dense body on its sequences
scattered into a padded (B, Lmax, E) layout (``_packed_rows``) and gathers the real rows back.
What the op refuses (bad offsets, skip_padded_queries where it cannot apply) fails the run
through ``_Builder.refuse_if``, an error naming the check, never a number.

Shapes stay dynamic: B, L, S, E come from ``Shape`` at run time.  Default-domain opsets 17..25
are supported (ReduceMean/ReduceMax take ``axes`` as an attribute before 18 and as an input from
18; Split takes ``num_outputs`` from 18).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

# ATTRIBUTE_DEFAULTS are declared in the shared function (FunctionProto.attribute_proto, IR >= 9)
# so a node that omits one still gets the documented value.
from .schema import ATTRIBUTE_DEFAULTS, ATTRIBUTES, DOMAIN, INPUT_NAMES, OP_TYPE

MIN_OPSET, MAX_OPSET = 17, 25

# The guard (see attach.py): a function with our (domain, name) whose body calls an op nobody
# implements, so a runtime that picks a function by (domain, name) alone fails at session
# creation with an error naming this op instead of running another node's decomposition.
GUARD_DOMAIN = "com.maskedmha.needs_function_overloads"
GUARD_OP = ("MaskedMHA_fallback_of_this_file_needs_ONNX_function_overloads__"
            "use_onnxruntime_1_27_or_later_or_register_libmaskedmha_ops_or_maskedmha_decompose")


def _weight_parts(spec) -> list[str]:
    """The start of a Signature's or Config's id: which weight and bias inputs are present (and
    the variable-length mode, which changes every input's rank)."""
    return ["packed" if spec.packed else "sep",
            *_present(spec.in_bias and "ib", spec.out_bias and "ob", spec.bias_kv and "bkv",
                      spec.varlen and "varlen")]


def _present(*parts) -> list[str]:
    """The parts of an id that apply (the others are False or None)."""
    return [p for p in parts if p]


@dataclass(frozen=True)
class Signature:
    """What changes the shape of a MaskedMHA call, not just a value: which optional inputs are
    present, each mask's element type, whether attn_weights is an output.  Nodes with equal
    signatures share one fallback function (their attributes are read at run time)."""
    packed: bool = True          # inputs 4/5 absent
    in_bias: bool = True         # input 6
    out_bias: bool = True        # input 8
    bias_kv: bool = False        # inputs 9/10
    kpm: str | None = None       # None, "b" (bool) or "f" (float)
    am: str | None = None        # None, "b" or "f" (rank 2 or 3 is read at run time)
    weights: bool = False        # second output (need_weights)
    varlen: bool = False         # input 13 sequence_offsets (then no masks, no weights)

    @property
    def id(self) -> str:
        return ".".join(_weight_parts(self) + _present(
            self.kpm and f"kpm_{self.kpm}", self.am and f"am_{self.am}", self.weights and "w"))


@dataclass(frozen=True)
class Config:
    """Everything about one MaskedMHA node that changes its decomposition."""
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
    varlen: bool = False         # input 13 sequence_offsets
    skip: bool = False           # skip_padded_queries = 1 (needs kpm == "b", not varlen)

    def __post_init__(self):
        # The combinations the op refuses (docs/MaskedMHA.md): no body is built for them.
        if self.varlen and (self.kpm or self.am or self.weights):
            raise ValueError("maskedmha: key_padding_mask, attn_mask and the attn_weights output "
                             "are not supported with sequence_offsets (variable-length mode)")
        if self.skip and (self.varlen or self.kpm != "b"):
            raise ValueError("maskedmha: skip_padded_queries=1 needs a bool key_padding_mask "
                             "and is not supported with sequence_offsets (variable-length mode)")

    @property
    def signature(self) -> Signature:
        return Signature(packed=self.packed, in_bias=self.in_bias, out_bias=self.out_bias,
                         bias_kv=self.bias_kv, kpm=self.kpm, am=self.am[1] if self.am else None,
                         weights=self.weights is not None, varlen=self.varlen)

    @property
    def id(self) -> str:
        return ".".join([f"h{self.num_heads}", *_weight_parts(self)] + _present(
            self.add_zero_attn and "za", self.kpm and f"kpm_{self.kpm}",
            self.am and f"am{self.am[0]}_{self.am[1]}", self.is_causal and "causal",
            self.nan and "nan", self.weights and f"w_{self.weights}", self.skip and "skip"))


class _Builder:
    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self._n = 0

    def name(self, hint):
        self._n += 1
        return f"_{hint}_{self._n}"

    def op(self, op_type, inputs, hint=None, n_out=1, node_name=None, **attrs):
        outs = [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name,
                                           **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, dtype=np.int64, hint="c"):
        arr = np.array(value, dtype=dtype)
        out = self.name(hint)
        self.nodes.append(helper.make_node(
            "Constant", [], [out], value=numpy_helper.from_array(arr, out)))
        return out

    def ints(self, *values):
        return self.const(list(values))

    def attr(self, name, field, attr_type):
        """A Constant whose value is the calling node's attribute ``name`` (a reference that the
        runtime resolves when it inlines the function)."""
        out = self.name(name)
        node = helper.make_node("Constant", [], [out])
        ref = AttributeProto()
        ref.name, ref.ref_attr_name, ref.type = field, name, attr_type
        node.attribute.append(ref)
        self.nodes.append(node)
        return out

    def attr_flag(self, name):
        """The int attribute ``name`` as a bool scalar (any nonzero value is true, as in the
        kernel and in attach.node_config)."""
        return self.op("Cast", [self.attr(name, "value_int", AttributeProto.INT)],
                       name, to=TensorProto.BOOL)

    def dim(self, x, start, end=None):
        """Shape(x)[start:end] as a 1-D int64 tensor."""
        if end is None:
            end = start + 1
        return self.op("Shape", [x], "dim", start=start, end=end)

    def transpose(self, x, perm):
        return self.op("Transpose", [x], "tr", perm=list(perm))

    def reduce(self, op_type, x, axes, keepdims):
        if self.opset >= 18:
            return self.op(op_type, [x, self.ints(*axes)], keepdims=keepdims)
        return self.op(op_type, [x], axes=list(axes), keepdims=keepdims)

    def reduce_sum(self, x, axes, keepdims):
        """ReduceSum takes ``axes`` as an input from opset 13 (the other reductions from 18)."""
        return self.op("ReduceSum", [x, self.ints(*axes)], keepdims=keepdims)

    def split3(self, x):
        if self.opset >= 18:
            return self.op("Split", [x], "split", n_out=3, axis=0, num_outputs=3)
        return self.op("Split", [x], "split", n_out=3, axis=0)

    def refuse_if(self, bad, through, reason, anchor):
        """``through`` (a 1-D tensor) unchanged, or a run-time error when the bool scalar ``bad``
        is true: a Reshape to one element more than it has, which ONNX Runtime reports with this
        node's name, ``reason`` (it names the input or attribute at fault).  Everything
        downstream reads the result, so no output is computed from unchecked values.  The target
        shape also reads Size(``anchor``) (times 0), a graph input whose dims are symbolic in
        our exports: without it a ``bad`` that is constant once the node's attributes are
        substituted is folded at session creation, and ORT 1.17 then fails there with a bare
        "cannot be reshaped" that names nothing (ORT 1.32 logs the node's name and fails the
        run; measured, tests/test_fallback_varlen.py)."""
        n = self.op("Add", [self.op("Shape", [through]),
                            self.op("Mul", [self.op("Size", [anchor]), self.const(0)])], "n")
        shape = self.op("Where", [bad, self.op("Add", [n, self.ints(1)]), n], "check")
        return self.op("Reshape", [through, shape], "checked", node_name=reason)


# The names of the check nodes (fallback.refuse_if): ONNX Runtime's error names the node, so the
# name is the message.  Kept in one place for the tests.
REFUSE_SKIP = ("MaskedMHA_skip_padded_queries_1_needs_a_bool_key_padding_mask_and_L_equal_S_and_"
               "is_not_supported_with_sequence_offsets")
REFUSE_OFFSETS = ("MaskedMHA_sequence_offsets_must_be_B_plus_1_values_from_0_non_decreasing_to_T_"
                  "the_number_of_query_key_value_rows")


def _canon(b: _Builder, mask: str, kind: str) -> str:
    """Boolean mask -> additive float mask (-inf where true); float masks pass through."""
    if kind == "f":
        return mask
    ninf = b.const(-np.inf, np.float32, "ninf")
    zero = b.const(0.0, np.float32, "zero")
    return b.op("Where", [mask, ninf, zero], "canon")


def _packed_rows(b: _Builder, query: str, key: str, value: str, offsets: str):
    """The variable-length layout: sequence b is rows offsets[b]..offsets[b+1]-1 of the (T, .)
    inputs.  Returns (index, kpm, B_Lmax): ``index`` (T, 2) int64, row t's (b, i) with
    i = t - offsets[b] its position in its sequence; ``kpm`` (B, Lmax) float, -inf at the
    positions i >= len_b that the padded layout adds; ``B_Lmax`` [B, Lmax].  The offsets are
    checked first (refuse_if), with query, key and value having the same number of rows: wrong
    ones would scatter rows to wrong places."""
    zero_1d, one_1d, big = b.ints(0), b.ints(1), b.ints(np.iinfo(np.int64).max)
    zero_i, one_i = b.const(0), b.const(1)
    n_rows = b.dim(query, 0)                                         # [T]
    # [0] ++ offsets ++ [T] non-decreasing with its first and last steps 0  <=>  offsets[0] == 0,
    # non-decreasing, offsets[B] == T; and offsets has at least one value (B >= 0).
    ext = b.op("Concat", [zero_1d, offsets, n_rows], axis=0)
    steps = b.op("Sub", [b.op("Slice", [ext, one_1d, big]),
                         b.op("Slice", [ext, zero_1d, b.ints(-1)])], "steps")
    ends = b.op("Concat", [b.op("Slice", [steps, zero_1d, one_1d]),
                           b.op("Slice", [steps, b.ints(-1), big])], axis=0)
    bad = b.op("Or", [b.op("Less", [b.reduce("ReduceMin", steps, [0], 0), zero_i]),
                      b.op("Not", [b.op("Equal", [b.reduce("ReduceMax", b.op("Abs", [ends]),
                                                           [0], 0), zero_i])])])
    bad = b.op("Or", [bad, b.op("Less", [b.op("Size", [offsets]), one_i])], "bad_offsets")
    rows = b.op("Concat", [n_rows, b.dim(key, 0), b.dim(value, 0)], axis=0)
    bad = b.op("Or", [bad, b.op("Not", [b.op("Equal", [b.reduce("ReduceMax", rows, [0], 0),
                                                       b.reduce("ReduceMin", rows, [0], 0)])])],
               "bad_offsets")
    offsets = b.refuse_if(bad, offsets, REFUSE_OFFSETS, query)
    n_seq = b.op("Sub", [b.op("Shape", [offsets]), one_1d], "B")    # [B]
    starts = b.op("Slice", [offsets, zero_1d, b.ints(-1)])           # (B,)
    lengths = b.op("Sub", [b.op("Slice", [offsets, one_1d, big]), starts], "len")
    l_max = b.reduce("ReduceMax", b.op("Concat", [lengths, zero_1d], axis=0), [0], 0)  # scalar
    # row t's sequence: how many sequences end at or before t
    t = b.op("Range", [zero_i, b.op("Squeeze", [n_rows]), one_i], "t")            # (T,)
    ended = b.op("GreaterOrEqual", [b.op("Unsqueeze", [t, one_1d]),
                                    b.op("Unsqueeze", [b.op("Slice", [offsets, one_1d, big]),
                                                       zero_1d])])              # (T, B)
    seq = b.reduce_sum(b.op("Cast", [ended], to=TensorProto.INT64), [1], 0)   # (T,)
    pos = b.op("Sub", [t, b.op("Gather", [offsets, seq], axis=0)], "pos")        # (T,)
    index = b.op("Concat", [b.op("Unsqueeze", [seq, one_1d]),
                            b.op("Unsqueeze", [pos, one_1d])], "index", axis=1)  # (T, 2)
    padding = b.op("GreaterOrEqual", [
        b.op("Unsqueeze", [b.op("Range", [zero_i, l_max, one_i]), zero_1d]),
        b.op("Unsqueeze", [lengths, one_1d])], "padding")                     # (B, Lmax)
    kpm = b.op("Where", [padding, b.const(-np.inf, np.float32, "ninf"),
                         b.const(0.0, np.float32, "zero")], "kpm")
    b_lmax = b.op("Concat", [n_seq, b.op("Unsqueeze", [l_max, zero_1d])], axis=0)
    return index, kpm, b_lmax


def build_function(spec: Config | Signature, opset: int,
                   overload: str | None = None) -> onnx.FunctionProto:
    """The FunctionProto ``com.maskedmha::MaskedMHA`` whose body uses only default-domain ops of
    ``opset``: for a ``Signature`` the shared body that reads the node's attributes at run time,
    for a ``Config`` a body specialised to that node.  ``overload``: the function's overload
    name ("" or None: none)."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"maskedmha: default-domain opset {opset} is not supported "
                         f"({MIN_OPSET}..{MAX_OPSET})")
    static = isinstance(spec, Config)
    sig = spec.signature if static else spec
    b = _Builder(opset)
    (query, key, value, w_in, w_k, w_v, b_in, w_out, b_out, bias_k, bias_v, kpm, am,
     offsets) = INPUT_NAMES

    # num_heads as a 1-D [H]
    if static:
        heads_1d = b.ints(spec.num_heads)
    else:
        heads_1d = b.op("Unsqueeze", [b.attr("num_heads", "value_int", AttributeProto.INT),
                                      b.ints(0)], "H")

    # --- what the op refuses at run time (everything reads heads_1d: checked first) --------
    # skip_padded_queries = 1 needs a bool key_padding_mask and L == S, and no sequence_offsets.
    # A shared body reads it at run time; a specialised one (Config) was refused on building
    # unless valid, and checks L == S only.
    skip = None
    if static and spec.skip:
        skip = b.const(True, np.bool_, "skip")
    elif not static and sig.kpm == "b":
        skip = b.attr_flag("skip_padded_queries")
    if skip is not None:
        l_ne_s = b.op("Squeeze", [b.op("Not", [b.op("Equal", [b.dim(query, 1),
                                                             b.dim(key, 1)])])])
        heads_1d = b.refuse_if(b.op("And", [skip, l_ne_s]), heads_1d, REFUSE_SKIP, query)
    elif not static:
        heads_1d = b.refuse_if(b.attr_flag("skip_padded_queries"), heads_1d, REFUSE_SKIP,
                               query)
    if sig.varlen:
        index, pad_kpm, b_lmax = _packed_rows(b, query, key, value, offsets)

    # --- input projections (on B*L rows, or on the T packed rows) ----------------------------
    if sig.packed:
        wq, wk, wv = b.split3(w_in)
    else:
        wq, wk, wv = w_in, w_k, w_v
    projected = []
    biases = b.split3(b_in) if sig.in_bias else (None, None, None)
    for x, w, bias, hint in ((query, wq, biases[0], "q"), (key, wk, biases[1], "k"),
                             (value, wv, biases[2], "v")):
        y = b.op("MatMul", [x, b.transpose(w, (1, 0))], hint)
        if bias is not None:
            y = b.op("Add", [y, bias], hint)
        projected.append(y)
    q, k, v = projected                                           # (B, L|S, E) or (T, E)
    e_dim = b.dim(w_out, 0)
    if sig.varlen:
        # each sequence its own batch item, padded to the longest: (B, Lmax, E), zero rows at
        # i >= len_b, which pad_kpm hides as keys and which are never gathered back as queries
        # (is_causal, bias_k/v and add_zero_attn then apply per sequence, as the op says: the
        # extra keys follow the Lmax padded ones, so a causal mask hides them as it does for
        # the sequence alone)
        zeros = b.op("ConstantOfShape", [b.op("Concat", [b_lmax, e_dim], axis=0)], "zeros")
        q, k, v = (b.op("ScatterND", [zeros, index, x], hint) for x, hint in
                   ((q, "q"), (k, "k"), (v, "v")))

    if sig.bias_kv:
        shape_b1e = b.op("Concat", [b.dim(k, 0), b.ints(1), b.dim(k, 2)], axis=0)
        for name, extra in (("k", bias_k), ("v", bias_v)):
            ext = b.op("Expand", [b.op("Reshape", [extra, b.ints(1, 1, -1)]), shape_b1e])
            if name == "k":
                k = b.op("Concat", [k, ext], "k", axis=1)
            else:
                v = b.op("Concat", [v, ext], "v", axis=1)

    # --- heads: q (B,H,L,D), kT (B,H,D,S'), v (B,H,S',D) --------------------------------
    # explicit sizes, not -1: Reshape cannot infer -1 when B, L or S is 0
    heads = b.op("Concat", [b.ints(0, 0), heads_1d, b.op("Div", [e_dim, heads_1d])], axis=0)
    q4 = b.transpose(b.op("Reshape", [q, heads]), (0, 2, 1, 3))
    kT = b.transpose(b.op("Reshape", [k, heads]), (0, 2, 3, 1))
    v4 = b.transpose(b.op("Reshape", [v, heads]), (0, 2, 1, 3))
    # add_zero_attn: append z all-zero keys/values, z = 1 or 0 (static: the node's value;
    # shared body: read at run time, and a Concat of a zero-length block when off)
    zeros_1d = None
    if static:
        if spec.add_zero_attn:
            zeros_1d = b.ints(1)
    else:
        zeros_1d = b.op("Cast", [b.op("Unsqueeze", [b.attr_flag("add_zero_attn"), b.ints(0)])],
                        "za", to=TensorProto.INT64)
    if zeros_1d is not None:
        zero = b.const([0.0], np.float32, "zero")
        zk = b.op("Expand", [zero, b.op("Concat", [b.dim(kT, 0, 3), zeros_1d], axis=0)])
        kT = b.op("Concat", [kT, zk], "kT", axis=3)
        zv = b.op("Expand", [zero, b.op("Concat", [b.dim(v4, 0, 2), zeros_1d, b.dim(v4, 3)],
                                         axis=0)])
        v4 = b.op("Concat", [v4, zv], "v4", axis=2)

    # --- scores ---------------------------------------------------------------------------
    d = b.op("Cast", [b.dim(q4, 3)], to=TensorProto.FLOAT)
    scale = b.op("Sqrt", [b.op("Div", [b.const(1.0, np.float32, "one"), d])], "scale")
    scores = b.op("MatMul", [b.op("Mul", [q4, scale]), kT], "scores")  # (B,H,L,S')

    # --- masks (cover the S given keys; the X extra keys are padded with 0) ----------------
    mask = None
    rank = 2
    if sig.am:
        m = _canon(b, am, sig.am)
        if static and spec.am[0] == "2":
            pass                                                      # (L, S) broadcasts
        elif static:                                                  # (B*H, L, S) -> (B, H, L, S)
            m = b.op("Reshape", [m, b.op("Concat", [b.dim(query, 0), heads_1d,
                                                    b.dim(am, 1, 3)], axis=0)])
            rank = 4
        else:
            # rank read at run time: (L, S) -> (1, 1, L, S), (B*H, L, S) -> (B, H, L, S);
            # allowzero: every size is explicit, and L or S may be 0
            is3 = b.op("Equal", [b.op("Size", [b.op("Shape", [am])]), b.const(3)], "is3")
            lead = b.op("Where", [is3, b.op("Concat", [b.dim(query, 0), heads_1d], axis=0),
                                  b.ints(1, 1)])
            m = b.op("Reshape", [m, b.op("Concat", [lead, b.op("Shape", [am], start=-2)],
                                         axis=0)], allowzero=1)
            rank = 4
        mask = m
    if sig.kpm or sig.varlen:
        m = pad_kpm if sig.varlen else _canon(b, kpm, sig.kpm)
        m = b.op("Unsqueeze", [m, b.ints(1, 2)], "kpm4")       # (B,1,1,S)
        mask = m if mask is None else b.op("Add", [mask, m], "mask")
        rank = 4
    if mask is not None:
        if static:
            extra = int(sig.bias_kv) + int(spec.add_zero_attn)
            extra_1d = b.ints(extra) if extra else None
        else:
            extra_1d = b.op("Add", [zeros_1d, b.ints(int(sig.bias_kv))], "extra")
        if extra_1d is not None:
            pads = b.op("Concat", [b.ints(*([0] * (2 * rank - 1))), extra_1d], axis=0)
            mask = b.op("Pad", [mask, pads, b.const(0.0, np.float32, "zero")], "mask")
    if not static or spec.is_causal:
        n_l = b.op("Squeeze", [b.dim(scores, 2)])
        n_s = b.op("Squeeze", [b.dim(scores, 3)])
        zero_i, one_i = b.const(0), b.const(1)
        rows = b.op("Unsqueeze", [b.op("Range", [zero_i, n_l, one_i]), b.ints(1)])
        cols = b.op("Range", [zero_i, n_s, one_i])
        hidden = b.op("Greater", [cols, rows], "causal")         # (L, S')
        if not static:  # is_causal = 0: nothing hidden (an all-zero additive mask)
            hidden = b.op("And", [hidden, b.attr_flag("is_causal")], "causal")
        causal = b.op("Where", [hidden, b.const(-np.inf, np.float32, "ninf"),
                                b.const(0.0, np.float32, "zero")])
        # folded into the (smaller) mask first: one full-size Add on the scores either way
        mask = causal if mask is None else b.op("Add", [mask, causal], "mask")
    if mask is not None:
        scores = b.op("Add", [scores, mask], "scores")

    # --- softmax, fully masked rows ----------------------------------------------------------
    p = b.op("Softmax", [scores], "p", axis=-1)
    if not sig.varlen:
        # (variable-length mode: a real row always sees its own sequence's first key, so only
        # padded rows, which are dropped below, can be fully masked)
        row_max = b.reduce("ReduceMax", scores, [-1], 1)
        dead = b.op("Equal", [row_max, b.const(-np.inf, np.float32, "ninf")], "dead")
        if static:
            fill = b.const(np.nan if spec.nan else 0.0, np.float32, "fill")
        else:
            # fully_masked_row == "nan"  <=>  Unique([value, "nan"]) has one element
            value_1d = b.op("Unsqueeze", [b.attr("fully_masked_row", "value_string",
                                                 AttributeProto.STRING), b.ints(0)])
            both = b.op("Concat", [value_1d, b.const(["nan"], object, "nan_s")], axis=0)
            n_unique = b.op("Shape", [b.op("Unique", [both], "unique")])
            is_nan = b.op("Squeeze", [b.op("Equal", [n_unique, b.ints(1)]), b.ints(0)],
                          "is_nan")
            fill = b.op("Where", [is_nan, b.const(np.nan, np.float32, "nan"),
                                  b.const(0.0, np.float32, "zero")], "fill")
        p = b.op("Where", [dead, fill, p], "p")

    # --- output ------------------------------------------------------------------------------
    o = b.op("MatMul", [p, v4], "o")                                  # (B,H,L,D)
    if sig.varlen:
        # every size explicit: with Lmax = 0, ORT's optimizer turned [0, 0, E] into [B, 0, -1]
        # and failed (measured, ORT 1.32 with all sequences empty)
        o = b.op("Reshape", [b.transpose(o, (0, 2, 1, 3)),
                             b.op("Concat", [b_lmax, e_dim], axis=0)], "o", allowzero=1)
    else:
        shape_ble = b.op("Concat", [b.ints(0, 0), e_dim], axis=0)
        o = b.op("Reshape", [b.transpose(o, (0, 2, 1, 3)), shape_ble], "o")  # (B,L,E)
    if sig.varlen:
        o = b.op("GatherND", [o, index], "o")                          # (T,E): real rows only
    out = b.op("MatMul", [o, b.transpose(w_out, (1, 0))], "out")
    if sig.out_bias:
        out = b.op("Add", [out, b_out], "out")
    skipped = None
    if skip is not None:
        # skip_padded_queries: the rows key_padding_mask marks (L == S, checked above) are 0,
        # not out_proj_bias; a shared body reads the attribute (all rows kept when it is 0)
        rows = kpm
        if not static:
            # (B, L): kpm when the attribute is 1 (L == S checked), else L falses; built by a
            # Concat of kpm[:, :S*skip] and falses (B, L*(1-skip)), since an And of kpm (B, S)
            # with the flag would not broadcast against the output when L != S.
            on = b.op("Cast", [b.op("Unsqueeze", [skip, b.ints(0)])], to=TensorProto.INT64)
            kept = b.op("Slice", [kpm, b.ints(0), b.op("Mul", [b.dim(key, 1), on]), b.ints(1)])
            n_false = b.op("Mul", [b.dim(query, 1), b.op("Sub", [b.ints(1), on])])
            falses = b.op("ConstantOfShape", [b.op("Concat", [b.dim(query, 0), n_false],
                                                   axis=0)],
                          value=numpy_helper.from_array(np.array([False])))
            rows = b.op("Concat", [kept, falses], "skip_rows", axis=1)
        skipped = b.op("Unsqueeze", [rows, b.ints(2)], "skipped")    # (B, L, 1)
        zero = b.const(0.0, np.float32, "zero")
        out = b.op("Where", [skipped, zero, out], "out")
    b.nodes.append(helper.make_node("Identity", [out], ["output"]))
    outputs = ["output"]
    if sig.weights:
        outputs.append("attn_weights")
        if skipped is not None:   # their weight rows are 0 too (both layouts come from p)
            p = b.op("Where", [b.op("Unsqueeze", [skipped, b.ints(1)]), zero, p], "p")
        if static:
            w = b.reduce("ReduceMean", p, [1], 0) if spec.weights == "avg" else p
        else:
            # average_attn_weights read at run time: rank 3 (B, L, S') when 1, rank 4
            # (B, H, L, S') when 0.  Concat the mean (B,1,L,S') before the heads, Slice
            # [0:1] or [1:1+H] along axis 1, then Reshape drops axis 1 in the averaged case.
            avg = b.attr_flag("average_attn_weights")
            not_avg = b.op("Cast", [b.op("Unsqueeze", [b.op("Not", [avg]), b.ints(0)])],
                           "not_avg", to=TensorProto.INT64)              # [0] or [1]
            both = b.op("Concat", [b.reduce("ReduceMean", p, [1], 1), p], "w", axis=1)
            end = b.op("Add", [b.ints(1), b.op("Mul", [not_avg, heads_1d])])
            sel = b.op("Slice", [both, not_avg, end, b.ints(1)], "w")
            h_or_none = b.op("Slice", [heads_1d, b.ints(0), not_avg, b.ints(0)])  # [] or [H]
            shape = b.op("Concat", [b.dim(p, 0), h_or_none, b.dim(p, 2, 4)], axis=0)
            w = b.op("Reshape", [sel, shape], "w", allowzero=1)
        b.nodes.append(helper.make_node("Identity", [w], ["attn_weights"]))

    if static:
        kwargs = {"attributes": list(ATTRIBUTES)}
    else:
        kwargs = {"attributes": ["num_heads"],
                  "attribute_protos": [helper.make_attribute(n, v)
                                       for n, v in ATTRIBUTE_DEFAULTS.items()]}
    return helper.make_function(
        DOMAIN, OP_TYPE, list(INPUT_NAMES), outputs, b.nodes,
        [helper.make_opsetid("", opset)], overload=overload or "", **kwargs)


def build_guard(opset: int, overload: str) -> onnx.FunctionProto:
    """A ``com.maskedmha::MaskedMHA`` function (overload ``overload``, used by no node) whose body
    is one ``GUARD_DOMAIN::GUARD_OP`` node that no runtime implements.  ORT 1.19.2 .. 1.26.0
    (which ignore overloads and take the last same-named function) then fail at session creation
    with "Fatal error: com.maskedmha.needs_function_overloads:<GUARD_OP>(-1) is not a registered
    function/op"; ORT >= 1.27 (which honour overloads) never look at it (measured).  It declares
    all the op's inputs and both outputs so that message is the one every node gets: with one
    output, ORT 1.19-1.26 reject a two-output node earlier with a bare "Number of actual parameters
    cannot exceed number of formal parameters" (measured)."""
    nodes = [helper.make_node(GUARD_OP, ["query"], ["_unresolvable", "attn_weights"],
                              domain=GUARD_DOMAIN),
             helper.make_node("CastLike", ["_unresolvable", "query"], ["output"])]
    return helper.make_function(
        DOMAIN, OP_TYPE, list(INPUT_NAMES), ["output", "attn_weights"], nodes,
        [helper.make_opsetid("", opset), helper.make_opsetid(GUARD_DOMAIN, 1)],
        attributes=list(ATTRIBUTES), overload=overload)
