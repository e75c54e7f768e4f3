"""Reliable delivery, the receiving side, pure: per-sender order and exact deduplication.

Theory of operation. A sender numbers the reliable messages of each *stream* (one per
sender and receiver; a durable outbox keeps its stream across restarts) 0, 1, 2... and
sends each with ``low``: the lowest number it has not yet seen acknowledged (or given up
on). The receiver handles a stream strictly in order and acknowledges a message only
once its handler has finished, so everything below ``expected`` has been handled:

* ``seq < expected``: handled already, a retry whose ack was lost. Acknowledge again,
  do not run it (a *duplicate suppressed*). This is exact, with O(1) state per stream.
* ``seq == expected``: run it; on success ``expected`` moves on and any held successor
  becomes ready. A failed handler does not move it: the sender retries, and gives up
  after its attempts (then its ``low`` moves past the message and so does ``expected``).
* ``seq > expected``: an earlier message is missing (lost, or being retried): hold this
  one. If the gap is not filled within ``hold_s``, it is *reported* and the held messages
  run anyway; a missing one that arrives later still runs (counted ``late``), so a gap
  costs order, never a message.

A receiver that restarts forgets ``expected``; the first message of a stream it does not
know sets it to that message's ``low``. A message it had handled whose ack was lost in
the crash then runs a second time: the one window in which a duplicate is possible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
DEFAULT_HOLD_S = 5.0


@dataclass
class Sequencer(Generic[Item]):
    """One stream's receiving state. ``now`` is seconds on any monotonic clock."""

    hold_s: float = DEFAULT_HOLD_S
    expected: int | None = None
    held: dict[int, Item] = field(default_factory=dict)
    skipped: set[int] = field(default_factory=set)  # reported missing; may still come
    running: int | None = None
    waiting_since: float | None = None
    gaps: int = 0  # messages reported missing
    late: int = 0  # of those, ones that came afterwards (and ran out of order)

    def arrive(self, seq: int, low: int, item: Item, now: float) -> str:
        """Take a message: ``duplicate`` (ack it, do not run it), ``busy`` (it is running:
        its ack will come), ``held`` (waiting for an earlier one) or ``ready``."""
        if self.expected is None:
            self.expected = low  # a stream new to us (or we restarted): start at its low
        if low > self.expected and self.running is None:
            self._skip_to(low)  # the sender gave up below low: nothing more will come
        if seq == self.running:
            return "busy"
        if seq < self.expected and seq not in self.skipped:
            return "duplicate"
        if seq not in self.held:
            self.held[seq] = item
        if seq != self.expected and seq not in self.skipped and self.waiting_since is None:
            self.waiting_since = now
        return "ready" if self._next_key() is not None else "held"

    def next(self, now: float) -> tuple[int, Item] | None:
        """The message to run now, if any (one at a time: call ``done`` after it)."""
        if self.running is not None:
            return None
        key = self._next_key()
        if key is None and self.held and self._gap_expired(now):
            first = min(self.held)
            self.gaps += first - self.expected  # type: ignore[operator]
            self.skipped.update(range(self.expected, first))  # type: ignore[arg-type]
            self.expected = first
            key = first
        if key is None:
            return None
        self.running = key
        return key, self.held.pop(key)

    def done(self, seq: int, ok: bool, now: float) -> None:
        """The handler of ``seq`` finished: ``ok`` moves the stream on."""
        self.running = None
        if not ok:
            return
        if seq in self.skipped:
            self.skipped.discard(seq)
            self.late += 1
        elif self.expected is not None and seq >= self.expected:
            self.expected = seq + 1
        gap = bool(self.held) and self._next_key() is None
        self.waiting_since = now if gap else None  # the wait for the missing one starts now

    def deadline(self) -> float | None:
        """When a held gap would be reported (for a timer), or None."""
        if self.waiting_since is None or not self.held or self._next_key() is not None:
            return None
        return self.waiting_since + self.hold_s

    def _next_key(self) -> int | None:
        if self.expected in self.held:
            return self.expected
        late = self.skipped.intersection(self.held)
        return min(late) if late else None

    def _gap_expired(self, now: float) -> bool:
        if self.waiting_since is None:
            self.waiting_since = now
        return now - self.waiting_since >= self.hold_s

    def _skip_to(self, low: int) -> None:
        assert self.expected is not None
        for seq in [s for s in self.held if s < low]:
            del self.held[seq]  # retries of what the sender has given up on
        self.skipped = {s for s in self.skipped if s >= low}
        self.expected = low
        self.waiting_since = None
