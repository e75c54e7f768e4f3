"""The anti-replay sliding window (RFC 6479, as WireGuard uses it).

Each session's receiver remembers the highest sequence number it accepted and a bitmap of
the ``size`` numbers below it. A number above the top slides the window forward; one inside
the window is accepted once (ZeroMQ keeps order on one connection, but a reconnect or a
rekey can reorder a few frames); a repeat, or one that fell out of the bottom, is refused.

The check runs only after the frame has authenticated, so an attacker cannot move the
window with forged numbers.

Specified in protocol.md 7.3 (sequence numbers and the replay window).
"""

from __future__ import annotations

from .errors import InvalidArgument, ReplayDetected
from .wire import MAX_U64


class ReplayWindow:
    """Accept each 64-bit sequence number at most once, within a window of ``size``."""

    __slots__ = ("_bitmap", "_mask", "_top", "size")

    def __init__(self, size: int) -> None:
        if not 1 <= size <= 65536:
            raise InvalidArgument("replay window size must be from 1 to 65536")
        self.size = size
        self._mask = (1 << size) - 1
        self._top = -1  # nothing accepted yet; sequence numbers start at 0
        self._bitmap = 0  # bit i set: top - i was accepted

    @property
    def top(self) -> int:
        """The highest sequence number accepted so far, or -1."""
        return self._top

    def accept(self, seq: int) -> None:
        """Record ``seq`` as seen, or raise :class:`ReplayDetected`."""
        top = self._top
        if seq > top:
            if seq > MAX_U64:
                raise ReplayDetected("sequence number beyond 64 bits", reason="replay")
            shift = seq - top
            self._bitmap = 1 if shift > self.size else ((self._bitmap << shift) | 1) & self._mask
            self._top = seq
            return
        offset = top - seq
        if offset >= self.size:
            raise ReplayDetected(
                f"sequence {seq} is older than the replay window", reason="replay_old"
            )
        bit = 1 << offset
        if self._bitmap & bit:
            raise ReplayDetected(f"sequence {seq} was already received", reason="replay")
        self._bitmap |= bit


class TopicSequence:
    """One publisher's sequence numbers on one topic key, as a subscriber sees them.

    A PUB/SUB connection keeps order, so numbers must rise strictly: one at or below the last
    is a replay (or a duplicate) and is refused. A number more than one above the last means
    messages were lost (the publisher's queue for us overflowed, or we reconnected): the
    missing count is reported, never hidden. A *probe* (protocol.md, section 10)
    carries the publisher's last number without being a message; it sets the starting point
    of a fresh subscription, and reveals a loss at the tail that no later message would.
    Both return how many were missed; the caller adds them up.
    """

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: int | None = None  # None: nothing seen yet, so nothing can be missing

    def probe(self, seq: int) -> int:
        """The publisher had published up to ``seq`` when it sent the probe; returns how
        many of those never arrived here (0 for the first probe: nothing was promised)."""
        last = self.last
        if last is not None and seq <= last:
            return 0
        self.last = seq
        return 0 if last is None else seq - last

    def accept(self, seq: int) -> int:
        """Record message ``seq``; return how many were missed just before it, or raise
        :class:`ReplayDetected` if it is not newer than the last."""
        last = self.last
        if last is not None and seq <= last:
            raise ReplayDetected(f"topic sequence {seq} is not above {last}", reason="replay")
        self.last = seq
        return 0 if last is None else seq - last - 1
