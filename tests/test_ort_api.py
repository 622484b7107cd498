"""One library for every ONNX Runtime from 1.17 on (ops/ort_api.h, ops/register.cc).

* The library negotiates the C API version with the running ORT (the highest both know, 17..21),
  so it loads into ORT 1.17 .. newest; an ORT older than 1.17 is refused with a one-line error
  that names both versions.
* The shape-inference hook (OrtCustomOp::InferOutputShapeFn) is given to ORT only from 1.24 on:
  ORT 1.17 .. 1.23 build the hook's context by dereferencing the type of every node input, and
  an absent optional input has none, so session creation dies with SIGSEGV before our hook runs.
  On those releases the op runs without the hook (output shapes come from the model's
  value_info, as for any custom op without one).

Sessions that could crash run in a child process, so a crash is a test failure, not the end of
the test run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import onnxruntime as ort
import pytest

import maskedmha
from helpers.graphs import make_model, session
from helpers.reference import assert_close, make_feeds, torch_reference

ORT_VERSION = tuple(int(x) for x in ort.__version__.split(".")[:2])
# ORT releases whose OrtShapeInferContext handles absent optional inputs (see ops/ort_api.h).
HOOK_SAFE = ORT_VERSION >= (1, 24)
B, L, S, E, H = 2, 5, 7, 12, 3

# Configurations whose node has absent inputs in the middle of its input list ("" names), the
# case that crashed ORT 1.17 .. 1.23 with the hook on, and one with no absent input before the
# last present one (trailing absent inputs are simply left off the node).
ABSENT_CONFIGS = {
    "no_bias": dict(bias=False),                        # in/out biases absent, k/v weights absent
    "packed_kpm": dict(kpm="bool"),                     # k/v weights, bias_k/v absent
    "packed_attn_mask": dict(attn_mask="float2"),       # k/v weights, bias_k/v, kpm absent
    "separate_attn_mask_only": dict(kdim=8, vdim=10, bias=False, attn_mask="bool3"),
}

_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from helpers.graphs import make_model, session
    from helpers.reference import assert_close, make_feeds, torch_reference
    feeds = make_feeds({B}, {L}, {S}, {E}, {H}, seed=11, **{kw!r})
    sess = session(make_model(feeds, {H}))
    (out,) = sess.run(None, {{k: v for k, v in feeds.items() if v is not None}})
    assert_close(out, torch_reference(feeds, {H})[0])
    print("MASKEDMHA-OK", sess.get_outputs()[0].shape)
""")


def _run_child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))


def _describe(res: subprocess.CompletedProcess) -> str:
    how = (f"killed by {signal.Signals(-res.returncode).name}" if res.returncode < 0
           else f"exit code {res.returncode}")
    return f"ORT {ort.__version__}: child {how}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"


@pytest.mark.skipif(ORT_VERSION < (1, 17), reason=f"ORT {ort.__version__} < 1.17 is refused")
@pytest.mark.parametrize("config", sorted(ABSENT_CONFIGS))
def test_absent_optional_inputs_do_not_crash_session_creation(config):
    code = _CHILD.format(tests=os.path.dirname(__file__), B=B, L=L, S=S, E=E, H=H,
                         kw=ABSENT_CONFIGS[config])
    res = _run_child(code)
    assert res.returncode == 0 and "MASKEDMHA-OK" in res.stdout, _describe(res)


@pytest.mark.skipif(ORT_VERSION < (1, 17), reason=f"ORT {ort.__version__} < 1.17 is refused")
def test_shape_inference_hook_is_on_exactly_where_the_release_handles_it():
    """A node without absent inputs (separate k/v weights, biases; masks left off the end): the
    hook cannot crash any release, so what ORT reports for the output tells whether the library
    gave ORT the hook.  On = symbolic query dims reach the graph output."""
    feeds = make_feeds(B, L, S, E, H, seed=12, kdim=E, vdim=E)
    sess = session(make_model(feeds, H))
    inferred = sess.get_outputs()[0].shape == ["query_d0", "query_d1", "query_d2"]
    assert inferred == HOOK_SAFE, (
        f"ORT {ort.__version__}: hook {'on' if inferred else 'off'}, the rule in ops/ort_api.h "
        f"says {'on' if HOOK_SAFE else 'off'}")
    (out,) = sess.run(None, feeds)
    assert_close(out, torch_reference(feeds, H)[0])


@pytest.mark.skipif(ORT_VERSION >= (1, 17),
                    reason=f"needs an ORT older than 1.17 (this is {ort.__version__})")
def test_ort_older_than_17_is_refused_with_one_line_naming_both_versions():
    feeds = make_feeds(B, L, S, E, H, seed=13)
    with pytest.raises(Exception) as e:
        session(make_model(feeds, H))
    msg = str(e.value)
    line = next(ln for ln in msg.splitlines() if "maskedmha" in ln)
    assert ort.__version__ in line and "17" in line, msg
    # The advice is to upgrade the runtime, not to rebuild the library.
    assert "Upgrade onnxruntime" in msg and "Rebuild" not in msg, msg


def _cmake() -> str | None:
    import shutil
    here = os.path.join(os.path.dirname(sys.executable), "cmake")
    return here if os.path.exists(here) else shutil.which("cmake")


@pytest.mark.skipif(_cmake() is None, reason="no cmake on PATH or beside this Python")
@pytest.mark.parametrize("api,ok", [(17, False), (20, False), (21, True), (24, True)])
def test_cmake_checks_the_headers_api_version(tmp_path, api, ok):
    """cmake/OrtHeaders.cmake parses ORT_API_VERSION from the headers and refuses headers older
    than kMaxOrtApi (ops/ort_api.h) at configure time, naming both versions.  (Configure only:
    the stand-in headers below are not compilable.)"""
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "onnxruntime_c_api.h").write_text(f"#define ORT_API_VERSION {api}\n")
    (inc / "onnxruntime_cxx_api.h").write_text("\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([_cmake(), "-S", root, "-B", str(tmp_path / "build"),
                          f"-DORT_INCLUDE_DIR={inc}", "-DMASKEDMHA_ORT_DOWNLOAD=OFF"],
                         capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    if ok:
        assert res.returncode == 0, out
        assert f"ORT_API_VERSION {api}; the library uses C API 17..21" in out, out
    else:
        assert res.returncode != 0, out
        flat = " ".join(out.split())
        assert f"ORT_API_VERSION {api};" in flat and "ONNX Runtime 1.21 or newer" in flat, out
