"""A latency histogram in the HDR style: fixed relative precision, constant memory (pure).

Values (nanoseconds) fall into buckets whose width grows with the value: each power of two
is split into ``2**SUB_BITS`` equal buckets, so any recorded value is reported within
``1 / 2**SUB_BITS`` (0.4 % with 8 bits) of itself, from 1 ns to hours, in a few thousand
counters. Percentiles are read off the counts (never averaged), and histograms from several
runs or threads merge by adding counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUB_BITS = 8
SUB_COUNT = 1 << SUB_BITS


def _index(value: int) -> int:
    if value < SUB_COUNT:
        return value  # exact below 2**SUB_BITS
    shift = value.bit_length() - SUB_BITS - 1
    return ((shift + 1) << SUB_BITS) + ((value >> shift) - SUB_COUNT)


def _highest(index: int) -> int:
    """The largest value that falls into bucket ``index``."""
    if index < SUB_COUNT:
        return index
    shift = (index >> SUB_BITS) - 1
    base = ((index & (SUB_COUNT - 1)) + SUB_COUNT) << shift
    return base + (1 << shift) - 1


@dataclass
class Histogram:
    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0
    max: int = 0
    min: int = 0
    total: int = 0  # the sum of recorded values (Prometheus wants it)

    def record(self, value_ns: int) -> None:
        value = max(int(value_ns), 0)
        index = _index(value)
        self.counts[index] = self.counts.get(index, 0) + 1
        self.min = value if self.count == 0 else min(self.min, value)
        self.count += 1
        self.total += value
        self.max = max(self.max, value)

    def merge(self, other: Histogram) -> None:
        for index, n in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + n
        if other.count:
            self.min = other.min if self.count == 0 else min(self.min, other.min)
            self.max = max(self.max, other.max)
            self.count += other.count
            self.total += other.total

    def to_json(self) -> dict[str, Any]:
        """A compact, JSON-able form (bucket counts, not samples): for another process."""
        return {
            "counts": sorted(self.counts.items()),
            "min": self.min,
            "max": self.max,
            "total": self.total,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        counts = {int(index): int(n) for index, n in data["counts"]}
        total = int(data.get("total", 0))
        return cls(counts, sum(counts.values()), int(data["max"]), int(data["min"]), total)

    def count_at_most(self, value_ns: int) -> int:
        """How many recorded values fall in buckets wholly at or below ``value_ns``."""
        return sum(n for index, n in self.counts.items() if _highest(index) <= value_ns)

    def percentile(self, q: float) -> int:
        """The value at quantile ``q`` (0..1): the highest value of the bucket holding the
        ceil(q * count)-th smallest sample, capped at the true maximum."""
        if not self.count:
            return 0
        rank = max(1, -(-int(q * self.count * 1_000_000) // 1_000_000))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return min(_highest(index), self.max)
        return self.max

    def summary_us(self) -> dict[str, float]:
        """p50, p90, p99, p99.9 and max in microseconds, with the sample count."""
        points = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p99.9": 0.999}
        found = {name: round(self.percentile(q) / 1000, 2) for name, q in points.items()}
        return {**found, "max": round(self.max / 1000, 2), "count": self.count}
