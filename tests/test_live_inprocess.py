"""The live mesh inside one process: 50 nodes, socket options, hostile bytes, SyncNode."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import subprocess
import sys
import time

import pytest
import zmq
import zmq.asyncio

from mesh import Identity, SessionLimits
from mesh.core.errors import InvalidBody, NodeClosed
from mesh.core.topic_frame import open_publish
from mesh.runtime.discovery import DiscoveryServer
from mesh.runtime.node import Node
from mesh.runtime.sockets import DEALER_OPTIONS, ROUTER_OPTIONS
from mesh.runtime.stamps import now_ms
from mesh.runtime.sync import SyncNode
from tests.conftest import eventually

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast

NODES = 50


@pytest.mark.asyncio
async def test_fifty_nodes_find_and_call_each_other(mesh):
    async with DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=mesh) as discovery:
        # 2,450 handshakes at once on one event loop: on a loaded machine some wait (and some
        # pongs) for seconds, which is not what this test checks
        patient = {"connect_timeout": 60, "heartbeat": 30}
        nodes = [
            Node(f"n{i:02d}", discovery=discovery.endpoint, mesh=mesh, **patient)
            for i in range(NODES)
        ]
        for node in nodes:
            node.handler("whoami", lambda body, ctx, me=node.name: [me, ctx.peer])
        await asyncio.gather(*(node.start() for node in nodes))
        try:
            # every node finds every other through discovery (one snapshot each, not 49 lookups)
            snapshots = await asyncio.gather(*(node.peers() for node in nodes))
            assert all(len(snapshot) == NODES for snapshot in snapshots)

            async def call_everyone(caller: Node) -> list:
                return await asyncio.gather(
                    *(
                        caller.request(other.name, "whoami", timeout=60)
                        for other in nodes
                        if other is not caller
                    )
                )

            results = await asyncio.gather(*(call_everyone(node) for node in nodes))
            for caller, answers in zip(nodes, results, strict=True):
                assert sorted(answers) == sorted(
                    [other.name, caller.name] for other in nodes if other is not caller
                )
        finally:
            await asyncio.gather(*(node.close() for node in nodes))


@pytest.mark.asyncio
async def test_socket_options_are_set_on_purpose(mesh):
    async with Node("a", discovery=[], mesh=mesh) as a, Node("b", discovery=[], mesh=mesh) as b:
        b.handler("ping", lambda body: "pong")
        connection = await a._pool.open(b.endpoint, 10)
        try:
            for socket, options in (
                (a._inbound._transport.socket, ROUTER_OPTIONS),
                (connection._transport.socket, DEALER_OPTIONS),
            ):
                for option, value in options.items():
                    if option == zmq.ROUTER_MANDATORY:
                        continue  # write-only in libzmq: checked by behaviour below
                    assert socket.getsockopt(option) == value, option
            # ROUTER_MANDATORY: a send to an unknown routing id fails instead of vanishing
            with pytest.raises(zmq.ZMQError) as refused:
                a._inbound._transport.socket.send_multipart([b"nobody", b"x"], flags=zmq.NOBLOCK)
            assert refused.value.errno == zmq.EHOSTUNREACH
        finally:
            connection.close()


@pytest.mark.asyncio
async def test_garbage_from_strangers_leaves_no_state(mesh):
    async with (
        Node("target", discovery=[], mesh=mesh) as target,
        Node("friend", discovery=[], mesh=mesh) as friend,
    ):
        friend.add_peer(target.identity.require_certificate(), target.endpoint)
        target.handler("echo", lambda body: body)
        sessions_before = len(target._table)
        context = zmq.asyncio.Context()
        stranger = context.socket(zmq.DEALER)
        stranger.connect(target.endpoint)
        garbage = [
            [b""],
            [b"\x01"],
            [b"\x01\x03" + bytes(100)],
            [b"\x01\x01" + bytes(200)],
            [b"\x09\x09"],
            [b"\x01\x06", b"extra"],
            [b"\x01\x02" + bytes(80)],
        ]
        try:
            for frames in garbage * 20:
                await stranger.send_multipart(frames)
            await eventually(lambda: sum(target.drops.values()) >= len(garbage) * 20)
        finally:
            stranger.close(0)
            context.term()
        assert sum(target.drops.values()) == len(garbage) * 20
        assert len(target._table) == sessions_before
        assert target._inbound._routes == {}
        assert await friend.request(target.name, "echo", "still serving", timeout=10) == (
            "still serving"
        )


def test_sync_node_from_several_threads(mesh, tmp_path):
    with (
        SyncNode("server", discovery=[], mesh=mesh) as server,
        SyncNode("client", discovery=[], mesh=mesh) as client,
    ):
        server.handler("square", lambda body: body * body)
        client.node.add_peer(server.node.identity.require_certificate(), server.endpoint)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            squares = list(
                pool.map(lambda n: client.request("server", "square", n, timeout=10), range(100))
            )
        assert squares == [n * n for n in range(100)]
        # calls on direct lanes (mesh.runtime.direct) and, past those, the loop: none left
        connection = client.stats()["connections"].get("server", {"calls": 0})
        assert connection["calls"] == 0
        assert client.stats()["calls"]["server"]["outcomes"] == {"ok": 100}
    with pytest.raises(NodeClosed):
        client.request("server", "square", 2)


@pytest.mark.asyncio
async def test_sessions_are_rekeyed_on_a_live_connection(mesh):
    async with (
        Node("server", discovery=[], mesh=mesh) as server,
        Node("client", discovery=[], mesh=mesh) as client,
    ):
        server.handler("echo", lambda body: body)
        client.add_peer(server.identity.require_certificate(), server.endpoint)
        assert await client.request("server", "echo", 0, timeout=10) == 0
        connection = client._pool.connections["server"]
        first = connection.session
        first.limits = SessionLimits(rekey_after_frames=3)
        answers = [await client.request("server", "echo", n, timeout=10) for n in range(10)]
        assert answers == list(range(10))
        assert connection.session is not first  # a new handshake replaced the key
        assert first.retired_ms is not None  # the old one only opens late answers now
        assert client.drops == {}
        assert server.drops == {}


@pytest.mark.asyncio
async def test_several_discovery_nodes_are_merged_and_one_may_die(mesh):
    first = await DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=mesh).start()
    second = await DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=mesh).start()
    both = [first.endpoint, second.endpoint]
    try:
        async with (
            Node("a", discovery=both, mesh=mesh) as a,
            Node("b", discovery=second.endpoint, mesh=mesh) as b,
        ):
            b.handler("hi", lambda body: "hi from b")
            assert len(first.registry) == 1 and len(second.registry) == 2  # a in both
            assert {p.name for p in await a.peers()} == {"a", "b"}  # merged by name
            await first.close()
            assert await a.request("b", "hi", timeout=10) == "hi from b"
            assert {p.name for p in await a.peers()} == {"a", "b"}
    finally:
        await first.close()
        await second.close()


@pytest.mark.asyncio
async def test_directory_events_keep_peers_current_and_are_sealed(mesh):
    async with DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=mesh) as discovery:
        context = zmq.asyncio.Context()
        eavesdropper = context.socket(zmq.SUB)
        eavesdropper.setsockopt(zmq.SUBSCRIBE, b"")
        eavesdropper.connect(discovery.events_endpoint)
        try:
            async with Node("watcher", discovery=discovery.endpoint, mesh=mesh) as watcher:
                newcomer = await Node("newcomer-7", discovery=discovery.endpoint, mesh=mesh).start()
                await eventually(lambda: "newcomer-7" in watcher.known)  # JOIN, no lookup made
                await newcomer.close()
                await eventually(lambda: "newcomer-7" not in watcher.known)  # LEAVE
                assert watcher.stats()["directory_events"] >= 2
            publisher = discovery.identity.require_certificate()

            def seq(frames: list[bytes]) -> int:  # the test holds the key: it can look inside
                return open_publish(frames, discovery._events_key, publisher, now_ms(), 60_000).seq

            raw = []
            async with asyncio.timeout(20):  # until it has the last event published
                while not raw or seq(raw[-1]) < discovery._events_seq:
                    raw.append(await eavesdropper.recv_multipart())
        finally:
            eavesdropper.close(0)
            context.term()
        assert raw  # the eavesdropper received the events...
        assert not any(b"newcomer-7" in frame for frames in raw for frame in frames)  # sealed


@pytest.mark.asyncio
async def test_a_live_name_with_other_keys_is_refused(mesh):
    from mesh import NameConflict

    impostor = mesh.create().issue_for(Identity.generate("dup"), not_before=int(time.time()) - 60)
    async with (
        DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=mesh) as discovery,
        Node("dup", discovery=discovery.endpoint, mesh=mesh),
    ):
        with pytest.raises(NameConflict):
            await Node(
                "dup", discovery=discovery.endpoint, identity=impostor, trust=mesh.trust()
            ).start()
        (entry,) = discovery.registry.lookup(name="dup")
        assert entry.certificate.node_id == mesh.load_identity("dup").node_id


def test_sync_node_closes_itself_at_interpreter_exit(mesh):
    script = (
        "from mesh import SyncNode\n"
        f"node = SyncNode('forgotten', discovery=[], mesh={str(mesh.path)!r})\n"
        "node.handler('x', lambda body: body)\n"
        "print('started', flush=True)\n"  # and exits without close()
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert result.stdout.strip() == "started"
    assert result.stderr == ""


@pytest.mark.asyncio
async def test_stats_show_credit_held_and_waiting(mesh):
    from mesh.core.flow import Window

    release = asyncio.Event()
    async with (
        Node("server", discovery=[], mesh=mesh, window=Window(4, 10**6)) as server,
        Node("client", discovery=[], mesh=mesh) as client,
    ):

        async def hold(body):
            await release.wait()

        server.handler("hold", hold)
        client.add_peer(server.identity.require_certificate(), server.endpoint)
        for i in range(4):
            await client.send("server", "hold", i)
        blocked = asyncio.create_task(client.send("server", "hold", 4))
        await eventually(lambda: client.stats()["connections"]["server"]["waiting"] == 1)
        assert client.stats()["connections"]["server"]["credit_messages"] == 0
        await eventually(
            lambda: server.stats()["callers"].get("client", {}).get("held_messages") == 4
        )
        release.set()
        await asyncio.wait_for(blocked, 10)  # consumed: credit came back, the send went out
        await eventually(lambda: server.stats()["callers"]["client"]["held_messages"] == 0)


@pytest.mark.asyncio
async def test_windows_are_configurable_per_peer(mesh):
    from mesh.core.flow import Window

    async with (
        Node(
            "server",
            discovery=[],
            mesh=mesh,
            window=Window(100, 10**6),
            peer_windows={"small": Window(3, 10**6)},
        ) as server,
        Node("small", discovery=[], mesh=mesh) as small,
        Node("big", discovery=[], mesh=mesh) as big,
    ):
        server.handler("echo", lambda body: body)
        for client in (small, big):
            client.add_peer(server.identity.require_certificate(), server.endpoint)
            assert await client.request("server", "echo", 1, timeout=10) == 1
        assert small._pool.connections["server"].session.initial_credit[0] == 3
        assert big._pool.connections["server"].session.initial_credit[0] == 100


@pytest.mark.asyncio
async def test_one_way_floods_are_credited_without_drops(mesh):
    from mesh.core.flow import Window

    async with (
        Node("server", discovery=[], mesh=mesh, window=Window(8, 10**6)) as server,
        Node("client", discovery=[], mesh=mesh) as client,
    ):
        got = []
        server.handler("take", lambda body: got.append(body))
        client.add_peer(server.identity.require_certificate(), server.endpoint)
        for i in range(200):  # 25 windows' worth: every grant must come back as CREDIT
            await client.send("server", "take", i, timeout=10)
        await eventually(lambda: len(got) == 200)
        assert sorted(got) == list(range(200))
        assert client.drops == {} and server.drops == {}


@pytest.mark.asyncio
async def test_a_burst_of_one_way_messages_is_coalesced_in_order(mesh):
    from mesh.core.flow import Window

    async with (
        Node("server", discovery=[], mesh=mesh, window=Window(300, 10**6)) as server,
        Node("client", discovery=[], mesh=mesh) as client,
    ):
        got = []

        async def take(body):
            got.append(body)

        server.handler("take", take)
        client.add_peer(server.identity.require_certificate(), server.endpoint)
        assert await client.request("server", "take", -1, timeout=10) is None
        for i in range(1000):  # no await yields while credit lasts: one turn of the loop
            await client.send("server", "take", i, timeout=10)
        assert await client.request("server", "take", -2, timeout=10) is None  # after them
        await eventually(lambda: len(got) == 1002)
        assert got == [-1, *range(1000), -2]
        sent = client.stats()["connections"]["server"]
        assert sent["messages_sent"] == 1002
        assert sent["frames_sent"] <= 2 + 1000 // 50, sent  # bursts, not one frame each
        with pytest.raises(InvalidBody):  # still refused at once, not lost in a batch
            await client.send("server", "take", {1, 2})
        await client.send("server", "take", "lone")  # a lone message is not held back
        await eventually(lambda: got[-1] == "lone")
        assert client.drops == {} and server.drops == {}


@pytest.mark.asyncio
async def test_large_attachments_arrive_intact_both_ways(mesh):
    """Frames from 64 KiB up go to and come from ZeroMQ without copies: the bytes still
    arrive exactly, as replies, as stream chunks, and after the sender's buffers are gone."""
    np = pytest.importorskip("numpy")
    from mesh import Blob

    async with (
        Node("server", discovery=[], mesh=mesh) as server,
        Node("client", discovery=[], mesh=mesh) as client,
    ):

        async def echo(body):
            return body

        async def chunks(body):
            for index in range(3):
                yield Blob(bytes([index]) * (200 * 1024))

        server.handler("echo", echo)
        server.handler("chunks", chunks)
        client.add_peer(server.identity.require_certificate(), server.endpoint)
        tensor = np.arange(1 << 20, dtype=np.float32).reshape(1024, 1024)
        small = np.arange(10, dtype=np.int64)
        for _ in range(3):
            got = await client.request("server", "echo", {"t": tensor, "s": small}, timeout=30)
            assert np.array_equal(got["t"], tensor) and got["t"].dtype == np.float32
            assert np.array_equal(got["s"], small)
        parts = [bytes(c.data) async for c in client.stream("server", "chunks", timeout=30)]
        assert parts == [bytes([i]) * (200 * 1024) for i in range(3)]
        assert client.drops == {} and server.drops == {}


@pytest.mark.asyncio
async def test_the_reply_cache_is_bounded_in_bytes(mesh):
    """Replies are kept to answer retries without running handlers twice, but large ones
    must not pile up: a soak with 1 MiB replies held 130 MiB per agent before the bound."""
    from mesh import Blob
    from mesh.runtime.handlers import REPLY_CACHE_BYTES

    async with (
        Node("server", discovery=[], mesh=mesh) as server,
        Node("client", discovery=[], mesh=mesh) as client,
    ):

        async def big(body):
            return Blob(bytes(1024 * 1024))

        server.handler("big", big)
        client.add_peer(server.identity.require_certificate(), server.endpoint)
        for _ in range(40):
            await client.request("server", "big", timeout=30)
        cached = server._runner._reply_bytes  # internal: what the cache holds now
        assert 0 < cached <= REPLY_CACHE_BYTES


@pytest.mark.asyncio
async def test_a_plain_request_collects_a_long_stream(mesh):
    async with (
        Node("server", discovery=[], mesh=mesh) as server,
        Node("client", discovery=[], mesh=mesh) as client,
    ):

        async def many(body):
            for index in range(body):
                yield index

        server.handler("many", many)
        client.add_peer(server.identity.require_certificate(), server.endpoint)
        # more chunks than the default stream window: request() credits them as they come
        assert await client.request("server", "many", 3000, timeout=30) == list(range(3000))


@pytest.mark.asyncio
async def test_the_discovery_session_is_rekeyed_too(mesh):
    async with (
        DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=mesh) as discovery,
        Node("long-lived", discovery=discovery.endpoint, mesh=mesh) as node,
    ):
        (link,) = node._discovery.links
        first = link._connection.session
        first.limits = SessionLimits(rekey_after_frames=2)
        for _ in range(5):
            assert {p.name for p in await node.peers()} == {"long-lived"}
        assert link._connection.session is not first
        assert node.drops == {} and discovery.drops == {}


@pytest.mark.asyncio
async def test_a_call_needs_a_peer_or_a_capability(mesh):
    from mesh import InvalidArgument

    async with (
        DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=mesh) as discovery,
        Node("lonely", discovery=discovery.endpoint, mesh=mesh) as node,
    ):
        node.handler("echo", lambda body: body)
        for call in (node.request(method="echo", timeout=5), node.send(method="echo")):
            with pytest.raises(InvalidArgument):  # never "whichever node discovery lists"
                await call


@pytest.mark.asyncio
async def test_handler_errors_reach_the_caller_typed_by_who_should_act(mesh):
    from mesh import BadRequest, ErrorCode, InvalidArgument, Overloaded, RemoteError

    async with (
        Node("server", discovery=[], mesh=mesh) as server,
        Node("client", discovery=[], mesh=mesh) as client,
    ):

        async def picky(body):
            if body == "bad":
                raise InvalidArgument("n must be positive")
            if body == "busy":
                raise Overloaded("queue full (limit 4)")
            raise KeyError(body)

        async def closing_stream(body):
            try:
                for index in range(1000):
                    yield index
            finally:
                closed.set()  # the generator is closed when its reader leaves, not later

        closed = asyncio.Event()
        server.handler("picky", picky)
        server.handler("stream", closing_stream)
        client.add_peer(server.identity.require_certificate(), server.endpoint)
        with pytest.raises(BadRequest, match="n must be positive") as bad:
            await client.request("server", "picky", "bad", timeout=5)
        assert (
            bad.value.code == ErrorCode.BAD_REQUEST and bad.value.remote_type == "InvalidArgument"
        )
        with pytest.raises(Overloaded, match="limit 4") as busy:
            await client.request("server", "picky", "busy", timeout=5)
        assert busy.value.code == ErrorCode.OVERLOADED
        with pytest.raises(RemoteError) as failed:
            await client.request("server", "picky", "other", timeout=5)
        assert type(failed.value) is RemoteError and failed.value.code == ErrorCode.HANDLER_FAILED
        async with contextlib.aclosing(client.stream("server", "stream", window=4)) as chunks:
            assert await anext(chunks) == 0
        async with asyncio.timeout(10):
            await closed.wait()
