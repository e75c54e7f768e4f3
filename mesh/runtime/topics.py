"""Topics for one node: publish so that no known subscriber is left behind, and subscribe so
that nothing published after ``subscribe()`` returns is missed (protocol.md, section 10).

Theory of operation. ZeroMQ's PUB/SUB loses whatever is published before a subscriber's
connection and subscription reach the publisher (the "slow joiner"). Both sides close that
window through discovery and a *probe*, a PUBLISH frame that carries no message but proves,
by arriving, that the subscription is in place at the publisher:

* **Subscriber first.** ``subscribe(pattern)`` registers the pattern with discovery, then
  looks up the publishers of matching topics and, for each, asks for the topic key
  (SUBSCRIBE, over the sealed direct session), connects its SUB and repeats the request
  until a probe arrives (each SUBSCRIBE makes the publisher send one). Then it returns.
* **Publisher first.** Before its first message on a topic, a publisher registers the topic,
  looks up the nodes whose patterns match it, and *offers* each the key (TOPIC_OFFER); it
  sends probes until every offer is answered (the subscriber answers once a probe reached
  it) or a bound passes. A publisher that lived for one message still reached everybody who
  subscribed before it started.

Registering before looking up, on both sides, means that of two racing nodes at least one
sees the other. Directory events (JOIN/UPDATE/LEAVE) add publishers of matching topics as
they appear and drop the ones that leave; they are an aid, not the guarantee.

Specified in protocol.md 10.3 (sequence numbers and probes), 10.4 (no slow joiners).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import zmq

from ..core.codec import Message
from ..core.errors import InvalidArgument, MeshError
from ..core.identity import Certificate, Identity
from ..core.registry import PeerInfo
from ..core.session import Session
from ..core.subjects import matches, validate_pattern, validate_topic
from ..core.topic_frame import TopicKey
from ..core.wire import KEY_SIZE, ErrorCode, Kind
from .connection import Connection
from .feeds import Feed
from .handlers import error_message
from .stamps import next_msg_id
from .subscription import DEFAULT_QUEUE, Subscription, TopicMessage
from .topic_publisher import TopicPublisher

log = logging.getLogger("mesh.topics")

ANNOUNCE_TIMEOUT_S = 2.0  # a first publish waits this long, at most, for known subscribers
FOLLOW_TIMEOUT_S = 5.0  # subscribe() gives one publisher this long to confirm
OFFER_CONFIRM_S = 1.5  # a subscriber waits this long for the probe that confirms an offer
PROBE_EVERY_S = 0.02
FIRST_RETRY_S = 0.02

Resolve = Callable[[str], Awaitable[Connection]]
Lookup = Callable[[dict[str, str]], Awaitable[list[PeerInfo]]]
Reregister = Callable[[], Awaitable[None]]
Reply = Callable[[bytes, list[Message]], int]


def topics_bind(bind: str) -> str:
    """Where the PUB binds, next to the ROUTER: the same host on a free port (tcp), or a
    sibling path (ipc, inproc)."""
    scheme, _, rest = bind.partition("://")
    if scheme == "tcp":
        return f"tcp://{rest.rpartition(':')[0]}:0"
    return f"{bind}.topics"


def topics_advertised(bound: str, advertise: str | None) -> str:
    """The PUB endpoint peers should dial: the advertised host with the bound port."""
    if advertise and advertise.startswith("tcp://") and bound.startswith("tcp://"):
        host = advertise.partition("://")[2].rpartition(":")[0]
        return f"tcp://{host}:{bound.rpartition(':')[2]}"
    return bound


class Topics:
    """A node's publisher and subscriptions."""

    def __init__(
        self,
        context: zmq.Context,
        identity: Identity,
        max_skew_ms: int,
        drops: Counter[str],
        *,
        bind: str,
        advertise: str | None,
        resolve: Resolve,
        lookup: Lookup | None,
        reregister: Reregister,
        reply: Reply,
    ) -> None:
        self.publisher = TopicPublisher(context, identity, topics_bind(bind))
        self.endpoint = topics_advertised(self.publisher.bound, advertise)
        self._context = context
        self._max_skew_ms = max_skew_ms
        self._drops = drops
        self._resolve = resolve
        self._lookup = lookup
        self._reregister = reregister
        self._reply = reply
        self.subscriptions: list[Subscription] = []
        self.feeds: dict[str, Feed] = {}  # by the publisher's PUB endpoint
        self._offered_by: dict[str, Session] = {}  # feeds made from an offer: on which session
        self._routes: dict[str, list[Subscription]] = {}
        self._announced: set[str] = set()
        self._announcing: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task] = set()
        self.counts: Counter[str] = Counter()
        self._missed_before = 0  # gaps seen on feeds since closed
        self._closing = False

    # ------------------------------------------------------------------ registration

    def registration(self) -> dict[str, Any]:
        """What discovery lists for this node's topics."""
        return {
            "topics": sorted(self.publisher.keys),
            "subscriptions": sorted({s.pattern for s in self.subscriptions}),
            "topics_endpoint": self.endpoint,
        }

    # ------------------------------------------------------------------ publishing

    async def publish(self, topic: str, body: Any, timeout: float) -> int:
        """Send ``body`` to every subscriber of ``topic``; returns its sequence number."""
        if topic not in self._announced:
            await self._announce(validate_topic(topic), timeout)
        return self.publisher.publish(topic, body)

    async def _announce(self, topic: str, timeout: float) -> None:
        """Make the topic known and reach its current subscribers (once, however many
        callers publish to it at the same time)."""
        pending = self._announcing.get(topic)
        if pending is None:
            pending = asyncio.ensure_future(self._offer_all(topic, timeout))
            self._announcing[topic] = pending
            pending.add_done_callback(lambda _: self._announcing.pop(topic, None))
        await asyncio.shield(pending)

    async def _offer_all(self, topic: str, timeout: float) -> None:
        self.publisher.key(topic)
        if self._lookup is not None:
            await self._reregister()  # from now on, subscribers find this topic themselves
            subscribers = await self._lookup({"subscribers": topic})
            offers = [asyncio.ensure_future(self._offer(info, topic)) for info in subscribers]
            if offers:
                prober = asyncio.ensure_future(self._probe_until_cancelled(topic))
                try:
                    done, _ = await asyncio.wait(offers, timeout=timeout)
                finally:  # also when the node closes meanwhile: nothing keeps probing
                    prober.cancel()
                    for offer in offers:
                        offer.cancel()
                confirmed = sum(1 for o in done if not o.exception() and o.result())
                self.counts["offers_confirmed"] += confirmed
                self.counts["offers_unconfirmed"] += len(offers) - confirmed
        self._announced.add(topic)

    async def _probe_until_cancelled(self, topic: str) -> None:
        while True:
            self.publisher.probe(topic)
            await asyncio.sleep(PROBE_EVERY_S)

    async def _offer(self, info: PeerInfo, topic: str) -> bool:
        """Hand ``info`` the key; True once it confirmed that its subscription is in place."""
        key = self.publisher.keys[topic]
        body = {"topic": topic, "key": key.key, "key_id": key.key_id, "endpoint": self.endpoint}
        try:
            answer = await self._call(info.name, Kind.TOPIC_OFFER, topic, body)
        except MeshError as exc:
            log.info("offering %s to %s failed: %s", topic, info.name, exc)
            return False
        return isinstance(answer, dict) and answer.get("confirmed") is True

    async def _call(self, peer: str, kind: int, topic: str, body: Any) -> Any:
        connection = await self._resolve(peer)
        msg_id, call = connection.start_call(kind, topic, body)
        try:
            return await call.future
        finally:
            connection.calls.pop(msg_id, None)

    def answer_subscribe(self, message: Message) -> Message:
        """A SUBSCRIBE: the topic's key if this node publishes it; then a probe follows."""
        body = message.body
        topic = body.get("topic") if isinstance(body, dict) else None
        key = self.publisher.keys.get(topic) if isinstance(topic, str) else None
        if key is None:
            return error_message(message.msg_id, ErrorCode.NOT_FOUND, "not a topic published here")
        asyncio.get_running_loop().call_soon(self.publisher.probe, key.topic)
        answer = {
            "topic": key.topic,
            "key": key.key,
            "key_id": key.key_id,
            "endpoint": self.endpoint,
        }
        return Message(Kind.TOPIC_KEY, next_msg_id(), message.msg_id, body=answer)

    # ------------------------------------------------------------------ subscribing

    def subscribe(self, pattern: str, maxsize: int = DEFAULT_QUEUE) -> Subscription:
        """A subscription to ``pattern``; confirmed in the background (await it)."""
        validate_pattern(pattern)
        if maxsize < 1:
            raise InvalidArgument("maxsize must be at least 1")
        subscription = Subscription(pattern, maxsize, self._unsubscribe)
        self.subscriptions.append(subscription)
        self._routes.clear()
        self._spawn(self._confirm(subscription))
        return subscription

    async def _confirm(self, subscription: Subscription) -> None:
        try:
            if self._lookup is not None:
                await self._reregister()  # from now on, new publishers offer to us
                publishers = await self._lookup({"publishers": subscription.pattern})
                await asyncio.gather(
                    *(
                        self._follow(info, topic)
                        for info in publishers
                        for topic in info.topics
                        if matches(subscription.pattern, topic)
                    )
                )
        except MeshError as exc:
            if not subscription.ready.done():
                subscription.ready.set_exception(exc)
                subscription.ready.exception()  # retrieved: whoever awaits still gets it
            return
        if not subscription.ready.done():
            subscription.ready.set_result(None)

    async def _follow(self, info: PeerInfo, topic: str) -> bool:
        """Get ``topic``'s key from ``info`` and wait for a probe; False (counted) if the
        publisher did not confirm within FOLLOW_TIMEOUT_S."""
        feed = self.feeds.get(info.topics_endpoint)
        if feed is not None and topic in feed.by_topic and feed.by_topic[topic].probed.is_set():
            return True
        wait = FIRST_RETRY_S
        try:
            async with asyncio.timeout(FOLLOW_TIMEOUT_S):
                while True:
                    answer = await self._call(info.name, Kind.SUBSCRIBE, topic, {"topic": topic})
                    feed, key = self._take_key(answer, info.certificate)
                    if await feed.confirmed(key.topic, wait):
                        return True
                    wait = min(wait * 2, 0.5)
        except (TimeoutError, MeshError) as exc:
            self.counts["follow_failures"] += 1
            log.warning("could not subscribe to %s at %s: %s", topic, info.name, exc)
            return False

    def _take_key(
        self, body: Any, publisher: Certificate, offered_by: Session | None = None
    ) -> tuple[Feed, TopicKey]:
        """Validate a TOPIC_KEY or TOPIC_OFFER body and follow the key it carries."""
        if not (
            isinstance(body, dict)
            and isinstance(body.get("topic"), str)
            and isinstance(body.get("key"), bytes)
            and len(body["key"]) == KEY_SIZE
            and type(body.get("key_id")) is int
            and 0 <= body["key_id"] < 2**32
            and isinstance(body.get("endpoint"), str)
            and "://" in body["endpoint"]
        ):
            raise InvalidArgument("malformed topic key")
        key = TopicKey(validate_topic(body["topic"]), body["key"], body["key_id"])
        feed = self._feed(body["endpoint"], publisher, offered_by)
        feed.add(key)
        self._routes.clear()
        return feed, key

    def _feed(self, endpoint: str, publisher: Certificate, offered_by: Session | None) -> Feed:
        feed = self.feeds.get(endpoint)
        if feed is not None and feed.publisher.node_id != publisher.node_id:
            self._close_feed(endpoint)  # another node took over the address
            feed = None
        if feed is None:
            feed = Feed(
                self._context, endpoint, publisher, self._max_skew_ms, self._deliver, self._drops
            )
            self.feeds[endpoint] = feed
            if offered_by is not None:
                self._offered_by[endpoint] = offered_by
        return feed

    def on_offer(self, session: Session, message: Message) -> None:
        """A publisher offers a topic key: take it if a subscription here wants the topic,
        and answer once the probe has confirmed that nothing more will be missed."""
        self._spawn(self._accept_offer(session, message))

    async def _accept_offer(self, session: Session, message: Message) -> None:
        peer = session.peer
        topic = message.body.get("topic") if isinstance(message.body, dict) else None
        wanted = isinstance(topic, str) and self._wants(topic)
        if not wanted:
            answer = error_message(message.msg_id, ErrorCode.NOT_FOUND, "no such subscription")
        else:
            try:
                feed, key = self._take_key(message.body, peer, session)
                confirmed = await feed.confirmed(key.topic, OFFER_CONFIRM_S)
                answer = Message(
                    Kind.REPLY, next_msg_id(), message.msg_id, body={"confirmed": confirmed}
                )
            except InvalidArgument as exc:
                answer = error_message(
                    message.msg_id, ErrorCode.BAD_REQUEST, str(exc), type(exc).__name__
                )
        self._reply(peer.node_id, [answer])

    def _wants(self, topic: str) -> bool:
        """Whether a subscription here matches ``topic`` (closed ones are already gone)."""
        return any(matches(s.pattern, topic) for s in self.subscriptions)

    def _deliver(self, message: TopicMessage) -> None:
        routes = self._routes.get(message.topic)
        if routes is None:
            routes = [s for s in self.subscriptions if matches(s.pattern, message.topic)]
            self._routes[message.topic] = routes
        for subscription in routes:
            subscription.deliver(message)

    def _unsubscribe(self, subscription: Subscription) -> None:
        self.subscriptions.remove(subscription)
        self._routes.clear()
        for endpoint, feed in list(self.feeds.items()):
            for topic in list(feed.by_topic):
                if not self._wants(topic):
                    feed.remove(topic)
            if not feed.by_topic:
                self._close_feed(endpoint)
        if self._lookup is not None and not self._closing:
            self._spawn(self._reregister())

    # ------------------------------------------------------------------ directory changes

    def on_directory_event(self, kind: str, info: PeerInfo) -> None:
        """Follow new publishers of wanted topics; drop feeds of publishers that left."""
        for endpoint, feed in list(self.feeds.items()):
            if feed.publisher.node_id != info.certificate.node_id:
                continue
            left = kind == "LEAVE" and endpoint == info.topics_endpoint
            moved = kind != "LEAVE" and endpoint != info.topics_endpoint
            if left or moved:  # it left, or it restarted and publishes elsewhere now
                self._close_feed(endpoint)
        if kind == "LEAVE":
            return
        feed = self.feeds.get(info.topics_endpoint)
        for topic in filter(self._wants, info.topics):
            if feed is None or topic not in feed.by_topic:
                self._spawn(self._follow(info, topic))

    def on_goodbye(self, session: Session) -> None:
        """A peer closed a session: the feeds its offers opened end with it (a short-lived
        publisher that never registered has no LEAVE to announce it)."""
        for endpoint, offered_by in list(self._offered_by.items()):
            if offered_by is session:
                self._close_feed(endpoint)

    def _close_feed(self, endpoint: str) -> None:
        feed = self.feeds.pop(endpoint, None)
        self._offered_by.pop(endpoint, None)
        if feed is not None:
            self._missed_before += sum(feed.missed.values())
            feed.close()

    # ------------------------------------------------------------------ the rest

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stats(self) -> dict[str, Any]:
        """Publishing and subscribing figures; ``gaps`` is every message known missed."""
        missed = sum(sum(f.missed.values()) for f in self.feeds.values())
        return {
            "endpoint": self.endpoint,
            "published": self.publisher.published,
            "probes": self.publisher.probes,
            "publishing": sorted(self.publisher.keys),
            "gaps": missed + self._missed_before,
            "subscriptions": [
                {
                    "pattern": s.pattern,
                    "received": s.received,
                    "pending": s.pending,
                    "overflow": s.overflow,
                }
                for s in self.subscriptions
            ],
            "feeds": {
                endpoint: {
                    "publisher": feed.publisher.name,
                    "topics": sorted(feed.by_topic),
                    "missed": dict(feed.missed),
                }
                for endpoint, feed in self.feeds.items()
            },
            **self.counts,
        }

    async def close(self) -> None:
        self._closing = True
        for subscription in list(self.subscriptions):
            subscription.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for endpoint in list(self.feeds):
            self._close_feed(endpoint)
        self.publisher.close()
