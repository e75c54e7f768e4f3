"""Reliable delivery's I/O layer without sockets: the real :class:`Deliveries` and
:class:`HandlerRunner`, with the peer replaced by recorders.

Receiving: messages go straight into ``Deliveries.receive`` with a ``consumed`` callback
that counts, and what the receiver answers is recorded. The invariant is the credit one:
every arrival is consumed exactly once (run, acked as a duplicate, or let go), so once the
sender has its acks the receiver holds nothing of it. Sending: ``resolve`` returns a fake
connection whose ``start_call`` fails, and the lane must end in a dead letter, never in a
dead task.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio

from mesh.core.codec import Message, encode_payload
from mesh.core.errors import InvalidBody
from mesh.core.wire import Kind
from mesh.runtime import delivery
from mesh.runtime.delivery import AT_LEAST_ONCE, DURABLE, Deliveries
from mesh.runtime.handlers import Caller, HandlerRunner
from tests.conftest import eventually

PEER = b"p" * 16
# the caller a message came from: only its node id and name matter to Deliveries
CALLER = Caller(SimpleNamespace(peer=SimpleNamespace(node_id=PEER, name="tx")))  # type: ignore[arg-type]
STREAM = 7
WORK = "work"


class Sender:
    """The far side, as the receiver sees it: what it answers, and the credit it holds."""

    def __init__(self) -> None:
        self.answers: list[Message] = []
        self.elsewhere: list[Message] = []  # answers to another caller
        self.arrivals = 0
        self.consumed: Counter[int] = Counter()  # arrival -> times its credit came back

    def reply(self, caller: Caller, messages: list[Message]) -> int:
        (self.answers if caller is CALLER else self.elsewhere).extend(messages)
        return 1

    def message(self, seq: int, low: int) -> tuple[Message, Callable[[], None]]:
        """Message ``seq`` (its msg id is 1000 + seq for every copy: a retry is the same
        message) and the callback returning the credit of this one arrival of it."""
        arrival = self.arrivals
        self.arrivals += 1
        meta = {"dlv": [STREAM, seq, low]}
        message = Message(Kind.REQUEST, 1000 + seq, name=WORK, body=seq, meta=meta)
        return message, lambda: self.consumed.update([arrival])

    def acked(self, seq: int) -> bool:
        return any(a.kind == Kind.REPLY and a.corr_id == 1000 + seq for a in self.answers)

    def errors(self, seq: int) -> int:
        return sum(a.kind == Kind.ERROR and a.corr_id == 1000 + seq for a in self.answers)

    def holds_nothing(self) -> bool:
        """Each arrival consumed exactly once: the receiver keeps none of our credit."""
        return self.consumed == Counter(range(self.arrivals))


class Handler:
    """A handler that fails its first ``failures`` calls, and records what ran."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.ran: list[int] = []

    async def work(self, body: int) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("not yet")
        self.ran.append(body)


async def unreachable(peer: str) -> Any:
    raise AssertionError(f"a receiving test resolved {peer}")


@pytest_asyncio.fixture
async def sender() -> Sender:
    return Sender()


@pytest_asyncio.fixture
async def receiver(tmp_path, sender) -> AsyncIterator[tuple[Deliveries, Handler]]:
    handler = Handler()
    runner = HandlerRunner(lambda peer_id, messages: 0)
    runner.add(WORK, handler.work)
    deliveries = Deliveries(
        tmp_path / "outbox.sqlite3", unreachable, runner, sender.reply, None, 60.0
    )
    try:
        yield deliveries, handler
    finally:
        await deliveries.close()


def arrive(deliveries: Deliveries, sender: Sender, seq: int, low: int) -> None:
    deliveries.receive(CALLER, *sender.message(seq, low))


@pytest.mark.asyncio
async def test_retried_copies_of_held_messages_and_failed_runs_all_return_their_credit(
    receiver, sender
):
    """The leak of issue 17 (2.2): a retry of a message the receiver already held was
    dropped with its credit; after a few handler failures the sender's window ran dry."""
    deliveries, handler = receiver
    handler.failures = 2
    arrive(deliveries, sender, 0, 0)
    for _ in range(2):  # 1..5 wait behind 0; each is resent while held
        for seq in range(1, 6):
            arrive(deliveries, sender, seq, 0)
    await eventually(lambda: sender.errors(0) == 1)  # 0 failed: its sender retries it
    for seq in (0, 3, 4):
        arrive(deliveries, sender, seq, 0)
    await eventually(lambda: sender.errors(0) == 2)
    arrive(deliveries, sender, 0, 0)
    await eventually(lambda: all(sender.acked(seq) for seq in range(6)))
    assert handler.ran == [0, 1, 2, 3, 4, 5]  # once each, in order
    arrive(deliveries, sender, 2, 1)  # its ack was lost: acked again, not run
    await eventually(lambda: deliveries.stats()["received"]["duplicates_suppressed"] == 1)
    assert handler.ran == [0, 1, 2, 3, 4, 5]
    assert sender.holds_nothing(), f"{sender.arrivals} arrivals, consumed {sender.consumed}"


@pytest.mark.asyncio
async def test_held_messages_the_sender_gave_up_on_return_their_credit(receiver, sender):
    deliveries, handler = receiver
    arrive(deliveries, sender, 2, 0)  # 0 and 1 missing: held
    arrive(deliveries, sender, 3, 0)
    arrive(deliveries, sender, 5, 4)  # the sender gave up on 0..3: 2 and 3 will not run
    arrive(deliveries, sender, 4, 4)
    await eventually(lambda: sender.acked(4) and sender.acked(5))
    assert handler.ran == [4, 5]
    assert sender.holds_nothing(), f"{sender.arrivals} arrivals, consumed {sender.consumed}"


@pytest.mark.asyncio
async def test_an_absurd_sequence_jump_is_dropped_with_its_credit_returned(receiver, sender):
    """Issue 17 (2.1): seq 2**62 once froze the receiver listing the numbers in between."""
    deliveries, handler = receiver
    arrive(deliveries, sender, 2**62, 0)
    assert sender.holds_nothing()  # at once: not held, not acked (its sender may retry)
    assert deliveries.stats()["received"]["dropped"] == 1 and sender.answers == []
    arrive(deliveries, sender, 0, 0)  # the stream goes on
    await eventually(lambda: sender.acked(0))
    assert handler.ran == [0] and sender.holds_nothing()


@pytest.mark.asyncio
async def test_one_sender_opening_streams_forgets_its_own_never_anothers(
    receiver, sender, monkeypatch
):
    """Remembered streams are bounded per sender: a member opening thousands of streams
    (every restart starts one) pushes out its own idle ones, not another sender's."""
    monkeypatch.setattr(delivery, "MAX_STREAMS_PER_PEER", 3)
    deliveries, handler = receiver
    other = Caller(SimpleNamespace(peer=SimpleNamespace(node_id=b"o" * 16, name="ox")))  # type: ignore[arg-type]
    meta = {"dlv": [99, 0, 0]}
    deliveries.receive(other, Message(Kind.REQUEST, 1, name=WORK, body=-1, meta=meta), list)
    for stream in range(10):
        meta = {"dlv": [stream, 0, 0]}
        deliveries.receive(
            CALLER, Message(Kind.REQUEST, 2 + stream, name=WORK, body=stream, meta=meta), list
        )
        await eventually(lambda stream=stream: stream in handler.ran)
    streams = deliveries._inbox
    assert sum(key[0] == PEER for key in streams) <= 3
    assert (b"o" * 16, 99) in streams
    assert [m.corr_id for m in sender.elsewhere] == [1]  # its ack went to it, not to CALLER


# ---------------------------------------------------------------------------- sending


class FailingConnection:
    """What ``resolve`` hands the lane: a connection whose calls never get out. It encodes
    the request as the real one does before failing with ``error`` (if any)."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.calls: dict[int, Any] = {}
        self.started = 0

    async def acquire(self, timeout: float | None = None, block: bool = True) -> None:
        return None

    def start_call(self, kind: int, method: str, body: Any, **fields: Any) -> Any:
        self.started += 1
        msg_id = fields["msg_id"]
        encode_payload([Message(kind, msg_id, name=method, body=body, meta=fields["meta"])])
        raise self.error or RuntimeError("no socket here")


def sending(tmp_path, connection: FailingConnection) -> Deliveries:
    async def resolve(peer: str) -> Any:
        return connection

    runner = HandlerRunner(lambda peer_id, messages: 0)
    return Deliveries(tmp_path / "outbox.sqlite3", resolve, runner, lambda *_: 0, None, 60.0)


async def send_and_settle(deliveries: Deliveries, body: Any, **send: Any) -> list[dict]:
    """Send one message, wait until its lane settles it; the lane's task must not die."""
    before = asyncio.all_tasks()
    await deliveries.send("rx", WORK, body, AT_LEAST_ONCE, send.get("deadline"), None)
    if "then" in send:
        send["then"]()
    lane_tasks = asyncio.all_tasks() - before
    await deliveries.flushed(timeout=30)
    for task in lane_tasks:
        assert task.done() and not task.cancelled() and task.exception() is None
    return deliveries.store.dead_letters()


@pytest.mark.asyncio
async def test_a_body_made_unencodable_after_send_becomes_a_dead_letter(tmp_path):
    """Issue 17 (2.5): the attempt's InvalidBody killed the lane task; delivered() hung."""
    connection = FailingConnection(None)
    deliveries = sending(tmp_path, connection)
    body: list[Any] = [1]
    try:
        (letter,) = await send_and_settle(deliveries, body, then=lambda: body.append({2}))
    finally:
        await deliveries.close()
    assert letter["reason"] == "unsendable" and "set" in letter["detail"]
    assert connection.started == 1  # not retried: no attempt could encode it
    assert deliveries.stats()["peers"]["rx (at_least_once)"]["outbox"] == 0


@pytest.mark.asyncio
async def test_an_unforeseen_failure_of_every_attempt_is_retried_then_dead_lettered(tmp_path):
    connection = FailingConnection(RuntimeError("broken transport"))
    deliveries = sending(tmp_path, connection)
    try:
        (letter,) = await send_and_settle(deliveries, {"n": 1}, deadline=0.5)
    finally:
        await deliveries.close()
    assert letter["reason"] == "deadline" and "RuntimeError: broken transport" in letter["detail"]
    assert letter["body"] == {"n": 1} and connection.started >= 2  # retried meanwhile


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", [AT_LEAST_ONCE, DURABLE])
async def test_send_refuses_a_body_the_codec_cannot_encode_at_once(tmp_path, mode):
    connection = FailingConnection(None)
    deliveries = sending(tmp_path, connection)
    try:
        with pytest.raises(InvalidBody, match="set"):
            await deliveries.send("rx", WORK, {"tags": {1, 2}}, mode, None, None)
        assert deliveries.stats()["peers"] == {} and connection.started == 0  # nothing queued
        await deliveries.flushed(timeout=30)
    finally:
        await deliveries.close()
