"""maskedmha.symbolic: exporting ``nn.MultiheadAttention`` as ``com.maskedmha::MaskedMHA``.

- ``mha_call``: one MHA call -> the op's inputs/attributes (batch-first), PyTorch's checks;
  ``reference``, the op's semantics in torch.
- ``patching``: the context manager that routes MHA calls to the op during export.
- ``torchscript`` / ``dynamo``: the op for each exporter (autograd.Function symbolic;
  torch.library custom op + onnxscript translation).
- ``schema``: the op's name, inputs and attributes (imports nothing).
- ``fallback``: the standard-op FunctionProto bodies; ``attach``: after export, gives the nodes
  their fallback functions (one per input/output signature, guards where overloads are needed).

Only ``mha_call``, ``patching``, ``torchscript`` and ``dynamo`` import torch; nothing is imported
here, so ``schema``, ``fallback`` and ``attach`` serve a runtime-only install.
"""
