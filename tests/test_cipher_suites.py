"""Cipher suite 2 (AES-256-GCM): negotiated where both sides run it, XSalsa20 otherwise.

protocol.md 6.1 (the offer), 7.1 (the frames), 9 (``suites`` in directory entries).
"""

from __future__ import annotations

import nacl.bindings
import numpy as np
import pytest

from mesh import (
    AuthenticationFailed,
    Blob,
    HandshakeRejected,
    Initiator,
    MalformedEnvelope,
    Message,
    Responder,
    SessionTable,
)
from mesh.core import _gcm
from mesh.core.codec import encode_payload
from mesh.core.envelope import (
    BOX_OFFSET,
    CLEAR_SIZE,
    INNER,
    gcm_nonce,
    local_suites,
    open_sealed,
    seal,
)
from mesh.core.wire import Kind, RejectCode, Suite
from mesh.runtime.discovery import DiscoveryServer
from mesh.runtime.node import Node
from tests.conftest import NOW_MS, eventually

GCM, XSALSA = Suite.AES256_GCM, Suite.XSALSA20_POLY1305
SID = b"\x00\x00\x00\x01\x00\x00\x00\x02"
KEY = bytes(range(32))


def test_this_machine_runs_suite_2():
    # CI's machine has AES instructions; without them suite 2 is never offered, and the
    # tests below that need it would prove nothing: say so instead of passing
    assert local_suites() == (GCM, XSALSA), "no AES-256-GCM here: suite 2 is untested"


def test_suite_2_round_trips_bodies_and_attachments():
    body = [Blob(b"x" * 100_000), np.arange(1000, dtype=np.float32), {"k": "v"}]
    message = Message(Kind.REQUEST, 7, name="m", body=body, meta={"a": 1})
    frames = seal(SID, KEY, 5, NOW_MS, [message], grant=(3, 4), suite=GCM)
    assert len(frames) == 3
    assert bytes(frames[0][CLEAR_SIZE:BOX_OFFSET]) == gcm_nonce(5, 0)  # from the seq
    opened = open_sealed(frames, KEY, GCM)
    assert (opened.seq, opened.grant_messages, opened.grant_bytes) == (5, 3, 4)
    got = opened.messages[0].body
    assert bytes(got[0]) == b"x" * 100_000
    assert np.array_equal(got[1], np.arange(1000, dtype=np.float32)) and got[2] == {"k": "v"}


def test_a_frame_opens_only_under_the_suite_it_was_sealed_with():
    message = [Message(Kind.SEND, 1, name="m", body=b"hi")]
    with pytest.raises(AuthenticationFailed):
        open_sealed(seal(SID, KEY, 0, NOW_MS, message, suite=GCM), KEY, XSALSA)
    with pytest.raises(AuthenticationFailed):
        open_sealed(seal(SID, KEY, 0, NOW_MS, message), KEY, GCM)


def test_every_bit_of_a_suite_2_frame_is_protected():
    body = [Blob(b"attached")]
    frames = [
        bytes(f) for f in seal(SID, KEY, 9, NOW_MS, [Message(Kind.SEND, 1, body=body)], suite=GCM)
    ]
    for index, frame in enumerate(frames):
        for bit in range(len(frame) * 8):  # the clear nonce's zero tail included
            mutated = list(frames)
            flipped = bytearray(frame)
            flipped[bit // 8] ^= 1 << (bit % 8)
            mutated[index] = bytes(flipped)
            with pytest.raises((AuthenticationFailed, MalformedEnvelope)):
                open_sealed(mutated, KEY, GCM)


def test_suite_2_nonces_that_do_not_follow_the_seq_are_refused():
    """An authentic frame whose sender drew its own nonce: it may reuse one, which GCM
    cannot survive, so the receiver refuses it."""
    payload, _ = encode_payload([Message(Kind.SEND, 1, name="m")])
    inner = INNER.pack(1, 3, SID, 4, NOW_MS, 0, 0, 0) + payload
    nonce = gcm_nonce(3, 0)  # the nonce of seq 3, sealing seq 4
    frame = bytearray(BOX_OFFSET + 16 + len(inner))
    frame[:CLEAR_SIZE] = inner[:CLEAR_SIZE]
    frame[CLEAR_SIZE:BOX_OFFSET] = nonce
    _gcm.seal_into(
        frame, BOX_OFFSET, inner, nonce[:12], _gcm.prepare(KEY), bytes(frame[:BOX_OFFSET])
    )
    with pytest.raises(MalformedEnvelope, match="seq"):
        open_sealed([bytes(frame)], KEY, GCM)


def offer(caller, callee, trust, suite: Suite) -> Initiator:
    certificate = callee.require_certificate()
    return Initiator(caller, trust, certificate, SessionTable(), NOW_MS, suite=suite)


def test_a_handshake_offering_suite_2_to_a_node_running_it_agrees_on_it(alice, bob, trust):
    initiator = Initiator(
        alice, trust, bob.require_certificate(), SessionTable(), NOW_MS, suite=GCM
    )
    responder = Responder(bob, trust, SessionTable(), suites=(GCM, XSALSA))
    bob_session, welcome = responder.receive(initiator.hello_frames(), NOW_MS)
    alice_session = initiator.receive(welcome, NOW_MS)
    assert alice_session.suite is GCM and bob_session.suite is GCM
    frames = alice_session.seal([Message(Kind.REQUEST, 1, name="m", body=Blob(b"abc"))], NOW_MS)
    assert bytes(bob_session.open(frames, NOW_MS).messages[0].body) == b"abc"
    with pytest.raises(AuthenticationFailed):  # not a suite 1 frame
        open_sealed(frames, alice_session._send_key, XSALSA)


def test_a_node_without_suite_2_refuses_its_hello_with_a_reject(alice, bob, trust):
    initiator = offer(alice, bob, trust, GCM)
    responder = Responder(bob, trust, SessionTable(), suites=(XSALSA,))
    with pytest.raises(MalformedEnvelope) as refused:
        responder.receive(initiator.hello_frames(), NOW_MS)
    assert refused.value.reason == "suite"
    reject = Responder.reject_frames(initiator.hello_frames(), refused.value)
    assert reject is not None
    with pytest.raises(HandshakeRejected) as told:
        initiator.receive(reject, NOW_MS)
    assert told.value.code == RejectCode.UNSUPPORTED_SUITE


def test_the_offered_suite_cannot_be_changed_in_transit(alice, bob, trust):
    initiator = offer(alice, bob, trust, XSALSA)
    responder = Responder(bob, trust, SessionTable(), suites=(GCM, XSALSA))
    upgraded = bytearray(initiator.hello)
    upgraded[2] = GCM  # signed: the responder sees the change
    with pytest.raises(AuthenticationFailed):
        responder.receive([bytes(upgraded)], NOW_MS)


def _suites_in_use(node: Node) -> dict[str, int]:
    return {name: figures["suite"] for name, figures in node.stats()["connections"].items()}


@pytest.mark.asyncio
async def test_nodes_use_suite_2_between_them_and_suite_1_with_a_node_without_it(mesh):
    async with DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=mesh) as discovery:
        url = discovery.endpoint
        new_a = Node("gcm-a", discovery=url, mesh=mesh)
        new_b = Node("gcm-b", discovery=url, mesh=mesh)
        old = Node("old", discovery=url, mesh=mesh, cipher_suites=(XSALSA,))
        for node in (new_a, new_b, old):
            node.handler("echo", lambda body: body)
        async with new_a, new_b, old:
            payload = Blob(b"\x01" * 70_000)
            for caller, callee in [(new_a, "gcm-b"), (new_a, "old"), (old, "gcm-a")]:
                echoed = await caller.request(callee, "echo", payload, timeout=30)
                assert bytes(echoed) == bytes(payload)
            assert _suites_in_use(new_a) == {"gcm-b": GCM, "old": XSALSA}
            assert _suites_in_use(old) == {"gcm-a": XSALSA}
            peers = {p.name: p.suites for p in await new_a.peers()}
            assert peers["old"] == (XSALSA,) and peers["gcm-b"] == (GCM, XSALSA)


@pytest.mark.asyncio
async def test_a_peer_wrongly_said_to_run_suite_2_is_reached_with_suite_1_at_once(mesh):
    """A stale entry or a wrong add_peer: the REJECT brings the caller back to XSalsa20 in
    one more round trip, not after its connect timeout."""
    async with Node("xsalsa-only", discovery=[], mesh=mesh, cipher_suites=(XSALSA,)) as server:
        server.handler("echo", lambda body: body)
        async with Node("hopeful", discovery=[], mesh=mesh, connect_timeout=30) as caller:
            caller.add_peer(
                server.identity.require_certificate(), server.endpoint, cipher_suites=(GCM,)
            )
            assert await caller.request("xsalsa-only", "echo", b"hi", timeout=30) == b"hi"
            assert _suites_in_use(caller) == {"xsalsa-only": XSALSA}
            assert server.drops["suite"] == 1


@pytest.mark.asyncio
async def test_a_static_peer_gets_suite_2_only_when_told_it_runs_it(mesh):
    async with Node("static-server", discovery=[], mesh=mesh) as server:
        server.handler("echo", lambda body: body)
        async with (
            Node("plain", discovery=[], mesh=mesh) as plain,
            Node("told", discovery=[], mesh=mesh) as told,
        ):
            certificate = server.identity.require_certificate()
            plain.add_peer(certificate, server.endpoint)
            told.add_peer(certificate, server.endpoint, cipher_suites=(GCM, XSALSA))
            for caller in (plain, told):
                assert await caller.request("static-server", "echo", b"hi", timeout=30) == b"hi"
            await eventually(lambda: _suites_in_use(told) == {"static-server": GCM})
            assert _suites_in_use(plain) == {"static-server": XSALSA}


@pytest.mark.parametrize("backend", _gcm.backends(), ids=lambda backend: backend.name)
def test_each_aes_gcm_library_is_the_same_construction(backend):
    # libsodium's own binding is the independent reference: same bytes, opened both ways
    iv, ad, plain = bytes(range(12)), b"clear header", bytes(range(256)) * 300
    key = backend.prepare(KEY)
    out = bytearray(len(plain) + 16)
    backend.seal_into(out, 0, memoryview(plain), iv, key, ad)
    assert bytes(out) == nacl.bindings.crypto_aead_aes256gcm_encrypt(plain, ad, iv, KEY)
    assert backend.open_to_bytearray(out, iv, key, ad) == plain
    assert backend.open_to_bytearray(bytes(out), iv, key, b"other header") is None
    in_place = memoryview(bytearray(out))
    assert backend.open_in_place(in_place, iv, key, ad) == plain
    assert bytes(in_place[: len(plain)]) == plain  # where it lay
    for index in (0, len(plain) - 1, len(plain) + 15):  # first, last byte, the tag
        altered = bytearray(out)
        altered[index] ^= 1
        assert backend.open_to_bytearray(altered, iv, key, ad) is None
        assert backend.open_in_place(memoryview(altered), iv, key, ad) is None
    empty = bytearray(16)
    backend.seal_into(empty, 0, b"", iv, key, ad)
    assert backend.open_to_bytearray(empty, iv, key, ad) == b""


@pytest.mark.parametrize("backend", _gcm.backends(), ids=lambda backend: backend.name)
def test_each_aes_gcm_library_refuses_misuse_alike_and_leaves_no_forged_plaintext(backend):
    iv, plain = bytes(12), b"secret " * 1000
    key = backend.prepare(KEY)
    out = bytearray(len(plain) + 16)
    backend.seal_into(out, 0, plain, iv, key, b"")
    with pytest.raises(ValueError, match="wrong size"):
        backend.seal_into(bytearray(16), -16, bytes(16), iv, key, b"")  # before the buffer
    with pytest.raises(ValueError, match="writable"):
        backend.open_in_place(memoryview(bytes(out)), iv, key, b"")  # not ours to write
    forged = bytearray(out)
    forged[-1] ^= 1  # the tag: everything decrypts, nothing authenticates
    assert backend.open_in_place(memoryview(forged), iv, key, b"") is None
    assert b"secret" not in forged  # no unauthenticated plaintext left where it lay


def test_the_fast_extra_runs_suite_2_through_openssl_and_libsodium_remains():
    # the test tools install the fast extra: both libraries are tested above, OpenSSL seals
    assert [backend.name for backend in _gcm.backends()] == ["openssl", "libsodium"]
    assert _gcm.BACKEND.name == "openssl"
