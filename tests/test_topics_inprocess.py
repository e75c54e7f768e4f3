"""Topics inside one process, on loopback: real PUB/SUB sockets, a real discovery node."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading

import pytest
import zmq

from mesh import InvalidArgument, MeshDirectory, MeshError, Node, SyncNode
from mesh.core import _sodium
from mesh.core.codec import Message, encode_payload
from mesh.core.topic_frame import BOX_OFFSET, CLEAR, CONTEXT, INNER, TopicKey, seal_publish
from mesh.core.wire import MAC_SIZE, NONCE_SIZE, PROTOCOL_VERSION, FrameType, Kind
from mesh.runtime.discovery import DiscoveryServer
from mesh.runtime.stamps import next_msg_id, now_ms
from tests.conftest import eventually

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast


@contextlib.asynccontextmanager
async def running(mesh, *names, **options):
    """A discovery node and started nodes with ``names``; everything closed afterwards."""
    async with DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=mesh) as discovery:
        nodes = [Node(n, discovery=discovery.endpoint, mesh=mesh, **options) for n in names]
        await asyncio.gather(*(node.start() for node in nodes))
        try:
            yield discovery, nodes
        finally:
            await asyncio.gather(*(node.close() for node in nodes))


async def take(subscription, count, timeout=10.0):
    return [await subscription.get(timeout) for _ in range(count)]


@pytest.mark.asyncio
async def test_subscriber_first_then_publisher_every_message_in_order(mesh):
    async with running(mesh, "sub", "pub") as (_, (sub, pub)):
        subscription = await sub.subscribe("orders.*")
        for i in range(300):
            assert await pub.publish("orders.new", {"i": i}) == i + 1
        received = await take(subscription, 300)
        assert [m.body["i"] for m in received] == list(range(300))
        assert [m.seq for m in received] == list(range(1, 301))
        assert {(m.topic, m.publisher) for m in received} == {("orders.new", "pub")}
        stats = sub.stats()["topics"]
        assert stats["gaps"] == 0 and stats["subscriptions"][0]["received"] == 300
        assert pub.stats()["topics"]["offers_confirmed"] == 1


@pytest.mark.asyncio
async def test_wildcards_deliver_to_every_matching_subscription(mesh):
    async with running(mesh, "sub", "pub") as (_, (sub, pub)):
        one_token = await sub.subscribe("orders.*")
        the_rest = await sub.subscribe("orders.>")
        exact = await sub.subscribe("orders.eu.new")
        for topic in ("orders.new", "orders.eu.new", "status"):
            await pub.publish(topic, topic)
        await pub.publish("orders.done", "last")
        assert [m.body for m in await take(one_token, 2)] == ["orders.new", "last"]
        assert [m.body for m in await take(the_rest, 3)] == ["orders.new", "orders.eu.new", "last"]
        assert [m.body for m in await take(exact, 1)] == ["orders.eu.new"]
        assert one_token.pending == the_rest.pending == exact.pending == 0


@pytest.mark.asyncio
async def test_a_late_subscriber_misses_nothing_after_subscribe_returns(mesh):
    async with running(mesh, "pub", "early") as (discovery, (pub, early)):
        early_sub = await early.subscribe("ticks")
        stop = asyncio.Event()

        async def publish_forever():
            i = 0
            while not stop.is_set():
                await pub.publish("ticks", i)
                i += 1
                await asyncio.sleep(0.001)

        publisher = asyncio.ensure_future(publish_forever())
        try:
            await eventually(lambda: early_sub.pending > 20)
            async with Node("late", discovery=discovery.endpoint, mesh=mesh) as late:
                late_sub = await late.subscribe("ticks")
                # every tick published from here on must arrive, in order, with no gap
                first = await late_sub.get(10)
                await eventually(lambda: late_sub.pending > 50)
                stop.set()
                await publisher
                last_seq = pub._topics.publisher._seq["ticks"]
                rest = await take(late_sub, late_sub.pending)
                seqs = [first.seq] + [m.seq for m in rest]
                assert seqs == list(range(first.seq, last_seq + 1))
                assert late.stats()["topics"]["gaps"] == 0
        finally:
            stop.set()
            await publisher


@pytest.mark.asyncio
async def test_a_publisher_that_starts_later_reaches_existing_subscribers_at_once(mesh):
    """The publisher-first path: one message, published right after start, is delivered
    to every subscriber registered before (the offers and probes close the slow-joiner gap)."""
    async with running(mesh, *(f"s{i}" for i in range(5))) as (discovery, subscribers):
        subscriptions = [await s.subscribe("news.>") for s in subscribers]
        async with Node("newsroom", discovery=discovery.endpoint, mesh=mesh) as pub:
            await pub.publish("news.flash", "only one")
            assert pub.stats()["topics"]["offers_confirmed"] == 5
        for subscription in subscriptions:
            message = await subscription.get(10)
            assert (message.body, message.seq, message.publisher) == ("only one", 1, "newsroom")


@pytest.mark.asyncio
async def test_an_unregistered_publisher_reaches_subscribers_and_its_feed_ends_with_it(mesh):
    async with running(mesh, "sub") as (discovery, (sub,)):
        subscription = await sub.subscribe("jobs")
        async with Node("oneshot", discovery=discovery.endpoint, mesh=mesh, register=False) as p:
            await p.publish("jobs", 1)
            assert (await subscription.get(10)).body == 1
            assert len(sub.stats()["topics"]["feeds"]) == 1
        await eventually(lambda: not sub.stats()["topics"]["feeds"])  # its BYE closed the feed


@pytest.mark.asyncio
async def test_a_slow_reader_overflows_its_queue_and_it_is_counted(mesh):
    async with running(mesh, "sub", "pub") as (_, (sub, pub)):
        subscription = await sub.subscribe("firehose", maxsize=10)
        for i in range(50):
            await pub.publish("firehose", i)
        await eventually(lambda: subscription.overflow == 40)
        assert [m.body for m in await take(subscription, 10)] == list(range(10))
        assert sub.stats()["topics"]["subscriptions"][0]["overflow"] == 40


@pytest.mark.asyncio
async def test_closing_a_subscription_stops_delivery_and_unregisters(mesh):
    async with running(mesh, "sub", "pub") as (discovery, (sub, pub)):
        subscription = await sub.subscribe("a.b")
        await pub.publish("a.b", 1)
        assert (await subscription.get(10)).body == 1
        subscription.close()
        await eventually(lambda: not sub.stats()["topics"]["feeds"])
        async with Node("probe", discovery=discovery.endpoint, mesh=mesh, register=False) as q:
            listed = {p.name: p for p in await q.peers()}
        assert listed["sub"].subscriptions == ()
        with pytest.raises(StopAsyncIteration):
            await subscription.get(1)


@pytest.mark.asyncio
async def test_what_crosses_the_wire_is_unreadable_without_the_key(mesh):
    """A socket anyone can connect to the publisher's PUB receives only ciphertext: no topic
    name, no body, and frames that do not open under another key."""
    async with running(mesh, "sub", "pub") as (_, (sub, pub)):
        subscription = await sub.subscribe("secret.plans")
        context = zmq.Context.instance()
        eavesdropper = context.socket(zmq.SUB)
        eavesdropper.setsockopt(zmq.LINGER, 0)
        eavesdropper.setsockopt(zmq.SUBSCRIBE, b"")
        eavesdropper.connect(pub._topics.endpoint)
        captured: list[bytes] = []

        def capture() -> int:
            with contextlib.suppress(zmq.Again):
                while True:
                    captured.append(eavesdropper.recv(zmq.NOBLOCK))
            return len(captured)

        def sent() -> int:  # every frame on the PUB: messages and probes
            figures = pub.stats()["topics"]
            return figures["published"] + figures["probes"]

        async def joined() -> int:
            await pub.publish("noise", "warming up")
            return capture()

        try:
            await eventually(joined)  # the eavesdropper's own slow join: it has a frame
            # from here on it receives every frame the PUB sends
            before, captured_before = sent(), len(captured)
            for _ in range(5):
                await pub.publish("secret.plans", "attack at dawn")
            assert [m.body for m in await take(subscription, 5)] == ["attack at dawn"] * 5
            await eventually(lambda: capture() - captured_before >= sent() - before >= 5)
            for frame in captured:
                assert b"secret" not in frame and b"dawn" not in frame
                assert frame[:2] == b"\x01\x04"
        finally:
            eavesdropper.close()


@pytest.mark.asyncio
async def test_a_node_of_another_authority_is_refused_before_it_can_subscribe(mesh, tmp_path):
    stranger_mesh = MeshDirectory(tmp_path / "other")
    stranger_mesh.create()
    async with running(mesh, "pub") as (discovery, (pub,)):
        await pub.publish("status", "up")
        stranger = Node("stranger", discovery=discovery.endpoint, mesh=stranger_mesh)
        with pytest.raises(MeshError):
            await stranger.start()  # discovery refuses the handshake: no entry, no key


@pytest.mark.asyncio
async def test_forged_and_replayed_frames_are_dropped_and_counted(mesh):
    """Somebody holding the topic key (any subscriber) cannot publish as the publisher: the
    frame opens but its signature is not the publisher's. A replayed genuine frame is
    refused by the sequence check."""
    async with running(mesh, "sub", "pub", "mallory") as (_, (sub, pub, mallory)):
        subscription = await sub.subscribe("orders")
        await mallory.subscribe("orders")  # mallory legitimately holds the key now
        await pub.publish("orders", "genuine")
        assert (await subscription.get(10)).body == "genuine"
        feed = next(iter(mallory._topics.feeds.values()))
        key: TopicKey = feed.by_topic["orders"].key
        endpoint = pub._topics.endpoint
        # the publisher's PUB goes away and mallory takes over its address (a crash and a
        # port grab): the subscriber's SUB reconnects to mallory
        pub._topics.publisher.close()
        context = zmq.Context.instance()
        attacker = context.socket(zmq.PUB)
        attacker.setsockopt(zmq.LINGER, 0)
        try:
            async with asyncio.timeout(10):  # libzmq releases the port in its own time
                while True:
                    try:
                        attacker.bind(endpoint)
                        break
                    except zmq.ZMQError:
                        await asyncio.sleep(0.02)
            forged = forge(mallory.identity, pub.identity.node_id, key, seq=2, body="forged")
            genuine_replay = seal_publish(
                pub.identity, key, 1, now_ms(), [_message("orders", "replayed")]
            )

            def dropped():
                drops = sub.stats()["drops"]
                return drops.get("topic_bad_signature", 0), drops.get("topic_replay", 0)

            async with asyncio.timeout(15):
                while dropped()[0] < 1 or dropped()[1] < 1:
                    attacker.send(forged[0])
                    attacker.send(genuine_replay[0])
                    await asyncio.sleep(0.05)
            assert subscription.pending == 0  # nothing forged or replayed was delivered
        finally:
            attacker.close()


def _message(topic, body):
    return Message(Kind.PUBLISH, next_msg_id(), name=topic, body=body)


def forge(signer, claimed_publisher_id, key, *, seq, body):
    """A PUBLISH frame sealed with the real topic key, claiming ``claimed_publisher_id``,
    signed by ``signer`` (who is not that publisher)."""
    payload, _ = encode_payload([_message(key.topic, body)])
    clear = CLEAR.pack(
        PROTOCOL_VERSION, FrameType.PUBLISH, key.tag, key.key_id, claimed_publisher_id
    )
    unsigned = INNER.pack(clear, seq, now_ms(), 0) + payload
    plaintext = unsigned + signer.signing_key.sign(CONTEXT + unsigned).signature
    nonce = os.urandom(NONCE_SIZE)
    frame = bytearray(BOX_OFFSET + MAC_SIZE + len(plaintext))
    frame[: CLEAR.size] = clear
    frame[CLEAR.size : BOX_OFFSET] = nonce
    _sodium.seal_into(frame, BOX_OFFSET, plaintext, nonce, key.key)
    return [bytes(frame)]


@pytest.mark.asyncio
async def test_bad_topics_and_patterns_are_clear_errors(mesh):
    async with running(mesh, "n") as (_, (node,)):
        with pytest.raises(InvalidArgument, match="wildcard"):
            await node.publish("orders.*", 1)
        with pytest.raises(InvalidArgument, match="empty token"):
            node.subscribe("orders..new")
        with pytest.raises(InvalidArgument):
            await node.publish("ok.topic", object())  # msgpack cannot carry it
        assert node.stats()["topics"]["published"] == 0


@pytest.mark.asyncio
async def test_handler_decorator_sees_every_message(mesh):
    async with DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=mesh) as discovery:
        seen_async, seen_sync = [], []
        sub = Node("sub", discovery=discovery.endpoint, mesh=mesh)

        @sub.on_topic("log.*")
        async def on_log(message):
            seen_async.append(message.body)

        @sub.on_topic("log.>")
        def on_log_in_a_thread(message):
            seen_sync.append(message.body)

        async with sub, Node("pub", discovery=discovery.endpoint, mesh=mesh) as pub:
            await eventually(lambda: len(sub._topics.subscriptions) == 2)
            await asyncio.gather(*(s for s in sub._topics.subscriptions))
            for i in range(20):
                await pub.publish("log.info", i)
            await eventually(lambda: len(seen_async) == 20 and len(seen_sync) == 20)
        assert seen_async == seen_sync == list(range(20))


def test_sync_node_publishes_and_subscribes(mesh):
    async def serve(ready, stop):
        async with DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=mesh) as discovery:
            ready.set_result(discovery.endpoint)
            await stop

    loop = asyncio.new_event_loop()
    ready: concurrent.futures.Future = concurrent.futures.Future()
    stop = loop.create_future()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(ready, stop),))
    thread.start()
    try:
        url = ready.result(10)
        with (
            SyncNode("sub", discovery=url, mesh=mesh) as sub,
            SyncNode("pub", discovery=url, mesh=mesh) as pub,
            sub.subscribe("metrics.>") as subscription,
        ):
            for i in range(10):
                assert pub.publish("metrics.cpu", i) == i + 1
            got = [subscription.get(10).body for _ in range(10)]
            assert got == list(range(10))
            with pytest.raises(TimeoutError):
                subscription.get(0.05)
    finally:
        loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(10)
        loop.close()
