"""Shared fixtures: an authority, certified identities, session pairs, and real processes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import settings

from mesh import (
    Authority,
    Identity,
    Initiator,
    MeshDirectory,
    Responder,
    Session,
    SessionTable,
    Trust,
)
from tests.processes import Process

# No per-example deadline: timing on a shared 2-core machine is not what these tests check.
settings.register_profile("mesh", deadline=None)
settings.load_profile("mesh")

NOW_MS = 1_790_000_000_000
NOT_BEFORE = NOW_MS // 1000 - 3600


def certified(authority: Authority, name: str, **options: object) -> Identity:
    return authority.issue_for(Identity.generate(name), not_before=NOT_BEFORE, **options)


@dataclass
class Pair:
    """Both ends of one handshake: alice initiated, bob responded."""

    alice: Session
    bob: Session
    alice_table: SessionTable
    bob_table: SessionTable


def handshake(
    caller: Identity,
    callee: Identity,
    trust: Trust,
    *,
    caller_table: SessionTable | None = None,
    callee_table: SessionTable | None = None,
    responder: Responder | None = None,
    now_ms: int = NOW_MS,
    replaces: Session | None = None,
) -> Pair:
    caller_table = caller_table or SessionTable()
    callee_table = callee_table or SessionTable()
    responder = responder or Responder(callee, trust, callee_table)
    initiator = Initiator(caller, trust, callee.require_certificate(), caller_table, now_ms)
    bob, welcome = responder.receive(initiator.hello_frames(), now_ms, replaces)
    alice = initiator.receive(welcome, now_ms)
    return Pair(alice, bob, caller_table, callee_table)


@pytest.fixture(scope="session")
def authority() -> Authority:
    return Authority.generate()


@pytest.fixture(scope="session")
def trust(authority: Authority) -> Trust:
    return authority.trust()


@pytest.fixture(scope="session")
def alice(authority: Authority) -> Identity:
    return certified(authority, "alice", capabilities=["echo"])


@pytest.fixture(scope="session")
def bob(authority: Authority) -> Identity:
    return certified(authority, "bob")


@pytest.fixture(scope="session")
def carol(authority: Authority) -> Identity:
    return certified(authority, "carol")


@pytest.fixture
def pair(alice: Identity, bob: Identity, trust: Trust) -> Pair:
    return handshake(alice, bob, trust)


# ----------------------------------------------------------------- real processes (live tests)


@pytest.fixture
def mesh(tmp_path):
    """A fresh mesh directory with its authority, for nodes in this process."""
    directory = MeshDirectory(tmp_path / "mesh")
    directory.create()
    return directory


@pytest.fixture
def home(tmp_path):
    """A fresh mesh directory with its authority, shared by the test and its processes."""
    path = tmp_path / "mesh"
    MeshDirectory(path).create()
    return path


@pytest.fixture
def spawn(home):
    """Start ``mesh`` commands as processes; every one is killed when the test ends."""
    started: list[Process] = []

    def start(*args: str, mesh=None) -> Process:
        process = Process(*args, home=mesh or home)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


@pytest.fixture
def discovery(spawn):
    """A discovery node process; its URL."""
    return spawn("discovery", "--bind", "tcp://127.0.0.1:0").endpoint()
