"""Attacks on a live node and its discovery node, each rejected with a counted, typed reason
while the node keeps serving: replay, forged sender, foreign and expired certificates, a
rogue registration of a live name, a version downgrade, msgpack bombs, a handshake flood
from strangers, and clock skew."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from mesh import Identity, MeshDirectory
from mesh.core.codec import Message, encode_payload
from mesh.core.envelope import seal_payload
from mesh.core.errors import HandshakeRejected, NameConflict
from mesh.core.handshake import Initiator
from mesh.core.identity import Authority
from mesh.core.session import SessionTable
from mesh.core.wire import PROTOCOL_VERSION, FrameType, Kind
from mesh.runtime.discovery import DiscoveryServer
from mesh.runtime.node import Node
from mesh.runtime.stamps import now_ms
from tests.hostile import LoopThread, RawPeer, until

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast

SKEW_MS = 10 * 60 * 1000  # far beyond the default bound


@dataclass
class Target:
    loop: LoopThread
    mesh: MeshDirectory
    discovery: DiscoveryServer
    victim: Node
    ran: list[object]
    peers: list[RawPeer]

    def drops(self, reason: str, at: object | None = None) -> int:
        owner = at if at is not None else self.victim
        return self.loop.call(lambda: owner.drops[reason])  # type: ignore[attr-defined]

    def dropped(self, reason: str, action: Callable[[], object], at: object | None = None) -> None:
        """``action`` makes the target count exactly one more drop for ``reason``."""
        before = self.drops(reason, at)
        action()
        until(lambda: self.drops(reason, at) >= before + 1)
        assert self.drops(reason, at) == before + 1

    def peer(self, identity: Identity, trust: object | None = None) -> RawPeer:
        certificate = self.victim.identity.require_certificate()
        peer = RawPeer(self.victim.endpoint, identity, trust or self.mesh.trust(), certificate)
        self.peers.append(peer)  # closed with the target
        return peer


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    mesh = MeshDirectory(tmp_path_factory.mktemp("attacks") / "mesh")
    mesh.create()
    loop = LoopThread()
    ran: list[object] = []

    async def start() -> tuple[DiscoveryServer, Node]:
        discovery = DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=mesh)
        await discovery.start()
        victim = Node("victim", mesh=mesh, discovery=discovery.endpoint)

        async def record(body: object) -> object:
            ran.append(body)
            return body

        victim.handler("record", record)
        await victim.start()
        return discovery, victim

    discovery, victim = loop.run(start())
    target = Target(loop, mesh, discovery, victim, ran, [])
    yield target
    for peer in target.peers:
        peer.close()

    async def stop() -> None:
        await victim.close()
        await discovery.close()

    loop.run(stop())
    loop.stop()


def still_serving(target: Target) -> None:
    peer = target.peer(target.mesh.identity("checker"))
    peer.handshake()
    assert peer.request("ok?", "record") == "ok?"


def test_a_replayed_envelope_is_dropped_and_runs_nothing(target):
    mallory = target.peer(target.mesh.identity("mallory"))
    mallory.handshake()
    _, frames = mallory.sealed_request("once", "record")
    mallory.send(frames)
    until(lambda: "once" in target.ran)
    target.dropped("replay", lambda: mallory.send(frames))
    target.dropped("replay", lambda: mallory.send(frames))
    assert target.ran.count("once") == 1
    still_serving(target)


def test_an_envelope_with_a_forged_sender_is_dropped(target):
    alice = target.peer(target.mesh.identity("alice"))
    alice.handshake()
    eve = target.peer(target.mesh.identity("eve"))
    eve.handshake()
    assert alice.session is not None and eve.session is not None
    # eve writes into alice's session (its id is on the wire in clear) with her own key
    forged = seal_payload(alice.session.send_id, eve.session._send_key, 99, now_ms(), b"\x91\x90")
    target.dropped("auth", lambda: eve.send(forged))
    assert alice.request("alice still", "record") == "alice still"


def test_a_certificate_from_another_authority_is_rejected(target):
    other = Authority.generate()
    stranger = other.issue_for(Identity.generate("victim-lookalike"), not_before=int(time.time()))
    peer = target.peer(stranger)

    def attempt() -> None:
        with pytest.raises(HandshakeRejected):
            peer.handshake()

    target.dropped("unauthorized", attempt)
    still_serving(target)


def test_an_expired_certificate_is_rejected(target):
    authority = target.mesh.authority()
    expired = authority.issue_for(
        Identity.generate("old-node"), not_before=int(time.time()) - 3600, lifetime_s=60
    )
    peer = target.peer(expired)

    def attempt() -> None:
        with pytest.raises(HandshakeRejected):
            peer.handshake()

    target.dropped("cert_expired", attempt)
    still_serving(target)


def test_a_rogue_registration_cannot_take_over_a_live_name(target):
    """A second certificate for the live name "victim" (say, a stolen issuance) with other
    keys: the registration is refused, counted, and lookups still find the real node."""
    rogue = target.mesh.authority().issue_for(
        Identity.generate("victim"), not_before=int(time.time()) - 60
    )

    async def register() -> None:
        node = Node("victim", identity=rogue, trust=target.mesh.trust(),
                    discovery=target.discovery.endpoint)  # fmt: skip
        try:
            with pytest.raises(NameConflict):
                await node.start()
        finally:
            await node.close()

    target.dropped("name_conflict", lambda: target.loop.run(register()), at=target.discovery)
    peers = {p.name: p for p in target.loop.run(target.victim.peers())}
    assert peers["victim"].certificate.node_id == target.victim.identity.node_id
    still_serving(target)


def test_a_downgrade_to_an_unknown_version_is_refused(target):
    mallory = target.peer(target.mesh.identity("mallory"))
    for version in (0, PROTOCOL_VERSION + 1):
        hello = bytearray(mallory.hello().hello)
        hello[0] = version
        target.dropped("version", lambda h=hello: mallory.send([bytes(h)]))
        answer = mallory.receive(lambda f: f[0][1:2] == bytes([FrameType.REJECT]))
        assert answer[0][2] == 1  # REJECT code 1: try another version
    hello = bytearray(mallory.hello().hello)
    hello[2] = 0xEE  # an unknown cipher suite
    target.dropped("suite", lambda: mallory.send([bytes(hello)]))
    still_serving(target)


BOMBS = {
    "deep nesting": b"\x91" * 100_000 + b"\xc0",
    "huge array": b"\x91\xdd\xff\xff\xff\xff",
    "huge map": b"\x91\xdf\xff\xff\xff\xff",
    "huge string": b"\x91\xdb\xff\xff\xff\xff",
    "huge binary": b"\x91\xc6\xff\xff\xff\xff",
    "huge ext": b"\x91\xc9\xff\xff\xff\xff\x01",
    "many rows": b"\xdd\x00\x01\x00\x00" + b"\xc0" * 65536,
}


@pytest.mark.parametrize("bomb", BOMBS)
def test_msgpack_bombs_are_dropped(target, bomb):
    """Sealed with a valid session, so they reach the decoder, which refuses each with a
    typed reason and never allocates what the bomb declares."""
    mallory = target.peer(target.mesh.identity("mallory"))
    mallory.handshake()
    assert mallory.session is not None
    before = sum(target.loop.call(lambda: dict(target.victim.drops)).values())
    seq = 10**6 + len(target.ran)
    mallory.send(seal_payload(mallory.session.send_id, mallory.session._send_key, seq,
                              now_ms(), BOMBS[bomb]))  # fmt: skip
    until(lambda: sum(target.loop.call(lambda: dict(target.victim.drops)).values()) == before + 1)
    assert mallory.request("after the bomb", "record") == "after the bomb"


def test_a_flood_of_handshakes_from_strangers_leaves_no_state(target):
    """Unauthenticated peers get no session and no memory, and one connection's flood is cut
    to its rate (REJECT 5, busy, before any public-key work) while others handshake freely."""
    other = Authority.generate()
    sessions = target.loop.call(lambda: target.victim.stats()["sessions"])
    flooder = target.peer(target.mesh.identity("flooder"))
    count = 2000
    before = target.drops("unauthorized") + target.drops("handshake_busy")
    busy_before = target.drops("handshake_busy")
    for index in range(count):
        stranger = other.issue_for(Identity.generate(f"s{index}"), not_before=int(time.time()))
        flooder.identity = stranger
        flooder.send(flooder.hello().hello_frames())

    def refused() -> int:
        return target.drops("unauthorized") + target.drops("handshake_busy")

    until(lambda: refused() >= before + count, 60)
    assert refused() == before + count
    assert target.drops("handshake_busy") - busy_before >= count // 2  # most never cost work
    busy = flooder.receive(lambda f: f[0][1:3] == bytes([FrameType.REJECT, 5]))
    assert busy  # the flooder was told: busy
    assert target.loop.call(lambda: target.victim.stats()["sessions"]) == sessions
    still_serving(target)  # another connection, at once: the limit is per source


def test_clock_skew_beyond_the_bound_is_refused(target):
    mallory = target.peer(target.mesh.identity("mallory"))
    mallory.handshake()
    assert mallory.session is not None
    session = mallory.session
    ping = encode_payload([Message(Kind.PING, 1)])[0]
    late = seal_payload(session.send_id, session._send_key, 10**7, now_ms() + SKEW_MS, ping)
    target.dropped("clock_skew", lambda: mallory.send(late))
    skewed = Initiator(mallory.identity, mallory.trust, mallory.peer, SessionTable(),
                       now_ms() - SKEW_MS)  # fmt: skip
    target.dropped("clock_skew", lambda: mallory.send(skewed.hello_frames()))
    still_serving(target)
