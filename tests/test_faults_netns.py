"""Network faults between hosts (network namespaces): a partition (the host's link down) and
silent packet loss (an nftables drop-all inside the host, so no TCP reset ever arrives and
only heartbeats can tell). Invariant: every request ends in exactly one reply or one typed
error, no reply is delivered twice or to the wrong call, and once the network heals the mesh
resumes with nobody restarted."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections import defaultdict
from collections.abc import Callable

import pytest

from mesh.core.errors import MeshError, PeerLost
from mesh.runtime.node import Node
from tests.conftest import eventually
from tests.netns import Hosts, NetnsHost, sh, why_not
from tests.processes import Process
from tests.test_live_processes import LOST_BY_LIVENESS

REASON = why_not()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
    pytest.mark.asyncio,
]
AGENT = "tests.fixture_agent:FixtureAgent"
HEARTBEAT = 0.2
HEAL_WITHIN_S = 60.0


class Prober:
    """One request after another to ``far``, each outcome recorded by its index."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.outcomes: dict[int, list[tuple[str, object]]] = defaultdict(list)
        self.sent = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            index = self.sent = self.sent + 1
            try:
                got = await self.node.request("far", "echo", index, timeout=2)
                self.outcomes[index].append(("ok", got))
            except MeshError as exc:  # typed, or the test fails on the task's exception
                self.outcomes[index].append(("error", type(exc).__name__))
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.01)

    def count(self, kind: str, since: int = 0) -> int:
        return sum(1 for i, found in self.outcomes.items() if i > since and found[0][0] == kind)

    async def until(self, kind: str, count: int, since: int = 0) -> None:
        deadline = time.monotonic() + HEAL_WITHIN_S
        while self.count(kind, since) < count:
            assert time.monotonic() < deadline, f"no {count} x {kind} within {HEAL_WITHIN_S} s"
            await asyncio.sleep(0.05)

    def check(self) -> None:
        """Exactly one outcome per request; every reply is the one asked for."""
        for index in range(1, self.sent):
            found = self.outcomes[index]
            assert len(found) == 1, (index, found)
            kind, value = found[0]
            assert value == index if kind == "ok" else isinstance(value, str), (index, found)

    async def stop(self, task: asyncio.Task[None]) -> None:
        self._stop.set()
        await asyncio.wait_for(task, 10)


@pytest.fixture
def far(tmp_path, home):
    """Discovery and the callee ``far`` on their own host; the test calls from this one."""
    with Hosts(tmp_path, 1, sshd=False) as hosts:
        host = hosts.hosts[0]
        prefix = ("ip", "netns", "exec", host.namespace)
        started: list[Process] = []
        try:
            discovery = Process("discovery", "--bind", f"tcp://{host.address}:7700", home=home,
                                prefix=prefix)  # fmt: skip
            started.append(discovery)
            url = discovery.endpoint()
            callee = Process("run", AGENT, "--name", "far", "--discovery", url,
                             "--bind", f"tcp://{host.address}:7801", "--heartbeat",
                             str(HEARTBEAT), home=home, prefix=prefix)  # fmt: skip
            started.append(callee)
            callee.endpoint()
            yield host, url, callee
        finally:
            for process in started:
                process.close()


async def _fault_and_heal(
    far: tuple[NetnsHost, str, Process], home, cut: Callable[[], None], heal: Callable[[], None]
) -> None:
    _, url, callee = far
    async with Node("caller", discovery=url, mesh=home, heartbeat=HEARTBEAT) as node:
        prober = Prober(node)
        task = asyncio.create_task(prober.run())
        try:
            await prober.until("ok", 5)
            in_flight = asyncio.create_task(node.request("far", "slow", 30, timeout=60))

            async def running_over_there() -> bool:
                return await node.request("far", "inflight", timeout=5) == 1

            await eventually(running_over_there)
            cut()
            try:
                with pytest.raises(PeerLost, match=LOST_BY_LIVENESS):  # not its 60 s timeout
                    await in_flight
                mark = prober.sent
                await prober.until("error", 3, since=mark)
            finally:
                heal()
            healed_from = prober.sent
            await prober.until("ok", 5, since=healed_from)
        finally:
            await prober.stop(task)
        prober.check()
        assert await node.request("far", "pid", timeout=5) == callee.pid  # nobody restarted


async def test_a_partition_fails_calls_typed_and_the_healed_mesh_resumes(far, home):
    host = far[0]
    await _fault_and_heal(
        far,
        home,
        cut=lambda: sh("ip", "link", "set", host.outside, "down"),
        heal=lambda: sh("ip", "link", "set", host.outside, "up"),
    )


@pytest.mark.skipif(shutil.which("nft") is None, reason="nftables is not installed (.ci/run)")
async def test_silent_packet_loss_is_found_by_heartbeats_and_survived(far, home):
    host = far[0]
    nft = ("ip", "netns", "exec", host.namespace, "nft")

    def drop_everything() -> None:
        sh(*nft, "add", "table", "inet", "fault")
        sh(*nft, "add", "chain", "inet", "fault", "input",
           "{ type filter hook input priority 0 ; policy drop ; }")  # fmt: skip
        sh(*nft, "add", "rule", "inet", "fault", "input", "iif", "lo", "accept")

    def stop_dropping() -> None:
        with contextlib.suppress(Exception):
            sh(*nft, "delete", "table", "inet", "fault")

    await _fault_and_heal(far, home, cut=drop_everything, heal=stop_dropping)
