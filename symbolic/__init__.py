"""maskedmha.symbolic: the two stages between PyTorch and a file any ONNX Runtime runs.

PyTorch -> ONNX (import torch):

- ``patching``: the context manager that routes MHA calls to the op during export.
- ``mha_call``: one MHA call -> the op's inputs/attributes (batch-first), PyTorch's checks;
  ``reference``, the op's semantics in torch.
- ``torchscript`` / ``dynamo``: the op for each exporter (autograd.Function symbolic;
  torch.library custom op + onnxscript translation).

The op and its standard-op decomposition (onnx only, no torch):

- ``schema``: the op's name, inputs and attributes (imports nothing).
- ``fallback``: the standard-op FunctionProto bodies; ``attach``: after export, gives the nodes
  their fallback functions (one per input/output signature, guards where overloads are needed);
  ``decompose``: every node inlined as its standard ops (``maskedmha.decompose``).

Nothing is imported here, so ``schema``, ``fallback``, ``attach`` and ``decompose`` serve a
runtime-only install.
"""
