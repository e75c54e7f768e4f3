"""The scenarios of ``mesh bench``: each takes a target and a count, returns a Result.

Latency is per operation in nanoseconds into a :class:`~mesh.core.histogram.Histogram`, after
a warm-up that is not recorded. With a ``rate``, requests are issued on a fixed schedule and
each latency counts from when it *should* have been sent, so a stall is charged to every
request it delayed (no coordinated omission), not to the one that happened to wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from ..core.histogram import Histogram
from .targets import body_of

STREAM_CHUNK = 32  # a token-like chunk


@dataclass
class Result:
    scenario: str
    system: str
    params: dict[str, Any]
    histogram: Histogram = field(default_factory=Histogram)
    seconds: float = 0.0
    messages: int = 0
    payload_bytes: int = 0
    blocks: list[dict[str, float]] = field(default_factory=list)  # each block's own figures

    def block_figures(self) -> dict[str, float]:
        rate = self.messages / self.seconds if self.seconds else 0.0
        p50 = self.histogram.percentile(0.5) / 1000 if self.histogram.count else 0.0
        return {"p50": round(p50, 1), "messages_per_s": round(rate, 1)}

    def first_block(self) -> Result:
        """This result as the first of several blocks of its scenario."""
        self.blocks = [self.block_figures()]
        return self

    def absorb(self, block: Result) -> None:
        """Add a later block of the same scenario and system: its samples, time and counts."""
        self.blocks.append(block.block_figures())
        self.histogram.merge(block.histogram)
        self.seconds += block.seconds
        self.messages += block.messages
        self.payload_bytes += block.payload_bytes
        for counted in ("count", "delivered"):
            if counted in self.params and counted in block.params:
                self.params[counted] += block.params[counted]

    def to_dict(self) -> dict[str, Any]:
        rate = self.messages / self.seconds if self.seconds else 0.0
        return {
            "blocks": self.blocks,
            "scenario": self.scenario,
            "system": self.system,
            "params": self.params,
            "latency_us": self.histogram.summary_us() if self.histogram.count else None,
            "throughput": {
                "messages_per_s": round(rate, 1),
                "mb_per_s": round(self.payload_bytes / self.seconds / 1e6, 2)
                if self.seconds
                else 0.0,
            },
        }


async def round_trip(target: Any, size: int, count: int, warmup: int) -> Result:
    body = body_of(size)
    result = Result(f"request/reply {_size(size)}", target.name, {"size": size, "count": count})
    return await _echo_loop(target, body, result, count, warmup, 2 * size * count)


async def _echo_loop(
    target: Any, body: Any, result: Result, count: int, warmup: int, payload: int
) -> Result:
    """Warm up, then ``count`` echoes one at a time, each timed."""
    for _ in range(warmup):
        await target.echo(body)
    started = time.perf_counter()
    for _ in range(count):
        sent = time.perf_counter_ns()
        await target.echo(body)
        result.histogram.record(time.perf_counter_ns() - sent)
    return _done(result, started, count, payload)


async def blocking_round_trip(target: Any, count: int, warmup: int) -> Result:
    """64 B request/reply from blocking code (SyncNode, a sync pyzmq socket) in a thread."""
    result = Result("blocking request/reply 64 B", target.name, {"size": 64, "count": count})
    echo, close = target.blocking()
    body = b"x" * 64

    def run() -> float:
        for _ in range(warmup):
            echo(body)
        started = time.perf_counter()
        for _ in range(count):
            sent = time.perf_counter_ns()
            echo(body)
            result.histogram.record(time.perf_counter_ns() - sent)
        return started

    try:
        started = await asyncio.to_thread(run)
    finally:
        close()
    return _done(result, started, count, 128 * count)


async def with_peers(target: Any, connected: int, count: int, warmup: int) -> Result:
    """64 B request/reply to one peer while sessions to ``connected`` peers are open."""
    result = Result(
        f"64 B, {connected} peers connected", target.name, {"size": 64, "peers": connected}
    )
    names = await target.connect_peers(connected)
    body = b"x" * 64
    for _ in range(warmup):
        await target.node.request(names[0], "echo", body, timeout=60)
    started = time.perf_counter()
    for _ in range(count):  # the other sessions stay open and idle, as most peers are
        sent = time.perf_counter_ns()
        await target.node.request(names[0], "echo", body, timeout=60)
        result.histogram.record(time.perf_counter_ns() - sent)
    return _done(result, started, count, 128 * count)


async def fixed_rate(target: Any, rate: int, count: int, warmup: int) -> Result:
    body = body_of(64)
    params = {"size": 64, "count": count, "rate": rate}
    result = Result(f"request/reply 64 B at {rate}/s", target.name, params)
    for _ in range(warmup):
        await target.echo(body)
    interval_ns = 1_000_000_000 // rate
    start_ns = time.perf_counter_ns()

    async def one(intended_ns: int) -> None:
        await target.echo(body)
        result.histogram.record(time.perf_counter_ns() - intended_ns)

    tasks = []
    for index in range(count):
        intended = start_ns + index * interval_ns
        await _until(intended)
        tasks.append(asyncio.create_task(one(intended)))  # late or not: it was due then
    await asyncio.gather(*tasks)
    return _done(result, start_ns / 1e9, count, 128 * count)


async def _until(when_ns: int) -> None:
    """Sleep until ``when_ns``: the loop's timer wakes up to a millisecond late, so the
    last 2 ms are spent yielding to the loop instead (other tasks still run)."""
    while (left := when_ns - time.perf_counter_ns()) > 0:
        await asyncio.sleep(left / 1e9 - 0.002 if left > 2_000_000 else 0)


async def one_way(target: Any, count: int, warmup: int) -> Result:
    body = b"x" * 64
    result = Result("one-way 64 B", target.name, {"size": 64, "count": count})
    for _ in range(warmup):
        await target.sink(body)
    await _drain(target, warmup)
    started = time.perf_counter()
    for _ in range(count):
        await target.sink(body)
    await _drain(target, count)
    return _done(result, started, count, 64 * count)


async def _drain(target: Any, expected: int) -> None:
    """Until the server has taken ``expected`` one-way messages (bounded: 60 s)."""
    seen = 0
    deadline = time.monotonic() + 60
    while seen < expected and time.monotonic() < deadline:
        seen += await target.count()
        if seen < expected:
            await asyncio.sleep(0.001)


async def concurrent(target: Any, outstanding: int, count: int, warmup: int) -> Result:
    body = body_of(64)
    params = {"size": 64, "count": count, "outstanding": outstanding}
    result = Result(f"concurrency {outstanding}", target.name, params)

    async def worker(share: int) -> None:
        for _ in range(share):
            sent = time.perf_counter_ns()
            await target.echo(body)
            result.histogram.record(time.perf_counter_ns() - sent)

    shares = [count // outstanding + (i < count % outstanding) for i in range(outstanding)]
    fanning_out = getattr(target, "fanning_out", contextlib.nullcontext)
    async with fanning_out():
        await asyncio.gather(*(target.echo(body) for _ in range(warmup)))
        started = time.perf_counter()
        await asyncio.gather(*(worker(s) for s in shares))
    return _done(result, started, count, 128 * count)


async def streamed(target: Any, chunks: int, streams: int) -> Result:
    params = {"chunk": STREAM_CHUNK, "chunks": chunks, "streams": streams}
    result = Result("stream: gap between chunks", target.name, params)
    started = time.perf_counter()
    for index in range(streams + 1):  # the first stream warms up
        last = time.perf_counter_ns()
        async for _ in target.stream(chunks, STREAM_CHUNK):
            now = time.perf_counter_ns()
            if index:
                result.histogram.record(now - last)
            last = now
    return _done(result, started, chunks * (streams + 1), STREAM_CHUNK * chunks * streams)


async def tensor(target: Any, megabytes: int, count: int, warmup: int) -> Result:
    size = megabytes * 1024 * 1024
    try:
        import numpy as np

        body: Any = np.ones(size // 4, dtype=np.float32)
    except ImportError:  # the core install has no numpy: the same bytes as a Blob
        body = body_of(size)
    params = {"size": size, "count": count, "dtype": "float32"}
    result = Result(f"tensor {megabytes} MiB round trip", target.name, params)
    return await _echo_loop(target, body, result, count, warmup, 2 * size * count)


def _done(result: Result, started: float, messages: int, payload: int) -> Result:
    result.seconds = time.perf_counter() - started
    result.messages = messages
    result.payload_bytes = payload
    return result


def _size(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size // (1024 * 1024)} MiB"
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"
