"""protocol.md's test vectors, checked byte for byte and read back independently."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import msgpack
import nacl.bindings
import nacl.exceptions
import pytest
from nacl._sodium import lib as nacl_lib

from mesh import Certificate, Message, Trust
from mesh.core.envelope import open_sealed
from mesh.core.topic_frame import TopicKey, open_publish
from mesh.core.wire import Kind
from tests.vectors import NOW_MS, compute, parse

SPEC = Path(__file__).resolve().parent.parent / "protocol.md"
BLOCK = re.compile(r"<!-- vectors:begin -->\n```text\n(.*?)```\n<!-- vectors:end -->", re.S)


@pytest.fixture(scope="module")
def documented() -> dict[str, dict[str, bytes]]:
    match = BLOCK.search(SPEC.read_text())
    assert match, "protocol.md has no vectors block"
    return parse(match.group(1))


def test_spec_vectors_match_the_implementation_byte_for_byte(documented):
    computed = compute()
    assert list(documented) == list(computed)
    for name, fields in computed.items():
        for field, value in fields.items():
            assert documented[name][field] == value, f"{name}.{field} differs from protocol.md"


def test_documented_certificates_verify_with_the_documented_authority(documented):
    trust = Trust(documented["authority"]["verify_key"])
    for who in ("alice", "bob"):
        cert = Certificate.from_bytes(documented[who]["certificate"])
        trust.verify(cert, NOW_MS)
        assert cert.node_id == documented[who]["node_id"]


def test_documented_frames_open_with_the_documented_keys(documented):
    i2r = documented["handshake"]["key_initiator_to_responder"]
    r2i = documented["handshake"]["key_responder_to_initiator"]
    request = open_sealed([documented["request"]["frame0"]], i2r)
    assert request.messages == [Message(Kind.REQUEST, 1, name="echo", body={"x": 1}, ttl_ms=2000)]
    assert (request.seq, request.timestamp_ms) == (0, NOW_MS)
    reply = open_sealed([documented["reply"]["frame0"]], r2i)
    assert (reply.grant_messages, reply.grant_bytes) == (16, 65536)
    attachment = documented["attachment"]
    blob = open_sealed([attachment["frame0"], attachment["frame1"]], i2r).messages[0].body
    assert bytes(blob) == b"\x00\x01\x02\x03"
    assert documented["reject"]["frame"][:3] == b"\x01\x05\x02"
    reliable = open_sealed([documented["delivery"]["frame0"]], i2r).messages
    assert reliable == [
        Message(Kind.REQUEST, 6, name="record", body=7, meta={"dlv": [0x5EED, 3, 2]})
    ]
    burst = open_sealed([documented["coalesced"]["frame0"]], i2r)
    assert burst.messages == [Message(Kind.SEND, 8 + i, name="tick", body=i) for i in range(3)]
    assert (burst.seq, burst.timestamp_ms) == (3, NOW_MS + 6)
    redirect = open_sealed([documented["redirect"]["frame0"]], r2i)
    assert redirect.messages == [
        Message(Kind.STREAM_END, 10, corr_id=1, body={"ticket": "5eed"},
                meta={"redirect": {"peer": "carol", "method": "resume"}})
    ]  # fmt: skip


def test_documented_aes256gcm_frames_open_with_libsodium_alone(documented):
    """Suite 2 read from protocol.md's text with PyNaCl's AES-256-GCM, no mesh code."""
    if not nacl_lib.crypto_aead_aes256gcm_is_available():
        pytest.fail("this CPU has no AES instructions: suite 2 cannot be checked here")
    hello = documented["handshake_aes256gcm"]["hello"]
    assert hello[:3] == b"\x01\x01\x02"  # version, HELLO, suite 2: offered, and signed
    key = documented["handshake_aes256gcm"]["key_initiator_to_responder"]
    frame0 = documented["request_aes256gcm"]["frame0"]
    frame1 = documented["request_aes256gcm"]["frame1"]
    clear = frame0[:34]
    assert frame0[10:34] == struct.pack(">QI12x", 0, 0)  # seq 0, index 0, zeros
    inner = nacl.bindings.crypto_aead_aes256gcm_decrypt(frame0[34:], clear, frame0[10:22], key)
    assert inner[:10] == clear[:10]
    seq, timestamp, grant_messages, grant_bytes, count = struct.unpack_from(">QQIQB", inner, 10)
    assert (seq, timestamp, grant_messages, grant_bytes, count) == (0, NOW_MS + 7, 0, 0, 1)
    listed = inner[39:63]
    assert listed == struct.pack(">QI12x", 0, 1)  # attachment 0: seq 0, index 1
    blob = nacl.bindings.crypto_aead_aes256gcm_decrypt(frame1, b"", listed[:12], key)
    assert blob == b"\x00\x01\x02\x03"
    (message,) = msgpack.unpackb(inner[63:], raw=False)
    assert message[:3] == [Kind.REQUEST, 9, 0] and "echo" in message
    altered = bytes([clear[0], clear[1] ^ 1]) + clear[2:]
    with pytest.raises(nacl.exceptions.CryptoError):  # the clear header is authenticated
        nacl.bindings.crypto_aead_aes256gcm_decrypt(frame0[34:], altered, frame0[10:22], key)


def test_documented_publish_frame_opens_and_verifies(documented):
    topic = TopicKey("$directory", documented["publish"]["topic_key"], 0x0E0E0E0E)
    assert topic.tag == documented["publish"]["tag"]
    alice = Certificate.from_bytes(documented["alice"]["certificate"])
    opened = open_publish([documented["publish"]["frame"]], topic, alice, NOW_MS, 1000)
    assert opened.seq == 1
    assert opened.messages == [Message(Kind.EVENT, 3, name="JOIN", body={"type": "JOIN"})]


def test_documented_topic_message_and_probe(documented):
    vector = documented["topic"]
    orders = TopicKey("orders.new", vector["topic_key"], 0x0A0B0C0D)
    assert orders.tag == vector["tag"]
    alice = Certificate.from_bytes(documented["alice"]["certificate"])
    message = open_publish([vector["message"]], orders, alice, NOW_MS, 1000)
    probe = open_publish([vector["probe"]], orders, alice, NOW_MS, 1000)
    assert (message.seq, message.timestamp_ms) == (42, NOW_MS + 3)
    assert message.messages == [Message(Kind.PUBLISH, 4, name="orders.new", body={"id": 7})]
    assert (probe.seq, probe.timestamp_ms) == (42, NOW_MS + 4)
    assert probe.messages == [Message(Kind.TOPIC_PROBE, 5, name="orders.new")]


def test_the_machine_readable_vectors_are_the_documented_ones(documented):
    machine = json.loads((SPEC.parent / "protocol-vectors.json").read_text())
    assert machine == {
        name: {field: value.hex() for field, value in fields.items()}
        for name, fields in documented.items()
    }
