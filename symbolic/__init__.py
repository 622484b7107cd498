"""maskedmha.symbolic: exporting ``nn.MultiheadAttention`` as ``com.maskedmha::MaskedMHA``.

- ``mha_call``: one MHA call -> the op's inputs/attributes (batch-first), PyTorch's checks;
  ``reference``, the op's semantics in torch.
- ``patching``: the context manager that routes MHA calls to the op during export.
- ``torchscript`` / ``dynamo``: the op for each exporter (autograd.Function symbolic;
  torch.library custom op + onnxscript translation).
- ``fallback``: the standard-op FunctionProto of a configuration; ``attach``: sets each node's
  overload and adds the functions after export.
"""
from .attach import attach_functions  # noqa: F401
from .fallback import Config, build_function  # noqa: F401
