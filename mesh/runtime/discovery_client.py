"""A node's side of discovery: register, renew, look up; several discovery nodes merged.

Every discovery node given is a separate link. A node registers with each and renews on
each; a RENEW answered NOT_FOUND (the discovery node restarted empty) leads straight to a
new REGISTER, so a restarted discovery is repopulated by the live nodes themselves. Lookups
ask every reachable link; the node merges them by name (the entry started last wins). When
no link answers, a lookup fails fast with :class:`DiscoveryUnavailable`.

RENEW and UNREGISTER name the registration they mean (its ``endpoint`` and ``started_ms``),
and a node does not unregister where its registration was refused: a node refused because
its name is live in another process (NameConflict) leaves that process's entry alone when it
closes.

Specified in protocol.md 9 (discovery).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import zmq

from ..core.errors import (
    DiscoveryUnavailable,
    MeshError,
    NameConflict,
    PeerLost,
    ProtocolError,
    RemoteError,
)
from ..core.replay import ReplayWindow
from ..core.topic_frame import TopicKey, open_publish
from ..core.wire import DEFAULT_REPLAY_WINDOW, DIRECTORY_TOPIC, ErrorCode, Kind
from .connection import Connection
from .reactor import Reactor
from .stamps import now_ms

log = logging.getLogger("mesh.discovery")
OnEvent = Callable[[Any], None]

DEFAULT_DISCOVERY = "tcp://127.0.0.1:7700"  # where `mesh discovery` binds, nodes look
DISCOVERY_TIMEOUT_S = 2.0
DISCOVERY_CONNECT_TIMEOUT_S = 1.0


class DiscoveryLink:
    """One discovery endpoint, reconnected on demand."""

    def __init__(self, url: str, connect: Callable[[str, float], Any]) -> None:
        self.url = url
        self._connect = connect
        self._connection: Connection | None = None
        self._lock = asyncio.Lock()
        self._events: Reactor | None = None
        self._events_key: TopicKey | None = None
        self._window = ReplayWindow(DEFAULT_REPLAY_WINDOW)
        self.events_dropped = 0

    async def call(self, kind: int, body: Any, timeout: float = DISCOVERY_TIMEOUT_S) -> Any:
        """One request; a second try on a fresh connection if the first goes unanswered."""
        for attempt in (1, 2):
            connection = await self._connection_or_raise()
            try:
                if connection.needs_rekey():
                    await connection.rekey()
                _, call = connection.start_call(kind, "", body)
            except PeerLost:
                self.drop()
                if attempt == 2:
                    raise DiscoveryUnavailable(f"discovery {self.url} is unreachable") from None
                continue
            try:
                return await asyncio.wait_for(call.future, timeout)
            except (TimeoutError, PeerLost) as exc:
                # a restarted discovery node silently drops frames of the old session
                self.drop()
                if attempt == 2:
                    raise DiscoveryUnavailable(f"discovery {self.url} did not answer") from exc
        raise AssertionError("unreachable")

    async def _connection_or_raise(self) -> Connection:
        async with self._lock:
            if self._connection is None or self._connection.closed:
                try:
                    self._connection = await self._connect(self.url, DISCOVERY_CONNECT_TIMEOUT_S)
                except PeerLost as exc:
                    raise DiscoveryUnavailable(
                        f"discovery {self.url} is unreachable: {exc}"
                    ) from exc
            return self._connection

    def drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def follow(self, info: Any, context: zmq.Context, on_event: OnEvent, max_skew_ms: int) -> None:
        """Subscribe to the discovery node's JOIN/LEAVE/UPDATE events, as its REGISTER answer
        described them (a restarted discovery node has a new key: follow it anew)."""
        connection = self._connection
        if not (
            isinstance(info, dict)
            and isinstance(info.get("key"), bytes)
            and isinstance(info.get("key_id"), int)
            and isinstance(info.get("endpoint"), str)
            and connection is not None
            and connection.certificate is not None
        ):
            return
        key = TopicKey(DIRECTORY_TOPIC, info["key"], info["key_id"])
        if key == self._events_key:
            return
        self._stop_events()
        publisher = connection.certificate
        socket = context.socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SUBSCRIBE, key.prefix)
        socket.connect(_dialable(info["endpoint"], self.url))
        self._events_key = key
        self._window = ReplayWindow(DEFAULT_REPLAY_WINDOW)

        def receive(frames: list[bytes]) -> None:
            try:
                opened = open_publish(frames, key, publisher, now_ms(), max_skew_ms)
                self._window.accept(opened.seq)
            except ProtocolError:
                self.events_dropped += 1
                return
            for message in opened.messages:
                if message.kind == Kind.EVENT:
                    on_event(message.body)

        self._events = Reactor(socket, receive)

    def _stop_events(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
            self._events_key = None

    def close(self) -> None:
        self._stop_events()
        self.drop()


def _dialable(endpoint: str, via: str) -> str:
    """A wildcard host in ``endpoint`` replaced by the host we reached discovery at."""
    scheme, _, rest = endpoint.partition("://")
    host, _, port = rest.rpartition(":")
    if host in ("0.0.0.0", "*", "[::]", "::"):
        host = via.partition("://")[2].rpartition(":")[0]
    return f"{scheme}://{host}:{port}"


class DiscoveryClient:
    """Registration and lookups over every configured discovery link."""

    def __init__(
        self,
        urls: list[str],
        connect: Callable[[str, float], Any],
        context: zmq.Context,
        on_event: OnEvent,
        max_skew_ms: int,
    ) -> None:
        self.links = [DiscoveryLink(url, connect) for url in urls]
        self._context = context
        self._on_event = on_event
        self._max_skew_ms = max_skew_ms
        self.registration: dict[str, Any] | None = None
        self.lease_ms = 10_000
        self._refused: set[DiscoveryLink] = set()  # links that answered CONFLICT

    async def register(self, registration: dict[str, Any]) -> None:
        """Register with every link. A name conflict anywhere is fatal; an unreachable link
        is retried by the renew loop."""
        self.registration = registration
        results = await asyncio.gather(
            *(self._register(link) for link in self.links), return_exceptions=True
        )
        for result in results:
            if isinstance(result, NameConflict):
                raise result
        if results and all(isinstance(r, BaseException) for r in results):
            first = results[0]
            raise first if isinstance(first, MeshError) else DiscoveryUnavailable(str(first))

    async def _register(self, link: DiscoveryLink) -> None:
        try:
            answer = await link.call(Kind.REGISTER, self.registration)
        except RemoteError as exc:
            if exc.code == ErrorCode.CONFLICT:
                self._refused.add(link)
                raise NameConflict(str(exc), peer=(self.registration or {}).get("name")) from exc
            raise
        self._refused.discard(link)
        if isinstance(answer, dict) and isinstance(answer.get("lease_ms"), int):
            self.lease_ms = answer["lease_ms"]
        if isinstance(answer, dict):
            link.follow(answer.get("events"), self._context, self._on_event, self._max_skew_ms)

    async def renew_forever(self) -> None:
        """Renew every third of the lease; re-register where the entry was lost. Never
        stops on a failure: a node that stopped renewing would silently leave the mesh."""
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            results = await asyncio.gather(
                *(self._renew(link) for link in self.links), return_exceptions=True
            )
            for link, result in zip(self.links, results, strict=True):
                if isinstance(result, Exception):
                    log.warning("renewing with discovery %s failed: %s", link.url, result)

    async def _renew(self, link: DiscoveryLink) -> None:
        with contextlib.suppress(DiscoveryUnavailable, NameConflict, RemoteError):
            try:
                await link.call(Kind.RENEW, self._registration_key())
            except RemoteError as exc:
                if exc.code != ErrorCode.NOT_FOUND:
                    raise
                await self._register(link)

    async def lookup(self, query: dict[str, str]) -> list[dict[str, Any]]:
        """Raw entries matching ``query`` from every reachable link (the node verifies and
        merges them: the caller holds the trust)."""
        results = await asyncio.gather(
            *(link.call(Kind.LOOKUP, query) for link in self.links), return_exceptions=True
        )
        answers = [r for r in results if isinstance(r, list)]
        if not answers:
            reasons = "; ".join(str(r) for r in results if isinstance(r, BaseException))
            raise DiscoveryUnavailable(f"no discovery node answered ({reasons})")
        return [entry for answer in answers for entry in answer if isinstance(entry, dict)]

    async def unregister(self) -> None:
        """Unregister from every link but those that refused the registration."""
        key = self._registration_key()
        ours = [link for link in self.links if link not in self._refused]
        await asyncio.gather(
            *(link.call(Kind.UNREGISTER, key, timeout=1.0) for link in ours),
            return_exceptions=True,
        )

    def _registration_key(self) -> dict[str, Any] | None:
        """Which registration a RENEW or UNREGISTER is about: this process's."""
        if self.registration is None:
            return None
        return {
            "endpoint": self.registration.get("endpoint"),
            "started_ms": self.registration.get("started_ms"),
        }

    def close(self) -> None:
        for link in self.links:
            link.close()
