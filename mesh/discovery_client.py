"""A node's side of discovery: register, renew, look up; several discovery nodes merged.

Every discovery node given is a separate link. A node registers with each and renews on
each; a RENEW answered NOT_FOUND (the discovery node restarted empty) leads straight to a
new REGISTER, so a restarted discovery is repopulated by the live nodes themselves. Lookups
ask every reachable link; the node merges them by name (the entry started last wins). When
no link answers, a lookup fails fast with :class:`DiscoveryUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from .connection import Connection
from .errors import DiscoveryUnavailable, MeshError, NameConflict, PeerLost, RemoteError
from .wire import ErrorCode, Kind

DISCOVERY_TIMEOUT_S = 2.0
DISCOVERY_CONNECT_TIMEOUT_S = 1.0


class DiscoveryLink:
    """One discovery endpoint, reconnected on demand."""

    def __init__(self, url: str, connect: Callable[[str, float], Any]) -> None:
        self.url = url
        self._connect = connect
        self._connection: Connection | None = None
        self._lock = asyncio.Lock()

    async def call(self, kind: int, body: Any, timeout: float = DISCOVERY_TIMEOUT_S) -> Any:
        """One request; a second try on a fresh connection if the first goes unanswered."""
        for attempt in (1, 2):
            connection = await self._connection_or_raise()
            _, call = connection.start_call(kind, "", body)
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

    def close(self) -> None:
        self.drop()


class DiscoveryClient:
    """Registration and lookups over every configured discovery link."""

    def __init__(self, urls: list[str], connect: Callable[[str, float], Any]) -> None:
        self.links = [DiscoveryLink(url, connect) for url in urls]
        self.registration: dict[str, Any] | None = None
        self.lease_ms = 10_000

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
                raise NameConflict(str(exc), peer=(self.registration or {}).get("name")) from exc
            raise
        if isinstance(answer, dict) and isinstance(answer.get("lease_ms"), int):
            self.lease_ms = answer["lease_ms"]

    async def renew_forever(self) -> None:
        """Renew every third of the lease; re-register where the entry was lost."""
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            await asyncio.gather(*(self._renew(link) for link in self.links))

    async def _renew(self, link: DiscoveryLink) -> None:
        with contextlib.suppress(DiscoveryUnavailable, NameConflict, RemoteError):
            try:
                await link.call(Kind.RENEW, None)
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
        await asyncio.gather(
            *(link.call(Kind.UNREGISTER, None, timeout=0.5) for link in self.links),
            return_exceptions=True,
        )

    def close(self) -> None:
        for link in self.links:
            link.close()
