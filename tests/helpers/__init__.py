"""Shared test helpers, one job a module (tests/conftest.py puts tests/ on sys.path, so test files
write ``from helpers.graphs import make_model``):

- ``graphs``: hand-built one-node MaskedMHA models from numpy feeds, and sessions running them;
- ``reference``: random feeds in the op's layout and the answers they must give (PyTorch's
  ``multi_head_attention_forward``, a float64 transcription of docs/MaskedMHA.md), comparisons;
- ``configs``: one-node models, feeds and references described by ``symbolic.fallback.Config``
  (the fallback and decompose tests);
- ``cases``: the ``nn.MultiheadAttention`` configurations exported through ``maskedmha.export``;
- ``exporting``: what the export tests share (exporters, running a saved file every way);
- ``stock``: files torch.onnx.export writes without maskedmha (the cases, the demo
  nn.Transformer), cached per process: what the ``maskedmha.fuse`` tests fuse;
- ``fused_model``: a small fused file built without torch;
- ``ort_release``: what the installed onnxruntime release reads and runs;
- ``venv_tools``: the wheel and throw-away venvs for the install tests;
- ``report``: lines a test file prints in the run's summary (its counts), order-independent.

Input and output names, the domain and the attribute defaults come from
``maskedmha.symbolic.schema``, never from a copy here."""
