"""One publisher as a subscriber sees it: a SUB socket on its PUB, and a key per topic.

A node keeps one :class:`Feed` per publisher endpoint it follows, subscribed (in the ZeroMQ
sense) to the keyed tag of each topic it holds a key for; the topic names never reach the
socket. Every frame is checked as protocol.md 7.8 orders (tag and key, publisher, box,
signature, clock, then the sequence) and dropped, counted under a ``topic_`` reason, at
the first failure. A probe frame confirms that this subscription is in place at the
publisher: whoever waits in :meth:`Feed.confirmed` is woken.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import zmq

from ..core.errors import ProtocolError
from ..core.identity import Certificate
from ..core.replay import TopicSequence
from ..core.topic_frame import TopicKey, open_publish
from ..core.wire import MAX_FIRST_FRAME, Kind
from .reactor import Reactor
from .sockets import HWM, LINGER_MS
from .stamps import now_ms
from .subscription import TopicMessage

Deliver = Callable[[TopicMessage], None]
_PUBLISH = int(Kind.PUBLISH)
_PROBE = int(Kind.TOPIC_PROBE)


class FeedTopic:
    """One topic key from this publisher and the sequence seen under it."""

    __slots__ = ("key", "probed", "sequence")

    def __init__(self, key: TopicKey) -> None:
        self.key = key
        self.sequence = TopicSequence()
        self.probed = asyncio.Event()


class Feed:
    """A SUB socket connected to one publisher's PUB."""

    def __init__(
        self,
        context: zmq.Context,
        endpoint: str,
        publisher: Certificate,
        max_skew_ms: int,
        deliver: Deliver,
        drops: Counter[str],
    ) -> None:
        self.endpoint = endpoint
        self.publisher = publisher
        self._max_skew_ms = max_skew_ms
        self._deliver = deliver
        self._drops = drops
        self.by_tag: dict[bytes, FeedTopic] = {}
        self.by_topic: dict[str, FeedTopic] = {}
        self.missed: Counter[str] = Counter()  # per topic, across key changes: never hidden
        socket = context.socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, LINGER_MS)
        socket.setsockopt(zmq.RCVHWM, HWM)
        socket.setsockopt(zmq.MAXMSGSIZE, MAX_FIRST_FRAME)  # a PUBLISH is one frame
        socket.connect(endpoint)
        self._reactor = Reactor(socket, self._receive)

    def add(self, key: TopicKey) -> FeedTopic:
        """Follow ``key``'s topic (a new key for a topic replaces the old one)."""
        current = self.by_topic.get(key.topic)
        if current is not None and current.key == key:
            return current
        if current is not None:
            self.remove(key.topic)
        topic = self.by_tag[key.tag] = self.by_topic[key.topic] = FeedTopic(key)
        self._reactor.socket.setsockopt(zmq.SUBSCRIBE, key.prefix)
        return topic

    def remove(self, topic: str) -> None:
        state = self.by_topic.pop(topic, None)
        if state is not None:
            del self.by_tag[state.key.tag]
            self._reactor.socket.setsockopt(zmq.UNSUBSCRIBE, state.key.prefix)

    async def confirmed(self, topic: str, timeout: float) -> bool:
        """Wait until a probe for ``topic`` arrived (at most ``timeout`` seconds)."""
        state = self.by_topic.get(topic)
        if state is None:
            return False
        try:
            async with asyncio.timeout(timeout):
                await state.probed.wait()
        except TimeoutError:
            return False
        return True

    def _receive(self, frames: list[bytes]) -> None:
        frame = frames[0]
        state = self.by_tag.get(frame[2:18])
        if state is None:  # a key we replaced, or a prefix collision: not ours to open
            self._drops["topic_unknown_key"] += 1
            return
        try:
            opened = open_publish(frames, state.key, self.publisher, now_ms(), self._max_skew_ms)
        except ProtocolError as error:
            self._drops["topic_" + error.reason] += 1
            return
        messages = opened.messages
        if messages[0].kind == _PROBE:
            self._missed(state, state.sequence.probe(opened.seq))
            state.probed.set()
            return
        try:
            self._missed(state, state.sequence.accept(opened.seq))
        except ProtocolError as error:
            self._drops["topic_" + error.reason] += 1
            return
        topic, name, seq, at = state.key.topic, self.publisher.name, opened.seq, opened.timestamp_ms
        for message in messages:
            if message.kind == _PUBLISH:
                self._deliver(TopicMessage(topic, message.body, name, seq, at))
            else:
                self._drops["topic_unexpected_kind"] += 1

    def _missed(self, state: FeedTopic, count: int) -> None:
        if count:
            self.missed[state.key.topic] += count

    def close(self) -> None:
        self._reactor.close()
