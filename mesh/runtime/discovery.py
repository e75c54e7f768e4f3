"""The discovery node: a small directory server on one ROUTER. It carries no message traffic.

Nodes reach it like any peer (CERT_REQUEST, then the handshake), so only members certified by
the mesh authority can register or look anything up. Requests are REGISTER, RENEW, LOOKUP
and UNREGISTER messages; answers are REPLY, ENTRIES or ERROR with the request's id as
``corr_id``. A discovery node restarted with empty state is simply repopulated: a node whose
RENEW comes back NOT_FOUND registers again.

A live name belongs to one process (the rule is :mod:`mesh.core.registry`'s): a second process
registering it is refused with CONFLICT while the first holds it. The first holds it until it
unregisters or its lease runs out, or, under the same keys, until the connection it last
registered or renewed on is gone: a process killed with SIGKILL and started again at once
gets its name back without waiting for the old lease.

Specified in protocol.md 9 (discovery).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import zmq

from ..core.codec import Message
from ..core.envelope import Opened
from ..core.errors import InvalidArgument, MeshError, NameConflict, PeerNotFound
from ..core.identity import Identity, Trust
from ..core.registry import (
    Entry,
    Registry,
    parse_lookup,
    parse_registration,
    parse_registration_key,
)
from ..core.session import Session, SessionTable
from ..core.topic_frame import TopicKey, seal_publish
from ..core.wire import DIRECTORY_TOPIC, ErrorCode, Kind
from . import sockets
from .discovery_client import DEFAULT_DISCOVERY
from .handlers import error_message, pong
from .inbound import Inbound, cancel_and_wait
from .keystore import MeshDirectory, mesh_directory
from .stamps import next_msg_id, now_ms
from .transport import ZmqNetwork

log = logging.getLogger("mesh.discovery")
EXPIRE_EVERY_S = 0.25


class DiscoveryServer:
    """Serve the directory on ``bind`` until closed."""

    def __init__(
        self,
        *,
        bind: str = DEFAULT_DISCOVERY,
        mesh: MeshDirectory | str | None = None,
        identity: Identity | None = None,
        trust: Trust | None = None,
        name: str = "discovery",
        events_bind: str | None = None,
    ) -> None:
        directory = mesh_directory(mesh)
        self.identity = identity or directory.identity(name)
        self.trust = trust or directory.verifier()
        self.registry = Registry()
        self._holders: dict[str, Session] = {}  # name -> session it last registered/renewed on
        self.drops: Counter[str] = Counter()
        self._bind = sockets.checked_endpoint(bind, "--bind")
        self._events_bind = events_bind or bind.rsplit(":", 1)[0] + ":0"
        self._events_key = TopicKey.generate(DIRECTORY_TOPIC)
        self._events_seq = 0
        self._publisher: zmq.Socket | None = None
        self.events_endpoint = ""
        self._context: zmq.Context | None = None
        self._inbound: Inbound | None = None
        self._tasks: list[asyncio.Task] = []
        self.endpoint = ""

    async def start(self) -> DiscoveryServer:
        """Bind and serve; if a step fails, what the earlier ones opened is closed first."""
        try:
            return await self._open()
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> DiscoveryServer:
        self._context = zmq.Context()
        self._inbound = Inbound(  # first: a bad --bind is reported as itself, not as events
            ZmqNetwork(self._context),
            self.identity,
            self.trust,
            SessionTable(),
            self._bind,
            self._on_messages,
            self.drops,
        )
        self._publisher, self.events_endpoint = sockets.publisher(self._context, self._events_bind)
        self.endpoint = self._inbound.endpoint
        self._inbound.start()
        self._tasks = [asyncio.create_task(self._expire(), name="discovery leases")]
        log.info("discovery serving on %s", self.endpoint)
        return self

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        if self._inbound is not None:
            self._inbound.close()
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        if self._context is not None:
            self._context.term()
            self._context = None

    async def __aenter__(self) -> DiscoveryServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _expire(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_EVERY_S)
            self._sweep(now_ms())

    def _sweep(self, now: int) -> None:
        for entry in self.registry.expire(now):
            log.info("lease of %s expired", entry.name)
            self._left(entry)

    def _left(self, entry: Entry) -> None:
        self._holders.pop(entry.name, None)
        self._publish("LEAVE", entry)

    def _register(self, session: Session, body: Any) -> Entry:
        now = now_ms()
        entry = parse_registration(session.peer, body, now)
        self._sweep(now)  # a lease that ran out frees its name now, not at the next sweep
        holder = self.registry.holder(entry)
        if holder is not None and self._gone(holder, entry):
            log.info("%s at %s is gone: its name passes on", holder.name, holder.endpoint)
            self.registry.unregister(holder.certificate, holder.registration)
            self._left(holder)
        event = self.registry.register(entry)  # NameConflict while the holder lives
        self._holders[entry.name] = session
        log.info("%s %s at %s", event, entry.name, entry.endpoint)
        self._publish(event, entry)
        return entry

    def _gone(self, holder: Entry, newcomer: Entry) -> bool:
        """Whether ``holder``, a live entry under the newcomer's own keys, belongs to a
        process that has gone: the connection it last registered or renewed on is closed (a
        probe sent there is unroutable). A process alive but silent (stopped, cut off) keeps
        its connection, and its name until its lease runs out; so does a holder with other
        keys, whatever its connection."""
        if holder.certificate.node_id != newcomer.certificate.node_id:
            return False
        session = self._holders.get(holder.name)
        if session is None or self._inbound is None:
            return False
        try:
            return self._inbound.send(session, [Message(Kind.PONG, next_msg_id())]) == 0
        except MeshError:  # its session aged out: no telling, so its lease decides
            return False

    def _on_messages(self, session: Session, opened: Opened) -> None:
        assert self._inbound is not None
        answers = [
            a for m in opened.messages if (a := self._answer(session, m, opened.size)) is not None
        ]
        if answers:
            try:
                self._inbound.send(session, answers)
            except MeshError:  # the session aged out under us: the node will handshake again
                self.drops["unsendable"] += 1

    def _answer(self, session: Session, message: Message, frame_size: int) -> Message | None:
        kind, corr = message.kind, message.msg_id
        try:
            if kind == Kind.REGISTER:
                entry = self._register(session, message.body)
                return Message(
                    Kind.REPLY,
                    next_msg_id(),
                    corr,
                    body={"lease_ms": entry.lease_ms, "events": self._events_info()},
                )
            if kind == Kind.RENEW:
                key = parse_registration_key(message.body)
                entry = self.registry.renew(session.peer, now_ms(), key)
                self._holders[entry.name] = session
                return Message(Kind.REPLY, next_msg_id(), corr, body={"lease_ms": entry.lease_ms})
            if kind == Kind.LOOKUP:
                return Message(Kind.ENTRIES, next_msg_id(), corr, body=self._lookup(message.body))
            if kind == Kind.UNREGISTER:
                key = parse_registration_key(message.body)
                gone = self.registry.unregister(session.peer, key)
                if gone is not None:
                    self._left(gone)
                return Message(Kind.REPLY, next_msg_id(), corr)
            if kind == Kind.PING:
                return pong(message, frame_size)
            if kind == Kind.BYE:
                assert self._inbound is not None
                self._inbound.forget(session)
                return None
            return error_message(
                corr, ErrorCode.BAD_REQUEST, f"discovery does not serve kind {kind}"
            )
        except NameConflict as exc:  # a live name held by another process: refused, counted
            self.drops["name_conflict"] += 1
            return error_message(corr, ErrorCode.CONFLICT, str(exc), type(exc).__name__)
        except PeerNotFound as exc:
            return error_message(corr, ErrorCode.NOT_FOUND, str(exc), type(exc).__name__)
        except InvalidArgument as exc:
            return error_message(corr, ErrorCode.BAD_REQUEST, str(exc), type(exc).__name__)

    def stats(self) -> dict[str, Any]:
        """Drops by reason (refused registrations included) and the directory's size."""
        return {
            "name": self.identity.name,
            "drops": dict(self.drops),
            "entries": len(self.registry),
        }

    def _events_info(self) -> dict[str, Any]:
        """Where JOIN/LEAVE/UPDATE events are published, and the key to read them."""
        key = self._events_key
        return {"endpoint": self.events_endpoint, "key": key.key, "key_id": key.key_id}

    def _publish(self, event: str, entry: Entry) -> None:
        """Publish a directory change, sealed and signed; best effort (a PUB never blocks)."""
        if self._publisher is None:
            return
        self._events_seq += 1
        body = {"type": event, "entry": entry.to_wire()}
        try:  # an entry parse_registration let through always seals; if not, one event is lost
            frames = seal_publish(
                self.identity,
                self._events_key,
                self._events_seq,
                now_ms(),
                [Message(Kind.EVENT, next_msg_id(), name=event, body=body)],
            )
        except MeshError:
            log.exception("directory event for %s could not be sealed", entry.name)
            self.drops["event_dropped"] += 1
            return
        try:
            self._publisher.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError:
            self.drops["event_dropped"] += 1

    def _lookup(self, body: Any) -> list[dict[str, Any]]:
        return [entry.to_wire() for entry in self.registry.lookup(**parse_lookup(body))]
