"""Writes what the C++ example runs: the README's model (nn.Transformer, d_model 64, 4 heads, with
key padding masks and a causal target mask) exported by maskedmha to DIR/model.onnx, one .npy
file per model input (DIR/src.npy, DIR/tgt.npy, DIR/src_key_padding_mask.npy,
DIR/tgt_key_padding_mask.npy) and PyTorch's own output for them (DIR/expected_output.npy).

    python examples/cpp/make_model.py DIR

Needs torch (pip install "maskedmha[export]"); the C++ program itself needs neither Python nor torch.
"""
import os
import sys

import numpy as np
import torch

import maskedmha
from maskedmha.demo import DYNAMIC_AXES, NAMES, DemoTranslator, demo_inputs

out_dir = sys.argv[1] if len(sys.argv) > 1 else "."
os.makedirs(out_dir, exist_ok=True)
torch.manual_seed(0)
model = DemoTranslator().eval()
maskedmha.export(model, demo_inputs(2, 12, 10), os.path.join(out_dir, "model.onnx"),
                 input_names=NAMES, output_names=["output"], dynamic_axes=DYNAMIC_AXES)
inputs = demo_inputs(3, 9, 7, seed=1)          # another shape than the export's: axes are dynamic
for name, tensor in zip(NAMES, inputs):
    np.save(os.path.join(out_dir, f"{name}.npy"), tensor.numpy())
torch.backends.mha.set_fastpath_enabled(False)  # the path maskedmha matches (see README, "Use")
with torch.no_grad():
    np.save(os.path.join(out_dir, "expected_output.npy"), model(*inputs).numpy())
print(f"wrote {out_dir}/model.onnx, {', '.join(n + '.npy' for n in NAMES)} and expected_output.npy")
