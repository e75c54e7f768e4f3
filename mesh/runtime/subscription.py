"""What a subscriber holds: a :class:`Subscription` (an async iterator of :class:`TopicMessage`).

``node.subscribe(pattern)`` returns the subscription at once and confirms it in the
background; awaiting it (or taking its first message) waits for that confirmation, after
which every message published to a matching topic reaches it (protocol.md, section 10).
Messages wait in a bounded queue until the application takes them: a subscriber that stops
reading loses the overflow, counted in ``overflow`` and the node's stats, rather than
growing without bound; the publisher is never slowed by it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

DEFAULT_QUEUE = 10_000


@dataclass(frozen=True, slots=True)
class TopicMessage:
    """One message received on a topic: its ``body``, and who published it, when, as which
    number in that publisher's sequence for the topic."""

    topic: str
    body: Any
    publisher: str
    seq: int
    timestamp_ms: int


class Subscription:
    """Messages on topics matching ``pattern``. Use ``await``, ``async for`` or ``get()``;
    ``close()`` (or leaving ``async with``) unsubscribes."""

    def __init__(
        self, pattern: str, maxsize: int, on_close: Callable[[Subscription], None]
    ) -> None:
        self.pattern = pattern
        self.maxsize = maxsize
        self.received = 0
        self.overflow = 0
        self.closed = False
        self._queue: deque[TopicMessage] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._on_close = on_close
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def deliver(self, message: TopicMessage) -> None:
        """Queue ``message`` for the reader (called by the node as frames arrive)."""
        if self.closed:
            return
        if len(self._queue) >= self.maxsize:
            self.overflow += 1
            return
        self._queue.append(message)
        self.received += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __await__(self) -> Generator[Any, None, Subscription]:
        yield from asyncio.shield(self.ready).__await__()
        return self

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> TopicMessage:
        await asyncio.shield(self.ready)
        while not self._queue:
            if self.closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._queue.popleft()

    async def get(self, timeout: float | None = None) -> TopicMessage:
        """The next message; TimeoutError after ``timeout`` seconds; StopAsyncIteration once
        closed and drained."""
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    @property
    def pending(self) -> int:
        """Messages received and not yet taken."""
        return len(self._queue)

    def close(self) -> None:
        """Unsubscribe: no more messages are queued; those already queued can still be read."""
        if self.closed:
            return
        self.closed = True
        if not self.ready.done():
            self.ready.set_result(None)  # nobody waits for a confirmation that cannot come
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._on_close(self)

    async def __aenter__(self) -> Subscription:
        return await self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
