"""The SEALED frame: one ZeroMQ multipart message, sealed under a session key.

Layout (protocol.md, "SEALED"): the first frame is a 10-byte clear header (version, type,
the receiver's session id), a random 24-byte nonce, and the secretbox of

    echo of the clear header (10) | seq u64 | timestamp ms u64 | credit grant:
    messages u32, bytes u64 | attachment count u8 | one nonce per attachment | payload

Each further frame is one attachment's secretbox under the same key and the nonce listed
for it in the first frame, so attachments cannot be swapped, dropped, reordered or moved
between envelopes without failing. The clear header is repeated inside the box and compared
after opening: no byte of the frame can change undetected.

That is suite 1 (XSalsa20-Poly1305, random nonces). Suite 2 (AES-256-GCM, negotiated in
the handshake) has the same layout and sizes; its box is the AEAD's ciphertext then tag,
with the first frame's clear header (nonce included) as associated data, and its nonces are
not random but made from the frame's seq (``seq u64 | index u32 | 12 zero bytes``, index 0
for the first frame, i + 1 for attachment i), which is never reused under one key: GCM's
96-bit nonces would be too short to draw at random for the frames a key may seal.

Pure functions over bytes and keys: the per-session state (sequence numbers, replay
window, key lifetime) lives in :mod:`mesh.core.session`.

Specified in protocol.md 7.1 (layout), 7.2 (session ids and freshness), 7.4 (clock skew).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from . import _gcm, _sodium
from ._gcm import GcmKey
from .codec import Message, decode_payload, encode_payload
from .errors import (
    AuthenticationFailed,
    EnvelopeTooLarge,
    LimitExceeded,
    MalformedEnvelope,
    UnsupportedVersion,
)
from .wire import (
    MAC_SIZE,
    MAX_ATTACHMENT,
    MAX_FIRST_FRAME,
    MAX_FRAMES,
    MAX_MESSAGE_TOTAL,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    SESSION_ID_SIZE,
    FrameType,
    Suite,
)

CLEAR = struct.Struct(">BB8s")
INNER = struct.Struct(">BB8sQQIQB")
CLEAR_SIZE = CLEAR.size  # 10
BOX_OFFSET = CLEAR_SIZE + NONCE_SIZE  # 34
MIN_SEALED_SIZE = BOX_OFFSET + MAC_SIZE + INNER.size
GCM_IV = _gcm.IV_SIZE
_SEALED = FrameType.SEALED
_VERSION = PROTOCOL_VERSION

Frame = bytes | bytearray | memoryview
_GCM = Suite.AES256_GCM
_GCM_NONCE = struct.Struct(">QI12x")  # seq, index, zeros: suite 2's nonce


def local_suites() -> tuple[Suite, ...]:
    """The suites this process can run, the preferred first: AES-256-GCM where the CPU has
    AES instructions (several times XSalsa20's speed on large messages), XSalsa20 always."""
    if _gcm.available():
        return (Suite.AES256_GCM, Suite.XSALSA20_POLY1305)
    return (Suite.XSALSA20_POLY1305,)


def gcm_library() -> str:
    """Which library runs suite 2 here: ``openssl`` (the ``fast`` extra) or ``libsodium``."""
    return _gcm.BACKEND.name


def gcm_nonce(seq: int, index: int) -> bytes:
    """Suite 2's nonce for part ``index`` of frame ``seq`` (0: the first frame, i + 1:
    attachment i); its first 12 bytes are the GCM nonce."""
    return _GCM_NONCE.pack(seq, index)


class Opened(NamedTuple):
    """What a SEALED message held, after authentication and decoding."""

    seq: int
    timestamp_ms: int
    grant_messages: int
    grant_bytes: int
    messages: list[Message]
    size: int = 0  # bytes of all frames: what flow control charges
    unmaterialised: tuple[int, ...] = ()  # messages holding arrays this process cannot build


def seal(
    session_id: bytes,
    key: bytes | GcmKey,
    seq: int,
    timestamp_ms: int,
    messages: Sequence[Message],
    grant: tuple[int, int] = (0, 0),
    _random: Callable[[int], bytes] = os.urandom,
    suite: Suite = Suite.XSALSA20_POLY1305,
) -> list[Frame]:
    """Seal ``messages`` into the frames of one SEALED message.

    ``_random`` is the private seam through which the test-vector generator fixes nonces;
    nothing else passes it. Raises :class:`InvalidBody` for unencodable bodies and
    :class:`EnvelopeTooLarge` when the result would break the protocol's size limits.
    ``key`` may be a suite 2 key prepared once (:func:`mesh.core._gcm.prepare`), as a
    session passes it.
    """
    payload, attachments = encode_payload(messages)
    return seal_payload(
        session_id, key, seq, timestamp_ms, payload, attachments, grant, _random, suite
    )


def seal_payload(
    session_id: bytes,
    key: bytes | GcmKey,
    seq: int,
    timestamp_ms: int,
    payload: bytes,
    attachments: Sequence[memoryview] = (),
    grant: tuple[int, int] = (0, 0),
    _random: Callable[[int], bytes] = os.urandom,
    suite: Suite = Suite.XSALSA20_POLY1305,
) -> list[Frame]:
    """:func:`seal` for a payload already encoded (coalesced rows, see
    :func:`~mesh.core.codec.payload_of_rows`)."""
    gcm = suite is _GCM
    if gcm:
        gcm_key = key if isinstance(key, GcmKey) else _gcm.prepare(bytes(key))
        nonces = [gcm_nonce(seq, index) for index in range(1, len(attachments) + 1)]
    else:
        nonces = [_random(NONCE_SIZE) for _ in attachments]
    inner_header = INNER.pack(
        _VERSION, _SEALED, session_id, seq, timestamp_ms, grant[0], grant[1], len(attachments)
    )
    plaintext = b"".join((inner_header, *nonces, payload))
    first_size = BOX_OFFSET + MAC_SIZE + len(plaintext)
    if first_size > MAX_FIRST_FRAME:
        raise EnvelopeTooLarge("first frame", first_size, MAX_FIRST_FRAME)
    first = bytearray(first_size)
    nonce = gcm_nonce(seq, 0) if gcm else _random(NONCE_SIZE)
    first[:CLEAR_SIZE] = inner_header[:CLEAR_SIZE]
    first[CLEAR_SIZE:BOX_OFFSET] = nonce
    if gcm:
        clear = bytes(first[:BOX_OFFSET])
        _gcm.seal_into(first, BOX_OFFSET, plaintext, nonce[:GCM_IV], gcm_key, clear)
    else:
        key = key.key if isinstance(key, GcmKey) else key
        _sodium.seal_into(first, BOX_OFFSET, plaintext, nonce, key)
    frames: list[Frame] = [first]
    total = first_size
    for buffer, attachment_nonce in zip(attachments, nonces, strict=True):
        if buffer.nbytes > MAX_ATTACHMENT:
            raise EnvelopeTooLarge("attachment", buffer.nbytes, MAX_ATTACHMENT)
        boxed = bytearray(buffer.nbytes + MAC_SIZE)
        if gcm:
            _gcm.seal_into(boxed, 0, buffer, attachment_nonce[:GCM_IV], gcm_key, b"")
        else:
            _sodium.seal_into(boxed, 0, buffer, attachment_nonce, key)
        total += len(boxed)
        frames.append(boxed)
    if total > MAX_MESSAGE_TOTAL:
        raise EnvelopeTooLarge("message", total, MAX_MESSAGE_TOTAL)
    return frames


def sealed_session_id(frames: Sequence[Frame]) -> bytes:
    """Check the clear header of a SEALED message and return its session id.

    Raises only :class:`MalformedEnvelope` subclasses.
    """
    count = len(frames)
    if not 0 < count <= MAX_FRAMES:
        raise LimitExceeded("frame count", count, MAX_FRAMES)
    first = frames[0]
    size = len(first)
    if size > MAX_FIRST_FRAME:
        raise EnvelopeTooLarge("first frame", size, MAX_FIRST_FRAME)
    if size < 2:
        raise MalformedEnvelope("frame too short for a header")
    if first[0] != _VERSION:
        raise UnsupportedVersion(first[0])
    if first[1] != _SEALED:
        raise MalformedEnvelope(f"frame type {first[1]} is not SEALED", reason="frame_type")
    if size < MIN_SEALED_SIZE:
        raise MalformedEnvelope("SEALED frame too short")
    return bytes(first[2 : 2 + SESSION_ID_SIZE])


def open_sealed(
    frames: Sequence[Frame], key: bytes | GcmKey, suite: Suite = Suite.XSALSA20_POLY1305
) -> Opened:
    """Authenticate and decode a SEALED message whose header :func:`sealed_session_id` passed.

    Raises only :class:`ProtocolError` subclasses: :class:`AuthenticationFailed` when any
    byte was altered or the key is not the sender's, :class:`MalformedEnvelope` otherwise.
    An attachment frame given as a writable memoryview is the caller's to consume: it is
    opened in place (and left undefined if it does not open).
    """
    first = memoryview(frames[0])
    gcm = suite is _GCM
    if gcm:
        key = key if isinstance(key, GcmKey) else _gcm.prepare(bytes(key))
        plain = _gcm.open_to_bytearray(
            first[BOX_OFFSET:], first[CLEAR_SIZE : CLEAR_SIZE + GCM_IV], key, first[:BOX_OFFSET]
        )
    else:
        key = key.key if isinstance(key, GcmKey) else key
        plain = _sodium.open_to_bytearray(first[BOX_OFFSET:], first[CLEAR_SIZE:BOX_OFFSET], key)
    if plain is None:
        raise AuthenticationFailed("SEALED frame does not open under the session key")
    if len(plain) < INNER.size or plain[:CLEAR_SIZE] != first[:CLEAR_SIZE]:
        raise AuthenticationFailed("clear header differs from its sealed copy")
    _, _, _, seq, timestamp, grant_messages, grant_bytes, count = INNER.unpack_from(plain)
    if count != len(frames) - 1:
        raise MalformedEnvelope(f"{count} attachments announced, {len(frames) - 1} received")
    nonces_end = INNER.size + count * NONCE_SIZE
    if len(plain) < nonces_end:
        raise MalformedEnvelope("attachment nonces truncated")
    body = memoryview(plain)
    if gcm and not _follows_gcm_nonces(first[CLEAR_SIZE:BOX_OFFSET], body, seq, count):
        raise MalformedEnvelope("suite 2 nonces must be made from the frame's seq")
    attachments = _open_attachments(frames, body[INNER.size : nonces_end], key, gcm)
    lacking: list[int] = []
    messages = decode_payload(body[nonces_end:], attachments, lacking)
    size = sum(len(frame) for frame in frames)
    return Opened(seq, timestamp, grant_messages, grant_bytes, messages, size, tuple(lacking))


def _follows_gcm_nonces(nonce: memoryview, inner: memoryview, seq: int, count: int) -> bool:
    """Whether a suite 2 frame's nonces are the ones its seq makes: a sender that broke the
    rule might have reused a nonce, which GCM cannot survive."""
    if nonce != gcm_nonce(seq, 0):
        return False
    if not count:
        return True
    listed = inner[INNER.size : INNER.size + count * NONCE_SIZE]
    expected = b"".join(gcm_nonce(seq, index) for index in range(1, count + 1))
    return listed == expected


def _open_attachments(
    frames: Sequence[Frame], nonces: memoryview, key: Any, gcm: bool = False
) -> list[bytearray | memoryview]:
    """Each attachment frame opened: in place when the caller handed it over as a writable
    memoryview (the runtime does so for the large ZeroMQ frames it received, which nobody
    else holds), into a new buffer otherwise."""
    opened: list[bytearray | memoryview] = []
    total = 0
    for index in range(1, len(frames)):
        frame = memoryview(frames[index])
        total += frame.nbytes
        if frame.nbytes > MAX_ATTACHMENT + MAC_SIZE:
            raise EnvelopeTooLarge("attachment", frame.nbytes, MAX_ATTACHMENT)
        if total > MAX_MESSAGE_TOTAL:
            raise EnvelopeTooLarge("message", total, MAX_MESSAGE_TOTAL)
        nonce = nonces[(index - 1) * NONCE_SIZE : index * NONCE_SIZE]
        plain: bytearray | memoryview | None
        given = frames[index]
        in_place = isinstance(given, memoryview) and not given.readonly
        if gcm:
            iv = nonce[:GCM_IV]
            if in_place:
                plain = _gcm.open_in_place(frame.cast("B"), iv, key, b"")
            else:
                plain = _gcm.open_to_bytearray(frame, iv, key, b"")
        elif in_place:
            plain = _sodium.open_in_place(frame.cast("B"), nonce, key)
        else:
            plain = _sodium.open_to_bytearray(frame, nonce, key)
        if plain is None:
            raise AuthenticationFailed(f"attachment {index - 1} does not open")
        opened.append(plain)
    return opened
