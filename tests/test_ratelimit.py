"""The per-source handshake limiter (pure): burst, refill, independence, bounded state."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh import InvalidArgument
from mesh.core.ratelimit import RateLimiter


def test_a_burst_then_the_rate():
    limiter = RateLimiter(rate=10, burst=3)
    assert [limiter.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert not limiter.allow("a", 0.05)  # half a token
    assert limiter.allow("a", 0.11)  # a whole one
    assert limiter.allow("b", 0.11)  # another source has its own bucket


@given(st.lists(st.tuples(st.integers(0, 7), st.floats(0, 1)), max_size=300))
def test_never_more_than_the_burst_plus_the_rate_over_time(events):
    limiter = RateLimiter(rate=5, burst=2, max_sources=8)
    now, allowed, first = 0.0, {}, {}
    for source, step in events:
        now += step
        first.setdefault(source, now)
        if limiter.allow(source, now):
            allowed[source] = allowed.get(source, 0) + 1
    for source, n in allowed.items():
        assert n <= 2 + 5 * (now - first[source]) + 1e-9


def test_state_stays_bounded_whatever_the_number_of_sources():
    limiter = RateLimiter(max_sources=100)
    for source in range(10_000):
        limiter.allow(source, source / 1000)
    assert len(limiter) == 100


def test_bad_settings_are_refused():
    with pytest.raises(InvalidArgument):
        RateLimiter(rate=0)
