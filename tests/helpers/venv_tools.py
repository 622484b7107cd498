"""Helpers for tests that install maskedmha the way users do: the wheel of scripts/build_wheel.sh
in a fresh virtual environment without torch.  Both the wheel and the venvs are cached under
build/test-cache, keyed on the content they depend on, so a rerun costs seconds, not minutes."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "test-cache"
# What the wheel is built from.
WHEEL_INPUTS = ("CMakeLists.txt", "pyproject.toml", "cmake", "ops", "python/maskedmha", "symbolic",
                "scripts/build_wheel.sh")
RUNTIME = ("onnxruntime", "onnx", "numpy")  # what `pip install maskedmha` brings, nothing else
COMPILERS = ("gcc", "g++", "cc", "c++", "clang", "cmake")


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def wheel_key() -> str:
    parts = []
    for rel in WHEEL_INPUTS:
        base = ROOT / rel
        files = [base] if base.is_file() else sorted(
            p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        for f in files:
            parts += [str(f.relative_to(ROOT)).encode(), f.read_bytes()]
    return _digest(*parts)


def built_wheel() -> Path:
    """The manylinux wheel of scripts/build_wheel.sh for the current sources (built once per
    content; about 20 s when the C++ is unchanged, a few minutes from scratch)."""
    out = CACHE / f"wheel-{wheel_key()}"
    found = sorted(out.glob("maskedmha-*manylinux*.whl")) if out.is_dir() else []
    if found:
        return found[0]
    env = dict(os.environ, MASKEDMHA_VENV=str(Path(sys.executable).parent.parent))
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_wheel.sh"), str(out)], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"build_wheel.sh failed:\n{proc.stderr[-3000:]}"
    for old in CACHE.glob("wheel-*"):  # wheels of earlier sources are never used again
        if old != out:
            shutil.rmtree(old, ignore_errors=True)
    return Path(proc.stdout.strip().splitlines()[-1])


def pins(names=RUNTIME) -> list[str]:
    """name==version of each of `names` from constraints.txt."""
    table = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, ver = line.partition("==")
        if sep:
            table[name.strip().lower()] = f"{name.strip()}=={ver.strip()}"
    return [table[n] for n in names]


def compiler_free_env(venv: Path) -> dict:
    """Environment whose PATH holds only the venv's bin directory: no compiler, no cmake, so
    pip can only install wheels (checked, not assumed)."""
    path = str(venv / "bin")
    for tool in COMPILERS:
        assert shutil.which(tool, path=path) is None, f"{tool} on the stripped PATH"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = path
    env.pop(  # another build of the library must not leak in
        "MASKEDMHA_LIBRARY", None)
    return env


def runtime_venv(python: str, requirements: list[str]) -> Path:
    """A venv of `python` holding exactly `requirements` (binary wheels only, no compiler on
    PATH), reused while the interpreter and requirements are the same."""
    version = subprocess.run([python, "-c", "import sys; print(sys.version)"],
                             capture_output=True, text=True, check=True).stdout
    constraints = (ROOT / "constraints.txt").read_bytes()
    venv = CACHE / f"venv-{_digest(version.encode(), python.encode(), constraints, *map(str.encode, requirements))}"
    if (venv / ".ready").exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    # Everything else (transitive dependencies) at constraints.txt's pins; a constraints file
    # cannot be overridden, so the packages named in `requirements` are filtered out of it.
    named = {re.split(r"[=<>!~ ]", r, maxsplit=1)[0].lower() for r in requirements}
    kept = [line for line in constraints.decode().splitlines()
            if line.partition("==")[0].strip().lower() not in named]
    (venv / "constraints.txt").write_text("\n".join(kept) + "\n")
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q",
         "--only-binary=:all:", "-c", str(venv / "constraints.txt"), *requirements],
        env=compiler_free_env(venv), capture_output=True, text=True)
    assert proc.returncode == 0, f"pip install {requirements} failed:\n{proc.stderr[-3000:]}"
    (venv / ".ready").write_text("\n".join(requirements))
    return venv


def install_wheel(venv: Path, wheel: Path) -> None:
    """The wheel alone: --no-deps (the venv holds the runtime deps), --no-index (nothing else)."""
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q",
         "--no-deps", "--no-index", "--force-reinstall", str(wheel)],
        env=compiler_free_env(venv), capture_output=True, text=True)
    assert proc.returncode == 0, f"pip install {wheel.name} failed:\n{proc.stderr[-3000:]}"


# Runs inside the venv: everything maskedmha offers without torch, then proves torch was never
# imported.  argv: model.onnx feeds.npz [part...]; parts: run (import, library, sessions, fused
# and fallback), decompose.
CHILD = r'''
import sys
import numpy as np
import onnx
import onnxruntime as ort
import maskedmha

model_path, feeds_path, *parts = sys.argv[1:]
feeds = dict(np.load(feeds_path))
assert "torch" not in sys.modules, "import maskedmha imported torch"
if "run" in parts:
    assert maskedmha.get_library_path().endswith("libmaskedmha_ops.so")
    so = maskedmha.session_options()
    fused = maskedmha.InferenceSession(model_path, so).run(None, feeds)[0]
    again = maskedmha.InferenceSession(model_path, so).run(None, feeds)[0]  # same options twice
    plain = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(fused, plain, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(fused, again)
    try:
        maskedmha.export(None, ())
    except ModuleNotFoundError as exc:
        assert 'pip install "maskedmha[export]"' in str(exc), exc
    else:
        raise AssertionError("maskedmha.export ran without torch")
if "decompose" in parts:
    dec = maskedmha.decompose(onnx.load(model_path))
    assert not any(n.domain == maskedmha.DOMAIN for n in dec.graph.node)
    out = ort.InferenceSession(dec.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    ref = maskedmha.InferenceSession(model_path).run(None, feeds)[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    from maskedmha.cli import main
    assert main(["compare", model_path, "--inputs", feeds_path, "--runs", "2"]) == 0
assert "torch" not in sys.modules, "torch was imported"
print("OK", ort.__version__, sys.version.split()[0])
'''


def run_child(venv: Path, tmp: Path, model, feeds: dict, parts: list[str]) -> str:
    import numpy as np
    import onnx

    model_path, feeds_path = tmp / "model.onnx", tmp / "feeds.npz"
    onnx.save(model, str(model_path))
    np.savez(feeds_path, **feeds)
    script = tmp / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run([str(venv / "bin" / "python"), str(script), str(model_path),
                           str(feeds_path), *parts],
                          env=compiler_free_env(venv), capture_output=True, text=True, cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout
