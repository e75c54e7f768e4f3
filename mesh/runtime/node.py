"""The asyncio node: one ROUTER in, a DEALER per peer out, handlers, discovery.

A thin I/O layer over the sans-IO core: :mod:`mesh.runtime.inbound` and
:mod:`mesh.runtime.connection` move bytes and apply what sessions decide; this module adds the
API (request, stream, send, handlers), peer resolution by name or capability, and registration.

Per message, a request costs a credit check, one seal, one NOBLOCK send through the
:class:`~mesh.runtime.reactor.Reactor` (its outcome is known at once), and on the way back one read
in the reactor's callback, one open and one ``future.set_result``: no logging, no extra task,
no queue between the socket and the caller. Flow control (:mod:`mesh.core.flow`) grants credit to
callers as handlers finish and to streams as their readers take chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import zmq

from ..core.codec import Message
from ..core.envelope import local_suites
from ..core.errors import (
    DiscoveryUnavailable,
    InvalidArgument,
    NodeClosed,
    PeerLost,
    RedirectFailed,
    RequestTimeout,
)
from ..core.flow import Window
from ..core.identity import Certificate, Identity, Trust
from ..core.registry import PeerInfo
from ..core.sequencer import DEFAULT_HOLD_S
from ..core.session import SessionTable
from ..core.subjects import validate_pattern
from ..core.wire import DEFAULT_HEARTBEAT_S, DEFAULT_LEASE_MS, Kind, Suite
from ..ops.metrics import MetricsServer
from ..ops.telemetry import CallStats, Traffic, client_span, stream_span, tracing
from . import sockets
from .balancer import LeastBusy
from .callee import Callee
from .connection import CONNECT_TIMEOUT_S, Call, Connection, stream_end
from .delivery import AT_MOST_ONCE, MODES, Deliveries
from .discovery_client import DEFAULT_DISCOVERY, DiscoveryClient
from .handlers import Handler, Redirect
from .inbound import Inbound, cancel_and_wait
from .keystore import MeshDirectory, mesh_directory
from .outbox import DeliveryStore
from .peers import PeerCache
from .pool import ConnectionPool
from .stamps import next_msg_id, now_ms
from .subscription import DEFAULT_QUEUE, Subscription
from .topic_handlers import TopicHandlers
from .topics import ANNOUNCE_TIMEOUT_S, Topics
from .transport import Network, ZmqNetwork

log = logging.getLogger("mesh")
RESERVED_PREFIX = "mesh."  # method names of the protocol's own (protocol.md 8.4)
STATS_METHOD = RESERVED_PREFIX + "stats"
ENV_DISCOVERY = "MESH_DISCOVERY"
CAPABILITY_ATTEMPTS = 3
REGISTER_RETRY_S = 0.2
DEFAULT_STREAM_WINDOW = 64
MAX_REDIRECTS = 8  # hops a stream follows (protocol.md 8.1): a loop of redirects ends
HOUSEKEEPING_S = 5.0
DEFAULT_STREAM_BYTES = 16 * 1024 * 1024


def _method(method: str | None, capability: str | None) -> str:
    """The method to call: given, or the capability's name."""
    chosen = method or capability
    if not chosen:
        raise InvalidArgument("give a method (or a capability whose name is the method)")
    return chosen


def discovery_urls(discovery: str | Sequence[str] | None) -> list[str]:
    """The discovery nodes a node uses, by the one rule the ``mesh`` command follows too:
    the URLs given (one, a comma-separated string or a list); by default (None)
    ``$MESH_DISCOVERY``, else :data:`DEFAULT_DISCOVERY`; an empty list: none (a static
    mesh, whose members meet through ``add_peer``)."""
    if discovery is None:
        discovery = os.environ.get(ENV_DISCOVERY, "").strip() or DEFAULT_DISCOVERY
    if isinstance(discovery, str):
        discovery = [u.strip() for u in discovery.split(",") if u.strip()]
    return [sockets.checked_endpoint(url, "discovery URL") for url in discovery]


class _CallExpired(Exception):
    """A request's time ran out (set on its future by :func:`_expire_later`)."""


def _expire_later(future: asyncio.Future[Any], timeout: float | None) -> asyncio.TimerHandle | None:
    """Fail ``future`` with _CallExpired after ``timeout`` seconds (None: never); the handle,
    to cancel once it is answered. One loop timer, where ``asyncio.timeout`` would cost a
    context, a task lookup and a cancellation to undo: about 5 us a request."""
    if timeout is None:
        return None
    return asyncio.get_running_loop().call_later(timeout, _expire, future)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(_CallExpired())


def _cipher_suites(chosen: tuple[Suite, ...] | None) -> tuple[Suite, ...]:
    """The suites a node runs: the chosen ones this process can run (all it can by
    default), XSalsa20-Poly1305 always among them (every node accepts it)."""
    runnable = local_suites()
    if chosen is None:
        return runnable
    suites = tuple(dict.fromkeys(Suite(s) for s in chosen if s in runnable))
    if Suite.XSALSA20_POLY1305 not in suites:
        suites += (Suite.XSALSA20_POLY1305,)
    return suites


class Node:
    """A member of the mesh. Use ``async with Node("alice", discovery=URL) as node:``.

    Arguments: ``name`` (also the identity's name in the mesh directory), ``discovery`` (one
    URL, a comma-separated string or a list; by default ``$MESH_DISCOVERY``, else
    ``tcp://127.0.0.1:7700``, as for the ``mesh`` command; ``[]``: none, a static mesh),
    ``bind`` (where the ROUTER listens; an ephemeral port by default),
    ``advertise`` (the address peers should dial, required for wildcard binds),
    ``capabilities`` and ``meta`` (published in discovery), ``mesh`` (the mesh directory)
    or ``identity`` and ``trust`` directly, ``heartbeat`` (seconds; a silent peer is lost
    after three), ``register`` (False: use discovery for lookups only, as ``mesh call`` does),
    ``window`` (how much each caller may have unconsumed here; flow control) and
    ``peer_windows`` (the same, per caller name), ``metrics_port`` (serve Prometheus
    metrics there, on ``metrics_address``; 0 picks a free port, see ``metrics_url``),
    ``network`` (what makes the ROUTER and the DEALERs: ZeroMQ by default; the tests pass
    an in-memory one), ``connect_timeout`` (seconds a peer has to answer the handshake
    before calls to it fail with PeerLost; default 5), ``cipher_suites`` (the suites this
    node accepts and offers, preferred first; default: AES-256-GCM where the CPU has AES
    instructions, then XSalsa20-Poly1305, which is always kept).
    """

    def __init__(
        self,
        name: str,
        *,
        discovery: str | Sequence[str] | None = None,
        bind: str = "tcp://127.0.0.1:0",
        advertise: str | None = None,
        capabilities: tuple[str, ...] | list[str] = (),
        meta: dict[str, Any] | None = None,
        mesh: MeshDirectory | str | None = None,
        identity: Identity | None = None,
        trust: Trust | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT_S,
        lease_ms: int = DEFAULT_LEASE_MS,
        register: bool = True,
        window: Window | None = None,
        peer_windows: dict[str, Window] | None = None,
        context: zmq.Context | None = None,
        outbox: str | os.PathLike[str] | None = None,
        publish_dead_letters: bool = False,
        gap_hold_s: float = DEFAULT_HOLD_S,
        metrics_port: int | None = None,
        metrics_address: str = "127.0.0.1",
        network: Network | None = None,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        cipher_suites: tuple[Suite, ...] | None = None,
    ) -> None:
        self.cipher_suites = _cipher_suites(cipher_suites)
        self._metrics_at = (metrics_port, metrics_address)
        self._metrics: MetricsServer | None = None
        if identity is None or trust is None:
            directory = mesh_directory(mesh)
            identity = identity or directory.identity(name)
            trust = trust or directory.verifier()
        if outbox is None:
            outbox = mesh_directory(mesh).path / "outbox" / f"{name}.sqlite3"
        if heartbeat <= 0 or connect_timeout <= 0:
            raise InvalidArgument("heartbeat and connect_timeout must be positive")
        self.connect_timeout = connect_timeout
        self.name = name
        self.identity = identity
        self.trust = trust
        self.capabilities = tuple(capabilities)
        self.meta = dict(meta or {})
        self.heartbeat = heartbeat
        self._bind = bind
        self._advertise = sockets.checked_endpoint(advertise, "advertise") if advertise else None
        self._lease_ms = lease_ms
        self._register = register
        self.window = window or Window()
        self.peer_windows = dict(peer_windows or {})
        self._urls = discovery_urls(discovery)
        self._default_discovery = self._urls == [DEFAULT_DISCOVERY] and discovery is None
        self._context = context or sockets.shared_context()
        self._network = network or ZmqNetwork(self._context)
        self._table = SessionTable()
        self.drops: Counter[str] = Counter()
        self.traffic = Traffic()  # messages and bytes by kind, each way
        self.call_stats = CallStats()  # per peer called: latency and outcomes
        self._callee = Callee(self.drops, self.traffic, self.window_for)
        self._tracing = tracing()  # None unless opentelemetry-api is installed
        self._runner = self._callee.runner
        self._runner.tracing = self._tracing
        self._runner.add(STATS_METHOD, self._stats_handler)  # for mesh status
        self._inbound: Inbound | None = None
        self.known = PeerCache(self.trust, self.drops)
        self._pool = ConnectionPool(
            self._network,
            self.identity,
            self.trust,
            self._table,
            self.known,
            self._lookup,
            drops=self.drops,
            traffic=self.traffic,
            heartbeat_s=self.heartbeat,
            connect_timeout=self.connect_timeout,
            suites=self.cipher_suites,
        )
        self._resolve = self._pool.resolve
        self._balancer = LeastBusy()
        self._discovery: DiscoveryClient | None = None
        self._topics: Topics | None = None
        self._topic_handlers = TopicHandlers(self.name)
        self._peer_watchers: list[Callable[[str, PeerInfo], None]] = []
        self._tasks: list[asyncio.Task] = []
        self.endpoint = ""
        self.started_ms = 0
        self._closed = False
        self._registered = False  # unregister only what this node registered
        self._renewing: asyncio.Task[None] | None = None
        self._deliveries = Deliveries(
            outbox,
            self._resolve,
            self._runner,
            self._callee.send_to_caller,
            self.publish if publish_dead_letters else None,
            gap_hold_s,
        )
        self._callee.deliveries = self._deliveries

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> Node:
        """Bind, then register with discovery. Returns once the node can be called; if a
        step fails, what the earlier ones opened is closed before the error is raised."""
        if self._closed or self._inbound is not None:
            raise NodeClosed("a node starts once: make a new one")
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise
        return self

    async def _open(self) -> None:
        self._inbound = Inbound(
            self._network,
            self.identity,
            self.trust,
            self._table,
            self._bind,
            self._callee.on_frame,
            self.drops,
            self._callee.on_session,
            self.window_for,
            self.cipher_suites,
        )
        self.endpoint = sockets.advertised(self._inbound.endpoint, self._advertise)
        self.started_ms = now_ms()
        self._topics = Topics(
            self._context,
            self.identity,
            self.trust.max_skew_ms,
            self.drops,
            bind=self._inbound.endpoint,
            advertise=self._advertise,
            resolve=self._resolve,
            lookup=self._lookup if self._urls else None,
            reregister=self._reregister,
            reply=self._callee.send_to_peer,
        )
        self._callee.inbound, self._callee.topics = self._inbound, self._topics
        self._inbound.start()
        self._tasks.append(asyncio.create_task(self._housekeeping(), name=f"{self.name} gc"))
        if self._urls:
            self._discovery = DiscoveryClient(
                self._urls,
                self._pool.open,
                self._context,
                self._on_directory_event,
                self.trust.max_skew_ms,
            )
        if self._discovery is not None and self._register:
            await self._first_registration()
            self._registered = True
            self._renewing = asyncio.create_task(
                self._discovery.renew_forever(), name=f"{self.name} renew"
            )
            self._tasks.append(self._renewing)
        self._topic_handlers.start(self.subscribe)
        self._deliveries.resume()
        port, address = self._metrics_at
        if port is not None:
            self._metrics = MetricsServer(self.stats, port, address)

    async def _first_registration(self) -> None:
        """Register, retrying for up to ``connect_timeout``: one discovery attempt is kept
        short (so a dead discovery node fails over fast), which a loaded machine can miss."""
        assert self._discovery is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        while True:
            try:
                await self._discovery.register(self._registration())
                return
            except DiscoveryUnavailable as exc:
                if loop.time() < deadline:
                    pass
                elif self._default_discovery:  # the user may not know a default was used
                    raise DiscoveryUnavailable(
                        f"{exc}: it is the default address (start `mesh discovery`, or point "
                        "at one with $MESH_DISCOVERY or discovery=URL; discovery=[] for a node "
                        "without one)"
                    ) from None
                else:
                    raise
            await asyncio.sleep(REGISTER_RETRY_S)

    @property
    def metrics_url(self) -> str | None:
        """Where Prometheus scrapes this node, if ``metrics_port`` was given."""
        if self._metrics is None:
            return None
        return f"http://{self._metrics_at[1]}:{self._metrics.port}/metrics"

    async def close(self) -> None:
        """Unregister, say BYE to peers, stop handlers and close every socket; returns once
        every task the node started has ended."""
        if self._closed:
            return
        self._closed = True
        if self._metrics is not None:
            self._metrics.close()
        await self._pool.stop_connecting()
        if self._discovery is not None:
            if self._registered:
                await self._discovery.unregister()
            self._discovery.close()
        await self._topic_handlers.close()
        if self._topics is not None:
            await self._topics.close()
        await self._deliveries.close()
        await self._runner.close()
        await self._pool.close()
        await cancel_and_wait(self._tasks)
        if self._inbound is not None:
            self._inbound.close()

    @property
    def serving(self) -> int:
        """Requests, streams and one-way messages this node's handlers are working on now
        (what a drain waits for)."""
        return self._runner.running

    async def withdraw(self) -> None:
        """Leave the directory but go on serving: peers that know this node (its callers,
        their redirects) still reach it, while new callers, by name or capability, choose
        others. The first step of a drain; ``close`` follows when the work is done."""
        if self._discovery is None or not self._registered or self._closed:
            return
        self._register = False  # nothing registers it again
        if self._renewing is not None:
            self._renewing.cancel()  # ended (and awaited) with the other tasks on close
        await self._discovery.unregister()
        self._registered = False  # only now: cut short, close unregisters it instead

    async def __aenter__(self) -> Node:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _registration(self) -> dict[str, Any]:
        offered = {name for name in self._runner.handlers if name != STATS_METHOD}
        capabilities = sorted(set(self.capabilities) | offered)
        return {
            "endpoint": self.endpoint,
            "capabilities": capabilities,
            "meta": self.meta,
            "started_ms": self.started_ms,
            "lease_ms": self._lease_ms,
            "suites": [int(suite) for suite in self.cipher_suites],
            **(self._topics.registration() if self._topics is not None else {}),
        }

    async def _reregister(self) -> None:
        """Tell discovery what changed (topics published, patterns subscribed)."""
        if self._discovery is not None and self._register and not self._closed:
            await self._discovery.register(self._registration())

    def _on_directory_event(self, body: Any) -> None:
        applied = self.known.on_event(body)
        if applied is None:
            return
        if applied[0] != "LEAVE":
            self._pool.supersede(applied[1])
        if self._topics is not None:
            self._topics.on_directory_event(*applied)
        for watcher in self._peer_watchers:
            watcher(*applied)

    def on_peer_event(self, watcher: Callable[[str, PeerInfo], None]) -> None:
        """Call ``watcher(event, info)`` on the loop for every verified directory event this
        node hears (``JOIN``, ``UPDATE``, ``LEAVE``): keeps a view of the mesh current without
        polling. Registered nodes hear events; ``register=False`` ones do not."""
        self._peer_watchers.append(watcher)

    # ------------------------------------------------------------------ handlers

    def handler(self, name: str, function: Handler | None = None) -> Any:
        """Register ``function`` for ``name``; usable as ``@node.handler("echo")``. Names
        starting with ``mesh.`` are the protocol's own (protocol.md 8.4)."""
        if isinstance(name, str) and name.startswith(RESERVED_PREFIX):
            raise InvalidArgument(f"method names starting with {RESERVED_PREFIX!r} are reserved")
        if function is not None:
            self._runner.add(name, function)
            return function

        def decorate(fn: Handler) -> Handler:
            self._runner.add(name, fn)
            return fn

        return decorate

    def window_for(self, peer: Certificate) -> Window:
        """The credit window this node grants ``peer``: its own entry, or the default."""
        return self.peer_windows.get(peer.name, self.window)

    # ------------------------------------------------------------------ calling

    async def request(
        self,
        peer: str | None = None,
        method: str | None = None,
        body: Any = None,
        *,
        capability: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
        block: bool = True,
    ) -> Any:
        """Call ``method`` on ``peer`` (or on the least busy node offering ``capability``)
        and return the reply. ``timeout`` applies to each attempt (and to waiting for the
        peer's credit); ``retries`` resends the same message id, so the callee runs it at
        most once; ``block=False`` raises NoCredit instead of waiting for credit.

        Raises PeerNotFound, DiscoveryUnavailable, RequestTimeout, FlowControlTimeout,
        NoCredit, PeerLost, NoSuchMethod, RemoteError, Unauthorized.
        """
        method = _method(method, capability)
        otel = self._tracing.tracer() if self._tracing is not None else None
        if otel is None:
            return await self._request(peer, method, body, capability, timeout, retries, block)
        with client_span(otel, peer or f"capability:{capability}", method) as meta:
            return await self._request(
                peer, method, body, capability, timeout, retries, block, meta
            )

    async def _request(
        self,
        peer: str | None,
        method: str,
        body: Any,
        capability: str | None,
        timeout: float | None,
        retries: int,
        block: bool,
        meta: dict[str, Any] | None = None,
    ) -> Any:
        started = time.perf_counter_ns()
        connection, msg_id, call = await self._start(
            peer, capability, method, body, timeout=timeout, block=block, meta=meta
        )
        outcome = "ok"
        try:
            for attempt in range(retries + 1):
                if attempt:
                    await connection.acquire(timeout, block)
                    _, call = connection.start_call(
                        Kind.REQUEST, method, body, msg_id=msg_id, meta=meta
                    )
                expiry = _expire_later(call.future, timeout)
                try:
                    return await call.future
                except _CallExpired:
                    if attempt == retries:
                        connection.cancel_call(msg_id)
                        raise RequestTimeout(
                            f"{connection.name}.{method} did not answer within {timeout} s",
                            peer=connection.name,
                            method=method,
                        ) from None
                    connection.calls.pop(msg_id, None)
                finally:
                    if expiry is not None:
                        expiry.cancel()
            raise AssertionError("unreachable")
        except asyncio.CancelledError:
            outcome = "cancelled"
            connection.cancel_call(msg_id)  # the caller gave up: so should the callee
            raise
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self._balancer.release(connection.name)
            self.call_stats.record(connection.name, time.perf_counter_ns() - started, outcome)

    async def stream(
        self,
        peer: str | None = None,
        method: str | None = None,
        body: Any = None,
        *,
        capability: str | None = None,
        timeout: float | None = None,
        window: int = DEFAULT_STREAM_WINDOW,
        follow_redirects: bool = True,
    ) -> AsyncIterator[Any]:
        """Yield the chunks of a streamed reply. Leaving the loop early cancels the handler
        on the other side. ``timeout`` bounds the wait for each chunk. The handler runs at
        most ``window`` chunks ahead of this reader: credit is granted as chunks are taken
        here, so a reader that stops reading pauses the generator.

        A handler that hands its work on ends its stream with a redirect (protocol.md 8.1):
        the stream then goes on from where it points, as one stream to this reader, up to
        ``MAX_REDIRECTS`` hops. ``follow_redirects=False`` does not ask for that, and a
        redirect then fails the stream with RedirectFailed."""
        method = _method(method, capability)
        otel = self._tracing.tracer() if self._tracing is not None else None
        span, meta = stream_span(otel, peer or f"capability:{capability}", method)
        if follow_redirects:
            meta = {**(meta or {}), "follow": True}
        try:
            for hop in range(MAX_REDIRECTS + 1):
                chunks = self._stream_once(peer, capability, method, body, timeout, window, meta)
                async with contextlib.aclosing(chunks):
                    async for item in chunks:
                        if type(item) is not Redirect:
                            yield item
                            continue
                        if not follow_redirects or hop == MAX_REDIRECTS:
                            raise RedirectFailed(
                                f"{peer or capability}.{method} redirected to "
                                f"{item.peer}.{item.method}: "
                                + ("not followed (follow_redirects=False)" if not
                                   follow_redirects else f"more than {MAX_REDIRECTS} hops"),
                                peer=peer, method=method,
                            )  # fmt: skip
                        peer, capability, method, body = item.peer, None, item.method, item.body
                        break
                    else:
                        return
        finally:
            if span is not None:
                span.end()

    async def _stream_once(
        self,
        peer: str | None,
        capability: str | None,
        method: str,
        body: Any,
        timeout: float | None,
        window: int,
        meta: dict[str, Any] | None,
    ) -> AsyncIterator[Any]:
        """One callee's part of a stream: its chunks, then a :class:`Redirect` if it ends
        with one."""
        connection, msg_id, call = await self._start(
            peer,
            capability,
            method,
            body,
            timeout=timeout,
            block=True,
            window=Window(window, DEFAULT_STREAM_BYTES),
            meta=meta,
        )
        assert call.queue is not None
        end = stream_end()
        try:
            while True:
                try:
                    async with asyncio.timeout(timeout):
                        item, size = await call.queue.get()
                except TimeoutError:
                    raise RequestTimeout(
                        f"{connection.name}.{method}: no chunk within {timeout} s",
                        peer=connection.name,
                        method=method,
                    ) from None
                if item is end:
                    return
                if isinstance(item, BaseException):
                    raise item
                connection.grant_stream(msg_id, call, size)  # taken by the reader: consumed
                yield item
                if type(item) is Redirect:
                    return
        finally:
            self._balancer.release(connection.name)
            if msg_id in connection.calls:
                connection.cancel_call(msg_id)

    async def _start(
        self,
        peer: str | None,
        capability: str | None,
        method: str,
        body: Any,
        *,
        timeout: float | None,
        block: bool,
        window: Window | None = None,
        meta: dict[str, Any] | None = None,
    ) -> tuple[Connection, int, Call]:
        """Resolve the target, wait for its credit, send the first message. Addressed by
        capability, a node found unreachable before anything was sent is skipped and
        another one tried."""
        attempts = 1 if peer is not None else CAPABILITY_ATTEMPTS
        for attempt in range(attempts):
            name = peer if peer is not None else await self._choose(capability)
            self._balancer.reserve(name)  # counted now, so concurrent choices spread out
            try:
                connection = await self._resolve(name)
                await connection.acquire(timeout, block)
                msg_id, call = connection.start_call(
                    Kind.REQUEST, method, body, window=window, meta=meta
                )
            except PeerLost:
                self._balancer.release(name)
                if attempt == attempts - 1:
                    raise
                continue
            except BaseException:
                self._balancer.release(name)
                raise
            return connection, msg_id, call
        raise AssertionError("unreachable")

    async def send(
        self,
        peer: str | None = None,
        method: str | None = None,
        body: Any = None,
        *,
        capability: str | None = None,
        timeout: float | None = None,
        block: bool = True,
        delivery: str = AT_MOST_ONCE,
        deadline: float | None = None,
        max_attempts: int | None = None,
    ) -> int | None:
        """One-way: deliver ``method(body)`` to the peer; no reply, no error from the handler.

        ``delivery``: ``"at_most_once"`` (default) sends now and forgets; it waits for the
        peer's credit (``timeout`` bounds that wait: FlowControlTimeout; ``block=False``
        raises NoCredit at once). ``"at_least_once"`` queues the message on the lane to the
        peer and returns its sequence number: it is retried until the peer's handler has
        run it (in send order, once, see :mod:`mesh.core.sequencer`), or dead-lettered after
        ``deadline`` seconds (default 60) or ``max_attempts`` handler failures (default 5).
        ``"durable"`` writes it to the node's outbox first, so it survives a restart.
        ``await node.delivered()`` waits until every reliable message is settled."""
        method = _method(method, capability)
        if delivery not in MODES:
            raise InvalidArgument(f"delivery must be one of {', '.join(MODES)}")
        name = peer if peer is not None else await self._choose(capability)
        if delivery != AT_MOST_ONCE:
            return await self._deliveries.send(name, method, body, delivery, deadline, max_attempts)
        connection = await self._resolve(name)
        await connection.acquire(timeout, block)
        connection.send_one_way(Message(Kind.SEND, next_msg_id(), name=method, body=body))
        return None

    async def ping(self, peer: str, timeout: float = 5.0) -> float:
        """Round-trip time to ``peer`` in seconds: a sealed PING answered by its node, no
        handler involved. Raises PeerNotFound, PeerLost or RequestTimeout."""
        connection = await self._resolve(peer)
        started = time.perf_counter()
        msg_id, call = connection.start_call(Kind.PING, "", None)
        try:
            async with asyncio.timeout(timeout):
                await call.future
        except TimeoutError:
            message = f"{peer} did not answer a ping within {timeout} s"
            raise RequestTimeout(message, peer=peer) from None
        finally:
            connection.calls.pop(msg_id, None)
        return time.perf_counter() - started

    async def delivered(self, timeout: float | None = None) -> None:
        """Wait until every reliable message sent so far is acknowledged or dead-lettered
        (TimeoutError after ``timeout`` seconds)."""
        await self._deliveries.flushed(timeout)

    @property
    def dead_letters(self) -> DeliveryStore:
        """This node's delivery store: ``dead_letters()``, ``ask_retry(id)``, ``purge()``."""
        return self._deliveries.store

    # ------------------------------------------------------------------ topics

    async def publish(
        self, topic: str, body: Any = None, *, timeout: float = ANNOUNCE_TIMEOUT_S
    ) -> int:
        """Publish ``body`` on ``topic`` (a concrete name such as ``orders.eu.new``) to every
        subscriber; returns the message's sequence number on this topic.

        The first publish of a topic registers it and waits (at most ``timeout`` seconds)
        until the nodes that subscribed before are connected; later ones never wait: a
        subscriber too slow to keep up loses messages, which it counts as gaps.
        Raises InvalidArgument (bad topic or body), DiscoveryUnavailable (first publish).
        """
        if self._topics is None:
            raise NodeClosed("start the node before publishing")
        return await self._topics.publish(topic, body, timeout)

    def subscribe(self, pattern: str, *, maxsize: int = DEFAULT_QUEUE) -> Subscription:
        """Subscribe to topics matching ``pattern`` (``a.b``, ``a.*``, ``a.>``).

        Use ``sub = await node.subscribe(...)`` (returns once every current publisher of a
        matching topic is connected: nothing published after that is missed) or ``async for
        message in node.subscribe(...)``. At most ``maxsize`` messages wait unread; beyond
        that they are dropped and counted (``overflow``).
        """
        if self._topics is None:
            raise NodeClosed("start the node before subscribing")
        return self._topics.subscribe(pattern, maxsize)

    def on_topic(self, pattern: str) -> Any:
        """Decorator: call the function with every :class:`TopicMessage` matching
        ``pattern``, in order (``async def`` on the loop, a plain function in a thread)."""
        validate_pattern(pattern)

        def decorate(function: Handler) -> Handler:
            self._topic_handlers.add(pattern, function)
            return function

        return decorate

    # ------------------------------------------------------------------ peers

    def add_peer(
        self,
        certificate: Certificate,
        endpoint: str,
        *,
        cipher_suites: tuple[Suite, ...] = (Suite.XSALSA20_POLY1305,),
    ) -> PeerInfo:
        """Know a peer without discovery (a static mesh, or a test). The certificate must
        verify against this node's authority; raises Unauthorized otherwise.
        ``cipher_suites``: what the peer accepts (its node's ``cipher_suites``), since no
        directory entry says it; XSalsa20-Poly1305, which every node accepts, by default."""
        return self.known.add(certificate, endpoint, tuple(int(s) for s in cipher_suites))

    async def peers(self, capability: str | None = None) -> list[PeerInfo]:
        """Every live node discovery knows (optionally only those offering ``capability``)."""
        query = {"capability": capability} if capability else {}
        return await self._lookup(query)

    async def _lookup(self, query: dict[str, str]) -> list[PeerInfo]:
        if self._discovery is None:
            raise DiscoveryUnavailable("this node was started without discovery")
        asked_at = time.monotonic()
        return self.known.merge(await self._discovery.lookup(query), query, asked_at)

    async def _choose(self, capability: str | None) -> str:
        """The least busy live node offering ``capability``."""
        if not capability:  # without it, a lookup would list every node: never call "anyone"
            raise InvalidArgument("give a peer name or a capability")
        candidates = await self._lookup({"capability": capability})
        return self._balancer.choose(capability, self.known.up(candidates) or candidates)

    # ------------------------------------------------------------------ introspection

    async def _stats_handler(self, body: Any) -> dict[str, Any]:
        """``mesh.stats``: this node's :meth:`stats` for ``mesh status`` (any member of the
        mesh may ask: it reveals counters, not traffic)."""
        found = self.stats()
        found["uptime_s"] = round((now_ms() - self.started_ms) / 1000, 3)
        for figures in found["calls"].values():
            figures.pop("latency", None)  # the raw histogram: too big for a status line
        return found

    def stats(self) -> dict[str, Any]:
        """A snapshot: drops by reason, sessions, and per peer the calls in flight and credit.

        ``connections`` (peers we call): ``calls`` in flight, ``credit_messages`` and
        ``credit_bytes`` the peer has granted us and we have not used, ``waiting`` sends
        queued for credit, ``messages_sent`` in ``frames_sent`` sealed frames (one-way bursts
        are coalesced). ``callers`` (peers calling us): ``held_*`` received and not yet
        consumed by our handlers, ``granted_*`` the totals granted on the current session.
        ``traffic``: ``sent``/``received`` messages and bytes by kind. ``calls``: per peer
        called, ``outcomes`` (``ok`` or the error's type) and ``latency_us`` percentiles of
        the replies (``latency``: the histogram itself). The keys are stable: Prometheus
        (``metrics_port``) and ``mesh status`` read them.
        """
        return {
            "name": self.name,
            "endpoint": self.endpoint,
            "sessions": len(self._table),
            "connections": self._pool.stats(),
            "callers": self._callee.stats(),
            "handler_failures": self._runner.failures + self._topic_handlers.failures,
            "duplicates": self._runner.duplicates,
            "directory_events": self.known.events_seen,
            "topics": self._topics.stats() if self._topics is not None else {},
            "delivery": self._deliveries.stats(),
            "drops": dict(self.drops),
            "traffic": self.traffic.snapshot(),
            "calls": self.call_stats.snapshot(),
        }

    async def _housekeeping(self) -> None:
        """Forget sessions retired long enough ago, and their credit state."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            for session in self._table.expire(now_ms()):
                self._callee.forget(session)
