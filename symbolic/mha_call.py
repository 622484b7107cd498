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

from .schema import INPUT_NAMES  # noqa: F401 - re-exported: the op's inputs, in order


@dataclass
class OpCall:
    """The op's inputs (batch-first; ``None`` = absent) and attributes for one attention call,
    and how to turn its results back into what ``nn.MultiheadAttention.forward`` returns."""
    inputs: list = field(default_factory=list)  # 14 entries (schema.INPUT_NAMES), Tensor or None
    num_heads: int = 1
    is_causal: int = 0
    add_zero_attn: int = 0
    fully_masked_row: str = "zero"
    average_attn_weights: int = 1
    skip_padded_queries: int = 0
    need_weights: bool = False
    batched: bool = True
    batch_first: bool = True
    out_features: int | None = None  # slice output 0 to this many features (padded out_proj)

    @property
    def attrs(self) -> dict:
        return dict(num_heads=self.num_heads, is_causal=self.is_causal,
                    add_zero_attn=self.add_zero_attn, fully_masked_row=self.fully_masked_row,
                    average_attn_weights=self.average_attn_weights,
                    skip_padded_queries=self.skip_padded_queries)

    def finish(self, out, weights):
        """Op outputs (batch-first) -> the module's return value."""
        if self.out_features is not None:
            out = out[..., :self.out_features]
        if not self.batched:
            out = out.squeeze(0)
            if weights is not None:
                weights = weights.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, (weights if self.need_weights else None)


class Unfusable(ValueError):
    """An attention call the op cannot express; ``patching`` leaves it to PyTorch."""


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
    inputs/attributes.  Raises the errors PyTorch raises for the same call.

    The module hands its parameters to ``F.multi_head_attention_forward`` (after making the
    inputs seq-first when ``batch_first``); so does this, to ``build_functional_call``, which
    keeps the inputs batch-first instead of transposing them twice."""
    separate = not mha._qkv_same_embed_dim
    return build_functional_call(
        query, key, value, mha.embed_dim, mha.num_heads, mha.in_proj_weight, mha.in_proj_bias,
        mha.bias_k, mha.bias_v, mha.add_zero_attn, mha.dropout, mha.out_proj.weight,
        mha.out_proj.bias, training=mha.training, key_padding_mask=key_padding_mask,
        need_weights=need_weights, attn_mask=attn_mask, use_separate_proj_weight=separate,
        q_proj_weight=mha.q_proj_weight if separate else None,
        k_proj_weight=mha.k_proj_weight if separate else None,
        v_proj_weight=mha.v_proj_weight if separate else None,
        average_attn_weights=average_attn_weights, is_causal=is_causal,
        batch_first=bool(mha.batch_first), stacklevel=4)


def build_functional_call(query, key, value, embed_dim_to_check, num_heads, in_proj_weight,
                          in_proj_bias, bias_k, bias_v, add_zero_attn, dropout_p,
                          out_proj_weight, out_proj_bias, training=True, key_padding_mask=None,
                          need_weights=True, attn_mask=None, use_separate_proj_weight=False,
                          q_proj_weight=None, k_proj_weight=None, v_proj_weight=None,
                          static_k=None, static_v=None, average_attn_weights=True,
                          is_causal=False, *, batch_first=False, stacklevel=3) -> OpCall:
    """One ``F.multi_head_attention_forward`` call (same arguments; ``batch_first`` says how
    query/key/value are laid out: the functional itself is seq-first) -> the op's inputs and
    attributes, with the functional's checks and branches.

    ``out_proj_weight`` may be (Eo, E) with Eo < E, as in CLIP's AttentionPool2d (``c_proj``
    maps 2048 -> 1024): the op's output projection is (E, E), so the weight and bias get
    E - Eo zero rows and the result is sliced back to Eo (exact: the extra outputs are never
    read).  Raises ``Unfusable`` for what the op cannot express: ``static_k``/``static_v``
    (keys/values already projected and split into heads) and Eo > E."""
    if static_k is not None or static_v is not None:
        raise Unfusable("static_k/static_v (projected per-head keys/values) have no input in "
                        "MaskedMHA")
    if out_proj_weight.dim() == 2 and out_proj_weight.shape[0] > out_proj_weight.shape[1]:
        raise Unfusable(f"out_proj_weight {tuple(out_proj_weight.shape)} projects to more "
                        "features than embed_dim; MaskedMHA's output projection is (E, E)")
    if training and float(dropout_p) > 0.0:
        warnings.warn(f"maskedmha: exporting attention in training mode with dropout_p="
                      f"{float(dropout_p)}; dropout is ignored (the op is inference-only)",
                      stacklevel=stacklevel)
    num_heads = int(num_heads)
    if query.dtype != torch.float32 or out_proj_weight.dtype != torch.float32:
        raise TypeError(f"maskedmha: MaskedMHA version 1 is float32 only; got query "
                        f"{query.dtype} and weights {out_proj_weight.dtype}")
    is_batched = F._mha_shape_check(query, key, value, key_padding_mask, attn_mask, num_heads)
    _check_mask_dtype(key_padding_mask, "key_padding_mask")
    _check_mask_dtype(attn_mask, "attn_mask")
    if key_padding_mask is not None and attn_mask is not None and \
            key_padding_mask.dtype != attn_mask.dtype:
        warnings.warn("Support for mismatched key_padding_mask and attn_mask is deprecated. "
                      "Use same type for both instead.", stacklevel=stacklevel)

    if is_batched:
        if batch_first:
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

    if embed_dim != embed_dim_to_check:
        raise AssertionError(
            f"was expecting embedding dimension of {embed_dim_to_check}, but got {embed_dim}")
    if embed_dim % num_heads != 0:
        raise AssertionError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
    packed = not use_separate_proj_weight
    if packed:
        if key.shape != value.shape:
            raise AssertionError(
                f"key shape {key.shape} does not match value shape {value.shape}")
        if in_proj_weight is None:
            raise AssertionError("use_separate_proj_weight is False but in_proj_weight is None")
        # _in_projection_packed: one (3E, E) weight over inputs of width E.
        if tuple(in_proj_weight.shape) != (3 * embed_dim, embed_dim) or \
                k.shape[-1] != embed_dim:
            raise AssertionError(f"packed in_proj_weight {tuple(in_proj_weight.shape)} with "
                                 f"key width {k.shape[-1]}: expected ({3 * embed_dim}, "
                                 f"{embed_dim}) and {embed_dim}")
    else:
        if k.shape[:2] != v.shape[:2]:
            raise AssertionError(f"key's sequence and batch dims {k.shape[:2]} do not match "
                                 f"value's {v.shape[:2]}")
        for name, w in (("q", q_proj_weight), ("k", k_proj_weight), ("v", v_proj_weight)):
            if w is None:
                raise AssertionError(
                    f"use_separate_proj_weight is True but {name}_proj_weight is None")
        # _in_projection's shape checks.
        for name, w, width in (("q", q_proj_weight, embed_dim), ("k", k_proj_weight, k.shape[-1]),
                               ("v", v_proj_weight, v.shape[-1])):
            if tuple(w.shape) != (embed_dim, width):
                raise AssertionError(f"expecting {name} weight shape of "
                                     f"{(embed_dim, width)}, but got {tuple(w.shape)}")
    if out_proj_weight.dim() != 2 or out_proj_weight.shape[1] != embed_dim:
        raise RuntimeError(f"out_proj_weight has shape {tuple(out_proj_weight.shape)}; expected "
                           f"(Eo, {embed_dim})")
    out_features = int(out_proj_weight.shape[0])
    if out_proj_bias is not None and tuple(out_proj_bias.shape) != (out_features,):
        raise RuntimeError(f"out_proj_bias has shape {tuple(out_proj_bias.shape)}; expected "
                           f"({out_features},)")
    if in_proj_bias is not None and tuple(in_proj_bias.shape) != (3 * embed_dim,):
        raise AssertionError(f"expecting in_proj_bias shape of {(3 * embed_dim,)}, but got "
                             f"{tuple(in_proj_bias.shape)}")
    if (bias_k is None) != (bias_v is None):
        raise AssertionError("bias_k is set but bias_v is None" if bias_v is None else
                             "bias_v is set but bias_k is None")
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
    # bias_k/bias_v: (1, 1, E) in the module, anything of E elements for the functional
    # (it repeats them over the batch); the op takes (E).
    bias_k = bias_k.reshape(-1) if bias_k is not None else None
    bias_v = bias_v.reshape(-1) if bias_v is not None else None
    if out_features != embed_dim:  # Eo < E: zero rows up to (E, E), sliced off in finish()
        out_proj_weight = F.pad(out_proj_weight, (0, 0, 0, embed_dim - out_features))
        if out_proj_bias is not None:
            out_proj_bias = F.pad(out_proj_bias, (0, embed_dim - out_features))
    if packed:
        w = [in_proj_weight, None, None]
    else:
        w = [q_proj_weight, k_proj_weight, v_proj_weight]
    inputs = [q, k, v, *w, in_proj_bias, out_proj_weight, out_proj_bias,
              bias_k, bias_v, key_padding_mask, attn_mask, None]  # dense: no sequence_offsets
    return OpCall(inputs=inputs, num_heads=num_heads, is_causal=causal_attr,
                  add_zero_attn=int(bool(add_zero_attn)),
                  fully_masked_row="nan" if need_weights else "zero",
                  average_attn_weights=int(bool(average_attn_weights)),
                  need_weights=bool(need_weights), batched=is_batched,
                  batch_first=bool(batch_first),
                  out_features=None if out_features == embed_dim else out_features)


def build_packed_call(mha: torch.nn.MultiheadAttention, rows, sequence_offsets) -> OpCall:
    """Self-attention of ``mha`` over packed token rows (variable-length mode): ``rows`` (T, E)
    is query, key and value at once, sequence b being rows offsets[b]..offsets[b+1]-1.

    What ``nn.TransformerEncoderLayer`` asks of its ``self_attn`` (no masks, need_weights=False)
    on the valid tokens only; ``packed_encoder`` checks the call qualifies (float32, E = embed
    dim, one packed in_proj_weight) before it gets here."""
    inputs = [rows, rows, rows, mha.in_proj_weight, None, None, mha.in_proj_bias,
              mha.out_proj.weight, mha.out_proj.bias,
              mha.bias_k.reshape(-1) if mha.bias_k is not None else None,
              mha.bias_v.reshape(-1) if mha.bias_v is not None else None,
              None, None, sequence_offsets]
    return OpCall(inputs=inputs, num_heads=int(mha.num_heads),
                  add_zero_attn=int(bool(mha.add_zero_attn)), need_weights=False)


def _canon(mask, dtype):
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf"))
    return mask.to(dtype)


def reference(query, key, value, in_proj_weight, k_proj_weight, v_proj_weight, in_proj_bias,
              out_proj_weight, out_proj_bias, bias_k, bias_v, key_padding_mask, attn_mask,
              sequence_offsets, num_heads: int, is_causal: int = 0, add_zero_attn: int = 0,
              fully_masked_row: str = "zero", average_attn_weights: int = 1,
              skip_padded_queries: int = 0):
    """The op's semantics in plain torch (batch-first, or packed rows with ``sequence_offsets``).
    Returns (output, attn_weights); attn_weights is None in the variable-length mode (the op has
    no output 1 there)."""
    attrs = dict(num_heads=num_heads, is_causal=is_causal, add_zero_attn=add_zero_attn,
                 fully_masked_row=fully_masked_row, average_attn_weights=average_attn_weights)
    weights = (in_proj_weight, k_proj_weight, v_proj_weight, in_proj_bias, out_proj_weight,
               out_proj_bias, bias_k, bias_v)
    if sequence_offsets is not None:
        if key_padding_mask is not None or attn_mask is not None or skip_padded_queries:
            raise ValueError("key_padding_mask, attn_mask and skip_padded_queries are not "
                             "supported with sequence_offsets (variable-length mode)")
        # Sequence b is rows offsets[b]..offsets[b+1]-1: the dense op on it alone (B = 1).
        offsets = [int(o) for o in sequence_offsets.tolist()]
        rows = [_dense(query[s:e].unsqueeze(0), key[s:e].unsqueeze(0), value[s:e].unsqueeze(0),
                       *weights, None, None, **attrs)[0][0]
                for s, e in zip(offsets[:-1], offsets[1:]) if e > s]
        out = torch.cat(rows) if rows else query.new_zeros(0, out_proj_weight.shape[0])
        return out, None
    out, w = _dense(query, key, value, *weights, key_padding_mask, attn_mask, **attrs)
    if skip_padded_queries:
        if key_padding_mask is None or key_padding_mask.dtype != torch.bool or \
                query.shape[1] != key.shape[1]:
            raise ValueError("skip_padded_queries needs a bool key_padding_mask and L == S")
        # Padded query rows are not computed: zeros (not out_proj_bias), also in the weights.
        skip = key_padding_mask.reshape(key_padding_mask.shape[0], -1, 1)  # (B, L, 1)
        out = out.masked_fill(skip, 0.0)
        w = w.masked_fill(skip if w.dim() == 3 else skip.unsqueeze(1), 0.0)
    return out, w


def _dense(query, key, value, in_proj_weight, k_proj_weight, v_proj_weight, in_proj_bias,
           out_proj_weight, out_proj_bias, bias_k, bias_v, key_padding_mask, attn_mask,
           num_heads: int, is_causal: int = 0, add_zero_attn: int = 0,
           fully_masked_row: str = "zero", average_attn_weights: int = 1):
    """The dense mode, (B, L, E) queries over (B, S, ·) keys."""
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
