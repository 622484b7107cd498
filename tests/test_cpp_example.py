"""Builds examples/cpp with CMake against the onnxruntime wheel's libonnxruntime.so, runs it on a
one-node MaskedMHA model and compares the printed output with PyTorch.  Skipped only when there is
no C++ compiler."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import maskedmha

from helpers.cpp_output import parse_outputs
from helpers.graphs import make_model
from helpers.reference import make_feeds, torch_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "cpp")

pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")


def _cxx():
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def _cmake():
    exe = shutil.which("cmake", path=os.path.dirname(sys.executable)) or shutil.which("cmake")
    if exe is None:
        import cmake  # the pip package provides the binary

        exe = os.path.join(cmake.CMAKE_BIN_DIR, "cmake")
    return exe


@pytest.fixture(scope="module")
def example_binary(tmp_path_factory):
    if _cxx() is None:
        pytest.skip("no C++ compiler")
    build = tmp_path_factory.mktemp("cpp_example")
    capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
    libs = sorted(f for f in os.listdir(capi) if f.startswith("libonnxruntime.so"))
    assert libs, f"no libonnxruntime.so* in {capi}"
    cmd = [_cmake(), "-S", EXAMPLE, "-B", str(build), f"-DORT_LIB={os.path.join(capi, libs[-1])}",
           "-DCMAKE_BUILD_TYPE=Release"]
    if shutil.which("ninja") or shutil.which("ninja", path=os.path.dirname(sys.executable)):
        cmd += ["-G", "Ninja"]
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run([_cmake(), "--build", str(build)], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    exe = build / "maskedmha_example"
    assert exe.is_file()
    return str(exe)


@pytest.mark.parametrize("need_weights", [False, True])
def test_cpp_example_matches_pytorch(example_binary, tmp_path, need_weights):
    B, L, S, E, H = 2, 5, 7, 16, 4
    feeds = make_feeds(B, L, S, E, H, seed=101, kpm="bool", attn_mask="float2")
    model = tmp_path / "mha.onnx"
    model.write_bytes(make_model(feeds, H, need_weights=need_weights, fully_masked_row="nan"))
    args = [example_binary, str(model), maskedmha.get_library_path()]
    for name, arr in feeds.items():
        path = tmp_path / f"{name}.npy"
        np.save(path, arr)
        args.append(f"{name}={path}")
    res = subprocess.run(args, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    outs = parse_outputs(res.stdout)
    ref, ref_w = torch_reference(feeds, H, need_weights=need_weights)
    assert set(outs) == ({"output", "attn_weights"} if need_weights else {"output"})
    np.testing.assert_allclose(outs["output"], ref, rtol=1e-5, atol=1e-5)
    if need_weights:
        np.testing.assert_allclose(outs["attn_weights"], ref_w, rtol=1e-5, atol=1e-5)
    # The comparison is sensitive: the PyTorch answer without the mask differs.
    ref_nomask, _ = torch_reference(dict(feeds, key_padding_mask=None), H)
    assert not np.allclose(outs["output"], ref_nomask, rtol=1e-5, atol=1e-5)


def test_cpp_example_reports_errors(example_binary, tmp_path):
    """A bad input makes the program fail with the kernel's message, not crash."""
    B, L, S, E, H = 2, 5, 7, 16, 4
    feeds = make_feeds(B, L, S, E, H, seed=102, kpm="bool")
    model = tmp_path / "mha.onnx"
    model.write_bytes(make_model(feeds, H))
    args = [example_binary, str(model), maskedmha.get_library_path()]
    for name, arr in feeds.items():
        if name == "key_padding_mask":
            arr = arr[:, :6]
        path = tmp_path / f"{name}.npy"
        np.save(path, np.ascontiguousarray(arr))
        args.append(f"{name}={path}")
    res = subprocess.run(args, capture_output=True, text=True)
    assert res.returncode == 1
    assert "'key_padding_mask'" in res.stderr, res.stderr


def test_readme_commands_work_as_written(tmp_path):
    """examples/cpp/README.md's command block, run as written from the repository root (its
    build/example folder moved into tmp_path, its .venv being this interpreter's venv): the
    program's output equals PyTorch's, as the README says."""
    if _cxx() is None:
        pytest.skip("no C++ compiler")
    text = open(os.path.join(EXAMPLE, "README.md")).read()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    assert block.startswith("source .venv/bin/activate\n")
    work = str(tmp_path / "example")
    script = block.replace("source .venv/bin/activate", f"source {sys.prefix}/bin/activate") \
                  .replace("build/example", work)
    # .venv/bin/activate exists only in a real venv; a test run from another one uses its own.
    assert os.path.isfile(f"{sys.prefix}/bin/activate"), "the test suite must run inside a venv"
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    outs = parse_outputs(res.stdout.split("expected_output.npy\n", 1)[1])
    expected = np.load(os.path.join(work, "expected_output.npy"))
    np.testing.assert_allclose(outs["output"], expected, rtol=2e-5, atol=2e-5)
