"""Turn one ``nn.MultiheadAttention`` call into the inputs and attributes of
``com.maskedmha::MaskedMHA`` (batch-first), mirroring ``F.multi_head_attention_forward``'s checks
and branches; plus a plain-torch reference of the op's semantics (docs/MaskedMHA.md).

Dropout is ignored: export is inference (``maskedmha.export`` puts the model in ``eval()``).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# Order of the op's 13 inputs (docs/MaskedMHA.md).
INPUT_NAMES = (
    "query", "key", "value", "in_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias",
    "out_proj_weight", "out_proj_bias", "bias_k", "bias_v", "key_padding_mask", "attn_mask",
)


@dataclass
class OpCall:
    """The op's inputs (batch-first; ``None`` = absent) and attributes for one attention call,
    and how to turn its results back into what ``nn.MultiheadAttention.forward`` returns."""
    inputs: list = field(default_factory=list)  # 13 entries, Tensor or None
    num_heads: int = 1
    is_causal: int = 0
    add_zero_attn: int = 0
    fully_masked_row: str = "zero"
    average_attn_weights: int = 1
    need_weights: bool = False
    batched: bool = True
    batch_first: bool = True

    @property
    def attrs(self) -> dict:
        return dict(num_heads=self.num_heads, is_causal=self.is_causal,
                    add_zero_attn=self.add_zero_attn, fully_masked_row=self.fully_masked_row,
                    average_attn_weights=self.average_attn_weights)

    def finish(self, out, weights):
        """Op outputs (batch-first) -> the module's return value."""
        if not self.batched:
            out = out.squeeze(0)
            if weights is not None:
                weights = weights.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, (weights if self.need_weights else None)


def _check_mask_dtype(mask, name):
    if mask is None:
        return None
    if mask.dtype != torch.bool and not torch.is_floating_point(mask):
        raise AssertionError(f"only bool and floating types of {name} are supported")
    return mask


def build_call(mha: torch.nn.MultiheadAttention, query, key, value, key_padding_mask=None,
               need_weights=True, attn_mask=None, average_attn_weights=True,
               is_causal=False) -> OpCall:
    """Validate one ``mha(query, key, value, ...)`` call the way PyTorch does and return the op's
    inputs/attributes.  Raises the errors PyTorch raises for the same call."""
    if getattr(mha, "training", False) and float(mha.dropout) > 0.0:
        warnings.warn("maskedmha: exporting nn.MultiheadAttention in training mode; dropout is "
                      "ignored (the op is inference-only)", stacklevel=3)
    num_heads = mha.num_heads
    if query.dtype != torch.float32 or mha.out_proj.weight.dtype != torch.float32:
        raise TypeError(f"maskedmha: MaskedMHA version 1 is float32 only; got query "
                        f"{query.dtype} and weights {mha.out_proj.weight.dtype}")
    is_batched = F._mha_shape_check(query, key, value, key_padding_mask, attn_mask, num_heads)
    _check_mask_dtype(key_padding_mask, "key_padding_mask")
    _check_mask_dtype(attn_mask, "attn_mask")
    if key_padding_mask is not None and attn_mask is not None and \
            key_padding_mask.dtype != attn_mask.dtype:
        warnings.warn("Support for mismatched key_padding_mask and attn_mask is deprecated. "
                      "Use same type for both instead.", stacklevel=3)

    if is_batched:
        if mha.batch_first:
            q, k, v = query, key, value
        else:
            q, k, v = (x.transpose(0, 1) for x in (query, key, value))
    else:
        q, k, v = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    bsz, tgt_len, embed_dim = q.shape
    src_len = k.shape[1]

    # is_causal: F.multi_head_attention_forward's branches.
    if is_causal and attn_mask is None:
        raise RuntimeError(
            "Need attn_mask if specifying the is_causal hint. "
            "You may use the Transformer module method "
            "`generate_square_subsequent_mask` to create this mask.")
    causal_attr = 0
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None  # PyTorch drops the mask and uses SDPA's causal mask
        causal_attr = 1

    if embed_dim != mha.embed_dim:
        raise AssertionError(
            f"was expecting embedding dimension of {mha.embed_dim}, but got {embed_dim}")
    if embed_dim % num_heads != 0:
        raise AssertionError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
    packed = mha._qkv_same_embed_dim
    if packed:
        if key.shape != value.shape:
            raise AssertionError(
                f"key shape {key.shape} does not match value shape {value.shape}")
    elif k.shape[:2] != v.shape[:2]:
        raise AssertionError(f"key's sequence and batch dims {k.shape[:2]} do not match "
                             f"value's {v.shape[:2]}")
    if attn_mask is not None:
        if attn_mask.dim() == 2:
            if tuple(attn_mask.shape) != (tgt_len, src_len):
                raise RuntimeError(f"The shape of the 2D attn_mask is {attn_mask.shape}, but "
                                   f"should be {(tgt_len, src_len)}.")
        elif attn_mask.dim() == 3:
            if tuple(attn_mask.shape) != (bsz * num_heads, tgt_len, src_len):
                raise RuntimeError(f"The shape of the 3D attn_mask is {attn_mask.shape}, but "
                                   f"should be {(bsz * num_heads, tgt_len, src_len)}.")
        else:
            raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (bsz, src_len):
        raise AssertionError(f"expecting key_padding_mask shape of {(bsz, src_len)}, but got "
                             f"{key_padding_mask.shape}")

    # fp32 op: float masks take the query's dtype (PyTorch adds them to float scores).
    def fmask(m):
        if m is not None and m.dtype != torch.bool and m.dtype != q.dtype:
            m = m.to(q.dtype)
        return m

    key_padding_mask, attn_mask = fmask(key_padding_mask), fmask(attn_mask)
    bias_k = mha.bias_k.reshape(-1) if mha.bias_k is not None else None
    bias_v = mha.bias_v.reshape(-1) if mha.bias_v is not None else None
    if packed:
        w = [mha.in_proj_weight, None, None]
    else:
        w = [mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight]
    inputs = [q, k, v, *w, mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias,
              bias_k, bias_v, key_padding_mask, attn_mask]
    return OpCall(inputs=inputs, num_heads=num_heads, is_causal=causal_attr,
                  add_zero_attn=int(bool(mha.add_zero_attn)),
                  fully_masked_row="nan" if need_weights else "zero",
                  average_attn_weights=int(bool(average_attn_weights)),
                  need_weights=bool(need_weights), batched=is_batched,
                  batch_first=bool(mha.batch_first))


def _canon(mask, dtype):
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf"))
    return mask.to(dtype)


def reference(query, key, value, in_proj_weight, k_proj_weight, v_proj_weight, in_proj_bias,
              out_proj_weight, out_proj_bias, bias_k, bias_v, key_padding_mask, attn_mask,
              num_heads: int, is_causal: int = 0, add_zero_attn: int = 0,
              fully_masked_row: str = "zero", average_attn_weights: int = 1):
    """The op's semantics in plain torch (batch-first).  Returns (output, attn_weights)."""
    B, L, E = query.shape
    H = num_heads
    D = E // H
    if k_proj_weight is None:
        wq, wk, wv = in_proj_weight.chunk(3)
    else:
        wq, wk, wv = in_proj_weight, k_proj_weight, v_proj_weight
    bq = bk = bv = None
    if in_proj_bias is not None:
        bq, bk, bv = in_proj_bias.chunk(3)
    q = F.linear(query, wq, bq)
    k = F.linear(key, wk, bk)
    v = F.linear(value, wv, bv)
    S = k.shape[1]
    if bias_k is not None:
        k = torch.cat([k, bias_k.reshape(1, 1, E).expand(B, 1, E)], 1)
        v = torch.cat([v, bias_v.reshape(1, 1, E).expand(B, 1, E)], 1)
    q = q.reshape(B, L, H, D).transpose(1, 2)
    k = k.reshape(B, k.shape[1], H, D).transpose(1, 2)
    v = v.reshape(B, v.shape[1], H, D).transpose(1, 2)
    if add_zero_attn:
        k = torch.cat([k, k.new_zeros(B, H, 1, D)], 2)
        v = torch.cat([v, v.new_zeros(B, H, 1, D)], 2)
    Sp = k.shape[2]
    scores = (q * math.sqrt(1.0 / D)) @ k.transpose(-2, -1)
    mask = scores.new_zeros(())
    kpm = _canon(key_padding_mask, scores.dtype)
    am = _canon(attn_mask, scores.dtype)
    if am is not None:
        mask = (am.reshape(B, H, L, S) if am.dim() == 3 else am) + mask
    if kpm is not None:
        mask = mask + kpm.reshape(B, 1, 1, S)
    if am is not None or kpm is not None:
        mask = F.pad(mask.expand(*mask.shape[:-1], S) if mask.dim() else mask, (0, Sp - S))
    if is_causal:
        causal = torch.ones(L, Sp, dtype=torch.bool, device=q.device).triu(1)
        mask = mask + scores.new_zeros(L, Sp).masked_fill(causal, float("-inf"))
    scores = scores + mask
    p = torch.softmax(scores, -1)
    if Sp > 0:
        dead = scores.amax(-1, keepdim=True) == float("-inf")
        fill = float("nan") if fully_masked_row == "nan" else 0.0
        p = p.masked_fill(dead, fill)
    o = (p @ v).transpose(1, 2).reshape(B, L, E)
    out = F.linear(o, out_proj_weight, out_proj_bias)
    w = p.mean(1) if average_attn_weights else p
    return out, w


def weights_shape(query, key, num_heads, has_bias_kv, add_zero_attn, average):
    B, L = query.shape[0], query.shape[1]
    Sp = key.shape[1] + int(has_bias_kv) + int(bool(add_zero_attn))
    return (B, L, Sp) if average else (B, num_heads, L, Sp)
