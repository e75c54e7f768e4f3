"""The callee side of a node: who is calling, the credit each caller gets, and what arrives.

Answers to a request go back on the connection it came on (its newest session, a rekey
replaces the key); two processes sharing one identity each get their own. Each session has
its own receive credit (protocol.md 11.1), charged per frame as it arrives and given back as
handlers consume. A certified node holds at most ``MAX_SESSIONS_PER_PEER`` sessions here (the
oldest goes), so however many connections a member opens, what it can make this node hold
is bounded per member, not per connection; a retired session (replaced by a rekey) goes
first. Calls go to the handler runner or, when they
carry ``meta.dlv``, to reliable delivery; topic requests to the node's topics.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..core.codec import Message
from ..core.envelope import Opened
from ..core.errors import MeshError
from ..core.flow import ReceiveCredit, Window
from ..core.identity import Certificate
from ..core.session import Session
from ..core.wire import ErrorCode, Kind
from ..ops.telemetry import Traffic
from .handlers import Caller, HandlerRunner, error_message, pong
from .inbound import Inbound
from .stamps import next_msg_id, now_ms

ErrorAnswer = tuple[ErrorCode, str] | tuple[ErrorCode, str, str]
_CANNOT_BUILD = (
    ErrorCode.BAD_REQUEST,
    "this node cannot take arrays or tensors: numpy (or torch) is not installed",
    "UnsupportedAttachment",
)

if TYPE_CHECKING:
    from .delivery import Deliveries
    from .topics import Topics

MAX_SESSIONS_PER_PEER = 16  # live inbound sessions per certified node (its processes, rekeys)


class Callee:
    """Inbound sessions, their credit and the handler runner; the node sets ``deliveries``,
    ``inbound`` and ``topics`` before the first frame can arrive."""

    def __init__(
        self, drops: Counter[str], traffic: Traffic, window_for: Callable[[Certificate], Window]
    ) -> None:
        self._drops = drops
        self._traffic = traffic
        self._window_for = window_for
        self.sessions: dict[bytes, Session] = {}  # newest inbound session per peer node id
        self.inflow: dict[bytes, ReceiveCredit] = {}  # per inbound session: what we grant
        self._by_peer: dict[bytes, OrderedDict[bytes, Session]] = {}  # node id -> sessions
        self._caller_of: dict[bytes, Caller] = {}  # per inbound session
        self.runner = HandlerRunner(self.send_to_caller, self._same_connection)
        self.deliveries: Deliveries | None = None
        self.inbound: Inbound | None = None
        self.topics: Topics | None = None

    def on_session(self, session: Session) -> None:
        """A caller handshook (first contact, reconnect or rekey): answer on the new key,
        with a fresh credit window (credit never carries over between sessions)."""
        peer_id = session.peer.node_id
        self.sessions[peer_id] = session
        self.inflow[session.recv_id] = ReceiveCredit(self._window_for(session.peer))
        self._caller_of[session.recv_id] = Caller(session)
        held = self._by_peer.setdefault(peer_id, OrderedDict())
        held[session.recv_id] = session
        while len(held) > MAX_SESSIONS_PER_PEER:
            # a session a rekey retired goes before any live one: a member's connections
            # (its loop's, a SyncNode's lanes, its other processes') keep theirs
            retired = (rid for rid, s in held.items() if s.retired_ms is not None)
            oldest = held.pop(next(retired, next(iter(held))))
            self._drops["sessions_per_peer"] += 1
            self.forget(oldest)

    def on_frame(self, session: Session, opened: Opened) -> None:
        """Everything that arrives on an inbound session: calls under credit, pings,
        cancels, stream credit, topic requests, goodbyes."""
        self._traffic.received(opened.messages, opened.size)
        peer_id = session.peer.node_id
        caller = self._caller_of.get(session.recv_id)
        if caller is None:  # forgotten (expired, or beyond the per-peer bound): not served
            self._drops["forgotten_session"] += 1
            return
        if session.retired_ms is None:  # a late frame on a replaced key must not revive it
            self.sessions[peer_id] = session
        credited = sum(1 for m in opened.messages if m.kind == Kind.REQUEST or m.kind == Kind.SEND)
        admitted = False
        if credited:  # one frame, coalesced or not: k messages and its size (protocol 11.1)
            inflow = self.inflow.get(session.recv_id)
            admitted = inflow is not None and inflow.receive(opened.size, credited)
        size = opened.size  # charged to the first credited message, 0 to the others
        now = now_ms()
        for index, message in enumerate(opened.messages):
            kind = message.kind
            if kind == Kind.REQUEST or kind == Kind.SEND:
                if not admitted:
                    self._refuse(caller, message)
                elif index in opened.unmaterialised:  # arrays with no library here (7.7)
                    self._not_run(caller, message, size, "attachment", _CANNOT_BUILD)
                elif message.meta is not None and "dlv" in message.meta:
                    self._start_delivery(caller, message, size)
                elif message.ttl_ms and opened.timestamp_ms + message.ttl_ms < now:
                    expired = (ErrorCode.DEADLINE_EXCEEDED, "expired before it was served")
                    self._not_run(caller, message, size, "expired", expired)  # 7.5
                else:
                    self._start_handler(caller, message, size)
                size = 0
            elif kind == Kind.PING:
                self.send_on(session, [pong(message, opened.size)])
            elif kind == Kind.CANCEL:
                self.runner.cancel(caller, message.corr_id)
            elif kind == Kind.CREDIT:
                if message.corr_id:
                    self.runner.grant(caller, message.corr_id, message.body)
            elif kind == Kind.SUBSCRIBE and self.topics is not None:
                self.send_on(session, [self.topics.answer_subscribe(message)])
            elif kind == Kind.TOPIC_OFFER and self.topics is not None:
                self.topics.on_offer(session, message)
            elif kind == Kind.BYE:
                if self.topics is not None:
                    self.topics.on_goodbye(session)
                self.runner.cancel_peer(caller)
                self.forget(session)
                return  # the session is over: what follows BYE in its frame is not served
            else:
                self._drops["unexpected_kind"] += 1

    def _refuse(self, caller: Caller, message: Message) -> None:
        """The caller ignored our window: refuse, visibly. A reliable message is not acked
        (its sender will try again); a plain REQUEST is answered NO_CREDIT."""
        self._drops["no_credit"] += 1
        if message.kind == Kind.REQUEST and not (message.meta and "dlv" in message.meta):
            error = error_message(message.msg_id, ErrorCode.NO_CREDIT, "sent without credit")
            self.send_to_caller(caller, [error])

    def _not_run(
        self, caller: Caller, message: Message, size: int, reason: str, answer: ErrorAnswer
    ) -> None:
        """An admitted REQUEST or SEND this node will not run: counted under ``reason``, its
        credit given back; a REQUEST is answered with the error (the grant rides along)."""
        self._drops[reason] += 1
        session = caller.session
        self.inflow[session.recv_id].consume(size)
        if message.kind == Kind.REQUEST:
            self.send_to_caller(caller, [error_message(message.msg_id, *answer)])
        else:
            self._flush_grant(self._current(session))

    def _start_handler(self, caller: Caller, message: Message, size: int) -> None:
        """Run an admitted REQUEST or SEND; grant back when the handler has consumed it."""
        session = caller.session
        inflow = self.inflow[session.recv_id]

        def consumed(reply_follows: bool) -> None:
            inflow.consume(size)
            if not reply_follows:  # nothing to carry the grant: send it alone when due
                self._flush_grant(self._current(session))

        self.runner.start(caller, message, consumed)

    def _start_delivery(self, caller: Caller, message: Message, size: int) -> None:
        """A reliable message (``meta.dlv``): in order and deduplicated, acked when handled."""
        session = caller.session
        inflow = self.inflow[session.recv_id]

        def consumed() -> None:
            inflow.consume(size)
            self._flush_grant(self._current(session))  # an ack may not follow (a drop)

        assert self.deliveries is not None
        self.deliveries.receive(caller, message, consumed)

    def _flush_grant(self, session: Session) -> None:
        inflow = self.inflow.get(session.recv_id)
        if inflow is not None and inflow.due() != (0, 0):
            self.send_on(session, [Message(Kind.CREDIT, next_msg_id())])

    def send_to_peer(self, peer_id: bytes, messages: list[Message]) -> int:
        """Send to the newest inbound session of a peer (it may have reconnected)."""
        session = self.sessions.get(peer_id)
        if session is None:
            return 0
        return self.send_on(session, messages)

    def send_to_caller(self, caller: Caller, messages: list[Message]) -> int:
        """Answer on the connection the caller's request came on; bytes sent, 0 if gone."""
        return self.send_on(self._current(caller.session), messages)

    def _current(self, session: Session) -> Session:
        return self.inbound.newest_on_connection(session) if self.inbound else session

    def _same_connection(self, a: Caller, b: Caller) -> bool:
        if a.session is b.session:
            return True
        if self.inbound is None or a.node_id != b.node_id:
            return False
        route = self.inbound.connection_of(a.session)
        return route is not None and route == self.inbound.connection_of(b.session)

    def send_on(self, session: Session, messages: list[Message]) -> int:
        """Seal and send, with any credit grant that is due riding along; bytes sent."""
        if self.inbound is None:
            return 0
        inflow = self.inflow.get(session.recv_id)
        grant = inflow.due() if inflow is not None else (0, 0)
        try:
            sent = self.inbound.send(session, messages, grant)
        except MeshError as exc:  # a reply the codec cannot carry becomes an error
            text = f"reply cannot be sent: {exc}"
            error = error_message(
                messages[0].corr_id, ErrorCode.HANDLER_FAILED, text, type(exc).__name__
            )
            messages = [error]
            try:
                sent = self.inbound.send(session, messages, grant)
            except MeshError:
                self._drops["unsendable"] += 1
                return 0
        if sent:
            self._traffic.sent(messages, sent)
            if inflow is not None and grant != (0, 0):
                inflow.granted(grant)
        return sent

    def forget(self, session: Session) -> None:
        """A session ended (BYE, expiry, or beyond the per-peer bound): its credit state
        goes with it, and answers for that node go to another of its sessions if any."""
        peer_id = session.peer.node_id
        self.inflow.pop(session.recv_id, None)
        self._caller_of.pop(session.recv_id, None)
        held = self._by_peer.get(peer_id)
        if held is not None:
            held.pop(session.recv_id, None)
            if not held:
                del self._by_peer[peer_id]
        if self.sessions.get(peer_id) is session:
            others = list(held.values()) if held else []
            if others:
                self.sessions[peer_id] = others[-1]
            else:
                del self.sessions[peer_id]
        if self.inbound is not None:
            self.inbound.forget(session)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per caller: ``held_*`` received and not yet consumed, ``granted_*`` so far."""
        found = {}
        for session in self.sessions.values():
            inflow = self.inflow.get(session.recv_id)
            if inflow is not None:
                held_messages, held_bytes = inflow.held()
                found[session.peer.name] = {
                    "held_messages": held_messages,
                    "held_bytes": held_bytes,
                    "granted_messages": inflow.granted_messages,
                    "granted_bytes": inflow.granted_bytes,
                }
        return found
