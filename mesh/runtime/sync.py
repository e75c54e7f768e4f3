"""SyncNode: the Node API, blocking, for code without an event loop.

A script, a Flask or Django view, a thread pool: each call hands the coroutine to the node's
own event loop, which runs in a background thread, and waits for the result. The methods are
the Node's, wrapped (same names, same arguments), so the two cannot drift apart. The
constructor returns only once the node is bound and registered; ``close()`` (also the
context manager's exit, and interpreter exit) unregisters and stops the thread. Safe to call
from several threads at once.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from ..core.errors import NodeClosed
from .node import Node
from .subscription import Subscription, TopicMessage

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


for _name in ("request", "send", "peers", "publish", "delivered", "ping"):
    setattr(SyncNode, _name, _blocking(_name))


def _close_at_exit(reference: weakref.ref[SyncNode]) -> None:
    node = reference()
    if node is not None:
        node.close()
