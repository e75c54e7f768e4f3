"""``mesh bench``: what a hop costs, the sealed mesh beside raw pyzmq, in one run.

Each system's server runs in its own process (:mod:`mesh.bench.servers`) and the client in
this one; every scenario runs on both, one after the other, and the report gives the ratio
mesh / raw for p50 latency (or throughput). Topic fan-out has its subscribers in child
processes (:mod:`mesh.bench.fanout`); reliable delivery is ``scripts/delivery-bench``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import secrets
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import zmq

from ..cli.cluster import Host
from ..cli.launch import Remote, certify
from ..core.envelope import gcm_library, local_suites
from ..core.errors import InvalidArgument, LaunchError
from ..core.identity import Certificate
from ..core.wire import Suite
from ..ops.processes import read_line, served_endpoint
from ..runtime.keystore import MeshDirectory
from ..runtime.node import Node
from . import gateways as bridges
from .broker_nats import NatsTarget
from .broker_rabbit import RabbitTarget
from .fanout import FanOut
from .scenarios import (
    Result,
    blocking_round_trip,
    concurrent,
    fixed_rate,
    one_way,
    round_trip,
    streamed,
    tensor,
    with_peers,
)
from .targets import SERVER, MeshTarget, RawTarget

START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Plan:
    """How much of each scenario to run."""

    rounds: int = 5000
    large_rounds: int = 300
    warmup: int = 500
    one_way: int = 50_000
    concurrency_total: int = 8000
    chunks: int = 500
    streams: int = 5
    tensors: int = 30
    rate: int | None = None
    peer_counts: tuple[int, ...] = (2, 50)
    published: int = 1000
    subscriber_counts: tuple[int, ...] = (1, 10, 50)
    blocks: int = 5  # each scenario runs as this many blocks, systems taking turns

    @classmethod
    def quick(cls, rate: int | None = None) -> Plan:
        return cls(800, 40, 100, 5000, 1600, 200, 2, 5, rate, (2, 50), 100, (1, 10, 50), 3)

    @classmethod
    def tiny(cls) -> Plan:
        """For the test suite: every scenario, a few operations each."""
        return cls(30, 5, 5, 200, 64, 20, 1, 2, 200, (2, 4), 10, (1, 3), 2)

    def per_block(self, count: int) -> int:
        return max(1, count // self.blocks)


Step = Callable[[Any], Awaitable[Result]]


def steps(plan: Plan, fanout: FanOut | None = None) -> list[tuple[str, Step]]:
    """The scenarios, each sized for one block (``plan.blocks`` of them make the whole)."""
    block = plan.per_block
    warmup = block(plan.warmup)
    found: list[tuple[str, Step]] = []
    for size in (64, 1024, 64 * 1024, 1024 * 1024):
        n = block(plan.rounds if size <= 1024 else plan.large_rounds)
        found.append((f"rr {size}", lambda t, s=size, n=n: round_trip(t, s, n, warmup)))
    found.append(("blocking", lambda t: blocking_round_trip(t, block(plan.rounds), warmup)))
    found.append(("one-way", lambda t: one_way(t, block(plan.one_way), warmup)))
    for outstanding in (1, 4, 16, 64):
        total = max(outstanding, block(plan.concurrency_total))
        found.append(
            (
                f"concurrency {outstanding}",
                lambda t, c=outstanding, n=total: concurrent(t, c, n, warmup),
            )
        )
    found.append(("stream", lambda t: streamed(t, plan.chunks, block(plan.streams))))
    found.append(("tensor", lambda t: tensor(t, 4, block(plan.tensors), 1)))
    for connected in plan.peer_counts:
        found.append(
            (
                f"peers {connected}",
                lambda t, n=connected: with_peers(t, n, block(plan.rounds), warmup),
            )
        )
    for subscribers in plan.subscriber_counts if fanout else ():
        found.append(
            (
                f"fan-out {subscribers}",
                lambda t, n=subscribers: fanout.run(t.name, n, block(plan.published)),  # type: ignore[union-attr]
            )
        )
    if plan.rate:
        found.append(("fixed rate", lambda t: fixed_rate(t, plan.rate, block(plan.rounds), warmup)))
    return found


class Servers:
    """The servers as child processes: ours here or, through ``remote``, on another host."""

    def __init__(self, mesh: MeshDirectory, remote: Remote | None = None) -> None:
        self.mesh = mesh
        self.remote = remote
        self.address = remote.host.advertise if remote else "127.0.0.1"
        self.children: list[subprocess.Popen[str]] = []

    def serve(self, kind: str, *args: str) -> str:
        """Start one of :mod:`mesh.bench.servers`; its endpoint."""
        module = "mesh.bench.servers"
        if self.remote is None:
            return self.spawn(kind, self.address, *args, module=module)
        argv = self.remote.argv(self.remote.module(module, kind, self.address, *args))
        return self._start(argv, os.environ.copy(), kind)

    def spawn(self, *args: str, module: str) -> str:
        """Start ``python -m module args`` here; the endpoint it says it serves on."""
        env = {
            **os.environ,
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
            "MESH_HOME": str(self.mesh.path),
        }
        return self._start([sys.executable, "-m", module, *args], env, args[0])

    def _start(self, argv: list[str], env: dict[str, str], what: str) -> str:
        # stdin stays open: a bench server exits when it closes (over ssh too)
        child = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.children.append(child)
        endpoint = served_endpoint(read_line(child.stdout, START_TIMEOUT_S))
        if endpoint is None:
            where = f" on {self.remote.host.name}" if self.remote and what in SERVED else ""
            raise InvalidArgument(f"the bench server ({what}) did not start{where}")
        return endpoint

    def close(self) -> None:
        for child in self.children:
            child.kill()
            child.wait(10)


SERVED = ("raw", "raw-blocking", "mesh", "peers")  # what runs on the server host with --server-host
BROKERS: dict[str, Any] = {"nats": NatsTarget, "rabbitmq": RabbitTarget}  # by option


@dataclass
class Setup:
    """Where everything the client measures against is."""

    raw_endpoint: str
    raw_blocking_endpoint: str
    mesh_endpoint: str
    server: Certificate
    peers: list[tuple[Certificate, str]]
    fanout: FanOut
    brokers: dict[str, str]
    server_suites: tuple[Suite, ...] = (Suite.XSALSA20_POLY1305,)  # what the server accepts
    gateways: dict[str, str] = field(default_factory=dict)  # A2A base URL, MCP URL
    gateway_token: str = ""


async def run(
    plan: Plan,
    progress: Callable[[int, int, str], None],
    brokers: dict[str, str] | None = None,
    server_host: Host | None = None,
    gateways: bool = False,
) -> list[Result]:
    """Every step of ``plan`` on the mesh, raw pyzmq and each broker in ``brokers`` (a URL
    by ``BROKERS`` key), whose responder runs in a child process like our servers. With a
    ``server_host``, the mesh and raw servers run there (over the launch tooling's remote
    shell, in a directory of their own that is removed after), the client here. With
    ``gateways``, the 64 B request/reply also goes through ``mesh gateway`` and ``mesh mcp``
    (:mod:`mesh.bench.gateways`), in processes here."""
    brokers = brokers or {}
    remote = None
    if server_host is not None:
        workdir = f"{server_host.workdir}/bench-{os.getpid()}-{secrets.token_hex(3)}"
        remote = Remote(replace(server_host, workdir=workdir))
    with tempfile.TemporaryDirectory() as home:
        mesh = MeshDirectory(home)
        authority = mesh.create()
        servers = Servers(mesh, remote)
        try:
            if remote is None:
                server = mesh.identity(SERVER).require_certificate()
                mesh_endpoint = servers.serve("mesh", home)
                peer_endpoints = servers.serve("peers", home, str(max(plan.peer_counts)))
                peers = [
                    (mesh.identity(f"bench-peer-{i}").require_certificate(), endpoint)
                    for i, endpoint in enumerate(peer_endpoints.split(","))
                ]
            else:  # keys made there; many peers would need as many key exchanges: not run
                fresh = certify(remote, SERVER, authority)  # a fresh directory: always new
                assert fresh is not None
                server = fresh
                mesh_endpoint = servers.serve("mesh", remote.mesh_home)
                peers = []
            raw_endpoint = servers.serve("raw")
            raw_blocking_endpoint = servers.serve("raw-blocking")
            discovery = servers.spawn("discovery", "--bind", "tcp://127.0.0.1:0", module="mesh.cli")
            for kind, url in brokers.items():
                await (await BROKERS[kind].connect(url)).close()  # reachable, or one line
                servers.spawn(url, module=BROKERS[kind].__module__)
            bearer = bridges.token()
            found = _start_gateways(servers, discovery, bearer) if gateways else {}
            setup = Setup(
                raw_endpoint,
                raw_blocking_endpoint,
                mesh_endpoint,
                server,
                peers,
                FanOut(home, discovery),
                brokers,
                local_suites() if remote is None else (Suite.XSALSA20_POLY1305,),
                found,
                bearer,
            )
            return await _measure(plan, mesh, setup, progress)
        finally:
            servers.close()
            if remote is not None:
                with contextlib.suppress(LaunchError):
                    remote.run(f"rm -rf {shlex.quote(remote.host.workdir)}")


def _start_gateways(servers: Servers, discovery: str, bearer: str) -> dict[str, str]:
    """The echo agent, then both gateways in front of it (each finds it at start)."""
    servers.spawn(
        "run", "echo", "--name", bridges.AGENT, "--discovery", discovery, module="mesh.cli"
    )
    http = ("--listen", "127.0.0.1:0", "--token", bearer, "--discovery", discovery)
    return {
        "a2a": servers.spawn("gateway", *http, module="mesh.cli"),
        "mcp": servers.spawn("mcp", "--http", *http[1:], module="mesh.cli"),
    }


async def _measure(
    plan: Plan, mesh: MeshDirectory, setup: Setup, progress: Callable[[int, int, str], None]
) -> list[Result]:
    results = []
    async with Node("bench-client", discovery=[], mesh=mesh) as node:
        # a server here runs what this process runs: tell the node (it has no directory entry
        # to learn it from); one on another host may lack AES instructions
        node.add_peer(setup.server, setup.mesh_endpoint, cipher_suites=setup.server_suites)
        raw = RawTarget(setup.raw_endpoint, setup.raw_blocking_endpoint)
        others = []
        try:
            for kind, url in setup.brokers.items():
                others.append(await BROKERS[kind].connect(url))
            if setup.gateways:
                others.append(
                    await bridges.A2ATarget.connect(setup.gateways["a2a"], setup.gateway_token)
                )
                others.append(
                    await bridges.McpTarget.connect(setup.gateways["mcp"], setup.gateway_token)
                )
            ours = MeshTarget(node, setup.server, setup.mesh_endpoint, mesh.identity("bench-sync"))
            ours.peers = setup.peers
            ours.server_suites = setup.server_suites
            targets: list[Any] = [ours, raw, *others]
            work = [
                (label, step, [t for t in targets if _runs(label, t, ours)])
                for label, step in steps(plan, setup.fanout)
            ]
            total = sum(plan.blocks * len(systems) for _, _, systems in work)
            done = 0
            for label, step, systems in work:
                merged: dict[str, Result] = {}
                # blocks of each system in turn: a slow spell of the machine hits them all
                for block in range(plan.blocks):
                    for target in systems:
                        progress(done, total, f"{label}: {target.name} ({block + 1})")
                        part = await step(target)
                        if target.name in merged:
                            merged[target.name].absorb(part)
                        else:
                            merged[target.name] = part.first_block()
                        done += 1
                results += merged.values()
            progress(total, total, "done")
        finally:
            raw.close()
            for other in others:
                await other.close()
    return results


def _runs(label: str, target: Any, ours: MeshTarget) -> bool:
    """Whether ``target`` takes part in the scenario ``label``."""
    if {label, label.split()[0]} & set(getattr(target, "skipped", ())):
        return False
    return not (label.startswith("peers") and (target is not ours or not ours.peers))


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "platform": platform.platform(),
        "cipher": _cipher(),
    }


def _cipher() -> str:
    """The suite two nodes here agree on, and which library runs it."""
    if Suite.AES256_GCM in local_suites():
        return f"AES-256-GCM through {gcm_library()}"
    return "XSalsa20-Poly1305 (no AES instructions)"


def report(results: list[Result]) -> dict[str, Any]:
    """Every figure, plus mesh / raw ratios per scenario."""
    rows = [r.to_dict() for r in results]
    ratios = {}
    by_scenario: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_scenario.setdefault(row["scenario"], {})[row["system"]] = row
    versus: dict[str, dict[str, Any]] = {}
    spread: dict[str, dict[str, list[float]]] = {}
    for scenario, systems in by_scenario.items():
        mesh, raw = systems.get("mesh"), systems.get("raw pyzmq")
        if mesh and raw:
            ratios[scenario] = _ratio(scenario, mesh, raw)
            spread[scenario] = _spread(scenario, mesh, raw)
        for other, row in systems.items():
            if mesh and other not in ("mesh", "raw pyzmq"):
                versus.setdefault(other, {})[scenario] = _ratio(scenario, mesh, row)
    flat = [r for r in rows if r["params"].get("peers")]
    if len(flat) >= 2:  # p50 with the most peers over p50 with the fewest: 1.0 is flat
        fewest, most = flat[0]["latency_us"]["p50"], flat[-1]["latency_us"]["p50"]
        ratios[f"p50 with {flat[-1]['params']['peers']} peers vs {flat[0]['params']['peers']}"] = {
            "p50": round(most / fewest, 3) if fewest else 0.0
        }
    return {
        "machine": machine(),
        "results": rows,
        "ratios": ratios,
        "spread": spread,
        "mesh_vs": versus,
    }


def _spread(scenario: str, mesh: dict[str, Any], raw: dict[str, Any]) -> dict[str, list[float]]:
    """The lowest and highest ratio of one block of the mesh to the raw block beside it."""
    figure = "messages_per_s" if scenario.startswith("one-way") else "p50"
    pairs = [
        (ours[figure], theirs[figure])
        for ours, theirs in zip(mesh["blocks"], raw["blocks"], strict=False)
        if ours[figure] and theirs[figure]
    ]
    if not pairs:
        return {}
    found = [ours / theirs for ours, theirs in pairs]
    name = "throughput" if figure == "messages_per_s" else "p50"
    return {name: [round(min(found), 3), round(max(found), 3)]}


def _ratio(scenario: str, mesh: dict[str, Any], raw: dict[str, Any]) -> dict[str, float]:
    if scenario.startswith("one-way"):
        ours, theirs = (s["throughput"]["messages_per_s"] for s in (mesh, raw))
        return {"throughput": round(ours / theirs, 3) if theirs else 0.0}
    found = {}
    for point in ("p50", "p99"):
        ours, theirs = mesh["latency_us"][point], raw["latency_us"][point]
        found[point] = round(ours / theirs, 3) if theirs else 0.0
    return found


def table(summary: dict[str, Any]) -> str:
    lines = [
        f"{'scenario':<34}{'system':<11}{'p50':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}{'max':>10}"
        f"{'msg/s':>10}{'MB/s':>8}  ratio",
    ]
    for row in summary["results"]:
        thr = row["throughput"]
        lat = row["latency_us"] or dict.fromkeys(("p50", "p90", "p99", "p99.9", "max"), 0.0)
        ratio = ""
        if row["system"] == "mesh":
            found = summary["ratios"].get(row["scenario"], {})
            ratio = "  ".join(f"{k} {v:.2f}x" for k, v in found.items())
            for name, (low, high) in summary.get("spread", {}).get(row["scenario"], {}).items():
                ratio += f"  ({name} by block {low:.2f}-{high:.2f})"
        elif row["system"] != "raw pyzmq":
            found = summary.get("mesh_vs", {}).get(row["system"], {}).get(row["scenario"], {})
            ratio = "mesh/this " + "  ".join(f"{k} {v:.2f}x" for k, v in found.items())
        lines.append(
            f"{row['scenario']:<34}{row['system']:<11}{lat['p50']:>9.1f}{lat['p90']:>9.1f}"
            f"{lat['p99']:>9.1f}{lat['p99.9']:>9.1f}{lat['max']:>10.1f}"
            f"{thr['messages_per_s']:>10.0f}{thr['mb_per_s']:>8.1f}  {ratio}"
        )
    scenarios = {row["scenario"] for row in summary["results"]}
    for name, found in summary["ratios"].items():
        if name not in scenarios:
            lines.append(f"{name}: " + "  ".join(f"{k} {v:.2f}x" for k, v in found.items()))
    lines.append("latency in microseconds; ratio = mesh / raw pyzmq (lower is better, except")
    lines.append("one-way, where it is throughput: higher is better); by block: the lowest and")
    lines.append("highest ratio of a block to the raw block run beside it")
    return "\n".join(lines)


def progress_bar(stream: Any) -> Callable[[int, int, str], None]:
    """A bar redrawn in place on a terminal; one line per step otherwise (CI logs)."""
    tty = stream.isatty()

    def show(done: int, total: int, label: str) -> None:
        filled = 30 * done // max(total, 1)
        line = f"[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {label}"
        stream.write(f"\r{line:<80}" if tty else f"{line}\n")
        if tty and done >= total:
            stream.write("\n")
        stream.flush()

    return show


def write_json(summary: dict[str, Any], path: str) -> None:
    Path(path).write_text(json.dumps(summary, indent=2) + "\n")


def main(
    plan: Plan,
    json_path: str | None,
    plot_dir: str | None,
    brokers: dict[str, str] | None = None,
    server_host: Host | None = None,
    gateways: bool = False,
) -> int:
    results = asyncio.run(run(plan, progress_bar(sys.stderr), brokers, server_host, gateways))
    summary = report(results)
    if server_host is not None:  # the machine figures are the client's
        summary["server_host"] = {"name": server_host.name, "address": server_host.advertise}
        # a server elsewhere is offered suite 1 only (it may lack AES instructions)
        summary["machine"]["cipher"] = "XSalsa20-Poly1305 (server on another host)"
    print(table(summary))
    if json_path:
        write_json(summary, json_path)
    if plot_dir:
        from .plot import plot

        for path in plot(summary, plot_dir):
            print(f"wrote {path}")
    return 0
