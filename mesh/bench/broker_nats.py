"""The brokers people use instead, for ``mesh bench --nats URL``: NATS through nats-py.

The NATS side is request/reply through a running nats-server: a responder process
(``python -m mesh.bench.broker_nats URL``) answers ``bench.echo``, counts ``bench.sink`` and
answers ``bench.count``, and the client uses ``nc.request``, the way a NATS user would
build RPC. Scenarios NATS does not do as such (streamed replies; bodies over its 1 MiB
default ``max_payload``) are left out for it. ``scripts/bench-peers`` installs Debian's
nats-server and nats-py, starts the server on loopback, runs the bench and stops it.
"""

from __future__ import annotations

import asyncio
import struct
import sys
from typing import Any

from ..core.codec import Blob
from ..core.errors import InvalidArgument
from ..ops.processes import serving_line
from .targets import reachable

# steps (by label or its first word) NATS does not run here
SKIPPED = ("stream", "tensor", "rr 1048576", "blocking", "fan-out")


def _nats() -> Any:
    try:
        import nats
    except ImportError as exc:
        raise InvalidArgument("--nats needs nats-py: pip install nats-py") from exc
    return nats


class NatsTarget:
    name = "nats-py"
    skipped = SKIPPED

    def __init__(self, connection: Any) -> None:
        self.nc = connection

    @classmethod
    async def connect(cls, url: str) -> NatsTarget:
        return cls(await connect(url))

    async def echo(self, body: Any) -> Any:
        data = bytes(body.data) if isinstance(body, Blob) else bytes(body)
        return (await self.nc.request("bench.echo", data, timeout=30)).data

    async def sink(self, body: Any) -> None:
        await self.nc.publish("bench.sink", body)

    async def count(self) -> int:
        await self.nc.flush()
        reply = await self.nc.request("bench.count", b"", timeout=30)
        return int(struct.unpack("!Q", reply.data)[0])

    async def close(self) -> None:
        await self.nc.close()


async def connect(url: str) -> Any:
    """A nats-py connection, or one InvalidArgument line (nats-py itself would retry an
    unreachable server forever, logging each try)."""
    nats = _nats()
    await reachable(url, 4222, "nats-server")
    try:
        async with asyncio.timeout(10):
            return await nats.connect(url, allow_reconnect=False, connect_timeout=5)
    except (OSError, TimeoutError) as exc:
        raise InvalidArgument(f"cannot reach nats-server at {url}: {exc}") from exc


async def respond(url: str) -> None:
    """The NATS responder: echo, sink and count."""
    nc = await connect(url)
    sunk = [0]

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    async def sink(msg: Any) -> None:
        sunk[0] += 1

    async def count(msg: Any) -> None:
        seen, sunk[0] = sunk[0], 0
        await msg.respond(struct.pack("!Q", seen))

    await nc.subscribe("bench.echo", cb=echo)
    await nc.subscribe("bench.sink", cb=sink)
    await nc.subscribe("bench.count", cb=count)
    await nc.flush()
    print(serving_line("nats", url), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(respond(sys.argv[1]))
