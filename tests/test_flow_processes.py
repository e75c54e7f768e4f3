"""Flow control across processes: bounded memory, no loss, throttled generators, fairness."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from mesh import FlowControlTimeout, NoCredit
from mesh.core.flow import Window
from mesh.runtime.node import Node
from tests.conftest import eventually, spent_stream_credit
from tests.processes import ROOT
from tests.test_live_processes import AGENT

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]
# The issue asks for 200 000 messages at 1 ms each (over three minutes); the suite runs a
# tenth of that by default. MESH_FLOW_MESSAGES=200000 runs the full measurement.
MESSAGES = int(os.environ.get("MESH_FLOW_MESSAGES", "20000"))


async def test_fast_producer_slow_consumer_memory_flat_nothing_lost(spawn, discovery, home):
    spawn("run", AGENT, "--name", "consumer", "--discovery", discovery).endpoint()
    env = {**os.environ, "MESH_HOME": str(home), "PYTHONPATH": str(ROOT)}
    producer = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "tests" / "flow_producer.py"),
        discovery,
        "consumer",
        str(MESSAGES),
        "0.001",
        env=env,
        stdout=subprocess.PIPE,
    )
    output, _ = await asyncio.wait_for(producer.communicate(), MESSAGES * 0.01 + 120)
    assert producer.returncode == 0
    report = json.loads(output)
    growth = report["rss_end_mb"] - report["rss_start_mb"]
    print(
        f"\nproducer: {MESSAGES} messages in {report['seconds']:.1f} s, "
        f"RSS {report['rss_start_mb']:.1f} -> {report['rss_end_mb']:.1f} MB"
    )
    assert growth < 20, f"producer memory grew by {growth:.1f} MB"
    # the producer could not outrun the consumer by more than the window: when its last
    # send went out, all but a window's worth had been consumed
    assert report["consumed_when_sent"] >= MESSAGES - Window().messages
    async with Node("checker", discovery=discovery, mesh=home, register=False) as node:

        async def all_consumed():
            done = await node.request("consumer", "consumed", timeout=10)
            return done if done["count"] >= MESSAGES else None

        done = await eventually(all_consumed, timeout=120)
        assert done == {"count": MESSAGES, "unique": MESSAGES, "in_order": True}


async def test_a_slow_reader_pauses_the_generator(spawn, discovery, home):
    spawn("run", AGENT, "--name", "model", "--discovery", discovery).endpoint()
    async with Node("reader", discovery=discovery, mesh=home) as node:
        stream = node.stream("model", "tokens", {"n": 10_000}, window=8)
        got = [await anext(stream) for _ in range(5)]
        # stop reading: the generator sends what it was granted, makes one more chunk and
        # waits; once it has had the chance to go further, it must not have
        credit = await eventually(lambda: spent_stream_credit(node, "model"))
        produced = await eventually(lambda: _at_least(node, "model", credit.granted_messages + 1))
        assert produced <= len(got) + 8 + 1, produced
        assert node.drops.get("no_credit", 0) == 0  # it sent nothing beyond its window
        rest = [chunk async for chunk in stream]
        assert got + rest == list(range(10_000))
        assert await node.request("model", "produced", timeout=10) == 10_000


async def test_a_slow_peer_does_not_slow_a_fast_one(spawn, discovery, home):
    for name in ("slow", "fast"):
        spawn("run", AGENT, "--name", name, "--discovery", discovery).endpoint()
    async with Node("producer", discovery=discovery, mesh=home, register=False) as node:
        flooded = 0

        async def flood_slow():
            nonlocal flooded
            for i in range(100_000):
                await node.send("slow", "consume", {"i": i, "delay": 60})
                flooded += 1

        flooding = asyncio.create_task(flood_slow())
        await eventually(lambda: _no_credit(node, "slow"))  # the slow peer's window is full
        flooded_before = flooded
        # The slow peer takes a minute per message, so it grants nothing back in this test:
        # had the calls to the fast peer queued behind it, none would be answered.
        answers = [await node.request("fast", "pid", timeout=10) for _ in range(200)]
        assert len(answers) == 200 and len(set(answers)) == 1
        assert not flooding.done()  # still blocked on the slow peer's credit, as it should be
        assert flooded == flooded_before  # no credit came back meanwhile
        flooding.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flooding


async def _at_least(node: Node, name: str, count: int) -> int | None:
    """What ``name``'s generator has produced, once that is at least ``count``."""
    produced = await node.request(name, "produced", timeout=10)
    return produced if produced >= count else None


async def _no_credit(node: Node, name: str) -> bool:
    connection = node._pool.connections.get(name)
    return connection is not None and not connection.credit.can_send()


async def test_no_credit_and_flow_control_timeout(spawn, discovery, home):
    spawn("run", AGENT, "--name", "slow", "--discovery", discovery).endpoint()
    async with Node("producer", discovery=discovery, mesh=home, register=False) as node:
        # a minute per message: no credit comes back while this test runs, however slowly
        for i in range(Window().messages):
            await node.send("slow", "consume", {"i": i, "delay": 60}, block=False)
        with pytest.raises(NoCredit):
            await node.send("slow", "consume", {"i": -1}, block=False)
        assert node.stats()["connections"]["slow"]["credit_messages"] == 0
        with pytest.raises(FlowControlTimeout):
            await node.send("slow", "consume", {"i": -1}, timeout=0.2)
        with pytest.raises(FlowControlTimeout):
            await node.request("slow", "pid", timeout=0.2)


async def test_credit_is_fresh_after_the_consumer_restarts(spawn, discovery, home):
    first = spawn(
        "run", AGENT, "--name", "consumer", "--discovery", discovery, "--heartbeat", "0.2"
    )
    first.endpoint()
    async with Node(
        "producer", discovery=discovery, mesh=home, register=False, heartbeat=0.2
    ) as node:
        for i in range(Window().messages):  # use up the whole window on a consumer...
            await node.send("consumer", "consume", {"i": i, "delay": 10}, block=False)
        first.kill()  # ...that dies with all of it unconsumed
        first.popen.wait(10)
        second = spawn("run", AGENT, "--name", "consumer", "--discovery", discovery)
        second.endpoint()

        async def delivered_again():
            await node.send("consumer", "consume", {"i": 0, "delay": 0}, timeout=5)
            return True

        assert await eventually(delivered_again, timeout=30)

        async def consumed_by_the_new_one():
            return (await node.request("consumer", "consumed", timeout=10))["count"] >= 1

        assert await eventually(consumed_by_the_new_one)
