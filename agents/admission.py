"""Admission to a scarce resource (a model): a few at once, a bounded queue, then refusal.

A model uses every core for one generation, so requests beyond ``slots`` wait in FIFO
order; beyond ``max_waiting`` they are refused at once with :class:`mesh.Overloaded` rather
than piling up (a caller with somewhere else to go should go there). A ticket knows its place
in the queue when it joins, so a streamed reply can tell its reader before it waits.
"""

from __future__ import annotations

import asyncio
from collections import deque

from mesh import InvalidArgument, Overloaded


class Ticket:
    """One request's place: ``position`` requests were ahead of it when it joined (0: it
    runs at once). ``await ticket.ready()``, then ``ticket.leave()`` in a ``finally``."""

    def __init__(self, admission: Admission, position: int, turn: asyncio.Future[None]) -> None:
        self.position = position
        self._admission = admission
        self._turn = turn

    async def ready(self) -> None:
        await asyncio.shield(self._turn)

    def leave(self) -> None:
        """Give the slot back, or the place in the queue if it never came. Idempotent."""
        if self._turn.done() and not self._turn.cancelled():
            if self._admission is not None:
                self._admission.release()
        else:
            self._turn.cancel()
        self._admission = None  # type: ignore[assignment]


class Admission:
    """``slots`` tickets run at once, at most ``max_waiting`` wait."""

    def __init__(self, max_waiting: int, slots: int = 1) -> None:
        if max_waiting < 0 or slots < 1:
            raise InvalidArgument("max_waiting must be >= 0 and slots >= 1")
        self.max_waiting = max_waiting
        self._free = slots
        self._queue: deque[asyncio.Future[None]] = deque()
        self.refused = 0

    @property
    def waiting(self) -> int:
        return sum(1 for turn in self._queue if not turn.done())

    def join(self, *, beyond_limit: bool = False) -> Ticket:
        """A ticket now, or Overloaded if the queue is full (unless ``beyond_limit``: the
        caller bounds such tickets itself, as an LLM agent does the generations handed to
        it, which it has promised to run)."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._free > 0 and not self.waiting:
            self._free -= 1
            turn.set_result(None)
            return Ticket(self, 0, turn)
        waiting = self.waiting
        if waiting >= self.max_waiting and not beyond_limit:
            self.refused += 1
            raise Overloaded(f"busy: {waiting} requests already waiting (limit {self.max_waiting})")
        self._queue.append(turn)
        return Ticket(self, waiting + 1, turn)

    def release(self) -> None:
        """A slot came free: hand it to the first still waiting."""
        while self._queue:
            turn = self._queue.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1
