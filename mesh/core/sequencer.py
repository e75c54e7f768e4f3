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

Bounds. The numbers come from a peer, so nothing here costs more than a constant per
message, whatever they say (the limits are parameters, defaults below):

* a ``seq`` more than ``max_jump`` above ``expected`` (after applying ``low``) is
  *absurd*: dropped. ``low`` itself may rise by any amount: it only makes the stream
  forget, in O(held + ranges), and only a rising ``low`` costs anything;
* at most ``max_held`` messages are held per stream: the lowest ones are kept, so a
  message above all of them is dropped and one below the highest displaces it;
* reported gaps are kept as ranges (:class:`Gaps`), never number by number, so a gap of
  2**62 would cost what a gap of 1 does. A gap is reported only while fewer than
  ``max_gaps`` ranges exist; otherwise, once the wait is over, the held messages are let
  go (dropped) instead of waiting for ever. A late message that would split a range in
  two is dropped while ``max_gaps`` exist (the ones accepted before may each split one:
  at most ``max_gaps + max_held + 1`` ranges).

A *dropped* message is neither run nor acknowledged: its sender retries it, so for an
honest sender (at most ``LANE_WINDOW`` in flight, far below every bound) a drop only
delays, and for a hostile one it is the end. Every message the sequencer lets go of is
handed back to the caller (:attr:`Outcome.released`, :meth:`Sequencer.overdue`, and the
arrival itself unless its verdict is in :data:`KEPT`) so the caller can return the credit
it holds: each arrival is consumed exactly once, whatever happens to it.

Specified in protocol.md 8.2 (reliable delivery).
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
DEFAULT_HOLD_S = 5.0
MAX_HELD = 1024  # messages held per stream, waiting for an earlier one
MAX_GAPS = 1024  # ranges of reported gaps per stream that a report or a late one may open
MAX_JUMP = 1 << 20  # how far above ``expected`` a seq may be and still be kept


class Arrival(enum.Enum):
    """What :meth:`Sequencer.arrive` made of a message."""

    DUPLICATE = "duplicate"  # handled already: ack it again, do not run it
    BUSY = "busy"  # it is running now: its ack will come
    HELD = "held"  # kept, waiting for an earlier one
    READY = "ready"  # kept, and something is ready to run
    DROPPED = "dropped"  # refused by a bound: not kept, not acked; the sender retries


KEPT = frozenset({Arrival.HELD, Arrival.READY})


@dataclass(frozen=True, slots=True)
class Outcome(Generic[Item]):
    """An arrival's verdict, and the items held before that the sequencer let go of (a
    replaced copy, messages the sender gave up on, one displaced by a bound). The arrival
    itself is kept only if the verdict is in :data:`KEPT`."""

    verdict: Arrival
    released: tuple[Item, ...] = ()


class Gaps:
    """Reported missing numbers as sorted, disjoint half-open ranges ``[start, end)``."""

    __slots__ = ("_ranges",)

    def __init__(self) -> None:
        self._ranges: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self._ranges)

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __contains__(self, n: int) -> bool:
        index = self._find(n)
        return index is not None

    def ranges(self) -> list[tuple[int, int]]:
        return list(self._ranges)

    def add(self, start: int, end: int) -> None:
        """Report ``[start, end)`` missing; it lies above every range already kept."""
        if start >= end:
            return
        if self._ranges and self._ranges[-1][1] >= start:
            first = self._ranges[-1][0]
            self._ranges[-1] = (first, max(end, self._ranges[-1][1]))
        else:
            self._ranges.append((start, end))

    def splits(self, n: int) -> bool:
        """Whether taking ``n`` out would cut a range in two (it is strictly inside)."""
        index = self._find(n)
        return index is not None and self._ranges[index][0] < n < self._ranges[index][1] - 1

    def discard(self, n: int) -> None:
        """``n`` came after all: it is no longer missing."""
        index = self._find(n)
        if index is None:
            return
        start, end = self._ranges[index]
        pieces = [(a, b) for a, b in ((start, n), (n + 1, end)) if a < b]
        self._ranges[index : index + 1] = pieces

    def forget_below(self, low: int) -> None:
        """The sender gave up on everything below ``low``: none of it may come any more."""
        keep = [(max(a, low), b) for a, b in self._ranges if b > low]
        self._ranges = keep

    def _find(self, n: int) -> int | None:
        index = bisect.bisect_right(self._ranges, n, key=lambda r: r[0]) - 1
        if index >= 0 and n < self._ranges[index][1]:
            return index
        return None


@dataclass
class Sequencer(Generic[Item]):
    """One stream's receiving state. ``now`` is seconds on any monotonic clock."""

    hold_s: float = DEFAULT_HOLD_S
    max_held: int = MAX_HELD
    max_gaps: int = MAX_GAPS
    max_jump: int = MAX_JUMP
    expected: int | None = None
    held: dict[int, Item] = field(default_factory=dict)
    skipped: Gaps = field(default_factory=Gaps)  # reported missing; may still come
    low: int = 0  # the highest low seen: the sender has given up on everything below it
    running: int | None = None
    waiting_since: float | None = None
    gaps: int = 0  # messages reported missing
    late: int = 0  # of those, ones that came afterwards (and ran out of order)
    dropped: int = 0  # messages refused or let go by a bound (their senders retry them)

    def arrive(self, seq: int, low: int, item: Item, now: float) -> Outcome[Item]:
        """Take a message (see :class:`Arrival` and :class:`Outcome`)."""
        if self.expected is None:
            self.expected = self.low = low  # a stream new to us (or we restarted): its low
        released: list[Item] = []
        if low > self.low:
            released += self._give_up_below(low)
        verdict = self._place(seq, item, now, released)
        self.dropped += verdict is Arrival.DROPPED
        return Outcome(verdict, tuple(released))

    def next(self, now: float) -> tuple[int, Item] | None:
        """The message to run now, if any (one at a time: call ``done`` after it)."""
        if self.running is not None:
            return None
        key = self._next_key()
        if key is None and self._gap_due(now) and len(self.skipped) < self.max_gaps:
            first = min(self.held)  # all held are above expected: none could run
            assert self.expected is not None
            self.gaps += first - self.expected
            self.skipped.add(self.expected, first)
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

    def overdue(self, now: float) -> list[Item]:
        """The held messages let go because their gap is due and cannot be reported
        (``max_gaps`` ranges exist): not run, not acked; their senders retry them."""
        if (
            self.running is not None
            or len(self.skipped) < self.max_gaps
            or self._next_key() is not None
            or not self._gap_due(now)
        ):
            return []
        items = list(self.held.values())
        self.held.clear()
        self.waiting_since = None
        self.dropped += len(items)
        return items

    def deadline(self) -> float | None:
        """When a held gap is due (for a timer: then call ``next`` and ``overdue``)."""
        if self.waiting_since is None or not self.held or self._next_key() is not None:
            return None
        return self.waiting_since + self.hold_s

    def _place(self, seq: int, item: Item, now: float, released: list[Item]) -> Arrival:
        """Keep ``item`` if the bounds allow; what it displaces goes to ``released``."""
        assert self.expected is not None
        if seq == self.running:
            return Arrival.BUSY
        late = seq in self.skipped
        if seq < self.expected and not late:
            return Arrival.DUPLICATE
        if seq - self.expected > self.max_jump:
            return Arrival.DROPPED  # absurd: no honest sender runs this far ahead
        if late and len(self.skipped) >= self.max_gaps and self.skipped.splits(seq):
            return Arrival.DROPPED  # running it would open one range more than allowed
        previous = self.held.pop(seq, None)
        if previous is not None:
            released.append(previous)  # a retried copy replaces the one held
        elif len(self.held) >= self.max_held:
            highest = max(self.held)
            if highest < seq:
                return Arrival.DROPPED
            released.append(self.held.pop(highest))  # the lowest ones run first: keep them
            self.dropped += 1
        self.held[seq] = item
        if seq != self.expected and not late and self.waiting_since is None:
            self.waiting_since = now
        return Arrival.READY if self._next_key() is not None else Arrival.HELD

    def _next_key(self) -> int | None:
        if self.expected in self.held:
            return self.expected
        if not self.skipped:
            return None
        return min((seq for seq in self.held if seq in self.skipped), default=None)

    def _gap_due(self, now: float) -> bool:
        """Something is held (none of it can run: the caller checked) and has waited
        ``hold_s``. Starts the wait if nothing had started it."""
        if not self.held:
            return False
        if self.waiting_since is None:
            self.waiting_since = now
        return now - self.waiting_since >= self.hold_s

    def _give_up_below(self, low: int) -> list[Item]:
        """The sender gave up on everything below ``low``: nothing of it will come, or run.
        Moves ``expected`` up to ``low``; returns the held messages below it (a running one
        finishes, and moves nothing). Only a rising ``low`` gets here: O(held + ranges)."""
        assert self.expected is not None
        self.low = low
        self.skipped.forget_below(low)
        if low > self.expected:
            self.expected = low
            self.waiting_since = None
        given_up = [seq for seq in self.held if seq < low]
        return [self.held.pop(seq) for seq in given_up]
