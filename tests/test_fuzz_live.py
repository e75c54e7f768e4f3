"""Fuzzing every inbound path of live nodes: a node's ROUTER, its SUB, the discovery node.

Frames are valid envelopes (sealed by a certified insider, so they get past every cheap
check) mutated by hypothesis, plus random multipart junk. For each one the target must count
exactly one drop, log no error, and keep serving valid traffic, checked after every example.
A volume run then shows memory flat. ``MESH_FUZZ_EXAMPLES`` (default 150 per path) sets the
depth: CI runs the default, ``MESH_FUZZ_EXAMPLES=20000`` is the long run on demand.
"""

from __future__ import annotations

import logging
import os
import random
import resource
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zmq.utils.monitor import recv_monitor_message

from mesh import MeshDirectory
from mesh.core.codec import Message
from mesh.core.topic_frame import seal_publish
from mesh.core.wire import PROTOCOL_VERSION, FrameType, Kind
from mesh.runtime.discovery import DiscoveryServer
from mesh.runtime.node import Node
from mesh.runtime.stamps import now_ms
from tests.hostile import LoopThread, RawPeer, until
from tests.processes import ROOT

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast

EXAMPLES = int(os.environ.get("MESH_FUZZ_EXAMPLES", "150"))
VOLUME = max(3000, EXAMPLES * 10)
TOPIC = "fuzz.t"
WATCHED_LOGGERS = ("mesh", "asyncio")
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class ErrorLog(logging.Handler):
    """Every ERROR (or worse) the mesh logs: an unhandled exception shows up here."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Arena:
    loop: LoopThread
    victim: Node
    discovery: DiscoveryServer
    publisher: Node
    mallory: RawPeer  # a certified insider, at the victim's ROUTER
    at_discovery: RawPeer  # the same insider, at the discovery node
    received: list[Any]
    errors: ErrorLog

    def drops(self, target: Any) -> int:
        return self.loop.call(lambda: sum(target.drops.values()))


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    mesh = MeshDirectory(tmp_path_factory.mktemp("fuzz") / "mesh")
    mesh.create()
    errors = ErrorLog()
    for logger in WATCHED_LOGGERS:  # asyncio's: a task's exception nobody retrieved
        logging.getLogger(logger).addHandler(errors)
    loop = LoopThread()
    received: list[Any] = []

    async def start() -> tuple[DiscoveryServer, Node, Node]:
        discovery = DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=mesh)
        await discovery.start()
        victim = Node("victim", mesh=mesh, discovery=discovery.endpoint)
        victim.handler("echo", _echo)
        await victim.start()
        publisher = Node("publisher", mesh=mesh, discovery=discovery.endpoint)
        await publisher.start()
        subscription = await victim.subscribe(TOPIC)
        await publisher.publish(TOPIC, "hello")
        received.append((await subscription.get()).body)

        async def collect() -> None:
            async for message in subscription:
                received.append(message.body)

        loop.loop.create_task(collect())
        return discovery, victim, publisher

    discovery, victim, publisher = loop.run(start())
    trust = mesh.trust()
    mallory = RawPeer(
        victim.endpoint, mesh.identity("mallory"), trust, victim.identity.require_certificate()
    )
    mallory.handshake()
    at_discovery = RawPeer(
        discovery.endpoint,
        mesh.identity("mallory"),
        trust,
        discovery.identity.require_certificate(),
    )
    at_discovery.handshake()
    yield Arena(loop, victim, discovery, publisher, mallory, at_discovery, received, errors)
    mallory.close()
    at_discovery.close()

    async def stop() -> None:
        await publisher.close()
        await victim.close()
        await discovery.close()

    loop.run(stop())
    loop.stop()
    for logger in WATCHED_LOGGERS:
        logging.getLogger(logger).removeHandler(errors)


async def _echo(body: Any) -> Any:
    return body


# ------------------------------------------------------------------ mutations


@st.composite
def mutated(draw: st.DrawFn, valid: list[bytes]) -> list[bytes]:
    """``valid`` (a message's frames) changed the ways a wire or an attacker changes bytes."""
    frames = [bytearray(f) for f in valid]
    index = draw(st.integers(0, len(frames) - 1))
    frame = frames[index]
    how = draw(
        st.sampled_from(
            ["flip", "bytes", "truncate", "extend", "version", "type", "drop", "add", "same"]
        )
    )
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            position = draw(st.integers(0, len(frame) - 1))
            frame[position] ^= 1 << draw(st.integers(0, 7))
    elif how == "bytes":
        position = draw(st.integers(0, len(frame) - 1))
        chunk = draw(st.binary(min_size=1, max_size=32))
        frame[position : position + len(chunk)] = chunk
    elif how == "truncate":
        del frame[draw(st.integers(0, len(frame) - 1)) :]
    elif how == "extend":
        frame.extend(draw(st.binary(min_size=1, max_size=64)))
    elif how == "version" and frame:
        frame[0] = draw(st.integers(0, 255).filter(lambda v: v != PROTOCOL_VERSION))
    elif how == "type" and len(frame) > 1:
        frame[1] = draw(st.integers(0, 255))
    elif how == "drop" and len(frames) > 1:
        del frames[index]
    elif how == "add":
        frames.insert(draw(st.integers(0, len(frames))), bytearray(draw(st.binary(max_size=64))))
    return [bytes(f) for f in frames]  # "same": a replay of a frame already accepted


junk = st.lists(st.binary(max_size=200), min_size=1, max_size=6)


def _answered_not_dropped(frames: list[bytes]) -> bool:
    """A bare CERT_REQUEST is a valid question (the node answers with its certificate)."""
    return frames == [bytes([PROTOCOL_VERSION, FrameType.CERT_REQUEST])]


def _expect_one_drop(
    arena: Arena, target: Any, frames: list[bytes], send: Callable[[list[bytes]], None]
) -> None:
    before = arena.drops(target)
    send(frames)
    expected = before if _answered_not_dropped(frames) else before + 1
    if expected > before:
        until(lambda: arena.drops(target) >= expected)
    assert arena.drops(target) == expected, frames


# ------------------------------------------------------------------ the victim's ROUTER


@pytest.fixture(scope="module")
def router_material(arena):
    """A valid request and a valid HELLO, each already accepted once (so a copy is a replay)."""
    _, request = arena.mallory.sealed_request({"n": 1})
    arena.mallory.send(request)
    return [bytes(f) for f in request], arena.mallory.spent_hello()


@FUZZ
@given(data=st.data())
def test_the_router_counts_every_bad_frame_and_keeps_serving(arena, router_material, data):
    request, hello = router_material
    frames = data.draw(
        st.one_of(mutated(request), mutated(hello), junk, junk.map(lambda j: request + j))
    )
    _expect_one_drop(arena, arena.victim, frames, arena.mallory.send)
    assert arena.mallory.request(frames[0][:8]) == frames[0][:8]  # still serving
    assert arena.errors.records == []


# ------------------------------------------------------------------ the victim's SUB


@pytest.fixture(scope="module")
def sub_material(arena):
    """A valid topic message (delivered once) and a way to put frames on the publisher's
    PUB socket: the subscriber's SUB is connected there."""

    publisher = arena.publisher._topics.publisher  # type: ignore[union-attr]

    def publish_raw(frames: list[bytes]) -> None:
        arena.loop.call(lambda: publisher._socket.send_multipart(frames))

    # the publisher's own last message again, byte-valid: a replay, and the base to mutate
    last = publisher._seq[TOPIC]
    message = Message(Kind.PUBLISH, 1, name=TOPIC, body="again?")
    valid = seal_publish(arena.publisher.identity, publisher.keys[TOPIC], last, now_ms(), [message])
    return [bytes(f) for f in valid], publish_raw


@FUZZ
@given(data=st.data())
def test_the_sub_counts_every_bad_frame_and_keeps_receiving(arena, sub_material, data):
    valid, publish_raw = sub_material
    frames = data.draw(mutated(valid))
    prefix = valid[0][:18]  # the SUB filters on it: anything else never reaches Python
    if frames[0][:18] != prefix:
        frames[0] = prefix + frames[0][18:]
    _expect_one_drop(arena, arena.victim, frames, publish_raw)
    count = len(arena.received)
    arena.loop.run(arena.publisher.publish(TOPIC, count))
    until(lambda: arena.received[-1] == count)  # still receiving, nothing garbled delivered
    assert arena.errors.records == []


# ------------------------------------------------------------------ the discovery node


@pytest.fixture(scope="module")
def discovery_material(arena):
    peer = arena.at_discovery
    _, lookup = peer.sealed_request({}, "", Kind.LOOKUP)
    peer.send(lookup)
    return [bytes(f) for f in lookup], peer.spent_hello()


@FUZZ
@given(data=st.data())
def test_discovery_counts_every_bad_frame_and_keeps_answering(arena, discovery_material, data):
    lookup, hello = discovery_material
    frames = data.draw(st.one_of(mutated(lookup), mutated(hello), junk))
    _expect_one_drop(arena, arena.discovery, frames, arena.at_discovery.send)
    names = {p.name for p in arena.loop.run(arena.victim.peers())}
    assert {"victim", "publisher"} <= names  # the directory still answers
    assert arena.errors.records == []


# ------------------------------------------------------------------ volume: memory flat


def test_a_flood_of_junk_leaves_memory_flat_and_is_all_counted(arena, router_material):
    request, hello = router_material
    rng = random.Random(1)

    def junk_frames() -> list[bytes]:
        base = bytearray(rng.choice((request, hello))[0])
        for _ in range(rng.randint(1, 4)):
            base[rng.randrange(len(base))] ^= 1 << rng.randrange(8)
        return [bytes(base)]

    def flood(count: int) -> None:
        before = arena.drops(arena.victim)
        for _ in range(count):
            arena.mallory.send(junk_frames())
        until(lambda: arena.drops(arena.victim) >= before + count, 120)
        assert arena.drops(arena.victim) == before + count

    flood(VOLUME // 3)  # warm: caches and allocator reach their steady state
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    flood(VOLUME)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 16 * 1024, f"peak memory grew {grown_kib} KiB over {VOLUME} junk frames"
    assert arena.mallory.request("after") == "after"
    assert arena.errors.records == []


def test_the_coverage_guided_envelope_fuzzer_finds_nothing(tmp_path):
    """scripts/fuzz-envelope (atheris) for a bounded number of runs: any exception other than
    a ProtocolError would stop it with a non-zero status."""
    pytest.importorskip("atheris", reason="atheris installs on x86-64 CPython <= 3.11")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fuzz-envelope"), f"-runs={VOLUME * 20}"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "MESH_FUZZ_CORPUS": str(tmp_path / "corpus")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Done" in done.stderr


def test_zmq_drops_an_oversized_frame_before_python_sees_it(arena):
    """ZeroMQ's MAXMSGSIZE closes the connection at the size header: the node never buffers
    it, and other peers are unaffected."""
    from mesh.runtime.sockets import MAX_ZMQ_MESSAGE

    attacker = zmq.Context.instance().socket(zmq.DEALER)
    attacker.setsockopt(zmq.LINGER, 0)
    monitor = attacker.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    attacker.connect(arena.victim.endpoint)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    huge = bytearray(MAX_ZMQ_MESSAGE + 1)
    drops_before = arena.drops(arena.victim)
    try:
        attacker.send(huge, copy=False)
        del huge
        # the node's libzmq read the size header and hung up: the attacker sees it
        assert monitor.poll(60_000), "the node never closed the oversized connection"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        assert arena.mallory.request("still here") == "still here"
    finally:
        attacker.disable_monitor()
        monitor.close(0)
        attacker.close()
    assert arena.drops(arena.victim) == drops_before  # it never reached Python
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 300 * 1024 + 64 * 1024  # the attacker's own buffer, not a second copy
    assert arena.errors.records == []
