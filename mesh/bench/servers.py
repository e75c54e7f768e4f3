"""The two servers ``mesh bench`` measures against each other, each in its own process.

* The mesh side is ``python -m mesh.bench.servers mesh ADDRESS MESH_DIR``, a node with
  ``echo``, ``sink`` (one-way, counted), ``count`` (how many sinks since the last ask) and
  ``chunks`` (``[n, size]``: a stream of n chunks).
* The raw side is ``python -m mesh.bench.servers raw ADDRESS``: a plain pyzmq asyncio ROUTER
  doing the same over frames ``[kind, payload]`` (``E`` echo, ``S`` sink, ``C`` count,
  ``T`` stream), with nothing sealed, numbered or credited: the floor the mesh is compared with.

Each binds a random port on ADDRESS (loopback, or the server host's address with
``mesh bench --server-host``) and exits when its stdin closes: over ssh, that is when the
bench's ssh client goes, so no server outlives the run on a remote host.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import threading
from typing import Any

import zmq
import zmq.asyncio

from ..ops.processes import serving_line
from ..runtime.node import Node

MAX_CHUNKS = 1_000_000


def install(node: Node) -> None:
    """The mesh bench server's handlers."""
    sunk = [0]

    @node.handler("echo")
    async def echo(body: Any) -> Any:
        return body

    @node.handler("sink")
    async def sink(body: Any) -> None:
        sunk[0] += 1

    @node.handler("count")
    async def count(body: Any) -> int:
        seen, sunk[0] = sunk[0], 0
        return seen

    @node.handler("chunks")
    async def chunks(body: Any) -> Any:
        n, size = int(body[0]), int(body[1])
        chunk = b"x" * size
        for _ in range(min(n, MAX_CHUNKS)):
            yield chunk


async def serve_raw(address: str) -> None:
    socket = zmq.asyncio.Context.instance().socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    port = socket.bind_to_random_port(f"tcp://{address}")
    print(serving_line("raw", f"tcp://{address}:{port}"), flush=True)
    sunk = 0
    while True:
        peer, kind, payload = await socket.recv_multipart(copy=False)
        code = kind.bytes
        if code == b"E":
            await socket.send_multipart([peer, kind, payload], copy=False)
        elif code == b"S":
            sunk += 1
        elif code == b"C":
            await socket.send_multipart([peer, kind, struct.pack("!Q", sunk)])
            sunk = 0
        elif code == b"T":
            n, size = struct.unpack("!II", payload.bytes)
            chunk = b"x" * size
            for _ in range(min(n, MAX_CHUNKS)):
                await socket.send_multipart([peer, b"T", chunk])
            await socket.send_multipart([peer, b"D", b""])


async def serve_mesh(address: str, mesh: str) -> None:
    """A node with the bench handlers and no discovery: the client adds it by certificate."""
    async with Node("bench-server", mesh=mesh, bind=f"tcp://{address}:0") as node:
        install(node)
        print(serving_line("mesh", node.endpoint), flush=True)
        await asyncio.Event().wait()


async def serve_many(address: str, mesh: str, count: int) -> None:
    """``count`` nodes with ``echo`` in one process: peers for the client to stay connected
    to while it measures one of them."""
    nodes = [Node(f"bench-peer-{i}", mesh=mesh, bind=f"tcp://{address}:0") for i in range(count)]
    for node in nodes:
        node.handler("echo", _echo)
        await node.start()
    print(serving_line("peers", ",".join(n.endpoint for n in nodes)), flush=True)
    await asyncio.Event().wait()


async def _echo(body: Any) -> Any:
    return body


def exit_when_stdin_closes() -> None:
    def watch() -> None:
        sys.stdin.buffer.read()
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


if __name__ == "__main__":
    exit_when_stdin_closes()
    kind, address, *rest = sys.argv[1:]
    if kind == "mesh":
        asyncio.run(serve_mesh(address, rest[0]))
    elif kind == "peers":
        asyncio.run(serve_many(address, rest[0], int(rest[1])))
    else:
        asyncio.run(serve_raw(address))
