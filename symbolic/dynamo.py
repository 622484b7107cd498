"""torch.export (``dynamo=True``) route: custom ops ``maskedmha::masked_mha`` (one output) and
``maskedmha::masked_mha_w`` (output + attention weights), each mapped through
``custom_translation_table`` to an onnxscript function that emits one MaskedMHA node.

The two custom ops take the op's 14 inputs and 6 attributes in schema.py's order; their
torch.library schema is written once (``_ARGS``) from schema.py, so their Python bodies take
``*args``.  The two onnxscript functions spell the 18 parameters out: onnxscript compiles a
function from its source, which must name every parameter.  (``torch.onnx.ops.symbolic_multi_out``
would need neither, but needs torch >= 2.8; the export extra allows torch >= 2.6.)"""
from __future__ import annotations

import onnxscript
from onnxscript import FLOAT
import torch

from .mha_call import OpCall, reference, weights_shape
from .schema import ATTRIBUTES, DOMAIN, INPUT_NAMES, OPSET_VERSION

_opset = onnxscript.values.Opset(domain=DOMAIN, version=OPSET_VERSION)

_REQUIRED = {"query", "key", "value", "in_proj_weight", "out_proj_weight"}
# The custom ops' argument list, in torch.library schema syntax: what torch inferred from the
# annotated signatures this replaces (a Python int is a SymInt there).
_ATTR_TYPES = {"num_heads": "SymInt", "is_causal": "SymInt", "add_zero_attn": "SymInt",
               "fully_masked_row": "str", "average_attn_weights": "SymInt",
               "skip_padded_queries": "SymInt"}
_ARGS = ", ".join([f"Tensor{'' if n in _REQUIRED else '?'} {n}" for n in INPUT_NAMES]
                  + [f"{_ATTR_TYPES[a]} {a}" for a in ATTRIBUTES])


def _named(args) -> dict:
    """The custom ops' positional arguments by name."""
    return dict(zip(INPUT_NAMES + ATTRIBUTES, args))


@torch.library.custom_op("maskedmha::masked_mha", mutates_args=(), schema=f"({_ARGS}) -> Tensor")
def masked_mha(*args):
    return reference(*args)[0].clone()


@masked_mha.register_fake
def _(*args):
    query = args[0]
    return query.new_empty(query.shape)


@torch.library.custom_op("maskedmha::masked_mha_w", mutates_args=(),
                         schema=f"({_ARGS}) -> (Tensor, Tensor)")
def masked_mha_w(*args):
    out, w = reference(*args)
    return out.clone(), w.clone()


@masked_mha_w.register_fake
def _(*args):
    a = _named(args)
    shape = weights_shape(a["query"], a["key"], a["num_heads"], a["bias_k"] is not None,
                          a["add_zero_attn"], a["average_attn_weights"])
    return a["query"].new_empty(a["query"].shape), a["query"].new_empty(shape)


@onnxscript.script(_opset)
def masked_mha_onnx(query, key, value, in_proj_weight, k_proj_weight, v_proj_weight,
                    in_proj_bias, out_proj_weight, out_proj_bias, bias_k, bias_v,
                    key_padding_mask, attn_mask, sequence_offsets, num_heads: int,
                    is_causal: int, add_zero_attn: int, fully_masked_row: str,
                    average_attn_weights: int, skip_padded_queries: int) -> FLOAT:
    return _opset.MaskedMHA(query, key, value, in_proj_weight, k_proj_weight, v_proj_weight,
                            in_proj_bias, out_proj_weight, out_proj_bias, bias_k, bias_v,
                            key_padding_mask, attn_mask, sequence_offsets, num_heads=num_heads,
                            is_causal=is_causal, add_zero_attn=add_zero_attn,
                            fully_masked_row=fully_masked_row,
                            average_attn_weights=average_attn_weights,
                            skip_padded_queries=skip_padded_queries)


@onnxscript.script(_opset)
def masked_mha_w_onnx(query, key, value, in_proj_weight, k_proj_weight, v_proj_weight,
                      in_proj_bias, out_proj_weight, out_proj_bias, bias_k, bias_v,
                      key_padding_mask, attn_mask, sequence_offsets, num_heads: int,
                      is_causal: int, add_zero_attn: int, fully_masked_row: str,
                      average_attn_weights: int,
                      skip_padded_queries: int) -> tuple[FLOAT, FLOAT]:
    out, weights = _opset.MaskedMHA(query, key, value, in_proj_weight, k_proj_weight,
                                    v_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
                                    bias_k, bias_v, key_padding_mask, attn_mask,
                                    sequence_offsets, num_heads=num_heads, is_causal=is_causal,
                                    add_zero_attn=add_zero_attn,
                                    fully_masked_row=fully_masked_row,
                                    average_attn_weights=average_attn_weights,
                                    skip_padded_queries=skip_padded_queries)
    return out, weights


def translation_table() -> dict:
    return {torch.ops.maskedmha.masked_mha.default: masked_mha_onnx,
            torch.ops.maskedmha.masked_mha_w.default: masked_mha_w_onnx}


def call(op: OpCall):
    if op.need_weights:
        out, w = torch.ops.maskedmha.masked_mha_w(*op.inputs, **op.attrs)
        return op.finish(out, w)
    return op.finish(torch.ops.maskedmha.masked_mha(*op.inputs, **op.attrs), None)
