"""TorchScript (``dynamo=False``) route: a ``torch.autograd.Function`` whose forward computes the
op in torch and whose ``symbolic`` emits one ``com.maskedmha::MaskedMHA`` node."""
from __future__ import annotations

import torch

from .mha_call import OpCall, reference


def _absent(g):
    """An omitted optional input (exported as the empty name)."""
    node = g.op("prim::Constant")
    node.setType(torch._C.OptionalType.ofTensor())
    return node


class MaskedMHAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, in_proj_weight, k_proj_weight, v_proj_weight,
                in_proj_bias, out_proj_weight, out_proj_bias, bias_k, bias_v, key_padding_mask,
                attn_mask, num_heads, is_causal, add_zero_attn, fully_masked_row,
                average_attn_weights, need_weights):
        out, w = reference(query, key, value, in_proj_weight, k_proj_weight, v_proj_weight,
                           in_proj_bias, out_proj_weight, out_proj_bias, bias_k, bias_v,
                           key_padding_mask, attn_mask, num_heads, is_causal, add_zero_attn,
                           fully_masked_row, average_attn_weights)
        return (out, w) if need_weights else out

    @staticmethod
    def symbolic(g, query, key, value, in_proj_weight, k_proj_weight, v_proj_weight,
                 in_proj_bias, out_proj_weight, out_proj_bias, bias_k, bias_v, key_padding_mask,
                 attn_mask, num_heads, is_causal, add_zero_attn, fully_masked_row,
                 average_attn_weights, need_weights):
        inputs = [query, key, value, in_proj_weight, k_proj_weight, v_proj_weight, in_proj_bias,
                  out_proj_weight, out_proj_bias, bias_k, bias_v, key_padding_mask, attn_mask]
        inputs = [_absent(g) if (x is None or (hasattr(x, "node") and
                                               x.node().mustBeNone())) else x for x in inputs]
        res = g.op("com.maskedmha::MaskedMHA", *inputs, num_heads_i=int(num_heads),
                   is_causal_i=int(is_causal), add_zero_attn_i=int(add_zero_attn),
                   fully_masked_row_s=str(fully_masked_row),
                   average_attn_weights_i=int(average_attn_weights),
                   outputs=2 if need_weights else 1)
        if need_weights:
            res[0].setType(query.type())
            return res
        res.setType(query.type())
        return res


def call(op: OpCall):
    res = MaskedMHAFunction.apply(*op.inputs, op.num_heads, op.is_causal, op.add_zero_attn,
                                  op.fully_masked_row, op.average_attn_weights, op.need_weights)
    if op.need_weights:
        return op.finish(res[0], res[1])
    return op.finish(res, None)
