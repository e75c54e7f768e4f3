"""The two servers ``mesh bench`` measures against each other, each in its own process.

* The mesh side is ``python -m mesh.bench.servers mesh ADDRESS MESH_DIR``, a node with
  ``echo``, ``sink`` (one-way, counted), ``count`` (how many sinks since the last ask) and
  ``chunks`` (``[n, size]``: a stream of n chunks).
* The raw side is ``python -m mesh.bench.servers raw ADDRESS``: plain pyzmq asyncio ROUTERs,
  one per job (echo, zero-copy echo for large messages, sink, stream), each the simplest
  correct loop for it, with nothing sealed, numbered or credited: the floor the mesh is
  compared with. ``raw-blocking`` is the same echo with a blocking socket, the reference for
  SyncNode.

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
    """Raw pyzmq asyncio at its best: one socket per job, so each loop is the plainest one
    for it (the echo is ``send_multipart(await recv_multipart())``, nothing parsed)."""
    context = zmq.asyncio.Context.instance()
    sockets = []
    for _ in range(4):  # echo, bulk echo (zero-copy frames), sink, stream
        socket = context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        sockets.append((socket, socket.bind_to_random_port(f"tcp://{address}")))
    (echo, _), (bulk, _), (sink, _), (stream, _) = sockets
    endpoints = ",".join(f"tcp://{address}:{port}" for _, port in sockets)
    print(serving_line("raw", endpoints), flush=True)
    await asyncio.gather(raw_echo(echo), raw_bulk_echo(bulk), raw_sink(sink), raw_stream(stream))


async def raw_echo(socket: zmq.asyncio.Socket) -> None:
    while True:
        await socket.send_multipart(await socket.recv_multipart())


async def raw_bulk_echo(socket: zmq.asyncio.Socket) -> None:
    """Large messages: frames passed on without copying them into bytes (pyzmq's advice
    from tens of kilobytes up)."""
    while True:
        await socket.send_multipart(await socket.recv_multipart(copy=False), copy=False)


async def raw_sink(socket: zmq.asyncio.Socket) -> None:
    """Counts one-way messages; an empty frame asks for the count since the last ask."""
    sunk = 0
    while True:
        peer, body = await socket.recv_multipart()
        if body:
            sunk += 1
        else:
            await socket.send_multipart([peer, struct.pack("!Q", sunk)])
            sunk = 0


async def raw_stream(socket: zmq.asyncio.Socket) -> None:
    """``[n, size]`` asks for n chunks of size bytes; an empty frame ends them."""
    while True:
        peer, ask = await socket.recv_multipart()
        n, size = struct.unpack("!II", ask)
        chunk = b"x" * size
        for _ in range(min(n, MAX_CHUNKS)):
            await socket.send_multipart([peer, chunk])
        await socket.send_multipart([peer, b""])


def serve_raw_blocking(address: str) -> None:
    """The blocking reference for SyncNode: a plain sync ROUTER echo loop."""
    socket = zmq.Context.instance().socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    port = socket.bind_to_random_port(f"tcp://{address}")
    print(serving_line("raw-blocking", f"tcp://{address}:{port}"), flush=True)
    while True:
        socket.send_multipart(socket.recv_multipart())


async def serve_mesh(address: str, mesh: str) -> None:
    """A node with the bench handlers and no discovery: the client adds it by certificate."""
    async with Node("bench-server", discovery=[], mesh=mesh, bind=f"tcp://{address}:0") as node:
        install(node)
        print(serving_line("mesh", node.endpoint), flush=True)
        await asyncio.Event().wait()


async def serve_many(address: str, mesh: str, count: int) -> None:
    """``count`` nodes with ``echo`` in one process: peers for the client to stay connected
    to while it measures one of them."""
    nodes = [
        Node(f"bench-peer-{i}", discovery=[], mesh=mesh, bind=f"tcp://{address}:0")
        for i in range(count)
    ]
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
    elif kind == "raw-blocking":
        serve_raw_blocking(address)
    else:
        asyncio.run(serve_raw(address))
