"""The benchmark's graphs compute nn.MultiheadAttention: every alternative, at one small shape per
kind of point, against PyTorch (float64).  Keeps benchmarks/ honest; no timing here."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import alternatives as A  # noqa: E402
import graphs  # noqa: E402
from grid import GRIDS, Point  # noqa: E402

POINTS = [
    Point(2, 5, 32, 4),                                   # no masks
    Point(3, 6, 32, 4, pad=0.5),                          # key padding
    Point(2, 6, 32, 4, pad=0.25, mask="causal"),
    Point(2, 5, 32, 4, mask="random"),
    Point(2, 5, 32, 4, cross=True, pad=0.25, mask="random"),
    Point(2, 5, 32, 4, cross=True, mask="causal"),
]


# Compilers that start from the PyTorch module are slow to build (torch.compile: 10-30 s per
# shape here), so each is checked at one point; both wrap the module alike (alternatives.py
# _MHACall), and between them every input kind (memory, key padding, random and causal masks)
# is fed once.
SLOW_TO_BUILD = {"torch_compile": [POINTS[2]], "openvino": [POINTS[4]]}
CASES = [(p, name) for name in A.ALTERNATIVES + A.OPT_IN for p in SLOW_TO_BUILD.get(name, POINTS)]


@pytest.mark.parametrize("p, name", CASES, ids=lambda x: x.label.replace(" ", "_") if isinstance(x, Point) else x)
def test_alternative_matches_pytorch(p, name):
    w = graphs.make_weights(p.E)
    feeds = graphs.make_inputs(p)
    try:
        runner = A.make_runner(name, p, w, feeds, threads=1, spin=False)
    except graphs.NotApplicable:
        assert (name == "ort_attention" and p.cross) or (name == "fused_skip" and (p.cross or not p.pad))
        return
    ok, abs_diff, rel = A.check(runner(), A.expected(name, A.reference(p, w, feeds), feeds))
    assert ok, f"{name} at {p.label}: max |diff| {abs_diff:.3g} (relative {rel:.3g})"


def test_inputs_padding_fraction():
    p = Point(8, 64, 32, 4, pad=0.25)
    kpm = graphs.make_inputs(p)["key_padding_mask"]
    assert abs(kpm.mean() - 0.25) < 0.02 and not kpm[:, 0].any()


def test_grids_build():
    quick = GRIDS["quick"]()
    for anchor in [(8, 128, 768, 12), (4, 512, 768, 12), (2, 1024, 512, 8)]:
        assert Point(*anchor, pad=0.25) in quick
    assert {p.mask for p in quick} == {"none", "causal", "random"}
    assert {p.pad for p in quick} == {0.0, 0.25, 0.5} and {p.cross for p in quick} == {False, True}
    assert {(p.E, p.H) for p in quick} == {(512, 8), (768, 12), (1024, 16)}
    assert len(GRIDS["full"]()) > len(quick)
