"""Topics across real OS processes: ``mesh subscribe`` and ``mesh publish`` from the shell, a
registered publisher killed and restarted, strangers, and forgers."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
import zmq

from mesh import MeshDirectory, MeshError
from mesh.runtime.node import STATS_METHOD, Node
from tests.conftest import eventually
from tests.processes import Process
from tests.test_topics_inprocess import forge

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast

SUBSCRIBERS = 20
MESSAGES = 200
TICKER = "tests.fixture_agent:Ticker"


def subscriber(spawn, discovery: str, pattern: str, count: int) -> Process:
    process = spawn("subscribe", pattern, "--discovery", discovery, "--count", str(count))
    process.wait_line("subscribed to", stderr=True)
    return process


def received(process: Process, count: int) -> list[dict]:
    return [json.loads(line) for line in process.lines(count, timeout=120)]


def test_fan_out_to_twenty_subscribers_from_a_short_lived_publisher(spawn, discovery):
    """Twenty subscriber processes; then a fresh ``mesh publish`` process that lives only
    for its messages. It learns the subscribers from discovery and waits until they are
    connected, so each one receives every message, in order."""
    subscribers = [subscriber(spawn, discovery, "fan.>", MESSAGES) for _ in range(SUBSCRIBERS)]
    publisher = spawn(
        "publish", "fan.out", '{"x": 1}', "--count", str(MESSAGES), "--discovery", discovery
    )
    assert publisher.popen.wait(120) == 0
    assert "did not confirm" not in publisher.popen.stderr.read()
    for process in subscribers:
        messages = received(process, MESSAGES)
        assert [m["seq"] for m in messages] == list(range(1, MESSAGES + 1))
        assert {(m["topic"], json.dumps(m["body"])) for m in messages} == {("fan.out", '{"x": 1}')}
        assert len({m["publisher"] for m in messages}) == 1
        assert process.popen.wait(30) == 0
        assert "lost" not in process.popen.stderr.read()


@pytest.mark.asyncio
async def test_late_subscriber_and_restarted_publisher(spawn, discovery, home):
    """A subscriber that starts after the publisher gets everything published once it is
    subscribed; when the publisher is killed and started again (new keys, new port), the
    subscriber is offered the new key and receives the new publisher's messages too."""
    ticker = spawn("run", TICKER, "--name", "ticker", "--discovery", discovery)
    ticker.endpoint()
    async with Node("driver", discovery=discovery, mesh=home, register=False) as driver:

        async def publish(count: int) -> int:
            body = {"topic": "ticks", "count": count}
            return await driver.request("ticker", "publish", body, timeout=30)

        assert await publish(50) == 50  # nobody listens yet
        late = subscriber(spawn, discovery, "ticks", 80)
        assert await publish(50) == 100
        assert [m["body"]["i"] for m in received(late, 50)] == list(range(50))

        ticker.kill()
        ticker.popen.wait(10)
        restarted = spawn("run", TICKER, "--name", "ticker", "--discovery", discovery)
        restarted.endpoint()
        for attempt in range(50):  # the driver's old connection dies with the old process
            try:
                assert await publish(30) == 30
                break
            except MeshError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.2)
        messages = received(late, 30)
        assert [(m["seq"], m["body"]["i"]) for m in messages] == [(i + 1, i) for i in range(30)]
        assert late.popen.wait(30) == 0
        assert "lost" not in late.popen.stderr.read()


@pytest.mark.asyncio
async def test_a_stranger_gets_nothing_readable(spawn, discovery, home, tmp_path):
    """A node certified by another authority cannot subscribe (one-line error, exit 1); a
    raw SUB on the publisher's PUB sees only ciphertext."""
    other = MeshDirectory(tmp_path / "other")
    other.create()
    stranger = spawn("subscribe", "ticks", "--discovery", discovery, mesh=other.path)
    assert stranger.popen.wait(30) == 1
    error = stranger.popen.stderr.read()
    assert error.startswith("mesh: error:") and "Traceback" not in error

    ticker = spawn("run", TICKER, "--name", "ticker", "--discovery", discovery)
    ticker.endpoint()
    async with Node("driver", discovery=discovery, mesh=home, register=False) as driver:
        [entry] = [p for p in await driver.peers() if p.name == "ticker"]
        context = zmq.Context.instance()
        eavesdropper = context.socket(zmq.SUB)
        eavesdropper.setsockopt(zmq.LINGER, 0)
        eavesdropper.setsockopt(zmq.SUBSCRIBE, b"")
        eavesdropper.connect(entry.topics_endpoint)
        frames: list[bytes] = []

        def capture() -> int:
            with contextlib.suppress(zmq.Again):
                while True:
                    frames.append(eavesdropper.recv(zmq.NOBLOCK))
            return len(frames)

        async def sent() -> int:  # every frame on the ticker's PUB: messages and probes
            figures = (await driver.request("ticker", STATS_METHOD, timeout=30))["topics"]
            return figures["published"] + figures["probes"]

        async def joined() -> int:
            await driver.request("ticker", "publish", {"topic": "noise", "count": 1}, timeout=30)
            return capture()

        try:
            await eventually(joined)  # the eavesdropper's own slow join: it has a frame
            # from here on it receives every frame the PUB sends
            before, captured_before = await sent(), len(frames)
            listener = subscriber(spawn, discovery, "ticks", 5)
            await driver.request("ticker", "publish", {"topic": "ticks", "count": 5}, timeout=30)
            assert [m["body"]["i"] for m in received(listener, 5)] == list(range(5))
            expected = await sent() - before
            assert expected >= 5
            await eventually(lambda: capture() - captured_before >= expected)
            for frame in frames:
                assert b"ticks" not in frame and b'"i"' not in frame and b"\xa1i" not in frame
        finally:
            eavesdropper.close()


@pytest.mark.asyncio
async def test_forged_messages_after_the_publisher_dies_are_dropped(spawn, discovery, home):
    """The publisher process is killed and another member, who holds the topic key, binds
    its port and publishes in its name: the subscriber's SUB reconnects to the impostor,
    and every forged frame fails the signature check, counted, never delivered."""
    ticker = spawn("run", TICKER, "--name", "ticker", "--discovery", discovery)
    ticker.endpoint()
    async with (
        Node("sub", discovery=discovery, mesh=home) as sub,
        Node("mallory", discovery=discovery, mesh=home) as mallory,
    ):
        subscription = await sub.subscribe("ticks")
        await mallory.subscribe("ticks")
        await sub.request("ticker", "publish", {"topic": "ticks", "count": 3}, timeout=30)
        assert [(await subscription.get(10)).body["i"] for _ in range(3)] == [0, 1, 2]
        [feed] = mallory._topics.feeds.values()
        key = feed.by_topic["ticks"].key
        ticker.kill()
        ticker.popen.wait(10)
        impostor = zmq.Context.instance().socket(zmq.PUB)
        impostor.setsockopt(zmq.LINGER, 0)
        try:
            impostor.bind(feed.endpoint)
            frame = forge(mallory.identity, feed.publisher.node_id, key, seq=4, body="forged")
            async with asyncio.timeout(20):
                while sub.stats()["drops"].get("topic_bad_signature", 0) < 3:
                    impostor.send(frame[0])
                    await asyncio.sleep(0.05)
            assert subscription.pending == 0
        finally:
            impostor.close()
