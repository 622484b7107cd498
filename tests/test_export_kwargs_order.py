"""Keyword inputs given in another order than the forward's parameters keep their names: the
TorchScript exporter orders their graph inputs by parameter, the dynamo one by the dict, and
maskedmha.export names each graph input after its own argument with both (the README's
nn.Transformer example passes tgt_mask after the padding masks)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import maskedmha
from helpers.exporting import EXPORTERS
from helpers.reference import no_fastpath


class _TwoMasks(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x, attn_mask=None, key_padding_mask=None):
        return self.attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                         need_weights=False)[0]


@pytest.mark.parametrize("named", [True, False])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_keyword_inputs_out_of_order_keep_their_names(exporter, named):
    torch.manual_seed(0)
    model = _TwoMasks().eval()
    x = torch.randn(2, 5, 16)
    kpm = torch.zeros(2, 5, dtype=torch.bool)
    kpm[0, 3:] = True
    am = torch.zeros(5, 5).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), -1e4)
    kwargs = {"key_padding_mask": kpm, "attn_mask": am}  # not the forward's order
    names = ["x", "pad", "causal"] if named else None
    proto = maskedmha.export(model, (x,), kwargs=kwargs, input_names=names, exporter=exporter)
    pad_name, am_name = ("pad", "causal") if named else ("key_padding_mask", "attn_mask")
    x_name = "x"
    types = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}
    assert types == {x_name: 1, pad_name: 9, am_name: 1}  # FLOAT, BOOL, FLOAT
    (got,) = maskedmha.InferenceSession(proto.SerializeToString()).run(
        None, {x_name: x.numpy(), pad_name: kpm.numpy(), am_name: am.numpy()})
    with torch.no_grad(), no_fastpath():
        expected = model(x, **kwargs)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)
