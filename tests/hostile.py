"""Tools for the hostile-input tests: a loop thread hosting the nodes under attack, and a raw
peer that speaks the protocol by hand (so it can send anything, valid or not)."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import zmq

from mesh.core.codec import Message
from mesh.core.handshake import Initiator
from mesh.core.identity import Certificate, Identity, Trust
from mesh.core.session import Session, SessionTable
from mesh.core.wire import Kind
from mesh.runtime.stamps import now_ms

WAIT_S = 10.0


class LoopThread:
    """An event loop in a thread: the nodes under attack live there, the attacker here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return function()

        return self.run(call())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def until(condition: Callable[[], bool], seconds: float = WAIT_S) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.001)


class RawPeer:
    """A DEALER that handshakes and seals by hand with the sans-IO core, as a certified (or
    not) attacker would: it can send valid frames, and anything else."""

    def __init__(self, endpoint: str, identity: Identity, trust: Trust, peer: Certificate) -> None:
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.endpoint = endpoint
        self.identity, self.trust, self.peer = identity, trust, peer
        self.table = SessionTable()
        self.session: Session | None = None
        self._ids = itertools.count(int.from_bytes(os.urandom(6), "big"))  # as nodes do

    def hello(self) -> Initiator:
        return Initiator(self.identity, self.trust, self.peer, self.table, now_ms())

    def handshake(self) -> Session:
        self.used_hello = self.hello()
        self.send(self.used_hello.hello_frames())
        answer = self.receive(lambda f: self.used_hello.matches(f))
        self.session = self.used_hello.receive(answer, now_ms())
        return self.session

    def spent_hello(self) -> list[bytes]:
        """A valid HELLO the target has already accepted (from another connection of ours):
        sending it again can only be a replay."""
        other = RawPeer(self.endpoint, self.identity, self.trust, self.peer)
        other.handshake()
        other.close()
        return [bytes(f) for f in other.used_hello.hello_frames()]

    def send(self, frames: list[bytes] | list[bytearray]) -> None:
        self.socket.send_multipart(frames)

    def receive(
        self, wanted: Callable[[list[bytes]], bool], seconds: float = WAIT_S
    ) -> list[bytes]:
        """The next answer ``wanted`` accepts; others (REJECTs to earlier junk) are skipped."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.socket.poll(int(left * 1000) + 1):
                frames = self.socket.recv_multipart()
                if wanted(frames):
                    return frames
        raise AssertionError("no answer in time")

    def sealed_request(
        self, body: Any, method: str = "echo", kind: int = Kind.REQUEST
    ) -> tuple[int, list[bytearray]]:
        assert self.session is not None
        msg_id = next(self._ids)
        message = Message(kind, msg_id, name=method, body=body)
        return msg_id, self.session.seal([message], now_ms())

    def request(self, body: Any, method: str = "echo") -> Any:
        """A valid request and its reply (raises if none comes)."""
        msg_id, frames = self.sealed_request(body, method)
        self.send(frames)
        session = self.session
        assert session is not None

        def ours(frames: list[bytes]) -> bool:
            return len(frames[0]) > 10 and frames[0][2:10] == session.recv_id

        while True:  # earlier requests' replies may still be queued: skip them
            reply = session.open(self.receive(ours), now_ms())
            for message in reply.messages:
                if message.corr_id == msg_id:
                    return message.body

    def close(self) -> None:
        self.socket.close()
