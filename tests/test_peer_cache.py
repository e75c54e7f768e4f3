"""A node reads directory entries by the rules discovery registers them by (one schema).

A discovery node can hide members, never invent one (certificates), and since it is not
trusted to be well-formed either, an entry it could not have accepted in a REGISTER is
dropped and counted on the node rather than kept half-read.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from mesh import PeerInfo
from mesh.core.registry import parse_registration
from mesh.core.wire import Suite
from mesh.runtime.peers import PeerCache
from tests.conftest import certified

REGISTERED = {
    "endpoint": "tcp://127.0.0.1:5000",
    "capabilities": ["echo", "chat"],
    "meta": {"model": "tiny"},
    "started_ms": 1234,
    "topics": ["orders.new"],
    "subscriptions": ["orders.>"],
    "topics_endpoint": "tcp://127.0.0.1:5001",
    "suites": [2, 1],
    "lease_ms": 5000,
}


@pytest.fixture
def cache(trust) -> tuple[PeerCache, Counter[str]]:
    drops: Counter[str] = Counter()
    return PeerCache(trust, drops), drops


def test_an_entry_without_suites_accepts_xsalsa20_only(authority, cache):
    peers, _ = cache
    wire = parse_registration(
        certified(authority, "old").certificate, REGISTERED, now_ms=0
    ).to_wire()
    del wire["suites"]  # a node or discovery node from before suites were advertised
    info = peers.verified(wire)
    assert info is not None and info.suites == (1,)
    assert info.suite_for((Suite.AES256_GCM, Suite.XSALSA20_POLY1305)) is Suite.XSALSA20_POLY1305


def test_an_entry_discovery_sends_reads_back_as_it_was_registered(authority, cache):
    peers, drops = cache
    identity = certified(authority, "worker")
    registered = parse_registration(identity.certificate, REGISTERED, now_ms=0)
    info = peers.verified(registered.to_wire())
    assert isinstance(info, PeerInfo) and not drops
    assert info.to_dict() == {
        "name": "worker",
        "node_id": identity.certificate.node_id.hex(),
        **{k: v for k, v in REGISTERED.items() if k != "lease_ms"},
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("endpoint", "no-scheme"),
        ("endpoint", 5),
        ("capabilities", "echo"),
        ("capabilities", ["x" * 10_000]),
        ("meta", [1, 2]),
        ("started_ms", "yesterday"),
        ("topics", ["bad topic"]),
        ("subscriptions", ["orders.>.x"]),
        ("topics_endpoint", ["tcp://x"]),
        ("suites", []),
        ("suites", [1] * 9),
        ("suites", ["aes"]),
        ("suites", [0]),
        ("suites", 2),
    ],
)
def test_an_entry_discovery_would_refuse_is_dropped_and_counted(authority, cache, field, value):
    peers, drops = cache
    wire: dict[str, Any] = parse_registration(
        certified(authority, "worker").certificate, REGISTERED, now_ms=0
    ).to_wire()
    wire[field] = value
    assert peers.verified(wire) is None
    assert peers.on_event({"type": "JOIN", "entry": wire}) is None
    assert "worker" not in peers
    assert drops["bad_entry"] == 2
