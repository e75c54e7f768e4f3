"""The runtime between the sans-IO core and ZeroMQ, over a network without sockets.

Whole nodes (Connection, Inbound, the callee side, the handler runner) talk over
:class:`tests.fakenet.FakeNetwork` on a loop whose clock moves only when nothing else can
run: frames are recorded and held or dropped by hand, and timeouts cost no real time. Each
test here is one defect issue 17 found in this layer, or one state rule of a connection.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import pytest

from mesh import (
    FlowControlTimeout,
    LocalProtocolError,
    Message,
    NoCredit,
    Node,
    PeerLost,
    Redirect,
    RedirectFailed,
    RemoteError,
    ReplyTooLarge,
    SessionTable,
)
from mesh.core.errors import HandshakeRejected
from mesh.core.flow import SendCredit
from mesh.core.wire import ErrorCode, Kind, RejectCode
from mesh.runtime.callee import MAX_SESSIONS_PER_PEER
from mesh.runtime.connection import COLLECT_MAX_BYTES, Connection, ConnectionState
from mesh.runtime.handlers import STREAM_STALL_S, Caller, HandlerRunner
from mesh.runtime.node import MAX_REDIRECTS
from tests.conftest import certified, handshake
from tests.fakenet import FakeNetwork, run, settle, wait_until

_names = itertools.count()


class Mesh:
    """Nodes on one fake network, each knowing the others' certificates and endpoints."""

    def __init__(self, authority, trust, tmp_path) -> None:
        self.net = FakeNetwork()
        self.authority = authority
        self.trust = trust
        self.tmp_path = tmp_path
        self.nodes: list[Node] = []

    async def node(self, name: str, *, identity=None, **options) -> Node:
        unique = f"inproc://fakenet-{name}-{next(_names)}"
        node = Node(
            name,
            identity=identity or certified(self.authority, name),
            trust=self.trust,
            network=self.net,
            discovery=[],
            bind=unique,
            outbox=self.tmp_path / f"{name}-{next(_names)}.sqlite3",
            **options,
        )
        await node.start()
        for other in self.nodes:
            other.add_peer(node.identity.require_certificate(), node.endpoint)
            node.add_peer(other.identity.require_certificate(), other.endpoint)
        self.nodes.append(node)
        return node

    async def close(self) -> None:
        await asyncio.gather(*(node.close() for node in self.nodes))


@pytest.fixture
def fake_mesh(authority, trust, tmp_path):
    return Mesh(authority, trust, tmp_path)


def within_mesh(fake_mesh: Mesh, scenario) -> None:
    async def main() -> None:
        try:
            await scenario()
        finally:
            await fake_mesh.close()

    run(main)


def dial(fake_mesh: Mesh, identity, target: Node, table: SessionTable | None = None):
    """A Connection from ``identity`` to ``target``, made by hand (not through a node)."""
    return Connection(
        fake_mesh.net,
        identity,
        fake_mesh.trust,
        SessionTable() if table is None else table,
        target.endpoint,
        target.identity.require_certificate(),
        Counter(),
        5.0,
    )


def requests_received(node: Node) -> int:
    return node.traffic.snapshot()["received"].get("REQUEST", {}).get("messages", 0)


# ------------------------------------------------------------------ sending under credit


def test_a_request_without_credit_leaves_nothing_on_the_wire(fake_mesh):
    """Defect 3: one-way messages waiting to be coalesced must not spend the credit a
    request was checked against; a request refused for credit is never written."""

    async def scenario() -> None:
        a, b = await fake_mesh.node("a"), await fake_mesh.node("b")
        ran = []

        @b.handler("echo")
        async def echo(body):
            ran.append(body)
            return body

        b.handler("note", lambda body: None)
        await a.request("b", "echo", 0, timeout=5)
        connection = a._pool.connections["b"]
        connection.credit = SendCredit((2, 200))  # two messages, a few hundred bytes
        await a.send("b", "note", "x" * 300)  # waits to be coalesced: 1 message, ~300 bytes
        with pytest.raises(NoCredit):
            await a.request("b", "echo", 1, timeout=5, block=False)
        assert connection.calls == {}
        await settle()
        assert ran == [0]  # the refused request never reached b
        assert requests_received(b) == 1
        assert a.drops["no_call"] == 0

    within_mesh(fake_mesh, scenario)


def test_credit_waiters_that_give_up_leave_nothing_behind(fake_mesh):
    """Defect 7: a peer that answers pings but never grants must not grow the waiter list."""

    async def scenario() -> None:
        a, b = await fake_mesh.node("a"), await fake_mesh.node("b")
        b.handler("echo", _echo)
        await a.request("b", "echo", 0, timeout=5)
        connection = a._pool.connections["b"]
        connection.credit = SendCredit((0, 0))
        for _ in range(50):
            with pytest.raises(FlowControlTimeout):
                await a.request("b", "echo", 1, timeout=0.5)
        waiters = [asyncio.create_task(connection.acquire(None)) for _ in range(20)]
        await settle()
        assert connection.waiting_for_credit == 20
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        assert connection._credit_waiters == []
        assert connection.waiting_for_credit == 0

    within_mesh(fake_mesh, scenario)


# ------------------------------------------------------------------ the shared connect


def test_one_callers_cancellation_never_reaches_the_others(fake_mesh):
    """Defect 4: the connect several callers share runs in its own task."""

    async def scenario() -> None:
        a, b = await fake_mesh.node("a"), await fake_mesh.node("b")
        b.handler("echo", _echo)
        fake_mesh.net.hold()  # the handshake stalls until released
        first = asyncio.create_task(a.request("b", "echo", 1, timeout=30))
        second = asyncio.create_task(a.request("b", "echo", 2, timeout=30))
        await wait_until(lambda: fake_mesh.net.held)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        fake_mesh.net.release()
        assert await second == 2
        assert a._pool.connecting == {}

    within_mesh(fake_mesh, scenario)


# ------------------------------------------------------------------ streams and requests


def test_a_plain_request_to_an_endless_stream_is_bounded(fake_mesh):
    """Defect 8: request() collects a stream only up to a bound, then a typed error, and the
    generator on the other side is stopped."""

    async def scenario() -> None:
        a, b = await fake_mesh.node("a"), await fake_mesh.node("b")
        stopped = asyncio.Event()

        @b.handler("forever")
        async def forever(body):
            try:  # "endless": four times the bound, so an unbounded caller fails, not hangs
                for _ in range(4 * COLLECT_MAX_BYTES // 65536):
                    yield b"x" * 65536
            finally:
                stopped.set()

        with pytest.raises(ReplyTooLarge) as raised:
            await a.request("b", "forever")  # no timeout: the bound alone ends it
        assert raised.value.peer == "b"
        await asyncio.wait_for(stopped.wait(), 30)
        assert b._runner._running == {}  # cancelled, not run to its end
        assert a._pool.connections["b"].calls == {}

    within_mesh(fake_mesh, scenario)


def test_streaming_a_method_that_answers_once_yields_its_reply(fake_mesh):
    """Defect 16: not InvalidArgument from our own credit accounting; the one reply."""

    async def scenario() -> None:
        a, b = await fake_mesh.node("a"), await fake_mesh.node("b")
        b.handler("echo", _echo)
        assert [chunk async for chunk in a.stream("b", "echo", "hi", timeout=5)] == ["hi"]
        # and the accounting stayed exact: a stream after it still flows
        assert await a.request("b", "echo", 3, timeout=5) == 3

    within_mesh(fake_mesh, scenario)


# ------------------------------------------------------------------ replies by session


def test_replies_and_goodbyes_follow_the_session_not_the_node_id(fake_mesh, authority):
    """Defect 6: two processes under one identity (every `mesh call` is `mesh-cli`) each
    get their own replies, and one's BYE does not cancel the other's handlers."""

    async def scenario() -> None:
        b = await fake_mesh.node("b")
        shared = certified(authority, "cli")
        first = await fake_mesh.node("cli", identity=shared)
        release = asyncio.Event()
        cancelled = []

        @b.handler("slow")
        async def slow(body):
            try:
                await release.wait()
            except asyncio.CancelledError:
                cancelled.append(body)
                raise
            return body

        b.handler("echo", _echo)
        waiting = asyncio.create_task(first.request("b", "slow", "first's", timeout=60))
        await wait_until(lambda: b._runner._running)
        second = await fake_mesh.node("cli", identity=shared)  # newer session, same node id
        assert await second.request("b", "echo", "second's", timeout=5) == "second's"
        fake_mesh.nodes.remove(second)
        await second.close()  # says BYE
        await settle()
        assert cancelled == []
        release.set()
        assert await waiting == "first's"
        assert first.drops["no_call"] == 0 and second.drops["no_call"] == 0

    within_mesh(fake_mesh, scenario)


# ------------------------------------------------------------------ per member, not per connection


def test_sessions_and_handshakes_are_bounded_per_member(fake_mesh, authority):
    """Defect 12: a member opening connection after connection gets no more sessions (each
    a credit window and a replay window) than the bound, and its handshakes are limited."""

    async def scenario() -> None:
        b = await fake_mesh.node("b")
        member = certified(authority, "many")
        opened, busy = [], 0
        for _ in range(60):
            connection = dial(fake_mesh, member, b)
            try:
                await connection.open(5)
                opened.append(connection)
            except HandshakeRejected as refused:
                busy += refused.code == RejectCode.BUSY
        node_id = member.require_certificate().node_id
        assert busy > 0  # the bucket is per member: 60 at once is beyond its burst
        assert len(b._callee._by_peer[node_id]) <= MAX_SESSIONS_PER_PEER
        assert len(b._table) <= MAX_SESSIONS_PER_PEER
        for connection in opened:
            connection.close()

    within_mesh(fake_mesh, scenario)


def test_a_members_retired_sessions_go_before_its_live_ones(fake_mesh, authority):
    """A member rekeying one connection again and again fills the callee's bound with
    retired sessions: those go, not the session of its other connection."""

    async def scenario() -> None:
        b = await fake_mesh.node("b")
        member = certified(authority, "many")
        kept, busy = dial(fake_mesh, member, b), dial(fake_mesh, member, b)
        await kept.open(5)
        await busy.open(5)
        for _ in range(MAX_SESSIONS_PER_PEER + 4):
            await busy.rekey(5)
        held = b._callee._by_peer[member.require_certificate().node_id]
        assert len(held) == MAX_SESSIONS_PER_PEER
        assert kept.session.send_id in held and busy.session.send_id in held
        assert b.drops["sessions_per_peer"] == 6  # 2 connections and 20 rekeys, 16 kept
        for connection in (kept, busy):
            connection.close()

    within_mesh(fake_mesh, scenario)


# ------------------------------------------------------------------ closing


def test_close_during_a_rekey_installs_nothing_and_ends_every_task(fake_mesh):
    """Defect 9: a WELCOME that arrives just before close must not install a session, and
    the rekey's task ends; its waiter gets PeerLost, not a cancellation it never asked for."""

    async def scenario() -> None:
        a, b = await fake_mesh.node("a"), await fake_mesh.node("b")
        b.handler("echo", _echo)
        await a.request("b", "echo", 0, timeout=5)
        connection = a._pool.connections["b"]
        sessions_before = len(a._table)
        fake_mesh.net.hold()
        rekey = asyncio.create_task(connection.rekey())
        await wait_until(lambda: fake_mesh.net.held)  # the HELLO
        assert connection.state is ConnectionState.REKEYING
        fake_mesh.net.release()
        fake_mesh.net.hold()
        await wait_until(lambda: fake_mesh.net.held)  # b's WELCOME, on its way back
        fake_mesh.net.release(then=connection.close)  # the WELCOME is read, then close
        with pytest.raises(PeerLost):
            await rekey
        await connection.wait_closed()
        assert all(task.done() for task in connection.tasks)
        assert len(a._table) == sessions_before - 1  # its session left, none came in

    within_mesh(fake_mesh, scenario)


def test_close_while_the_first_welcome_arrives_installs_nothing(fake_mesh, authority):
    """Defect 9, first handshake: open() runs in its caller's task, so only the state check
    stops a WELCOME read just before close from installing a session after it."""

    async def scenario() -> None:
        b = await fake_mesh.node("b")
        table = SessionTable()
        connection = dial(fake_mesh, certified(authority, "c"), b, table)
        fake_mesh.net.hold()
        opening = asyncio.create_task(connection.open(5))
        await wait_until(lambda: fake_mesh.net.held)  # the HELLO
        fake_mesh.net.release()
        fake_mesh.net.hold()
        await wait_until(lambda: fake_mesh.net.held)  # the WELCOME
        fake_mesh.net.release(then=connection.close)  # the WELCOME is read, then close
        with pytest.raises(PeerLost):
            await opening
        assert connection.state is ConnectionState.CLOSED
        assert connection.session is None
        assert len(table) == 0

    within_mesh(fake_mesh, scenario)


def test_a_connection_checks_its_state_where_it_acts(fake_mesh, authority):
    async def scenario() -> None:
        b = await fake_mesh.node("b")
        connection = dial(fake_mesh, certified(authority, "c"), b)
        assert connection.state is ConnectionState.OPENING
        with pytest.raises(LocalProtocolError):
            connection.send([_ping()])
        await connection.open(5)
        assert connection.state is ConnectionState.OPEN
        with pytest.raises(LocalProtocolError):
            await connection.open(5)
        connection.close()
        assert connection.state is ConnectionState.CLOSED
        with pytest.raises(PeerLost):
            connection.send([_ping()])
        with pytest.raises(PeerLost):
            await connection.acquire(1)

    within_mesh(fake_mesh, scenario)


def test_a_silent_peer_is_lost_after_missed_heartbeats(fake_mesh):
    """Time moved by the loop, not slept: a call to a peer cut off fails with PeerLost
    within the heartbeat bound instead of its own (long) timeout."""

    async def scenario() -> None:
        a = await fake_mesh.node("a", heartbeat=1.0)
        b = await fake_mesh.node("b")
        never = asyncio.Event()

        @b.handler("hang")
        async def hang(body):
            await never.wait()

        await a.ping("b")
        started = asyncio.get_running_loop().time()
        call = asyncio.create_task(a.request("b", "hang", timeout=3600))
        await wait_until(lambda: b._runner._running)
        fake_mesh.net.cut.add(b.endpoint)
        with pytest.raises(PeerLost):
            await call
        assert asyncio.get_running_loop().time() - started < 10  # virtual seconds

    within_mesh(fake_mesh, scenario)


def test_a_callee_that_closes_mid_call_is_a_lost_peer_not_a_cancel(fake_mesh):
    """A node that closes stops its handlers and answers them CANCELLED (protocol.md 8.1):
    the caller, which cancelled nothing, gets PeerLost at once (a request and a stream
    alike), never an error that reads as its own doing, and not only at the heartbeat."""

    async def scenario() -> None:
        a = await fake_mesh.node("a", heartbeat=3600.0)  # no heartbeat decides it here
        b = await fake_mesh.node("b")
        never = asyncio.Event()

        @b.handler("hang")
        async def hang(body):
            await never.wait()

        @b.handler("hang_stream")
        async def hang_stream(body):
            yield "first"
            await never.wait()

        call = asyncio.create_task(a.request("b", "hang", timeout=3600))
        stream = a.stream("b", "hang_stream", timeout=3600)
        assert await anext(stream) == "first"
        reading = asyncio.create_task(anext(stream))
        await wait_until(lambda: len(b._runner._running) == 2)
        await b.close()
        for pending in (call, reading):
            with pytest.raises(PeerLost, match="b stopped before it answered") as raised:
                await pending
            assert raised.value.peer == "b"
        await stream.aclose()

    within_mesh(fake_mesh, scenario)


def test_a_cancel_the_callee_did_not_make_on_closing_is_not_a_lost_peer(fake_mesh):
    """Only a closing callee answers CANCELLED. A handler whose own code raises
    CancelledError has failed (HANDLER_FAILED), and a stream whose reader granted nothing
    for STREAM_STALL_S has expired (DEADLINE_EXCEEDED): in both the callee is still there,
    so neither may read as PeerLost (a caller would give up on it, or restart elsewhere)."""

    async def scenario() -> None:
        a, b = await fake_mesh.node("a"), await fake_mesh.node("b")
        b.handler("echo", _echo)

        @b.handler("self_cancelling")
        async def self_cancelling(body):
            other = asyncio.create_task(asyncio.Event().wait())
            other.cancel()
            await other  # its CancelledError is this handler's own failure

        @b.handler("chunks")
        async def chunks(body):
            for index in range(100):
                yield index

        with pytest.raises(RemoteError) as raised:
            await a.request("b", "self_cancelling", timeout=30)
        assert raised.value.code == ErrorCode.HANDLER_FAILED
        assert not isinstance(raised.value, PeerLost)
        stream = a.stream("b", "chunks", timeout=3600, window=1)
        assert await anext(stream) == 0
        await asyncio.sleep(STREAM_STALL_S * 2)  # virtual time: the reader reads nothing
        with pytest.raises(RemoteError) as raised:
            [chunk async for chunk in stream]  # what was sent before, then its end
        assert raised.value.code == ErrorCode.DEADLINE_EXCEEDED
        assert await a.request("b", "echo", "still here", timeout=30) == "still here"

    within_mesh(fake_mesh, scenario)


def test_failed_handlers_leave_no_credit_held(fake_mesh):
    """The callee's invariant: once every call is answered, it holds nothing of the caller."""

    async def scenario() -> None:
        a, b = await fake_mesh.node("a"), await fake_mesh.node("b")

        @b.handler("flaky")
        async def flaky(body):
            if body % 3 == 0:
                raise RuntimeError("no")
            return body

        results = await asyncio.gather(
            *(a.request("b", "flaky", n, timeout=5) for n in range(40)), return_exceptions=True
        )
        assert sum(isinstance(r, Exception) for r in results) == 14
        await settle()
        assert b.stats()["callers"]["a"]["held_messages"] == 0
        assert b.stats()["callers"]["a"]["held_bytes"] == 0

    within_mesh(fake_mesh, scenario)


async def _echo(body):
    return body


def _ping():
    from mesh.core.codec import Message
    from mesh.runtime.stamps import next_msg_id

    return Message(Kind.PING, next_msg_id())


def test_a_restarted_peers_join_ends_the_dial_to_its_old_address(fake_mesh):
    """A peer restarted elsewhere: its JOIN, arriving while the old address is still being
    dialled, gets the call through at once instead of after the whole connect timeout (and
    the failed dial never makes the node forget the newer entry)."""

    async def scenario() -> None:
        a = await fake_mesh.node("a", connect_timeout=60)
        b = await fake_mesh.node("b")
        b.handler("echo", _echo)
        certificate = b.identity.require_certificate()
        a.add_peer(certificate, "inproc://nobody-listens-here")  # where b used to be
        loop = asyncio.get_running_loop()
        started = loop.time()
        call = asyncio.create_task(a.request("b", "echo", "hi", timeout=120))
        await wait_until(lambda: "b" in a._pool.dials)
        entry = {"cert": certificate.to_bytes(), "endpoint": b.endpoint, "started_ms": 1}
        a._on_directory_event({"type": "JOIN", "entry": entry})
        assert await call == "hi"
        assert loop.time() - started < 60  # virtual seconds: not the old dial's timeout

    within_mesh(fake_mesh, scenario)


def test_one_way_handlers_run_count_failures_and_end_with_the_node(fake_mesh):
    """A SEND to a coroutine handler takes the short path (no reply, one coroutine): it
    still gets its context, counts its failure, gives the credit back, and a node closing
    under a running one ends it cleanly."""

    async def scenario() -> None:
        a, b = await fake_mesh.node("a"), await fake_mesh.node("b")
        seen: list[tuple[object, str]] = []
        parked = asyncio.Event()

        async def note(body, ctx):
            seen.append((body, ctx.peer))
            if body == "fail":
                raise ValueError("refused")
            if body == "park":
                parked.set()
                await asyncio.Event().wait()  # until the node closes

        b.handler("note", note)
        for body in ("one", "fail", "two"):
            await a.send("b", "note", body)
        await wait_until(lambda: len(seen) == 3)
        assert sorted(seen) == [("fail", "a"), ("one", "a"), ("two", "a")]
        await wait_until(lambda: b.stats()["handler_failures"] == 1)
        (inflow,) = b._callee.inflow.values()
        assert inflow.consumed_messages == inflow.received_messages == 3  # credit comes back
        await a.send("b", "note", "park")
        await parked.wait()
        await b.close()  # cancels the parked handler and returns
        assert b._runner._running == {}

    within_mesh(fake_mesh, scenario)


@pytest.fixture
def pair(alice, bob, trust):
    return handshake(alice, bob, trust)


@pytest.mark.parametrize("kind", [Kind.SEND, Kind.REQUEST])
def test_a_handler_that_ends_inside_create_task_leaves_nothing_behind(kind, pair):
    """Under an eager task factory (Python 3.12's, or any that runs a coroutine's first
    step at once), a handler that never waits has finished before create_task returns:
    nothing of it may stay registered, and a retry of it is answered from the cache."""

    def eager(loop, coroutine, **kwargs):
        done = loop.create_future()
        try:
            coroutine.send(None)
        except StopIteration as stop:
            done.set_result(stop.value)
            return done
        raise AssertionError("this test's handler never waits")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(eager)
        try:
            sent: list[list[Message]] = []
            runner = HandlerRunner(lambda caller, messages: sent.append(messages) or 1)

            async def echo(body):
                return body

            runner.add("m", echo)
            caller = Caller(pair.bob)
            consumed: list[bool] = []
            runner.start(caller, Message(kind, 7, name="m", body=1), consumed.append)
            replies = 1 if kind == Kind.REQUEST else 0
            assert consumed == [kind == Kind.REQUEST] and len(sent) == replies
            assert runner._running == {} and runner._unstarted == {} and not runner._one_way
            if kind == Kind.REQUEST:  # a retry: answered from the cache, not run again
                runner.start(caller, Message(kind, 7, name="m", body=1), consumed.append)
                assert sent[1] == sent[0] and runner.duplicates == 1
        finally:
            loop.set_task_factory(None)

    run(scenario)


@pytest.mark.parametrize("kind", [Kind.SEND, Kind.REQUEST])
def test_a_call_cancelled_before_its_handler_starts_gives_its_credit_back(kind, pair):
    """A CANCEL read in the same batch as its REQUEST (or a SEND's, from a hostile peer)
    cancels a task that never ran: it must still be forgotten and its credit returned,
    or the caller's window shrinks for good and the id is refused as a duplicate later."""

    async def scenario() -> None:
        runner = HandlerRunner(lambda caller, messages: 1)
        ran: list[object] = []

        async def handler(body):
            ran.append(body)
            return body

        runner.add("m", handler)
        caller = Caller(pair.bob)
        consumed: list[bool] = []
        runner.start(caller, Message(kind, 7, name="m", body=1), consumed.append)
        runner.cancel(caller, 7)  # before the loop ran the handler's task
        await settle()
        assert ran == [] and consumed == [False]
        assert runner._running == {} and runner._one_way == set()
        runner.start(caller, Message(kind, 7, name="m", body=2), consumed.append)
        await settle()
        assert ran == [2] and runner.duplicates == 0

    run(scenario)


# ------------------------------------------------------------------ redirects (protocol.md 8.1)


def _counting(start: int, stop: int, then: Redirect | None = None):
    """A streaming handler: the numbers ``start``..``stop - 1``, then ``then`` if given."""

    async def count(body, ctx):
        for number in range(start, stop):
            yield number
        if then is not None:
            yield then

    return count


def test_a_redirected_stream_goes_on_at_its_target_through_a_relay(fake_mesh):
    """The reader sees one stream, in order, with nothing repeated, though its second half
    comes from another node; a relay in between (a router) follows without knowing it, and
    the node that redirected is off the path: it can leave mid-stream."""

    async def scenario() -> None:
        user, relay = await fake_mesh.node("user"), await fake_mesh.node("relay")
        source, target = await fake_mesh.node("source"), await fake_mesh.node("target")
        continued: list[tuple[str, bool, object]] = []

        async def more(body, ctx):
            continued.append((ctx.peer, ctx.follows_redirects, body))
            for number in range(3, 6):
                yield number

        source.handler("count", _counting(0, 3, Redirect("target", "more", {"from": 3})))
        target.handler("more", more)

        async def relayed(body):
            async for chunk in relay.stream("source", "count", timeout=30):
                yield chunk

        relay.handler("relay", relayed)
        chunks = user.stream("relay", "relay", timeout=30, window=1)
        seen = [await anext(chunks) for _ in range(4)]
        await wait_until(lambda: source._runner._running == {})  # done: the stream is not its
        await source.close()
        seen += [chunk async for chunk in chunks]
        assert seen == [0, 1, 2, 3, 4, 5]
        assert continued == [("relay", True, {"from": 3})]  # the relay followed, asking again
        assert target._runner._running == {} and relay._runner._running == {}

    within_mesh(fake_mesh, scenario)


def test_a_redirect_is_followed_only_by_a_reader_that_asked(fake_mesh):
    """A plain request never asks, nor a stream read with follow_redirects=False: the
    handler's redirect is then its own mistake, reported as a handler failure, never an
    answer that looks complete, and the target is never called."""

    async def scenario() -> None:
        a, b, c = [await fake_mesh.node(name) for name in "abc"]
        b.handler("count", _counting(0, 2, Redirect("c", "more")))
        c.handler("more", _counting(2, 4))
        for read in (
            a.request("b", "count", timeout=30),
            _collect(a.stream("b", "count", timeout=30, follow_redirects=False)),
        ):
            with pytest.raises(RemoteError) as raised:
                await read
            assert raised.value.code == ErrorCode.HANDLER_FAILED
            assert raised.value.remote_type == "LocalProtocolError"
        assert requests_received(c) == 0
        assert await _collect(a.stream("b", "count", timeout=30)) == [0, 1, 2, 3]

    within_mesh(fake_mesh, scenario)


async def _collect(chunks) -> list:
    return [chunk async for chunk in chunks]


def test_a_loop_of_redirects_ends_after_max_redirects(fake_mesh):
    async def scenario() -> None:
        a, b = await fake_mesh.node("a"), await fake_mesh.node("b")
        b.handler("again", _counting(0, 1, Redirect("b", "again")))
        seen: list[int] = []

        async def read() -> None:
            async for chunk in a.stream("b", "again", timeout=30):
                seen.append(chunk)

        with pytest.raises(RedirectFailed, match=f"more than {MAX_REDIRECTS} hops"):
            await read()
        assert seen == [0] * (MAX_REDIRECTS + 1)  # every hop's chunks, then the typed error
        await wait_until(lambda: b._runner._running == {})

    within_mesh(fake_mesh, scenario)


@pytest.mark.parametrize(
    ("meta", "follow", "error"),
    [
        ({"redirect": {"peer": 7, "method": ""}}, True, "malformed redirect"),
        ({"redirect": "c.more"}, True, "malformed redirect"),
        ({"redirect": None}, True, "malformed redirect"),
        ({"redirect": {"peer": "c", "method": "more"}}, False, "not followed"),
    ],
)
def test_a_redirect_the_reader_cannot_follow_fails_the_stream(
    fake_mesh, monkeypatch, meta, follow, error
):
    """Another implementation's STREAM_END with a redirect of the wrong shape, or one sent
    to a reader that did not ask: RedirectFailed, never a stream that looks complete."""

    def broken(item, context, corr):
        return Message(Kind.STREAM_END, 99, corr, meta=meta)

    monkeypatch.setattr(HandlerRunner, "_redirect", staticmethod(broken))

    async def scenario() -> None:
        a, b = await fake_mesh.node("a"), await fake_mesh.node("b")
        b.handler("count", _counting(0, 2, Redirect("c", "more")))
        seen: list[int] = []

        async def read() -> None:
            async for chunk in a.stream("b", "count", timeout=30, follow_redirects=follow):
                seen.append(chunk)

        with pytest.raises(RedirectFailed, match=error):
            await read()
        assert seen == [0, 1]  # the chunks before, and nothing made up after
        assert a._pool.connections["b"].calls == {}
        with pytest.raises(RedirectFailed, match=r"plain request|malformed"):
            await a.request("b", "count", timeout=30)

    within_mesh(fake_mesh, scenario)
