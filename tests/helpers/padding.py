"""Padded batches for the padding-free export tests (remove_padding, skip_padded_queries):
left-aligned bool key padding masks from per-sequence lengths, and a session with our kernel."""
from __future__ import annotations

import copy

import torch

import maskedmha
from maskedmha.symbolic.attach import attach_functions

from . import ort_release


def padding_mask(lengths, L) -> torch.Tensor:
    """(B, L) bool, True = padding: sequence b's first lengths[b] positions are valid."""
    return torch.arange(L).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)


def kernel_session(proto):
    """The exported file run by our library's kernel.  A file with several fallback signatures is
    IR 10, which ORT 1.17-1.18 cannot read: there it runs as ``fallback=False`` writes it (the
    nodes alone, IR 9), as README's release table says users run such files fused."""
    if not ort_release.reads(proto):
        proto = attach_functions(copy.deepcopy(proto), fallback=False)
        assert ort_release.reads(proto), proto.ir_version
    return maskedmha.InferenceSession(proto.SerializeToString())
