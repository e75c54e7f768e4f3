"""PUBLISH frames: round trip, tampering, forgery by another key holder, hostile bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh import AuthenticationFailed, ClockSkew, Message, ProtocolError
from mesh.core.topic_frame import TopicKey, open_publish, publish_header, seal_publish
from mesh.core.wire import Kind
from tests.conftest import NOW_MS

KEY = TopicKey("orders", bytes(range(32)), 7)
EVENT = [Message(Kind.PUBLISH, 1, name="orders", body={"id": 42, "secret": "sauce"})]


def test_round_trip_and_nothing_readable(alice):
    (frame,) = seal_publish(alice, KEY, 5, NOW_MS, EVENT)
    assert b"orders" not in frame and b"sauce" not in frame
    assert bytes(frame).startswith(KEY.prefix)
    opened = open_publish([frame], KEY, alice.require_certificate(), NOW_MS, 1000)
    assert (opened.seq, opened.messages) == (5, EVENT)
    assert publish_header([frame]) == (KEY.tag, 7, alice.node_id)


def test_every_bit_flip_is_refused(alice):
    (frame,) = seal_publish(alice, KEY, 1, NOW_MS, EVENT)
    for index in range(len(frame)):
        mutated = bytearray(frame)
        mutated[index] ^= 0x10
        with pytest.raises(ProtocolError):
            open_publish([bytes(mutated)], KEY, alice.require_certificate(), NOW_MS, 1000)


def test_another_key_holder_cannot_publish_as_the_publisher(alice, bob):
    (forged,) = seal_publish(bob, KEY, 1, NOW_MS, EVENT)  # bob holds the key too
    forged = bytearray(forged)
    forged[22:38] = alice.node_id  # claim to be alice
    with pytest.raises(AuthenticationFailed):
        open_publish([bytes(forged)], KEY, alice.require_certificate(), NOW_MS, 1000)
    (honest,) = seal_publish(bob, KEY, 1, NOW_MS, EVENT)
    with pytest.raises(AuthenticationFailed):  # from bob, but we expect alice
        open_publish([honest], KEY, alice.require_certificate(), NOW_MS, 1000)


def test_wrong_key_and_skew(alice):
    (frame,) = seal_publish(alice, KEY, 1, NOW_MS, EVENT)
    other = TopicKey("orders", bytes(32), 7)
    with pytest.raises(AuthenticationFailed):
        open_publish([frame], other, alice.require_certificate(), NOW_MS, 1000)
    with pytest.raises(ClockSkew):
        open_publish([frame], KEY, alice.require_certificate(), NOW_MS + 5000, 1000)


@settings(max_examples=300)
@given(data=st.binary(max_size=300), prefix=st.sampled_from([b"", b"\x01\x04", KEY.prefix]))
def test_random_bytes_raise_only_protocol_errors(alice, data, prefix):
    with pytest.raises(ProtocolError):
        open_publish([prefix + data], KEY, alice.require_certificate(), NOW_MS, 1000)
