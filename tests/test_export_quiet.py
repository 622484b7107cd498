"""Issue 12, item 4: an export prints only what concerns the user.  PyTorch's exporters printed,
on every export: "torchvision is not installed. Skipping torchvision::..." (4 log lines, dynamo),
a FutureWarning about ``isinstance(treespec, LeafSpec)`` (dynamo), "The shape inference of
com.maskedmha::MaskedMHA type is missing" (TorchScript, per node with attention weights, printed
by C++ straight to stderr) and "ONNX Preprocess - Removing mutation from node ... changes graph
semantics" (TorchScript).  The first is checked in a fresh interpreter, exactly as a user runs
it, with Python's default warning filters."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

import maskedmha
from helpers.exporting import EXPORTERS, count_mha

NOISE = [
    "torchvision is not installed",
    "isinstance(treespec, LeafSpec)",
    "type is missing",
    "Removing mutation",
]

# Models that made each exporter print all of its noise: attention weights returned (an op
# output without a type), a bool key padding mask through a TransformerEncoderLayer (the
# in-place canonicalisation of a graph input), dynamic axes.
SCRIPT = textwrap.dedent("""
    import sys, torch, maskedmha
    from torch import nn
    torch.manual_seed(0)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
            self.mha = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x, kpm):
            y = self.layer(x, src_key_padding_mask=kpm)
            return self.mha(y, x, x, key_padding_mask=kpm)

    x, kpm = torch.randn(2, 5, 16), torch.zeros(2, 5, dtype=torch.bool)
    kpm[1, 3:] = True
    proto = maskedmha.export(Model().eval(), (x, kpm), exporter=sys.argv[1],
                             output_names=["y", "w"],
                             dynamic_axes={"x": {0: "B", 1: "L"}, "kpm": {0: "B", 1: "L"}})
    print("MaskedMHA nodes:", sum(n.op_type == "MaskedMHA" for n in proto.graph.node))
""")


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_export_prints_no_exporter_noise(exporter):
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    res = subprocess.run([sys.executable, "-c", SCRIPT, exporter], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "MaskedMHA nodes: 2"
    out = res.stdout + res.stderr
    assert not [m for m in NOISE if m in out], out
    # Nothing else was printed either for this model (no warning concerns it).
    assert not res.stderr.strip(), res.stderr


class Warns(nn.Module):
    """Warns and logs from its own forward: the user's messages must still get through."""

    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x):
        warnings.warn("the user's own FutureWarning", FutureWarning)
        warnings.warn("the user's own UserWarning")
        logging.getLogger("torch.onnx._internal.exporter._registration").warning(
            "a message from that logger which is not the torchvision one")
        return self.mha(x, x, x, need_weights=False)[0]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_filters_are_narrow_and_restored(exporter):
    filters_before = list(warnings.filters)
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    log_filters_before = list(logger.filters)
    handler = _Records()  # our own handler: works with or without pytest's logging plugin
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            proto = maskedmha.export(Warns().eval(), (torch.randn(2, 3, 16),),
                                     exporter=exporter)
    finally:
        logger.removeHandler(handler)
    assert count_mha(proto) == 1
    messages = [str(w.message) for w in caught]
    assert "the user's own FutureWarning" in messages
    assert "the user's own UserWarning" in messages
    assert not [m for m in messages for n in NOISE if n in m], messages
    logged = [r.getMessage() for r in handler.records]
    assert "a message from that logger which is not the torchvision one" in logged
    assert not [m for m in logged if "torchvision is not installed" in m]
    assert warnings.filters == filters_before
    assert logger.filters == log_filters_before
