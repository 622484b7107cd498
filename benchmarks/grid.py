"""Benchmark grid points: shapes, self/cross attention, padding fraction and attention mask."""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

EMBED_HEADS = [(512, 8), (768, 12), (1024, 16)]
BATCH_LEN = [(1, 32), (8, 32), (1, 128), (8, 128), (4, 512), (1, 1024), (2, 1024), (8, 1024)]
PADDING = [0.0, 0.25, 0.5]
MASKS = ["none", "causal", "random"]
ANCHORS = [(8, 128, 768, 12), (4, 512, 768, 12), (2, 1024, 512, 8)]  # measured in the research notes


@dataclass(frozen=True)
class Point:
    B: int
    L: int
    E: int
    H: int
    cross: bool = False      # False: query is key is value; True: key = value = a memory of S = 2L
    pad: float = 0.0         # average fraction of padded keys (key_padding_mask True)
    mask: str = "none"       # attn_mask: none | causal | random (bool (L, S), ~30% hidden)

    @property
    def S(self) -> int:
        return 2 * self.L if self.cross else self.L

    @property
    def label(self) -> str:
        kind = f"cross S={self.S}" if self.cross else "self"
        return f"{self.B}x{self.L} E{self.E}/H{self.H} {kind} pad{int(self.pad * 100)}% {self.mask}"

    @property
    def flops(self) -> float:
        """Dense-equivalent FLOPs: Q and output projections, K and V projections, QK^T and PV,
        counted as if nothing were padded or masked."""
        B, L, S, E = self.B, self.L, self.S, self.E
        return 2 * B * L * E * E + 2 * B * S * (E + E) * E + 2 * B * L * E * E + 4 * B * L * S * E

    def as_dict(self) -> dict:
        return {**asdict(self), "S": self.S, "label": self.label}


def full_grid() -> list[Point]:
    """Every combination, except causal cross-attention (a decoder's causal mask belongs to its
    self-attention).  Large: several hours on 2 cores."""
    pts = []
    for (B, L), (E, H), cross, pad, mask in itertools.product(
            BATCH_LEN, EMBED_HEADS, (False, True), PADDING, MASKS):
        if cross and mask == "causal":
            continue
        pts.append(Point(B, L, E, H, cross, pad, mask))
    return pts


def quick_grid() -> list[Point]:
    """A few minutes: the three anchors (25% padding) and each dimension's values at least once."""
    return [
        Point(8, 128, 768, 12, pad=0.25),
        Point(4, 512, 768, 12, pad=0.25),
        Point(2, 1024, 512, 8, pad=0.25),
        Point(1, 32, 512, 8),
        Point(8, 32, 1024, 16, pad=0.5, mask="random"),
        Point(1, 128, 768, 12, mask="causal"),
        Point(8, 128, 1024, 16, pad=0.5, mask="causal"),
        Point(4, 128, 768, 12, cross=True, pad=0.25),
        Point(2, 256, 512, 8, cross=True, pad=0.5, mask="random"),
        Point(4, 512, 768, 12, pad=0.25, mask="random"),
        Point(1, 1024, 1024, 16, mask="causal"),
        Point(8, 1024, 512, 8, pad=0.5),
    ]


def anchor_grid() -> list[Point]:
    return [Point(B, L, E, H, pad=0.25) for B, L, E, H in ANCHORS]


def tiny_grid() -> list[Point]:
    """Seconds: for smoke tests of the benchmark itself."""
    return [Point(2, 16, 64, 4, pad=0.25), Point(2, 16, 64, 4, cross=True, pad=0.25, mask="random"),
            Point(2, 16, 64, 4, pad=0.5, mask="causal")]


GRIDS = {"quick": quick_grid, "full": full_grid, "anchors": anchor_grid, "tiny": tiny_grid}
