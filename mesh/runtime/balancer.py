"""Calls addressed by capability: which of the nodes offering it gets the next one.

The least busy from here: the live node with the fewest of this node's calls in flight. A
call is counted from the moment its target is chosen (before any await), so a burst of
concurrent calls spreads over the candidates instead of all picking the same idle one.
"""

from __future__ import annotations

from collections import Counter

from ..core.errors import PeerNotFound
from ..core.registry import PeerInfo


class LeastBusy:
    """Calls in flight per peer name, and the choice they drive."""

    def __init__(self) -> None:
        self._in_flight: Counter[str] = Counter()  # only names with calls: bounded by them

    def choose(self, capability: str, candidates: list[PeerInfo]) -> str:
        """The candidate with the fewest calls in flight; PeerNotFound if there is none."""
        if not candidates:
            raise PeerNotFound(f"no live node offers {capability!r}")
        return min(candidates, key=lambda info: self._in_flight[info.name]).name

    def reserve(self, name: str) -> None:
        self._in_flight[name] += 1

    def release(self, name: str) -> None:
        self._in_flight[name] -= 1
        if self._in_flight[name] <= 0:
            del self._in_flight[name]
