"""scripts/setup.sh's progress lines, with a stand-in python (nothing is installed): a fresh run
announces each step with a rough duration and its elapsed time; a run where everything is
installed prints one line; both run exactly the same pip commands (what gets installed is
unchanged by the progress output)."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Logs its arguments; "-m venv DIR" copies itself to DIR/bin/python; "-m pip" succeeds; "-c"
# probes (torch version, find_spec) succeed only when $FAKE_INSTALLED is 1.
FAKE = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
if [ "$1" = -m ] && [ "$2" = venv ]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; exit 0; fi
if [ "$1" = -m ]; then exit 0; fi
if [ "$1" = -c ]; then [ "$FAKE_INSTALLED" = 1 ]; exit $?; fi
exit 0
"""


def _run(tmp_path: Path, installed: bool) -> tuple[str, list[str]]:
    fake = tmp_path / "python3"
    fake.write_text(FAKE)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / f"log-{installed}"
    env = dict(os.environ, PYTHON=str(fake), MASKEDMHA_VENV=str(tmp_path / "venv"),
               FAKE_LOG=str(log), FAKE_INSTALLED="1" if installed else "0")
    res = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""
    pips = [line for line in log.read_text().splitlines() if line.startswith("-m pip")]
    return res.stderr, pips


def test_fresh_run_announces_every_step_then_second_run_one_line(tmp_path):
    fresh, fresh_pips = _run(tmp_path, installed=False)
    lines = fresh.splitlines()
    starts = [line for line in lines if line.endswith("…")]
    assert [s.split(" (")[0] for s in starts] == [
        f"set-up: creating the virtual environment {tmp_path / 'venv'}",
        "set-up: installing torch 2.13.0",
        "set-up: installing the build tools scikit-build-core, cmake, ninja",
        "set-up: installing the pinned dependencies and building the C++ library",
    ], fresh
    assert all("(" in s and ("min" in s or " s)" in s or "seconds" in s) for s in starts), fresh
    assert sum(line.startswith("set-up:   done in ") for line in lines) == 4, fresh
    assert lines[-1].startswith("set-up: finished in "), fresh

    again, again_pips = _run(tmp_path, installed=True)   # the venv exists now
    assert len(again.splitlines()) == 1, again
    assert again.startswith("set-up: ") and "is set up" in again
    # Same pip commands as before minus torch's (skipped when torch 2.13.0 is there, as before).
    assert again_pips == [p for p in fresh_pips if "torch==2.13.0" not in p]
    assert fresh_pips[0].endswith("install torch==2.13.0")
