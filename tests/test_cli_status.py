"""``mesh status`` against real processes: what it shows, and a node going down."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from mesh import InvalidArgument
from mesh.runtime.node import STATS_METHOD, Node
from tests.processes import ROOT

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast


def status(home, discovery: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MESH_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", "status", "--discovery", discovery, "--timeout", "1",
         *extra],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )  # fmt: skip


@pytest.mark.asyncio
async def test_status_shows_the_mesh_and_a_node_going_down(spawn, discovery, home):
    alpha = spawn("run", "echo", "--name", "alpha", "--discovery", discovery)
    beta = spawn("run", "echo", "--name", "beta", "--discovery", discovery)
    alpha.endpoint(), beta.endpoint()
    async with Node("caller", discovery=discovery, mesh=home) as node:
        for i in range(5):
            await node.request("alpha", "echo", i, timeout=10)
    done = status(home, discovery, "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert {"alpha", "beta"} <= set(rows)
    assert rows["alpha"]["state"] == "up" and rows["alpha"]["rtt_ms"] > 0
    assert rows["alpha"]["requests"] >= 5 and rows["alpha"]["host"] == "127.0.0.1"
    assert rows["beta"]["drops"] == {} and rows["beta"]["errors"] == 0

    beta.kill()
    done = status(home, discovery, "--json")  # still registered (its lease), but silent
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert rows["beta"]["state"].startswith("unreachable"), rows["beta"]
    assert rows["alpha"]["state"] == "up"

    plain = status(home, discovery)
    assert plain.returncode == 0 and "alpha" in plain.stdout and "unreachable" in plain.stdout


def test_status_errors_are_one_line(home):
    done = status(home, "tcp://127.0.0.1:9", "--timeout", "-1")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "mesh: error: --timeout and --watch take a positive number of seconds"
    ]


@pytest.mark.asyncio
async def test_a_node_without_mesh_stats_shows_as_up(discovery, home):
    """protocol.md 8.4: mesh.stats is optional. A node that does not serve it (as a
    conforming third-party node may not) answers PING, so status shows it up, bare."""
    async with Node("plain", discovery=discovery, mesh=home) as plain:
        del plain._runner.handlers[STATS_METHOD]  # what such a node serves: no mesh.stats
        done = await asyncio.to_thread(status, home, discovery, "--json")  # the loop answers
        assert done.returncode == 0, done.stderr
        rows = {row["name"]: row for row in json.loads(done.stdout)}
        assert rows["plain"]["state"] == "up (no mesh.stats)" and rows["plain"]["rtt_ms"] > 0

        async def odd(body):  # another implementation's idea of the answer
            return {"traffic": [], "uptime_s": "long"}

        plain._runner.add(STATS_METHOD, odd)
        done = await asyncio.to_thread(status, home, discovery, "--json")
        assert done.returncode == 0, done.stderr
        rows = {row["name"]: row for row in json.loads(done.stdout)}
        assert rows["plain"]["state"] == "up (mesh.stats unreadable)"


def test_method_names_under_mesh_are_reserved(home):
    node = Node("app", discovery=[], mesh=home)
    with pytest.raises(InvalidArgument, match="reserved"):
        node.handler("mesh.stats", lambda body: body)


@pytest.mark.asyncio
async def test_a_peers_odd_card_is_shown_not_fatal(discovery, home):
    """A card's kind is the peer's choice, of any type: status shows the node, kind blank."""
    odd_card = {"card": {"kind": 5, "description": "tab\there"}}
    async with Node("odd", discovery=discovery, mesh=home, meta=odd_card):
        done = await asyncio.to_thread(status, home, discovery, "--json")
        assert done.returncode == 0, done.stderr
        rows = {row["name"]: row for row in json.loads(done.stdout)}
        assert rows["odd"]["kind"] == "" and rows["odd"]["state"] == "up"
        plain = await asyncio.to_thread(status, home, discovery)
        assert plain.returncode == 0 and "odd" in plain.stdout
