"""``maskedmha.export(..., remove_padding=True)``: ``nn.TransformerEncoder`` and
``nn.TransformerEncoderLayer`` exported padding-free, so their cost follows the valid tokens.

For a qualifying call (a bool ``src_key_padding_mask``, no src mask; ``why_dense`` has the full
list) the exported graph
1. gathers the valid tokens once: NonZero over the flattened not-mask gives the (T,) row indices,
   a Gather the (T, E) rows, and ``sequence_offsets`` = [0, cumsum(valid tokens per sequence)];
2. runs every layer on those rows: the token-wise ops (norms, residuals, linear1, activation,
   linear2) as they are, on T rows; the self-attention as ONE MaskedMHA node in variable-length
   mode (query = key = value = the rows, the packed in_proj_weight, ``sequence_offsets``);
3. scatters the rows back into zeros of the input's shape and applies the encoder's final
   ``norm`` (if any) to that padded tensor.
Step 3 is PyTorch's nested-tensor path (``TransformerEncoder.forward``: ``to_padded_tensor(0.)``
then ``self.norm``): valid positions are what PyTorch computes on either path; padded positions
are 0 (norm(0) under a final norm), as on the nested-tensor path.  PyTorch's other path computes
values at padded positions too (never read by valid tokens); those are not reproduced.

A call that does not qualify is exported by PyTorch's own forward (dense, the padding computed,
the attention one ordinary MaskedMHA node); ``PackingReport`` collects why, and
``maskedmha.export`` turns that into ONE warning: the user asked for padding-free export, so
a silent dense fallback would hide the cost they meant to remove.  (A docstring alone would not
tell them which of their calls fell back.)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import mha_call

# Activations known to act on each element alone (so on token rows as on (B, L, ·)): what
# PyTorch's fast path accepts, relu and gelu, as functions or modules.
_ELEMENTWISE = (F.relu, F.gelu)
_ELEMENTWISE_MODULES = (nn.ReLU, nn.GELU)


@dataclass
class PackingReport:
    """What happened to the encoder calls of one export: how many were packed, and why the
    others were not."""
    packed: int = 0
    dense: list = field(default_factory=list)  # one reason per dense call
    # > 0 while PyTorch's own TransformerEncoder.forward runs (a dense encoder call): its layer
    # calls then get the canonical float mask and are dense for the encoder's reason, which
    # is already recorded.
    _inside_dense_encoder: int = 0

    def summary(self) -> str | None:
        """One line for the user, or None when every call was packed."""
        if not self.packed and not self.dense:
            return ("maskedmha.export(remove_padding=True): the model made no "
                    "nn.TransformerEncoder / nn.TransformerEncoderLayer call; nothing packed")
        if not self.dense:
            return None
        reasons = sorted(set(self.dense))
        return (f"maskedmha.export(remove_padding=True): {len(self.dense)} encoder call(s) "
                f"exported dense (padding computed), {self.packed} packed: "
                + "; ".join(reasons))


def _is_elementwise(act) -> bool:
    return any(act is f for f in _ELEMENTWISE) or isinstance(act, _ELEMENTWISE_MODULES)


def _layer_why_dense(layer, src) -> str | None:
    """Why ``layer``'s computation cannot run on packed token rows (None: it can)."""
    cls = type(layer)
    name = cls.__name__
    if not isinstance(layer, nn.TransformerEncoderLayer):
        return f"{name} is not an nn.TransformerEncoderLayer"
    # PyTorch's own code, not a subclass's: anything overridden may mix tokens.
    for method in ("forward", "_sa_block", "_ff_block"):
        if getattr(cls, method) is not getattr(nn.TransformerEncoderLayer, method):
            return f"{name} overrides {method}"
    attn = layer.self_attn
    if type(attn).forward is not nn.MultiheadAttention.forward:
        return f"{name}.self_attn is not a plain nn.MultiheadAttention"
    if not attn._qkv_same_embed_dim:
        return f"{name}.self_attn has separate q/k/v projection weights"
    for norm in ("norm1", "norm2"):
        m = getattr(layer, norm)
        if not isinstance(m, (nn.LayerNorm, nn.RMSNorm)) or len(m.normalized_shape) != 1:
            return f"{name}.{norm} is not a LayerNorm/RMSNorm over the features"
    if not _is_elementwise(layer.activation):
        return (f"{name}'s activation {layer.activation!r} is not relu/gelu (not known to be "
                "token-wise)")
    if any(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in layer.modules()):
        return f"{name} has forward hooks (they would see token rows, or not run)"
    if src.dtype != torch.float32 or attn.out_proj.weight.dtype != torch.float32:
        return "not float32 (MaskedMHA version 1 is float32 only)"
    return None


def why_dense(layers, src, mask, src_key_padding_mask, is_causal) -> str | None:
    """Why an encoder call over ``layers`` is not exported packed (None: it is)."""
    if src_key_padding_mask is None:
        return "no src_key_padding_mask (no padding to remove)"
    if src_key_padding_mask.dtype != torch.bool:
        return ("a float src_key_padding_mask (its values add to the scores; only a bool "
                "mask says which tokens are padding)")
    if mask is not None:
        return "a src mask is given (it relates positions across the padded length)"
    if is_causal:
        return "is_causal=True"
    if src.dim() not in (2, 3):
        return f"src of rank {src.dim()}"
    batch_first = layers[0].self_attn.batch_first
    for layer in layers:
        reason = _layer_why_dense(layer, src)
        if reason:
            return reason
        # PyTorch reads a batch with each layer's own layout (an unbatched one alike for all)
        if src.dim() == 3 and layer.self_attn.batch_first != batch_first:
            return "the layers disagree on batch_first"
    E = layers[0].self_attn.embed_dim
    expected = (src.shape[:2] if batch_first else (src.shape[1], src.shape[0])) \
        if src.dim() == 3 else src.shape[:1]
    if src.shape[-1] != E or tuple(src_key_padding_mask.shape) != tuple(expected):
        # PyTorch's forward raises its own error for these.
        return "shapes that do not fit the layers (PyTorch's forward reports them)"
    return None


class Packed:
    """The valid tokens of a padded batch as (T, E) rows, and the way back."""

    def __init__(self, src, src_key_padding_mask, batch_first: bool):
        x, keep = src, src_key_padding_mask.logical_not()
        self.unbatched = src.dim() == 2
        if self.unbatched:
            x, keep = x.unsqueeze(0), keep.unsqueeze(0)
        elif not batch_first:
            x = x.transpose(0, 1)
        self.batch_first = batch_first
        self.shape = x.shape  # (B, L, E)
        E = x.shape[-1]
        # Row indices of the valid tokens in the flattened (B * L) batch, in order: sequence
        # b's tokens are contiguous, so offsets from the per-sequence counts delimit them.
        self.index = keep.reshape(-1).nonzero().squeeze(1)
        self.rows = x.reshape(-1, E).index_select(0, self.index)
        lengths = keep.to(torch.int64).sum(1)
        self.offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])

    def unpack(self, rows):
        """(T, E) rows -> the input's layout, zeros at the padded positions."""
        B, L, E = self.shape
        out = rows.new_zeros(B * L, E).index_put((self.index,), rows)
        out = out.reshape(B, L, E)
        if self.unbatched:
            return out.squeeze(0)
        return out if self.batch_first else out.transpose(0, 1)


def layer_rows(layer: nn.TransformerEncoderLayer, x, offsets, call):
    """``TransformerEncoderLayer.forward``'s slow path (both norm_first variants), on token
    rows; its self-attention is one variable-length MaskedMHA node."""
    def sa(h):
        return layer.dropout1(call(mha_call.build_packed_call(layer.self_attn, h, offsets))[0])

    if layer.norm_first:
        x = x + sa(layer.norm1(x))
        x = x + layer._ff_block(layer.norm2(x))
    else:
        x = layer.norm1(x + sa(x))
        x = layer.norm2(x + layer._ff_block(x))
    return x


def make_forwards(call, report: PackingReport, encoder_forward, layer_forward):
    """Forwards for ``nn.TransformerEncoder`` and ``nn.TransformerEncoderLayer`` that export a
    qualifying call packed and hand any other call to PyTorch's (``encoder_forward``,
    ``layer_forward``), recording why in ``report``."""

    def encoder(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        reason = why_dense(list(self.layers), src, mask, src_key_padding_mask, is_causal) \
            if len(self.layers) else "an encoder without layers"
        if reason:
            report.dense.append(f"TransformerEncoder: {reason}")
            report._inside_dense_encoder += 1
            try:
                return encoder_forward(self, src, mask=mask,
                                       src_key_padding_mask=src_key_padding_mask,
                                       is_causal=is_causal)
            finally:
                report._inside_dense_encoder -= 1
        report.packed += 1
        packed = Packed(src, src_key_padding_mask, self.layers[0].self_attn.batch_first)
        rows = packed.rows
        for layer in self.layers:
            rows = layer_rows(layer, rows, packed.offsets, call)
        # PyTorch: output.to_padded_tensor(0.0, src.size()), THEN self.norm.
        out = packed.unpack(rows)
        if self.norm is not None:
            out = self.norm(out)
        return out

    def layer(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        reason = why_dense([self], src, src_mask, src_key_padding_mask, is_causal)
        if reason:
            if not report._inside_dense_encoder:
                report.dense.append(f"TransformerEncoderLayer: {reason}")
            return layer_forward(self, src, src_mask=src_mask,
                                 src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        report.packed += 1
        packed = Packed(src, src_key_padding_mask, self.self_attn.batch_first)
        return packed.unpack(layer_rows(self, packed.rows, packed.offsets, call))

    encoder.__name__ = layer.__name__ = "forward"
    encoder.__qualname__ = "TransformerEncoder.forward"
    layer.__qualname__ = "TransformerEncoderLayer.forward"
    return encoder, layer
