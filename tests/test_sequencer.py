"""The receiving side of reliable delivery, pure: order, exact dedup, gaps, restarts, bounds."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from mesh.core.sequencer import KEPT, MAX_JUMP, Arrival, Gaps, Sequencer


def drain(sequencer: Sequencer, handled: list[int], now: float = 0.0, ok: bool = True) -> None:
    while (ready := sequencer.next(now)) is not None:
        seq, _ = ready
        handled.append(seq)
        sequencer.done(seq, ok, now)


def verdict(sequencer: Sequencer, seq: int, low: int, item: str, now: float = 0.0) -> Arrival:
    return sequencer.arrive(seq, low, item, now).verdict


class Receiver:
    """A sequencer driven as the node drives it, counting what happens to each arrival:
    every one must be consumed exactly once (run, acked as a duplicate, or let go)."""

    def __init__(self, sequencer: Sequencer[tuple[int, int]]) -> None:
        self.sequencer = sequencer
        self.arrivals = 0
        self.consumed: Counter[int] = Counter()  # arrival token -> times consumed
        self.ran_ok: Counter[int] = Counter()  # seq -> successful runs
        self.order: list[int] = []

    def arrive(self, seq: int, low: int, now: float) -> Arrival:
        token = self.arrivals
        self.arrivals += 1
        outcome = self.sequencer.arrive(seq, low, (seq, token), now)
        for _, released in outcome.released:
            self.consumed[released] += 1
        if outcome.verdict not in KEPT:
            self.consumed[token] += 1
        return outcome.verdict

    def run(self, now: float, ok: bool = True) -> int | None:
        for _, token in self.sequencer.overdue(now):
            self.consumed[token] += 1
        ready = self.sequencer.next(now)
        if ready is None:
            return None
        seq, (_, token) = ready
        self.sequencer.done(seq, ok, now)
        self.consumed[token] += 1
        if ok:
            self.ran_ok[seq] += 1
            self.order.append(seq)
        return seq

    def drain(self, now: float) -> list[int]:
        ran = []
        while (seq := self.run(now)) is not None:
            ran.append(seq)
        return ran

    def each_arrival_consumed_once(self) -> bool:
        return self.consumed == Counter(range(self.arrivals))


@given(
    count=st.integers(1, 30),
    extra=st.lists(st.integers(0, 29), max_size=60),
    order=st.randoms(use_true_random=False),
)
def test_any_arrival_order_with_retries_runs_each_once_in_order(count, extra, order):
    arrivals = list(range(count)) + [seq % count for seq in extra]
    order.shuffle(arrivals)
    receiver = Receiver(Sequencer(hold_s=1e9))
    duplicates = 0
    for seq in arrivals:
        low = len(receiver.order)  # what the sender has seen acknowledged (acks are instant)
        duplicates += receiver.arrive(seq, low, 0.0) is Arrival.DUPLICATE
        receiver.drain(0.0)
    assert receiver.order == list(range(count))
    assert duplicates <= len(arrivals) - count
    assert receiver.each_arrival_consumed_once() and not receiver.sequencer.held


ACTIONS = ["send"] * 4 + ["run", "fail", "lose_ack", "give_up", "wait"]  # mostly arrivals


@given(
    count=st.integers(1, 12),
    steps=st.lists(
        st.tuples(st.sampled_from(ACTIONS), st.integers(0, 11)), min_size=20, max_size=150
    ),
    max_held=st.integers(1, 4),
    max_gaps=st.integers(1, 3),
    max_jump=st.integers(1, 12),
)
def test_every_arrival_is_consumed_once_and_only_given_up_messages_go_unrun(
    count, steps, max_held, max_gaps, max_jump
):
    """A sender model (retries, handler failures, lost acks, give-ups, time passing) against
    tight bounds: whatever the sequencer keeps, drops or lets go, each arrival is consumed
    exactly once, nothing runs twice, and every message the sender did not give up runs."""
    sequencer: Sequencer[tuple[int, int]] = Sequencer(
        hold_s=1.0, max_held=max_held, max_gaps=max_gaps, max_jump=max_jump
    )
    receiver = Receiver(sequencer)
    acked: set[int] = set()
    given_up: set[int] = set()
    now = 0.0

    def unsettled() -> list[int]:
        return [seq for seq in range(count) if seq not in acked and seq not in given_up]

    def send(seq: int) -> None:
        low = min(unsettled(), default=count)
        if receiver.arrive(seq, low, now) is Arrival.DUPLICATE:
            assert receiver.ran_ok[seq] == 1  # acked again only what did run
            acked.add(seq)

    for action, n in steps:
        seq = n % count
        if action == "send" and seq in unsettled():
            send(seq)
        elif action in ("run", "lose_ack", "fail"):
            ran = receiver.run(now, ok=action != "fail")
            if ran is not None and action == "run":
                acked.add(ran)
        elif action == "give_up" and seq in unsettled():
            given_up.add(seq)  # its deadline passed: a dead letter, and low moves past it
        elif action == "wait":
            now += sequencer.hold_s

    for _ in range(count):  # the sender retries in order until everything is settled
        for seq in unsettled():
            send(seq)
            acked.update(receiver.drain(now))
    for _ in range(count + 1):  # held ones the sender gave up on run (or go) after the wait
        now += sequencer.hold_s
        receiver.drain(now)

    assert not unsettled()
    assert receiver.each_arrival_consumed_once()
    assert not sequencer.held and sequencer.running is None
    assert max(receiver.ran_ok.values(), default=1) == 1  # nothing ran twice
    assert set(range(count)) - given_up <= set(receiver.ran_ok)
    assert len(sequencer.skipped) <= max_gaps + max_held + 1


def test_a_gap_is_held_then_reported_and_the_late_message_still_runs():
    sequencer: Sequencer[str] = Sequencer(hold_s=5.0)
    handled: list[int] = []
    assert verdict(sequencer, 0, 0, "a", now=0.0) is Arrival.READY
    drain(sequencer, handled)
    assert verdict(sequencer, 2, 1, "c", now=1.0) is Arrival.HELD  # 1 is missing
    drain(sequencer, handled, now=5.9)
    assert handled == [0] and sequencer.deadline() == 6.0
    drain(sequencer, handled, now=6.0)  # held for hold_s: reported, 2 runs
    assert handled == [0, 2] and sequencer.gaps == 1
    assert verdict(sequencer, 1, 1, "b", now=7.0) is Arrival.READY  # late, but not lost
    drain(sequencer, handled, now=7.0)
    assert handled == [0, 2, 1] and sequencer.late == 1
    assert verdict(sequencer, 1, 1, "b", now=8.0) is Arrival.DUPLICATE


def test_a_failed_handler_holds_the_stream_until_retried_or_given_up():
    sequencer: Sequencer[str] = Sequencer()
    handled: list[int] = []
    sequencer.arrive(0, 0, "a", 0.0)
    drain(sequencer, handled, ok=False)
    assert verdict(sequencer, 1, 0, "b", 0.0) is Arrival.HELD  # behind the failed one
    assert verdict(sequencer, 0, 0, "a", 0.1) is Arrival.READY  # the retry
    drain(sequencer, handled, ok=False)
    assert sequencer.expected == 0
    # the sender gave up on 0 (dead letter): its low moves past it, and so does the stream
    outcome = sequencer.arrive(1, 1, "b2", 0.2)
    assert outcome.verdict is Arrival.READY and outcome.released == ("b",)  # the old copy
    drain(sequencer, handled)
    assert handled == [0, 0, 1] and sequencer.expected == 2


def test_a_restarted_receiver_starts_at_the_senders_low():
    sequencer: Sequencer[str] = Sequencer()  # fresh: knows nothing of this stream
    handled: list[int] = []
    assert verdict(sequencer, 7, 5, "h") is Arrival.HELD  # 5 and 6 are still in flight
    assert verdict(sequencer, 5, 5, "f") is Arrival.READY
    assert verdict(sequencer, 6, 5, "g") is Arrival.READY
    drain(sequencer, handled)
    assert handled == [5, 6, 7]
    assert verdict(sequencer, 4, 5, "e") is Arrival.DUPLICATE  # acked before the restart


def test_an_absurd_jump_is_dropped_at_constant_cost():
    """A peer's seq 2**62 once made the receiver list every missing number: now it is
    dropped (its sender may retry it) and the stream's state stays as it was."""
    sequencer: Sequencer[str] = Sequencer(hold_s=5.0)
    assert verdict(sequencer, 0, 0, "a") is Arrival.READY
    assert verdict(sequencer, 2**62, 0, "x") is Arrival.DROPPED
    assert verdict(sequencer, 1 + MAX_JUMP + 1, 0, "y") is Arrival.DROPPED  # just too far
    handled: list[int] = []
    drain(sequencer, handled, now=1e9)  # long past any hold: no gap to report
    assert handled == [0] and sequencer.dropped == 2
    assert not sequencer.held and len(sequencer.skipped) == 0 and sequencer.gaps == 0


def test_a_gap_costs_one_range_however_wide():
    sequencer: Sequencer[str] = Sequencer(hold_s=5.0)
    assert verdict(sequencer, MAX_JUMP, 0, "far") is Arrival.HELD  # 0 .. MAX_JUMP-1 missing
    handled: list[int] = []
    drain(sequencer, handled, now=5.0)
    assert handled == [MAX_JUMP] and sequencer.gaps == MAX_JUMP
    assert sequencer.skipped.ranges() == [(0, MAX_JUMP)]
    assert verdict(sequencer, 7, 0, "late", now=6.0) is Arrival.READY  # still runs
    drain(sequencer, handled, now=6.0)
    assert sequencer.skipped.ranges() == [(0, 7), (8, MAX_JUMP)]


def test_a_huge_low_moves_the_stream_at_constant_cost():
    sequencer: Sequencer[str] = Sequencer()
    sequencer.arrive(0, 0, "a", 0.0)
    outcome = sequencer.arrive(2**62 + 1, 2**62, "b", 0.0)  # the sender gave up below 2**62
    assert outcome.verdict is Arrival.HELD and outcome.released == ("a",)
    assert sequencer.expected == 2**62 and list(sequencer.held) == [2**62 + 1]
    assert len(sequencer.skipped) == 0


def test_the_hold_back_keeps_the_lowest_messages_and_drops_the_rest():
    sequencer: Sequencer[str] = Sequencer(max_held=3)
    for seq in (2, 3, 4):  # 0 and 1 missing
        assert verdict(sequencer, seq, 0, f"m{seq}") is Arrival.HELD
    assert verdict(sequencer, 5, 0, "m5") is Arrival.DROPPED  # above all held: refused
    outcome = sequencer.arrive(1, 0, "m1", 0.0)  # below the highest: displaces it
    assert outcome.verdict is Arrival.HELD and outcome.released == ("m4",)
    outcome = sequencer.arrive(0, 0, "m0", 0.0)
    assert outcome.verdict is Arrival.READY and outcome.released == ("m3",)
    handled: list[int] = []
    drain(sequencer, handled)
    assert handled == [0, 1, 2] and sequencer.dropped == 3 and len(sequencer.held) == 0


def test_the_sender_giving_up_releases_what_is_held_below_its_low():
    sequencer: Sequencer[str] = Sequencer()
    sequencer.arrive(2, 0, "c", 0.0)
    sequencer.arrive(3, 0, "d", 0.0)
    outcome = sequencer.arrive(5, 4, "f", 0.0)  # 0..3 given up: 2 and 3 never run
    assert outcome.verdict is Arrival.HELD and sorted(outcome.released) == ["c", "d"]
    assert set(sequencer.held) == {5} and sequencer.expected == 4


def test_at_the_range_bound_held_messages_are_let_go_instead_of_waiting_for_ever():
    sequencer: Sequencer[str] = Sequencer(hold_s=1.0, max_gaps=1)
    handled: list[int] = []
    sequencer.arrive(5, 0, "f", 0.0)
    drain(sequencer, handled, now=1.0)  # gap [0, 5) reported: the one range allowed
    assert handled == [5] and sequencer.skipped.ranges() == [(0, 5)]
    assert verdict(sequencer, 2, 0, "c", 1.0) is Arrival.DROPPED  # would split it in two
    assert verdict(sequencer, 0, 0, "a", 1.0) is Arrival.READY  # at its edge: runs
    drain(sequencer, handled, now=1.0)
    assert verdict(sequencer, 8, 0, "i", 1.0) is Arrival.HELD  # 6 and 7 missing
    drain(sequencer, handled, now=2.0)  # due, but no second range may be opened
    assert handled == [5, 0] and sequencer.deadline() == 2.0
    assert sequencer.overdue(2.0) == ["i"] and not sequencer.held  # its sender retries
    assert sequencer.deadline() is None


def test_gaps_are_ranges():
    gaps = Gaps()
    gaps.add(0, 10)
    gaps.add(10, 12)  # touching: one range
    gaps.add(20, 30)
    assert gaps.ranges() == [(0, 12), (20, 30)]
    assert 11 in gaps and 12 not in gaps and 29 in gaps and 30 not in gaps
    assert gaps.splits(5) and not gaps.splits(0) and not gaps.splits(11)
    gaps.discard(5)
    gaps.discard(0)
    assert gaps.ranges() == [(1, 5), (6, 12), (20, 30)]
    gaps.forget_below(8)
    assert gaps.ranges() == [(8, 12), (20, 30)]
    gaps.forget_below(100)
    assert len(gaps) == 0 and not gaps
