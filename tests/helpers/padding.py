"""Padded batches for the padding-free export tests (remove_padding, skip_padded_queries):
left-aligned bool key padding masks from per-sequence lengths, and a session with our kernel."""
from __future__ import annotations

import torch

import maskedmha


def padding_mask(lengths, L) -> torch.Tensor:
    """(B, L) bool, True = padding: sequence b's first lengths[b] positions are valid."""
    return torch.arange(L).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)


def kernel_session(proto):
    """The exported file run by our library's kernel."""
    return maskedmha.InferenceSession(proto.SerializeToString())
