"""`maskedmha demo`: a small encoder-decoder Transformer with padding masks and a causal target
mask, exported fused and decomposed, run at a shape other than the export shape, checked against
PyTorch, and compared side by side."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import torch
from torch import nn

from .compare import compare, format_table
from .decompose import decompose
from .export import export


class DemoTranslator(nn.Module):
    """nn.Transformer (2 encoder + 2 decoder layers, d_model 64, 4 heads) on float features."""

    def __init__(self, d_model: int = 64, nhead: int = 4):
        super().__init__()
        self.transformer = nn.Transformer(d_model, nhead, num_encoder_layers=2, num_decoder_layers=2,
                                          dim_feedforward=128, dropout=0.0, batch_first=True)

    def forward(self, src, tgt, src_key_padding_mask, tgt_key_padding_mask):
        causal = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], dtype=tgt.dtype)
        return self.transformer(src, tgt, tgt_mask=causal, tgt_is_causal=True,
                                src_key_padding_mask=src_key_padding_mask,
                                tgt_key_padding_mask=tgt_key_padding_mask,
                                memory_key_padding_mask=src_key_padding_mask)


def demo_inputs(batch: int, src_len: int, tgt_len: int, d_model: int = 64, seed: int = 0):
    """Features plus padding masks whose valid lengths vary per batch item (True = padding)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(batch, src_len, d_model, generator=g)
    tgt = torch.randn(batch, tgt_len, d_model, generator=g)
    src_valid = torch.randint(1, src_len + 1, (batch,), generator=g)
    tgt_valid = torch.randint(1, tgt_len + 1, (batch,), generator=g)
    src_kpm = torch.arange(src_len)[None, :] >= src_valid[:, None]
    tgt_kpm = torch.arange(tgt_len)[None, :] >= tgt_valid[:, None]
    return src, tgt, src_kpm, tgt_kpm


NAMES = ["src", "tgt", "src_key_padding_mask", "tgt_key_padding_mask"]
DYNAMIC_AXES = {
    "src": {0: "batch", 1: "src_len"}, "tgt": {0: "batch", 1: "tgt_len"},
    "src_key_padding_mask": {0: "batch", 1: "src_len"},
    "tgt_key_padding_mask": {0: "batch", 1: "tgt_len"}, "output": {0: "batch", 1: "tgt_len"},
}


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def run_demo(out_dir: str | None = None, exporter: str = "dynamo", runs: int = 20,
             threads: int | None = None) -> str:
    torch.manual_seed(0)
    model = DemoTranslator().eval()
    out_dir = out_dir or tempfile.mkdtemp(prefix="maskedmha-demo-")
    os.makedirs(out_dir, exist_ok=True)
    fused_path = os.path.join(out_dir, "demo_transformer.onnx")
    plain_path = os.path.join(out_dir, "demo_transformer.decomposed.onnx")

    fused = export(model, demo_inputs(2, 12, 10), fused_path, input_names=NAMES,
                   output_names=["output"], dynamic_axes=DYNAMIC_AXES, exporter=exporter)
    import onnx
    onnx.save(decompose(fused), plain_path)

    # Run at a shape unlike the export shape: the dynamic axes must really be dynamic.
    args = demo_inputs(3, 20, 15, seed=1)
    with torch.no_grad():
        expected = model(*args).numpy()
    feeds = {n: a.numpy() for n, a in zip(NAMES, args)}
    result = compare(fused, feeds=feeds, runs=runs, threads=threads)
    fused_out, plain_out = result.fused.outputs[0], result.decomposed.outputs[0]

    lines = [
        f"Exported {type(model.transformer).__name__} (2+2 layers, d_model 64, 4 heads, padding + causal masks)",
        f"  fused:      {fused_path}",
        f"  decomposed: {plain_path}",
        f"Run at batch 3, src_len 20, tgt_len 15 (exported at 2, 12, 10), exporter={exporter}",
        "",
        format_table(result),
        "",
        f"max |fused - PyTorch|:      {_max_diff(fused_out, expected):.3e}",
        f"max |decomposed - PyTorch|: {_max_diff(plain_out, expected):.3e}",
    ]
    return "\n".join(lines)
