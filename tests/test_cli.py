"""The mesh command, run as a real process: outputs, exit codes, one-line errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import pytest

from mesh.cli.cmd_live import StopSignals
from mesh.gateway.http import Exposure, HttpServer

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast


def mesh(*args: str, home, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MESH_HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-m", "mesh.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def assert_one_line_error(result):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mesh: error:"), result.stderr
    assert "Traceback" not in result.stderr


def test_init_issue_show(tmp_path):
    out = mesh("init", home=tmp_path).stdout
    assert "created" in out
    assert "exists" in mesh("init", home=tmp_path).stdout
    mesh("issue", "alice", "--caps", "echo,generate", "--days", "2", home=tmp_path)
    shown = json.loads(mesh("show", "alice", "--json", home=tmp_path).stdout)
    assert shown["name"] == "alice"
    assert shown["capabilities"] == ["echo", "generate"]
    authority = json.loads(mesh("show", "--json", home=tmp_path).stdout)
    assert authority["identities"] == ["alice"]
    assert authority["authority_id"] == shown["authority_id"]


def test_reissue_needs_force(tmp_path):
    mesh("issue", "alice", home=tmp_path)
    before = json.loads(mesh("show", "alice", "--json", home=tmp_path).stdout)["node_id"]
    assert_one_line_error(mesh("issue", "alice", home=tmp_path, check=False))
    mesh("issue", "alice", "--force", home=tmp_path)
    after = json.loads(mesh("show", "alice", "--json", home=tmp_path).stdout)["node_id"]
    assert before != after


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("show",), "mesh init"),
        (("show", "ghost"), "no mesh in"),  # show only uses a mesh: it never makes one
        (("issue", "a/b"), "invalid node name"),
    ],
)
def test_errors_are_one_readable_line(tmp_path, args, needle):
    result = mesh(*args, home=tmp_path / "empty", check=False)
    assert_one_line_error(result)
    assert needle in result.stderr


def test_showing_an_identity_that_is_not_there_is_one_line(tmp_path):
    mesh("init", home=tmp_path)
    result = mesh("show", "ghost", home=tmp_path, check=False)
    assert_one_line_error(result)
    assert "no such file" in result.stderr


def test_insecure_key_is_one_line(tmp_path):
    mesh("issue", "alice", home=tmp_path)
    os.chmod(tmp_path / "identities" / "alice.key", 0o644)
    result = mesh("show", "alice", home=tmp_path, check=False)
    assert_one_line_error(result)
    assert "chmod 600" in result.stderr


def test_selfcheck_passes_and_reports_costs(tmp_path):
    report = json.loads(mesh("selfcheck", "--json", home=tmp_path).stdout)
    assert report["ok"]
    assert all(report["checks"].values())
    assert [row["size"] for row in report["timing"]] == [64, 1024, 65536, 1048576]
    assert all(row["seal_open_us"] > 0 for row in report["timing"])


def test_demo_runs_a_live_local_mesh(tmp_path):
    out = mesh("demo", home=tmp_path).stdout
    assert "mesh members: echo-1, echo-2, echo-3" in out
    routing = next(line for line in out.splitlines() if "least-busy routing" in line)
    assert all(f"echo-{i} x" in routing for i in (1, 2, 3))  # every replica got work
    assert "stream   demo-client -> echo-2.echo_stream: ['tok', 'en', 's']" in out
    topics = "agents.echo-1.status, agents.echo-2.status, agents.echo-3.status"
    assert f"topic    agents.> <- {topics}" in out
    assert out.count("exit status 0") == 4


@pytest.mark.asyncio
async def test_two_stop_signals_at_once_are_both_seen_and_a_third_is_not_caught():
    """`mesh run --drain`: the first SIGTERM drains, a second cuts it short. Both arrive
    before the loop runs again here, and both count; after the second, the handlers are
    gone, so a third (not sent here) would end the process however busy it is."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signals = StopSignals()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(signals.wait_again(), 30) == 128 + signal.SIGTERM
        assert signals.stopped and signals.code == 0
        # SIGINT too: not a KeyboardInterrupt that waits for busy threads
        assert signal.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGINT) == signal.SIG_DFL
    finally:  # this is pytest's own process
        for signum, handler in before.items():
            signal.signal(signum, handler)


async def _lifespan_only(scope, receive, send):
    """An ASGI app with nothing to serve: what uvicorn needs to start and stop."""
    while scope["type"] == "lifespan":
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


@pytest.mark.asyncio
async def test_the_http_gateway_leaves_the_signals_to_the_command():
    """uvicorn, serving a gateway, takes no signal for itself: the command's StopSignals
    sees a SIGINT once. (uvicorn would take them while it serves, then raise each again at
    its exit, which reads as a second signal and disarms the handlers.)"""
    signals = StopSignals()
    server = HttpServer(Exposure("127.0.0.1", 0, None, False))
    server.bind()
    await server.serve(_lifespan_only)
    try:
        handler = signal.getsignal(signal.SIGINT)
        assert getattr(handler, "__self__", None) is not server._server  # not uvicorn's
        os.kill(os.getpid(), signal.SIGINT)
        assert await asyncio.wait_for(signals.wait(), 30) == 130
    finally:
        await server.close()
    assert signal.getsignal(signal.SIGINT) is handler  # as the command left it
