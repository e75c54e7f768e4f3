"""Bridging a model's generation thread to a streamed reply, with backpressure both ways.

The model runs a token at a time in a worker thread (:mod:`agents.decoding`); each piece of
text that may be sent goes to the event loop through a :class:`Bridge`. The bridge holds at
most ``lookahead`` chunks the loop has not yet sent: the streamed reply's ``yield`` returns
only once the mesh has sent the chunk, which waits for the reader's credit, so a slow reader
stalls the thread at its next token instead of letting text pile up. Cancelling (the reader
left) sets an event that the thread checks before every token, and wakes a thread waiting
for room.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

DONE = object()  # the last item a bridge delivers, after the final text
POLL_S = 0.05  # how often a thread waiting for room checks for cancellation


class Bridge:
    """Chunks from one generation thread to the loop: bounded, cancellable."""

    def __init__(self, loop: asyncio.AbstractEventLoop, lookahead: int) -> None:
        self.loop = loop
        self.chunks: asyncio.Queue[Any] = asyncio.Queue()
        self._room = threading.Semaphore(lookahead)
        self.cancelled = threading.Event()
        # a move asked for (the agent to go to), and what the thread captured for it
        self.move_to: str | None = None  # "": any replica (a drain)
        self.move_at = 0  # ... once this many tokens are produced (a prefill/decode split: 1)
        self.state: dict[str, Any] | None = None
        self.moved_at = 0  # tokens produced here before the move
        self.owner = ""  # the generation's caller: the one peer that may move it
        self.ended = False  # the thread has produced its last token
        self.produced = 0  # tokens the model has produced so far (read by status)
        self.first_token_at: float | None = None

    def put(self, chunk: dict[str, Any]) -> None:
        """From the thread: wait for room (or cancellation), then hand the chunk over."""
        while not self._room.acquire(timeout=POLL_S):
            if self.cancelled.is_set():
                return
        self.loop.call_soon_threadsafe(self.chunks.put_nowait, chunk)

    def finish(self) -> None:
        """From the thread, always last, whatever happened."""
        self.loop.call_soon_threadsafe(self.chunks.put_nowait, DONE)

    def taken(self) -> None:
        """From the loop: a chunk was sent on; the thread may produce another."""
        self._room.release()
