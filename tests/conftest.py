"""Shared fixtures: an authority, certified identities, session pairs, and real processes;
and the one way tests wait for something to happen: a condition polled up to a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import settings

from mesh import (
    Authority,
    DiscoveryUnavailable,
    Identity,
    Initiator,
    MeshDirectory,
    Node,
    PeerLost,
    PeerNotFound,
    Responder,
    Session,
    SessionTable,
    Trust,
)
from mesh.core.flow import ReceiveCredit
from tests.processes import Process

# No per-example deadline: timing on a shared 2-core machine is not what these tests check.
settings.register_profile("mesh", deadline=None)
settings.load_profile("mesh")

NOW_MS = 1_790_000_000_000
NOT_BEFORE = NOW_MS // 1000 - 3600
WAIT_S = 20.0  # how long a condition may take on a loaded machine before the test fails
POLL_S = 0.02

# A mesh still settling (a peer not registered yet, a connection to a restarted process
# being replaced) raises these on the way to the condition: they mean "not yet".
NOT_YET = (PeerLost, DiscoveryUnavailable, PeerNotFound)


# ----------------------------------------------------------------- waiting on conditions


async def eventually(
    check: Callable[[], Any], *, timeout: float = WAIT_S, interval: float = POLL_S
) -> Any:
    """Call ``check()`` (plain or async) until it returns something truthy, and return that;
    fail after ``timeout`` seconds. Tests wait this way, never with a bare sleep: the
    condition says what they wait for, and a loaded machine only makes them slower."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(*NOT_YET):
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def wait_until(
    check: Callable[[], Any], *, timeout: float = WAIT_S, interval: float = POLL_S
) -> Any:
    """:func:`eventually` for tests without an event loop."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
    return value


def spent_stream_credit(node: Node, peer: str) -> ReceiveCredit | None:
    """The reader's credit of ``node``'s one stream from ``peer`` once the generator over
    there has sent every chunk it was granted (so it can only be waiting for more), else
    None. A slow-reader test waits for this instead of sleeping "long enough"."""
    connection = node._pool.connections.get(peer)
    streams = [c for c in connection.calls.values() if c.queue is not None] if connection else []
    if len(streams) != 1:
        return None
    credit = streams[0].credit
    spent = (
        credit.received_messages >= credit.granted_messages
        or credit.received_bytes >= credit.granted_bytes
    )
    return credit if spent else None


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


# ----------------------------------------------------------------------------- CI honesty

STRICT_SKIPS = "MESH_NO_SKIPS"  # .ci/run sets it: in CI every test runs, or the run fails


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """With ``$MESH_NO_SKIPS`` set, a test that skips (a host tool or a package missing) is
    reported failed, with its reason: CI cannot pass by not running what needs a tool.
    Outside CI a skip stays a skip, and README "Tests" says how to enable each."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get(STRICT_SKIPS) and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, but ${STRICT_SKIPS} is set (CI runs everything): {reason}"
