"""Token buckets per source, with bounded state (pure: the caller passes the time).

A node answers at most so many HELLOs per second from one connection (protocol.md 15: a
HELLO costs an X25519 and an Ed25519 operation before anything is known about its sender);
beyond that it answers REJECT 5 (busy) without that work. A legitimate peer handshakes once
per connection and once per rekey, far below the limit. At most ``max_sources`` buckets are
kept, the least recently used going first, so a flood of new sources cannot grow memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from .errors import InvalidArgument

DEFAULT_RATE = 20.0  # HELLOs per second per connection, refilled continuously
DEFAULT_BURST = 40.0
MAX_SOURCES = 4096


class RateLimiter:
    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise InvalidArgument("a rate limit needs rate > 0, burst >= 1 and room for a source")
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def allow(self, source: Hashable, now_s: float) -> bool:
        """Take a token for ``source`` if it has one."""
        tokens, since = self._buckets.pop(source, (self.burst, now_s))
        tokens = min(self.burst, tokens + max(0.0, now_s - since) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if allowed else tokens, now_s)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)
