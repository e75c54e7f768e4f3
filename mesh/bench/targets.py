"""What ``mesh bench`` drives: the same five operations on the mesh and on raw pyzmq.

Both sides get the same shapes of work, so a ratio compares the mesh's per-message path
(sealing, numbering, credit, correlation) with the floor of pyzmq doing only the transport.
The mesh side is the public API as a user writes it (``await node.request``, ``await
node.send`` in a loop, ``node.stream``, ``SyncNode.request``, ``Blob`` for large binary); the
raw side is the simplest correct pyzmq code for the same job (see :class:`RawTarget` and
:mod:`mesh.bench.servers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import zmq
import zmq.asyncio

from ..core.codec import Blob
from ..core.errors import InvalidArgument
from ..core.identity import Certificate, Identity
from ..core.wire import Suite
from ..runtime.node import Node
from ..runtime.sync import SyncNode

SERVER = "bench-server"
BLOB_FROM = 4096  # bodies this large travel as attachments, as a user would send them


async def reachable(url: str, default_port: int, server: str, timeout: float = 10.0) -> None:
    """One InvalidArgument line unless something answers TCP at ``url``: broker clients
    would otherwise retry an unreachable server for a long time, or forever."""
    address = urlsplit(url)
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(
                address.hostname, address.port or default_port
            )
            writer.close()
    except (OSError, TimeoutError) as exc:
        raise InvalidArgument(f"cannot reach {server} at {url}: {exc}") from exc


def body_of(size: int) -> Any:
    payload = b"x" * size
    return Blob(payload) if size >= BLOB_FROM else payload


class MeshTarget:
    name = "mesh"

    def __init__(
        self, node: Node, server: Certificate, endpoint: str, sync_identity: Identity
    ) -> None:
        self.node = node
        self.server = server
        self.endpoint = endpoint
        self.sync_identity = sync_identity  # a node of its own, not a second session of ours
        self.peers: list[tuple[Certificate, str]] = []  # the many-peers server's nodes
        self.server_suites: tuple[Suite, ...] = (Suite.XSALSA20_POLY1305,)

    async def connect_peers(self, count: int) -> list[str]:
        """Sessions to the first ``count`` peers of the many-peers server; their names."""
        names = []
        for certificate, endpoint in self.peers[:count]:
            if certificate.name not in self.node.known:
                self.node.add_peer(certificate, endpoint)
            await self.node.ping(certificate.name, timeout=30)
            names.append(certificate.name)
        return names

    def blocking(self) -> tuple[Callable[[Any], Any], Callable[[], None]]:
        """A SyncNode's ``echo`` for the blocking scenario, and its closer."""
        identity = self.sync_identity
        sync = SyncNode(identity.name, discovery=[], identity=identity, trust=self.node.trust)
        sync.node.add_peer(self.server, self.endpoint, cipher_suites=self.server_suites)
        return (lambda body: sync.request(SERVER, "echo", body, timeout=60)), sync.close

    async def echo(self, body: Any) -> Any:
        return await self.node.request(SERVER, "echo", body, timeout=60)

    async def sink(self, body: Any) -> None:
        await self.node.send(SERVER, "sink", body, timeout=60)

    async def count(self) -> int:
        return int(await self.node.request(SERVER, "count", timeout=60))

    async def stream(self, n: int, size: int) -> AsyncIterator[Any]:
        async for chunk in self.node.stream(SERVER, "chunks", [n, size], timeout=60):
            yield chunk


class RawTarget:
    """The simplest correct pyzmq asyncio client for each job, a DEALER per server socket:
    ``await send(body)`` then ``await recv()``; large bodies go as zero-copy frames."""

    name = "raw pyzmq"

    def __init__(self, endpoints: str, blocking_endpoint: str) -> None:
        context = zmq.asyncio.Context.instance()
        self.echo_socket, self.bulk, self.sink_socket, self.stream_socket = (
            self._dealer(context, endpoint) for endpoint in endpoints.split(",")
        )
        self.blocking_endpoint = blocking_endpoint
        self._waiting: deque[asyncio.Future[Any]] | None = None  # set while fanning out

    @staticmethod
    def _dealer(context: zmq.asyncio.Context, endpoint: str) -> zmq.asyncio.Socket:
        socket = context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(endpoint)
        return socket

    def close(self) -> None:
        for socket in (self.echo_socket, self.bulk, self.sink_socket, self.stream_socket):
            socket.close()

    @contextlib.asynccontextmanager
    async def fanning_out(self) -> AsyncIterator[None]:
        """While many calls are outstanding, one reader task hands replies to waiters in
        order (the server answers in order): the cheapest correlation there is, cheaper
        than many pending recv futures."""
        self._waiting = deque()

        async def read() -> None:
            while True:
                reply = await self.echo_socket.recv()
                self._waiting.popleft().set_result(reply)  # type: ignore[union-attr]

        reader = asyncio.create_task(read())
        try:
            yield
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self._waiting = None

    def blocking(self) -> tuple[Callable[[Any], Any], Callable[[], None]]:
        """A plain blocking pyzmq DEALER's echo against a blocking server, and its closer."""
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self.blocking_endpoint)

        def echo(body: Any) -> Any:
            socket.send(body)
            return socket.recv()

        return echo, socket.close

    async def echo(self, body: Any) -> Any:
        if isinstance(body, Blob) or not isinstance(body, bytes):  # large: zero-copy frames
            await self.bulk.send(body.data if isinstance(body, Blob) else body, copy=False)
            return await self.bulk.recv(copy=False)
        if self._waiting is None:
            await self.echo_socket.send(body)
            return await self.echo_socket.recv()
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        await self.echo_socket.send(body)
        return await future

    async def sink(self, body: Any) -> None:
        await self.sink_socket.send(body)

    async def count(self) -> int:
        await self.sink_socket.send(b"")
        return int(struct.unpack("!Q", await self.sink_socket.recv())[0])

    async def stream(self, n: int, size: int) -> AsyncIterator[bytes]:
        await self.stream_socket.send(struct.pack("!II", n, size))
        while chunk := await self.stream_socket.recv():
            yield chunk
