"""``mesh demo``: a local mesh, live. What ``./scripts/demo`` runs.

Starts a discovery node and three echo agents as separate processes, then, from this
process, lists the mesh, calls each agent, reads a stream, spreads requests over the agents
by capability, times a burst of round trips, and stops everything cleanly.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Callable

from ..ops.processes import MeshProcess
from ..runtime.keystore import MeshDirectory
from ..runtime.node import Node

AGENTS = ("echo-1", "echo-2", "echo-3")
ROUNDS = 2000


async def _talk(discovery: str, mesh: MeshDirectory, say: Callable[[str], None]) -> None:
    async with Node("demo-client", discovery=discovery, mesh=mesh) as node:
        peers = sorted(p.name for p in await node.peers() if p.name != node.name)
        say(f"mesh members: {', '.join(peers)}")
        for name in AGENTS:
            reply = await node.request(name, "echo", {"hello": name}, timeout=10)
            say(f"request  demo-client -> {name}.echo: {reply}")
        chunks = [c async for c in node.stream("echo-2", "echo_stream", ["tok", "en", "s"])]
        say(f"stream   demo-client -> echo-2.echo_stream: {chunks}")
        answered = await asyncio.gather(
            *(node.request(capability="whoami", body=0.3, timeout=10) for _ in range(9))
        )
        spread = ", ".join(f"{name} x{count}" for name, count in sorted(Counter(answered).items()))
        say(f"capability 'whoami', 9 concurrent calls, least-busy routing: {spread}")
        subscription = await node.subscribe("agents.>")
        await asyncio.gather(*(node.request(n, "announce", "ready", timeout=10) for n in AGENTS))
        events = sorted([(await subscription.get(10)).topic for _ in AGENTS])
        say(f"topic    agents.> <- {', '.join(events)} (each signed by its agent)")
        samples = []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            await node.request("echo-1", "echo", b"x" * 64, timeout=10)
            samples.append(time.perf_counter() - started)
        samples.sort()
        p50 = statistics.median(samples) * 1e6
        p99 = samples[int(len(samples) * 0.99)] * 1e6
        say(f"{ROUNDS} sealed 64 B round trips to echo-1: p50 {p50:.0f} us, p99 {p99:.0f} us")


def run_demo(mesh: MeshDirectory) -> int:
    """Run the demo in ``mesh`` (the directory every command uses: ``--mesh``,
    ``$MESH_HOME`` or ``~/.agent-mesh``, never the folder the user happens to stand in);
    returns the exit status."""
    mesh.create()
    children: list[MeshProcess] = []

    def say(text: str) -> None:
        print(text, flush=True)

    say(f"mesh directory: {mesh.path.absolute()} (its authority, identities and logs)")
    try:
        discovery = MeshProcess(mesh, "discovery", "--bind", "tcp://127.0.0.1:0")
        children.append(discovery)
        url = discovery.endpoint()
        say(f"discovery node up at {url} (pid {discovery.process.pid})")
        for name in AGENTS:
            child = MeshProcess(mesh, "run", "echo", "--discovery", url, "--name", name)
            children.append(child)
        for child in children[1:]:
            say(f"agent {child.name} up at {child.endpoint()} (pid {child.process.pid})")
        asyncio.run(_talk(url, mesh, say))
    finally:
        if children:
            say(f"stopping {len(children)} processes")
            for child, status in MeshProcess.stop_mesh(children[0], children[1:]):
                say(f"stopped {child.name}: exit status {status}")
    return 0
