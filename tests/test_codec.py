"""The payload codec: msgpack bombs and bad bodies each meet one typed error."""

from __future__ import annotations

import contextlib
import sys

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh import (
    Blob,
    InvalidArgument,
    InvalidBody,
    LimitExceeded,
    MalformedEnvelope,
    Message,
    ProtocolError,
    UnsupportedAttachment,
)
from mesh.core.codec import (
    Unmaterialised,
    decode_payload,
    encode_payload,
    encode_row,
    payload_of_rows,
)
from mesh.core.wire import EXT_ATTACHMENT, MAX_DEPTH, Kind


def row(body: bytes) -> bytes:
    """A one-message payload whose body is the raw msgpack ``body``."""
    return b"\x91\x97\x01\x01\x00\xa1m\x00" + body + b"\xc0"


BOMBS = {
    "huge declared array": (row(b"\xdd\xff\xff\xff\xff"), LimitExceeded, "limit"),
    "huge declared map": (row(b"\xdf\xff\xff\xff\xff"), LimitExceeded, "limit"),
    # strings and binaries are never allocated beyond the bytes actually present
    "huge declared string": (row(b"\xdb\xff\xff\xff\xff"), MalformedEnvelope, "truncated"),
    "huge declared binary": (row(b"\xc6\xff\xff\xff\xff"), MalformedEnvelope, "truncated"),
    "nesting past MAX_DEPTH": (row(b"\x91" * (MAX_DEPTH + 1) + b"\xc0"), LimitExceeded, "limit"),
    "nesting past msgpack's stack": (row(b"\x91" * 5000 + b"\xc0"), LimitExceeded, "limit"),
    "invalid UTF-8": (row(b"\xa2\xff\xfe"), MalformedEnvelope, "utf8"),
    "integer map key": (row(b"\x81\x01\x02"), MalformedEnvelope, "map_key"),
    "binary map key": (row(b"\x81\xc4\x01k\x02"), MalformedEnvelope, "map_key"),
    "trailing bytes": (row(b"\xc0") + b"\x00", MalformedEnvelope, "trailing"),
    "foreign ext type": (row(b"\xd4\x05\x00"), MalformedEnvelope, "ext"),
    "msgpack timestamp": (row(b"\xd6\xff\x00\x00\x00\x00"), MalformedEnvelope, "type"),
    "dangling attachment": (
        row(b"\xd5\x01" + msgpack.packb([0, 0])[:2]),
        MalformedEnvelope,
        "attachment_ref",
    ),
    "truncated": (row(b"\xdc\x00\x05\x01"), MalformedEnvelope, "truncated"),
    "not a list of messages": (b"\x80", MalformedEnvelope, "malformed"),
    "unknown kind": (b"\x91\x97\x63\x01\x00\xa1m\x00\xc0\xc0", MalformedEnvelope, "malformed"),
    "negative msg_id": (b"\x91\x97\x01\xff\x00\xa1m\x00\xc0\xc0", MalformedEnvelope, "malformed"),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_each_bomb_raises_one_typed_error(name):
    payload, error, reason = BOMBS[name]
    with pytest.raises(MalformedEnvelope) as caught:
        decode_payload(payload, [])
    assert type(caught.value) is error
    assert caught.value.reason == reason


def test_the_template_row_itself_is_valid():
    (message,) = decode_payload(row(b"\x01"), [])
    assert (message.kind, message.name, message.body) == (Kind.REQUEST, "m", 1)


def test_attachment_referenced_twice_or_not_at_all():
    ref = msgpack.ExtType(EXT_ATTACHMENT, msgpack.packb([0, 0]))
    twice = msgpack.packb([[1, 1, 0, "m", 0, [ref, ref], None]])
    with pytest.raises(MalformedEnvelope, match="twice"):
        decode_payload(twice, [bytearray(b"x")])
    with pytest.raises(MalformedEnvelope, match="not referenced"):
        decode_payload(msgpack.packb([[1, 1, 0, "m", 0, None, None]]), [bytearray(b"x")])


@pytest.mark.parametrize(
    ("descriptor", "buffer"),
    [
        ([0, 1, "|O", [1]], b"12345678"),
        ([0, 1, "<f4", [3]], b"1234"),
        ([0, 1, "<f4", [-1]], b""),
        ([0, 9], b""),
        ([0, 2, "float32", [2]], b"123"),
        ([5, 0], b""),
    ],
)
def test_bad_attachment_descriptors(descriptor, buffer):
    ref = msgpack.ExtType(EXT_ATTACHMENT, msgpack.packb(descriptor))
    payload = msgpack.packb([[1, 1, 0, "m", 0, ref, None]])
    with pytest.raises(MalformedEnvelope):
        decode_payload(payload, [bytearray(buffer)])


@pytest.mark.parametrize(
    "body",
    [
        {1: "int key"},
        {b"k": "bytes key"},
        object(),
        2**64,
        -(2**63) - 1,
        {"set": {1, 2}},
        np.array(["strings"]),
        np.zeros(2, dtype=object),
    ],
)
def test_unsendable_bodies_raise_invalid_body(body):
    with pytest.raises(InvalidBody):
        encode_payload([Message(Kind.SEND, 1, body=body)])


def test_too_deep_bodies_are_refused_before_sending():
    body: list = []
    for _ in range(MAX_DEPTH + 1):
        body = [body]
    with pytest.raises(InvalidBody):
        encode_payload([Message(Kind.SEND, 1, body=body)])


def test_message_header_is_validated_on_construction():
    for bad in (
        {"kind": 99},
        {"kind": [1]},
        {"kind": True},
        {"msg_id": -1},
        {"msg_id": 2**64},
        {"corr_id": True},
        {"ttl_ms": 2**32},
        {"name": "x" * 300},
        {"meta": [1]},
    ):
        fields = {"kind": Kind.SEND, "msg_id": 1, **bad}
        with pytest.raises(InvalidArgument):
            Message(**fields)


def test_blob_equality_and_size():
    assert Blob(b"abc") == Blob(bytearray(b"abc"))
    assert Blob(b"abc") != b"abc"
    assert len(Blob(memoryview(b"abcd"))) == 4
    assert bytes(Blob(bytearray(b"z"))) == b"z"


def test_noncontiguous_arrays_are_sent_contiguous():
    array = np.arange(20, dtype=np.int16).reshape(4, 5)[:, ::2]
    payload, attachments = encode_payload([Message(Kind.SEND, 1, body=array)])
    (got,) = decode_payload(payload, [bytearray(a) for a in attachments])
    assert np.array_equal(got.body, array)


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=8)
        | st.dictionaries(
            inner.filter(lambda k: isinstance(k, str | int | bytes)), inner, max_size=4
        )
    ),
    max_leaves=25,
)


@settings(max_examples=400)
@given(
    data=st.binary(max_size=120)
    | json_like.map(
        lambda v: (
            msgpack.packb(v, default=repr)
            if not isinstance(v, int) or -(2**63) <= v < 2**64
            else b"\xc0"
        )
    ),
    cut=st.integers(0, 200),
)
def test_decoder_raises_only_protocol_errors(data, cut):
    """The payload decoder's contract, on random bytes and random (often truncated) msgpack."""
    for payload in (data, data[:cut], b"\x91" + data, b"\x91\x97\x01\x01\x00\xa1m\x00" + data):
        with contextlib.suppress(ProtocolError):
            decode_payload(payload, [bytearray(b"abcd")])


sendable = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=4),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=200)
@given(bodies=st.lists(sendable, min_size=1, max_size=40))
def test_coalesced_rows_are_the_frame_payload_byte_for_byte(bodies):
    """One-way messages packed one by one and joined (what a sender coalesces in a burst)
    make exactly the payload of one frame carrying them all, and decode back in order."""
    messages = [Message(Kind.SEND, i + 1, name="m", body=b) for i, b in enumerate(bodies)]
    rows = [encode_row(m) for m in messages]
    assert all(r is not None for r in rows)
    payload = payload_of_rows(rows)
    assert payload == encode_payload(messages)[0]
    assert [m.body for m in decode_payload(payload, [])] == [m.body for m in messages]


def test_a_message_with_attachments_is_not_coalesced_and_bad_bodies_fail_at_once():
    assert encode_row(Message(Kind.SEND, 1, name="m", body=Blob(b"x" * 10))) is None
    with pytest.raises(InvalidBody):
        encode_row(Message(Kind.SEND, 1, name="m", body={1, 2}))
    with pytest.raises(InvalidArgument):
        payload_of_rows([])


def test_an_array_without_its_library_is_described_and_passed_on_unchanged(monkeypatch):
    """A node without numpy cannot build an array, but keeps its description and bytes
    (protocol.md 7.7): it can answer for it, or pass it on as it came."""
    array = np.arange(6, dtype="<i4").reshape(3, 2)
    payload, attachments = encode_payload([Message(Kind.SEND, 1, body={"a": array})])
    monkeypatch.setitem(sys.modules, "numpy", None)
    with pytest.raises(UnsupportedAttachment):  # nobody asked for the lenient form
        decode_payload(payload, [bytearray(a) for a in attachments])
    lacking: list[int] = []
    (message,) = decode_payload(payload, [bytearray(a) for a in attachments], lacking)
    held = message.body["a"]
    assert lacking == [0] and isinstance(held, Unmaterialised)
    assert (held.library, held.dtype, held.shape) == ("numpy", "<i4", [3, 2])
    forwarded, buffers = encode_payload([Message(Kind.SEND, 2, body={"a": held})])
    monkeypatch.setitem(sys.modules, "numpy", np)
    (again,) = decode_payload(forwarded, [bytearray(b) for b in buffers])
    assert np.array_equal(again.body["a"], array)
