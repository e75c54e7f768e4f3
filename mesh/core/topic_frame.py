"""PUBLISH frames: one sealed, signed message to every subscriber of a topic (pure code).

A topic's messages are boxed with a symmetric *topic key* that the publisher hands only to
members whose certificates verify (over their direct, sealed session), and signed with the
publisher's Ed25519 key, so one subscriber holding the key still cannot forge the publisher.
In clear are the version, the type, a keyed hash of the topic name (the SUB filter: the
name itself is never on the wire), the key id and the publisher's node id.

Layout (protocol.md, 7.8)::

    %x01 %x04 tag:16 key-id:u32 publisher-id:16 | nonce:24 | secretbox(key, nonce, inner)
    inner = clear header (38, repeated) | seq u64 | timestamp ms u64 | attachments u8 (0)
            | payload | signature:64 over "agent-mesh publish v1\\0" and everything before it

Specified in protocol.md 7.8 (PUBLISH frames), 10.2 (keys).
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from . import _sodium
from .codec import Message, decode_payload, encode_payload
from .envelope import Frame, Opened
from .errors import (
    AuthenticationFailed,
    ClockSkew,
    InvalidArgument,
    MalformedEnvelope,
    UnsupportedVersion,
)
from .identity import Certificate, Identity
from .wire import (
    KEY_SIZE,
    MAC_SIZE,
    MAX_FIRST_FRAME,
    NODE_ID_SIZE,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    SIGNATURE_SIZE,
    FrameType,
)

CLEAR = struct.Struct(">BB16sI16s")  # version, type, topic tag, key id, publisher id
INNER = struct.Struct(">38sQQB")
CONTEXT = b"agent-mesh publish v1\x00"
BOX_OFFSET = CLEAR.size + NONCE_SIZE
MIN_SIZE = BOX_OFFSET + MAC_SIZE + INNER.size + SIGNATURE_SIZE


@dataclass(frozen=True)
class TopicKey:
    """A topic's symmetric key and its id (which changes when the key is replaced)."""

    topic: str
    key: bytes
    key_id: int

    @classmethod
    def generate(cls, topic: str) -> TopicKey:
        return cls(topic, os.urandom(KEY_SIZE), int.from_bytes(os.urandom(4), "big"))

    @functools.cached_property
    def tag(self) -> bytes:
        """The keyed hash of the topic name that subscribers filter on."""
        return hashlib.blake2b(
            self.topic.encode(), digest_size=16, key=self.key, person=b"agent-mesh topic"
        ).digest()

    @functools.cached_property
    def prefix(self) -> bytes:
        """The SUB subscription prefix for this topic and key."""
        return bytes([PROTOCOL_VERSION, FrameType.PUBLISH]) + self.tag


@functools.lru_cache(maxsize=1024)
def _verify_key(sign_public: bytes) -> VerifyKey:
    """A publisher's verify key, built once (every message from it is checked with it)."""
    return VerifyKey(sign_public)


def seal_publish(
    publisher: Identity,
    topic_key: TopicKey,
    seq: int,
    timestamp_ms: int,
    messages: Sequence[Message],
    _random: Callable[[int], bytes] = os.urandom,
) -> list[Frame]:
    """Seal and sign ``messages`` for ``topic_key``'s subscribers. Attachments are not
    supported on topics yet (InvalidArgument)."""
    payload, attachments = encode_payload(messages)
    if attachments:
        raise InvalidArgument("topic messages cannot carry attachments yet")
    clear = CLEAR.pack(
        PROTOCOL_VERSION, FrameType.PUBLISH, topic_key.tag, topic_key.key_id, publisher.node_id
    )
    unsigned = INNER.pack(clear, seq, timestamp_ms, 0) + payload
    signature = publisher.signing_key.sign(CONTEXT + unsigned).signature
    plaintext = unsigned + signature
    nonce = _random(NONCE_SIZE)
    frame = bytearray(BOX_OFFSET + MAC_SIZE + len(plaintext))
    frame[: CLEAR.size] = clear
    frame[CLEAR.size : BOX_OFFSET] = nonce
    _sodium.seal_into(frame, BOX_OFFSET, plaintext, nonce, topic_key.key)
    return [frame]


def publish_header(frames: Sequence[Frame]) -> tuple[bytes, int, bytes]:
    """(topic tag, key id, publisher id) of a PUBLISH frame; raises MalformedEnvelope."""
    if len(frames) != 1:
        raise MalformedEnvelope("a PUBLISH message is one frame")
    frame = frames[0]
    if len(frame) < 2:
        raise MalformedEnvelope("frame too short for a header")
    if frame[0] != PROTOCOL_VERSION:
        raise UnsupportedVersion(frame[0])
    if frame[1] != FrameType.PUBLISH:
        raise MalformedEnvelope("not a PUBLISH frame", reason="frame_type")
    if not MIN_SIZE <= len(frame) <= MAX_FIRST_FRAME:
        raise MalformedEnvelope("PUBLISH frame size out of bounds")
    _, _, tag, key_id, publisher_id = CLEAR.unpack_from(frame)
    return tag, key_id, publisher_id


def open_publish(
    frames: Sequence[Frame],
    topic_key: TopicKey,
    publisher: Certificate,
    now_ms: int,
    max_skew_ms: int,
) -> Opened:
    """Authenticate (key, then the publisher's signature) and decode a PUBLISH frame.
    Replay checking is the subscriber's: it keeps a window per publisher and key id."""
    tag, key_id, publisher_id = publish_header(frames)
    if tag != topic_key.tag or key_id != topic_key.key_id:
        raise AuthenticationFailed("PUBLISH for another topic or key")
    if publisher_id != publisher.node_id or len(publisher_id) != NODE_ID_SIZE:
        raise AuthenticationFailed("PUBLISH from another publisher")
    frame = memoryview(frames[0])
    plain = _sodium.open_to_bytearray(
        frame[BOX_OFFSET:], frame[CLEAR.size : BOX_OFFSET], topic_key.key
    )
    if plain is None or plain[: CLEAR.size] != frame[: CLEAR.size]:
        raise AuthenticationFailed("PUBLISH frame does not open under the topic key")
    unsigned, signature = bytes(plain[:-SIGNATURE_SIZE]), bytes(plain[-SIGNATURE_SIZE:])
    try:
        _verify_key(publisher.sign_public).verify(CONTEXT + unsigned, signature)
    except BadSignatureError as exc:
        raise AuthenticationFailed(
            "PUBLISH signature is not the publisher's", reason="bad_signature"
        ) from exc
    _, seq, timestamp, attachments = INNER.unpack_from(unsigned)
    if attachments:
        raise MalformedEnvelope("attachments on topics are not supported yet")
    if abs(timestamp - now_ms) > max_skew_ms:
        raise ClockSkew(timestamp - now_ms, max_skew_ms)
    messages = decode_payload(memoryview(unsigned)[INNER.size :], [])
    if not messages:
        raise MalformedEnvelope("a PUBLISH frame carries at least one message")
    return Opened(seq, timestamp, 0, 0, messages)
