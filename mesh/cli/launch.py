"""``mesh launch CLUSTER up|status|down|logs``: a mesh across hosts from one cluster file.

Everything on a host goes through one remote-shell command (``ssh`` by default, or the
host's ``shell``, e.g. ``ip netns exec NS``) running short POSIX ``sh`` scripts, so a host
needs only sshd and a Python environment with agent-mesh. Keys: each node's secret keys are
made on the host that uses them (``mesh keygen``); only the public keys come back, the
authority here signs a certificate, and the certificate and the authority's *public* key go
out (``mesh install``). Processes run detached (``setsid nohup``), one pid file and one log
per node under the host's ``workdir``; ``down`` stops the pids in those files and nothing
else. ``up`` can be re-run: running nodes are left alone, stopped ones started.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.errors import HostUnreachable, LaunchError, MeshError
from ..core.identity import Certificate
from ..runtime.keystore import NOT_BEFORE_SLACK_S, MeshDirectory
from ..runtime.node import Node
from .cluster import AgentSpec, Cluster, Host

REMOTE_TIMEOUT_S = 60.0
REGISTER_TIMEOUT_S = 120.0
SSH_FAILED = 255  # ssh's own failure; otherwise it exits with the remote command's status
CERT_LIFETIME_S = 365 * 86400
DISCOVERY = "discovery"
# a sh function: is pid $1 alive? A zombie is not (a detached node's parent is gone, and the
# process that inherits it may never reap it)
ALIVE = (
    "alive() { s=$(sed -n 's/.*) \\(.\\).*/\\1/p' /proc/$1/stat 2>/dev/null); "
    '[ -n "$s" ] && [ "$s" != Z ] && [ "$s" != X ]; }; '
)


@dataclass(frozen=True)
class Placement:
    """One node the cluster runs: its name, host and ``mesh`` arguments."""

    name: str
    host: Host
    args: tuple[str, ...]


class Remote:
    """Run scripts on one host."""

    def __init__(self, host: Host, timeout: float = REMOTE_TIMEOUT_S) -> None:
        self.host = host
        self.timeout = timeout

    def argv(self, script: str) -> list[str]:
        host = self.host
        if host.shell:
            return [*host.shell, "sh", "-c", script]
        command = ["ssh", "-p", str(host.port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        if host.identity:
            command += ["-i", os.path.expanduser(host.identity)]
        return [*command, *host.ssh_options, f"{host.user}@{host.address}", script]

    def run(self, script: str) -> str:
        """The script's stdout; LaunchError (one line) if it cannot run or fails."""
        argv = self.argv(script)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise LaunchError(
                f"no answer within {self.timeout:.0f} s", host=self.host.name
            ) from None
        except OSError as exc:
            raise LaunchError(f"cannot run {argv[0]}: {exc.strerror}", host=self.host.name) from exc
        if done.returncode != 0:
            said = (done.stderr.strip() or done.stdout.strip()).splitlines()
            reason = said[-1] if said else "no output"
            if done.returncode == SSH_FAILED and not self.host.shell:
                raise HostUnreachable(reason, host=self.host.name)
            raise LaunchError(f"{reason} (exit {done.returncode})", host=self.host.name)
        return done.stdout

    def mesh(self, *args: str) -> str:
        """``python -m mesh.cli ARGS`` in the host's environment and mesh directory."""
        return self.run(self.module("mesh.cli", *args))

    def module(self, name: str, *args: str) -> str:
        """The script that runs ``python -m NAME ARGS`` in the host's environment."""
        return f"{self._env()} {self.python()} -m {name} {_quote(args)}"

    @property
    def mesh_home(self) -> str:
        return self.host.workdir + "/mesh"

    def _env(self) -> str:
        return f"MESH_HOME={shlex.quote(self.mesh_home)}"

    def python(self) -> str:
        return shlex.quote(self.host.python)

    def start(self, name: str, args: tuple[str, ...]) -> str:
        """Start ``mesh ARGS`` detached unless its pid file names a live process."""
        w = shlex.quote(self.host.workdir)
        pid = f"{w}/pids/{name}.pid"
        return self.run(
            f"{ALIVE}mkdir -p {w}/logs {w}/pids && "
            f'if [ -f {pid} ] && alive "$(cat {pid})"; then echo running; else '
            f"{self._env()} setsid nohup {self.python()} -m mesh.cli {_quote(args)} "
            f"> {w}/logs/{name}.log 2>&1 < /dev/null & echo $! > {pid}; echo started; fi"
        ).strip()

    def states(self) -> dict[str, str]:
        """``running`` or ``stopped`` for each pid file on the host."""
        w = shlex.quote(self.host.workdir)
        out = self.run(
            f"{ALIVE}"
            f'for f in {w}/pids/*.pid; do [ -f "$f" ] || continue; n=$(basename "$f" .pid); '
            f'if alive "$(cat "$f")"; then echo "$n running"; '
            f'else echo "$n stopped"; fi; done'
        )
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    def stop(self, names: list[str]) -> str:
        """SIGTERM each named pid, SIGKILL after 10 s; remove the pid files."""
        w = shlex.quote(self.host.workdir)
        quoted = " ".join(shlex.quote(n) for n in names)
        return self.run(
            f"{ALIVE}"
            f'for n in {quoted}; do f={w}/pids/$n.pid; [ -f "$f" ] || continue; '
            f'p=$(cat "$f"); kill -TERM "$p" 2>/dev/null; i=0; '
            f'while alive "$p" && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; '
            f'kill -KILL "$p" 2>/dev/null; rm -f "$f"; echo "$n stopped"; done'
        )

    def logs(self, name: str, lines: int) -> str:
        w = shlex.quote(self.host.workdir)
        return self.run(f"tail -n {int(lines)} {w}/logs/{shlex.quote(name)}.log")


def _quote(args: tuple[str, ...]) -> str:
    return " ".join(shlex.quote(a) for a in args)


def certify(remote: Remote, name: str, authority: Any) -> Certificate | None:
    """Keys made there, certificate made here: only public material travels. The new
    certificate, or None when the host's keys already carry one from ``authority``."""
    public = json.loads(remote.mesh("keygen", name))
    if public["certified"] and bytes.fromhex(public["authority"]) == authority.verify_key:
        return None
    certificate: Certificate = authority.issue(
        name,
        bytes.fromhex(public["box_public"]),
        bytes.fromhex(public["sign_public"]),
        not_before=int(time.time()) - NOT_BEFORE_SLACK_S,
        lifetime_s=CERT_LIFETIME_S,
    )
    remote.mesh(
        "install", name,
        "--certificate", certificate.to_bytes().hex(),
        "--authority", authority.verify_key.hex(),
    )  # fmt: skip
    return certificate


class Launcher:
    """What ``mesh launch`` does with one cluster file and this machine's authority."""

    def __init__(
        self, cluster: Cluster, mesh: MeshDirectory, say: Callable[[str], None] = print
    ) -> None:
        self.cluster = cluster
        self.mesh = mesh
        self.say = say
        self.remotes = {name: Remote(host) for name, host in cluster.hosts.items()}

    def placements(self) -> list[Placement]:
        c = self.cluster
        discovery_host = c.hosts[c.discovery_host]
        found = [
            Placement(
                DISCOVERY,
                discovery_host,
                ("discovery", "--bind", f"tcp://0.0.0.0:{c.discovery_port}"),
            )
        ]
        for agent in c.agents:
            found.append(Placement(agent.name, c.hosts[agent.host], self._agent_args(agent)))
        return found

    def _agent_args(self, agent: AgentSpec) -> tuple[str, ...]:
        advertise = self.cluster.hosts[agent.host].advertise
        return (
            "run", agent.target, "--name", agent.name,
            "--discovery", self.cluster.discovery_url,
            "--bind", f"tcp://0.0.0.0:{agent.port}",
            "--advertise", f"tcp://{advertise}:{agent.port}",
            *agent.args,
        )  # fmt: skip

    # ------------------------------------------------------------------ up

    def up(self) -> None:
        placements = self.placements()
        authority = self.mesh.create()
        for name in sorted({p.host.name for p in placements}):
            self._check(self.remotes[name])
        for placement in placements:
            self._certify(placement, authority)
        for placement in placements:
            state = self.remotes[placement.host.name].start(placement.name, placement.args)
            self.say(f"{placement.name:<16} {state} on {placement.host.name}")
        asyncio.run(self._wait_registered([p.name for p in placements[1:]]))

    def _check(self, remote: Remote) -> None:
        probe = "-c 'import mesh; print(mesh.__version__)'"
        script = f"{remote.python()} {probe}"
        try:
            version = remote.run(script).strip()
        except HostUnreachable:
            raise  # the connection's failure is the cause, not the Python at the other end
        except LaunchError:
            if remote.host.install is None:
                raise LaunchError(
                    f"agent-mesh is not importable by {remote.host.python} (set python or "
                    "install in the cluster file)",
                    host=remote.host.name,
                ) from None
            remote.run(remote.host.install)
            version = remote.run(script).strip()
        self.say(f"host {remote.host.name:<11} agent-mesh {version}")

    def _certify(self, placement: Placement, authority: Any) -> None:
        if certify(self.remotes[placement.host.name], placement.name, authority):
            self.say(f"{placement.name:<16} certified (keys made on {placement.host.name})")

    async def _wait_registered(self, names: list[str]) -> None:
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        shown: set[str] = set()
        async with self._node() as node:
            while True:
                try:
                    live = {p.name for p in await node.peers()}
                except MeshError:
                    live = set()
                for name in sorted((live & set(names)) - shown):
                    shown.add(name)
                    self.say(f"{name:<16} registered ({len(shown)}/{len(names)})")
                if set(names) <= live:
                    return
                if time.monotonic() > deadline:
                    missing = ", ".join(sorted(set(names) - live))
                    raise LaunchError(f"not registered in {REGISTER_TIMEOUT_S:.0f} s: {missing}")
                await asyncio.sleep(0.5)

    def _node(self) -> Node:
        identity = self.mesh.ephemeral_identity(f"launch-{os.getpid()}")
        return Node(
            identity.name,
            identity=identity,
            trust=self.mesh.trust(),
            discovery=self.cluster.discovery_url,
            register=False,
        )

    # ------------------------------------------------------------------ status, down, logs

    def status(self) -> list[dict[str, Any]]:
        """One row per node of the cluster: host, process state (``running``, ``stopped``,
        ``not started`` or ``unreachable``, with ssh's ``reason``), registered (for
        discovery: whether it answered), round trip."""
        states: dict[str, dict[str, str]] = {}
        reasons: dict[str, str] = {}
        for name, remote in self.remotes.items():
            try:
                states[name] = remote.states()
            except LaunchError as exc:
                states[name] = {"": "unreachable"}
                reasons[name] = str(exc)
        return asyncio.run(self._status_rows(states, reasons))

    async def _status_rows(
        self, states: dict[str, dict[str, str]], reasons: dict[str, str]
    ) -> list[dict[str, Any]]:
        rows = []
        async with self._node() as node:
            try:
                live = {p.name for p in await node.peers()}
                answered = True
            except MeshError:
                live, answered = set(), False
            for placement in self.placements():
                host_states = states[placement.host.name]
                state = host_states.get(placement.name, host_states.get("", "not started"))
                rtt = None
                if placement.name in live and placement.name != DISCOVERY:
                    try:
                        rtt = round(await node.ping(placement.name, timeout=3.0) * 1000, 3)
                    except MeshError:
                        rtt = None
                rows.append(
                    {
                        "name": placement.name,
                        "host": placement.host.name,
                        "state": state,
                        "registered": placement.name in live
                        or (placement.name == DISCOVERY and answered),
                        "rtt_ms": rtt,
                        "reason": reasons.get(placement.host.name),
                    }
                )
        return rows

    def down(self) -> None:
        by_host: dict[str, list[str]] = {}
        for placement in reversed(self.placements()):  # agents first, discovery last
            by_host.setdefault(placement.host.name, []).append(placement.name)
        for host, names in by_host.items():
            for line in self.remotes[host].stop(names).splitlines():
                self.say(f"{line} on {host}")

    def logs(self, name: str, lines: int = 50) -> str:
        for placement in self.placements():
            if placement.name == name:
                return self.remotes[placement.host.name].logs(name, lines)
        raise LaunchError(f"no node {name!r} in the cluster file")
