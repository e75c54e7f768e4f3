"""The outbound side: one DEALER to one peer, its handshake, session, calls and heartbeat.

A :class:`Connection` is created on first use of a peer. ``open()`` fetches the peer's
certificate if it is not known yet (CERT_REQUEST, verified against the authority), runs the
handshake; its socket is read by a :class:`Reactor` callback and a heartbeat task watches
the peer. Calls (requests, streams) are
tracked here, so when the peer stops answering heartbeats every call in flight fails with
:class:`PeerLost` within ``MISSED_HEARTBEATS`` intervals instead of at its own timeout.

A connection has one state (:class:`ConnectionState`), checked where it sends, receives and
closes: OPENING until the first handshake finishes, OPEN, REKEYING while a fresh handshake
replaces the session (the old one still carries traffic), CLOSED for good. Credit is checked
before anything is written: a frame that leaves has been paid for, and a call that leaves is
registered.

Specified in protocol.md 6 (handshake), 8.1 (request, reply, stream), 8.3 (liveness).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..core.codec import Message, encode_row, payload_of_rows
from ..core.errors import (
    BadRequest,
    FlowControlTimeout,
    HandshakeRejected,
    InvalidArgument,
    LocalProtocolError,
    MalformedEnvelope,
    MeshError,
    NoCredit,
    NoSuchMethod,
    Overloaded,
    PeerLost,
    ProtocolError,
    RedirectFailed,
    RemoteError,
    ReplyTooLarge,
    UnsupportedAttachment,
)
from ..core.flow import ReceiveCredit, SendCredit, Window
from ..core.handshake import Initiator
from ..core.identity import Certificate, Identity, Trust
from ..core.session import Session, SessionTable
from ..core.wire import (
    MISSED_HEARTBEATS,
    PROTOCOL_VERSION,
    ErrorCode,
    FrameType,
    Kind,
    RejectCode,
    Suite,
)
from ..ops.telemetry import Traffic
from .handlers import Redirect
from .stamps import next_msg_id, now_ms
from .transport import Network, Transport

_XSALSA = Suite.XSALSA20_POLY1305
log = logging.getLogger("mesh.connection")
CONNECT_TIMEOUT_S = 5.0
# one-way messages sent in one turn of the event loop go out as one frame (protocol.md 11.1):
# at most this many, this many bytes of rows, and only rows this small (larger ones go alone)
COALESCE_MESSAGES = 256
COALESCE_BYTES = 64 * 1024
COALESCE_ROW = 8 * 1024
# a plain request to a streaming method collects at most this much before ReplyTooLarge
COLLECT_MAX_CHUNKS = 100_000
COLLECT_MAX_BYTES = 16 * 1024 * 1024
_CERT_REQUEST = bytes([PROTOCOL_VERSION, FrameType.CERT_REQUEST])
_END = object()  # marks the end of a stream in its queue
_REMOTE_ERRORS: dict[int, type[RemoteError]] = {
    ErrorCode.BAD_REQUEST: BadRequest,
    ErrorCode.OVERLOADED: Overloaded,
}
_CREDITED = (Kind.REQUEST, Kind.SEND)
_SEALED = bytes([FrameType.SEALED])


class ConnectionState(enum.Enum):
    """Where a connection is in its life; each operation checks it."""

    OPENING = "opening"  # certificate and first handshake under way: nothing to send on
    OPEN = "open"
    REKEYING = "rekeying"  # a fresh handshake replaces the session; the old one still seals
    CLOSED = "closed"  # for good: every call failed, the transport closed


class Call:
    """One request or stream in flight: a future for a reply, or a queue of chunks.

    A stream's queue holds ``(chunk, size)``, ``size`` None for what was not charged to
    the stream's credit (a one-shot reply, an error); ``credit`` is the reader's side of the
    stream's window, granted back as the reader takes chunks. A plain request to a streaming
    method collects the chunks (granting as they come) up to ``COLLECT_MAX_CHUNKS`` and
    ``COLLECT_MAX_BYTES``; past that the call fails with ReplyTooLarge."""

    __slots__ = ("chunks", "credit", "future", "method", "queue")
    credit: ReceiveCredit

    def __init__(self, method: str, *, window: Window | None = None) -> None:
        self.method = method
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue: asyncio.Queue[Any] | None = asyncio.Queue() if window else None
        self.credit = ReceiveCredit(window or Window())
        self.chunks: list[Any] = []


class Connection:
    """A DEALER to one peer with an authenticated session."""

    def __init__(
        self,
        network: Network,
        identity: Identity,
        trust: Trust,
        table: SessionTable,
        endpoint: str,
        certificate: Certificate | None,
        drops: Counter[str],
        heartbeat_s: float,
        on_lost: Callable[[Connection], None] | None = None,
        traffic: Traffic | None = None,
        suite: Suite = Suite.XSALSA20_POLY1305,
    ) -> None:
        self.endpoint = endpoint
        self.suite = suite  # offered in every HELLO: the peer is known to accept it
        self.certificate = certificate
        self._identity = identity
        self._trust = trust
        self._table = table
        self._drops = drops
        self._traffic = traffic if traffic is not None else Traffic()
        self._heartbeat_s = heartbeat_s
        self._on_lost = on_lost
        self._network = network
        self._transport: Transport | None = None
        self._handshake_answer: asyncio.Future[list[bytes]] | None = None
        self._rekeying: asyncio.Task[None] | None = None
        self._installed: list[Session] = []  # this connection's sessions still in the table
        self._install: Callable[[list[bytes]], None] | None = None
        self.state = ConnectionState.OPENING
        self.session: Session | None = None
        self.calls: dict[int, Call] = {}
        self.credit = SendCredit((0, 0))  # for REQUEST and SEND; the peer grants it
        self._credit_waiters: list[asyncio.Future[None]] = []
        self.last_heard = 0.0
        self._loop_time = asyncio.get_running_loop().time
        self._tasks: list[asyncio.Task] = []
        self.frames_sent = self.messages_sent = 0
        self._rows: list[bytes] = []  # one-way messages waiting to be coalesced
        self._row_bytes = 0
        self._flush_due = False

    @property
    def name(self) -> str:
        return self.certificate.name if self.certificate else self.endpoint

    @property
    def closed(self) -> bool:
        return self.state is ConnectionState.CLOSED

    @property
    def tasks(self) -> tuple[asyncio.Task, ...]:
        """The tasks this connection owns (heartbeat, rekey): ended by :meth:`close`."""
        return tuple(self._tasks)

    def _require_sendable(self) -> Session:
        if self.state is ConnectionState.CLOSED:
            raise PeerLost(f"connection to {self.name} is closed", peer=self.name)
        if self.session is None:  # OPENING: nobody may send before open() returned
            raise LocalProtocolError(f"connection to {self.name} is not open yet")
        return self.session

    # ------------------------------------------------------------------ opening

    async def open(self, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Fetch the certificate if needed, handshake, start reading. Raises PeerLost or a
        HandshakeFailed subclass; the connection is closed on failure."""
        if self.state is not ConnectionState.OPENING or self._transport is not None:
            raise LocalProtocolError(f"open() on a connection that is {self.state.value}")
        try:
            self._transport = self._network.dial(self.endpoint, self._receive)
            async with asyncio.timeout(timeout):
                if self.certificate is None:
                    self.certificate = await self._fetch_certificate()
                await self._handshake()
        except TimeoutError as exc:
            self.close()
            raise PeerLost(
                f"no answer from {self.endpoint} within {timeout} s", peer=self.name
            ) from exc
        except BaseException:
            self.close()
            raise
        self.state = ConnectionState.OPEN
        self.last_heard = self._loop_time()
        self._tasks.append(asyncio.create_task(self._heartbeat(), name=f"beat {self.endpoint}"))
        log.info("connected to %s", self.name, extra={"peer": self.name, "endpoint": self.endpoint})

    async def _exchange(self, frames: list[bytes]) -> list[bytes]:
        """Send a handshake-level frame (retrying until connected) and await the answer."""
        answer = self._handshake_answer = asyncio.get_running_loop().create_future()
        delay = 0.002
        while True:
            if self.state is ConnectionState.CLOSED or self._transport is None:
                raise PeerLost(f"connection to {self.name} closed", peer=self.name)
            if self._transport.send(frames):
                break
            await asyncio.sleep(delay)  # IMMEDIATE: not connected yet
            delay = min(delay * 2, 0.1)
        try:
            return await answer
        finally:
            if self._handshake_answer is answer:
                self._handshake_answer = None

    async def _fetch_certificate(self) -> Certificate:
        answer = await self._exchange([_CERT_REQUEST])
        if len(answer) != 1 or answer[0][:2] != bytes([PROTOCOL_VERSION, FrameType.CERTIFICATE]):
            raise MalformedEnvelope("expected a CERTIFICATE frame")
        return self._trust.verify(Certificate.from_bytes(answer[0][2:]), now_ms())

    async def _handshake(self) -> None:
        """Handshake, offering ``suite``. A peer that refuses the suite (its directory entry
        said it runs one it does not, or a static peer was described wrongly) gets one
        more HELLO offering XSalsa20-Poly1305, which every node runs. A REJECT is not
        authenticated: a forged one can only make this session use the slower suite."""
        try:
            await self._handshake_once()
        except HandshakeRejected as rejected:
            if rejected.code != RejectCode.UNSUPPORTED_SUITE or self.suite is _XSALSA:
                raise
            log.info(
                "%s does not run cipher suite %d: using %d",
                self.name,
                self.suite,
                _XSALSA,
                extra={"peer": self.name},
            )
            self.suite = _XSALSA
            await self._handshake_once()

    async def _handshake_once(self) -> None:
        assert self.certificate is not None
        initiator = Initiator(
            self._identity,
            self._trust,
            self.certificate,
            self._table,
            now_ms(),
            replaces=self.session,
            suite=self.suite,
        )  # a rekey retires the old session

        def install(answer: list[bytes]) -> None:
            if self._rows:
                self._flush()  # rows reserved on the old window go out on the old session
            self.session = initiator.receive(answer, now_ms())
            # the new session and the one it retires: older ones left the table long ago
            # (rekeys are minutes apart, retirement lasts seconds)
            self._installed = [*self._installed[-1:], self.session]
            self.credit = SendCredit(self.session.initial_credit)
            self._wake_credit_waiters()

        self._install = install
        try:
            await self._exchange([initiator.hello])
        finally:
            self._install = None
        if self.state is ConnectionState.CLOSED:  # closed while the WELCOME was on its way
            raise PeerLost(f"connection to {self.name} closed", peer=self.name)

    def needs_rekey(self) -> bool:
        return self.session is not None and self.session.needs_rekey(now_ms())

    async def rekey(self, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Replace the session by a fresh handshake on this connection (forward secrecy over
        time, and never reaching the hard limits). The old session still opens late answers
        for its grace period. Concurrent callers share one handshake, run in a task of its
        own: one caller's cancellation never reaches the others. Raises PeerLost."""
        task = self._start_rekey(timeout)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current is not None and current.cancelling()):
                # the connection was closed under the rekey, not this caller cancelled
                raise PeerLost(f"connection to {self.name} closed", peer=self.name) from None
            raise

    def _start_rekey(self, timeout: float) -> asyncio.Task[None]:
        if self.state is ConnectionState.CLOSED:
            raise PeerLost(f"connection to {self.name} is closed", peer=self.name)
        if self._rekeying is None:
            self.state = ConnectionState.REKEYING
            task = asyncio.create_task(self._rekey(timeout), name=f"rekey {self.endpoint}")
            task.add_done_callback(_consume_outcome)
            self._rekeying = task
            self._tasks.append(task)
        return self._rekeying

    async def _rekey(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._handshake()
        except TimeoutError as exc:
            self.lose(f"{self.name} did not answer a rekey")
            raise PeerLost(f"{self.name} did not answer a rekey", peer=self.name) from exc
        finally:
            self._rekeying = None
            if self.state is ConnectionState.REKEYING:
                self.state = ConnectionState.OPEN
            task = asyncio.current_task()
            if task in self._tasks:
                self._tasks.remove(task)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ reading

    def _receive(self, frames: list[bytes]) -> None:
        if self.state is ConnectionState.CLOSED:
            return
        self.last_heard = self._loop_time()
        if self.session is None or frames[0][1:2] != _SEALED:
            answer = self._handshake_answer
            if answer is not None and not answer.done():
                install = self._install
                if install is not None:
                    try:
                        install(frames)
                    except Exception as exc:
                        answer.set_exception(exc)
                        return
                answer.set_result(frames)
            else:
                self._drops["unexpected"] += 1
            return
        try:
            session, opened = self._table.open(frames, now_ms())
        except ProtocolError as error:
            self._drops[error.reason] += 1
            return
        if not session.initiator or session.peer.node_id != self.session.peer.node_id:
            self._drops["misrouted"] += 1
            return
        self._traffic.received(opened.messages, opened.size)
        if (opened.grant_messages or opened.grant_bytes) and session is self.session:
            self.credit.grant(opened.grant_messages, opened.grant_bytes)
            self._wake_credit_waiters()
        for index, message in enumerate(opened.messages):
            if index in opened.unmaterialised:  # an array this process cannot build
                self._cannot_build(message)
                continue
            self._dispatch(message, opened.size)

    def _cannot_build(self, message: Message) -> None:
        """An answer holding an array or tensor this process has no library for: its call
        fails with UnsupportedAttachment rather than wait for its timeout (protocol.md 7.7)."""
        self._drops["attachment"] += 1
        call = self.calls.get(message.corr_id)
        if call is not None:
            missing = UnsupportedAttachment(
                f"{self.name}.{call.method} answered with an array this process cannot "
                "build: install numpy (or torch)"
            )
            if message.kind == Kind.STREAM:
                self.cancel_call(message.corr_id)  # stop the generator: none of it is read
            else:
                del self.calls[message.corr_id]
            self._finish(call, error=missing)

    def _dispatch(self, message: Message, size: int) -> None:
        kind = message.kind
        call = self.calls.get(message.corr_id)
        if call is None:
            if kind != Kind.PONG and kind != Kind.CREDIT:  # a grant rides in the frame header
                self._drops["no_call"] += 1
            return
        if kind == Kind.STREAM:
            self._stream_chunk(message, call, size)
            return
        del self.calls[message.corr_id]
        if kind == Kind.ERROR:
            self._finish(call, error=remote_error(self.name, call.method, message.body))
        elif kind == Kind.STREAM_END:
            if message.meta is not None and "redirect" in message.meta:
                self._redirected(call, message)
            else:
                self._finish(call, result=call.chunks if call.queue is None else _END)
        else:  # REPLY, ENTRIES and the discovery answers
            self._finish(call, result=message.body)

    def _redirected(self, call: Call, message: Message) -> None:
        """A stream that ends by sending its reader elsewhere: the :class:`Redirect` is the
        reader's last item (``Node.stream`` follows it); a plain request collecting the
        stream cannot follow, and fails rather than return part of an answer."""
        try:
            redirect = Redirect.from_meta(message.meta, message.body)
        except InvalidArgument as exc:
            self._finish(call, error=RedirectFailed(
                f"{self.name}.{call.method} ended with a malformed redirect: {exc}",
                peer=self.name, method=call.method,
            ))  # fmt: skip
            return
        if call.queue is None:
            self._finish(call, error=RedirectFailed(
                f"{self.name}.{call.method} redirected a plain request (read it with stream())",
                peer=self.name, method=call.method,
            ))  # fmt: skip
            return
        call.queue.put_nowait((redirect, None))

    def _stream_chunk(self, message: Message, call: Call, size: int) -> None:
        if not call.credit.receive(size):
            self._drops["no_credit"] += 1  # the callee ignored our window
            return
        if call.queue is not None:
            call.queue.put_nowait((message.body, size))
            return
        # a plain request collecting a stream: credited as chunks come, up to a bound on
        # what it holds; past it, the callee is told to stop and the caller gets a typed error
        call.chunks.append(message.body)
        if len(call.chunks) > COLLECT_MAX_CHUNKS or call.credit.received_bytes > COLLECT_MAX_BYTES:
            text = (
                f"{self.name}.{call.method} streams more than a plain request collects "
                f"({COLLECT_MAX_CHUNKS} chunks or {COLLECT_MAX_BYTES} bytes): use stream()"
            )
            self.cancel_call(message.corr_id)
            error = ReplyTooLarge(text, limit=COLLECT_MAX_CHUNKS, peer=self.name)
            self._finish(call, error=error)
            return
        self.grant_stream(message.corr_id, call, size)

    def _finish(
        self, call: Call, *, result: Any = None, error: BaseException | None = None
    ) -> None:
        if call.queue is not None:
            if result is not None and result is not _END:
                call.queue.put_nowait((result, None))  # a one-shot reply: no stream credit
            call.queue.put_nowait((error if error is not None else _END, None))
        elif not call.future.done():
            if error is not None:
                call.future.set_exception(error)
                call.future.exception()  # whoever awaits it still gets it; nobody else must
            else:
                call.future.set_result(result)

    # ------------------------------------------------------------------ calling

    def send(self, messages: list[Message]) -> None:
        """Seal and send now (after any one-way messages waiting, to keep the order).

        A REQUEST or SEND needs the peer's credit (see :meth:`acquire`): it is checked before
        anything is written, so a refused call leaves nothing on the wire. Raises NoCredit
        (none on hand), PeerLost (the peer cannot take it), InvalidBody (cannot be sealed)."""
        session = self._require_sendable()
        credited = messages[0].kind in _CREDITED
        if self._rows:
            self._flush()  # the waiting one-way messages keep their place ahead of this one
            session = self._require_sendable()  # the flush may have found the peer gone
        if credited and not self.credit.can_send():
            raise NoCredit(f"{self.name} has granted no credit", peer=self.name)
        frames = session.seal(messages, now_ms())
        size = self._write(frames, messages)
        if credited:
            self.credit.charge(size)

    def _write(self, frames: list, messages: list[Message]) -> int:
        """Hand the sealed frames to the transport; their size in bytes."""
        if self._transport is None or not self._transport.send(frames):
            raise self._unreachable()
        size = sum(len(frame) for frame in frames)
        self.frames_sent += 1
        self.messages_sent += len(messages)
        self._traffic.sent(messages, size)
        return size

    def send_one_way(self, message: Message) -> None:
        """Send a SEND (credit on hand: see :meth:`acquire`), coalesced with the others sent
        in this turn of the event loop into one sealed frame: one seal and one socket write
        for a burst, as NATS clients batch writes; a lone message goes at the end of the turn.
        Raises InvalidBody for a bad body, NoCredit without credit, PeerLost if closed."""
        self._require_sendable()
        row = encode_row(message)
        if row is None or len(row) > COALESCE_ROW:
            self.send([message])
            return
        if not self.credit.can_send():
            raise NoCredit(f"{self.name} has granted no credit", peer=self.name)
        self.credit.reserve(len(row))  # the frame's own overhead is charged when it is sealed
        self._rows.append(row)
        self._row_bytes += len(row)
        if len(self._rows) >= COALESCE_MESSAGES or self._row_bytes >= COALESCE_BYTES:
            self._flush()
        elif not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Seal the waiting one-way messages as one frame. If the peer is gone meanwhile
        they are lost, as at-most-once allows, and counted (``unsent``)."""
        self._flush_due = False
        rows, row_bytes = self._rows, self._row_bytes
        self._rows, self._row_bytes = [], 0
        if not rows:
            return
        try:
            session = self._require_sendable()
            frames = session.seal_payload(payload_of_rows(rows), now_ms())
            if self._transport is None or not self._transport.send(frames):
                raise self._unreachable()
        except MeshError:
            self._drops["unsent"] += len(rows)
            return
        self.frames_sent += 1
        self.messages_sent += len(rows)
        size = sum(len(frame) for frame in frames)
        self._traffic.sent_rows(Kind.SEND, len(rows), size)
        self.credit.charge_bytes(size - row_bytes)  # the rows were charged as they queued

    def start_call(
        self,
        kind: int,
        method: str,
        body: Any,
        *,
        window: Window | None = None,
        msg_id: int | None = None,
        ttl_ms: int = 0,
        meta: dict[str, Any] | None = None,
    ) -> tuple[int, Call]:
        """Send a call's first message (credit must be on hand: see :meth:`acquire`) and
        register it; returns (msg id, call). ``window`` makes it a stream read under that
        window, announced to the callee in the request's meta. Nothing is sent if it
        raises (NoCredit, PeerLost, InvalidBody)."""
        msg_id = next_msg_id() if msg_id is None else msg_id
        if window:
            meta = {**(meta or {}), "window": list(window.as_grant)}
        self.send([Message(kind, msg_id, name=method, body=body, ttl_ms=ttl_ms, meta=meta)])
        # registered after sending: no answer can be read before this coroutine yields
        call = self.calls[msg_id] = Call(method, window=window)
        return msg_id, call

    async def acquire(self, timeout: float | None = None, block: bool = True) -> None:
        """Wait until the peer's credit allows one more REQUEST or SEND.

        Raises NoCredit at once when ``block`` is false, FlowControlTimeout after ``timeout``
        seconds, PeerLost if the connection goes away meanwhile. A waiter that gives up
        (timeout or cancellation) leaves nothing behind."""
        if self.credit.can_send() and not self.closed:
            return
        if self.closed:
            raise PeerLost(f"connection to {self.name} closed", peer=self.name)
        if not block:
            raise NoCredit(f"{self.name} has granted no credit", peer=self.name)
        try:
            async with asyncio.timeout(timeout):
                while not self.credit.can_send():
                    if self.closed:
                        raise PeerLost(f"connection to {self.name} closed", peer=self.name)
                    waiter = asyncio.get_running_loop().create_future()
                    self._credit_waiters.append(waiter)
                    try:
                        await waiter
                    finally:
                        if not waiter.done():
                            waiter.cancel()
                        with contextlib.suppress(ValueError):  # woken waiters are gone already
                            self._credit_waiters.remove(waiter)
        except TimeoutError:
            raise FlowControlTimeout(
                f"{self.name} granted no credit within {timeout} s", peer=self.name
            ) from None

    @property
    def waiting_for_credit(self) -> int:
        return len(self._credit_waiters)

    def _wake_credit_waiters(self) -> None:
        waiters, self._credit_waiters = self._credit_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def grant_stream(self, msg_id: int, call: Call, size: int | None) -> None:
        """The reader took a chunk of ``size`` bytes (None: nothing charged to the stream,
        such as a one-shot reply): credit the callee when a batch is due."""
        if size is None:
            return
        call.credit.consume(size)
        grant = call.credit.due()
        if grant != (0, 0) and msg_id in self.calls:
            call.credit.granted(grant)
            with contextlib.suppress(MeshError):
                self.send([Message(Kind.CREDIT, next_msg_id(), msg_id, body=list(grant))])

    def cancel_call(self, msg_id: int) -> None:
        """Forget a call and tell the peer to stop working on it."""
        if self.calls.pop(msg_id, None) is not None and not self.closed:
            with contextlib.suppress(PeerLost, MeshError):
                self.send([Message(Kind.CANCEL, next_msg_id(), corr_id=msg_id)])

    # ------------------------------------------------------------------ liveness

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self._heartbeat_s
        while not self.closed:
            await asyncio.sleep(interval)
            if not self.calls and not self._credit_waiters:
                self.last_heard = loop.time()  # idle: nothing to lose, nothing to prove
                continue
            if self.needs_rekey() and self._rekeying is None:  # a long stream outlives a key
                self._start_rekey(CONNECT_TIMEOUT_S)
            silent = loop.time() - self.last_heard
            if silent > MISSED_HEARTBEATS * interval and self._transport is not None:
                self._transport.read_now()  # silence must not be our own backlog
                silent = loop.time() - self.last_heard
            if silent > MISSED_HEARTBEATS * interval:
                self.lose(f"{self.name} missed {MISSED_HEARTBEATS} heartbeats")
                return
            if silent > interval * 0.9:
                try:
                    self.send([Message(Kind.PING, next_msg_id())])
                except MeshError:  # the peer is gone, or our own socket was closed
                    return

    def _unreachable(self) -> PeerLost:
        """A send found the peer gone. What it sent before it went is taken first (a peer
        that answers and then exits, as a drained agent does, has answered), then every
        call still waiting fails; the PeerLost to raise."""
        if self._transport is not None:
            self._transport.read_now()
        self.lose(f"{self.name} is unreachable")
        return PeerLost(f"{self.name} is unreachable", peer=self.name)

    def lose(self, reason: str) -> None:
        """The peer is gone: fail every call in flight with PeerLost and close."""
        if self.closed:
            return
        log.info(
            "lost %s: %s", self.name, reason, extra={"peer": self.name, "calls": len(self.calls)}
        )
        calls, self.calls = self.calls, {}
        for call in calls.values():
            self._finish(call, error=PeerLost(reason, peer=self.name, method=call.method))
        self.close()
        if self._on_lost is not None:
            self._on_lost(self)

    def close(self) -> None:
        """Close for good: a handshake under way fails with PeerLost, the heartbeat and any
        rekey are cancelled (await :meth:`wait_closed` to see them end), credit waiters raise
        PeerLost, every session of this connection leaves the table."""
        if self.closed:
            return
        self.state = ConnectionState.CLOSED
        answer, self._handshake_answer = self._handshake_answer, None
        if answer is not None and not answer.done():
            answer.set_exception(PeerLost(f"connection to {self.name} closed", peer=self.name))
            answer.exception()  # the handshake that awaited it sees it; nobody else must
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        for session in self._installed:
            self._table.remove(session)
        self.session = None
        if self._transport is not None:
            self._transport.close()
        self._wake_credit_waiters()  # they see the connection closed and raise PeerLost

    async def wait_closed(self) -> None:
        """Close, and wait until every task this connection started has ended."""
        self.close()
        current = asyncio.current_task()
        await asyncio.gather(*(t for t in self._tasks if t is not current), return_exceptions=True)

    def say_goodbye(self) -> None:
        """Send BYE (best effort) before closing."""
        if self.session is not None and not self.closed:
            with contextlib.suppress(PeerLost, MeshError):
                self.send([Message(Kind.BYE, next_msg_id())])


def remote_error(peer: str, method: str, body: Any) -> MeshError:
    """The typed error an ERROR message's body ``[code, text, details]`` stands for."""
    code, text, details = (
        ([*body, None, None, None])[:3]
        if isinstance(body, list)
        else (ErrorCode.INTERNAL, "malformed error", None)
    )
    remote_type = details.get("type") if isinstance(details, dict) else None
    if code == ErrorCode.UNKNOWN_METHOD:
        return NoSuchMethod(str(text), peer=peer, method=method)
    if code == ErrorCode.CANCELLED:
        # a caller that cancelled ignores the answer (protocol.md 8.1): one that reads it
        # did not cancel, so the callee stopped the handler itself, closing. The peer left.
        return PeerLost(f"{peer} stopped before it answered: {text}", peer=peer, method=method)
    error = _REMOTE_ERRORS.get(code, RemoteError) if isinstance(code, int) else RemoteError
    return error(
        str(text),
        code=int(code) if isinstance(code, int) else 0,
        remote_type=remote_type,
        peer=peer,
        method=method,
    )


def _consume_outcome(task: asyncio.Task) -> None:
    """A background rekey's failure already failed the calls (lose); nothing more to say."""
    if not task.cancelled():
        task.exception()


def stream_end() -> object:
    return _END
