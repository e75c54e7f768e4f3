"""Deterministic test vectors for protocol.md (private: only the spec and the tests use it).

Real code never picks a nonce or an ephemeral key; this module does, through the private
``_random`` seam of the handshake and the envelope codec, so that the bytes are the same on
every run and another implementation can check itself against them. The vectors are
rendered into protocol.md's "Test vectors" section by ``scripts/gen-vectors``; the tests
parse that section and demand the same bytes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable

from nacl.signing import SigningKey

from mesh.core.codec import Blob, Message, encode_row, payload_of_rows
from mesh.core.envelope import seal, seal_payload
from mesh.core.errors import Unauthorized
from mesh.core.handshake import Initiator, Responder
from mesh.core.identity import Authority, Identity, Trust
from mesh.core.session import Session, SessionTable
from mesh.core.topic_frame import TopicKey, seal_publish
from mesh.core.wire import Kind, Suite

NOW_MS = 1_790_000_000_000  # 2026-09-21T14:13:20Z
NOT_BEFORE = NOW_MS // 1000 - 3600
LIFETIME_S = 86_400 * 365


def deterministic_random(label: bytes) -> Callable[[int], bytes]:
    """A byte source: BLAKE2b(label | counter), so vectors never depend on the OS."""
    counter = 0

    def draw(size: int) -> bytes:
        nonlocal counter
        out = b""
        while len(out) < size:
            out += hashlib.blake2b(label + struct.pack(">I", counter)).digest()
            counter += 1
        return out[:size]

    return draw


def _seed(name: str) -> bytes:
    return hashlib.blake2b(name.encode(), digest_size=32, person=b"agent-mesh-vec").digest()


def compute() -> dict[str, dict[str, bytes]]:
    """Every vector, as ``{vector name: {field: bytes}}``, in protocol.md's order."""
    authority = Authority(SigningKey(_seed("authority")))
    alice = authority.issue_for(
        Identity.from_secrets("alice", _seed("alice box"), _seed("alice sign")),
        not_before=NOT_BEFORE,
        capabilities=["echo"],
        lifetime_s=LIFETIME_S,
    )
    bob = authority.issue_for(
        Identity.from_secrets("bob", _seed("bob box"), _seed("bob sign")),
        not_before=NOT_BEFORE,
        lifetime_s=LIFETIME_S,
    )
    vectors: dict[str, dict[str, bytes]] = {
        "authority": {
            "seed": _seed("authority"),
            "verify_key": authority.verify_key,
            "authority_id": authority.authority_id,
        },
    }
    for who in (alice, bob):
        vectors[who.name] = {
            "box_secret": bytes(who.box_key),
            "box_public": who.box_public,
            "sign_seed": bytes(who.signing_key),
            "sign_public": who.sign_public,
            "node_id": who.node_id,
            "certificate": who.require_certificate().to_bytes(),
        }
    trust = authority.trust()
    initiator, welcome, alice_session, bob_session = _handshake(
        alice, bob, trust, Suite.XSALSA20_POLY1305, b""
    )
    vectors["handshake"] = _handshake_vector(initiator, welcome, alice_session)
    request = Message(Kind.REQUEST, 1, name="echo", body={"x": 1}, ttl_ms=2000)
    frames = seal(
        alice_session.send_id,
        alice_session._send_key,
        0,
        NOW_MS,
        [request],
        grant=(0, 0),
        _random=deterministic_random(b"request"),
    )
    vectors["request"] = {"frame0": bytes(frames[0])}
    reply = Message(Kind.REPLY, 7, corr_id=1, body={"x": 1})
    frames = seal(
        bob_session.send_id,
        bob_session._send_key,
        0,
        NOW_MS + 1,
        [reply],
        grant=(16, 65536),
        _random=deterministic_random(b"reply"),
    )
    vectors["reply"] = {"frame0": bytes(frames[0])}
    blob = Message(Kind.SEND, 2, name="blob", body=Blob(b"\x00\x01\x02\x03"))
    frames = seal(
        alice_session.send_id,
        alice_session._send_key,
        1,
        NOW_MS + 2,
        [blob],
        _random=deterministic_random(b"blob"),
    )
    vectors["attachment"] = {"frame0": bytes(frames[0]), "frame1": bytes(frames[1])}
    topic = TopicKey("$directory", _seed("topic key"), 0x0E0E0E0E)
    event = Message(Kind.EVENT, 3, name="JOIN", body={"type": "JOIN"})
    published = seal_publish(
        alice, topic, 1, NOW_MS, [event], _random=deterministic_random(b"publish")
    )
    vectors["publish"] = {"topic_key": topic.key, "tag": topic.tag, "frame": bytes(published[0])}
    orders = TopicKey("orders.new", _seed("orders key"), 0x0A0B0C0D)
    draw = deterministic_random(b"topic")
    message = Message(Kind.PUBLISH, 4, name="orders.new", body={"id": 7})
    topic_message = seal_publish(alice, orders, 42, NOW_MS + 3, [message], _random=draw)
    probe = Message(Kind.TOPIC_PROBE, 5, name="orders.new")
    topic_probe = seal_publish(alice, orders, 42, NOW_MS + 4, [probe], _random=draw)
    vectors["topic"] = {
        "topic_key": orders.key,
        "tag": orders.tag,
        "message": bytes(topic_message[0]),
        "probe": bytes(topic_probe[0]),
    }
    reliable = Message(
        Kind.REQUEST, 6, name="record", body=7, meta={"dlv": [0x5EED, 3, 2]}
    )  # protocol.md 8.2: stream 0x5EED, seq 3, lowest unacknowledged 2
    frames = seal(
        alice_session.send_id,
        alice_session._send_key,
        2,
        NOW_MS + 5,
        [reliable],
        _random=deterministic_random(b"delivery"),
    )
    vectors["delivery"] = {"frame0": bytes(frames[0])}
    burst = [Message(Kind.SEND, 8 + i, name="tick", body=i) for i in range(3)]
    rows = [encode_row(m) or b"" for m in burst]  # protocol.md 11.1: coalesced one-way sends
    frames = seal_payload(
        alice_session.send_id,
        alice_session._send_key,
        3,
        NOW_MS + 6,
        payload_of_rows(rows),
        _random=deterministic_random(b"coalesced"),
    )
    vectors["coalesced"] = {"frame0": bytes(frames[0])}
    redirect = Message(
        Kind.STREAM_END,
        10,
        corr_id=1,
        body={"ticket": "5eed"},
        meta={"redirect": {"peer": "carol", "method": "resume"}},
    )  # protocol.md 8.1: the stream goes on at carol's resume
    frames = seal(
        bob_session.send_id,
        bob_session._send_key,
        1,
        NOW_MS + 8,
        [redirect],
        _random=deterministic_random(b"redirect"),
    )
    vectors["redirect"] = {"frame0": bytes(frames[0])}
    rejected = Responder.reject_frames(initiator.hello_frames(), Unauthorized("other authority"))
    assert rejected is not None
    vectors["reject"] = {"frame": bytes(rejected[0])}
    vectors.update(_aes256gcm(alice, bob, trust))
    return vectors


def _handshake(
    alice: Identity, bob: Identity, trust: Trust, suite: Suite, label: bytes
) -> tuple[Initiator, list, Session, Session]:
    """Alice (table epoch 0x000A11CE) handshakes with bob (0x00000B0B) offering ``suite``,
    her draws labelled ``hello``, his ``welcome`` (plus ``label``)."""
    initiator = Initiator(
        alice,
        trust,
        bob.require_certificate(),
        SessionTable(epoch=0xA11CE),
        NOW_MS,
        suite=suite,
        _random=deterministic_random(b"hello" + label),
    )
    responder = Responder(
        bob,
        trust,
        SessionTable(epoch=0xB0B),
        suites=(Suite.AES256_GCM, Suite.XSALSA20_POLY1305),
        _random=deterministic_random(b"welcome" + label),
    )
    bob_session, welcome = responder.receive(initiator.hello_frames(), NOW_MS)
    return initiator, welcome, initiator.receive(welcome, NOW_MS), bob_session


def _handshake_vector(initiator: Initiator, welcome: list, session: Session) -> dict[str, bytes]:
    return {
        "hello": initiator.hello,
        "welcome": bytes(welcome[0]),
        "key_initiator_to_responder": session._send_key,
        "key_responder_to_initiator": session._recv_key,
    }


def _aes256gcm(alice: Identity, bob: Identity, trust: Trust) -> dict[str, dict[str, bytes]]:
    """Suite 2: a handshake offering AES-256-GCM, then a request with an attachment sealed
    under it (its nonces come from the seq: nothing random after the handshake)."""
    initiator, welcome, session, _ = _handshake(alice, bob, trust, Suite.AES256_GCM, b" gcm")
    request = Message(Kind.REQUEST, 9, name="echo", body=Blob(b"\x00\x01\x02\x03"))
    frames = seal(
        session.send_id, session._send_key, 0, NOW_MS + 7, [request], suite=Suite.AES256_GCM
    )
    return {
        "handshake_aes256gcm": _handshake_vector(initiator, welcome, session),
        "request_aes256gcm": {"frame0": bytes(frames[0]), "frame1": bytes(frames[1])},
    }


def render(vectors: dict[str, dict[str, bytes]], width: int = 64) -> str:
    """The vectors as protocol.md shows them: ``field:`` then hex wrapped at ``width``."""
    lines: list[str] = []
    for name, fields in vectors.items():
        lines.append(f"vector {name}")
        for field, value in fields.items():
            text = value.hex()
            chunks = [text[i : i + width] for i in range(0, len(text), width)] or [""]
            lines.append(f"  {field}: {chunks[0]}")
            lines.extend(f"    {chunk}" for chunk in chunks[1:])
    return "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, dict[str, bytes]]:
    """Read what :func:`render` wrote (the test reads protocol.md with this)."""
    parts: dict[str, dict[str, list[str]]] = {}
    fields: dict[str, list[str]] = {}
    field = ""
    for raw in text.splitlines():
        if raw.startswith("vector "):
            fields = parts.setdefault(raw.split()[1], {})
        elif raw.startswith("    "):
            fields[field].append(raw.strip())
        elif raw.startswith("  "):
            field, _, value = raw.strip().partition(": ")
            fields[field] = [value]
    return {
        name: {f: bytes.fromhex("".join(chunks)) for f, chunks in found.items()}
        for name, found in parts.items()
    }
