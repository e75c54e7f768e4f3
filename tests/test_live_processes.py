"""The live mesh across real OS processes on loopback: calls, streams, faults, restarts."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import signal
import time

import pytest
import zmq
import zmq.asyncio

from mesh import Authority, HandshakeRejected, Identity, Initiator, MeshDirectory, SessionTable
from mesh.core.errors import (
    DiscoveryUnavailable,
    NoSuchMethod,
    PeerLost,
    PeerNotFound,
    RemoteError,
    RequestTimeout,
    Unauthorized,
)
from mesh.runtime.node import Node
from tests.conftest import eventually
from tests.processes import Process

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]
AGENT = "tests.fixture_agent:FixtureAgent"
HEARTBEAT = 0.2
# Why a call in flight ends when its peer dies: the liveness checks (heartbeats unanswered, or
# the peer's connection gone), long before its own 60 s timeout (a RequestTimeout).
LOST_BY_LIVENESS = r"missed \d+ heartbeats|is unreachable"


@pytest.fixture
def agent(spawn, discovery):
    def start(name: str, *extra: str) -> Process:
        process = spawn(
            "run",
            AGENT,
            "--name",
            name,
            "--discovery",
            discovery,
            "--heartbeat",
            str(HEARTBEAT),
            *extra,
        )
        process.endpoint()
        return process

    return start


async def test_request_reply_one_way_and_typed_errors(agent, discovery, home):
    worker = agent("worker")
    async with Node("caller", discovery=discovery, mesh=home, heartbeat=HEARTBEAT) as node:
        assert await node.request("worker", "pid", timeout=10) == worker.pid
        await node.send("worker", "record", {"n": 1})
        await node.send("worker", "record", {"n": 2})
        assert await node.request("worker", "recorded", timeout=10) == [{"n": 1}, {"n": 2}]
        assert await node.request("worker", "blocking", 0.05, timeout=10) == "done"
        with pytest.raises(RemoteError) as failed:
            await node.request("worker", "boom", 5, timeout=10)
        assert failed.value.remote_type == "ValueError"
        assert "bad input 5" in str(failed.value)
        assert "Traceback" not in str(failed.value)
        with pytest.raises(NoSuchMethod):
            await node.request("worker", "no-such-method", timeout=10)
        with pytest.raises(PeerNotFound):
            await node.request("ghost", "pid", timeout=10)
        names = {peer.name for peer in await node.peers()}
        assert {"worker", "caller"} <= names


async def test_streams_and_cancel(agent, discovery, home):
    agent("streamer")
    async with Node("caller", discovery=discovery, mesh=home, heartbeat=HEARTBEAT) as node:
        chunks = [c async for c in node.stream("streamer", "count", {"n": 50})]
        assert chunks == list(range(50))
        assert await node.request("streamer", "count", {"n": 3}, timeout=10) == [0, 1, 2]
        async with contextlib.aclosing(
            node.stream("streamer", "count", {"n": 100_000, "delay": 0.01})
        ) as endless:
            got = [await anext(endless) for _ in range(3)]
            assert got == [0, 1, 2]
            assert await node.request("streamer", "active", timeout=10) == 1
        # leaving the stream sent CANCEL: the generator on the other side stops
        assert await eventually(lambda: _equals(node.request("streamer", "active", timeout=10), 0))


async def _equals(awaitable, expected) -> bool:
    return (await awaitable) == expected


async def test_capability_addressing_balances_and_skips_the_dead(agent, discovery, home):
    replicas = [agent(f"replica-{i}", "--caps", "work") for i in range(3)]
    async with Node("caller", discovery=discovery, mesh=home, heartbeat=HEARTBEAT) as node:
        pids = await asyncio.gather(
            *(
                node.request(capability="work", method="slow", body=2.0, timeout=30)
                for _ in range(9)
            )
        )
        assert collections.Counter(pids) == {r.pid: 3 for r in replicas}
        dead = replicas[0]
        dead.kill()
        dead.popen.wait(10)
        answers, lost = [], 0
        for _ in range(6):
            try:
                answers.append(await node.request(capability="work", method="pid", timeout=10))
            except PeerLost:
                lost += 1  # at most once: the call that finds it down
        assert lost <= 1
        assert len(answers) >= 5
        assert dead.pid not in answers


async def test_kill_mid_request_fails_fast_with_peer_lost(agent, discovery, home):
    victim = agent("victim")
    async with Node("caller", discovery=discovery, mesh=home, heartbeat=HEARTBEAT) as node:
        pending = asyncio.create_task(node.request("victim", "slow", 60, timeout=60))
        await eventually(lambda: _equals(node.request("victim", "inflight", timeout=10), 1))
        victim.kill()
        with pytest.raises(PeerLost, match=LOST_BY_LIVENESS):
            await pending


async def test_kill_mid_stream_fails_fast_with_peer_lost(agent, discovery, home):
    victim = agent("victim")
    async with Node("caller", discovery=discovery, mesh=home, heartbeat=HEARTBEAT) as node:
        killed = False

        async def read_until_lost():
            nonlocal killed
            async for chunk in node.stream(
                "victim", "count", {"n": 100_000, "delay": 0.01}, timeout=60
            ):
                if chunk == 5:
                    killed = True
                    victim.kill()

        with pytest.raises(PeerLost, match=LOST_BY_LIVENESS):
            await read_until_lost()
        assert killed


async def test_a_stopped_callee_is_lost_by_heartbeats_and_found_again_when_continued(
    agent, discovery, home
):
    """SIGSTOP: alive but silent, so no TCP reset ever comes; only heartbeats can tell. The
    request in flight ends in PeerLost, new ones end in a typed error, and after SIGCONT the
    same process is reached again (nobody restarted), its late reply delivered to no one."""
    frozen = agent("frozen")
    async with Node("caller", discovery=discovery, mesh=home, heartbeat=HEARTBEAT) as node:
        assert await node.request("frozen", "pid", timeout=10) == frozen.pid
        pending = asyncio.create_task(node.request("frozen", "slow", 1, timeout=60))
        await eventually(lambda: _equals(node.request("frozen", "inflight", timeout=10), 1))
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            with pytest.raises(PeerLost, match=r"missed \d+ heartbeats"):  # not its 60 s timeout
                await pending
            with pytest.raises((PeerLost, RequestTimeout)):
                await node.request("frozen", "pid", timeout=3)
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        assert await eventually(
            lambda: _equals(node.request("frozen", "pid", timeout=5), frozen.pid)
        )
        # the slow call finishes over there (or is cancelled); its reply has no caller
        await eventually(lambda: _equals(node.request("frozen", "inflight", timeout=5), 0))
        assert pending.done() and isinstance(pending.exception(), PeerLost)
        assert await node.request("frozen", "pid", timeout=5) == frozen.pid


async def test_restarted_callee_is_reached_again(agent, discovery, home):
    first = agent("bob")
    async with Node("caller", discovery=discovery, mesh=home, heartbeat=HEARTBEAT) as node:
        assert await node.request("bob", "pid", timeout=10) == first.pid
        first.kill()
        first.popen.wait(10)
        second = agent("bob")
        assert await eventually(lambda: _equals(node.request("bob", "pid", timeout=10), second.pid))


async def test_retried_request_runs_once(agent, discovery, home):
    agent("worker")
    async with Node("caller", discovery=discovery, mesh=home, heartbeat=HEARTBEAT) as node:
        count = await node.request(
            "worker", "once", {"key": "k", "sleep": 0.6}, timeout=0.25, retries=40
        )
        assert count == 1
        assert await node.request("worker", "executions", timeout=10) == {"k": 1}


async def test_discovery_down_and_restarted(spawn, home):
    discovery = spawn("discovery", "--bind", "tcp://127.0.0.1:0")
    url = discovery.endpoint()
    worker = spawn("run", AGENT, "--name", "worker", "--discovery", url, "--lease-ms", "1500")
    worker.endpoint()
    async with Node("caller", discovery=url, mesh=home, heartbeat=HEARTBEAT, lease_ms=1500) as node:
        assert await node.request("worker", "pid", timeout=10) == worker.pid
        discovery.kill()
        discovery.popen.wait(10)
        for _ in range(20):  # peers that know each other keep talking
            assert await node.request("worker", "pid", timeout=10) == worker.pid
        # a typed error naming the dead discovery node, not a RequestTimeout: the lookup
        # gives up on its own, however long the request would have waited
        with pytest.raises(DiscoveryUnavailable, match=re.escape(url)):
            await node.request("stranger", "pid", timeout=60)
        restarted = spawn("discovery", "--bind", url)
        restarted.endpoint()

        async def repopulated():
            return {p.name for p in await node.peers()} >= {"worker", "caller"}

        assert await eventually(repopulated)
        assert await node.request("worker", "pid", timeout=10) == worker.pid


async def test_foreign_authority_is_refused_everywhere(spawn, agent, discovery, home, tmp_path):
    legit = agent("legit")
    foreign_home = tmp_path / "other-mesh"
    intruder = spawn(
        "run", "echo", "--name", "intruder", "--discovery", discovery, mesh=foreign_home
    )
    assert intruder.popen.wait(30) == 1
    stderr = intruder.popen.stderr.read()
    assert stderr.count("\n") == 1
    assert "another authority" in stderr
    # a foreign node calling the legit node directly gets a REJECT for its HELLO
    outsider = Authority.generate().issue_for(Identity.generate("outsider"), not_before=0)
    legit_identity = MeshDirectory(home).load_identity("legit")
    initiator = Initiator(
        outsider,
        Authority.generate().trust(),
        legit_identity.require_certificate(),
        SessionTable(),
        time.time_ns() // 1_000_000,
    )
    context = zmq.asyncio.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(legit.endpoint_line)
    try:
        await dealer.send_multipart(initiator.hello_frames())
        answer = await asyncio.wait_for(dealer.recv_multipart(), 10)
    finally:
        dealer.close(0)
        context.term()
    with pytest.raises(HandshakeRejected):
        initiator.receive(answer, time.time_ns() // 1_000_000)
    # and the legit side refuses a foreign node's certificate when it is the caller
    foreign = spawn("run", "echo", "--name", "foreign", "--discovery", "", mesh=foreign_home)
    foreign_endpoint = foreign.endpoint()
    async with Node("caller", discovery=discovery, mesh=home) as node:
        with pytest.raises(Unauthorized):
            await node._pool.open(foreign_endpoint, 10)


async def test_a_dead_node_leaves_the_directory_when_its_lease_runs_out(spawn, discovery, home):
    doomed = spawn("run", AGENT, "--name", "doomed", "--discovery", discovery, "--lease-ms", "400")
    doomed.endpoint()
    async with Node("watcher", discovery=discovery, mesh=home) as node:
        assert "doomed" in {p.name for p in await node.peers()}
        doomed.kill()  # no UNREGISTER: only the lease can remove it

        async def gone():
            return "doomed" not in {p.name for p in await node.peers()}

        assert await eventually(gone)
        await eventually(lambda: _true("doomed" not in node.known))  # the LEAVE event


async def _true(value: bool) -> bool:
    return value


async def test_cancelling_a_request_cancels_the_remote_handler(agent, discovery, home):
    agent("worker")
    async with Node("caller", discovery=discovery, mesh=home, heartbeat=HEARTBEAT) as node:
        pending = asyncio.create_task(node.request("worker", "slow", 60, timeout=60))
        await eventually(lambda: _equals(node.request("worker", "inflight", timeout=10), 1))
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert await eventually(lambda: _equals(node.request("worker", "inflight", timeout=10), 0))
