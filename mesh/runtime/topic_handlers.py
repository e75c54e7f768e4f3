"""``Node.on_topic``: functions called with every message matching a pattern.

Each function reads its own subscription in its own task, so it sees its messages in order
and a slow one holds back only itself (its subscription's bounded queue then drops, counted,
as any slow subscriber's does). A function registered before the node starts is started
with it. A function that raises is logged and counted; the next message still comes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .inbound import cancel_and_wait
from .subscription import Subscription

log = logging.getLogger("mesh")

TopicHandler = Callable[[Any], Awaitable[Any] | Any]


class TopicHandlers:
    """The running topic functions of one node."""

    def __init__(self, node_name: str) -> None:
        self._node_name = node_name
        self._waiting: list[tuple[str, TopicHandler]] = []  # registered before start
        self._subscribe: Callable[[str], Subscription] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.failures = 0

    def add(self, pattern: str, function: TopicHandler) -> None:
        if self._subscribe is None:
            self._waiting.append((pattern, function))
        else:
            self._launch(pattern, function)

    def start(self, subscribe: Callable[[str], Subscription]) -> None:
        """Run every function registered so far, and any added from now on."""
        self._subscribe = subscribe
        for pattern, function in self._waiting:
            self._launch(pattern, function)
        self._waiting.clear()

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)

    def _launch(self, pattern: str, function: TopicHandler) -> None:
        assert self._subscribe is not None
        subscription = self._subscribe(pattern)
        is_async = inspect.iscoroutinefunction(function)

        async def run() -> None:
            async for message in subscription:
                try:
                    if is_async:
                        await function(message)
                    else:
                        await asyncio.to_thread(function, message)
                except Exception:
                    self.failures += 1
                    log.exception("topic handler for %s failed", pattern)

        self._tasks.append(asyncio.create_task(run(), name=f"{self._node_name} on {pattern}"))
