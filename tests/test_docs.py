"""docs/guide.md's Python samples run as written, each as its own program, and print what the
guide says they print."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guide.md"
SAMPLES = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
EXPECTED = {  # a word only that sample has -> its output, line by line
    '"add"': ["5", "[0, 1, 2]", "news.eu hello"],
    "SyncNode": ["QUIET PLEASE"],
    "metrics_port=0": ["{'ok': 3}", 'mesh_request_duration_seconds_count{peer="server"} 3.0'],
    "TracerProvider": ["['mesh.handle echo', 'mesh.request echo'] 1"],
}


def test_every_sample_is_checked():
    assert len(SAMPLES) == len(EXPECTED)
    for marker in EXPECTED:
        assert sum(marker in sample for sample in SAMPLES) == 1, marker


@pytest.mark.parametrize("marker", EXPECTED)
def test_the_sample_prints_what_the_guide_says(marker, tmp_path):
    if marker == "TracerProvider":
        pytest.importorskip("opentelemetry.sdk")
    if marker == "metrics_port=0":
        pytest.importorskip("prometheus_client")
    (sample,) = [s for s in SAMPLES if marker in s]
    env = {**os.environ, "MESH_HOME": str(tmp_path / "unused"), "PYTHONPATH": str(ROOT)}
    env.pop("MESH_DISCOVERY", None)
    done = subprocess.run([sys.executable, "-c", sample], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == EXPECTED[marker]
