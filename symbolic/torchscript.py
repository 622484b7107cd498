"""TorchScript (``dynamo=False``) route: a ``torch.autograd.Function`` whose forward computes the
op in torch and whose ``symbolic`` emits one ``com.maskedmha::MaskedMHA`` node.

The trace knows every input's element type and rank; the exported file need not (the legacy
exporter writes value_info only for custom-domain outputs, and ONNX shape inference loses the
rank through e.g. ``Expand(x, ConstantOfShape(...))``, as in Mask2Former's decoder).  ``attach``
needs the masks' types and ranks to pick the fallback, so the symbolic records them on the node
(attribute ``TRACED_TYPES``, taken from the traced tensors) and ``record_traced_types`` turns
that record into value_info after export and removes the attribute."""
from __future__ import annotations

import onnx
import torch
from onnx import TensorProto, helper

from .mha_call import INPUT_NAMES, OpCall, reference
from .schema import DOMAIN, OP_TYPE

# Temporary node attribute: "elem:rank" per op input ("" for absent or unrecorded ones),
# ";"-separated.
TRACED_TYPES = "maskedmha_traced_types"
_ELEM = {torch.float32: TensorProto.FLOAT, torch.bool: TensorProto.BOOL,
         torch.float16: TensorProto.FLOAT16, torch.float64: TensorProto.DOUBLE}


def _absent(g):
    """An omitted optional input (exported as the empty name)."""
    node = g.op("prim::Constant")
    node.setType(torch._C.OptionalType.ofTensor())
    return node


# Inputs whose type is recorded: the two masks, whose element type and rank choose the fallback.
# Not the others: a rank-only value_info (dims unknown) for, say, the query would take the place
# of the dims ONNX inference finds (attach reads the file's value_info first for shapes), and the
# node's output shapes would lose them.
_RECORDED = (INPUT_NAMES.index("key_padding_mask"), INPUT_NAMES.index("attn_mask"))


def _traced_types(inputs) -> str:
    """The record for real (traced) tensors: taken in forward-time Python, not from the graph."""
    return ";".join(f"{_ELEM.get(x.dtype, 0)}:{x.dim()}"
                    if x is not None and i in _RECORDED else "" for i, x in enumerate(inputs))


class MaskedMHAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, in_proj_weight, k_proj_weight, v_proj_weight,
                in_proj_bias, out_proj_weight, out_proj_bias, bias_k, bias_v, key_padding_mask,
                attn_mask, sequence_offsets, num_heads, is_causal, add_zero_attn,
                fully_masked_row, average_attn_weights, skip_padded_queries, need_weights,
                traced_types):
        out, w = reference(query, key, value, in_proj_weight, k_proj_weight, v_proj_weight,
                           in_proj_bias, out_proj_weight, out_proj_bias, bias_k, bias_v,
                           key_padding_mask, attn_mask, sequence_offsets, num_heads, is_causal,
                           add_zero_attn, fully_masked_row, average_attn_weights,
                           skip_padded_queries)
        return (out, w) if need_weights else out

    @staticmethod
    def symbolic(g, query, key, value, in_proj_weight, k_proj_weight, v_proj_weight,
                 in_proj_bias, out_proj_weight, out_proj_bias, bias_k, bias_v, key_padding_mask,
                 attn_mask, sequence_offsets, num_heads, is_causal, add_zero_attn,
                 fully_masked_row, average_attn_weights, skip_padded_queries, need_weights,
                 traced_types):
        inputs = [query, key, value, in_proj_weight, k_proj_weight, v_proj_weight, in_proj_bias,
                  out_proj_weight, out_proj_bias, bias_k, bias_v, key_padding_mask, attn_mask,
                  sequence_offsets]
        inputs = [_absent(g) if (x is None or (hasattr(x, "node") and
                                               x.node().mustBeNone())) else x for x in inputs]
        attrs = {TRACED_TYPES + "_s": str(traced_types)}
        res = g.op("com.maskedmha::MaskedMHA", *inputs, num_heads_i=int(num_heads),
                   is_causal_i=int(is_causal), add_zero_attn_i=int(add_zero_attn),
                   fully_masked_row_s=str(fully_masked_row),
                   average_attn_weights_i=int(average_attn_weights),
                   skip_padded_queries_i=int(skip_padded_queries),
                   outputs=2 if need_weights else 1, **attrs)
        if need_weights:
            res[0].setType(query.type())
            # Output 1's type too: an output without one makes torch's ONNX pass print "The
            # shape inference of com.maskedmha::MaskedMHA type is missing" for the node.
            # Rank and dtype are certain; the sizes are attach's business (_annotate_outputs).
            rank = 3 if int(average_attn_weights) else 4
            res[1].setType(query.type().with_sizes([None] * rank))
            return res
        res.setType(query.type())
        return res


def call(op: OpCall):
    res = MaskedMHAFunction.apply(*op.inputs, op.num_heads, op.is_causal, op.add_zero_attn,
                                  op.fully_masked_row, op.average_attn_weights,
                                  op.skip_padded_queries, op.need_weights,
                                  _traced_types(op.inputs))
    if op.need_weights:
        return op.finish(res[0], res[1])
    return op.finish(res, None)


def record_traced_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """In place: move each MaskedMHA node's trace-time record into the graph's value_info.

    For an input whose value has no recorded rank (not a graph input, initializer or output,
    not a Constant, no value_info with a shape), add a value_info with the traced element type
    and rank (dims unknown: only the rank is certain for all shapes).  Known types are left as
    they are.  The attribute is removed from every node, in subgraphs too, so no file carries
    it."""
    _record_in_graph(model.graph, main=True)
    return model


def _record_in_graph(g: onnx.GraphProto, main: bool) -> None:
    known = {vi.name for vi in list(g.input) + list(g.output)}
    known.update(i.name for i in g.initializer)
    for n in g.node:
        if n.op_type == "Constant":
            known.update(n.output)
    # A subgraph describes only the values it defines (an outer-scope value belongs to the
    # value_info of the graph that defines it).
    defined = None if main else {o for n in g.node for o in n.output}
    value_info = {vi.name: vi for vi in g.value_info}
    for node in g.node:
        for a in node.attribute:  # If/Loop/Scan bodies
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                _record_in_graph(sub, main=False)
        if node.domain != DOMAIN or node.op_type != OP_TYPE:
            continue
        record = None
        for i, a in enumerate(node.attribute):
            if a.name == TRACED_TYPES:
                record = helper.get_attribute_value(a)
                del node.attribute[i]
                break
        if record is None:
            continue
        record = record.decode() if isinstance(record, bytes) else record
        for name, entry in zip(node.input, record.split(";")):
            if not name or not entry or name in known or \
                    (defined is not None and name not in defined):
                continue
            elem, rank = (int(v) for v in entry.split(":"))
            vi = value_info.get(name)
            if vi is not None and vi.type.tensor_type.HasField("shape"):
                continue
            if vi is None:
                vi = g.value_info.add()
                vi.name = name
                value_info[name] = vi
            tt = vi.type.tensor_type
            if not tt.elem_type:
                tt.elem_type = elem
            tt.shape.SetInParent()
            for _ in range(rank):
                tt.shape.dim.add()


__all__ = ["MaskedMHAFunction", "call", "record_traced_types", "TRACED_TYPES", "INPUT_NAMES"]
