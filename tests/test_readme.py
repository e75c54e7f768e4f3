"""The README's Python sample runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_sample_runs(tmp_path, monkeypatch):
    samples = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert samples, "README has no python sample"
    for sample in samples:
        code = sample.replace('"/tmp/demo-mesh"', repr(str(tmp_path / "mesh")))
        exec(compile(code, str(README), "exec"), {})
