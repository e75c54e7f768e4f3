"""Credit accounting, checked in every interleaving of send (alone or coalesced), deliver,
consume, grant, reconnect."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from mesh import InvalidArgument, LocalProtocolError
from mesh.core.flow import ReceiveCredit, SendCredit, Window

MAX_MESSAGE = 5000


class CreditMachine(RuleBasedStateMachine):
    """A sender and a receiver joined by two FIFO channels (data one way, grants back)."""

    @initialize(messages=st.integers(1, 12), bytes_=st.integers(1, 20_000))
    def setup(self, messages, bytes_):
        self.window = Window(messages, bytes_)
        self.connect()
        self.sent = self.delivered = self.consumed_total = 0

    def connect(self):
        self.receiver = ReceiveCredit(self.window)
        self.sender = SendCredit(self.window.as_grant)
        self.data: deque[int] = deque()
        self.grants: deque[tuple[int, int]] = deque()
        self.held: deque[int] = deque()

    @precondition(lambda self: self.sender.can_send())
    @rule(size=st.integers(0, MAX_MESSAGE))
    def send(self, size):
        self.sender.charge(size)
        self.data.append((1, size))
        self.sent += 1

    @precondition(lambda self: self.sender.can_send())
    @rule(
        rows=st.lists(st.integers(0, MAX_MESSAGE // 8), min_size=2, max_size=8),
        overhead=st.integers(0, 64),
    )
    def send_coalesced(self, rows, overhead):
        """Rows reserved one by one (with their bytes) while credit lasts, then sealed as one
        frame whose overhead is charged then."""
        taken = []
        for row in rows:
            if not self.sender.can_send():
                break
            self.sender.reserve(row)
            taken.append(row)
        self.sender.charge_bytes(overhead)
        self.data.append((len(taken), sum(taken) + overhead))
        self.sent += len(taken)

    @precondition(lambda self: self.data)
    @rule()
    def deliver(self):
        count, size = self.data.popleft()
        assert self.receiver.receive(size, count), "an honest sender never exceeds its credit"
        self.held.extend([size] + [0] * (count - 1))  # the frame's bytes ride on the first
        self.grant_if_due()

    @precondition(lambda self: self.held)
    @rule()
    def consume(self):
        self.receiver.consume(self.held.popleft())
        self.consumed_total += 1
        self.grant_if_due()

    def grant_if_due(self):
        grant = self.receiver.due()
        if grant != (0, 0):
            self.receiver.granted(grant)
            self.grants.append(grant)

    @precondition(lambda self: self.grants)
    @rule()
    def deliver_grant(self):
        self.sender.grant(*self.grants.popleft())

    @rule()
    def reconnect(self):
        """The peer restarts or the connection drops: in-flight messages and grants are lost."""
        self.connect()

    @invariant()
    def credit_never_negative_in_messages(self):
        assert self.sender.messages >= 0

    @invariant()
    def never_more_in_flight_than_granted(self):
        held_messages, held_bytes = self.receiver.held()
        in_flight = held_messages + sum(count for count, _ in self.data)
        assert in_flight <= self.window.messages
        assert held_bytes + sum(size for _, size in self.data) <= self.window.bytes + MAX_MESSAGE

    @invariant()
    def no_deadlock(self):
        # once everything delivered has been consumed and every grant has arrived, the
        # sender can always send again
        if not self.data and not self.held and not self.grants:
            self.grant_if_due()
            while self.grants:
                self.sender.grant(*self.grants.popleft())
            assert self.sender.can_send()


TestCreditMachine = CreditMachine.TestCase
TestCreditMachine.settings = settings(max_examples=300, stateful_step_count=60)


def test_a_cheating_sender_is_caught():
    receiver = ReceiveCredit(Window(2, 100))
    assert receiver.receive(10)
    assert receiver.receive(10)
    assert not receiver.receive(10)  # beyond the window: drop and count it


def test_a_coalesced_frame_beyond_the_message_credit_is_caught():
    receiver = ReceiveCredit(Window(4, 1000))
    assert receiver.receive(100, 3)
    assert not receiver.receive(10, 2)  # 5 messages of 4: the whole frame is refused
    assert receiver.receive(10, 1)
    assert receiver.held() == (4, 110)


def test_grants_are_batched():
    receiver = ReceiveCredit(Window(100, 10**9))
    for _ in range(50):
        receiver.receive(1)
    grants = []
    for _ in range(50):
        receiver.consume(1)
        due = receiver.due()
        if due != (0, 0):
            receiver.granted(due)
            grants.append(due)
    assert len(grants) == 2  # a quarter of the window per grant, not one per message
    assert all(g[0] == 25 for g in grants)


def test_bad_windows_and_misuse():
    with pytest.raises(InvalidArgument):
        Window(0, 10)
    with pytest.raises(LocalProtocolError):
        SendCredit((0, 0)).charge(1)
    with pytest.raises(LocalProtocolError):
        ReceiveCredit(Window(1, 1)).consume(1)
