"""The README's Python samples run as written (against a real local mesh where they need one)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT, Process

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast

README = Path(__file__).resolve().parent.parent / "README.md"
SAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def run_sample(code: str, home) -> list[str]:
    """Run a sample as its own program against the mesh in ``home``; its output words."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MESH_HOME": str(home), "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_readme_has_its_samples():
    assert any("node.request(" in s for s in SAMPLES)
    assert any("SessionTable" in s for s in SAMPLES)
    assert any(".subscribe(" in s for s in SAMPLES)


def test_sans_io_sample_runs(tmp_path):
    (sample,) = [s for s in SAMPLES if "SessionTable" in s]
    exec(compile(sample.replace('"/tmp/demo-mesh"', repr(str(tmp_path))), "README", "exec"), {})


def test_embedding_sample_runs_against_a_local_mesh(tmp_path):
    (sample,) = [s for s in SAMPLES if "node.request(" in s]
    discovery = Process("discovery", "--bind", "tcp://127.0.0.1:0", home=tmp_path)
    bob = None
    try:
        url = discovery.endpoint()
        # as the README starts it: `mesh run examples.bob:Bob --name bob`, from the checkout
        bob = Process("run", "examples.bob:Bob", "--name", "bob", "--discovery", url, home=tmp_path)
        bob.endpoint()
        assert run_sample(sample.replace("tcp://127.0.0.1:7700", url), tmp_path) == [
            "hello",
            "world",
        ]
    finally:
        for process in (bob, discovery):
            if process is not None:
                process.close()


def run_with_discovery(marker: str, home) -> list[str]:
    """The one sample containing ``marker``, run against a discovery node of its own."""
    (sample,) = [s for s in SAMPLES if marker in s]
    discovery = Process("discovery", "--bind", "tcp://127.0.0.1:0", home=home)
    try:
        return run_sample(sample.replace("tcp://127.0.0.1:7700", discovery.endpoint()), home)
    finally:
        discovery.close()


def test_topics_sample_runs_against_a_local_mesh(tmp_path):
    assert run_with_discovery(".subscribe(", tmp_path) == ["news.eu", "newsroom", "1", "hello"]


def test_agent_sample_runs_and_publishes_its_card(tmp_path):
    words = run_with_discovery("class Greeter(Agent)", tmp_path)
    assert words == ["hello", "ada", "Greets", "people", "by", "name,", "politely."]


def test_delivery_sample_runs_against_a_local_mesh(tmp_path):
    words = run_with_discovery('delivery="durable"', tmp_path)
    pairs = sorted(zip(words[::2], words[1::2], strict=True))
    assert pairs == [("invoice", "1"), ("invoice", "2"), ("invoice", "3")]
