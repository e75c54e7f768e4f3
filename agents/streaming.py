"""Bridging a model's generation thread to a streamed reply, with backpressure both ways.

``model.generate`` blocks, so it runs in a worker thread and hands each token to a
:class:`TokenStreamer` (transformers' streamer interface). The streamer decodes, lets the
:class:`~agents.generation.TextAssembler` decide what may be sent, and passes chunks to the
event loop through a :class:`Bridge`. The bridge holds at most ``lookahead`` chunks the loop
has not yet sent: the streamed reply's ``yield`` returns only once the mesh has sent the
chunk, which waits for the reader's credit, so a slow reader stalls the thread at its next
token instead of letting text pile up. Cancelling (the reader left) sets an event that the
stopping criterion checks before every token, and wakes a thread waiting for room.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from .generation import TextAssembler

DONE = object()  # the last item a bridge delivers, after the final text
POLL_S = 0.05  # how often a thread waiting for room checks for cancellation


class Bridge:
    """Chunks from one generation thread to the loop: bounded, cancellable."""

    def __init__(self, loop: asyncio.AbstractEventLoop, lookahead: int) -> None:
        self.loop = loop
        self.chunks: asyncio.Queue[Any] = asyncio.Queue()
        self._room = threading.Semaphore(lookahead)
        self.cancelled = threading.Event()
        self.halted = threading.Event()  # a stop string appeared: generation should end
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

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or self.halted.is_set()


class StopWhenAsked(StoppingCriteria):
    """Ends generation before the next token once the bridge is cancelled or halted."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        stop = self.bridge.should_stop()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class TokenStreamer(BaseStreamer):
    """transformers calls ``put`` with the prompt first, then with each new token."""

    def __init__(self, tokenizer: Any, bridge: Bridge, assembler: TextAssembler) -> None:
        self.tokenizer = tokenizer
        self.bridge = bridge
        self.assembler = assembler
        self.ids: list[int] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.ids.extend(value.reshape(-1).tolist())
        self.bridge.produced = len(self.ids)
        if self.bridge.first_token_at is None:
            self.bridge.first_token_at = time.perf_counter()
        piece = self.assembler.feed(self.text())
        if piece:
            self.bridge.put({"text": piece, "tokens": len(self.ids), "t": time.time()})
        if self.assembler.stopped:
            self.bridge.halted.set()

    def end(self) -> None:
        piece = self.assembler.finish(self.text())
        if piece and not self.bridge.cancelled.is_set():
            self.bridge.put({"text": piece, "tokens": len(self.ids), "t": time.time()})

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)
