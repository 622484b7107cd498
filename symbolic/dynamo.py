"""torch.export (``dynamo=True``) route: custom ops ``maskedmha::masked_mha`` (one output) and
``maskedmha::masked_mha_w`` (output + attention weights), each mapped through
``custom_translation_table`` to an onnxscript function that emits one MaskedMHA node."""
from __future__ import annotations

from typing import Optional

import onnxscript
from onnxscript import FLOAT
import torch
from torch import Tensor

from .mha_call import OpCall, reference, weights_shape
from .schema import DOMAIN, OPSET_VERSION

_opset = onnxscript.values.Opset(domain=DOMAIN, version=OPSET_VERSION)


@torch.library.custom_op("maskedmha::masked_mha", mutates_args=())
def masked_mha(query: Tensor, key: Tensor, value: Tensor, in_proj_weight: Tensor,
               k_proj_weight: Optional[Tensor], v_proj_weight: Optional[Tensor],
               in_proj_bias: Optional[Tensor], out_proj_weight: Tensor,
               out_proj_bias: Optional[Tensor], bias_k: Optional[Tensor],
               bias_v: Optional[Tensor], key_padding_mask: Optional[Tensor],
               attn_mask: Optional[Tensor], num_heads: int, is_causal: int, add_zero_attn: int,
               fully_masked_row: str, average_attn_weights: int) -> Tensor:
    return reference(query, key, value, in_proj_weight, k_proj_weight, v_proj_weight,
                     in_proj_bias, out_proj_weight, out_proj_bias, bias_k, bias_v,
                     key_padding_mask, attn_mask, num_heads, is_causal, add_zero_attn,
                     fully_masked_row, average_attn_weights)[0].clone()


@masked_mha.register_fake
def _(query, key, value, in_proj_weight, k_proj_weight, v_proj_weight, in_proj_bias,
      out_proj_weight, out_proj_bias, bias_k, bias_v, key_padding_mask, attn_mask, num_heads,
      is_causal, add_zero_attn, fully_masked_row, average_attn_weights):
    return query.new_empty(query.shape)


@torch.library.custom_op("maskedmha::masked_mha_w", mutates_args=())
def masked_mha_w(query: Tensor, key: Tensor, value: Tensor, in_proj_weight: Tensor,
                 k_proj_weight: Optional[Tensor], v_proj_weight: Optional[Tensor],
                 in_proj_bias: Optional[Tensor], out_proj_weight: Tensor,
                 out_proj_bias: Optional[Tensor], bias_k: Optional[Tensor],
                 bias_v: Optional[Tensor], key_padding_mask: Optional[Tensor],
                 attn_mask: Optional[Tensor], num_heads: int, is_causal: int, add_zero_attn: int,
                 fully_masked_row: str, average_attn_weights: int) -> tuple[Tensor, Tensor]:
    out, w = reference(query, key, value, in_proj_weight, k_proj_weight, v_proj_weight,
                       in_proj_bias, out_proj_weight, out_proj_bias, bias_k, bias_v,
                       key_padding_mask, attn_mask, num_heads, is_causal, add_zero_attn,
                       fully_masked_row, average_attn_weights)
    return out.clone(), w.clone()


@masked_mha_w.register_fake
def _(query, key, value, in_proj_weight, k_proj_weight, v_proj_weight, in_proj_bias,
      out_proj_weight, out_proj_bias, bias_k, bias_v, key_padding_mask, attn_mask, num_heads,
      is_causal, add_zero_attn, fully_masked_row, average_attn_weights):
    shape = weights_shape(query, key, num_heads, bias_k is not None, add_zero_attn,
                          average_attn_weights)
    return query.new_empty(query.shape), query.new_empty(shape)


@onnxscript.script(_opset)
def masked_mha_onnx(query, key, value, in_proj_weight, k_proj_weight, v_proj_weight,
                    in_proj_bias, out_proj_weight, out_proj_bias, bias_k, bias_v,
                    key_padding_mask, attn_mask, num_heads: int, is_causal: int,
                    add_zero_attn: int, fully_masked_row: str,
                    average_attn_weights: int) -> FLOAT:
    return _opset.MaskedMHA(query, key, value, in_proj_weight, k_proj_weight, v_proj_weight,
                            in_proj_bias, out_proj_weight, out_proj_bias, bias_k, bias_v,
                            key_padding_mask, attn_mask, num_heads=num_heads,
                            is_causal=is_causal, add_zero_attn=add_zero_attn,
                            fully_masked_row=fully_masked_row,
                            average_attn_weights=average_attn_weights)


@onnxscript.script(_opset)
def masked_mha_w_onnx(query, key, value, in_proj_weight, k_proj_weight, v_proj_weight,
                      in_proj_bias, out_proj_weight, out_proj_bias, bias_k, bias_v,
                      key_padding_mask, attn_mask, num_heads: int, is_causal: int,
                      add_zero_attn: int, fully_masked_row: str,
                      average_attn_weights: int) -> tuple[FLOAT, FLOAT]:
    out, weights = _opset.MaskedMHA(query, key, value, in_proj_weight, k_proj_weight,
                                    v_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
                                    bias_k, bias_v, key_padding_mask, attn_mask,
                                    num_heads=num_heads, is_causal=is_causal,
                                    add_zero_attn=add_zero_attn,
                                    fully_masked_row=fully_masked_row,
                                    average_attn_weights=average_attn_weights)
    return out, weights


def translation_table() -> dict:
    return {torch.ops.maskedmha.masked_mha.default: masked_mha_onnx,
            torch.ops.maskedmha.masked_mha_w.default: masked_mha_w_onnx}


def call(op: OpCall):
    if op.need_weights:
        out, w = torch.ops.maskedmha.masked_mha_w(*op.inputs, **op.attrs)
        return op.finish(out, w)
    return op.finish(torch.ops.maskedmha.masked_mha(*op.inputs, **op.attrs), None)
