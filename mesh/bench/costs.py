"""Where a round trip's time goes: what ``mesh bench --costs`` prints and docs/benchmarks.md
shows beside the targets a row misses.

Two measurements, both on this machine:

- **cipher passes**: one seal and one open of a body of each size, per library that can run
  here (XSalsa20-Poly1305 through libsodium; AES-256-GCM through each backend), on warm
  buffers: the floor a round trip pays four times; and an Ed25519 signature and its check,
  which every topic message costs its publisher once and each subscriber once;
- **CPU per round trip, by thread**: the mesh's echo and raw pyzmq's, one request at a time,
  with the CPU each process spent per round trip read from ``/proc`` for each of its threads
  (the Python thread that runs the loop, ZeroMQ's I/O thread, the rest). The mesh's figure
  above raw's on the Python thread is the runtime and the envelope; on the I/O thread it is
  the kernel's copies of larger frames and the buffers ZeroMQ allocates for them;
- **the blocking floor**: a blocking pyzmq client against raw pyzmq's blocking echo and
  against its asyncio echo: what an event loop on the other end costs by itself.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import zmq

from ..core import _gcm, _sodium
from ..core.envelope import local_suites
from ..core.errors import InvalidArgument
from ..core.wire import MAC_SIZE
from ..runtime.keystore import MeshDirectory
from ..runtime.node import Node
from .targets import SERVER, RawTarget, body_of

SIZES = (64, 65536, 1 << 20)
ANSWER_MS = 10_000
PROC = "/proc"


def cipher_passes(sizes: tuple[int, ...] = SIZES, seconds: float = 0.2) -> list[dict[str, Any]]:
    """Microseconds to seal ``size`` bytes into a buffer and to open them into a new one,
    per cipher and library (median of repeated runs over about ``seconds`` each). The
    runtime opens attachments from 64 KiB in place, which saves the new buffer: these
    opening figures are an upper bound for those."""
    key = bytes(range(32))
    rows = []
    for size in sizes:
        plain = os.urandom(size)
        boxed = bytearray(size + MAC_SIZE)
        for name, seal, open_ in _ciphers(key):
            seal(boxed, plain)
            rows.append(
                {
                    "cipher": name,
                    "size": size,
                    "seal_us": _median_us(lambda s=seal, b=boxed, p=plain: s(b, p), seconds),
                    "open_us": _median_us(lambda o=open_, b=boxed: o(b), seconds),
                }
            )
    return rows


def signatures(seconds: float = 0.2) -> list[dict[str, Any]]:
    """Microseconds to sign and to verify a topic message with Ed25519: every PUBLISH frame
    is signed once and verified by each subscriber (protocol.md 7.8)."""
    from nacl.signing import SigningKey

    signer = SigningKey(bytes(range(32)))
    message = bytes(150)  # a 64 B body's frame, about
    signed = signer.sign(message)
    return [
        {
            "cipher": "Ed25519 (topic frames)",
            "size": len(message),
            "seal_us": _median_us(lambda: signer.sign(message), seconds),
            "open_us": _median_us(lambda: signer.verify_key.verify(signed), seconds),
        }
    ]


def _ciphers(key: bytes) -> Iterator[tuple[str, Callable[..., Any], Callable[..., Any]]]:
    nonce = bytes(24)
    yield (
        "XSalsa20-Poly1305, libsodium",
        lambda out, plain: _sodium.seal_into(out, 0, plain, nonce, key),
        lambda boxed: _sodium.open_to_bytearray(boxed, nonce, key),
    )
    if not _gcm.available():
        return
    iv = bytes(_gcm.IV_SIZE)
    for backend in _gcm.backends():
        prepared = backend.prepare(key)
        yield (
            f"AES-256-GCM, {backend.name}",
            lambda out, plain, b=backend, k=prepared: b.seal_into(out, 0, plain, iv, k, b""),
            lambda boxed, b=backend, k=prepared: b.open_to_bytearray(boxed, iv, k, b""),
        )


def _median_us(operation: Callable[[], object], seconds: float) -> float:
    samples = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 5:
        started = time.perf_counter_ns()
        operation()
        samples.append(time.perf_counter_ns() - started)
    return round(statistics.median(samples) / 1000, 1)


def thread_seconds(pid: int) -> dict[str, float] | None:
    """CPU seconds (user and system) each thread of ``pid`` has used, by role: ``python``
    (the main thread), ``zeromq`` (ZeroMQ's background threads), ``other``; None where
    /proc cannot tell (not Linux)."""
    tasks = f"{PROC}/{pid}/task"
    try:
        names = os.listdir(tasks)
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    used = {"python": 0.0, "zeromq": 0.0, "other": 0.0}
    for tid in names:
        try:
            stat = Path(f"{tasks}/{tid}/stat").read_text()
        except OSError:
            continue  # a thread that ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        role = "python" if tid == str(pid) else "zeromq" if name.startswith("ZMQbg") else "other"
        used[role] += seconds
    return used


@contextmanager
def _per_round_trip(pids: dict[str, int], rounds: int, into: dict[str, Any]) -> Iterator[None]:
    """CPU microseconds per round trip, by process and thread role, spent inside the block."""
    before = {who: thread_seconds(pid) for who, pid in pids.items()}
    started = time.perf_counter()
    yield
    into["wall_us"] = round((time.perf_counter() - started) / rounds * 1e6, 1)
    for who, pid in pids.items():
        after, was = thread_seconds(pid), before[who]
        if after is None or was is None:
            continue
        for role, seconds in after.items():
            into[f"{who}_{role}_us"] = round((seconds - was[role]) / rounds * 1e6, 1)


async def thread_costs(
    servers: Any, mesh: MeshDirectory, sizes: tuple[int, ...] = SIZES, seconds: float = 3.0
) -> list[dict[str, Any]]:
    """For each size, the mesh's echo and raw pyzmq's, one at a time for about ``seconds``
    each: wall and CPU time per round trip, by process and thread. ``servers`` is the
    bench's :class:`~mesh.bench.suite.Servers` (the mesh and raw servers are started here)."""
    server = mesh.identity(SERVER).require_certificate()
    mesh_endpoint = servers.serve("mesh", str(mesh.path))
    mesh_pid = servers.children[-1].pid
    raw_endpoint = servers.serve("raw")
    raw_pid = servers.children[-1].pid
    rows = []
    async with Node("bench-client", discovery=[], mesh=mesh) as node:
        node.add_peer(server, mesh_endpoint, cipher_suites=local_suites())
        raw = RawTarget(raw_endpoint, "")
        try:
            for size in sizes:
                body = body_of(size)
                calls = {
                    "mesh": (lambda b=body: node.request(SERVER, "echo", b, timeout=60), mesh_pid),
                    "raw pyzmq": (lambda b=body: raw.echo(b), raw_pid),
                }
                for system, (call, pid) in calls.items():
                    for _ in range(50):  # warm: connection, caches, allocator
                        await call()
                    rounds = await _rounds_in(call, seconds / 10)
                    row: dict[str, Any] = {"system": system, "size": size, "rounds": rounds}
                    with _per_round_trip({"client": os.getpid(), "server": pid}, rounds, row):
                        for _ in range(rounds):
                            await call()
                    rows.append(row)
        finally:
            raw.close()
    return rows


async def _rounds_in(call: Callable[[], Any], seconds: float) -> int:
    """How many calls take about ten times ``seconds`` (a short trial run scaled up)."""
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        await call()
        count += 1
    return max(count * 10, 100)


async def measure(seconds: float = 3.0) -> dict[str, Any]:
    """Both measurements, the servers in child processes as ``mesh bench`` runs them."""
    from .suite import Servers  # the suite imports this module for --costs

    with tempfile.TemporaryDirectory() as home:
        mesh = MeshDirectory(home)
        mesh.create()
        servers = Servers(mesh)
        try:
            threads = await thread_costs(servers, mesh, seconds=seconds)
            floor = blocking_floor(servers, seconds=seconds)
        finally:
            servers.close()
    passes = cipher_passes(seconds=seconds / 15) + signatures(seconds / 15)
    from .suite import machine

    return {"machine": machine(), "ciphers": passes, "threads": threads, "blocking": floor}


def blocking_floor(servers: Any, seconds: float = 3.0) -> list[dict[str, Any]]:
    """A blocking pyzmq client's 64 B round trip against raw pyzmq's blocking echo and
    against its asyncio echo, in turns: what the other end being an event loop costs
    before any mesh code runs (the SyncNode row's mesh server is an asyncio node)."""
    servers_by_kind = {
        "blocking echo": servers.serve("raw-blocking"),
        "asyncio echo": servers.serve("raw").split(",")[0],
    }
    context = zmq.Context.instance()
    sockets = {}
    for kind, endpoint in servers_by_kind.items():
        socket = context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVTIMEO, ANSWER_MS)  # a server that died: an error, not a hang
        socket.connect(endpoint)
        sockets[kind] = socket
    body = bytes(64)
    walls: dict[str, list[float]] = {kind: [] for kind in sockets}
    try:
        for _ in range(5):  # blocks in turns: a slow spell hits both
            for kind, socket in sockets.items():
                samples = []
                deadline = time.perf_counter() + seconds / 10
                while time.perf_counter() < deadline or len(samples) < 50:
                    started = time.perf_counter_ns()
                    socket.send(body)
                    try:
                        socket.recv()
                    except zmq.Again:
                        raise InvalidArgument(f"raw pyzmq's {kind} stopped answering") from None
                    samples.append(time.perf_counter_ns() - started)
                walls[kind].append(statistics.median(samples) / 1000)
    finally:
        for socket in sockets.values():
            socket.close()
    return [
        {"client": "blocking pyzmq", "server": kind, "p50_us": round(statistics.median(w), 1)}
        for kind, w in walls.items()
    ]


def table(costs: dict[str, Any]) -> str:
    """Both measurements as plain-text tables."""
    lines = ["cipher                          size      seal us    open us (into a new buffer)"]
    for row in costs["ciphers"]:
        lines.append(
            f"{row['cipher']:<30} {_size(row['size']):>6} {row['seal_us']:>11} {row['open_us']:>10}"
        )
    lines += [
        "",
        "per round trip, us              wall   client: python  zeromq  other"
        "   server: python  zeromq  other",
    ]
    for row in costs["threads"]:
        cells = [
            row.get(f"{who}_{role}_us", "-")
            for who in ("client", "server")
            for role in ("python", "zeromq", "other")
        ]
        lines.append(
            f"{row['system']:<10} {_size(row['size']):>6} {row['wall_us']:>12}"
            f"   {cells[0]:>14} {cells[1]:>7} {cells[2]:>6}"
            f"   {cells[3]:>14} {cells[4]:>7} {cells[5]:>6}"
        )
    lines += ["", "64 B round trip, blocking pyzmq client      p50 us"]
    for row in costs.get("blocking", []):
        lines.append(f"against raw pyzmq's {row['server']:<24} {row['p50_us']:>6}")
    return "\n".join(lines)


def _size(size: int) -> str:
    return (
        f"{size >> 20} MiB"
        if size >= 1 << 20
        else f"{size >> 10} KiB"
        if size >= 1024
        else f"{size} B"
    )
