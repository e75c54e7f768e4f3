"""Session freshness: replays (also across restarts), retirement, skew, rekey limits."""

from __future__ import annotations

import struct

import pytest

from mesh import (
    AuthenticationFailed,
    ClockSkew,
    InvalidArgument,
    Message,
    ReplayDetected,
    Responder,
    SessionExpired,
    SessionLimits,
    SessionTable,
    UnknownSession,
)
from mesh.core.wire import Kind
from tests.conftest import NOW_MS, handshake

PING = [Message(Kind.PING, 1)]


def test_replayed_envelope_is_refused(pair):
    frames = pair.alice.seal(PING, NOW_MS)
    pair.bob_table.open(frames, NOW_MS)
    with pytest.raises(ReplayDetected):
        pair.bob_table.open(frames, NOW_MS)


def test_reordered_envelopes_accepted_once_each(pair):
    batch = [pair.alice.seal(PING, NOW_MS) for _ in range(5)]
    for frames in reversed(batch):
        pair.bob_table.open(frames, NOW_MS)
    for frames in batch:
        with pytest.raises(ReplayDetected):
            pair.bob_table.open(frames, NOW_MS)


def test_replay_after_the_receiver_restarts(alice, bob, trust):
    pair = handshake(alice, bob, trust)
    captured = pair.alice.seal(PING, NOW_MS)
    pair.bob_table.open(captured, NOW_MS)
    restarted = SessionTable()  # bob's process restarts: a new epoch, no sessions
    with pytest.raises(ReplayDetected) as caught:
        restarted.open(captured, NOW_MS)
    assert caught.value.reason == "replay_epoch"


def test_replay_after_the_sender_restarts(alice, bob, trust):
    pair = handshake(alice, bob, trust)
    captured = pair.alice.seal(PING, NOW_MS)
    pair.bob_table.open(captured, NOW_MS)
    # alice restarts and connects again: a new connection, a new session beside the old one
    restarted = handshake(alice, bob, trust, callee_table=pair.bob_table, now_ms=NOW_MS + 1)
    assert pair.bob.retired_ms is None
    with pytest.raises(ReplayDetected):
        pair.bob_table.open(captured, NOW_MS + 1)  # the old session's window refuses it
    assert pair.bob_table.open(restarted.alice.seal(PING, NOW_MS + 2), NOW_MS + 2)
    # the old session is dropped once it is too old for anyone to use...
    later = NOW_MS + pair.bob.limits.reject_after_ms + pair.bob.limits.retired_grace_ms + 10
    assert pair.bob in pair.bob_table.expire(later)
    with pytest.raises(ReplayDetected) as caught:  # ...and its frames are then known replays
        pair.bob_table.open(captured, later)
    assert caught.value.reason == "replay_retired"


def test_a_rekey_retires_the_old_session_after_a_grace(alice, bob, trust):
    pair = handshake(alice, bob, trust)
    in_flight = pair.alice.seal(PING, NOW_MS)
    late = pair.alice.seal(PING, NOW_MS)
    fresh = handshake(
        alice, bob, trust, callee_table=pair.bob_table, now_ms=NOW_MS + 1, replaces=pair.bob
    )
    session, _ = pair.bob_table.open(in_flight, NOW_MS + 5)
    assert session is pair.bob
    assert session.retired_ms == NOW_MS + 1
    with pytest.raises(ReplayDetected):
        pair.bob_table.open(late, NOW_MS + 1 + pair.bob.limits.retired_grace_ms + 1)
    assert pair.bob_table.open(fresh.alice.seal(PING, NOW_MS + 2), NOW_MS + 2)[0] is fresh.bob


def test_two_processes_sharing_an_identity_both_work(alice, bob, trust):
    """Same identity, same instant, one responder: neither session pushes the other out."""
    table = SessionTable()
    responder = Responder(bob, trust, table)
    first = handshake(alice, bob, trust, callee_table=table, responder=responder)
    second = handshake(alice, bob, trust, callee_table=table, responder=responder)
    for pair in (first, second, first):
        frames = pair.alice.seal(PING, NOW_MS)
        assert table.open(frames, NOW_MS)[0] is pair.bob


def test_never_issued_session_is_unknown(pair):
    frames = [bytearray(pair.alice.seal(PING, NOW_MS)[0])]
    frames[0][6:10] = (10**6).to_bytes(4, "big")  # this boot's epoch, a counter never issued
    with pytest.raises(UnknownSession):
        pair.bob_table.open(frames, NOW_MS)


@pytest.mark.parametrize("offset", [-61_000, 61_000])
def test_clock_skew_beyond_the_bound(pair, offset):
    frames = pair.alice.seal(PING, NOW_MS + offset)
    with pytest.raises(ClockSkew) as caught:
        pair.bob_table.open(frames, NOW_MS)
    assert caught.value.skew_ms == offset


def test_rekey_and_hard_limits(alice, bob, trust):
    limits = SessionLimits(
        rekey_after_frames=2, reject_after_frames=3, rekey_after_ms=1000, reject_after_ms=2000
    )
    pair = handshake(alice, bob, trust)
    pair.alice.limits = limits
    assert not pair.alice.needs_rekey(NOW_MS)
    assert pair.alice.needs_rekey(NOW_MS + 1000)
    for _ in range(2):
        pair.alice.seal(PING, NOW_MS)
    assert pair.alice.needs_rekey(NOW_MS)
    pair.alice.seal(PING, NOW_MS)
    with pytest.raises(SessionExpired):
        pair.alice.seal(PING, NOW_MS)


def test_expire_drops_retired_sessions(alice, bob, trust):
    pair = handshake(alice, bob, trust)
    handshake(alice, bob, trust, callee_table=pair.bob_table, now_ms=NOW_MS + 1, replaces=pair.bob)
    assert len(pair.bob_table) == 2
    assert pair.bob_table.expire(NOW_MS + 1 + pair.bob.limits.retired_grace_ms + 1) == [pair.bob]
    assert len(pair.bob_table) == 1


def test_directions_use_different_keys(pair):
    frames = pair.alice.seal(PING, NOW_MS)
    reflected = [b"\x01\x03" + pair.alice.recv_id + bytes(frames[0])[10:]]
    with pytest.raises(AuthenticationFailed):  # a reflected frame meets the other key
        pair.alice_table.open(reflected, NOW_MS)


def test_session_ids_wrap_into_a_new_epoch(alice, bob, trust):
    """At the counter's last value the table starts a new random epoch (protocol.md 7.2)
    instead of failing to pack the id inside the HELLO handler: every later HELLO still gets
    a session, ids stay unique, the earlier epoch's sessions keep opening frames, and its
    dropped sessions are still known replays."""
    new_epoch = 0xBEEF
    table = SessionTable(
        epoch=0xE, _issued=2**32 - 2, _random=lambda n: new_epoch.to_bytes(n, "big")
    )
    responder = Responder(bob, trust, table)
    pairs = [
        handshake(alice, bob, trust, callee_table=table, responder=responder) for _ in range(3)
    ]
    ids = [struct.unpack(">II", pair.bob.recv_id) for pair in pairs]
    assert ids == [(0xE, 2**32 - 1), (new_epoch, 1), (new_epoch, 2)]
    assert len(table) == 3
    for pair in pairs:
        assert table.open(pair.alice.seal(PING, NOW_MS), NOW_MS)[0] is pair.bob
    for pair in pairs[:2]:  # one session of each epoch goes
        captured = pair.alice.seal(PING, NOW_MS)
        table.remove(pair.bob)
        with pytest.raises(ReplayDetected) as caught:
            table.open(captured, NOW_MS)
        assert caught.value.reason == "replay_retired"


def test_a_new_epoch_is_never_zero_nor_used_before():
    assert SessionTable(_random=bytes).epoch == 1  # a draw of 0 moves on
    table = SessionTable(epoch=5, _issued=2**32 - 1, _random=lambda n: (5).to_bytes(n, "big"))
    assert struct.unpack(">II", table.new_id()) == (6, 1)  # the same epoch again moves on
    for wrong in ({"epoch": 0}, {"epoch": 2**32}, {"_issued": -1}, {"_issued": 2**32}):
        with pytest.raises(InvalidArgument):
            SessionTable(**wrong)
