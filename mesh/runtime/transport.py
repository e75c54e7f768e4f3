"""The seam between the runtime and ZeroMQ: what a connection and an inbound side need of
a socket, and the ZeroMQ network that provides it.

:class:`~mesh.runtime.connection.Connection` and :class:`~mesh.runtime.inbound.Inbound` never
create sockets themselves; they ask a :class:`Network` for a dialled or a bound
:class:`Transport`. In production that is :class:`ZmqNetwork` (a DEALER or ROUTER driven by a
:class:`~mesh.runtime.reactor.Reactor`); the test suite passes an in-memory network instead
(frames recorded, fed in and dropped by hand, as httpcore's mock backend does for HTTP), so the
layer where state and credit live is tested without sockets and without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import zmq

from . import sockets
from .reactor import Reactor

OnFrames = Callable[[list[bytes]], None]


class Transport(Protocol):
    """One socket's worth of I/O: immediate sends, a reader callback given at creation."""

    def send(self, frames: list) -> bool:
        """Send now or not at all: False when the peer is unreachable or its queue is full."""
        ...

    def read_now(self) -> None:
        """Handle whatever has already arrived."""
        ...

    def close(self) -> None: ...


class Listener(Protocol):
    """A bound endpoint that starts reading when told (after its owner is wired up)."""

    endpoint: str

    def start(self, on_frames: OnFrames) -> Transport: ...

    def close(self) -> None:
        """Release the endpoint if reading never started."""
        ...


class Network(Protocol):
    """Makes the transports: a DEALER-like one dialled to an endpoint, a ROUTER-like one
    bound (its received frames start with the sender's routing id, its sends with the
    destination's)."""

    def dial(self, endpoint: str, on_frames: OnFrames) -> Transport: ...

    def listen(self, bind: str) -> Listener: ...


class _ZmqListener:
    def __init__(self, socket: zmq.Socket, endpoint: str) -> None:
        self._socket = socket
        self.endpoint = endpoint

    def start(self, on_frames: OnFrames) -> Transport:
        return Reactor(self._socket, on_frames)

    def close(self) -> None:
        self._socket.close(0)


class ZmqNetwork:
    """ZeroMQ sockets with the options of :mod:`mesh.runtime.sockets`, read by a Reactor."""

    def __init__(self, context: zmq.Context) -> None:
        self.context = context

    def dial(self, endpoint: str, on_frames: OnFrames) -> Transport:
        return Reactor(sockets.dealer(self.context, endpoint), on_frames)

    def listen(self, bind: str) -> Listener:
        return _ZmqListener(*sockets.router(self.context, bind))
