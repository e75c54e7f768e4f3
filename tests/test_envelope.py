"""Sealed envelopes: round trips, tampering, limits and hostile bytes (no sockets)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh import (
    AuthenticationFailed,
    Blob,
    EnvelopeTooLarge,
    LimitExceeded,
    MalformedEnvelope,
    Message,
    ProtocolError,
    UnsupportedVersion,
)
from mesh.core.envelope import BOX_OFFSET, open_sealed, seal
from mesh.core.wire import MAX_FRAMES, Kind, Suite
from tests.conftest import NOW_MS, Pair, handshake

SID = b"\x00\x00\x00\x01\x00\x00\x00\x02"
KEY = bytes(range(32))
FIXTURES = [HealthCheck.function_scoped_fixture]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
bodies = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)
attachments = st.lists(
    st.binary(max_size=300).map(Blob)
    | st.lists(st.floats(width=32, allow_nan=False), max_size=40).map(
        lambda xs: np.array(xs, dtype=np.float32)
    ),
    max_size=4,
)
kinds = st.sampled_from(list(Kind))
messages = st.builds(
    Message,
    kind=kinds,
    msg_id=st.integers(0, 2**64 - 1),
    corr_id=st.integers(0, 2**64 - 1),
    name=st.text(max_size=30),
    body=bodies,
    ttl_ms=st.integers(0, 2**32 - 1),
    meta=st.none() | st.dictionaries(st.text(max_size=8), scalars, max_size=3),
)


def same(a: object, b: object) -> bool:
    """Equality that understands numpy arrays inside containers."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, list | tuple):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=200)
@given(
    batch=st.lists(messages, min_size=1, max_size=4),
    extra=attachments,
    seq=st.integers(0, 2**64 - 1),
    grant=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)),
)
def test_open_of_seal_is_identity(batch, extra, seq, grant):
    batch = [
        *batch[:-1],
        Message(batch[-1].kind, batch[-1].msg_id, body={"b": batch[-1].body, "att": extra}),
    ]
    frames = seal(SID, KEY, seq, NOW_MS, batch, grant)
    assert len(frames) == 1 + len(extra)
    opened = open_sealed(frames, KEY)
    assert (opened.seq, opened.timestamp_ms) == (seq, NOW_MS)
    assert (opened.grant_messages, opened.grant_bytes) == grant
    assert len(opened.messages) == len(batch)
    for sent, got in zip(batch, opened.messages, strict=True):
        assert (sent.kind, sent.msg_id, sent.corr_id, sent.name, sent.ttl_ms, sent.meta) == (
            got.kind,
            got.msg_id,
            got.corr_id,
            got.name,
            got.ttl_ms,
            got.meta,
        )
        assert same(sent.body, got.body)


def test_float32_array_arrives_as_an_array_over_the_received_buffer():
    array = np.arange(1 << 16, dtype=np.float32).reshape(256, 256)
    frames = seal(SID, KEY, 0, NOW_MS, [Message(Kind.SEND, 1, body={"emb": array})])
    assert len(frames) == 2  # the array travels as its own frame, not inside msgpack
    assert len(frames[0]) < 200
    got = open_sealed(frames, KEY).messages[0].body["emb"]
    assert got.dtype == np.float32
    assert got.shape == (256, 256)
    assert np.array_equal(got, array)
    owner = got
    while isinstance(owner, np.ndarray):
        owner = owner.base
    assert isinstance(owner, memoryview)
    assert isinstance(owner.obj, bytearray)  # the decrypted frame itself: no per-element copy
    assert owner.obj is not frames[1] and len(owner.obj) == array.nbytes


def test_torch_tensor_round_trip():
    torch = pytest.importorskip("torch")
    tensor = torch.arange(12, dtype=torch.bfloat16).reshape(3, 4)
    frames = seal(SID, KEY, 0, NOW_MS, [Message(Kind.SEND, 1, body=[tensor, torch.zeros(0)])])
    got, empty = open_sealed(frames, KEY).messages[0].body
    assert isinstance(got, torch.Tensor)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, tensor)
    assert empty.shape == (0,)


def small_frames() -> list[bytes]:
    msg = Message(Kind.REQUEST, 9, name="m", body={"k": [1, 2]})
    return [bytes(f) for f in seal(SID, KEY, 3, NOW_MS, [msg, msg], _random=lambda n: b"\x07" * n)]


def test_every_single_bit_flip_is_detected():
    (frame,) = small_frames()
    for bit in range(len(frame) * 8):
        mutated = bytearray(frame)
        mutated[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises((AuthenticationFailed, MalformedEnvelope)):
            open_sealed([bytes(mutated)], KEY)


def test_every_truncation_and_extension_is_detected():
    (frame,) = small_frames()
    for size in range(len(frame)):
        with pytest.raises((AuthenticationFailed, MalformedEnvelope)):
            open_sealed([frame[:size]], KEY)
    for tail in (b"\x00", b"\x00" * 16, frame):
        with pytest.raises((AuthenticationFailed, MalformedEnvelope)):
            open_sealed([frame + tail], KEY)


@given(data=st.data())
def test_bit_flips_in_attachment_envelopes_are_detected(data):
    frames = [
        bytes(f)
        for f in seal(
            SID,
            KEY,
            0,
            NOW_MS,
            [Message(Kind.SEND, 1, body=[Blob(b"a" * 50), np.ones(8, dtype=np.int64)])],
        )
    ]
    index = data.draw(st.integers(0, len(frames) - 1))
    bit = data.draw(st.integers(0, len(frames[index]) * 8 - 1))
    mutated = bytearray(frames[index])
    mutated[bit // 8] ^= 1 << (bit % 8)
    frames[index] = bytes(mutated)
    with pytest.raises((AuthenticationFailed, MalformedEnvelope)):
        open_sealed(frames, KEY)


def test_attachments_cannot_be_swapped_dropped_or_moved():
    body = [Blob(b"first"), Blob(b"second")]
    frames = seal(SID, KEY, 0, NOW_MS, [Message(Kind.SEND, 1, body=body)])
    other = seal(SID, KEY, 1, NOW_MS, [Message(Kind.SEND, 2, body=body)])
    for bad in (
        [frames[0], frames[2], frames[1]],
        frames[:2],
        [frames[0], other[1], frames[2]],
        [*frames, frames[1]],
    ):
        with pytest.raises((AuthenticationFailed, MalformedEnvelope)):
            open_sealed(bad, KEY)


def test_an_envelope_for_bob_does_not_open_at_carol(alice, bob, carol, trust):
    to_bob = handshake(alice, bob, trust)
    to_carol = handshake(alice, carol, trust)
    frames = to_bob.alice.seal([Message(Kind.REQUEST, 1, name="secret")], NOW_MS)
    with pytest.raises(AuthenticationFailed):
        to_carol.bob.open(frames, NOW_MS)  # carol's own key for alice: wrong key
    with pytest.raises(ProtocolError):
        to_carol.bob_table.open(frames, NOW_MS)  # carol's table: not her session id


def test_nothing_readable_on_the_wire():
    secret = "the-method-name"
    frames = seal(
        SID,
        KEY,
        0,
        NOW_MS,
        [Message(Kind.REQUEST, 1, name=secret, body={"topic": "private words"}, ttl_ms=5)],
    )
    wire = b"".join(bytes(f) for f in frames)
    for needle in (secret.encode(), b"private words", b"topic"):
        assert needle not in wire
    assert wire[:2] == b"\x01\x03"
    assert wire[2:10] == SID


@settings(max_examples=500, suppress_health_check=FIXTURES)
@given(frames=st.lists(st.binary(max_size=200), min_size=1, max_size=4), keep_header=st.booleans())
def test_random_bytes_raise_only_protocol_errors(frames, keep_header, pair: Pair):
    if keep_header:  # reach past the header checks: a live session id, then garbage
        frames[0] = b"\x01\x03" + pair.bob.recv_id + frames[0]
    with pytest.raises(ProtocolError):
        pair.bob_table.open(frames, NOW_MS)


@settings(max_examples=300, suppress_health_check=FIXTURES)
@given(data=st.data())
def test_mutated_valid_envelopes_raise_only_protocol_errors(data, pair: Pair):
    frames = [
        bytearray(f)
        for f in pair.alice.seal(
            [Message(Kind.REQUEST, 1, body={"a": [1, Blob(b"x" * 40)]})], NOW_MS
        )
    ]
    for _ in range(data.draw(st.integers(1, 4))):
        frame = data.draw(st.sampled_from(frames))
        position = data.draw(st.integers(0, len(frame)))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and position < len(frame):
            frame[position] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del frame[position:]
        else:
            frame[position:position] = data.draw(st.binary(min_size=1, max_size=8))
    with contextlib.suppress(ProtocolError):
        pair.bob_table.open(frames, NOW_MS)


def test_header_level_errors_are_typed(pair: Pair):
    (frame,) = pair.alice.seal([Message(Kind.PING, 1)], NOW_MS)
    with pytest.raises(UnsupportedVersion):
        pair.bob_table.open([b"\x02" + bytes(frame)[1:]], NOW_MS)
    with pytest.raises(MalformedEnvelope):
        pair.bob_table.open([b"\x01\x09" + bytes(frame)[2:]], NOW_MS)
    with pytest.raises(LimitExceeded):
        pair.bob_table.open([frame] * (MAX_FRAMES + 1), NOW_MS)
    with pytest.raises(LimitExceeded):
        pair.bob_table.open([], NOW_MS)
    with pytest.raises(EnvelopeTooLarge):
        pair.bob_table.open([bytes(frame[:BOX_OFFSET]) + bytes(17 * 1024 * 1024)], NOW_MS)


def test_nonces_are_fresh_for_every_seal(pair: Pair):
    message = [Message(Kind.SEND, 1, body=Blob(b"same"))]
    first, second = (pair.alice.seal(message, NOW_MS) for _ in range(2))
    assert bytes(first[0])[10:34] != bytes(second[0])[10:34]
    assert bytes(first[1]) != bytes(second[1])


@pytest.mark.parametrize("suite", [Suite.XSALSA20_POLY1305, Suite.AES256_GCM])
def test_an_attachment_handed_over_as_a_writable_view_opens_in_place(suite):
    """The runtime hands large received frames over as writable views: no copy is made."""
    frames = seal(
        SID, KEY, 0, NOW_MS, [Message(Kind.SEND, 1, body=Blob(b"z" * 100_000))], suite=suite
    )
    mine = memoryview(bytearray(frames[1]))
    (message,) = open_sealed([frames[0], mine], KEY, suite).messages
    assert bytes(message.body) == b"z" * 100_000
    assert bytes(mine[:100_000]) == b"z" * 100_000  # the plaintext is where the box was
    tampered = bytearray(frames[1])
    tampered[-1] ^= 1
    with pytest.raises(AuthenticationFailed):
        open_sealed([frames[0], memoryview(tampered)], KEY, suite)
    kept = bytearray(frames[1])  # anything else is not ours to change
    open_sealed([frames[0], kept], KEY, suite)
    assert kept == frames[1]
