"""protocol.md's vectors recomputed from the spec's formulas alone: no import from ``mesh``.

Only PyNaCl (the NaCl primitives and libsodium's AES-256-GCM), hashlib's BLAKE2b, msgpack
and struct, following sections 2, 5, 6, 7, 11.1 and 16 as an implementer in another language
would. ``protocol-vectors.json`` is the machine-readable copy of section 16 (checked against
the text by tests/test_vectors.py); when the code, the text or this reading drift apart,
this fails.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
from nacl.bindings import (
    crypto_aead_aes256gcm_encrypt,
    crypto_box_beforenm,
    crypto_scalarmult_base,
    crypto_secretbox,
)
from nacl.public import Box, PrivateKey, PublicKey
from nacl.signing import SigningKey

VECTORS = json.loads((Path(__file__).resolve().parent.parent / "protocol-vectors.json").read_text())
NOW = 1_790_000_000_000  # section 16: the handshake's time, ms
NOT_BEFORE = 1_789_996_400
WINDOW = [1024, 67_108_864]  # the default window both sides grant


CHECKED: set[tuple[str, str]] = set()  # every field compared, so none goes unchecked


def expected(vector: str, field: str) -> bytes:
    CHECKED.add((vector, field))
    return bytes.fromhex(VECTORS[vector][field])


def blake2b(data: bytes, size: int, person: bytes = b"", key: bytes = b"") -> bytes:
    return hashlib.blake2b(data, digest_size=size, person=person, key=key).digest()


def seed(label: str) -> bytes:
    return blake2b(label.encode(), 32, b"agent-mesh-vec")


def draws(label: bytes) -> Callable[[int], bytes]:
    """Section 16: the i-th draw is the first n bytes of BLAKE2b(label || u32 i, 64)."""
    counter = iter(range(1 << 32))

    def draw(size: int) -> bytes:
        return blake2b(label + struct.pack(">I", next(counter)), 64)[:size]

    return draw


def pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # the shortest encodings (section 2)


class Member:
    """A certified identity, from its seeds (sections 2 and 5)."""

    def __init__(self, name: str, authority: SigningKey, capabilities: list[str]) -> None:
        self.box_secret = seed(f"{name} box")
        self.box_public = crypto_scalarmult_base(self.box_secret)
        self.signing = SigningKey(seed(f"{name} sign"))
        self.sign_public = bytes(self.signing.verify_key)
        self.node_id = blake2b(self.box_public + self.sign_public, 16, b"agent-mesh-node")
        authority_id = blake2b(bytes(authority.verify_key), 16, b"agent-mesh-auth")
        body = pack(
            [1, name, self.box_public, self.sign_public, capabilities, NOT_BEFORE,
             NOT_BEFORE + 365 * 86_400, authority_id]
        )  # fmt: skip
        signature = authority.sign(b"agent-mesh certificate v1\x00" + body).signature
        self.certificate = pack([body, signature])


@pytest.fixture(scope="module")
def mesh() -> dict[str, object]:
    authority = SigningKey(seed("authority"))
    return {
        "authority": authority,
        "alice": Member("alice", authority, ["echo"]),
        "bob": Member("bob", authority, []),
    }


def test_keys_ids_and_certificates(mesh):
    authority = mesh["authority"]
    assert seed("authority") == expected("authority", "seed")
    assert bytes(authority.verify_key) == expected("authority", "verify_key")
    assert blake2b(bytes(authority.verify_key), 16, b"agent-mesh-auth") == expected(
        "authority", "authority_id"
    )
    for name in ("alice", "bob"):
        member = mesh[name]
        assert member.box_secret == expected(name, "box_secret")
        assert seed(f"{name} sign") == expected(name, "sign_seed")
        assert member.box_public == expected(name, "box_public")
        assert member.sign_public == expected(name, "sign_public")
        assert member.node_id == expected(name, "node_id")
        assert member.certificate == expected(name, "certificate")


def handshake(mesh, suite: int, labels: tuple[bytes, bytes]) -> tuple[bytes, bytes, bytes, bytes]:
    """Section 6 for alice (initiator, table epoch 0x000A11CE) and bob (0x00000B0B):
    HELLO, WELCOME and the two session keys."""
    alice, bob = mesh["alice"], mesh["bob"]
    hello_draw, welcome_draw = (draws(label) for label in labels)
    i_secret = hello_draw(32)  # used directly as the X25519 secret
    i_public = crypto_scalarmult_base(i_secret)
    alice_recv = struct.pack(">II", 0x000A11CE, 1)
    clear = bytes([1, 1, suite]) + i_public + bob.node_id
    fields = pack([alice.certificate, NOW, alice_recv, *WINDOW])
    signature = alice.signing.sign(b"agent-mesh hello v1\x00" + clear + fields).signature
    nonce = hello_draw(24)
    sealed = Box(PrivateKey(i_secret), PublicKey(bob.box_public)).encrypt(
        pack([fields, signature]), nonce
    )
    hello = clear + nonce + sealed.ciphertext

    r_secret = welcome_draw(32)
    bob_recv = struct.pack(">II", 0x00000B0B, 1)
    clear = bytes([1, 2]) + crypto_scalarmult_base(r_secret) + alice_recv
    fields = pack([bob.certificate, NOW, bob_recv, *WINDOW])
    signed = b"agent-mesh welcome v1\x00" + blake2b(hello, 32) + clear + fields
    signature = bob.signing.sign(signed).signature
    nonce = welcome_draw(24)
    sealed = Box(PrivateKey(r_secret), PublicKey(i_public)).encrypt(
        pack([fields, signature]), nonce
    )
    welcome = clear + nonce + sealed.ciphertext

    shared = crypto_box_beforenm(i_public, r_secret)
    transcript = blake2b(hello + welcome, 32)
    i2r = blake2b(transcript, 32, b"agent-mesh i2r 1", shared)
    r2i = blake2b(transcript, 32, b"agent-mesh r2i 1", shared)
    return hello, welcome, i2r, r2i


HANDSHAKES = [
    ("handshake", 1, (b"hello", b"welcome")),
    ("handshake_aes256gcm", 2, (b"hello gcm", b"welcome gcm")),
]


@pytest.mark.parametrize(("vector", "suite", "labels"), HANDSHAKES)
def test_handshakes_and_session_keys(mesh, vector, suite, labels):
    hello, welcome, i2r, r2i = handshake(mesh, suite, labels)
    assert hello == expected(vector, "hello")
    assert welcome == expected(vector, "welcome")
    assert i2r == expected(vector, "key_initiator_to_responder")
    assert r2i == expected(vector, "key_responder_to_initiator")


def test_reject(mesh):
    i_public = crypto_scalarmult_base(draws(b"hello")(32))
    assert bytes([1, 5, 2]) + i_public == expected("reject", "frame")


def row(kind: int, msg_id: int, corr: int = 0, name: str = "", ttl: int = 0, body=None, meta=None):
    return [kind, msg_id, corr, name, ttl, body, meta]


BLOB = msgpack.ExtType(1, pack([0, 0]))  # attachment 0, kind 0 (a blob): section 7.7
REQUEST, REPLY, SEND, STREAM_END, EVENT, PUBLISH, TOPIC_PROBE = 1, 2, 4, 6, 25, 30, 33  # 7.6


def sealed(
    receiver_id: bytes,
    key: bytes,
    seq: int,
    at: int,
    rows: list,
    *,
    grant=(0, 0),
    attachments: tuple[bytes, ...] = (),
    draw=None,
    suite: int = 1,
) -> list[bytes]:
    """Section 7.1: the first frame and one frame per attachment."""
    if suite == 1:
        nonces = [draw(24) for _ in attachments]  # attachments' nonces are drawn first
        nonce = draw(24)
    else:
        nonces = [struct.pack(">QI12x", seq, i + 1) for i in range(len(attachments))]
        nonce = struct.pack(">QI12x", seq, 0)
    header = bytes([1, 3]) + receiver_id
    inner = (
        header
        + struct.pack(">QQIQB", seq, at, grant[0], grant[1], len(attachments))
        + b"".join(nonces)
        + pack(rows)
    )
    if suite == 1:
        first = header + nonce + crypto_secretbox(inner, nonce, key)
        boxes = [crypto_secretbox(a, n, key) for a, n in zip(attachments, nonces, strict=True)]
    else:
        first = header + nonce
        first += crypto_aead_aes256gcm_encrypt(inner, first, nonce[:12], key)
        boxes = [
            crypto_aead_aes256gcm_encrypt(a, b"", n[:12], key)
            for a, n in zip(attachments, nonces, strict=True)
        ]
    return [first, *boxes]


def test_sealed_frames(mesh):
    _, _, i2r, r2i = handshake(mesh, 1, (b"hello", b"welcome"))
    bob_id, alice_id = struct.pack(">II", 0x00000B0B, 1), struct.pack(">II", 0x000A11CE, 1)
    frames = {
        "request": sealed(bob_id, i2r, 0, NOW, [row(REQUEST, 1, name="echo", ttl=2000,
                          body={"x": 1})], draw=draws(b"request")),
        "reply": sealed(alice_id, r2i, 0, NOW + 1, [row(REPLY, 7, 1, body={"x": 1})],
                        grant=(16, 65536), draw=draws(b"reply")),
        "attachment": sealed(bob_id, i2r, 1, NOW + 2, [row(SEND, 2, name="blob", body=BLOB)],
                             attachments=(b"\x00\x01\x02\x03",), draw=draws(b"blob")),
        "delivery": sealed(bob_id, i2r, 2, NOW + 5, [row(REQUEST, 6, name="record", body=7,
                           meta={"dlv": [0x5EED, 3, 2]})], draw=draws(b"delivery")),
        "coalesced": sealed(bob_id, i2r, 3, NOW + 6, [row(SEND, 8 + i, name="tick", body=i)
                            for i in range(3)], draw=draws(b"coalesced")),
        "redirect": sealed(alice_id, r2i, 1, NOW + 8, [row(STREAM_END, 10, 1, body={"ticket":
                           "5eed"}, meta={"redirect": {"peer": "carol", "method": "resume"}})],
                           draw=draws(b"redirect")),
    }  # fmt: skip
    for vector, computed in frames.items():
        for index, frame in enumerate(computed):
            assert frame == expected(vector, f"frame{index}"), f"{vector}.frame{index}"


def test_a_suite_2_request(mesh):
    _, _, i2r, _ = handshake(mesh, 2, (b"hello gcm", b"welcome gcm"))
    bob_id = struct.pack(">II", 0x00000B0B, 1)
    frames = sealed(bob_id, i2r, 0, NOW + 7, [row(REQUEST, 9, name="echo", body=BLOB)],
                    attachments=(b"\x00\x01\x02\x03",), suite=2)  # fmt: skip
    assert frames == [expected("request_aes256gcm", "frame0"),
                      expected("request_aes256gcm", "frame1")]  # fmt: skip


def publish(member: Member, topic: str, key: bytes, key_id: int, seq: int, at: int, rows,
            draw) -> bytes:  # fmt: skip
    """Section 7.8: a PUBLISH frame, signed by the publisher, sealed with the topic key."""
    tag = blake2b(topic.encode(), 16, b"agent-mesh topic", key)
    clear = bytes([1, 4]) + tag + struct.pack(">I", key_id) + member.node_id
    unsigned = clear + struct.pack(">QQB", seq, at, 0) + pack(rows)
    signature = member.signing.sign(b"agent-mesh publish v1\x00" + unsigned).signature
    nonce = draw(24)
    return clear + nonce + crypto_secretbox(unsigned + signature, nonce, key)


def test_topic_frames(mesh):
    alice = mesh["alice"]
    key = blake2b(b"topic key", 32, b"agent-mesh-vec")
    assert key == expected("publish", "topic_key")
    assert blake2b(b"$directory", 16, b"agent-mesh topic", key) == expected("publish", "tag")
    event = [row(EVENT, 3, name="JOIN", body={"type": "JOIN"})]
    frame = publish(alice, "$directory", key, 0x0E0E0E0E, 1, NOW, event, draws(b"publish"))
    assert frame == expected("publish", "frame")

    orders = blake2b(b"orders key", 32, b"agent-mesh-vec")
    assert orders == expected("topic", "topic_key")
    assert blake2b(b"orders.new", 16, b"agent-mesh topic", orders) == expected("topic", "tag")
    draw = draws(b"topic")
    message = publish(alice, "orders.new", orders, 0x0A0B0C0D, 42, NOW + 3,
                      [row(PUBLISH, 4, name="orders.new", body={"id": 7})], draw)  # fmt: skip
    probe = publish(alice, "orders.new", orders, 0x0A0B0C0D, 42, NOW + 4,
                    [row(TOPIC_PROBE, 5, name="orders.new")], draw)  # fmt: skip
    assert (message, probe) == (expected("topic", "message"), expected("topic", "probe"))


def test_every_documented_field_is_recomputed(mesh):
    """protocol-vectors.json holds nothing this file does not recompute: a vector added to
    the spec without its formula here fails."""
    CHECKED.clear()
    test_keys_ids_and_certificates(mesh)
    for vector, suite, labels in HANDSHAKES:
        test_handshakes_and_session_keys(mesh, vector, suite, labels)
    test_reject(mesh)
    test_sealed_frames(mesh)
    test_a_suite_2_request(mesh)
    test_topic_frames(mesh)
    assert {(vector, field) for vector, fields in VECTORS.items() for field in fields} == CHECKED
