"""The sliding replay window, checked against a plain-set model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh import InvalidArgument, ReplayDetected
from mesh.core.replay import ReplayWindow


@given(size=st.integers(1, 200), seqs=st.lists(st.integers(0, 600), max_size=300))
def test_window_matches_the_model(size, seqs):
    window, seen, top = ReplayWindow(size), set(), -1
    for seq in seqs:
        expected = seq not in seen and (seq > top or top - seq < size)
        try:
            window.accept(seq)
            accepted = True
        except ReplayDetected:
            accepted = False
        assert accepted == expected, (seq, top)
        if accepted:
            seen.add(seq)
            top = max(top, seq)


@given(order=st.permutations(list(range(64))))
def test_reordered_inside_the_window_accepted_exactly_once(order):
    window = ReplayWindow(64)
    for seq in order:
        window.accept(seq)
    for seq in order:
        with pytest.raises(ReplayDetected):
            window.accept(seq)


def test_too_old_and_huge_jumps():
    window = ReplayWindow(8)
    window.accept(100)
    with pytest.raises(ReplayDetected) as old:
        window.accept(92)
    assert old.value.reason == "replay_old"
    window.accept(93)
    window.accept(2**64 - 1)
    assert window.top == 2**64 - 1
    with pytest.raises(ReplayDetected):
        window.accept(2**64)


@pytest.mark.parametrize("size", [0, 65537])
def test_window_size_is_bounded(size):
    with pytest.raises(InvalidArgument):
        ReplayWindow(size)
