"""Reliable delivery over the mesh: at-least-once and durable ``send``, in order, with dead
letters. The receiving rules are :mod:`mesh.core.sequencer`'s; this module moves messages.

A reliable message is a REQUEST whose ``meta.dlv = [stream, seq, low]`` (protocol.md 8.2);
its REPLY (empty) is the ack, sent after the handler finished. The sender keeps one *lane*
per receiver: messages numbered in send order, each retried with backoff (same message id,
same number) until acked, until its deadline passes (dead letter ``deadline``, or
``peer_gone`` if the peer could not be reached), or until its handler has failed
``max_attempts`` times (``handler_failed``); ``no_such_method`` and ``refused`` at once, and
``unsendable`` when the body stopped being encodable after ``send`` checked it. Any other
failure of an attempt is retried until the deadline: a lane's task never dies of one. The
reasons are :class:`DeadReason` (stored and shown as their string values). Durable messages
are written to the :class:`~mesh.runtime.outbox.DeliveryStore` first and resumed after a restart.
At most ``LANE_WINDOW`` messages per lane are in flight; ``send`` waits when a lane holds
``LANE_LIMIT`` unacknowledged messages, so a dead peer never grows memory without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from ..core.codec import Message, encode_payload
from ..core.errors import (
    CallError,
    DiscoveryUnavailable,
    InvalidArgument,
    InvalidBody,
    NoSuchMethod,
    PeerLost,
    PeerNotFound,
    RemoteError,
)
from ..core.sequencer import DEFAULT_HOLD_S, KEPT, Arrival, Sequencer
from ..core.wire import ErrorCode, Kind
from .connection import Connection
from .handlers import (
    Caller,
    HandlerRunner,
    being_cancelled,
    error_code,
    error_message,
    own_cancellation,
)
from .letter import Letter
from .outbox import DeliveryStore, pack_body
from .stamps import next_msg_id, now_ms

AT_MOST_ONCE = "at_most_once"
AT_LEAST_ONCE = "at_least_once"
DURABLE = "durable"
MODES = (AT_MOST_ONCE, AT_LEAST_ONCE, DURABLE)
DEFAULT_DEADLINE_S = 60.0
DEFAULT_MAX_ATTEMPTS = 5
RETRY_S = 0.2  # first retry interval; doubles up to RETRY_MAX_S
RETRY_MAX_S = 2.0
ACK_WAIT_S = 2.0  # how long one attempt waits for its ack before sending again
LANE_WINDOW = 64
LANE_LIMIT = 10_000
RETRY_POLL_S = 1.0
MAX_STREAMS = 10_000  # receiving streams remembered (LRU, idle ones only)
MAX_STREAMS_PER_PEER = 1_000  # of them, per sending node
DEADLETTERS_TOPIC = "deadletters"


class DeadReason(enum.StrEnum):
    """Why a reliable message became a dead letter (the values are stored in the delivery
    store and shown by ``mesh deadletters``: they never change)."""

    DEADLINE = "deadline"  # not acked before its deadline
    PEER_GONE = "peer_gone"  # the deadline passed while the peer could not be reached
    HANDLER_FAILED = "handler_failed"  # the receiver's handler failed max_attempts times
    NO_SUCH_METHOD = "no_such_method"  # the receiver has no handler for it
    REFUSED = "refused"  # the receiver answered another error (bad request, overloaded...)
    UNSENDABLE = "unsendable"  # the body could no longer be encoded when it was sent


class Lane:
    """The messages to one receiver, in order."""

    def __init__(self, peer: str, stream: int, next_seq: int) -> None:
        self.peer = peer
        self.stream = stream
        self.next_seq = next_seq
        self.letters: dict[int, Letter] = {}
        self.in_flight = asyncio.Semaphore(LANE_WINDOW)
        self.room = asyncio.Condition()
        self.tasks: set[asyncio.Task[None]] = set()
        self.counts: Counter[str] = Counter()

    def low(self) -> int:
        """The lowest number not yet acknowledged or given up on (sent with every message)."""
        return min(self.letters, default=self.next_seq)


Resolve = Callable[[str], Awaitable[Connection]]
Held = tuple[Message, Callable[[], None], Caller]  # a message, its credit's return, its sender


class Deliveries:
    """A node's reliable sends (lanes) and reliable receives (sequencers)."""

    def __init__(
        self,
        store_path: str | os.PathLike[str],
        resolve: Resolve,
        runner: HandlerRunner,
        reply: Callable[[Caller, list[Message]], int],
        publish: Callable[[str, Any], Awaitable[int]] | None = None,
        hold_s: float = DEFAULT_HOLD_S,
    ) -> None:
        self._store_path = store_path
        self._store: DeliveryStore | None = None
        self._resolve = resolve
        self._runner = runner
        self._reply = reply
        self._publish = publish
        self._lanes: dict[tuple[str, bool], Lane] = {}
        self._inbox: OrderedDict[tuple[bytes, int], Sequencer[Held]] = OrderedDict()
        self._streams_of: Counter[bytes] = Counter()  # streams in the inbox per sender
        self._workers: dict[tuple[bytes, int], asyncio.Task[None]] = {}
        self._wakeups: dict[tuple[bytes, int], asyncio.Event] = {}
        self._hold_s = hold_s
        self.dead: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self._poller: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def store(self) -> DeliveryStore:
        if self._store is None:
            self._store = DeliveryStore(self._store_path)
        return self._store

    # ------------------------------------------------------------------ lifecycle

    def resume(self) -> None:
        """Start again every durable message a previous run left, and poll for retries."""
        if os.path.exists(self._store_path):
            for letter in self.store.pending():
                lane = self._lane(letter.peer, durable=True)
                lane.next_seq = max(lane.next_seq, letter.seq + 1)
                self._launch(lane, letter)
        self._poller = asyncio.create_task(self._poll_retries())

    async def close(self) -> None:
        self._closed = True
        tasks = [t for lane in self._lanes.values() for t in lane.tasks]
        tasks += [*self._workers.values(), *([self._poller] if self._poller else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._store is not None:
            self._store.close()

    # ------------------------------------------------------------------ sending

    async def send(
        self,
        peer: str,
        method: str,
        body: Any,
        mode: str,
        deadline_s: float | None,
        max_attempts: int | None,
    ) -> int:
        """Queue a reliable message; returns its sequence number on the lane to ``peer``.
        Waits while the lane is full (LANE_LIMIT unacknowledged)."""
        deadline_s = DEFAULT_DEADLINE_S if deadline_s is None else deadline_s
        attempts = DEFAULT_MAX_ATTEMPTS if max_attempts is None else max_attempts
        if deadline_s <= 0 or attempts < 1:
            raise InvalidArgument("deadline must be positive and max_attempts at least 1")
        # Encoded once here, as every attempt will: a body the codec refuses (a set, say)
        # is the caller's mistake now, not a lane task dying on its first attempt.
        encode_payload([Message(Kind.REQUEST, 0, name=method, body=body, meta={"dlv": [0, 0, 0]})])
        packed = pack_body(body) if mode == DURABLE else None
        lane = self._lane(peer, durable=mode == DURABLE)
        async with lane.room:
            await lane.room.wait_for(lambda: len(lane.letters) < LANE_LIMIT)
        seq = lane.next_seq
        lane.next_seq += 1
        created = now_ms()
        letter = Letter(
            peer, seq, next_msg_id(), method, body, created + int(deadline_s * 1000), attempts,
            created,
        )  # fmt: skip
        if packed is not None:
            letter.row = self.store.enqueue(letter, lane.stream, packed)
        self._launch(lane, letter)
        return seq

    def _lane(self, peer: str, *, durable: bool) -> Lane:
        """The lane to ``peer`` for this mode. Durable messages have a stream of their own,
        numbered in the store, so it continues across restarts; at-least-once ones get a
        fresh stream each run. Order therefore holds per sender, receiver and mode."""
        lane = self._lanes.get((peer, durable))
        if lane is None:
            fresh = int.from_bytes(os.urandom(7), "big")
            stream, next_seq = self.store.stream(peer, fresh) if durable else (fresh, 0)
            lane = self._lanes[(peer, durable)] = Lane(peer, stream, next_seq)
        return lane

    def _launch(self, lane: Lane, letter: Letter) -> None:
        lane.letters[letter.seq] = letter
        task = asyncio.create_task(self._deliver(lane, letter))
        lane.tasks.add(task)
        task.add_done_callback(lane.tasks.discard)

    async def _deliver(self, lane: Lane, letter: Letter) -> None:
        try:
            async with lane.in_flight:
                reason, detail = await self._attempts(lane, letter)
            if reason is not None:
                await self._bury(letter, reason, detail)
            else:
                lane.counts["acked"] += 1
                if letter.row is not None:
                    self.store.acked(letter.row)
        finally:  # settled (or the store failed, or we close): the lane must not wait on it
            lane.letters.pop(letter.seq, None)
            async with lane.room:
                lane.room.notify_all()

    async def _attempts(self, lane: Lane, letter: Letter) -> tuple[DeadReason | None, str]:
        """Send until acked (``(None, "")``) or given up (reason, detail). Raises nothing
        but CancelledError: whatever an attempt raises ends in a retry or a reason."""
        backoff = RETRY_S
        detail = ""
        while True:
            left_s = (letter.deadline_ms - now_ms()) / 1000
            if left_s <= 0:
                reason = DeadReason.PEER_GONE if letter.unreachable else DeadReason.DEADLINE
                return reason, detail
            try:
                await self._try_once(lane, letter, min(left_s, ACK_WAIT_S))
                return None, ""
            except NoSuchMethod as exc:
                return DeadReason.NO_SUCH_METHOD, str(exc)
            except RemoteError as exc:
                if exc.code != ErrorCode.HANDLER_FAILED:
                    return DeadReason.REFUSED, f"{exc.remote_type or exc.code}: {exc}"
                letter.failures += 1
                detail = f"{exc.remote_type or 'error'}: {exc}"
                if letter.failures >= letter.max_attempts:
                    return DeadReason.HANDLER_FAILED, detail
            except (PeerNotFound, PeerLost, DiscoveryUnavailable) as exc:
                letter.unreachable, detail = True, str(exc)
            except (TimeoutError, CallError) as exc:  # unreachable says where it stopped
                detail = str(exc) or ("peer unreachable" if letter.unreachable else "no ack")
            except InvalidBody as exc:  # mutated after send() checked it: no retry helps
                return DeadReason.UNSENDABLE, str(exc)
            except Exception as exc:  # unforeseen: retried until the deadline, then buried
                detail = f"{type(exc).__name__}: {exc}"
            lane.counts["retries"] += 1
            await asyncio.sleep(min(backoff, max(left_s, 0.0)))
            backoff = min(backoff * 2, RETRY_MAX_S)

    async def _try_once(self, lane: Lane, letter: Letter, wait_s: float) -> None:
        letter.unreachable = True  # until the peer is found and connected
        async with asyncio.timeout(wait_s):
            connection = await self._resolve(letter.peer)
            letter.unreachable = False
            await connection.acquire(None, True)
            meta = {"dlv": [lane.stream, letter.seq, lane.low()]}
            _, call = connection.start_call(
                Kind.REQUEST, letter.method, letter.body, msg_id=letter.msg_id, meta=meta
            )
            letter.sends += 1
            try:
                await call.future
            finally:
                connection.calls.pop(letter.msg_id, None)

    async def _bury(self, letter: Letter, reason: DeadReason, detail: str) -> None:
        self.dead[reason.value] += 1
        try:
            body: bytes | None = pack_body(letter.body)
        except InvalidBody:  # an attachment: the dead letter keeps everything else
            body, detail = None, f"{detail} (body not kept: not plain msgpack)"
        letter_id = self.store.bury(
            letter.peer, letter.method, body, reason.value, detail, letter.failures or letter.sends,
            letter.created_ms, letter.row,
        )  # fmt: skip
        if self._publish is not None:
            note = {"id": letter_id, "peer": letter.peer, "method": letter.method}
            with contextlib.suppress(Exception):  # a notice, not the dead letter itself
                await self._publish(DEADLETTERS_TOPIC, {**note, "reason": reason.value})

    async def _poll_retries(self) -> None:
        """Dead letters marked for retry (``mesh deadletters retry``) go out again, durably."""
        while not self._closed:
            await asyncio.sleep(RETRY_POLL_S)
            if not os.path.exists(self._store_path):
                continue
            for letter in self.store.take_retries():
                await self.send(
                    letter["peer"], letter["method"], letter["body"], DURABLE, None, None
                )

    async def flushed(self, timeout: float | None = None) -> None:
        """Until every reliable message sent so far is acknowledged or dead-lettered."""
        async with asyncio.timeout(timeout):
            for lane in list(self._lanes.values()):
                async with lane.room:
                    await lane.room.wait_for(lambda lane=lane: not lane.letters)

    # ------------------------------------------------------------------ receiving

    def receive(self, caller: Caller, message: Message, consumed: Callable[[], None]) -> None:
        """A reliable message arrived: ack a duplicate, hold or run it in order. Acks go to
        the caller (its connection) each message came from.

        ``consumed`` returns the message's credit. It is called exactly once per arrival:
        after its handler ran (or failed: a retry is a new arrival), at once for a
        duplicate, a copy of the running one, a bad ``dlv`` or a drop by the sequencer's
        bounds, and when the sequencer lets a held one go (a newer copy replaces it, the
        sender gave up on it, or a lower one displaces it)."""
        if self._closed:
            consumed()
            return
        dlv = (message.meta or {}).get("dlv")
        if not (
            isinstance(dlv, list)
            and len(dlv) == 3
            and all(type(n) is int and 0 <= n < 2**63 for n in dlv)
        ):
            consumed()
            self._reply(caller, [error_message(message.msg_id, ErrorCode.BAD_REQUEST, "bad dlv")])
            return
        stream, seq, low = dlv
        key = (caller.node_id, stream)
        sequencer = self._inbox.get(key)
        if sequencer is None:
            sequencer = self._inbox[key] = Sequencer(self._hold_s)
            self._streams_of[caller.node_id] += 1
            self._forget_idle_streams(caller.node_id)
        else:
            self._inbox.move_to_end(key)
        now = asyncio.get_running_loop().time()
        outcome = sequencer.arrive(seq, low, (message, consumed, caller), now)
        for _, let_go, _ in outcome.released:
            let_go()  # not acked: its sender retries it, or has given it up
        if outcome.verdict not in KEPT:
            consumed()
            if outcome.verdict is Arrival.DUPLICATE:
                self.received["duplicates_suppressed"] += 1
                self._reply(caller, [Message(Kind.REPLY, next_msg_id(), message.msg_id)])
        if not sequencer.held:
            return
        if key in self._workers:
            self._wakeups[key].set()  # it may be waiting out a gap that this closed
        else:
            self._wakeups[key] = asyncio.Event()
            self._workers[key] = asyncio.create_task(self._work(key, sequencer))

    def _forget_idle_streams(self, peer_id: bytes) -> None:
        """Keep at most MAX_STREAMS_PER_PEER streams of one sender and MAX_STREAMS in all
        (every sender restart starts new ones): the least recently used idle ones go, the
        sender's own first, so one member opening streams by the thousand forgets its own
        and never another's. Forgetting one is what a receiver restart does to it
        (protocol.md 8.2), so the oldest must be long finished."""
        self._evict(self._streams_of[peer_id] - MAX_STREAMS_PER_PEER, lambda key: key[0] == peer_id)
        self._evict(len(self._inbox) - MAX_STREAMS, lambda key: True)

    def _evict(self, excess: int, which: Callable[[tuple[bytes, int]], bool]) -> None:
        if excess <= 0:
            return
        for key in list(self._inbox)[:-1]:  # never the one just made
            if excess <= 0:
                return
            sequencer = self._inbox[key]
            idle = key not in self._workers and not sequencer.held and sequencer.running is None
            if idle and which(key):
                self.received["gaps_forgotten"] += sequencer.gaps
                self.received["late_forgotten"] += sequencer.late
                self.received["dropped_forgotten"] += sequencer.dropped
                del self._inbox[key]
                self._streams_of[key[0]] -= 1
                if not self._streams_of[key[0]]:
                    del self._streams_of[key[0]]
                excess -= 1

    async def _work(self, key: tuple[bytes, int], sequencer: Sequencer[Held]) -> None:
        """Run one stream's messages one at a time, in order; ends when nothing is held."""
        clock = asyncio.get_running_loop().time
        try:
            while True:
                now = clock()
                for _, let_go, _ in sequencer.overdue(now):
                    let_go()  # held too long and no gap could be reported: its sender retries
                ready = sequencer.next(now)
                if ready is None:
                    due = sequencer.deadline()
                    if due is None:
                        return
                    wakeup = self._wakeups[key]
                    wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(due - clock(), 0.0)):
                            await wakeup.wait()
                    continue
                seq, (message, consumed, caller) = ready
                ok, answer = await self._handle(caller.name, message)
                sequencer.done(seq, ok, clock())
                self.received["handled" if ok else "failed"] += 1
                consumed()
                self._reply(caller, [answer])
        finally:
            self._workers.pop(key, None)
            self._wakeups.pop(key, None)

    async def _handle(self, peer_name: str, message: Message) -> tuple[bool, Message]:
        spec = self._runner.handlers.get(message.name)
        corr = message.msg_id
        if spec is None or spec.streaming:
            text = f"no handler for {message.name!r}"
            return False, error_message(corr, ErrorCode.UNKNOWN_METHOD, text)
        try:
            await self._runner.call(spec, self._runner.arguments(spec, message, peer_name))
        except asyncio.CancelledError:
            if being_cancelled():
                raise  # this node is closing: the worker ends
            self._runner.failures += 1  # the handler's own, like any failure of its
            return False, own_cancellation(corr)
        except Exception as exc:  # the sender counts attempts; the text goes back
            self._runner.failures += 1
            code = error_code(exc)
            return False, error_message(
                corr, code, str(exc) or type(exc).__name__, type(exc).__name__
            )
        return True, Message(Kind.REPLY, next_msg_id(), corr)

    # ------------------------------------------------------------------ introspection

    def stats(self) -> dict[str, Any]:
        return {
            "peers": {
                f"{peer} ({DURABLE if durable else AT_LEAST_ONCE})": {
                    "outbox": len(lane.letters),
                    "next_seq": lane.next_seq,
                    "acked": lane.counts["acked"],
                    "retries": lane.counts["retries"],
                }
                for (peer, durable), lane in self._lanes.items()
            },
            "received": {
                "handled": self.received["handled"],
                "failed": self.received["failed"],
                "duplicates_suppressed": self.received["duplicates_suppressed"],
                "gaps": self.received["gaps_forgotten"] + sum(s.gaps for s in self._inbox.values()),
                "late": self.received["late_forgotten"] + sum(s.late for s in self._inbox.values()),
                "dropped": self.received["dropped_forgotten"]
                + sum(s.dropped for s in self._inbox.values()),
                "streams": len(self._inbox),
            },
            "dead_letters": dict(self.dead),
        }
