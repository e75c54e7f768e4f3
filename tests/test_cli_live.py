"""The live-mesh commands as real processes: call, peers, errors, signals."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess

import pytest

from mesh import PeerLost
from mesh.runtime.node import Node
from tests.conftest import eventually
from tests.processes import Process
from tests.test_cli import assert_one_line_error, mesh

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast


@pytest.fixture
def running(tmp_path):
    started: list[Process] = []
    discovery = Process("discovery", "--bind", "tcp://127.0.0.1:0", home=tmp_path)
    started.append(discovery)
    url = discovery.endpoint()
    echo = Process("run", "echo", "--name", "echo-1", "--discovery", url, home=tmp_path)
    started.append(echo)
    echo.endpoint()
    yield url, discovery, echo
    for process in started:
        process.close()


def test_call_and_peers(running, tmp_path):
    url, _, _ = running
    out = mesh("call", "echo-1", "echo", '{"x": [1, 2]}', "--discovery", url, home=tmp_path)
    assert json.loads(out.stdout) == {"x": [1, 2]}
    out = mesh(
        "call", "echo-1", "echo_stream", '["a", "b"]', "--stream", "--discovery", url, home=tmp_path
    )
    assert out.stdout.splitlines() == ['"a"', '"b"']
    peers = json.loads(mesh("peers", "--json", "--discovery", url, home=tmp_path).stdout)
    assert [p["name"] for p in peers] == ["echo-1"]
    assert "echo" in peers[0]["capabilities"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("call", "echo-1", "nope"), "no handler for 'nope'"),
        (("call", "ghost", "echo"), "no live node named 'ghost'"),
        (("call", "echo-1", "echo", "{not json"), "not valid JSON"),
        (("call", "echo-1", "sleep", "5", "--timeout", "0.3"), "did not answer within 0.3 s"),
    ],
)
def test_call_errors_are_one_line(running, tmp_path, args, needle):
    url, _, _ = running
    result = mesh(*args, "--discovery", url, home=tmp_path, check=False)
    assert_one_line_error(result)
    assert needle in result.stderr


def test_unreachable_discovery_is_one_line(tmp_path):
    result = mesh("peers", "--discovery", "tcp://127.0.0.1:9", home=tmp_path, check=False)
    assert_one_line_error(result)
    assert "unreachable" in result.stderr


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_signals_stop_cleanly_and_unregister(running, tmp_path, sig, status):
    url, _, echo = running
    echo.kill(sig)
    assert echo.popen.wait(20) == status
    assert "Traceback" not in echo.popen.stderr.read()
    peers = json.loads(mesh("peers", "--json", "--discovery", url, home=tmp_path).stdout)
    assert peers == []  # it unregistered on the way out: no waiting for the lease


def test_a_second_process_under_a_live_name_fails_with_one_line_and_the_first_keeps_it(
    running, tmp_path
):
    url, _, echo = running
    second = Process("run", "echo", "--name", "echo-1", "--discovery", url, home=tmp_path)
    try:
        status = second.popen.wait(60)
        stderr = second.popen.stderr.read()
    finally:
        second.close()
    result = subprocess.CompletedProcess(second.args, status, "", stderr)
    assert_one_line_error(result)
    assert "'echo-1' is live in another process" in stderr
    assert echo.popen.poll() is None  # the first still serves, under its name
    peers = json.loads(mesh("peers", "--json", "--discovery", url, home=tmp_path).stdout)
    assert [(p["name"], p["endpoint"]) for p in peers] == [("echo-1", echo.endpoint())]
    out = mesh("call", "echo-1", "echo", '"still here"', "--discovery", url, home=tmp_path)
    assert json.loads(out.stdout) == "still here"


def test_only_an_agent_can_drain_and_saying_so_is_one_line(running, tmp_path):
    """`mesh drain` on a node that is not an agents.Agent, and `mesh run --drain` of a
    target that cannot drain: each is one line that says so, not an unknown method or an
    option silently ignored."""
    url, _, echo = running
    result = mesh("drain", "echo-1", "--discovery", url, home=tmp_path, check=False)
    assert_one_line_error(result)
    assert "echo-1 cannot be drained: it is not an agents.Agent" in result.stderr
    assert echo.popen.poll() is None  # still serving
    result = mesh("run", "echo", "--name", "e2", "--drain", "--discovery", url,
                  home=tmp_path, check=False)  # fmt: skip
    assert_one_line_error(result)
    assert "--drain: echo cannot drain" in result.stderr


@pytest.mark.asyncio
async def test_a_second_signal_cuts_a_drain_short(spawn, discovery, home):
    """SIGTERM under --drain waits for the request in flight; a second SIGTERM (an
    operator who will not wait) ends the process at once, with 143 and one line, and the
    caller whose request was cut off gets PeerLost."""
    holder = spawn("run", "tests.fixture_agent:Holder", "--name", "holder",
                   "--discovery", discovery, "--drain", "600")  # fmt: skip
    holder.endpoint()
    async with Node("caller", discovery=discovery, mesh=home, heartbeat=0.5) as node:
        held = asyncio.create_task(node.request("holder", "hold", None, timeout=600))
        await eventually(lambda: _holding(node), timeout=30)
        holder.kill(signal.SIGTERM)
        await eventually(lambda: _gone_from_directory(node), timeout=30)  # it is draining
        assert not held.done()  # the drain waits for it
        holder.kill(signal.SIGTERM)
        assert await asyncio.to_thread(holder.popen.wait, 60) == 143
        with pytest.raises(PeerLost):
            await held
    assert holder.popen.stderr.read().strip() == "mesh: drain cut short by a second signal"


async def _holding(node: Node) -> bool:
    return await node.request("holder", "held", timeout=10) == 1


async def _gone_from_directory(node: Node) -> bool:
    return "holder" not in {info.name for info in await node.peers()}
