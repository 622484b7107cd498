"""maskedmha.export(..., skip_padded_queries=True): self-attention with a bool key_padding_mask
gets the attribute; its padded query rows are 0 (output and attention weights), every other
row what PyTorch computes; any other call is exported as without the option."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import maskedmha
from helpers.exporting import EXPORTERS
from helpers.padding import kernel_session, padding_mask
from helpers.reference import no_fastpath

TOL = dict(rtol=1e-5, atol=1e-5)
AXES = {"x": {0: "B", 1: "L"}, "pad": {0: "B", 1: "L"}}
AXES_SEQ_FIRST = {"x": {0: "L", 1: "B"}, "pad": {0: "B", 1: "L"}}


class _SelfAttention(nn.Module):
    def __init__(self, batch_first=True, need_weights=False, average=True):
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=batch_first)
        self.need_weights, self.average = need_weights, average

    def forward(self, x, pad):
        out, w = self.attn(x, x, x, key_padding_mask=pad, need_weights=self.need_weights,
                           average_attn_weights=self.average)
        return (out, w) if self.need_weights else out


def _skip_flags(proto):
    return [next((a.i for a in n.attribute if a.name == "skip_padded_queries"), 0)
            for n in proto.graph.node if n.op_type == "MaskedMHA"]


def _inputs(lengths, L, batch_first, seed):
    x = torch.randn(len(lengths), L, 32, generator=torch.Generator().manual_seed(seed))
    return (x if batch_first else x.transpose(0, 1).contiguous()), padding_mask(lengths, L)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("variant", ["batch_first", "seq_first", "weights_averaged",
                                     "weights_per_head"])
def test_padded_rows_are_zero_the_rest_pytorch(variant, exporter):
    batch_first = variant != "seq_first"
    torch.manual_seed(1)
    model = _SelfAttention(batch_first, need_weights=variant.startswith("weights"),
                           average=variant != "weights_per_head").eval()
    x, pad = _inputs([4, 2, 6], 6, batch_first, seed=2)
    proto = maskedmha.export(model, (x, pad), input_names=["x", "pad"], exporter=exporter,
                             dynamic_axes=AXES if batch_first else AXES_SEQ_FIRST,
                             skip_padded_queries=True)
    assert _skip_flags(proto) == [1]
    sess = kernel_session(proto)
    for i, (lengths, L) in enumerate([([4, 2, 6], 6), ([9, 1, 3, 5], 9), ([3], 3)]):
        x, pad = _inputs(lengths, L, batch_first, seed=10 + i)
        got = sess.run(None, {"x": x.numpy(), "pad": pad.numpy()})
        with torch.no_grad(), no_fastpath():
            expected = model(x, pad)
        expected = expected if isinstance(expected, tuple) else (expected,)
        out, ref = torch.from_numpy(got[0]), expected[0]
        if not batch_first:
            out, ref = out.transpose(0, 1), ref.transpose(0, 1)
        np.testing.assert_allclose(out[~pad].numpy(), ref[~pad].numpy(), **TOL)
        assert (out[pad] == 0).all()  # exactly 0, not out_proj_bias
        if len(got) == 2:
            w, rw = torch.from_numpy(got[1]), expected[1]
            if w.dim() == 4:  # (B, H, L, S): the query axis after the heads
                w, rw = w.transpose(1, 2), rw.transpose(1, 2)
            np.testing.assert_allclose(w[~pad].numpy(), rw[~pad].numpy(), **TOL)
            assert (w[pad] == 0).all()


class _Calls(nn.Module):
    """Self-attention by the functional (set), and calls the option must leave alone:
    cross-attention, a float mask, no mask, an encoder layer (PyTorch hands its attention a
    float mask)."""

    def __init__(self):
        super().__init__()
        self.a = nn.MultiheadAttention(32, 4, batch_first=True)
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)

    def forward(self, x, pad, mem):
        a = self.a
        xs = x.transpose(0, 1)
        functional = F.multi_head_attention_forward(
            xs, xs, xs, 32, 4, a.in_proj_weight, a.in_proj_bias, None, None, False, 0.0,
            a.out_proj.weight, a.out_proj.bias, training=False, key_padding_mask=pad,
            need_weights=False)[0].transpose(0, 1)
        cross = a(x, mem, mem, key_padding_mask=pad, need_weights=False)[0]
        fpad = torch.zeros(pad.shape).masked_fill(pad, -1e4)
        float_mask = a(x, x, x, key_padding_mask=fpad, need_weights=False)[0]
        no_mask = a(x, x, x, need_weights=False)[0]
        layer = self.layer(x, src_key_padding_mask=pad)
        return functional, cross, float_mask, no_mask, layer


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_set_only_on_self_attention_with_a_bool_mask(exporter):
    torch.manual_seed(3)
    model = _Calls().eval()
    x, pad = _inputs([5, 2], 5, True, seed=4)
    mem = torch.randn(2, 5, 32)
    proto = maskedmha.export(model, (x, pad, mem), input_names=["x", "pad", "mem"],
                             exporter=exporter, skip_padded_queries=True)
    assert _skip_flags(proto) == [1, 0, 0, 0, 0]
    got = kernel_session(proto).run(None, {"x": x.numpy(), "pad": pad.numpy(),
                                           "mem": mem.numpy()})
    with torch.no_grad(), no_fastpath():
        expected = model(x, pad, mem)
    np.testing.assert_allclose(got[0][(~pad).numpy()], expected[0][~pad].numpy(), **TOL)
    assert (got[0][pad.numpy()] == 0).all()
    for g, e in zip(got[1:], expected[1:]):  # unchanged: PyTorch everywhere
        np.testing.assert_allclose(g, e.numpy(), **TOL)
