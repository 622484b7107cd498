"""Inputs and answers for MaskedMHA's variable-length mode (input 13 ``sequence_offsets``): B
sequences of given lengths packed into (T, E) token rows, and the reference that computes each
sequence alone (the dense op's B=1, L=S=len answer, from PyTorch) and stacks the rows."""
from __future__ import annotations

import numpy as np

from helpers.reference import make_feeds, spec_reference, torch_reference

# The feeds that are per token row (packed) rather than weights shared by every sequence.
TOKEN_INPUTS = ("query", "key", "value")


def offsets_of(lengths) -> np.ndarray:
    """sequence_offsets for these sequence lengths: [0, l0, l0+l1, ...] (int64, B + 1)."""
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)


def varlen_feeds(lengths, E, H, *, seed=0, self_attn=False, kdim=None, vdim=None, bias=True,
                 bias_kv=False) -> dict:
    """Random packed inputs: query / key / value (T, ...) token rows of len(lengths) sequences
    (key and value share query's offsets), the op's weights, and sequence_offsets."""
    T = int(sum(lengths))
    # One dense item of T rows gives the token rows and the weights in the op's layout.
    dense = make_feeds(1, T, T, E, H, seed=seed, self_attn=self_attn, kdim=kdim, vdim=vdim,
                       bias=bias, bias_kv=bias_kv)
    feeds = {k: (v[0] if k in TOKEN_INPUTS else v) for k, v in dense.items()}
    if self_attn:
        feeds["key"] = feeds["value"] = feeds["query"]
    feeds["sequence_offsets"] = offsets_of(lengths)
    return feeds


def sequence_feeds(feeds: dict, b: int) -> dict:
    """Sequence b of packed feeds as the dense op's inputs for it alone (B=1, L=S=len_b)."""
    off = feeds["sequence_offsets"]
    rows = slice(int(off[b]), int(off[b + 1]))
    dense = {k: v for k, v in feeds.items() if k != "sequence_offsets"}
    for k in TOKEN_INPUTS:
        dense[k] = feeds[k][rows][None]
    return dense


def varlen_reference(feeds: dict, H: int, *, add_zero_attn=False, is_causal=False) -> np.ndarray:
    """The expected (T, E) output: each sequence's rows from PyTorch's
    F.multi_head_attention_forward on that sequence alone (float64); under is_causal an explicit
    triu(1) mask over its keys, or, with extra keys (bias_k / add_zero_attn, which PyTorch's
    mask does not cover), docs/MaskedMHA.md's float64 transcription."""
    off = feeds["sequence_offsets"]
    E = feeds["query"].shape[1]
    out = np.zeros((int(off[-1]), E))
    for b in range(len(off) - 1):
        n = int(off[b + 1] - off[b])
        if n == 0:
            continue
        f = sequence_feeds(feeds, b)
        extra = add_zero_attn or f.get("bias_k") is not None
        if is_causal and extra:
            ref, _ = spec_reference(f, H, add_zero_attn=add_zero_attn, is_causal=True)
        else:
            if is_causal:
                f["attn_mask"] = np.triu(np.ones((n, n), bool), 1)
            ref, _ = torch_reference(f, H, add_zero_attn=add_zero_attn)
        out[int(off[b]):int(off[b + 1])] = ref[0]
    return out
