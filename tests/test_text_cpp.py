"""examples/cpp's maskedmha_text_example: a C++ program registers maskedmha's library and
onnxruntime-extensions', runs a strings-in model (maskedmha.text) on strings from its command
line, and prints what PyTorch computes for the same strings.  Skipped only without a C++ compiler.

The extensions library is the PyPI wheel's _extensions_pydll (the one build available here); it
needs libpython loaded globally (--preload), and the program says so when it is not."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import onnxruntime
import pytest
import torch

import maskedmha
from maskedmha import bpe
from maskedmha.text import TextEncoder, export_text_model

from helpers.cpp_output import parse_outputs
from helpers.fused_model import fused_model
from helpers.reference import no_fastpath

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "cpp")
MAX_POSITIONS = 32
TEXTS = ["hi", "", "The quick brown fox jumps over the lazy dog, and the dog sleeps on.",
         "数据 和 模型 的 注意力 — naïve café 😀"]


def _cmake():
    exe = shutil.which("cmake", path=os.path.dirname(sys.executable)) or shutil.which("cmake")
    if exe is None:
        import cmake  # the pip package provides the binary

        exe = os.path.join(cmake.CMAKE_BIN_DIR, "cmake")
    return exe


def _env():
    return dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])


def _libpython() -> str:
    path = os.path.join(sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME"))
    if not os.path.isfile(path):
        pytest.skip(f"this Python has no shared libpython ({path}) to --preload")
    return path


def _extensions_library() -> str:
    import onnxruntime_extensions

    return onnxruntime_extensions.get_library_path()


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    if not (os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler")
    build = tmp_path_factory.mktemp("cpp_text_example")
    capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
    libs = sorted(f for f in os.listdir(capi) if f.startswith("libonnxruntime.so"))
    cmd = [_cmake(), "-S", EXAMPLE, "-B", str(build), f"-DORT_LIB={os.path.join(capi, libs[-1])}",
           "-DCMAKE_BUILD_TYPE=Release", f"-DPython3_EXECUTABLE={sys.executable}"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run([_cmake(), "--build", str(build), "--target", "maskedmha_text_example"],
                         capture_output=True, text=True, env=_env())
    assert res.returncode == 0, res.stdout + res.stderr
    return build


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    tok = bpe.train(TEXTS[2:] * 2, 120)
    torch.manual_seed(0)
    model = TextEncoder(tok.vocab_size, d_model=32, nhead=4, num_layers=2, dim_feedforward=64,
                        max_positions=MAX_POSITIONS).eval()
    path = str(tmp_path_factory.mktemp("text_model") / "text.onnx")
    export_text_model(model, tok, path)
    return path, model, tok


def _program(build_dir, model, *texts, preload=True, extensions=None):
    args = [str(build_dir / "maskedmha_text_example")]
    if preload:
        args += ["--preload", _libpython()]
    args += [model, maskedmha.get_library_path(), extensions or _extensions_library(), *texts]
    return subprocess.run(args, capture_output=True, text=True)


def test_cpp_text_example_matches_pytorch(build_dir, text_model):
    path, model, tok = text_model
    res = _program(build_dir, path, *TEXTS)
    assert res.returncode == 0, res.stderr
    got = parse_outputs(res.stdout)["embeddings"]
    ids, pad = tok.batch(TEXTS, MAX_POSITIONS)
    with no_fastpath(), torch.no_grad():
        want = model(torch.from_numpy(ids), torch.from_numpy(pad)).numpy()
        unmasked = model(torch.from_numpy(ids), torch.zeros_like(torch.from_numpy(pad))).numpy()
    scale = float(np.abs(want).max())
    assert got.shape == want.shape == (4, 32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
    assert not np.allclose(got, unmasked, rtol=1e-3, atol=1e-3)  # the mask is seen


def test_cpp_text_example_empty_batch(build_dir, text_model):
    res = _program(build_dir, text_model[0])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "output embeddings float [0,32]"


def test_cpp_text_example_errors(build_dir, text_model, tmp_path):
    # The wheel's library without libpython: a clear error that says what to do, not a crash.
    res = _program(build_dir, text_model[0], "x", preload=False)
    assert res.returncode == 1
    assert "undefined symbol: Py" in res.stderr and "--preload" in res.stderr, res.stderr
    # A model whose input is not text: ORT's type error, exit 1.
    plain = tmp_path / "mha.onnx"
    plain.write_bytes(fused_model(with_fallback=True).SerializeToString())
    res = _program(build_dir, str(plain), "x")
    assert res.returncode == 1 and "a text model has one" in res.stderr, res.stderr
    res = subprocess.run([str(build_dir / "maskedmha_text_example"), "only-one-arg"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "usage:" in res.stderr


def test_readme_text_commands_work_as_written(build_dir):
    """examples/cpp/README.md's second command block (raw text), run as written from the
    repository root with build/example pointed at this module's build (configured already, so
    its cmake lines only add what is missing): the output equals PyTorch's, as it says."""
    text = open(os.path.join(EXAMPLE, "README.md")).read()
    section = text.split("## Raw text in, embeddings out", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    assert block.startswith("source .venv/bin/activate\n")
    assert os.path.isfile(f"{sys.prefix}/bin/activate"), "the test suite must run inside a venv"
    script = block.replace("source .venv/bin/activate", f"source {sys.prefix}/bin/activate") \
                  .replace("build/example", str(build_dir))
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    got = parse_outputs(res.stdout.split("expected_output.npy\n", 1)[1])["embeddings"]
    want = np.load(os.path.join(build_dir, "expected_output.npy"))
    assert got.shape == want.shape == (3, 64)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
