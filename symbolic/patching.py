"""During export, route every ``nn.MultiheadAttention`` call through the MaskedMHA op.

``patched(backend)`` replaces ``nn.MultiheadAttention.forward`` with a forward that builds the op
call (``mha_call.build_call``) and hands it to the backend ("torchscript" or "dynamo"); disables
PyTorch's MHA/transformer fast paths (no ``_native_multi_head_attention``,
``_transformer_encoder_layer_fwd`` or nested tensors in the trace); and makes
``nn.Transformer*``'s automatic causal-mask detection (``_detect_is_causal_mask``, which looks at
the mask's values) answer from the explicit hint only, so the mask stays an input of the graph.
Everything is restored on exit, also on error.
"""
from __future__ import annotations

import contextlib
import threading

import torch
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


def _make_forward(call):
    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        op = mha_call.build_call(self, query, key, value, key_padding_mask=key_padding_mask,
                                 need_weights=need_weights, attn_mask=attn_mask,
                                 average_attn_weights=average_attn_weights,
                                 is_causal=is_causal)
        return call(op)
    forward.__name__ = "forward"
    forward.__qualname__ = "MultiheadAttention.forward"
    return forward


def _detect_from_hint(mask, is_causal=None, size=None):
    return is_causal is True


@contextlib.contextmanager
def patched(backend: str):
    call = _backend_call(backend)
    with _lock:
        old_forward = nn.MultiheadAttention.__dict__["forward"]
        old_detect = _transformer._detect_is_causal_mask
        old_fastpath = torch.backends.mha.get_fastpath_enabled()
        try:
            nn.MultiheadAttention.forward = _make_forward(call)
            _transformer._detect_is_causal_mask = _detect_from_hint
            torch.backends.mha.set_fastpath_enabled(False)
            yield
        finally:
            nn.MultiheadAttention.forward = old_forward
            _transformer._detect_is_causal_mask = old_detect
            torch.backends.mha.set_fastpath_enabled(old_fastpath)
