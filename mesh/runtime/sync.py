"""SyncNode: the Node API, blocking, for code without an event loop.

A script, a Flask or Django view, a thread pool: each call hands the coroutine to the node's
own event loop, which runs in a background thread, and waits for the result. The methods are
the Node's, wrapped (same names, same arguments), so the two cannot drift apart. The one
exception is the common ``request`` (a named peer the node knows, no retries): it is sealed,
sent and answered on the calling thread, on a lane of its own (:mod:`.direct`), with no hop
to the loop thread and back. The constructor returns only once the node is bound and
registered; ``close()`` (also the context manager's exit, and interpreter exit) unregisters
and stops the thread. Safe to call from several threads at once.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from ..core.errors import NodeClosed, PeerLost
from .direct import Lane, Lanes
from .node import Node
from .subscription import Subscription, TopicMessage
from .transport import ZmqNetwork

CLOSE_TIMEOUT_S = 10.0


class SyncNode:
    """A :class:`Node` driven from blocking code; takes the same arguments as Node."""

    def __init__(self, name: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"mesh {name}", daemon=True
        )
        self._thread.start()
        self._closed = False
        self._lock = threading.Lock()

        async def build() -> Node:
            return await Node(name, **options).start()

        try:
            self.node: Node = self._run(build())
        except BaseException:
            self._stop_loop()
            raise
        self._lanes: Lanes | None = None
        node = self.node
        if isinstance(node._network, ZmqNetwork):  # not over the tests' fake network
            self._lanes = Lanes(
                node._context,
                node.identity,
                node.trust,
                node.cipher_suites,
                node.heartbeat,
                node.connect_timeout,
                self._forget_peer,
            )
            lanes = self._lanes
            node.on_peer_event(lambda event, info: lanes.forget(info.name))
        atexit.register(_close_at_exit, weakref.ref(self))

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def endpoint(self) -> str:
        return self.node.endpoint

    def _run(self, coroutine: Any, timeout: float | None = None) -> Any:
        if self._closed:
            coroutine.close()
            raise NodeClosed("this SyncNode is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def request(
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
        """As :meth:`Node.request`. A call to a named peer this node knows, without
        retries, runs on this thread (tracing on, or every lane to the peer busy, it takes
        the loop's path, like the rest)."""
        lane = self._lane_for(peer, method, capability, retries, block)
        if lane is None:
            return self._run(
                self.node.request(
                    peer,
                    method,
                    body,
                    capability=capability,
                    timeout=timeout,
                    retries=retries,
                    block=block,
                )
            )
        assert self._lanes is not None and isinstance(method, str)
        started = time.perf_counter_ns()
        outcome = "ok"
        lost = False
        try:
            return lane.request(method, body, timeout)
        except Exception as exc:
            outcome = type(exc).__name__
            lost = isinstance(exc, PeerLost) and not self._closed
            raise
        except BaseException:
            outcome = "cancelled"  # as the loop's path says of a caller that gave up
            raise
        finally:
            self._lanes.give_back(lane, lost)
            self.node.call_stats.record(lane.name, time.perf_counter_ns() - started, outcome)

    def _forget_peer(self, name: str) -> None:
        """A lane lost ``name``: the node forgets its entry, as its own pool does, so the
        next call looks it up again."""
        with contextlib.suppress(RuntimeError):  # the loop has stopped: nothing to forget
            self._loop.call_soon_threadsafe(self.node.known.mark_down, name)

    def _lane_for(
        self,
        peer: str | None,
        method: str | None,
        capability: str | None,
        retries: int,
        block: bool,
    ) -> Lane | None:
        if self._closed:
            raise NodeClosed("this SyncNode is closed")
        if (
            self._lanes is None
            or not isinstance(peer, str)
            or not isinstance(method, str)
            or not method
            or capability is not None
            or retries
            or not block
        ):
            return None
        tracing = self.node._tracing
        if tracing is not None and tracing.tracer() is not None:
            return None  # spans are made on the loop's path
        info = self.node.known.get(peer)
        return None if info is None else self._lanes.take(info)

    def handler(self, name: str, function: Callable[..., Any] | None = None) -> Any:
        """As :meth:`Node.handler`. Plain functions run in a worker thread; async ones in the
        node's loop."""
        return self.node.handler(name, function)

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """As :meth:`Node.stream`, as a plain iterator. Closing it early cancels the handler."""
        chunks = self.node.stream(*args, **kwargs)
        try:
            while True:
                try:
                    yield self._run(chunks.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if not self._closed:
                self._run(chunks.aclose())

    def subscribe(self, pattern: str, **options: Any) -> SyncSubscription:
        """As :meth:`Node.subscribe`; returns once the subscription is confirmed."""

        async def confirm() -> Subscription:
            return await self.node.subscribe(pattern, **options)

        return SyncSubscription(self, self._run(confirm()))

    def on_topic(self, pattern: str) -> Any:
        """As :meth:`Node.on_topic` (plain functions run in a worker thread)."""
        decorate = self.node.on_topic(pattern)

        def register(function: Callable[..., Any]) -> Callable[..., Any]:
            async def on_loop() -> None:
                decorate(function)

            self._run(on_loop())
            return function

        return register

    def stats(self) -> dict[str, Any]:
        """As :meth:`Node.stats`, read on the node's own thread."""

        async def read() -> dict[str, Any]:
            return self.node.stats()

        return self._run(read())

    def close(self) -> None:
        """Unregister, close every socket and stop the loop thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            if self._lanes is not None:
                self._lanes.close()
            try:
                asyncio.run_coroutine_threadsafe(self.node.close(), self._loop).result(
                    CLOSE_TIMEOUT_S
                )
            finally:
                self._closed = True
                self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CLOSE_TIMEOUT_S)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> SyncNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _blocking(name: str) -> Callable[..., Any]:
    coroutine_function = getattr(Node, name)

    @functools.wraps(coroutine_function)
    def method(self: SyncNode, *args: Any, **kwargs: Any) -> Any:
        return self._run(getattr(self.node, name)(*args, **kwargs))

    return method


class SyncSubscription:
    """A :class:`Subscription` read from blocking code: iterate it, or ``get(timeout)``."""

    def __init__(self, node: SyncNode, subscription: Subscription) -> None:
        self._node = node
        self.subscription = subscription

    def get(self, timeout: float | None = None) -> TopicMessage:
        """The next message; TimeoutError after ``timeout`` seconds."""
        return self._node._run(self.subscription.get(timeout))

    def __iter__(self) -> Iterator[TopicMessage]:
        while True:
            try:
                yield self._node._run(self.subscription.__anext__())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        async def close() -> None:
            self.subscription.close()

        if not self._node._closed:
            self._node._run(close())

    def __enter__(self) -> SyncSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


for _name in ("send", "peers", "publish", "delivered", "ping"):
    setattr(SyncNode, _name, _blocking(_name))


def _close_at_exit(reference: weakref.ref[SyncNode]) -> None:
    node = reference()
    if node is not None:
        node.close()
