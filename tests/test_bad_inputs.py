"""Fuzzed bad input for the fused kernel: every way an input can be wrong must give an ONNX
Runtime error whose message names the input, and the same session must keep giving the right
answer afterwards.

The graphs are single MaskedMHA nodes whose graph inputs have NO shape at all (not even a rank),
so ORT passes any shape straight to the kernel and validate.cc has to catch it.  Element types:
the two masks are declared "any type" in the op schema, so an int32/float64/... mask reaches the
kernel too; inputs 0-10 are declared tensor(float), so ORT itself rejects another element type
when the session is created (its message names the value, which here carries the input's name).

Cases are enumerated deterministically from a few base configurations (every dim of every present
input +1 / -1 / 0, ranks +-1, wrong dtypes, a list of wrong mask shapes, missing halves of the
paired inputs, E % H != 0) plus size-overflow cases; a seeded random sample of combined mutations
adds more.  Whether a mutated shape is really invalid is decided from the spec's shape table
(symbols shared between inputs), never by running the kernel.

NaN / Inf values are not errors: the spec says they propagate as IEEE arithmetic says; those
cases are compared with PyTorch at the end of the file."""
from __future__ import annotations

import re
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument
from helpers.report import SUMMARY
from helpers.graphs import loose_model, present, session
from helpers.reference import assert_close, make_feeds, torch_reference
from maskedmha.symbolic.schema import INPUT_NAMES

pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")

MASKS = ("key_padding_mask", "attn_mask")

# Base sizes chosen so that no two symbols are equal (a mutated dim can never match by accident).
B, L, S, E, H, KD, VD = 2, 5, 7, 12, 3, 8, 10

# name -> (make_feeds kwargs, attributes)
BASES = {
    "packed_kpm_bool_am3_float": (dict(kpm="bool", attn_mask="float3"), dict()),
    "separate_biaskv_kpm_float_am2_bool": (dict(kdim=KD, vdim=VD, bias_kv=True, kpm="float",
                                                attn_mask="bool2"), dict(add_zero_attn=1)),
    "packed_nobias_am3_bool_weights": (dict(bias=False, attn_mask="bool3"),
                                       dict(need_weights=True, average_attn_weights=0)),
}


def _spec_symbols(feeds: dict) -> dict:
    """Symbols of each present input's dims, from the spec's input table."""
    separate = feeds.get("k_proj_weight") is not None
    am = feeds.get("attn_mask")
    table = {
        "query": ("B", "L", "E"),
        "key": ("B", "S", "Kd" if separate else "E"),
        "value": ("B", "S", "Vd" if separate else "E"),
        "in_proj_weight": ("E", "E") if separate else ("3E", "E"),
        "k_proj_weight": ("E", "Kd"), "v_proj_weight": ("E", "Vd"),
        "in_proj_bias": ("3E",), "out_proj_weight": ("E", "E"), "out_proj_bias": ("E",),
        "bias_k": ("E",), "bias_v": ("E",), "key_padding_mask": ("B", "S"),
        "attn_mask": ("L", "S") if am is None or am.ndim == 2 else ("BH", "L", "S"),
    }
    return {n: table[n] for n in INPUT_NAMES if feeds.get(n) is not None}


_RELATED = {"3E": {"E", "3E"}, "E": {"E", "3E"}, "BH": {"B", "BH"}, "B": {"B", "BH"}}


def _dim_mutation_is_invalid(symbols: dict, name: str, axis: int) -> tuple[bool, set]:
    """A dim may change alone only if its symbol occurs nowhere else (e.g. L without attn_mask).
    Returns (invalid, names of inputs a correct message may name)."""
    sym = symbols[name][axis]
    related = _RELATED.get(sym, {sym})
    holders = {n for n, syms in symbols.items() if related & set(syms)}
    occurrences = sum(s in related for syms in symbols.values() for s in syms)
    derived = sym in ("3E", "BH")  # determined by other symbols: any change is wrong
    return derived or occurrences > 1, holders | {name}


# ----------------------------------------------------------------------------------------------
# Good configurations

class Base:
    """A good configuration: its loose session, feeds and PyTorch-checked result."""

    def __init__(self, name: str):
        fk, attrs = BASES[name]
        attrs = dict(attrs)
        self.need_weights = attrs.pop("need_weights", False)
        self.attrs = attrs
        self.feeds = make_feeds(B, L, S, E, H, seed=zlib.crc32(name.encode()), **fk)
        self.sess = session(loose_model(self.feeds, H, self.need_weights, **attrs), quiet=True)
        self.good = self.sess.run(None, present(self.feeds))
        ref, ref_w = torch_reference(self.feeds, H, add_zero_attn=bool(attrs.get("add_zero_attn")),
                                     need_weights=self.need_weights,
                                     average=bool(attrs.get("average_attn_weights", 1)))
        assert_close(self.good[0], ref)
        if self.need_weights:
            assert_close(self.good[1], ref_w)

    def same_graph(self, feeds: dict, attrs: dict | None = None) -> bool:
        """Whether `feeds` fit this base's session (same present inputs and element types)."""
        if attrs not in (None, self.attrs):
            return False
        mine, theirs = present(self.feeds), present(feeds)
        return mine.keys() == theirs.keys() and all(
            not isinstance(theirs[k], ort.OrtValue) and theirs[k].dtype == mine[k].dtype
            for k in mine)

    def check_still_works(self):
        res = self.sess.run(None, present(self.feeds))
        for a, b in zip(res, self.good):
            np.testing.assert_array_equal(a, b)


_NAMED = re.compile(r"'(\w+)'|\((\w+)\) of operator \(MaskedMHA\)")


def _expect_rejected(base: Base, feeds: dict, names: set, attrs: dict | None = None,
                     num_heads: int = H) -> str:
    """Run `feeds` (in base's session when the graph is the same, else in a new one) and check
    the error names one of `names` first; then the base session still gives its good result."""
    attrs = base.attrs if attrs is None else attrs
    with pytest.raises(Exception) as exc:
        if base.same_graph(feeds, attrs) and num_heads == H:
            base.sess.run(None, present(feeds))
        else:
            sess = session(loose_model(feeds, num_heads, base.need_weights, **attrs), quiet=True)
            sess.run(None, present(feeds))
    msg = str(exc.value)
    assert not isinstance(exc.value, (AssertionError, MemoryError)), msg
    # Where it must be caught: ORT rejects a non-float data input when the session is created
    # (schema types); everything else reaches the kernel and validate.cc.
    at_load = any(isinstance(v, np.ndarray) and v.dtype != np.float32 and k not in MASKS
                  for k, v in present(feeds).items())
    stage = "INVALID_GRAPH" if at_load else "Status Message: MaskedMHA: "
    assert stage in msg, f"expected {stage!r} in: {msg}"
    _counts["load" if at_load else "kernel"] += 1
    # The first input named after ORT's own prefix (which quotes the node name).
    first = _NAMED.search(msg.split("Status Message:")[-1])
    named = first and (first.group(1) or first.group(2))
    assert named in names, f"expected the message to name one of {sorted(names)}: {msg}"
    base.check_still_works()
    return msg


# ----------------------------------------------------------------------------------------------
# Case generation

def _random_like(shape, dtype, rng):
    if np.dtype(dtype) == np.bool_:
        return np.asarray(rng.random(shape) < 0.3)
    return np.asarray(rng.standard_normal(shape) * 3, dtype=dtype)


def enumerate_cases(base: Base, rng):
    """Yield (label, feeds, names a correct message may name, attrs, num_heads)."""
    feeds = base.feeds
    symbols = _spec_symbols(feeds)
    # Every dim of every present input: +1, -1, 0.
    for name, syms in symbols.items():
        arr = feeds[name]
        for axis in range(arr.ndim):
            for new in {arr.shape[axis] + 1, arr.shape[axis] - 1, 0} - {arr.shape[axis]}:
                invalid, names = _dim_mutation_is_invalid(symbols, name, axis)
                if not invalid:
                    continue
                shape = list(arr.shape)
                shape[axis] = new
                yield (f"{name} dim{axis}={new}", dict(feeds, **{name: _random_like(
                    shape, arr.dtype, rng)}), names, None, H)
    # Ranks: one fewer, one more (leading and trailing), rank 0 and rank 5.
    for name in symbols:
        arr = feeds[name]
        shapes = [arr.shape[:-1], (1,) + arr.shape, arr.shape + (1,), (), (1, 2, 1, 2, 1)]
        for shape in shapes:
            if name == "attn_mask" and len(shape) in (2, 3) and shape in ((L, S), (B * H, L, S)):
                continue
            yield (f"{name} shape={shape}", dict(feeds, **{name: _random_like(
                shape, arr.dtype, rng)}), {name}, None, H)
    # Element types.
    for name in symbols:
        arr = feeds[name]
        wrong = ([np.int32, np.float64, np.int64, np.uint8, np.float16] if name in MASKS
                 else [np.float64, np.int32, np.bool_, np.float16])
        for dt in wrong:
            yield (f"{name} dtype={np.dtype(dt).name}", dict(feeds, **{name: _random_like(
                arr.shape, dt, rng)}), {name}, None, H)
    # Masks of every wrong shape the issue lists (some repeat the dim mutations above).
    kpm_dtype = feeds["key_padding_mask"].dtype if "key_padding_mask" in symbols else np.bool_
    for shape in [(B, S + 1), (S, B), (B,), (B, S, 1), (1, S), (B, 1), (B + 1, S), (B * H, S)]:
        yield (f"key_padding_mask shape={shape}", dict(feeds, key_padding_mask=_random_like(
            shape, kpm_dtype, rng)), {"key_padding_mask"}, None, H)
    am_dtype = feeds["attn_mask"].dtype if "attn_mask" in symbols else np.float32
    for shape in [(L, S + 1), (S, L), (L + 1, S), (B * H + 1, L, S), (H, L, S), (B, L, S),
                  (1, L, S), (B, H, L, S), (L,), (L * S,), (B * H, S, L)]:
        yield (f"attn_mask shape={shape}", dict(feeds, attn_mask=_random_like(
            shape, am_dtype, rng)), {"attn_mask"}, None, H)
    # Missing halves of the paired inputs (the message names the missing one).
    pairs = [("k_proj_weight", "v_proj_weight"), ("bias_k", "bias_v")]
    for a, b in pairs:
        if a in symbols:
            yield f"{a} without {b}", dict(feeds, **{b: None}), {b}, None, H
            yield f"{b} without {a}", dict(feeds, **{a: None}), {a}, None, H
        else:  # give one half where neither was given
            width = E if a == "bias_k" else KD
            shape = (E,) if a == "bias_k" else (E, width)
            yield (f"{a} alone", dict(feeds, **{a: _random_like(shape, np.float32, rng)}),
                   {b}, None, H)
            yield (f"{b} alone", dict(feeds, **{b: _random_like(shape, np.float32, rng)}),
                   {a}, None, H)
    # E % H != 0 through the attribute.
    for heads in (5, 7, 24):
        yield f"num_heads={heads}", feeds, {"query"}, None, heads


def mutate_randomly(base: Base, rng, n: int):
    """Random combinations: 2-3 simultaneous dim changes (each of which alone is invalid, so the
    combination is too); the message may name any input involved or sharing their symbols."""
    symbols = _spec_symbols(base.feeds)
    single = [(name, axis) for name, syms in symbols.items() for axis in range(len(syms))
              if _dim_mutation_is_invalid(symbols, name, axis)[0]]
    for _ in range(n):
        feeds, names, labels = dict(base.feeds), set(), []
        for i in rng.choice(len(single), size=rng.integers(2, 4), replace=False):
            name, axis = single[i]
            shape = list(feeds[name].shape)
            if len(shape) <= axis:
                continue
            shape[axis] = int(rng.choice([0, 1, shape[axis] + rng.integers(1, 9)]))
            if shape[axis] == base.feeds[name].shape[axis]:
                shape[axis] += 1
            feeds[name] = _random_like(shape, feeds[name].dtype, rng)
            names |= _dim_mutation_is_invalid(symbols, name, axis)[1]
            labels.append(f"{name}{shape}")
        # Any input whose dims now disagree may be the one named: allow every present input
        # that shares a symbol with a changed one.
        yield "random " + " ".join(labels), feeds, names, None, H


def overflow_cases():
    """Sizes whose products overflow, built from tensors with ZERO elements (so nothing large is
    ever allocated by the test): E = 0 or B = 0 lets the other dims be huge.  numpy refuses
    arrays whose non-zero dims multiply past 2^63 bytes, ORT's own tensors refuse a running
    product past 2^63, so each single tensor stays below that; the kernel's products combine
    dims of different tensors (B*H*L*S', 3E, B*H) and those overflow."""
    ov = lambda *shape: ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32)  # noqa
    z = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    big = 2**30
    yield ("B*H*L*S' with E=0", dict(query=z(big, big, 0), key=z(big, big, 0),
                                     value=z(big, big, 0), in_proj_weight=z(0, 0),
                                     out_proj_weight=z(0, 0)), {"query", "key"}, 1, False)
    yield ("B*H*L*S' with E=0, need_weights", dict(query=z(big, big, 0), key=z(big, big, 0),
                                                   value=z(big, big, 0), in_proj_weight=z(0, 0),
                                                   out_proj_weight=z(0, 0)),
           {"query", "key"}, 1, True)
    yield ("B*H*L*S' with E=0, 2^40 keys", dict(query=z(2**20, 2**20, 0), key=z(2**20, 2**40, 0),
                                                value=z(2**20, 2**40, 0), in_proj_weight=z(0, 0),
                                                out_proj_weight=z(0, 0)),
           {"query", "key"}, 4, False)
    # 3E overflows int64 (would wrap in the expected shape of in_proj_weight): B = 0.
    e = 2**62
    yield ("3E with B=0", dict(query=ov(0, 3, e), key=ov(0, 3, e), value=ov(0, 3, e),
                               in_proj_weight=ov(0, e), out_proj_weight=ov(0, e)),
           {"query"}, 2, False)
    # B*H overflows in the expected shape of a 3-D attn_mask: E = 0.
    b = 2**61
    yield ("B*H with a 3-D attn_mask", dict(query=ov(b, 2, 0), key=ov(b, 2, 0), value=ov(b, 2, 0),
                                           in_proj_weight=ov(0, 0), out_proj_weight=ov(0, 0),
                                           attn_mask=ov(0, 2, 2)),
           {"attn_mask", "query", "key"}, 4, False)
    # Projection weights 3E*max(E, kdim): kdim huge, E = 0, separate weights.
    yield ("3E*kdim with E=0 rows", dict(query=ov(2**40, 2**20, 0), key=ov(0, 5, 2**61),
                                         value=ov(0, 5, 4), in_proj_weight=ov(0, 0),
                                         k_proj_weight=ov(0, 2**61), v_proj_weight=ov(0, 4),
                                         out_proj_weight=ov(0, 0)),
           {"query", "key"}, 1, False)


# ----------------------------------------------------------------------------------------------
# The tests

@pytest.fixture(scope="module")
def bases():
    return {name: Base(name) for name in BASES}


_counts = {"cases": 0, "kernel": 0, "load": 0}


@pytest.fixture(scope="module", autouse=True)
def report_count(request):
    """After the last test of this file, whichever order they ran in (or whichever were
    selected): the number of cases tried, printed in the run's summary."""
    yield
    if _counts["cases"]:
        request.config.stash[SUMMARY].append(
            f"bad-input fuzz: {_counts['cases']} cases, all rejected with a named input "
            f"({_counts['kernel']} by the kernel's validation at run time, {_counts['load']} "
            f"wrong data types by ORT at session creation, "
            f"{_counts['cases'] - _counts['kernel'] - _counts['load']} missing required inputs "
            "by ORT at session creation, named by position)")


@pytest.mark.parametrize("base_name", list(BASES))
def test_bad_inputs_are_rejected_naming_the_input(bases, base_name):
    base = bases[base_name]
    rng = np.random.default_rng(1234 + len(base_name))
    cases = list(enumerate_cases(base, rng)) + list(mutate_randomly(base, rng, 40))
    assert len(cases) > 100
    for label, feeds, names, attrs, heads in cases:
        try:
            _expect_rejected(base, feeds, names, attrs, heads)
        except BaseException as e:  # say which case it was
            raise AssertionError(f"case {base_name}: {label}: {e}") from e
    _counts["cases"] += len(cases)


def test_missing_required_inputs_rejected_when_session_is_created(bases):
    """query, key, value, in_proj_weight and out_proj_weight are required in the op schema: ORT
    refuses a node without them when the session is created (its message gives the input's
    position, which the op spec numbers the same way)."""
    base = bases["packed_kpm_bool_am3_float"]
    for i in (0, 1, 2, 3, 7):
        m = onnx.load_from_string(loose_model(base.feeds, H))
        m.graph.node[0].input[i] = ""
        del m.graph.input[[vi.name for vi in m.graph.input].index(INPUT_NAMES[i])]
        with pytest.raises(Exception) as exc:
            session(m.SerializeToString(), quiet=True)
        assert f"input {i}" in str(exc.value), str(exc.value)
        base.check_still_works()
    _counts["cases"] += 5


def test_overflowing_sizes_rejected_before_allocation(bases):
    """Rejected by validation with the inputs named: nothing is allocated (the run returns at
    once; an attempt to allocate 2^90 floats would fail differently, with no input named)."""
    base = bases["packed_kpm_bool_am3_float"]
    n = 0
    for label, feeds, names, heads, need_weights in overflow_cases():
        sess = session(loose_model(feeds, heads, need_weights), quiet=True)
        with pytest.raises(Exception) as exc:
            sess.run(None, feeds)
        msg = str(exc.value)
        assert "overflows" in msg or "expected" in msg, f"{label}: {msg}"
        assert "Status Message: MaskedMHA: " in msg, f"{label}: {msg}"
        first = _NAMED.search(msg.split("Status Message:")[-1])
        assert first and first.group(1) in names, f"{label}: {msg}"
        _counts["kernel"] += 1
        base.check_still_works()
        n += 1
    _counts["cases"] += n


# ----------------------------------------------------------------------------------------------
# NaN / Inf values: not errors, they propagate as IEEE arithmetic says (= PyTorch)

def _assert_same_with_nans(actual, expected, zero_ok=None):
    """Same NaN/Inf positions, finite values close.  `zero_ok`: positions where an exact 0 stands
    for PyTorch's NaN (see the weights check below)."""
    actual = np.array(actual)
    if zero_ok is not None:
        swap = zero_ok & np.isnan(expected) & (actual == 0)
        actual[swap] = np.nan
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(actual), np.isinf(expected))
    fin = np.isfinite(expected)
    assert_close(np.asarray(actual)[fin], np.asarray(expected)[fin])


def _nan_inf_cases():
    f = make_feeds(B, L, S, E, H, seed=5, kpm="float", attn_mask="float3")
    nan, inf = np.float32(np.nan), np.float32(np.inf)

    def put(name, index, value, base=f):
        g = dict(base)
        g[name] = base[name].copy()
        g[name][index] = value
        return g

    yield "kpm NaN", put("key_padding_mask", (1, 3), nan)
    yield "kpm +inf", put("key_padding_mask", (0, 2), inf)
    yield "kpm -inf row", put("key_padding_mask", (1, slice(None)), -inf)
    yield "attn_mask NaN", put("attn_mask", (4, 2, 6), nan)
    yield "attn_mask +inf", put("attn_mask", (0, 1, 1), inf)
    yield "attn_mask -inf some", put("attn_mask", (2, slice(None), 0), -inf)
    yield "query NaN row", put("query", (0, 3, 5), nan)
    yield "query +inf", put("query", (1, 0, 0), inf)
    yield "key NaN (visible key)", put("key", (1, 4, 2), nan)
    yield "value NaN (visible key)", put("value", (0, 6, 11), nan)
    yield "value -inf", put("value", (0, 1, 3), -inf)
    yield "in_proj_weight NaN", put("in_proj_weight", (E + 2, 0), nan)
    yield "out_proj_bias inf", put("out_proj_bias", (4,), inf)
    # Keys hidden by a padding mask: NaN in the score stays NaN (NaN + -inf = NaN), and a NaN
    # value row hidden by it still gives 0 * NaN = NaN: the whole batch item is NaN, as in PyTorch.
    g = put("key_padding_mask", (0, 5), -inf)
    yield "key NaN under a float -inf pad", put("key", (0, 5, 1), nan, g)
    yield "value NaN under a float -inf pad", put("value", (0, 5, 1), nan, g)
    pad = f["key_padding_mask"] < -1  # make_feeds pads with -1e4
    pad[0, 5] = True
    gb = dict(f, key_padding_mask=pad)
    yield "key NaN under a bool pad", put("key", (0, 5, 1), nan, gb)
    yield "value +inf under a bool pad", put("value", (0, 5, 1), inf, gb)
    yield "finite, bool pad", gb


@pytest.mark.parametrize("need_weights", [False, True])
def test_nan_and_inf_values_propagate_like_pytorch(need_weights):
    n = 0
    for label, feeds in _nan_inf_cases():
        sess = session(loose_model(feeds, H, need_weights, fully_masked_row="nan"), quiet=True)
        res = sess.run(None, present(feeds))
        ref, ref_w = torch_reference(feeds, H, need_weights=True)
        try:
            _assert_same_with_nans(res[0], ref)
            if need_weights:
                # The kernel gives keys hidden by the padding mask (-inf) an exact 0 weight even
                # in a row that a NaN elsewhere turns to NaN; PyTorch's softmax makes that whole
                # row NaN.  Only the weights output differs (the output row is NaN in both).
                kpm = feeds["key_padding_mask"]
                hidden = kpm if kpm.dtype == np.bool_ else np.isneginf(kpm)
                _assert_same_with_nans(res[1], ref_w, zero_ok=hidden[:, None, :])
        except AssertionError as e:
            raise AssertionError(f"{label}: {e}") from e
        n += 1
    assert n >= 10


def test_errors_keep_their_status_code_through_the_thread_team():
    """Validation runs inside the kernel's thread-team section (RunTeam), whose error crosses the
    section as a code and a message: a bad shape is still ORT's INVALID_ARGUMENT (status 2)."""
    feeds = make_feeds(B, L, S, E, H, seed=7, kpm="bool")
    sess = session(loose_model(feeds, H), quiet=True)
    bad = dict(present(feeds), key_padding_mask=feeds["key_padding_mask"][:, :S - 1])
    with pytest.raises(InvalidArgument, match=r"^\[ONNXRuntimeError\] : 2 : INVALID_ARGUMENT .*'key_padding_mask'"):
        sess.run(None, bad)
