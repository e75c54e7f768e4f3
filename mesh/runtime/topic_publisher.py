"""A node's publishing side: its one PUB socket, a key and a sequence per topic.

Publishing is synchronous and never waits: seal, sign, one NOBLOCK send. ZeroMQ's PUB drops
a message for a subscriber whose queue is full rather than block everyone else; a subscriber
sees that as a gap in this publisher's sequence numbers and counts it (see
:class:`mesh.core.replay.TopicSequence`). Each topic gets its own key, made on first use and
handed out only over sealed sessions (SUBSCRIBE answers and offers), so a member who asked
for one topic cannot read another.

Specified in protocol.md 7.8 (PUBLISH frames), 10.2 (keys), 10.3 (sequence numbers).
"""

from __future__ import annotations

import zmq

from ..core.codec import Message
from ..core.identity import Identity
from ..core.subjects import validate_topic
from ..core.topic_frame import TopicKey, seal_publish
from ..core.wire import Kind
from . import sockets
from .stamps import next_msg_id, now_ms

_NOBLOCK = int(zmq.NOBLOCK)


class TopicPublisher:
    """The PUB socket and per-topic state of one node."""

    def __init__(self, context: zmq.Context, identity: Identity, bind: str) -> None:
        self._identity = identity
        self._socket, self.bound = sockets.publisher(context, bind)
        self.keys: dict[str, TopicKey] = {}
        self._seq: dict[str, int] = {}
        self.published = 0
        self.probes = 0

    def key(self, topic: str) -> TopicKey:
        """The topic's key, made on first use."""
        key = self.keys.get(topic)
        if key is None:
            key = self.keys[topic] = TopicKey.generate(validate_topic(topic))
            self._seq[topic] = 0
        return key

    def publish(self, topic: str, body: object) -> int:
        """Seal, sign and send one message on ``topic``; returns its sequence number."""
        key = self.key(topic)
        seq = self._seq[topic] + 1
        message = Message(Kind.PUBLISH, next_msg_id(), name=topic, body=body)
        frames = seal_publish(self._identity, key, seq, now_ms(), [message])
        self._seq[topic] = seq  # only once sealing succeeded: a bad body leaves no gap
        if self._send(frames):
            self.published += 1
        return seq

    def probe(self, topic: str) -> None:
        """Send a probe on ``topic``: it proves to whoever receives it that their
        subscription is in place, and tells them the last sequence number published."""
        key = self.key(topic)
        message = Message(Kind.TOPIC_PROBE, next_msg_id(), name=topic)
        if self._send(seal_publish(self._identity, key, self._seq[topic], now_ms(), [message])):
            self.probes += 1

    def _send(self, frames: list) -> bool:
        """False if libzmq refused the frame outright (the socket is closing)."""
        try:
            self._socket.send(frames[0], _NOBLOCK)
        except zmq.ZMQError:
            return False
        return True

    def close(self) -> None:
        self._socket.close()
