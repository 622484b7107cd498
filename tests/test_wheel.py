"""The wheel users install (scripts/build_wheel.sh): tagged py3-none-manylinux (the library links
no Python), old enough a manylinux policy per auditwheel, exporting RegisterCustomOps alone, and
installable and runnable on another Python minor version with no compiler on PATH and no torch.
The wheel and the venv are cached under build/test-cache (keyed on their inputs)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers.fused_model import feeds, fused_model
from helpers.venv_tools import built_wheel, install_wheel, pins, run_child, runtime_venv

OLDEST_GLIBC_TARGET = (2, 28)  # manylinux_2_28 (AlmaLinux 8, GCC 8's libstdc++) or older


def _other_python() -> str | None:
    """MASKEDMHA_OTHER_PYTHON, else a pyenv CPython of another minor version than this one."""
    explicit = os.environ.get("MASKEDMHA_OTHER_PYTHON")
    if explicit:
        return explicit
    mine = f"{sys.version_info.major}.{sys.version_info.minor}."
    for cand in ("3.12.1", "3.13.0", "3.10.13"):
        path = Path("/root/.pyenv/versions") / cand / "bin" / "python"
        if not cand.startswith(mine) and path.exists():
            return str(path)
    return None


@pytest.fixture(scope="module")
def wheel() -> Path:
    if not sys.platform.startswith("linux"):
        pytest.skip("manylinux wheels are Linux-only")
    return built_wheel()


def _auditwheel_tag(wheel: Path) -> tuple[int, int]:
    tool = Path(sys.executable).parent / "auditwheel"
    proc = subprocess.run([str(tool), "show", str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    m = re.search(r'consistent with the following platform tag: "manylinux_(\d+)_(\d+)_x86_64"', text)
    assert m, text
    return int(m.group(1)), int(m.group(2))


def test_wheel_is_py3_none_manylinux(wheel):
    m = re.fullmatch(r"maskedmha-[^-]+-py3-none-manylinux_(\d+)_(\d+)_x86_64\.whl", wheel.name)
    assert m, wheel.name
    # The file name's tag is what auditwheel itself reads from the library's symbol versions.
    assert (int(m.group(1)), int(m.group(2))) == _auditwheel_tag(wheel)


def test_wheel_fits_manylinux_2_28(wheel):
    assert _auditwheel_tag(wheel) <= OLDEST_GLIBC_TARGET


def test_library_exports_register_custom_ops_only(wheel, tmp_path):
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is not installed")
    with zipfile.ZipFile(wheel) as zf:
        lib = tmp_path / "libmaskedmha_ops.so"
        lib.write_bytes(zf.read("maskedmha/libmaskedmha_ops.so"))
    out = subprocess.run([nm, "-D", "--defined-only", str(lib)], capture_output=True, text=True,
                         check=True).stdout
    assert [line.split()[-1] for line in out.splitlines() if line.strip()] == ["RegisterCustomOps"]
    # No GNU-unique ('u') symbols either: they would make the library impossible to dlclose.
    assert not re.search(r"\s u\s", out)


UNLOAD = r'''
import ctypes, sys
path = sys.argv[1]
handle = ctypes.CDLL(path)._handle
libc = ctypes.CDLL(None)
libc.dlclose.argtypes = [ctypes.c_void_p]
assert libc.dlclose(handle) == 0
sys.exit(path in open("/proc/self/maps").read())
'''


def test_library_can_be_unloaded(wheel, tmp_path):
    # A GNU-unique symbol pins a library in memory for the life of the process (dlclose is a
    # no-op); measured on the library before the version script: still mapped after dlclose.
    with zipfile.ZipFile(wheel) as zf:
        lib = tmp_path / "libmaskedmha_ops.so"
        lib.write_bytes(zf.read("maskedmha/libmaskedmha_ops.so"))
    proc = subprocess.run([sys.executable, "-c", UNLOAD, str(lib)], capture_output=True, text=True)
    assert proc.returncode == 0, f"still mapped after dlclose {proc.stderr}"


def test_installs_and_runs_on_another_python_without_compiler(wheel, tmp_path):
    python = _other_python()
    if python is None:
        pytest.skip("no CPython of another minor version found (set MASKEDMHA_OTHER_PYTHON)")
    venv = runtime_venv(python, pins())   # PATH stripped of compilers: binary wheels only
    install_wheel(venv, wheel)
    out = run_child(venv, tmp_path, fused_model(with_fallback=True), feeds(), ["run"])
    assert "OK" in out and f"{sys.version_info.major}.{sys.version_info.minor}." not in out.split()[-1]
