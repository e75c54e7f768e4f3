"""A node's outgoing connections: one per peer name, made once however many callers wait.

The pool resolves a name to an open :class:`~mesh.runtime.connection.Connection`. A connect
runs in a task of its own that every caller awaits through a shield, as httpcore's pool does:
a caller that is cancelled (or times out) leaves, and the other callers, and the connect,
carry on. A connect dials the newest entry known for the name; a restarted peer's JOIN that
arrives while its old address is still being dialled ends that dial and the new address is
dialled at once. A connection that is lost leaves the pool, and its peer is marked down in
the :class:`~mesh.runtime.peers.PeerCache` so the next call looks it up again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

from ..core.errors import NodeClosed, PeerLost, PeerNotFound
from ..core.identity import Certificate, Identity, Trust
from ..core.registry import PeerInfo
from ..core.session import SessionTable
from ..core.wire import Suite
from ..ops.telemetry import Traffic
from .connection import Connection
from .peers import PeerCache
from .transport import Network

CONNECT_ATTEMPTS = 3  # dials of one connect, when newer entries supersede the one dialled
Lookup = Callable[[dict[str, str]], Awaitable[list[PeerInfo]]]


class ConnectionPool:
    """Outgoing connections by peer name; ``lookup`` asks discovery for unknown names."""

    def __init__(
        self,
        network: Network,
        identity: Identity,
        trust: Trust,
        table: SessionTable,
        known: PeerCache,
        lookup: Lookup,
        *,
        drops: Counter[str],
        traffic: Traffic,
        heartbeat_s: float,
        connect_timeout: float,
        suites: tuple[Suite, ...] = (Suite.XSALSA20_POLY1305,),
    ) -> None:
        self._suites = suites  # ours, preferred first
        self._network = network
        self._identity = identity
        self._trust = trust
        self._table = table
        self._known = known
        self._lookup = lookup
        self._drops = drops
        self._traffic = traffic
        self._heartbeat_s = heartbeat_s
        self.connect_timeout = connect_timeout
        self.connections: dict[str, Connection] = {}
        self.connecting: dict[str, asyncio.Task[Connection]] = {}  # one connect per peer
        self.dials: dict[str, tuple[PeerInfo, asyncio.Task[Connection]]] = {}  # under way
        self._closed = False

    async def resolve(self, peer: str) -> Connection:
        """The open connection to ``peer``, made (once, however many callers wait) if needed.
        Raises PeerNotFound, PeerLost, DiscoveryUnavailable or NodeClosed."""
        if self._closed:
            raise NodeClosed("node is closed")
        connection = self.connections.get(peer)
        if connection is not None and not connection.closed:
            if connection.needs_rekey():
                await connection.rekey()
            return connection
        pending = self.connecting.get(peer)
        if pending is None:
            pending = asyncio.create_task(self._connect(peer), name=f"connect {peer}")
            self.connecting[peer] = pending
            pending.add_done_callback(lambda task: self._connected(peer, task))
        return await asyncio.shield(pending)

    def _connected(self, peer: str, task: asyncio.Task[Connection]) -> None:
        if self.connecting.get(peer) is task:
            del self.connecting[peer]
        if not task.cancelled():
            task.exception()  # each waiter gets it through its own await; nobody else must

    async def _connect(self, peer: str) -> Connection:
        for _ in range(CONNECT_ATTEMPTS):
            info = self._known.get(peer)
            if info is None:
                found = await self._lookup({"name": peer})
                info = next((i for i in found if i.name == peer), None)
                if info is None:
                    raise PeerNotFound(f"no live node named {peer!r}", peer=peer)
            dial = asyncio.create_task(
                self.open(
                    info.endpoint,
                    self.connect_timeout,
                    info.certificate,
                    info.suite_for(self._suites),
                ),
                name=f"dial {peer}",
            )
            self.dials[peer] = (info, dial)
            try:
                connection = await dial
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # our own cancellation (the node closing): not a newer entry
                continue  # superseded by a newer entry: dial that one
            except PeerLost:
                if self._known.get(peer) is info:  # never forget a newer entry than ours
                    self.forget(peer)
                    raise
                continue
            finally:
                if self.dials.get(peer, (None, None))[1] is dial:
                    del self.dials[peer]
            self.connections[peer] = connection
            return connection
        raise PeerLost(f"{peer} changed address while being dialled", peer=peer)

    def supersede(self, info: PeerInfo) -> None:
        """A newer entry for a peer being dialled (a JOIN): end the dial; the connect
        retries with the new entry."""
        dialling = self.dials.get(info.name)
        if dialling is not None and self._known.get(info.name) is info:
            old, dial = dialling
            if (old.endpoint, old.started_ms) != (info.endpoint, info.started_ms):
                dial.cancel()

    async def open(
        self,
        endpoint: str,
        timeout: float,
        certificate: Certificate | None = None,
        suite: Suite = Suite.XSALSA20_POLY1305,
    ) -> Connection:
        """A connection outside the pool's bookkeeping (discovery links use it too)."""
        connection = Connection(
            self._network,
            self._identity,
            self._trust,
            self._table,
            endpoint,
            certificate,
            self._drops,
            self._heartbeat_s,
            self._lost,
            self._traffic,
            suite,
        )
        await connection.open(timeout)
        return connection

    def _lost(self, connection: Connection) -> None:
        name = connection.name
        if self.connections.get(name) is connection:
            del self.connections[name]
            self.forget(name)

    def forget(self, name: str) -> None:
        """Drop what we know of ``name``: the next call looks it up again (it may have
        restarted elsewhere), and capability routing skips it for a while."""
        self._known.mark_down(name)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per peer called: ``calls`` in flight, the ``credit_*`` it granted and we have not
        used, ``waiting`` sends queued for credit, ``messages_sent`` in ``frames_sent``, and
        the cipher ``suite`` of the session (6.1)."""
        return {
            name: {
                "calls": len(c.calls),
                "credit_messages": c.credit.messages,
                "credit_bytes": c.credit.bytes,
                "waiting": c.waiting_for_credit,
                "messages_sent": c.messages_sent,
                "frames_sent": c.frames_sent,
                "suite": int(c.suite),
            }
            for name, c in self.connections.items()
        }

    async def stop_connecting(self) -> None:
        """Refuse new connects and end the ones under way (the node is closing)."""
        self._closed = True
        connecting = list(self.connecting.values())
        for task in connecting:
            task.cancel()
        await asyncio.gather(*connecting, return_exceptions=True)

    async def close(self) -> None:
        """Say BYE on every connection, close them and wait until every task they started
        has ended."""
        await self.stop_connecting()
        connections = list(self.connections.values())  # lose() takes them out of the pool
        for connection in connections:
            connection.say_goodbye()
            connection.lose("node closed")
        await asyncio.gather(*(connection.wait_closed() for connection in connections))
