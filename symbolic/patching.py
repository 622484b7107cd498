"""During export, route every ``nn.MultiheadAttention`` call through the MaskedMHA op.

``patched(backend)`` replaces ``nn.MultiheadAttention.forward`` with a forward that builds the op
call (``mha_call.build_call``) and hands it to the backend ("torchscript" or "dynamo"); disables
PyTorch's MHA/transformer fast paths (no ``_native_multi_head_attention``,
``_transformer_encoder_layer_fwd`` or nested tensors in the trace); and makes
``nn.Transformer*``'s automatic causal-mask detection (``_detect_is_causal_mask``, which looks at
the mask's values) answer from the explicit hint only, so the mask stays an input of the graph.

``torch.nn.functional.multi_head_attention_forward`` is patched too, for models that call it
directly (OpenAI CLIP's ``AttentionPool2d``, attention pools written like it): every argument
maps to the op (``mha_call.build_functional_call``; an output projection to fewer features than
embed_dim, CLIP's ``c_proj``, is zero-padded and sliced), except what the op cannot take:
``static_k``/``static_v`` (keys and values already projected and split into heads) and an output
projection to MORE features than embed_dim.  Such a call is left to PyTorch (exported unfused,
standard ops, as PyTorch computes it) with a warning that says so.
Code that imported the function by name before export (``from torch.nn.functional import
multi_head_attention_forward``) keeps its own reference and is not fused.

Two options of ``maskedmha.export`` act here: ``skip_padded_queries`` sets the op's attribute on
self-attention calls (query, key and value one tensor) with a bool key_padding_mask;
``remove_padding`` also replaces ``nn.TransformerEncoder.forward`` and
``nn.TransformerEncoderLayer.forward`` with the padding-free ones of ``packed_encoder``.

Everything is restored on exit, also on error.
"""
from __future__ import annotations

import contextlib
import threading
import warnings

import torch
import torch.nn.functional as F
from torch import nn
import torch.nn.modules.transformer as _transformer

from . import mha_call

_lock = threading.RLock()


def _backend_call(backend):
    if backend == "torchscript":
        from .torchscript import call
    elif backend == "dynamo":
        from .dynamo import call
    else:
        raise ValueError(f"maskedmha: unknown backend {backend!r}")
    return call


def _skip_padded(op, query, key, value, key_padding_mask):
    """``skip_padded_queries=True``: set the attribute on self-attention (query, key and value
    one tensor) with a bool key_padding_mask, where the op accepts it (L == S)."""
    if query is key and key is value and key_padding_mask is not None and \
            key_padding_mask.dtype == torch.bool and op.inputs[0].shape[1] == op.inputs[1].shape[1]:
        op.skip_padded_queries = 1
    return op


def _make_forward(call, skip_padded_queries=False):
    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        op = mha_call.build_call(self, query, key, value, key_padding_mask=key_padding_mask,
                                 need_weights=need_weights, attn_mask=attn_mask,
                                 average_attn_weights=average_attn_weights,
                                 is_causal=is_causal)
        if skip_padded_queries:
            _skip_padded(op, query, key, value, key_padding_mask)
        return call(op)
    forward.__name__ = "forward"
    forward.__qualname__ = "MultiheadAttention.forward"
    return forward


def _make_functional(call, original, skip_padded_queries=False):
    def multi_head_attention_forward(query, key, value, embed_dim_to_check, num_heads,
                                     in_proj_weight, in_proj_bias, bias_k, bias_v, add_zero_attn,
                                     dropout_p, out_proj_weight, out_proj_bias, training=True,
                                     key_padding_mask=None, need_weights=True, attn_mask=None,
                                     use_separate_proj_weight=False, q_proj_weight=None,
                                     k_proj_weight=None, v_proj_weight=None, static_k=None,
                                     static_v=None, average_attn_weights=True, is_causal=False):
        try:
            op = mha_call.build_functional_call(
                query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias,
                bias_k, bias_v, add_zero_attn, dropout_p, out_proj_weight, out_proj_bias,
                training=training, key_padding_mask=key_padding_mask, need_weights=need_weights,
                attn_mask=attn_mask, use_separate_proj_weight=use_separate_proj_weight,
                q_proj_weight=q_proj_weight, k_proj_weight=k_proj_weight,
                v_proj_weight=v_proj_weight, static_k=static_k, static_v=static_v,
                average_attn_weights=average_attn_weights, is_causal=is_causal,
                batch_first=False, stacklevel=3)  # warnings point at the caller's line
        except mha_call.Unfusable as exc:
            # PyTorch's own code still exports correctly (standard ops): a correct model, one
            # attention not fused, and the user told which and why.
            warnings.warn(f"maskedmha: F.multi_head_attention_forward call exported unfused "
                          f"(standard ops): {exc}", stacklevel=2)
            return original(query, key, value, embed_dim_to_check, num_heads, in_proj_weight,
                            in_proj_bias, bias_k, bias_v, add_zero_attn, dropout_p,
                            out_proj_weight, out_proj_bias, training=training,
                            key_padding_mask=key_padding_mask, need_weights=need_weights,
                            attn_mask=attn_mask,
                            use_separate_proj_weight=use_separate_proj_weight,
                            q_proj_weight=q_proj_weight, k_proj_weight=k_proj_weight,
                            v_proj_weight=v_proj_weight, static_k=static_k, static_v=static_v,
                            average_attn_weights=average_attn_weights, is_causal=is_causal)
        if skip_padded_queries:
            _skip_padded(op, query, key, value, key_padding_mask)
        return call(op)
    multi_head_attention_forward.__wrapped__ = original
    return multi_head_attention_forward


def _detect_from_hint(mask, is_causal=None, size=None):
    return is_causal is True


@contextlib.contextmanager
def patched(backend: str, *, skip_padded_queries: bool = False, remove_padding: bool = False):
    """Yields a ``packed_encoder.PackingReport`` when ``remove_padding`` (else None)."""
    call = _backend_call(backend)
    with _lock:
        old_forward = nn.MultiheadAttention.__dict__["forward"]
        old_functional = F.multi_head_attention_forward
        old_detect = _transformer._detect_is_causal_mask
        old_fastpath = torch.backends.mha.get_fastpath_enabled()
        old_encoder = nn.TransformerEncoder.__dict__["forward"]
        old_layer = nn.TransformerEncoderLayer.__dict__["forward"]
        report = None
        try:
            nn.MultiheadAttention.forward = _make_forward(call, skip_padded_queries)
            F.multi_head_attention_forward = _make_functional(call, old_functional,
                                                              skip_padded_queries)
            _transformer._detect_is_causal_mask = _detect_from_hint
            torch.backends.mha.set_fastpath_enabled(False)
            if remove_padding:
                from .packed_encoder import PackingReport, make_forwards
                report = PackingReport()
                nn.TransformerEncoder.forward, nn.TransformerEncoderLayer.forward = \
                    make_forwards(call, report, old_encoder, old_layer)
            yield report
        finally:
            nn.MultiheadAttention.forward = old_forward
            F.multi_head_attention_forward = old_functional
            _transformer._detect_is_causal_mask = old_detect
            torch.backends.mha.set_fastpath_enabled(old_fastpath)
            nn.TransformerEncoder.forward = old_encoder
            nn.TransformerEncoderLayer.forward = old_layer
