"""maskedmha: PyTorch's nn.MultiheadAttention (with key_padding_mask / attn_mask) as ONE fused
ONNX node ``com.maskedmha::MaskedMHA``, run by a C++ ONNX Runtime kernel, with a standard-op
fallback carried in every exported file.  The op is specified in docs/MaskedMHA.md."""
from __future__ import annotations

DOMAIN = "com.maskedmha"
OP_TYPE = "MaskedMHA"
OPSET_VERSION = 1

from ._library import LibraryNotFoundError, get_library_path  # noqa: E402
from .session import InferenceSession, LibraryLoadError, session_options  # noqa: E402
from .export import export  # noqa: E402
from .decompose import decompose  # noqa: E402

__all__ = [
    "DOMAIN", "OP_TYPE", "OPSET_VERSION", "get_library_path", "session_options",
    "InferenceSession", "export", "decompose", "LibraryNotFoundError", "LibraryLoadError",
]
__version__ = "0.1.0"
