"""SyncNode's direct path: a blocking request sealed, sent and answered on the calling thread.

Handing each call to the node's loop thread and waiting for it costs two thread hops and
a loop turn per request, more than the sealing. So for the common call (a named peer, no
retries, tracing off) :class:`Lanes` checks a :class:`Lane` out of a small pool per peer:
a DEALER of its own with a session of its own (a second handshake under the node's
identity; the callee answers each connection on its own session, protocol.md 6 and 11.1),
used by one thread at a time. The lane seals, writes, polls and opens where the caller
is, under the same rules as a :class:`~mesh.runtime.connection.Connection`: the callee's
credit before a REQUEST, a PING while an answer is slow and PeerLost after
``MISSED_HEARTBEATS`` silent intervals, a rekey when the key is old, a CANCEL when the
caller gives up, and the same typed errors. A pool holds at most ``MAX_LANES`` lanes per
peer, well under what a callee keeps per member (``MAX_SESSIONS_PER_PEER``), so lanes never
push out the node's own session; a call that finds them all busy takes the loop's path.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from ..core.codec import Message
from ..core.errors import (
    FlowControlTimeout,
    HandshakeRejected,
    MeshError,
    PeerLost,
    ProtocolError,
    RequestTimeout,
    UnsupportedAttachment,
)
from ..core.flow import ReceiveCredit, SendCredit, Window
from ..core.handshake import Initiator
from ..core.identity import Identity, Trust
from ..core.registry import PeerInfo
from ..core.session import Session, SessionTable
from ..core.wire import MISSED_HEARTBEATS, FrameType, Kind, RejectCode, Suite
from . import sockets
from .connection import CONNECT_TIMEOUT_S, remote_error
from .stamps import next_msg_id, now_ms

MAX_LANES = 4  # per peer: concurrent blocking calls that skip the loop
_SEALED = bytes([FrameType.SEALED])
_XSALSA = Suite.XSALSA20_POLY1305
_ANSWERS = (Kind.REPLY, Kind.ERROR, Kind.STREAM, Kind.STREAM_END)


class Lane:
    """One DEALER and one session to one peer; one thread at a time uses it."""

    def __init__(
        self,
        context: zmq.Context,
        identity: Identity,
        trust: Trust,
        info: PeerInfo,
        suite: Suite,
        heartbeat_s: float,
    ) -> None:
        self.info = info
        self.suite = suite
        self._identity = identity
        self._trust = trust
        self._heartbeat_s = heartbeat_s
        self._table = SessionTable()
        self._socket = sockets.dealer(context, info.endpoint)
        self.session: Session | None = None
        self.credit = SendCredit((0, 0))
        self.broken = False  # lost, or closed: the pool drops it

    @property
    def name(self) -> str:
        return self.info.name

    # ------------------------------------------------------------------ session

    def open(self, deadline: float) -> None:
        """Handshake; a peer that refuses the offered suite gets XSalsa20-Poly1305, as a
        Connection does. Raises PeerLost (no answer by ``deadline``) or HandshakeFailed."""
        try:
            self._handshake(self.suite, deadline)
        except HandshakeRejected as rejected:
            if rejected.code != RejectCode.UNSUPPORTED_SUITE or self.suite is _XSALSA:
                raise
            self.suite = _XSALSA
            self._handshake(self.suite, deadline)

    def _handshake(self, suite: Suite, deadline: float) -> None:
        initiator = Initiator(
            self._identity,
            self._trust,
            self.info.certificate,
            self._table,
            now_ms(),
            replaces=self.session,
            suite=suite,
        )
        self._write([initiator.hello], deadline)
        while True:
            frames = self._read(deadline)
            if frames is None:
                raise PeerLost(f"{self.name} did not answer the handshake", peer=self.name)
            if initiator.matches(frames):
                break  # anything else is a late answer on the old session: dropped
        self.session = initiator.receive(frames, now_ms())
        self.credit = SendCredit(self.session.initial_credit)

    # ------------------------------------------------------------------ calling

    def request(self, method: str, body: Any, timeout: float | None) -> Any:
        """Send a REQUEST and wait for its answer; raises what Node.request raises."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.session is None or self.session.needs_rekey(now_ms()):
            self.open(_sooner(deadline, time.monotonic() + CONNECT_TIMEOUT_S))
        if not self.credit.can_send():
            self._wait(deadline, lambda: self.credit.can_send(), None, method)
            if not self.credit.can_send():
                raise FlowControlTimeout(
                    f"{self.name} granted no credit within {timeout} s", peer=self.name
                )
        msg_id = next_msg_id()
        self.credit.charge(self._send([Message(Kind.REQUEST, msg_id, name=method, body=body)]))
        answer = _Answer(msg_id, method)
        try:
            self._wait(deadline, lambda: answer.done, answer, method)
        except BaseException:
            if not self.broken:
                self._cancel(msg_id)  # the caller gave up: so should the callee
            raise
        if not answer.done:
            self._cancel(msg_id)
            raise RequestTimeout(
                f"{self.name}.{method} did not answer within {timeout} s",
                peer=self.name,
                method=method,
            )
        return answer.result()

    def _wait(
        self,
        deadline: float | None,
        done: Callable[[], bool],
        answer: _Answer | None,
        method: str,
    ) -> None:
        """Read until ``done()`` or ``deadline``, pinging a peer that stays silent for a
        heartbeat and giving it up (PeerLost) after ``MISSED_HEARTBEATS`` of them."""
        heard = time.monotonic()
        while not done():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            if now - heard > MISSED_HEARTBEATS * self._heartbeat_s:
                self.broken = True
                raise PeerLost(
                    f"{self.name} missed {MISSED_HEARTBEATS} heartbeats",
                    peer=self.name,
                    method=method,
                )
            until = now + self._heartbeat_s
            frames = self._read(until if deadline is None else min(until, deadline))
            if frames is None:
                if time.monotonic() - heard >= self._heartbeat_s * 0.9:
                    self._send([Message(Kind.PING, next_msg_id())], wait=False)
                continue
            heard = time.monotonic()
            self._take(frames, answer)

    def _take(self, frames: list[bytes], answer: _Answer | None) -> None:
        """Open a frame: its credit grant, and the answer it may carry; the rest (a PONG,
        a late answer to a call given up) is dropped."""
        if frames[0][1:2] != _SEALED:
            return
        try:
            session, opened = self._table.open(frames, now_ms())
        except ProtocolError:
            return  # counted by nobody: this lane is private; its caller sees the timeout
        if session is self.session and (opened.grant_messages or opened.grant_bytes):
            self.credit.grant(opened.grant_messages, opened.grant_bytes)
        if answer is None:
            return
        for index, message in enumerate(opened.messages):
            if message.corr_id != answer.msg_id or message.kind not in _ANSWERS:
                continue
            if index in opened.unmaterialised:
                if message.kind == Kind.STREAM:
                    self._cancel(answer.msg_id)
                answer.fail(
                    UnsupportedAttachment(
                        f"{self.name}.{answer.method} answered with an array this process "
                        "cannot build: install numpy (or torch)"
                    )
                )
                return
            grant = answer.take(message, opened.size, self.name)
            if grant is not None:
                message = Message(Kind.CREDIT, next_msg_id(), answer.msg_id, body=grant)
                self._send([message], wait=False)

    def _cancel(self, msg_id: int) -> None:
        try:
            self._send([Message(Kind.CANCEL, next_msg_id(), corr_id=msg_id)], wait=False)
        except MeshError:
            self.broken = True

    def say_goodbye(self) -> None:
        if self.session is not None and not self.broken:
            with contextlib.suppress(MeshError):
                self._send([Message(Kind.BYE, next_msg_id())], wait=False)

    # ------------------------------------------------------------------ the socket

    def _send(self, messages: list[Message], *, wait: bool = True) -> int:
        """Seal and write; the frame's size, what credit is charged. ``wait``: for the
        connection to come up (a request); without it (a ping, a cancel, a grant) a frame
        the DEALER cannot take now is not sent: the peer is away, and heartbeats say so."""
        assert self.session is not None
        frames = self.session.seal(messages, now_ms())
        self._write(frames, time.monotonic() + CONNECT_TIMEOUT_S if wait else None)
        return sum(len(frame) for frame in frames)

    def _write(self, frames: list, deadline: float | None) -> None:
        """Write, waiting until ``deadline`` (None: not at all) for the connection to be
        up: the DEALER queues nothing for a peer it is not connected to."""
        while True:
            try:
                self._socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                if deadline is None:
                    return
                left = deadline - time.monotonic()
                if left <= 0 or not self._socket.poll(int(left * 1000) + 1, zmq.POLLOUT):
                    self.broken = True
                    raise PeerLost(f"{self.name} is unreachable", peer=self.name) from None
            except zmq.ZMQError as exc:
                self.broken = True
                raise PeerLost(f"{self.name} is unreachable: {exc}", peer=self.name) from None

    def _read(self, until: float | None) -> list[bytes] | None:
        """The next frames, or None at ``until``."""
        wait = -1 if until is None else max(0, int((until - time.monotonic()) * 1000))
        if not self._socket.poll(wait, zmq.POLLIN):
            return None
        return self._socket.recv_multipart(copy=True)

    def close(self) -> None:
        self.broken = True
        self._socket.close(0)


class _Answer:
    """What came back for one request: a reply, an error, or a stream collected."""

    def __init__(self, msg_id: int, method: str) -> None:
        self.msg_id = msg_id
        self.method = method
        self.done = False
        self._result: Any = None
        self._error: BaseException | None = None
        self._chunks: list[Any] | None = None
        self._credit: ReceiveCredit | None = None

    def take(self, message: Message, size: int, peer: str) -> list[int] | None:
        """Record ``message``; for a stream's chunk, the CREDIT to grant back, if due."""
        kind = message.kind
        if kind == Kind.REPLY:
            self._finish(message.body)
        elif kind == Kind.ERROR:
            self.fail(remote_error(peer, self.method, message.body))
        elif kind == Kind.STREAM_END:
            self._finish(self._chunks or [])
        else:  # a streaming handler answering a plain request: collected, credited
            if self._credit is None:
                self._chunks, self._credit = [], ReceiveCredit(Window())
            assert self._chunks is not None
            if self._credit.receive(size):
                self._chunks.append(message.body)
                self._credit.consume(size)
                grant = self._credit.due()
                if grant != (0, 0):
                    self._credit.granted(grant)
                    return list(grant)
        return None

    def _finish(self, result: Any) -> None:
        self._result, self.done = result, True

    def fail(self, error: BaseException) -> None:
        self._error, self.done = error, True

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._result


class Lanes:
    """The pools of lanes of one SyncNode, per peer name; safe from any thread."""

    def __init__(
        self,
        context: zmq.Context,
        identity: Identity,
        trust: Trust,
        suites: tuple[Suite, ...],
        heartbeat_s: float,
    ) -> None:
        self._context = context
        self._identity = identity
        self._trust = trust
        self._suites = suites
        self._heartbeat_s = heartbeat_s
        self._lock = threading.Lock()
        self._idle: dict[str, list[Lane]] = {}
        self._busy: dict[str, int] = {}
        self._lanes: list[Lane] = []  # every open lane, to close them all
        self.closed = False

    def take(self, info: PeerInfo) -> Lane | None:
        """An idle lane to ``info`` (a new one if the pool has room), or None: every lane
        busy. A lane to an older entry of that name (the peer restarted) is dropped."""
        with self._lock:
            if self.closed:
                return None
            idle = self._idle.setdefault(info.name, [])
            while idle:
                lane = idle.pop()
                if lane.info is info or _same_peer(lane.info, info):
                    self._busy[info.name] = self._busy.get(info.name, 0) + 1
                    return lane
                self._drop(lane)
            if self._busy.get(info.name, 0) >= MAX_LANES:
                return None
            lane = Lane(
                self._context,
                self._identity,
                self._trust,
                info,
                info.suite_for(self._suites),
                self._heartbeat_s,
            )
            self._lanes.append(lane)
            self._busy[info.name] = self._busy.get(info.name, 0) + 1
            return lane

    def give_back(self, lane: Lane) -> None:
        with self._lock:
            self._busy[lane.name] -= 1
            if lane.broken or self.closed:
                self._drop(lane)
            else:
                self._idle.setdefault(lane.name, []).append(lane)

    def _drop(self, lane: Lane) -> None:
        lane.close()
        if lane in self._lanes:
            self._lanes.remove(lane)

    def close(self) -> None:
        """Say BYE on every idle lane and close them all (a lane in use by another thread
        is closed when it comes back)."""
        with self._lock:
            self.closed = True
            for lanes in self._idle.values():
                for lane in lanes:
                    lane.say_goodbye()
                    self._drop(lane)
            self._idle.clear()


def _same_peer(old: PeerInfo, new: PeerInfo) -> bool:
    return old.endpoint == new.endpoint and old.certificate == new.certificate


def _sooner(deadline: float | None, other: float) -> float:
    return other if deadline is None else min(deadline, other)
