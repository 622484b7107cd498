"""`pip install maskedmha` runs models without torch: the wheel with --no-deps plus only the
pinned onnxruntime/onnx/numpy in a fresh venv (no torch, no onnxscript).  Import, library path,
session options (twice on the same options), a fused model and its stock-ORT fallback,
`maskedmha.export`'s one-line hint, and `decompose` / `maskedmha compare`; torch must never be
imported (``'torch' not in sys.modules``).  The venv and wheel are cached under build/test-cache."""
from __future__ import annotations

import re
import subprocess
import sys
import types

import pytest

from helpers.fused_model import feeds, fused_model
from helpers.venv_tools import (ROOT, built_wheel, compiler_free_env, install_wheel, pins, run_child,
                        runtime_venv)


def floors() -> list[str]:
    """numpy and onnx at the lower bounds pyproject.toml declares (onnxruntime stays pinned: its
    older releases are scripts/ort_venv.sh's business)."""
    text = (ROOT / "pyproject.toml").read_text()
    out = [re.search(rf'"{name}>=([0-9.]+)', text).expand(rf"{name}==\1") for name in ("numpy", "onnx")]
    return out + pins(["onnxruntime"])


@pytest.fixture(scope="module", params=["pinned", "floors"])
def venv(request):
    env = runtime_venv(sys.executable, pins() if request.param == "pinned" else floors())
    install_wheel(env, built_wheel())
    probe = subprocess.run([str(env / "bin" / "python"), "-c", "import torch"],
                           capture_output=True, env=compiler_free_env(env))
    assert probe.returncode != 0, "the no-torch venv can import torch"
    return env


@pytest.fixture(scope="module")
def model():
    return fused_model(with_fallback=True)


def test_import_sessions_fused_and_fallback_without_torch(venv, model, tmp_path):
    assert "OK" in run_child(venv, tmp_path, model, feeds(), ["run"])


def test_decompose_and_compare_without_torch(venv, model, tmp_path):
    assert "OK" in run_child(venv, tmp_path, model, feeds(), ["decompose"])
    proc = subprocess.run([str(venv / "bin" / "maskedmha"), "compare", str(tmp_path / "model.onnx"),
                           "--runs", "2"], capture_output=True, text=True, env=compiler_free_env(venv))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "speed-up of fused over decomposed" in proc.stdout


def test_runtime_commands_without_torch(venv, model, tmp_path):
    src = tmp_path / "model.onnx"
    src.write_bytes(model.SerializeToString())
    bare = tmp_path / "bare.onnx"
    m = type(model)()
    m.CopyFrom(model)
    del m.functions[:]
    bare.write_bytes(m.SerializeToString())
    exe = str(venv / "bin" / "maskedmha")
    for args in (["info", str(src)], ["doctor"], ["attach", str(bare), str(tmp_path / "a.onnx")],
                 ["optimize", str(src), str(tmp_path / "o.onnx")],
                 ["triton", str(src), str(tmp_path / "repo")]):
        proc = subprocess.run([exe, *args], capture_output=True, text=True,
                              env=compiler_free_env(venv))
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-2000:])
    # attach's output runs on stock ORT (no library) in the torch-free venv.
    import numpy as np
    np.savez(tmp_path / "feeds.npz", **feeds())
    code = ("import sys, numpy as np, onnxruntime as ort; "
            f"s = ort.InferenceSession({str(tmp_path / 'a.onnx')!r}, providers=['CPUExecutionProvider']); "
            f"s.run(None, dict(np.load({str(tmp_path / 'feeds.npz')!r}))); "
            "assert 'torch' not in sys.modules; print('OK')")
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          env=compiler_free_env(venv))
    assert "OK" in proc.stdout, proc.stderr[-2000:]


def test_demo_without_torch_names_the_extra(venv):
    proc = subprocess.run([str(venv / "bin" / "maskedmha"), "demo"], capture_output=True,
                          text=True, env=compiler_free_env(venv))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ('maskedmha demo: needs torch, which is not installed: '
                                   'pip install "maskedmha[export]"')


def test_import_maskedmha_leaves_torch_alone_where_it_is_installed():
    # Here (the test venv) torch IS installed: import maskedmha must still not load it (it took
    # 3.7 of 4.4 s), and the public functions must survive their modules being imported.
    code = ("import sys, importlib, types, maskedmha; assert 'torch' not in sys.modules; "
            "[importlib.import_module(m) for m in ('maskedmha.compare', 'maskedmha.decompose')]; "
            "assert not isinstance(maskedmha.decompose, types.ModuleType)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_export_and_decompose_stay_functions_after_their_modules_are_imported():
    import importlib

    import maskedmha
    for name in ("export", "decompose", "optimize"):
        importlib.import_module(f"maskedmha.{name}")
        assert not isinstance(getattr(maskedmha, name), types.ModuleType), name
        assert callable(getattr(maskedmha, name)), name
