"""README.md's "Raw text in, embeddings out" Python example, run as written (fresh interpreter,
temporary folder): strings in, and its printed difference from PyTorch as small as it says."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_text_example_runs_and_matches_pytorch(tmp_path):
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Raw text in, embeddings out", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "export_text_model" in code and "InferenceSession" in code
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr == "", res.stderr[-3000:]      # no exporter noise either
    assert float(res.stdout.strip().splitlines()[-1]) < 1e-5, res.stdout
