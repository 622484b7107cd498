"""``maskedmha.decompose``: replace every ``com.maskedmha::MaskedMHA`` node by standard ops.

The work is done in ``maskedmha.symbolic.decompose`` (the standard-op stage: fallback bodies,
attach, decompose); this module keeps ``maskedmha.decompose.decompose`` importable and is what
``maskedmha.decompose()`` imports on first call.  Torch-free."""
from __future__ import annotations

from maskedmha.symbolic.decompose import decompose

__all__ = ["decompose"]
