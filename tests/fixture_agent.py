"""An agent for the process tests, run with ``mesh run tests.fixture_agent:FixtureAgent``."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from agents import Agent, method
from mesh import CallContext
from mesh.runtime.node import Node


class FixtureAgent:
    """Handlers that let a test observe what happened inside the callee process."""

    def __init__(self, node: Node) -> None:
        self.received: list[Any] = []
        self.runs: dict[str, int] = {}
        self.active_streams = 0
        self.in_flight = 0
        self.consume_lock = asyncio.Lock()
        self.consumed_ids: list[int] = []
        self.produced_count = 0
        for name in (
            "echo",
            "pid",
            "record",
            "recorded",
            "slow",
            "count",
            "boom",
            "once",
            "executions",
            "active",
            "blocking",
            "call_peer",
            "inflight",
            "consume",
            "consumed",
            "tokens",
            "produced",
        ):
            node.handler(name, getattr(self, name))
        self.node = node

    async def echo(self, body: Any) -> Any:
        return body

    async def pid(self, body: Any) -> int:
        return os.getpid()

    async def record(self, body: Any) -> None:
        self.received.append(body)

    async def recorded(self, body: Any) -> list[Any]:
        return self.received

    async def slow(self, body: Any) -> int:
        self.in_flight += 1
        try:
            await asyncio.sleep(float(body))
        finally:
            self.in_flight -= 1
        return os.getpid()

    async def inflight(self, body: Any) -> int:
        return self.in_flight

    async def count(self, body: dict[str, Any]) -> Any:
        self.active_streams += 1
        try:
            for index in range(int(body["n"])):
                await asyncio.sleep(float(body.get("delay", 0)))
                yield index
        finally:
            self.active_streams -= 1

    async def active(self, body: Any) -> int:
        return self.active_streams

    async def boom(self, body: Any) -> None:
        raise ValueError(f"bad input {body!r}")

    async def once(self, body: dict[str, Any]) -> int:
        key = str(body["key"])
        self.runs[key] = self.runs.get(key, 0) + 1
        await asyncio.sleep(float(body["sleep"]))
        return self.runs[key]

    async def executions(self, body: Any) -> dict[str, int]:
        return self.runs

    def blocking(self, body: Any) -> str:
        import time

        time.sleep(float(body))
        return "done"

    async def call_peer(self, body: dict[str, Any]) -> Any:
        return await self.node.request(body["peer"], body["method"], body.get("body"), timeout=5)

    async def consume(self, body: dict[str, Any]) -> None:
        """A slow application: one message at a time, ``delay`` seconds each."""
        async with self.consume_lock:
            await asyncio.sleep(float(body.get("delay", 0.001)))
            self.consumed_ids.append(int(body["i"]))

    async def consumed(self, body: Any) -> dict[str, int]:
        ids = self.consumed_ids
        return {"count": len(ids), "unique": len(set(ids)), "in_order": ids == sorted(ids)}

    async def tokens(self, body: dict[str, Any]) -> Any:
        """A fast generator (a small model emitting tokens): counts what it produced."""
        for index in range(int(body["n"])):
            self.produced_count += 1
            yield index
            await asyncio.sleep(0)

    async def produced(self, body: Any) -> int:
        return self.produced_count


class Ticker:
    """A registered publisher for the topic process tests: ``publish`` sends ``count``
    messages ``{"i": 0..count-1}`` on ``topic`` and returns the last sequence number."""

    def __init__(self, node: Node) -> None:
        self.node = node
        node.handler("publish", self.publish)

    async def publish(self, body: Any) -> int:
        seq = 0
        for i in range(body["count"]):
            seq = await self.node.publish(body["topic"], {"i": i})
        return seq


class Recorder:
    """A receiver for the delivery tests: ``record`` appends each body to the file named by
    ``$MESH_TEST_RECORD`` (flushed, so a kill -9 loses nothing written), after an optional
    ``$MESH_TEST_DELAY`` seconds; ``fail`` always raises."""

    def __init__(self, node: Node) -> None:
        self.path = os.environ["MESH_TEST_RECORD"]
        self.delay = float(os.environ.get("MESH_TEST_DELAY", "0"))
        node.handler("record", self.record)
        node.handler("fail", self.fail)

    async def record(self, body: Any) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        with open(self.path, "a") as out:
            out.write(f"{body}\n")

    async def fail(self, body: Any) -> None:
        raise RuntimeError(f"cannot take {body}")


class Holder(Agent):
    """An ``agents.Agent`` whose ``hold`` never ends by itself: a drain waits for it (the
    tests of what cuts a drain short)."""

    description = "Holds every request it gets until it is stopped."

    holding_now = 0

    @method("Wait until the agent stops.")
    async def hold(self, body: Any, ctx: CallContext) -> None:
        self.holding_now += 1
        await asyncio.Event().wait()

    @method("How many requests hold now.")
    async def held(self, body: Any, ctx: CallContext) -> int:
        return self.holding_now
