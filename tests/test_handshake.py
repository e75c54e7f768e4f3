"""The handshake state machines: valid peers connect; every bad HELLO/WELCOME is typed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mesh import (
    AuthenticationFailed,
    Authority,
    CertificateExpired,
    ClockSkew,
    HandshakeFailed,
    HandshakeRejected,
    Identity,
    Initiator,
    LocalProtocolError,
    MalformedEnvelope,
    Message,
    ProtocolError,
    ReplayDetected,
    Responder,
    SessionTable,
    Trust,
    Unauthorized,
    UnsupportedVersion,
)
from mesh.core.handshake import HandshakeState
from mesh.core.wire import Kind, RejectCode
from tests.conftest import NOT_BEFORE, NOW_MS, certified, handshake


def start(caller: Identity, callee: Identity, trust, now=NOW_MS):
    initiator = Initiator(caller, trust, callee.require_certificate(), SessionTable(), now)
    responder = Responder(callee, trust, SessionTable())
    return initiator, responder


def test_sessions_carry_the_peer_and_credit(alice, bob, trust):
    pair = handshake(alice, bob, trust)
    assert pair.alice.peer.node_id == bob.node_id
    assert pair.bob.peer.node_id == alice.node_id
    assert pair.alice.initiator
    assert not pair.bob.initiator
    assert pair.alice.send_id == pair.bob.recv_id
    assert pair.bob.send_id == pair.alice.recv_id
    assert pair.bob.initial_credit == (1024, 64 * 1024 * 1024)
    frames = pair.bob.seal([Message(Kind.REPLY, 1, body="hi")], NOW_MS)
    assert pair.alice_table.open(frames, NOW_MS)[1].messages[0].body == "hi"


def test_certificate_from_another_authority_is_rejected(alice, bob, trust):
    outsider = certified(Authority.generate(), "mallory")
    initiator, responder = start(outsider, bob, trust)
    with pytest.raises(Unauthorized) as caught:
        responder.receive(initiator.hello_frames(), NOW_MS)
    reject = Responder.reject_frames(initiator.hello_frames(), caught.value)
    with pytest.raises(HandshakeRejected) as rejected:
        initiator.receive(reject, NOW_MS)
    assert rejected.value.code == RejectCode.UNTRUSTED_CERTIFICATE


def test_responder_with_a_foreign_certificate_is_refused(alice, trust):
    foreign = certified(Authority.generate(), "bob")
    initiator = Initiator(alice, trust, foreign.require_certificate(), SessionTable(), NOW_MS)
    responder = Responder(foreign, foreign_trust := Authority.generate().trust(), SessionTable())
    with pytest.raises(Unauthorized):  # the foreign node does not trust alice's authority
        responder.receive(initiator.hello_frames(), NOW_MS)
    trusting = Responder(foreign, Trust(trust.authority_key), SessionTable())
    _, welcome = trusting.receive(initiator.hello_frames(), NOW_MS)
    with pytest.raises(Unauthorized):  # alice does not trust the foreign certificate either
        initiator.receive(welcome, NOW_MS)
    assert foreign_trust.authority_id != trust.authority_id


def test_expired_certificates_are_refused_both_ways(authority, bob, trust):
    old = authority.issue_for(
        Identity.generate("old"), not_before=NOT_BEFORE - 10_000, lifetime_s=100
    )
    initiator, responder = start(old, bob, trust)
    with pytest.raises(CertificateExpired):
        responder.receive(initiator.hello_frames(), NOW_MS)
    initiator, responder = start(bob, old, trust)
    _, welcome = responder.receive(initiator.hello_frames(), NOW_MS)  # old answers bob...
    with pytest.raises(CertificateExpired):
        initiator.receive(welcome, NOW_MS)  # ...and bob refuses old's expired certificate


def test_impostor_answering_for_bob_is_refused(alice, bob, carol, trust):
    initiator = Initiator(alice, trust, bob.require_certificate(), SessionTable(), NOW_MS)
    # carol cannot take a HELLO meant for bob, nor pass her WELCOME off as bob's
    with pytest.raises(HandshakeFailed):
        Responder(carol, trust, SessionTable()).receive(initiator.hello_frames(), NOW_MS)
    to_carol = Initiator(alice, trust, carol.require_certificate(), SessionTable(), NOW_MS)
    _, welcome = Responder(carol, trust, SessionTable()).receive(to_carol.hello_frames(), NOW_MS)
    forged = bytearray(welcome[0])
    forged[34:42] = initiator.recv_id  # make carol's WELCOME look like an answer to alice->bob
    with pytest.raises(ProtocolError):
        initiator.receive([bytes(forged)], NOW_MS)


def test_wrong_responder_gets_a_reject(alice, bob, carol, trust):
    initiator = Initiator(alice, trust, bob.require_certificate(), SessionTable(), NOW_MS)
    with pytest.raises(HandshakeFailed) as caught:
        Responder(carol, trust, SessionTable()).receive(initiator.hello_frames(), NOW_MS)
    reject = Responder.reject_frames(initiator.hello_frames(), caught.value)
    assert initiator.matches(reject)
    with pytest.raises(HandshakeRejected) as rejected:
        initiator.receive(reject, NOW_MS)
    assert rejected.value.code == RejectCode.WRONG_RESPONDER


def test_replayed_hello_is_refused(alice, bob, trust):
    initiator, responder = start(alice, bob, trust)
    responder.receive(initiator.hello_frames(), NOW_MS)
    with pytest.raises(ReplayDetected):
        responder.receive(initiator.hello_frames(), NOW_MS + 5)
    newer = Initiator(alice, trust, bob.require_certificate(), SessionTable(), NOW_MS + 1)
    responder.receive(newer.hello_frames(), NOW_MS + 5)


@pytest.mark.parametrize("offset", [-120_000, 120_000])
def test_hello_with_skewed_clock(alice, bob, trust, offset):
    initiator, responder = start(alice, bob, trust, now=NOW_MS + offset)
    with pytest.raises(ClockSkew):
        responder.receive(initiator.hello_frames(), NOW_MS)
    assert Responder.reject_frames(initiator.hello_frames(), ClockSkew(offset, 1)) is not None


def test_silence_for_frames_that_do_not_authenticate(alice, bob, trust):
    initiator, responder = start(alice, bob, trust)
    hello = bytearray(initiator.hello)
    hello[-1] ^= 1
    with pytest.raises(AuthenticationFailed) as caught:
        responder.receive([bytes(hello)], NOW_MS)
    assert Responder.reject_frames([bytes(hello)], caught.value) is None


def test_every_byte_of_hello_and_welcome_is_protected(alice, bob, trust):
    initiator, responder = start(alice, bob, trust)
    hello = initiator.hello
    for index in range(len(hello)):
        mutated = bytearray(hello)
        mutated[index] ^= 0x80
        with pytest.raises(ProtocolError):
            Responder(bob, trust, SessionTable()).receive([bytes(mutated)], NOW_MS)
    _, welcome = responder.receive(initiator.hello_frames(), NOW_MS)
    for index in range(len(welcome[0])):
        mutated = bytearray(welcome[0])
        mutated[index] ^= 0x80
        fresh = Initiator(alice, trust, bob.require_certificate(), SessionTable(), NOW_MS)
        fresh.hello, fresh.recv_id = initiator.hello, initiator.recv_id
        fresh._ephemeral = initiator._ephemeral
        with pytest.raises(ProtocolError):
            fresh.receive([bytes(mutated)], NOW_MS)


def test_handshake_frame_level_errors(alice, bob, trust):
    initiator, responder = start(alice, bob, trust)
    for frames, error in (
        ([initiator.hello, b"x"], MalformedEnvelope),
        ([b"\x07" + initiator.hello[1:]], UnsupportedVersion),
        ([initiator.hello[:40]], MalformedEnvelope),
        ([initiator.hello + bytes(9000)], MalformedEnvelope),
    ):
        with pytest.raises(error):
            responder.receive(frames, NOW_MS)


@settings(max_examples=300)
@given(frame=st.binary(max_size=400), prefix=st.sampled_from([b"", b"\x01\x01\x01", b"\x01\x02"]))
def test_random_handshake_bytes_raise_only_protocol_errors(alice, bob, trust, frame, prefix):
    initiator, responder = start(alice, bob, trust)
    with pytest.raises(ProtocolError):
        responder.receive([prefix + frame], NOW_MS)
    with pytest.raises(ProtocolError):
        initiator.receive([prefix + frame], NOW_MS)
    assert initiator.state is HandshakeState.FAILED


def test_a_second_welcome_registers_nothing_and_replays_stay_refused(alice, bob, trust):
    """Receiving the WELCOME twice used to register a second session under the same id,
    with a fresh replay window, so a frame already accepted was accepted again. A finished
    handshake now refuses at once, as the caller's misuse rather than the peer's fault."""
    table = SessionTable()
    initiator = Initiator(alice, trust, bob.require_certificate(), table, NOW_MS)
    bob_session, welcome = Responder(bob, trust, SessionTable()).receive(
        initiator.hello_frames(), NOW_MS
    )
    first = initiator.receive(welcome, NOW_MS)
    frames = bob_session.seal([Message(Kind.PING, 1)], NOW_MS)
    assert table.open(frames, NOW_MS)[0] is first
    with pytest.raises(LocalProtocolError) as caught:
        initiator.receive(welcome, NOW_MS)
    assert not isinstance(caught.value, ProtocolError)  # not counted as the peer's doing
    assert len(table) == 1
    assert table.find(initiator.recv_id, NOW_MS) is first
    with pytest.raises(ReplayDetected):
        table.open(frames, NOW_MS)
    assert initiator.state is HandshakeState.ESTABLISHED


def test_a_failed_handshake_takes_no_further_answer(alice, bob, trust):
    """One HELLO, one answer: after a REJECT even a valid WELCOME is refused, registering
    nothing; the caller starts a new handshake with a fresh ephemeral key."""
    table = SessionTable()
    initiator = Initiator(alice, trust, bob.require_certificate(), table, NOW_MS)
    _, welcome = Responder(bob, trust, SessionTable()).receive(initiator.hello_frames(), NOW_MS)
    reject = Responder.reject_frames(initiator.hello_frames(), ClockSkew(90_000, 60_000))
    with pytest.raises(HandshakeRejected):
        initiator.receive(reject, NOW_MS)
    with pytest.raises(LocalProtocolError):
        initiator.receive(welcome, NOW_MS)
    assert len(table) == 0
    assert initiator.state is HandshakeState.FAILED


class HandshakeMachine(RuleBasedStateMachine):
    """Nodes of two authorities handshake, tamper, exchange and restart in any order."""

    def __init__(self):
        super().__init__()
        self.home = Authority.generate()
        self.trust = self.home.trust()
        self.names = ["n0", "n1", "n2"]
        self.identities = {n: certified(self.home, n) for n in self.names}
        self.tables = {n: SessionTable() for n in self.names}
        self.responders = {
            n: Responder(self.identities[n], self.trust, self.tables[n]) for n in self.names
        }
        self.now = NOW_MS
        self.links: list[tuple[str, str, object, object]] = []

    def tick(self):
        self.now += 1
        return self.now

    def initiator(self, caller, callee, table, now):
        return Initiator(
            self.identities[caller],
            self.trust,
            self.identities[callee].require_certificate(),
            table,
            now,
        )

    @rule(a=st.sampled_from([0, 1, 2]), b=st.sampled_from([0, 1, 2]))
    def connect(self, a, b):
        caller, callee = self.names[a], self.names[b]
        now = self.tick()
        initiator = self.initiator(caller, callee, self.tables[caller], now)
        callee_session, welcome = self.responders[callee].receive(initiator.hello_frames(), now)
        caller_session = initiator.receive(welcome, now)
        self.links.append((caller, callee, caller_session, callee_session))

    @rule(
        a=st.sampled_from([0, 1, 2]),
        b=st.sampled_from([0, 1, 2]),
        where=st.sampled_from(["hello", "welcome"]),
        index=st.integers(0, 10_000),
    )
    def tamper(self, a, b, where, index):
        caller, callee = self.names[a], self.names[b]
        now = self.tick()
        initiator = self.initiator(caller, callee, SessionTable(), now)
        hello = bytearray(initiator.hello)
        if where == "hello":
            hello[index % len(hello)] ^= 0x01
            with pytest.raises(ProtocolError):
                self.responders[callee].receive([bytes(hello)], now)
            return
        _, welcome = Responder(self.identities[callee], self.trust, SessionTable()).receive(
            [bytes(hello)], now
        )
        mutated = bytearray(welcome[0])
        mutated[index % len(mutated)] ^= 0x01
        with pytest.raises(ProtocolError):
            initiator.receive([bytes(mutated)], now)

    @rule(b=st.sampled_from([0, 1, 2]), expired=st.booleans())
    def outsider(self, b, expired):
        now = self.tick()
        if expired:
            stranger = self.home.issue_for(
                Identity.generate("late"), not_before=NOT_BEFORE - 10**6, lifetime_s=10
            )
            error = CertificateExpired
        else:
            stranger = certified(Authority.generate(), "stranger")
            error = Unauthorized
        callee = self.identities[self.names[b]]
        initiator = Initiator(
            stranger, self.trust, callee.require_certificate(), SessionTable(), now
        )
        with pytest.raises(error):
            self.responders[self.names[b]].receive(initiator.hello_frames(), now)

    @precondition(lambda self: self.links)
    @rule(data=st.data())
    def exchange(self, data):
        caller, callee, caller_session, callee_session = data.draw(st.sampled_from(self.links))
        if caller_session.retired_ms is not None or callee_session.retired_ms is not None:
            return
        now = self.tick()
        body = data.draw(st.integers(-(2**63), 2**64 - 1))
        frames = caller_session.seal([Message(Kind.SEND, 1, body=body)], now)
        session, opened = self.tables[callee].open(frames, now)
        assert session is callee_session
        assert opened.messages[0].body == body
        with pytest.raises(ReplayDetected):
            self.tables[callee].open(frames, now)
        reply = callee_session.seal([Message(Kind.REPLY, 2, body=body)], now)
        assert self.tables[caller].open(reply, now)[1].messages[0].body == body

    @rule(n=st.sampled_from([0, 1, 2]))
    def restart(self, n):
        name = self.names[n]
        self.tables[name] = SessionTable()
        self.responders[name] = Responder(self.identities[name], self.trust, self.tables[name])
        self.links = [link for link in self.links if name not in link[:2]]

    @invariant()
    def live_sessions_are_findable(self):
        for _caller, callee, _caller_session, callee_session in self.links:
            if callee_session.retired_ms is None:
                assert self.tables[callee].find(callee_session.recv_id, self.now) is callee_session


TestHandshakeMachine = HandshakeMachine.TestCase
TestHandshakeMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
