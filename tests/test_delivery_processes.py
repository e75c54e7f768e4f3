"""Delivery guarantees across real processes: receivers and senders killed for real."""

from __future__ import annotations

import asyncio
import json

import pytest

from mesh.runtime.delivery import LANE_WINDOW
from mesh.runtime.node import Node
from tests.conftest import wait_until
from tests.processes import Process

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast

RECORDER = "tests.fixture_agent:Recorder"


@pytest.fixture
def record(tmp_path, monkeypatch):
    path = tmp_path / "record.txt"
    monkeypatch.setenv("MESH_TEST_RECORD", str(path))
    return path


def recorded(path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def receiver(spawn, discovery):
    process = spawn("run", RECORDER, "--name", "rx", "--discovery", discovery, "--heartbeat", "0.3")
    process.endpoint()
    return process


def sender(home, discovery, mode, first, count, deadline=60.0):
    args = (discovery, "rx", mode, str(first), str(count), str(deadline))
    return Process(*args, home=home, module="tests.delivery_sender")


def test_at_least_once_survives_the_receiver_killed_mid_stream(
    spawn, discovery, home, record, monkeypatch
):
    monkeypatch.setenv("MESH_TEST_DELAY", "0.005")
    first = receiver(spawn, discovery)
    tx = sender(home, discovery, "at_least_once", 0, 400)
    try:
        wait_until(lambda: len(recorded(record)) >= 100, timeout=60)
        first.kill()  # SIGKILL mid-stream: its acks in flight are lost
        first.popen.wait(10)
        receiver(spawn, discovery)
        tx.wait_line("settled", timeout=120)
        stats = json.loads(tx.lines(1, timeout=10)[0])
    finally:
        tx.close()
    got = recorded(record)
    assert set(got) == set(range(400))  # every message handled
    duplicates = len(got) - 400
    # Only messages handled before the kill whose ack never reached the sender can run
    # twice (the restarted receiver does not know they ran): at most one lane window.
    assert 0 <= duplicates <= LANE_WINDOW
    firsts = list(dict.fromkeys(got))
    assert firsts == sorted(firsts)  # in send order
    assert stats["dead_letters"] == {}


def test_durable_messages_survive_the_sender_killed_and_arrive_once_in_order(
    spawn, discovery, home, record, monkeypatch
):
    monkeypatch.setenv("MESH_TEST_DELAY", "0.01")
    receiver(spawn, discovery)
    tx = sender(home, discovery, "durable", 0, 300)
    try:
        tx.wait_line("queued 300", timeout=60)
        wait_until(lambda: len(recorded(record)) >= 30, timeout=60)
        tx.kill()  # SIGKILL: no clean shutdown, the outbox is all that is left
        tx.popen.wait(10)
    finally:
        tx.close()
    assert len(recorded(record)) < 300  # it really was cut off mid-way
    resumed = sender(home, discovery, "durable", 0, 0)  # nothing new: resume only
    try:
        resumed.wait_line("settled", timeout=120)
    finally:
        resumed.close()
    assert recorded(record) == list(range(300))  # exactly as sent, once, in order


@pytest.mark.asyncio
async def test_a_peer_that_never_returns_is_dead_lettered_in_time(spawn, discovery, home, record):
    gone = receiver(spawn, discovery)
    async with Node("tx", discovery=discovery, mesh=home, heartbeat=0.3) as node:
        await node.send("rx", "record", 0, delivery="at_least_once")
        await node.delivered(timeout=30)
        gone.kill()
        gone.popen.wait(10)
        await node.send("rx", "record", 1, delivery="at_least_once", deadline=2.0)
        await node.delivered(timeout=30)  # settled: given up, not retried on and on
        (letter,) = node.dead_letters.dead_letters()
    # given up because its deadline passed (not sooner) while the peer could not be reached
    assert letter["reason"] == "peer_gone" and letter["body"] == 1
    assert letter["dead_ms"] - letter["created_ms"] >= 2000
    listing = spawn("deadletters", "--node", "tx", "list").lines(5, timeout=30)
    assert "peer_gone" in listing[1] and "record" in listing[1]


@pytest.mark.asyncio
async def test_a_handler_that_always_fails_is_dead_lettered_after_max_attempts(
    spawn, discovery, home, record
):
    receiver(spawn, discovery)
    async with Node("tx", discovery=discovery, mesh=home) as node:
        await node.send("rx", "fail", 7, delivery="durable", max_attempts=3)
        await node.send("rx", "record", 8, delivery="durable")  # behind it, in order
        await asyncio.wait_for(node.delivered(), 60)
        (letter,) = node.dead_letters.dead_letters()
        stats = node.stats()["delivery"]
    assert letter["reason"] == "handler_failed" and letter["attempts"] == 3
    assert "RuntimeError: cannot take 7" in letter["detail"]
    assert stats["dead_letters"] == {"handler_failed": 1}
    assert recorded(record) == [8]  # the next one went through once the first was given up
