"""The examples run against a real local mesh, as a user would run them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.processes import ROOT, Process

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast


@pytest.fixture
def local_mesh(tmp_path):
    discovery = Process("discovery", "--bind", "tcp://127.0.0.1:0", home=tmp_path)
    echo = None
    try:
        url = discovery.endpoint()
        echo = Process("run", "echo", "--name", "echo-1", "--discovery", url, home=tmp_path)
        echo.endpoint()
        yield {
            **os.environ,
            "MESH_HOME": str(tmp_path),
            "MESH_DISCOVERY": url,
            "PYTHONPATH": str(ROOT),
        }
    finally:
        for process in (echo, discovery):
            if process is not None:
                process.close()


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("plain_program.py", ["echo-1 answered {'from': 'a plain program'}", "streamed three"]),
        (
            "asyncio_app.py",
            ["echo-1 answered [{'n': 0}", "streamed b", "the app kept running: True"],
        ),
    ],
)
def test_example_runs(local_mesh, script, expected):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)],
        env=local_mesh,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for line in expected:
        assert line in result.stdout
