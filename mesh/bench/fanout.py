"""Topic fan-out for ``mesh bench``: publish-to-receive latency to 1, 10 and 50 subscribers.

The publisher runs in the bench process; subscribers run in a few child processes (one per
core at most, each holding its share of subscribers on one event loop), the same layout for
the mesh (signed, sealed topics through a discovery node) and for raw pyzmq PUB/SUB, so the
ratio compares per-message work, not process layouts. Each message carries the publisher's
``time.monotonic_ns()`` (system-wide on Linux, so comparable across processes on one host)
and each subscriber records receipt minus that stamp. Messages go out on a fixed schedule
slow enough for every subscriber's CPU to keep up on a small machine: the figure is the
latency of a hop, not of a queue.

Child protocol, one line each on stdout: ``ready`` (subscribed), ``warm`` (every subscriber
here has received something), then one JSON line ``{"histogram": {...}, "received": n}``
(:meth:`~mesh.core.histogram.Histogram.to_json`) after every subscriber here saw the end marker.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from ..core.errors import InvalidArgument
from ..core.histogram import Histogram
from .scenarios import Result

TOPIC = "bench.fanout"
WARM, MEASURE, END = range(3)
STAMP = struct.Struct(">qB")
PAD = b"x" * (64 - STAMP.size)  # raw frames are 64 B; the mesh body holds the same
INTERVAL_S = 0.001
INTERVAL_PER_SUBSCRIBER_S = 0.0002  # the mesh verifies and opens once per subscriber
STEP_TIMEOUT_S = 120.0
SETTLE_S = 0.2  # after the warm-up, for every queue to empty
ROOT = Path(__file__).resolve().parent.parent


def interval_s(subscribers: int) -> float:
    return max(INTERVAL_S, subscribers * INTERVAL_PER_SUBSCRIBER_S)


def groups(subscribers: int) -> list[int]:
    """How many subscribers each child process holds."""
    processes = min(subscribers, max(2, os.cpu_count() or 2))
    return [subscribers // processes + (i < subscribers % processes) for i in range(processes)]


class FanOut:
    """Runs the fan-out scenario for one system; subscriber processes come and go with it."""

    def __init__(self, home: str, discovery: str) -> None:
        self.home = home
        self.discovery = discovery

    async def run(self, system: str, subscribers: int, count: int) -> Result:
        params = {"size": 64, "subscribers": subscribers, "count": count}
        result = Result(f"fan-out to {subscribers}", system, params)
        async with asyncio.timeout(STEP_TIMEOUT_S):
            if system == "mesh":
                delivered = await self._mesh(subscribers, count, result)
            else:
                delivered = await self._raw(subscribers, count, result)
        params["delivered"] = delivered
        return result

    async def _raw(self, subscribers: int, count: int, result: Result) -> int:
        socket = zmq.asyncio.Context.instance().socket(zmq.PUB)
        socket.setsockopt(zmq.SNDHWM, 0)
        socket.setsockopt(zmq.LINGER, 0)
        port = socket.bind_to_random_port("tcp://127.0.0.1")

        async def send(phase: int) -> None:
            await socket.send(STAMP.pack(time.monotonic_ns(), phase) + PAD)

        try:
            args = [["raw", f"tcp://127.0.0.1:{port}", str(n)] for n in groups(subscribers)]
            return await _drive(args, send, subscribers, count, result)
        finally:
            socket.close()

    async def _mesh(self, subscribers: int, count: int, result: Result) -> int:
        from ..runtime.node import Node

        args, first = [], 0
        for n in groups(subscribers):
            args.append(["mesh", self.discovery, str(n), str(first), self.home])
            first += n
        async with Node("bench-publisher", mesh=self.home, discovery=self.discovery) as node:

            async def send(phase: int) -> None:
                await node.publish(TOPIC, {"t": time.monotonic_ns(), "p": phase, "x": PAD[:40]})

            return await _drive(args, send, subscribers, count, result)


async def _drive(
    args: list[list[str]],
    send: Callable[[int], Awaitable[None]],
    subscribers: int,
    count: int,
    result: Result,
) -> int:
    """Start the children, warm up until every subscriber hears us, measure, end, collect."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mesh.bench.fanout", *a, stdout=asyncio.subprocess.PIPE, env=env
        )
        for a in args
    ]
    try:
        for child in children:
            await _expect(child, "ready")
        pause = interval_s(subscribers)
        warm = asyncio.gather(*(_expect(child, "warm") for child in children))
        while not warm.done():  # also covers PUB/SUB's slow joiners; paced, so no backlog
            await send(WARM)
            await asyncio.sleep(pause)
        await warm
        await asyncio.sleep(SETTLE_S)
        started = time.perf_counter()
        for index in range(count):
            await send(MEASURE)
            await asyncio.sleep(max(0.0, started + (index + 1) * pause - time.perf_counter()))
        result.seconds = time.perf_counter() - started
        reports = asyncio.gather(*(_report(child) for child in children))
        while not reports.done():
            await send(END)
            await asyncio.sleep(INTERVAL_S * 5)
        delivered = 0
        for histogram, received in await reports:
            result.histogram.merge(histogram)
            delivered += received
        result.messages = delivered
        result.payload_bytes = 64 * delivered
        return delivered
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
            await child.wait()


async def _expect(child: asyncio.subprocess.Process, word: str) -> None:
    assert child.stdout is not None
    line = (await child.stdout.readline()).decode().strip()
    if line != word:
        raise InvalidArgument(f"a fan-out subscriber did not start (said {line!r})")


async def _report(child: asyncio.subprocess.Process) -> tuple[Histogram, int]:
    assert child.stdout is not None
    line = await child.stdout.readline()
    if not line:
        raise InvalidArgument("a fan-out subscriber ended without reporting")
    found = json.loads(line)
    return Histogram.from_json(found["histogram"]), found["received"]


# ---------------------------------------------------------------------------- child side


class Tally:
    """What one child's subscribers saw."""

    def __init__(self, subscribers: int) -> None:
        self.latencies = Histogram()
        self.unheard = subscribers  # subscribers that have not received anything yet
        self.running = subscribers

    def heard(self) -> None:
        self.unheard -= 1
        if self.unheard == 0:
            print("warm", flush=True)

    def take(self, sent_ns: int, phase: int, first: bool) -> bool:
        """Record one message; False once the subscriber should stop."""
        now = time.monotonic_ns()
        if first:
            self.heard()
        if phase == MEASURE:
            self.latencies.record(now - sent_ns)
        return phase != END

    def report(self) -> None:
        found = {"histogram": self.latencies.to_json(), "received": self.latencies.count}
        print(json.dumps(found), flush=True)


async def raw_subscribers(endpoint: str, count: int) -> None:
    context = zmq.asyncio.Context.instance()
    sockets = []
    for _ in range(count):
        socket = context.socket(zmq.SUB)
        socket.setsockopt(zmq.RCVHWM, 0)
        socket.setsockopt(zmq.SUBSCRIBE, b"")
        socket.connect(endpoint)
        sockets.append(socket)
    tally = Tally(count)

    async def one(socket: zmq.asyncio.Socket) -> None:
        first = True
        while True:
            frame = await socket.recv()
            sent, phase = STAMP.unpack_from(frame)
            if not tally.take(sent, phase, first):
                return
            first = False

    print("ready", flush=True)
    await asyncio.gather(*(one(s) for s in sockets))
    tally.report()


async def mesh_subscribers(discovery: str, count: int, first_index: int, home: str) -> None:
    from ..runtime.node import Node

    nodes = [
        Node(f"bench-sub-{first_index + i}", mesh=home, discovery=discovery) for i in range(count)
    ]
    tally = Tally(count)
    try:
        subscriptions = []
        for node in nodes:
            await node.start()
            subscriptions.append(await node.subscribe(TOPIC, maxsize=1_000_000))

        async def one(subscription: Any) -> None:
            first = True
            async for message in subscription:
                if not tally.take(message.body["t"], message.body["p"], first):
                    return
                first = False

        print("ready", flush=True)
        await asyncio.gather(*(one(s) for s in subscriptions))
        tally.report()
    finally:
        for node in nodes:
            await node.close()


if __name__ == "__main__":
    if sys.argv[1] == "raw":
        asyncio.run(raw_subscribers(sys.argv[2], int(sys.argv[3])))
    else:
        asyncio.run(mesh_subscribers(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]))
