"""SyncNode's direct path (mesh.runtime.direct): a blocking request sealed, sent and answered
on the calling thread, on a lane of its own, under the Node's rules: typed errors, a
streamed answer collected under credit, a CANCEL when the caller gives up, PeerLost when the
peer falls silent, rekeying, and a fresh lane when the peer is replaced."""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import socket
import threading

import pytest

from mesh import (
    BadRequest,
    InvalidArgument,
    NoSuchMethod,
    PeerLost,
    PeerNotFound,
    RemoteError,
    ReplyTooLarge,
    RequestTimeout,
    SessionLimits,
    SyncNode,
)
from mesh.runtime.direct import MAX_LANES
from tests.conftest import wait_until

pytestmark = pytest.mark.slow  # sockets: not in --fast


@pytest.fixture
def pair(mesh):
    """A server and a client SyncNode that knows it (no discovery)."""
    with (
        SyncNode("server", discovery=[], mesh=mesh) as server,
        SyncNode("client", discovery=[], mesh=mesh, heartbeat=0.2) as client,
    ):
        client.node.add_peer(
            server.node.identity.require_certificate(),
            server.endpoint,
            cipher_suites=server.node.cipher_suites,
        )
        yield server, client


def lanes_to(client: SyncNode, peer: str) -> list:
    """The idle lanes to ``peer`` (between calls, every lane is idle)."""
    return client._lanes.idle_to(peer)


def test_requests_skip_the_loop_and_keep_their_types(pair):
    server, client = pair
    server.handler("upper", lambda text: text.upper())

    def refuse(body):
        raise InvalidArgument(f"no {body}")

    def crash(body):
        raise ZeroDivisionError("by zero")

    server.handler("refuse", refuse)
    server.handler("crash", crash)
    assert [client.request("server", "upper", w, timeout=10) for w in ("a", "b")] == ["A", "B"]
    with pytest.raises(BadRequest, match="no thanks") as refused:
        client.request("server", "refuse", "thanks", timeout=10)
    assert refused.value.remote_type == "InvalidArgument"
    with pytest.raises(RemoteError, match="by zero") as crashed:
        client.request("server", "crash", None, timeout=10)
    assert crashed.value.remote_type == "ZeroDivisionError"
    with pytest.raises(NoSuchMethod):
        client.request("server", "nothing", None, timeout=10)
    stats = client.stats()
    assert "server" not in stats["connections"]  # no loop connection: every call went direct
    assert stats["calls"]["server"]["outcomes"] == {
        "ok": 2,
        "BadRequest": 1,
        "RemoteError": 1,
        "NoSuchMethod": 1,
    }
    assert len(lanes_to(client, "server")) == 1  # one thread: one lane, reused


def test_a_streamed_answer_is_collected_granting_credit_as_it_comes(pair):
    server, client = pair

    async def count(body):
        for index in range(body):
            yield index

    server.handler("count", count)
    assert client.request("server", "count", 3000, timeout=30) == list(range(3000))
    assert server.node.drops == {}  # the callee never waited on credit it was not given


def test_giving_up_cancels_the_handler(pair):
    server, client = pair
    cancelled = threading.Event()

    async def forever(body):
        try:
            await asyncio.Event().wait()  # never ends by itself
        except asyncio.CancelledError:
            cancelled.set()
            raise

    server.handler("forever", forever)
    with pytest.raises(RequestTimeout):
        client.request("server", "forever", None, timeout=0.3)
    wait_until(cancelled.is_set)  # the CANCEL reached the handler
    server.handler("echo", lambda body: body)
    assert client.request("server", "echo", 7, timeout=10) == 7  # the lane goes on


def test_a_stopped_peer_is_lost_after_missed_heartbeats(spawn, discovery, home):
    agent = spawn("run", "tests.fixture_agent:FixtureAgent", "--name", "fixture",
                  "--discovery", discovery)  # fmt: skip
    agent.endpoint()
    with SyncNode("client", discovery=discovery, mesh=home, heartbeat=0.2) as client:
        assert [p.name for p in client.peers() if p.name == "fixture"]  # known: direct path
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            call = pool.submit(client.request, "fixture", "slow", 60)  # no timeout
            wait_until(lambda: client.request("fixture", "inflight", None, timeout=10) == 1)
            agent.kill(signal.SIGSTOP)  # alive, silent: nothing answers the pings
            try:
                with pytest.raises(PeerLost, match="missed 3 heartbeats"):
                    call.result(timeout=30)
            finally:
                agent.kill(signal.SIGCONT)
        assert lanes_to(client, "fixture") == []  # lost: every lane to it went, not only that one


def test_an_old_key_is_replaced_on_the_lane(pair):
    server, client = pair
    server.handler("echo", lambda body: body)
    assert client.request("server", "echo", 0, timeout=10) == 0
    (lane,) = lanes_to(client, "server")
    first = lane.session
    first.limits = SessionLimits(rekey_after_frames=3)
    assert [client.request("server", "echo", n, timeout=10) for n in range(10)] == list(range(10))
    assert lane.session is not first
    assert server.node.drops == {}


def test_a_replaced_peer_gets_a_fresh_lane(mesh):
    with SyncNode("client", discovery=[], mesh=mesh) as client:
        for generation in range(2):
            with SyncNode("server", discovery=[], mesh=mesh) as server:
                server.handler("gen", lambda body, *, g=generation: g)
                client.node.add_peer(server.node.identity.require_certificate(), server.endpoint)
                assert client.request("server", "gen", None, timeout=10) == generation
        assert len(lanes_to(client, "server")) == 1  # the first one's lane was dropped


def test_more_threads_than_lanes_share_them_and_the_loop(pair):
    server, client = pair
    release = threading.Event()

    def square(body):
        release.wait(30)
        return body * body

    server.handler("square", square)
    with concurrent.futures.ThreadPoolExecutor(MAX_LANES + 3) as pool:
        calls = [pool.submit(client.request, "server", "square", n, timeout=30) for n in range(20)]
        try:
            wait_until(lambda: client._lanes.open_lanes == MAX_LANES)  # all busy at once
        finally:
            release.set()
        assert [call.result() for call in calls] == [n * n for n in range(20)]
    assert len(lanes_to(client, "server")) == MAX_LANES  # never more than the pool holds


def test_closing_the_node_ends_calls_waiting_on_lanes(pair):
    server, client = pair
    started = threading.Event()

    async def hang(body):
        started.set()
        await asyncio.Event().wait()  # never ends by itself

    server.handler("hang", hang)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(client.request, "server", "hang", None)  # no timeout
        wait_until(started.is_set)
        client.close()
        with pytest.raises(PeerLost, match="node closed"):
            call.result(timeout=30)
    assert client._lanes.open_lanes == 0


def test_a_timeout_shorter_than_the_handshake_is_a_timeout(pair):
    server, client = pair
    server.handler("echo", lambda body: body)
    with pytest.raises(RequestTimeout):
        client.request("server", "echo", 1, timeout=0)
    assert client.request("server", "echo", 2, timeout=10) == 2  # the lane was kept


def test_a_streamed_answer_past_the_bounds_is_refused(pair):
    server, client = pair

    async def flood(body):
        for _ in range(20):
            yield b"x" * (1 << 20)

    server.handler("flood", flood)
    with pytest.raises(ReplyTooLarge):
        client.request("server", "flood", None, timeout=60)


def test_a_peer_restarted_at_the_same_address_costs_one_call(spawn, discovery, home):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    agent = ["run", "tests.fixture_agent:FixtureAgent", "--name", "fixture",
             "--discovery", discovery, "--bind", f"tcp://127.0.0.1:{port}"]  # fmt: skip
    first = spawn(*agent)
    first.endpoint()
    with SyncNode(
        "client", discovery=discovery, mesh=home, heartbeat=0.2, register=False
    ) as client:
        client.peers()  # known: the direct path
        with concurrent.futures.ThreadPoolExecutor(MAX_LANES) as pool:  # every lane opened
            pids = set(
                pool.map(lambda _: client.request("fixture", "pid", None, timeout=10), range(8))
            )
        assert pids == {first.pid}
        first.kill()
        first.popen.wait(10)
        second = spawn(*agent)
        second.endpoint()
        failures = 0
        for _ in range(5):
            try:
                assert client.request("fixture", "pid", None, timeout=10) == second.pid
                break
            except (PeerLost, PeerNotFound, RequestTimeout):
                failures += 1
        assert failures <= 1  # one lane found the old process gone; its siblings went too
