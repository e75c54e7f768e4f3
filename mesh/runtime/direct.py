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
caller gives up, a streamed answer collected under the same bounds, and the same typed
errors. The handshake is bounded by the node's ``connect_timeout``, the call by its own
timeout, as on the loop's path.

What lanes may cost a callee is bounded: ``MAX_LANES`` per peer (with the node's own
connection, well under the ``MAX_SESSIONS_PER_PEER`` a callee keeps per member, even for a
few processes sharing an identity), at most ``MAX_IDLE_LANES`` kept open in all, a BYE
whenever one is dropped, and none kept to a peer that left, restarted or was lost. A call
that finds every lane to its peer busy takes the loop's path. Closing the node ends the
calls waiting on lanes with PeerLost, as it ends the loop's.
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
    RedirectFailed,
    ReplyTooLarge,
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
from .connection import COLLECT_MAX_BYTES, COLLECT_MAX_CHUNKS, remote_error
from .stamps import next_msg_id, now_ms

MAX_LANES = 2  # per peer: blocking calls at once that skip the loop
MAX_IDLE_LANES = 32  # open and idle, all peers together: the least recently used go first
WAKE_S = 0.25  # the longest a waiting call goes without looking at whether the node closed
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
        connect_timeout: float,
        closing: threading.Event,
    ) -> None:
        self.info = info
        self.suite = suite
        self._identity = identity
        self._trust = trust
        self._heartbeat_s = heartbeat_s
        self._connect_timeout = connect_timeout
        self._closing = closing  # set when the node closes
        self._table = SessionTable()
        self._socket = sockets.dealer(context, info.endpoint)
        self.session: Session | None = None
        self.credit = SendCredit((0, 0))
        self.broken = False  # lost, failed or interrupted mid-frame: the pool drops it

    @property
    def name(self) -> str:
        return self.info.name

    # ------------------------------------------------------------------ session

    def open(self) -> None:
        """Handshake within the node's ``connect_timeout``; a peer that refuses the
        offered suite gets XSalsa20-Poly1305, as a Connection does. Raises PeerLost or
        HandshakeFailed; a lane whose handshake failed is not tried again."""
        deadline = time.monotonic() + self._connect_timeout
        try:
            try:
                self._handshake(self.suite, deadline)
            except HandshakeRejected as rejected:
                if rejected.code != RejectCode.UNSUPPORTED_SUITE or self.suite is _XSALSA:
                    raise
                self.suite = _XSALSA
                self._handshake(self.suite, deadline)
        except BaseException:
            self.broken = True
            raise
        self._table.expire(now_ms())  # the session a rekey retired goes when its grace ends

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
                raise PeerLost(
                    f"no answer from {self.info.endpoint} within {self._connect_timeout} s",
                    peer=self.name,
                )
            if initiator.matches(frames):
                break  # anything else is a late answer on the old session: dropped
        self.session = initiator.receive(frames, now_ms())
        self.credit = SendCredit(self.session.initial_credit)

    # ------------------------------------------------------------------ calling

    def request(self, method: str, body: Any, timeout: float | None) -> Any:
        """Send a REQUEST and wait for its answer; raises what Node.request raises."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.session is None or self.session.needs_rekey(now_ms()):
            self.open()
        if not self.credit.can_send():
            self._wait(deadline, self.credit.can_send, None, method)
            if not self.credit.can_send():
                raise FlowControlTimeout(
                    f"{self.name} granted no credit within {timeout} s", peer=self.name
                )
        if deadline is not None and time.monotonic() >= deadline:
            raise RequestTimeout(
                f"{self.name}.{method} did not answer within {timeout} s",
                peer=self.name,
                method=method,
            )
        msg_id = next_msg_id()
        request = Message(Kind.REQUEST, msg_id, name=method, body=body)
        self.credit.charge(self._send([request], required=True))
        answer = _Answer(msg_id, method)
        try:
            self._wait(deadline, lambda: answer.done, answer, method)
        except BaseException:
            self._cancel(msg_id)  # the caller gave up, or the peer is gone: best effort
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
        heartbeat and giving it up (PeerLost) after ``MISSED_HEARTBEATS`` of them, or the
        node closing."""
        heard = pinged = time.monotonic()
        while not done():
            now = time.monotonic()
            if self._closing.is_set():
                self.broken = True
                raise PeerLost("node closed", peer=self.name, method=method)
            if deadline is not None and now >= deadline:
                return
            if now - heard > MISSED_HEARTBEATS * self._heartbeat_s:
                self.broken = True
                raise PeerLost(
                    f"{self.name} missed {MISSED_HEARTBEATS} heartbeats",
                    peer=self.name,
                    method=method,
                )
            if now - max(heard, pinged) >= self._heartbeat_s * 0.9:
                self._send([Message(Kind.PING, next_msg_id())])
                pinged = now
            until = now + min(WAKE_S, self._heartbeat_s)
            frames = self._read(until if deadline is None else min(until, deadline))
            if frames is None:
                continue
            heard = time.monotonic()
            try:
                self._take(frames, answer)
            except BaseException:
                self.broken = True  # stopped halfway through a frame: its grant may be lost
                raise

    def _take(self, frames: list[bytes], answer: _Answer | None) -> None:
        """Open a frame: its credit grant, and the answer it may carry; the rest (a PONG,
        a late answer to a call given up) is dropped."""
        if frames[0][1:2] != _SEALED:
            return
        try:
            session, opened = self._table.open(frames, now_ms())
        except ProtocolError:
            return  # this lane is private: its caller sees the timeout, not a counter
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
            reply = answer.take(message, opened.size, self.name)
            if reply is not None:
                self._send([reply(next_msg_id())])

    def _cancel(self, msg_id: int) -> None:
        if self.session is not None and not self._socket.closed:
            with contextlib.suppress(MeshError):
                self._send([Message(Kind.CANCEL, next_msg_id(), corr_id=msg_id)])

    def say_goodbye(self) -> None:
        """BYE (best effort): the callee forgets this lane's session now, not later."""
        if self.session is not None and not self._socket.closed:
            with contextlib.suppress(MeshError):
                self._send([Message(Kind.BYE, next_msg_id())])

    # ------------------------------------------------------------------ the socket

    def _send(self, messages: list[Message], *, required: bool = False) -> int:
        """Seal and write now; the frame's size, what credit is charged. A frame the
        DEALER cannot take at once (the connection is down) raises PeerLost if
        ``required`` (a request, as on the loop's path), and is dropped otherwise (a ping,
        a cancel, a grant: the peer is away, and heartbeats say so)."""
        assert self.session is not None
        frames = self.session.seal(messages, now_ms())
        try:
            self._socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            if required:
                self.broken = True
                raise PeerLost(f"{self.name} is unreachable", peer=self.name) from None
        except zmq.ZMQError as exc:
            self.broken = True
            raise PeerLost(f"{self.name} is unreachable: {exc}", peer=self.name) from None
        return sum(len(frame) for frame in frames)

    def _write(self, frames: list, deadline: float) -> None:
        """Write a handshake frame, waiting until ``deadline`` for the connection to come
        up: a new DEALER connects in the background and queues nothing before."""
        while True:
            try:
                self._socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                left = deadline - time.monotonic()
                if left <= 0 or not self._socket.poll(int(left * 1000) + 1, zmq.POLLOUT):
                    raise PeerLost(
                        f"cannot reach {self.info.endpoint} within {self._connect_timeout} s",
                        peer=self.name,
                    ) from None

    def _read(self, until: float) -> list[bytes] | None:
        """The next frames, or None at ``until``."""
        wait = max(0, int((until - time.monotonic()) * 1000))
        if not self._socket.poll(wait, zmq.POLLIN):
            return None
        return self._socket.recv_multipart(copy=True)

    def close(self) -> None:
        self.broken = True
        self._socket.close(0)


class _Answer:
    """What came back for one request: a reply, an error, or a stream collected under the
    bounds a Connection applies (``COLLECT_MAX_CHUNKS``, ``COLLECT_MAX_BYTES``)."""

    def __init__(self, msg_id: int, method: str) -> None:
        self.msg_id = msg_id
        self.method = method
        self.done = False
        self._result: Any = None
        self._error: BaseException | None = None
        self._chunks: list[Any] = []
        self._credit = ReceiveCredit(Window())

    def take(self, message: Message, size: int, peer: str) -> Callable[[int], Message] | None:
        """Record ``message``; what to send back, if anything: a stream's CREDIT when one
        is due, or a CANCEL for a stream past the bounds."""
        kind = message.kind
        if kind == Kind.REPLY:
            self._finish(message.body)
        elif kind == Kind.ERROR:
            self.fail(remote_error(peer, self.method, message.body))
        elif kind == Kind.STREAM_END and message.meta is not None and "redirect" in message.meta:
            self.fail(RedirectFailed(  # a plain request cannot follow: never half an answer
                f"{peer}.{self.method} redirected a plain request (read it with stream())",
                peer=peer, method=self.method,
            ))  # fmt: skip
        elif kind == Kind.STREAM_END:
            self._finish(self._chunks)
        elif self._credit.receive(size):  # a streaming handler answering a plain request
            self._chunks.append(message.body)
            if (
                len(self._chunks) > COLLECT_MAX_CHUNKS
                or self._credit.received_bytes > COLLECT_MAX_BYTES
            ):
                self.fail(
                    ReplyTooLarge(
                        f"{peer}.{self.method} streams more than a plain request collects "
                        f"({COLLECT_MAX_CHUNKS} chunks or {COLLECT_MAX_BYTES} bytes): "
                        "use stream()",
                        limit=COLLECT_MAX_CHUNKS,
                        peer=peer,
                    )
                )
                return lambda msg_id: Message(Kind.CANCEL, msg_id, corr_id=self.msg_id)
            self._credit.consume(size)
            grant = self._credit.due()
            if grant != (0, 0):
                self._credit.granted(grant)
                return lambda msg_id: Message(Kind.CREDIT, msg_id, self.msg_id, body=list(grant))
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
    """The pools of lanes of one SyncNode, per peer name; safe from any thread.
    ``on_lost(name)`` is called (on the caller's thread) when a lane loses its peer."""

    def __init__(
        self,
        context: zmq.Context,
        identity: Identity,
        trust: Trust,
        suites: tuple[Suite, ...],
        heartbeat_s: float,
        connect_timeout: float,
        on_lost: Callable[[str], None],
    ) -> None:
        self._context = context
        self._identity = identity
        self._trust = trust
        self._suites = suites
        self._heartbeat_s = heartbeat_s
        self._connect_timeout = connect_timeout
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._idle: list[Lane] = []  # least recently used first
        self._busy: dict[str, int] = {}

    @property
    def open_lanes(self) -> int:
        with self._lock:
            return len(self._idle) + sum(self._busy.values())

    def idle_to(self, name: str) -> list[Lane]:
        with self._lock:
            return [lane for lane in self._idle if lane.name == name]

    def take(self, info: PeerInfo) -> Lane | None:
        """An idle lane to ``info`` (a new one if the pool has room), or None: every lane
        to it busy, or the node closed. A lane to another incarnation of that name (the
        peer restarted) is dropped."""
        stale = []
        try:
            with self._lock:
                if self._closing.is_set():
                    return None
                for lane in [lane for lane in self._idle if lane.name == info.name]:
                    self._idle.remove(lane)
                    if _same_peer(lane.info, info):
                        self._busy[info.name] = self._busy.get(info.name, 0) + 1
                        return lane
                    stale.append(lane)
                if self._busy.get(info.name, 0) >= MAX_LANES:
                    return None
                lane = Lane(
                    self._context,
                    self._identity,
                    self._trust,
                    info,
                    info.suite_for(self._suites),
                    self._heartbeat_s,
                    self._connect_timeout,
                    self._closing,
                )
                self._busy[info.name] = self._busy.get(info.name, 0) + 1
                return lane
        finally:
            _drop(stale)

    def give_back(self, lane: Lane, lost: bool) -> None:
        """Return a lane after a call; ``lost``: the call found its peer gone, so every
        idle lane to it goes too, and the node forgets the peer (as the loop's pool does)."""
        dropped = []
        with self._lock:
            self._busy[lane.name] -= 1
            if lane.broken or lost or self._closing.is_set():
                dropped.append(lane)
            else:
                self._idle.append(lane)
            if lost:
                dropped += [other for other in self._idle if other.name == lane.name]
            for gone in dropped:
                if gone in self._idle:
                    self._idle.remove(gone)
            while len(self._idle) > MAX_IDLE_LANES:
                dropped.append(self._idle.pop(0))
        _drop(dropped)
        if lost:
            self._on_lost(lane.name)

    def forget(self, name: str) -> None:
        """The peer left, restarted or changed: its idle lanes go (busy ones stay until
        their call ends; the next one finds the new entry)."""
        with self._lock:
            gone = [lane for lane in self._idle if lane.name == name]
            self._idle = [lane for lane in self._idle if lane.name != name]
        _drop(gone)

    def close(self) -> None:
        """Drop every idle lane (with a BYE); calls waiting on busy ones end with PeerLost
        within ``WAKE_S``, and their lanes are dropped as they come back."""
        with self._lock:
            self._closing.set()
            gone, self._idle = self._idle, []
        _drop(gone)


def _drop(lanes: list[Lane]) -> None:
    for lane in lanes:
        lane.say_goodbye()
        lane.close()


def _same_peer(old: PeerInfo, new: PeerInfo) -> bool:
    """The same process at the same place: a restart at the same address is another one."""
    return (
        old.endpoint == new.endpoint
        and old.certificate == new.certificate
        and old.started_ms == new.started_ms
    )
