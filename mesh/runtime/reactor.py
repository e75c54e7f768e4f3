"""Drive a plain ZeroMQ socket from the asyncio loop, with no futures on the message path.

pyzmq's asyncio sockets wrap every send and receive in a future and wake a task for each
message: two trips through the event loop per message, and more in the round trip. Here the
socket's file descriptor is watched with ``loop.add_reader``; when it signals, the callback
reads every waiting message (up to a batch, then yields to other callbacks) and hands each
to ``on_frames`` right there. Sends are immediate (NOBLOCK), so their outcome is known at once.

ZeroMQ's descriptor is edge-triggered and any operation on the socket may consume the edge,
so after every send the socket's EVENTS are checked and a read is scheduled if messages are
waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import zmq

from ..core.errors import NodeClosed

log = logging.getLogger("mesh")
MAX_READ_BATCH = 256
ZERO_COPY_FROM = 64 * 1024  # below this, copying a frame is cheaper than tracking it
# plain ints: pyzmq's enum constants cost an enum construction per bitwise operation, and
# this is the per-message path
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK) | int(zmq.SNDMORE)
_PEER_UNREACHABLE = frozenset({zmq.EAGAIN, zmq.EHOSTUNREACH})


class Reactor:
    """One socket, one reader callback, immediate sends."""

    def __init__(self, socket: zmq.Socket, on_frames: Callable[[list[bytes]], None]) -> None:
        self.socket = socket
        self._on_frames = on_frames
        self._loop = asyncio.get_running_loop()
        self._fd = socket.getsockopt(zmq.FD)
        self._scheduled = False
        self._reading = False  # inside _drain: a send failing there must not read more
        self.closed = False
        self._loop.add_reader(self._fd, self._drain)
        self._schedule()  # messages may have arrived before the reader was added

    def _schedule(self) -> None:
        if not self._scheduled and not self.closed:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        self._reading = True
        try:
            self._read_batch()
        finally:
            self._reading = False

    def _read_batch(self) -> None:
        socket = self.socket
        handle = self._on_frames
        for _ in range(MAX_READ_BATCH):
            if self.closed or not socket.getsockopt(_EVENTS) & _POLLIN:
                return
            # each part's own flag says whether another follows: asking the socket
            # (RCVMORE) costs an option lookup per part
            part = socket.recv(_NOBLOCK, copy=False)
            frames = [part.bytes]
            while part.more:  # attachments: large ones read in place, not copied
                part = socket.recv(_NOBLOCK, copy=False)
                frames.append(part.buffer if len(part) >= ZERO_COPY_FROM else part.bytes)
            try:
                handle(frames)
            except Exception:  # a bug in a handler must not stop the socket
                log.exception("internal error handling an inbound message")
        self._schedule()  # more are waiting: continue after other callbacks had a turn

    def read_now(self) -> None:
        """Handle whatever has already arrived (a busy loop may not have called us yet);
        nothing when called from inside a read (a send that failed while handling a
        frame): the read under way takes the rest, in order."""
        if not self.closed and not self._reading:
            self._drain()

    def send(self, frames: list) -> bool:
        """Send now or not at all: False when the peer is unreachable or its queue is full.
        Raises NodeClosed when the socket or its context was closed on this side (that is
        not the peer's doing, and must not be reported as the peer being lost).

        Frames from ``ZERO_COPY_FROM`` on are handed over, not copied, and belong to the
        transport from then on: nobody reads them again (a retry seals anew). Over
        ``inproc://`` the receiver gets this very memory, and opens it in place."""
        if self.closed:
            return False
        socket = self.socket
        last = len(frames) - 1
        try:
            # only the first part can be refused: ZeroMQ takes a message whole or not at all
            for index, frame in enumerate(frames):
                flags = _NOBLOCK_MORE if index < last else _NOBLOCK
                # large frames are handed to ZeroMQ as they are (never changed after sealing)
                socket.send(frame, flags, copy=len(frame) < ZERO_COPY_FROM)
            sent = True
        except zmq.ZMQError as exc:
            if exc.errno not in _PEER_UNREACHABLE:  # ETERM, ENOTSOCK: our side is shut
                self.close()
                raise NodeClosed(f"socket closed under a send: {exc}") from exc
            sent = False  # EAGAIN (no peer, or queue full) or EHOSTUNREACH: the peer's side
        if socket.getsockopt(_EVENTS) & _POLLIN:
            self._schedule()
        return sent

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._fd)
        if not self.socket.closed:
            self.socket.close()
