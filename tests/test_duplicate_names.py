"""A live name belongs to one process: a second process under it is refused, never a takeover.

The rule (README, protocol.md section 9): discovery answers CONFLICT to a REGISTER for a name
held by another process, whether that process has other keys or the same ones (two ``mesh
run echo --name echo-1`` share the stored identity). A process is told apart by what its
registration carries: ``endpoint`` and ``started_ms``. The holder keeps the name until it
unregisters or its lease runs out, or, under the same keys, until its connection to discovery
is gone (killed and started again). A refused process leaves the holder's entry alone.

A real discovery server and real nodes; real processes where a kill or a stop is the point
(the discovery server runs on the test's loop, so waits on a child run in a thread).
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from mesh import MeshDirectory, NameConflict, Node, PeerNotFound
from mesh.core.registry import Registry, parse_registration
from mesh.runtime.discovery import DiscoveryServer
from tests.conftest import eventually

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast

AGENT = "tests.fixture_agent:FixtureAgent"
LONG_LEASE_MS = "120000"  # outlives any test: only the rule under test can free the name


def _node(name: str, url: str, mesh: MeshDirectory, tag: str, **options) -> Node:
    node = Node(name, discovery=url, mesh=mesh, **options)

    async def who(body):
        return tag

    node.handler("who", who)
    return node


# ----------------------------------------------------------------- the rule, in the registry


def test_the_registry_gives_a_live_name_to_one_process(mesh):
    identity = mesh.identity("echo-1")  # one stored identity: the same keys in both processes
    cert = identity.require_certificate()
    registry = Registry()

    def registration(endpoint: str, started_ms: int, now_ms: int):
        body = {"endpoint": endpoint, "started_ms": started_ms, "lease_ms": 1000}
        return parse_registration(cert, body, now_ms)

    first = registration("tcp://127.0.0.1:5001", 100, 100)
    assert registry.register(first) == "JOIN"
    refreshed = registration("tcp://127.0.0.1:5001", 100, 400)  # the same process again
    assert registry.register(refreshed) == "UPDATE"
    second = registration("tcp://127.0.0.1:5002", 500, 500)
    with pytest.raises(NameConflict, match="live in another process"):
        registry.register(second)
    assert registry.holder(second) is refreshed
    assert registry.holder(refreshed) is None
    assert registry.unregister(cert, second.registration) is None  # not the second's to remove
    with pytest.raises(PeerNotFound):
        registry.renew(cert, 600, second.registration)
    assert registry.renew(cert, 600, first.registration).expires_ms == 1600
    assert registry.expire(1599) == []
    assert [e.endpoint for e in registry.expire(1600)] == ["tcp://127.0.0.1:5001"]
    assert registry.register(second) == "JOIN"  # the lease ran out: the name is free
    assert registry.unregister(cert, second.registration) is second


# ----------------------------------------------------------------- nodes and a discovery server


@pytest.mark.asyncio
async def test_a_second_node_under_a_live_name_is_refused_and_the_first_keeps_serving(mesh):
    async with DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=mesh) as discovery:
        url = discovery.endpoint
        async with (
            _node("echo-1", url, mesh, "first") as first,
            Node("caller", discovery=url, mesh=mesh, register=False) as caller,
        ):
            second = _node("echo-1", url, mesh, "second")
            try:
                with pytest.raises(NameConflict, match="live in another process") as refused:
                    await second.start()
            finally:
                await second.close()  # closing the refused node unregisters nothing of the first's
            assert first.endpoint in str(refused.value)  # it says who holds the name
            (entry,) = discovery.registry.lookup(name="echo-1")
            assert entry.registration == (first.endpoint, first.started_ms)
            assert discovery.stats()["drops"]["name_conflict"] == 1
            assert await caller.request("echo-1", "who", timeout=10) == "first"

            # the holder itself registers again (a new topic) and renews: still its name
            await first.publish("news.today", 1)
            (entry,) = discovery.registry.lookup(name="echo-1")
            assert entry.topics == ("news.today",)
            renewed_until = entry.expires_ms
            await eventually(lambda: entry.expires_ms > renewed_until, timeout=30)
            assert discovery.registry.lookup(name="echo-1") == [entry]

        assert discovery.registry.lookup(name="echo-1") == []  # the first unregistered
        async with (
            _node("echo-1", url, mesh, "third"),
            Node("caller", discovery=url, mesh=mesh, register=False) as caller,
        ):
            assert await caller.request("echo-1", "who", timeout=10) == "third"


# ----------------------------------------------------------------- processes


@pytest.mark.asyncio
async def test_a_process_killed_and_started_again_gets_its_name_back_at_once(spawn, home):
    """SIGKILL: no UNREGISTER, the lease runs for two minutes, but the connection to
    discovery closed with the process, so the new one under the same keys takes the name."""
    async with DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=home) as discovery:
        url = discovery.endpoint
        agent = ("run", AGENT, "--name", "worker", "--discovery", url, "--lease-ms", LONG_LEASE_MS)
        first = spawn(*agent)
        await asyncio.to_thread(first.endpoint)
        first.kill()
        await asyncio.to_thread(first.popen.wait, 10)
        second = spawn(*agent)
        await asyncio.to_thread(second.endpoint)  # fails if it was refused
        async with Node("caller", discovery=url, mesh=home, register=False) as caller:
            assert await caller.request("worker", "pid", timeout=10) == second.pid


@pytest.mark.asyncio
async def test_a_stopped_process_keeps_its_name_until_its_lease_runs_out(spawn, home):
    """SIGSTOP: alive but silent, its connection open. A newcomer is refused while the lease
    runs; once it ran out the name is free; and the stopped one, continued, does not get it
    back (its RENEW names its own registration, which is gone)."""
    async with DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=home) as discovery:
        url = discovery.endpoint
        agent = ("run", AGENT, "--name", "worker", "--discovery", url)
        stopped = spawn(*agent, "--lease-ms", LONG_LEASE_MS)
        await asyncio.to_thread(stopped.endpoint)
        os.kill(stopped.pid, signal.SIGSTOP)
        try:
            refused = spawn(*agent)
            assert await asyncio.to_thread(refused.popen.wait, 30) != 0
            assert "live in another process" in refused.popen.stderr.read()
        finally:
            os.kill(stopped.pid, signal.SIGCONT)
        (entry,) = discovery.registry.lookup(name="worker")
        assert entry.endpoint == stopped.endpoint_line

        stopped.kill()  # done with: its name passes at once to the next one (see above)
        await asyncio.to_thread(stopped.popen.wait, 10)
        short = spawn(*agent, "--lease-ms", "1000")
        await asyncio.to_thread(short.endpoint)
        os.kill(short.pid, signal.SIGSTOP)
        try:
            await eventually(lambda: discovery.registry.lookup(name="worker") == [], timeout=30)
            newcomer = spawn(*agent, "--lease-ms", "1000")
            await asyncio.to_thread(newcomer.endpoint)
        finally:
            os.kill(short.pid, signal.SIGCONT)
        conflicts = discovery.stats()["drops"].get("name_conflict", 0)
        await eventually(
            lambda: discovery.stats()["drops"].get("name_conflict", 0) > conflicts, timeout=30
        )  # the continued one tried to register again, and was refused
        (entry,) = discovery.registry.lookup(name="worker")
        assert entry.endpoint == newcomer.endpoint_line
        async with Node("caller", discovery=url, mesh=home, register=False) as caller:
            assert await caller.request("worker", "pid", timeout=10) == newcomer.pid
