"""Calls by capability go to the least busy node, counting from the moment of choice."""

from __future__ import annotations

import pytest

from mesh import PeerInfo, PeerNotFound
from mesh.runtime.balancer import LeastBusy
from tests.conftest import certified


@pytest.fixture
def three(authority) -> list[PeerInfo]:
    return [
        PeerInfo(certified(authority, name).certificate, f"tcp://127.0.0.1:{port}")
        for port, name in enumerate(("a", "b", "c"), start=5000)
    ]


def test_a_burst_of_choices_spreads_over_every_candidate(three):
    balancer = LeastBusy()
    chosen = []
    for _ in range(6):  # concurrent calls: each reserves before the next one chooses
        name = balancer.choose("echo", three)
        balancer.reserve(name)
        chosen.append(name)
    assert sorted(chosen) == ["a", "a", "b", "b", "c", "c"]


def test_the_node_with_fewest_calls_in_flight_is_chosen(three):
    balancer = LeastBusy()
    for name in ("a", "a", "b", "c", "c"):
        balancer.reserve(name)
    assert balancer.choose("echo", three) == "b"
    balancer.release("a")
    balancer.release("a")
    assert balancer.choose("echo", three) == "a"


def test_a_name_without_calls_is_not_kept(three):
    balancer = LeastBusy()
    for info in three:
        balancer.reserve(info.name)
        balancer.release(info.name)
    assert balancer._in_flight == {}  # a node that churns names does not grow this


def test_no_candidate_is_peer_not_found():
    with pytest.raises(PeerNotFound, match="echo"):
        LeastBusy().choose("echo", [])
