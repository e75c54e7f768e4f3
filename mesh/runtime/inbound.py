"""The inbound side of a node (and of a discovery node): one bound ROUTER.

It answers CERT_REQUEST with the node's certificate, turns HELLOs into sessions, opens
SEALED frames and hands their messages to the owner's callback. Anything that fails a check
is dropped and counted by reason; nothing is allocated for a sender that has not
authenticated (a REJECT is the only answer, and only for refusals a peer can act on).

Specified in protocol.md 4.1 (CERT_REQUEST and CERTIFICATE), 6 (handshake), 7 (SEALED frames).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

from ..core.codec import Message
from ..core.envelope import Opened
from ..core.errors import HandshakeBusy, NodeClosed, ProtocolError
from ..core.flow import Window
from ..core.handshake import Responder
from ..core.identity import Certificate, Identity, Trust
from ..core.ratelimit import RateLimiter
from ..core.session import Session, SessionTable
from ..core.wire import PROTOCOL_VERSION, FrameType, Suite
from .stamps import now_ms
from .transport import Network, Transport

OnMessages = Callable[[Session, Opened], None]
log = logging.getLogger("mesh.inbound")
_SEALED, _HELLO, _CERT_REQUEST = FrameType.SEALED, FrameType.HELLO, FrameType.CERT_REQUEST
_CERT_REQUEST_FRAME = bytes([PROTOCOL_VERSION, FrameType.CERT_REQUEST])


class Inbound:
    """A bound ROUTER speaking the handshake and opening SEALED frames."""

    def __init__(
        self,
        network: Network,
        identity: Identity,
        trust: Trust,
        table: SessionTable,
        bind: str,
        on_messages: OnMessages,
        drops: Counter[str],
        on_session: Callable[[Session], None] | None = None,
        window_for: Callable[[Certificate], Window] | None = None,
        suites: tuple[Suite, ...] | None = None,
    ) -> None:
        self._listener = network.listen(bind)
        self.endpoint = self._listener.endpoint
        self._hellos = RateLimiter()  # per connection: a HELLO costs two public-key operations
        # and per certified node: many connections of one member must not multiply its
        # sessions (each holds credit and a replay window) beyond what one would get
        self._peer_hellos = RateLimiter()
        self._identity = identity
        self._table = table
        choose = window_for or (lambda _certificate: Window())
        self._responder = Responder(
            identity,
            trust,
            table,
            credit=lambda certificate: choose(certificate).as_grant,
            suites=suites,
        )
        self._on_messages = on_messages
        self._on_session = on_session
        self._drops = drops
        self._routes: dict[bytes, bytes] = {}  # session recv id -> ROUTER routing id
        self._transport: Transport | None = None
        self._by_routing: dict[bytes, Session] = {}  # newest session per connection
        self._certificate_frame = (
            bytes([PROTOCOL_VERSION, FrameType.CERTIFICATE])
            + identity.require_certificate().to_bytes()
        )

    def start(self) -> None:
        """Start reading (call from the event loop's thread)."""
        self._transport = self._listener.start(self._receive)

    def _receive(self, frames: list[bytes]) -> None:
        try:
            self.handle(frames)
        except ProtocolError as error:
            self._drops[error.reason] += 1
            if log.isEnabledFor(logging.DEBUG):  # per frame: one level check otherwise
                log.debug("dropped a frame: %s", error, extra={"reason": error.reason})

    def handle(self, frames: list[bytes]) -> None:
        if len(frames) < 2 or len(frames[1]) < 2:
            self._drops["malformed"] += 1
            return
        routing, rest = frames[0], frames[1:]
        frame_type = rest[0][1]
        if frame_type == _SEALED:
            session, opened = self._table.open(rest, now_ms())
            if session.initiator:  # our outbound session: never valid on the ROUTER
                self._drops["misrouted"] += 1
                return
            self._routes[session.recv_id] = routing
            self._on_messages(session, opened)
        elif frame_type == _HELLO:
            self._hello(routing, rest)
        elif frame_type == _CERT_REQUEST and len(rest) == 1 and rest[0] == _CERT_REQUEST_FRAME:
            self._send_raw([routing, self._certificate_frame])
        elif rest[0][0] != PROTOCOL_VERSION:  # (a HELLO of another version gets REJECT 1)
            self._drops["version"] += 1
        else:
            self._drops["frame_type"] += 1

    def _hello(self, routing: bytes, frames: Sequence[bytes]) -> None:
        previous = self._by_routing.get(routing)  # a rekey on the same connection
        try:
            if not self._hellos.allow(routing, time.monotonic()):
                raise HandshakeBusy("too many handshakes from this connection")
            session, welcome = self._responder.receive(frames, now_ms(), previous)
            if not self._peer_hellos.allow(session.peer.node_id, time.monotonic()):
                self._table.remove(session)
                raise HandshakeBusy(f"too many handshakes from {session.peer.name}")
        except ProtocolError as error:
            reject = Responder.reject_frames(frames, error)
            if reject is not None:
                self._send_raw([routing, *reject])
            raise
        self._routes[session.recv_id] = routing
        self._by_routing[routing] = session
        self._send_raw([routing, *welcome])
        log.info("session with %s", session.peer.name, extra={"peer": session.peer.name})
        if self._on_session is not None:
            self._on_session(session)

    def send(
        self, session: Session, messages: Sequence[Message], grant: tuple[int, int] = (0, 0)
    ) -> int:
        """Seal ``messages`` (and a credit ``grant``) to an inbound session; returns the bytes
        sent, 0 if the peer is gone. Raises InvalidBody for what cannot be encoded."""
        routing = self._routes.get(session.recv_id)
        if routing is None:
            return 0
        frames = session.seal(messages, now_ms(), grant)
        if not self._send_raw([routing, *frames]):
            return 0
        return sum(len(frame) for frame in frames)

    def connection_of(self, session: Session) -> bytes | None:
        """The connection (ROUTER routing id) a session's frames last came on."""
        return self._routes.get(session.recv_id)

    def newest_on_connection(self, session: Session) -> Session:
        """The session that now carries ``session``'s connection: a rekey replaces the key,
        not the peer process, so answers to work begun under the old key go on the new."""
        routing = self._routes.get(session.recv_id)
        newest = self._by_routing.get(routing) if routing is not None else None
        if newest is not None and newest.peer.node_id == session.peer.node_id:
            return newest
        return session

    def forget(self, session: Session) -> None:
        routing = self._routes.pop(session.recv_id, None)
        if routing is not None and self._by_routing.get(routing) is session:
            del self._by_routing[routing]
        self._table.remove(session)

    def _send_raw(self, frames: list) -> bool:
        if self._transport is None:
            return False
        try:
            if self._transport.send(frames):
                return True
        except NodeClosed:
            return False  # our own socket is shut: nothing to count against the peer
        self._drops["unroutable"] += 1  # EHOSTUNREACH (peer gone) or EAGAIN (queue full)
        return False

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        else:
            self._listener.close()


async def cancel_and_wait(tasks: Sequence[asyncio.Task]) -> None:
    """Cancel ``tasks`` and wait until they have finished."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
