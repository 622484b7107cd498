"""Attribute values are checked when the session is created (issue 13, part 1).

Every attribute of com.maskedmha::MaskedMHA given with the wrong type (a FLOAT ``is_causal=1.5``,
an INT ``fully_masked_row=7``, a list, a string where an int belongs), with a value outside its
range, or a missing ``num_heads`` must fail ``InferenceSession`` creation with one ORT error that
names the attribute, says what was given and what is expected.  Absent optional attributes take
the documented defaults.  Before this was fixed, a wrongly typed attribute silently fell back to
its default."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from helpers.graphs import make_model, session
from helpers.reference import assert_close, make_feeds, torch_reference

H = 4


def _feeds():
    return make_feeds(2, 5, 9, 16, H, seed=71, kpm="bool")


def _model(attrs: dict, num_heads=H, drop_num_heads=False, feeds=None) -> bytes:
    """The one-node model with exactly `attrs` (plus num_heads unless dropped), each attribute
    typed as onnx.helper.make_attribute types the Python value (1.5 -> FLOAT, 7 -> INT,
    "x" -> STRING, [1] -> INTS)."""
    model = onnx.load_from_string(make_model(_feeds() if feeds is None else feeds, H))
    node = model.graph.node[0]
    del node.attribute[:]
    if not drop_num_heads:
        node.attribute.append(helper.make_attribute("num_heads", num_heads))
    for name, value in attrs.items():
        node.attribute.append(helper.make_attribute(name, value))
    return model.SerializeToString()


def _creation_error(model: bytes) -> str:
    with pytest.raises(Exception) as exc:
        session(model)
    return str(exc.value)


# (attributes, num_heads, words the message must contain)
BAD = {
    "is_causal float 1.5": (dict(is_causal=1.5), H, ["'is_causal'", "float", "1.5", "0 or 1"]),
    "is_causal float 1.0": (dict(is_causal=1.0), H, ["'is_causal'", "float", "0 or 1"]),
    "is_causal int 2": (dict(is_causal=2), H, ["'is_causal'", "2", "0 or 1"]),
    "is_causal string": (dict(is_causal="1"), H, ["'is_causal'", "string", "0 or 1"]),
    "is_causal ints": (dict(is_causal=[1]), H, ["'is_causal'", "0 or 1"]),
    "add_zero_attn float": (dict(add_zero_attn=0.0), H, ["'add_zero_attn'", "float", "0 or 1"]),
    "add_zero_attn -1": (dict(add_zero_attn=-1), H, ["'add_zero_attn'", "-1", "0 or 1"]),
    "average_attn_weights string": (dict(average_attn_weights="yes"), H,
                                    ["'average_attn_weights'", "string", "yes", "0 or 1"]),
    "average_attn_weights 3": (dict(average_attn_weights=3), H,
                               ["'average_attn_weights'", "3", "0 or 1"]),
    "fully_masked_row int 7": (dict(fully_masked_row=7), H,
                               ["'fully_masked_row'", "int", "7", '"zero" or "nan"']),
    "fully_masked_row float": (dict(fully_masked_row=0.5), H,
                               ["'fully_masked_row'", "float", "0.5", '"zero" or "nan"']),
    "fully_masked_row maybe": (dict(fully_masked_row="maybe"), H,
                               ["'fully_masked_row'", "maybe", '"zero" or "nan"']),
    "fully_masked_row NaN upper": (dict(fully_masked_row="NaN"), H,
                                   ["'fully_masked_row'", "NaN", '"zero" or "nan"']),
    "num_heads 0": ({}, 0, ["'num_heads'", "0", "positive"]),
    "num_heads -4": ({}, -4, ["'num_heads'", "-4", "positive"]),
    "num_heads float": ({}, 4.0, ["'num_heads'", "float", "4", "positive int"]),
    "num_heads string": ({}, "4", ["'num_heads'", "string", "4", "positive int"]),
    "num_heads ints": ({}, [4], ["'num_heads'", "positive int"]),
}


@pytest.mark.parametrize("label", list(BAD))
def test_bad_attribute_fails_session_creation(label):
    attrs, heads, words = BAD[label]
    msg = _creation_error(_model(attrs, num_heads=heads))
    for w in words:
        assert w in msg, f"{label}: {w!r} not in {msg!r}"
    assert "MaskedMHA" in msg, msg
    # One error: the message of the attribute alone, not a list of everything.
    assert msg.count("MaskedMHA: attribute") == 1, msg


def test_missing_num_heads_fails_session_creation():
    msg = _creation_error(_model({}, drop_num_heads=True))
    assert "'num_heads'" in msg and "required" in msg, msg


@pytest.mark.parametrize("attrs,heads,message", [
    (dict(is_causal=1.5), H,
     "MaskedMHA: attribute 'is_causal' is a float (1.5), expected an int 0 or 1 (default 0)"),
    (dict(fully_masked_row=7), H,
     "MaskedMHA: attribute 'fully_masked_row' is an int (7), "
     'expected a string "zero" or "nan" (default "zero")'),
    ({}, 0, "MaskedMHA: attribute 'num_heads' is 0, "
     "expected a positive int (the number of heads, dividing embed_dim)"),
])
def test_exact_messages(attrs, heads, message):
    """The whole sentence, as the report and docs quote it.  (ORT wraps an error from kernel
    creation as RUNTIME_EXCEPTION 'Exception during initialization: ...' whatever status the
    kernel returns, so only the text is ours.)"""
    assert message in _creation_error(_model(attrs, num_heads=heads))


def test_defaults_and_explicit_values_run():
    """All attributes absent = their documented defaults; all given explicitly, also right; the
    library stays usable after a refused session."""
    feeds = _feeds()
    run_feeds = {k: v for k, v in feeds.items() if v is not None}
    ref, _ = torch_reference(feeds, H)
    _creation_error(_model(dict(is_causal=1.5)))
    (out,) = session(_model({})).run(None, run_feeds)
    assert_close(out, ref)
    explicit = dict(is_causal=0, add_zero_attn=0, average_attn_weights=1, fully_masked_row="zero")
    (out2,) = session(_model(explicit)).run(None, run_feeds)
    np.testing.assert_array_equal(out, out2)
    (out3,) = session(_model(dict(fully_masked_row="nan"))).run(None, run_feeds)
    np.testing.assert_array_equal(out, out3)  # no fully masked row here: same numbers


def test_valid_flag_values_take_effect():
    """is_causal=1 given as an INT changes the answer (it is read, not defaulted)."""
    feeds = make_feeds(1, 6, 6, 16, H, seed=5, self_attn=True)
    run_feeds = {k: v for k, v in feeds.items() if v is not None}
    (plain,) = session(_model({}, feeds=feeds)).run(None, run_feeds)
    (causal,) = session(_model(dict(is_causal=1), feeds=feeds)).run(None, run_feeds)
    assert not np.allclose(plain, causal)
