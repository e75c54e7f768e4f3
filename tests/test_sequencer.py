"""The receiving side of reliable delivery, pure: order, exact dedup, gaps, restarts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mesh.sequencer import Sequencer


def drain(sequencer: Sequencer, handled: list[int], now: float = 0.0, ok: bool = True) -> None:
    while (ready := sequencer.next(now)) is not None:
        seq, _ = ready
        handled.append(seq)
        sequencer.done(seq, ok, now)


@given(
    count=st.integers(1, 30),
    extra=st.lists(st.integers(0, 29), max_size=60),
    order=st.randoms(use_true_random=False),
)
def test_any_arrival_order_with_retries_runs_each_once_in_order(count, extra, order):
    arrivals = list(range(count)) + [seq % count for seq in extra]
    order.shuffle(arrivals)
    sequencer: Sequencer[str] = Sequencer(hold_s=1e9)
    handled: list[int] = []
    duplicates = 0
    for seq in arrivals:
        low = len(handled)  # what the sender has seen acknowledged (acks are instant here)
        verdict = sequencer.arrive(seq, low, f"m{seq}", 0.0)
        duplicates += verdict == "duplicate"
        drain(sequencer, handled)
    assert handled == list(range(count))
    assert duplicates <= len(arrivals) - count


def test_a_gap_is_held_then_reported_and_the_late_message_still_runs():
    sequencer: Sequencer[str] = Sequencer(hold_s=5.0)
    handled: list[int] = []
    assert sequencer.arrive(0, 0, "a", now=0.0) == "ready"
    drain(sequencer, handled)
    assert sequencer.arrive(2, 1, "c", now=1.0) == "held"  # 1 is missing
    drain(sequencer, handled, now=5.9)
    assert handled == [0] and sequencer.deadline() == 6.0
    drain(sequencer, handled, now=6.0)  # held for hold_s: reported, 2 runs
    assert handled == [0, 2] and sequencer.gaps == 1
    assert sequencer.arrive(1, 1, "b", now=7.0) == "ready"  # late, but not lost
    drain(sequencer, handled, now=7.0)
    assert handled == [0, 2, 1] and sequencer.late == 1
    assert sequencer.arrive(1, 1, "b", now=8.0) == "duplicate"


def test_a_failed_handler_holds_the_stream_until_retried_or_given_up():
    sequencer: Sequencer[str] = Sequencer()
    handled: list[int] = []
    sequencer.arrive(0, 0, "a", 0.0)
    drain(sequencer, handled, ok=False)
    assert sequencer.arrive(1, 0, "b", 0.0) == "held"  # behind the failed one
    assert sequencer.arrive(0, 0, "a", 0.1) == "ready"  # the retry
    drain(sequencer, handled, ok=False)
    assert sequencer.expected == 0
    # the sender gave up on 0 (dead letter): its low moves past it, and so does the stream
    assert sequencer.arrive(1, 1, "b", 0.2) == "ready"
    drain(sequencer, handled)
    assert handled == [0, 0, 1] and sequencer.expected == 2


def test_a_restarted_receiver_starts_at_the_senders_low():
    sequencer: Sequencer[str] = Sequencer()  # fresh: knows nothing of this stream
    handled: list[int] = []
    assert sequencer.arrive(7, 5, "h", 0.0) == "held"  # 5 and 6 are still in flight
    assert sequencer.arrive(5, 5, "f", 0.0) == "ready"
    assert sequencer.arrive(6, 5, "g", 0.0) == "ready"
    drain(sequencer, handled)
    assert handled == [5, 6, 7]
    assert sequencer.arrive(4, 5, "e", 0.0) == "duplicate"  # acked before the restart
