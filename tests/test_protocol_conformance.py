"""The node does what protocol.md says, item by item (issue 20: where a third-party
implementation found the two apart). Each test names the section it checks."""

from __future__ import annotations

import asyncio
import sys

import msgpack
import pytest
import zmq
import zmq.asyncio

from mesh import Blob, Message, NoSuchMethod, RemoteError, UnsupportedAttachment
from mesh.core.codec import Unmaterialised
from mesh.core.wire import ErrorCode, Kind
from mesh.runtime.connection import Call, Connection
from mesh.runtime.discovery import DiscoveryServer
from mesh.runtime.node import Node
from mesh.runtime.stamps import now_ms
from tests.conftest import eventually


def _recording(node: Node, method: str) -> list[object]:
    """A handler for ``method`` that records each body it is given; the record."""
    bodies: list[object] = []

    async def record(body: object) -> None:
        bodies.append(body)

    node.handler(method, record)
    return bodies


async def _connect(caller: Node, callee: Node) -> Connection:
    """The caller's connection to the callee (added by hand): to write raw frames on it."""
    caller.add_peer(callee.identity.require_certificate(), callee.endpoint)
    return await caller._resolve(callee.name)


async def _ping(node: Node, peer: str, body: object) -> object:
    connection = await node._resolve(peer)
    _, call = connection.start_call(Kind.PING, "", body)
    return await call.future


@pytest.mark.asyncio
async def test_pong_carries_the_pings_body(mesh):
    """7.6: PONG | the PING's body; `corr-id` = PING. Nodes and discovery alike."""
    async with (
        DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=mesh) as discovery,
        Node("pinged", discovery=[], mesh=mesh) as pinged,
        Node("pinger", discovery=[], mesh=mesh) as pinger,
    ):
        pinger.add_peer(pinged.identity.require_certificate(), pinged.endpoint)
        pinger.add_peer(mesh.identity("discovery").require_certificate(), discovery.endpoint)
        assert await _ping(pinger, "pinged", "hi") == "hi"
        assert await _ping(pinger, "discovery", [1, 2]) == [1, 2]
        assert await _ping(pinger, "pinged", None) is None
        assert await _ping(pinger, "pinged", "x" * 2000) is None  # too big to echo


@pytest.mark.asyncio
async def test_an_expired_request_is_answered_deadline_exceeded_and_not_run(mesh):
    """7.5: a receiver drops a REQUEST or SEND expired on arrival and answers a REQUEST
    with ERROR 4; its credit comes back. ttl counts from the frame's timestamp."""
    ran: list[object] = []
    async with (
        Node("callee", discovery=[], mesh=mesh) as callee,
        Node("caller", discovery=[], mesh=mesh) as caller,
    ):

        async def work(body):
            ran.append(body)
            return body

        callee.handler("work", work)
        connection = await _connect(caller, callee)
        stale = now_ms() - 5_000  # within the clock-skew bound, past a 1 s ttl
        for kind, msg_id in ((Kind.SEND, 9001), (Kind.REQUEST, 9002)):
            message = Message(kind, msg_id, name="work", body=msg_id, ttl_ms=1000)
            call = connection.calls[msg_id] = Call("work")
            assert connection._transport.send(connection.session.seal([message], stale))
        with pytest.raises(RemoteError) as expired:
            await call.future
        assert expired.value.code == ErrorCode.DEADLINE_EXCEEDED
        assert callee.drops["expired"] == 2 and ran == []
        fresh = Message(Kind.REQUEST, 9003, name="work", body=3, ttl_ms=1000)
        call = connection.calls[9003] = Call("work")
        assert connection._transport.send(connection.session.seal([fresh], now_ms()))
        assert await call.future == 3 and ran == [3]
        (inflow,) = callee._callee.inflow.values()
        assert inflow.consumed_messages == inflow.received_messages == 3


async def _ask(node: Node, peer: str, kind: Kind, body: object) -> object:
    connection = await node._resolve(peer)
    _, call = connection.start_call(kind, "", body)
    return await call.future


@pytest.mark.asyncio
async def test_not_found_is_for_what_is_not_there_and_a_lookup_miss_is_empty(mesh):
    """9 and 12: LOOKUP finding nothing answers ENTRIES []; RENEW of a registration that
    discovery does not hold answers ERROR 9 (NOT_FOUND), as does SUBSCRIBE to a topic the
    node does not publish (10)."""
    async with (
        DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=mesh) as discovery,
        Node("stranger", discovery=[], mesh=mesh) as stranger,
        Node("publisher", discovery=[], mesh=mesh) as publisher,
    ):
        stranger.add_peer(mesh.identity("discovery").require_certificate(), discovery.endpoint)
        stranger.add_peer(publisher.identity.require_certificate(), publisher.endpoint)
        for query in ({"name": "nobody"}, {"capability": "nothing"}, {"publishers": "no.>"}):
            assert await _ask(stranger, "discovery", Kind.LOOKUP, query) == []
        for peer, kind, body in (
            ("discovery", Kind.RENEW, None),
            ("publisher", Kind.SUBSCRIBE, {"topic": "not.published"}),
        ):
            with pytest.raises(RemoteError) as missing:
                await _ask(stranger, peer, kind, body)
            assert missing.value.code == ErrorCode.NOT_FOUND, kind


@pytest.mark.asyncio
async def test_arrays_a_node_cannot_build_are_answered_not_dropped(mesh, monkeypatch):
    """7.7: a node without numpy (the core install) that receives a valid array reference
    answers a REQUEST with BAD_REQUEST (details.type UnsupportedAttachment), drops a SEND
    counted as `attachment`, gives the credit back, and fails a call whose answer holds one
    instead of leaving it to its timeout."""
    np = pytest.importorskip("numpy")  # the dev install has it; the sender needs it
    async with (
        Node("core-only", discovery=[], mesh=mesh) as callee,
        Node("caller", discovery=[], mesh=mesh) as caller,
    ):
        ran = _recording(callee, "take")
        connection = await _connect(caller, callee)
        array = np.arange(6, dtype=np.float32).reshape(2, 3)
        sealed = []
        for kind, msg_id in ((Kind.SEND, 9101), (Kind.REQUEST, 9102)):
            message = Message(kind, msg_id, name="take", body={"x": array})
            sealed.append(connection.session.seal([message], now_ms()))
        call = connection.calls[9102] = Call("take")
        monkeypatch.setitem(sys.modules, "numpy", None)  # from here on: no numpy
        for frames in sealed:
            assert connection._transport.send(frames)
        with pytest.raises(RemoteError) as refused:
            await call.future
        assert refused.value.code == ErrorCode.BAD_REQUEST
        assert refused.value.remote_type == "UnsupportedAttachment"
        assert callee.drops["attachment"] == 2 and ran == []
        (inflow,) = callee._callee.inflow.values()
        assert inflow.consumed_messages == inflow.received_messages == 2

        # an answer holding an array, arriving at this numpy-less caller
        answered = connection.calls[9103] = Call("take")
        (session,) = callee._callee.sessions.values()
        monkeypatch.setitem(sys.modules, "numpy", np)
        reply = session.seal([Message(Kind.REPLY, 1, 9103, body=array)], now_ms())
        monkeypatch.setitem(sys.modules, "numpy", None)
        connection._receive([bytes(frame) for frame in reply])
        with pytest.raises(UnsupportedAttachment, match="install numpy"):
            await answered.future


@pytest.mark.asyncio
async def test_error_details_name_the_exception_or_are_nil(mesh):
    """8.1: `details` is {"type": class name} when an exception on the callee's side made
    the error, nil for the protocol's own refusals."""
    async with (
        DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=mesh) as discovery,
        Node("callee", discovery=[], mesh=mesh) as callee,
        Node("caller", discovery=[], mesh=mesh) as caller,
    ):

        async def fails(body):
            raise KeyError("no such thing")

        callee.handler("fails", fails)
        caller.add_peer(callee.identity.require_certificate(), callee.endpoint)
        caller.add_peer(mesh.identity("discovery").require_certificate(), discovery.endpoint)
        with pytest.raises(RemoteError) as raised:
            await caller.request("callee", "fails", None, timeout=10)
        assert raised.value.remote_type == "KeyError"
        with pytest.raises(RemoteError) as refused:  # a bad REGISTER body, read by code
            await _ask(caller, "discovery", Kind.REGISTER, {"endpoint": 5})
        assert refused.value.remote_type == "InvalidArgument"
        with pytest.raises(RemoteError) as missing:
            await _ask(caller, "discovery", Kind.RENEW, None)
        assert missing.value.remote_type == "PeerNotFound"
        with pytest.raises(NoSuchMethod):  # the protocol's own refusal: details nil
            await caller.request("callee", "absent", None, timeout=10)


@pytest.mark.asyncio
async def test_inputs_give_the_drop_reasons_section_12_names(mesh):
    """12: a CERT_REQUEST with a third byte is `frame_type`; a body value of a type the
    rules do not allow (a msgpack timestamp) is `type`; a float where the protocol wants
    an integer is `malformed`."""
    async with (
        Node("target", discovery=[], mesh=mesh) as target,
        Node("sender", discovery=[], mesh=mesh) as sender,
    ):
        raw = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        raw.connect(target.endpoint)
        try:
            await raw.send(bytes([1, 6, 0]))  # CERT_REQUEST is exactly two bytes
            await raw.send(bytes([1, 6]))  # the real one is answered: all before it was read
            assert (await raw.recv())[:2] == bytes([1, 7])
        finally:
            raw.close(0)
        assert target.drops["frame_type"] == 1
        sender.add_peer(target.identity.require_certificate(), target.endpoint)
        connection = await sender._resolve("target")
        row = [int(Kind.SEND), 1, 0, "m", 0, msgpack.Timestamp(1, 0), None]
        float_id = [int(Kind.SEND), 1.0, 0, "m", 0, None, None]
        for rows in ([row], [float_id]):
            payload = msgpack.packb(rows, use_bin_type=True)
            assert connection._transport.send(connection.session.seal_payload(payload, now_ms()))
        await connection.rekey()  # a round trip: both frames were read before its answer
        assert target.drops["type"] == 1 and target.drops["malformed"] == 1


@pytest.mark.asyncio
async def test_register_and_lookup_bodies_are_read_as_section_9_says(mesh):
    """9: `endpoint` and `started_ms` are required and the rest default; the same REGISTER
    again refreshes the entry; wrong types, floats for integers and attachments in `meta` are
    ERROR 1; a LOOKUP names one string key, or nothing."""
    async with (
        DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=mesh) as discovery,
        Node("minimal", discovery=[], mesh=mesh) as minimal,
    ):
        minimal.add_peer(mesh.identity("discovery").require_certificate(), discovery.endpoint)
        body = {"endpoint": "tcp://h:1", "started_ms": 5}
        for _ in range(2):  # a repeat is a refresh, not another process
            answer = await _ask(minimal, "discovery", Kind.REGISTER, body)
            assert answer["lease_ms"] == 10_000
        (entry,) = await _ask(minimal, "discovery", Kind.LOOKUP, {"name": "minimal"})
        assert (entry["capabilities"], entry["meta"], entry["suites"]) == ([], {}, [1])
        refused = [
            {"endpoint": "tcp://h:1"},
            {**body, "started_ms": -5},
            {**body, "lease_ms": 1.0},
            {**body, "lease_ms": 2**40},
            {**body, "meta": []},
            {**body, "meta": {"blob": Blob(b"x")}},
        ]
        lookups = [{"name": 5}, {"capability": ["x"]}, {"name": "a", "capability": "b"}, []]
        for kind, bad in [(Kind.REGISTER, b) for b in refused] + [
            (Kind.LOOKUP, b) for b in lookups
        ]:
            with pytest.raises(RemoteError) as error:
                await _ask(minimal, "discovery", kind, bad)
            assert error.value.code == ErrorCode.BAD_REQUEST, bad


@pytest.mark.asyncio
async def test_a_stream_the_caller_cannot_build_is_cancelled_at_the_callee(mesh, monkeypatch):
    """7.7: a STREAM chunk holding an array the caller cannot build fails the stream, and
    the caller's CANCEL stops the generator (it would otherwise wait for credit)."""
    stopped = asyncio.Event()
    async with (
        Node("callee", discovery=[], mesh=mesh) as callee,
        Node("caller", discovery=[], mesh=mesh) as caller,
    ):

        async def arrays(body):
            try:
                while True:  # a node without numpy can still pass arrays on as they came
                    yield Unmaterialised("numpy", "<i4", [1], bytearray(4))
            finally:
                stopped.set()

        callee.handler("arrays", arrays)
        caller.add_peer(callee.identity.require_certificate(), callee.endpoint)
        monkeypatch.setitem(sys.modules, "numpy", None)
        with pytest.raises(UnsupportedAttachment):
            async for _ in caller.stream("callee", "arrays", None, window=4):
                pass
        await asyncio.wait_for(stopped.wait(), 30)  # the CANCEL reached the generator


@pytest.mark.asyncio
async def test_what_follows_bye_in_its_frame_is_not_served(mesh, caplog):
    """8.3: BYE ends the session; a REQUEST after it in the same SEALED message is ignored
    (before, it reached the session's forgotten credit and logged an internal error)."""
    async with (
        Node("callee", discovery=[], mesh=mesh) as callee,
        Node("caller", discovery=[], mesh=mesh) as caller,
    ):
        ran = _recording(callee, "work")
        connection = await _connect(caller, callee)
        assert await caller.request("callee", "work", 0, timeout=10) is None
        frames = connection.session.seal(
            [Message(Kind.BYE, 9301), Message(Kind.REQUEST, 9302, name="work", body=1)],
            now_ms(),
        )
        assert connection._transport.send(frames)
        await eventually(lambda: not callee._callee.sessions)
        assert ran == [0] and "internal error" not in caplog.text
