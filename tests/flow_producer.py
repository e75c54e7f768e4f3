"""A producer process for the flow-control tests: sends COUNT one-way messages as fast as the
consumer's credit allows, and reports its memory and how many the consumer had consumed when
the last one was sent. Usage: URL CONSUMER COUNT DELAY"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from mesh.runtime.node import Node


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def main(url: str, consumer: str, count: int, delay: float) -> None:
    async with Node("producer", discovery=url, register=False) as node:
        padding = "x" * 64
        warmup = min(2000, count // 10)
        started = time.monotonic()
        rss_start = 0.0
        for i in range(count):
            if i == warmup:
                rss_start = rss_mb()
            await node.send(consumer, "consume", {"i": i, "delay": delay, "pad": padding})
        elapsed = time.monotonic() - started
        # what the consumer had done by then (asked at once; waiting for credit only makes
        # the count larger): the test checks the producer was held to the consumer's pace
        consumed = await node.request(consumer, "consumed", timeout=60)
        connection = node._pool.connections[consumer]
        print(
            json.dumps(
                {
                    "sent": count,
                    "seconds": elapsed,
                    "consumed_when_sent": consumed["count"],
                    "rss_start_mb": rss_start,
                    "rss_end_mb": rss_mb(),
                    "credit_left": connection.credit.messages,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
