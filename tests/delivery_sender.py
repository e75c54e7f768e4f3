"""A sender process for the delivery tests: ``record(i)`` for i in FIRST..FIRST+COUNT-1 to
PEER with MODE, then waits until all are settled. Prints ``queued N``, then ``settled`` and
the node's delivery stats as JSON. Usage: URL PEER MODE FIRST COUNT [DEADLINE_S]

With COUNT 0 it only resumes what a previous (killed) run left in its durable outbox."""

from __future__ import annotations

import asyncio
import json
import sys

from mesh.runtime.node import Node


async def main(url: str, peer: str, mode: str, first: int, count: int, deadline: float) -> None:
    async with Node("sender", discovery=url) as node:
        for i in range(first, first + count):
            await node.send(peer, "record", i, delivery=mode, deadline=deadline)
        print(f"queued {count}", flush=True)
        await node.delivered(timeout=deadline + 30)
        print("settled", flush=True)
        print(json.dumps(node.stats()["delivery"]), flush=True)


if __name__ == "__main__":
    url, peer, mode, first, count = sys.argv[1:6]
    deadline = float(sys.argv[6]) if len(sys.argv) > 6 else 60.0
    asyncio.run(main(url, peer, mode, int(first), int(count), deadline))
