"""Static output dims the stock export keeps, the fused export keeps too (issue: DETR's decoder
output ``hs`` lost its static layer count and width in fused TorchScript files).  A DETR-like
decoder returns its stacked intermediate outputs (layers, batch, queries, width) with a dynamic
batch; every dim the stock TorchScript export states, maskedmha's exports state the same."""
from __future__ import annotations

import io
import warnings

import onnx
import pytest
import torch
from torch import nn

import maskedmha

NAMES = ["tgt", "memory", "memory_key_padding_mask"]
AXES = {"tgt": {1: "batch"}, "memory": {0: "S", 1: "batch"},
        "memory_key_padding_mask": {0: "batch", 1: "S"}, "hs": {1: "batch"}}


class StackedDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0) for _ in range(3)])

    def forward(self, tgt, memory, memory_key_padding_mask):
        outs, x = [], tgt
        for layer in self.layers:
            x = layer(x, memory, memory_key_padding_mask=memory_key_padding_mask)
            outs.append(x)
        return torch.stack(outs).transpose(1, 2)


def _dims(model):
    return [d.dim_value or d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim]


def _args():
    kpm = torch.zeros(2, 7, dtype=torch.bool)
    kpm[1, 5:] = True
    return torch.randn(10, 2, 32), torch.randn(7, 2, 32), kpm


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_fused_export_keeps_the_static_dims_of_the_stock_export(exporter):
    torch.manual_seed(0)
    module = StackedDecoder().eval()
    f = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, _args(), f, input_names=NAMES, output_names=["hs"],
                          dynamic_axes=AXES, dynamo=False)
    stock = _dims(onnx.load_from_string(f.getvalue()))
    assert stock == [3, "batch", 10, 32]  # the premise: the stock file states them
    fused = maskedmha.export(module, _args(), input_names=NAMES, output_names=["hs"],
                             dynamic_axes=AXES, exporter=exporter)
    assert sum(n.op_type == "MaskedMHA" for n in fused.graph.node) == 6
    assert _dims(fused) == stock
