"""A client written from protocol.md alone (tests/thirdparty_client.py, no code from
``mesh``) against a live node: certificate, handshake, a request, a stream with credit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.processes import ROOT
from tests.thirdparty_client import Client

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast


def test_a_client_written_from_the_spec_calls_a_live_node(spawn, discovery, home):
    env = {**os.environ, "MESH_HOME": str(home), "PYTHONPATH": str(ROOT)}
    issued = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "issue", "thirdparty"],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    node = spawn("run", "echo", "--name", "echo-1", "--discovery", discovery)
    client = Client(home, "thirdparty", node.endpoint())
    try:
        assert client.fetch_certificate().name == "echo-1"
        client.handshake()
        assert client.request("echo", {"x": [1, "two", b"\x03"]}) == {"x": [1, "two", b"\x03"]}
        items = [f"token {i}" for i in range(7)]
        assert client.stream("echo_stream", items, window=2) == items  # credit granted as read
        assert client.request("whoami", None) == "echo-1"
    finally:
        client.close()
