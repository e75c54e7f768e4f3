"""Hosts for the multi-host tests: network namespaces on a bridge, each running a real sshd.

Every name carries a random suffix and everything made is undone at the end, also when the
test fails. Only the namespaces made here are ever addressed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from secrets import token_hex

SSHD = "/usr/sbin/sshd"


def why_not() -> str | None:
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "ssh", "ssh-keygen", "tcpdump"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs it)"
    if not os.path.exists(SSHD):
        return "openssh-server is not installed (.ci/run installs it)"
    probe = f"mprobe{token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)


@dataclass
class NetnsHost:
    name: str
    namespace: str
    address: str
    outside: str  # the veth end on the bridge: down means a partition


class Hosts:
    """``count`` namespaces joined by veth pairs to one bridge, each with its own sshd."""

    def __init__(self, root: Path, count: int, *, sshd: bool = True) -> None:
        self.root = root
        self.suffix = token_hex(2)
        self.subnet = f"10.{200 + int(self.suffix[:2], 16) % 50}.{int(self.suffix[2:], 16)}"
        self.bridge = f"brm{self.suffix}"
        self.gateway = f"{self.subnet}.1"
        self.hosts = [
            NetnsHost(
                f"h{i}", f"mh{i}{self.suffix}", f"{self.subnet}.{10 + i}", f"vh{i}{self.suffix}"
            )
            for i in range(1, count + 1)
        ]
        self.client_key = root / "client_key"
        self.sshd = sshd
        self._sshd: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Hosts:
        try:
            self._network()
            if self.sshd:
                self._sshds()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _network(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for index, host in enumerate(self.hosts, 1):
            outside, inside = host.outside, f"ve{index}{self.suffix}"
            sh("ip", "netns", "add", host.namespace)
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            sh("ip", "link", "set", inside, "netns", host.namespace)
            sh("ip", "link", "set", outside, "master", self.bridge, "up")
            sh("ip", "-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", inside)
            sh("ip", "-n", host.namespace, "link", "set", inside, "up")
            sh("ip", "-n", host.namespace, "link", "set", "lo", "up")

    def _sshds(self) -> None:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key))
        authorized = self.root / "authorized_keys"
        authorized.write_text(Path(f"{self.client_key}.pub").read_text())
        authorized.chmod(0o600)
        for host in self.hosts:
            key = self.root / f"host_key_{host.name}"
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
            config = self.root / f"sshd_{host.name}.conf"
            config.write_text(
                f"ListenAddress {host.address}\nPort 22\nHostKey {key}\n"
                f"PidFile {self.root}/sshd_{host.name}.pid\nAuthorizedKeysFile {authorized}\n"
                "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
                "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
            )
            with (self.root / f"sshd_{host.name}.log").open("wb") as log:
                self._sshd.append(
                    subprocess.Popen(
                        [
                            "ip",
                            "netns",
                            "exec",
                            host.namespace,
                            SSHD,
                            "-D",
                            "-e",
                            "-f",
                            str(config),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
                )
        for host in self.hosts:
            self._wait_for_ssh(host)

    def ssh_options(self) -> list[str]:
        return [
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip

    def host_toml(self, host: NetnsHost, root: Path, address: str | None = None) -> list[str]:
        """The ``[hosts.NAME]`` table of a cluster file for ``host`` (reached over ssh as root,
        this Python, a workdir under ``root``)."""
        return [
            f"[hosts.{host.name}]",
            f'address = "{address or host.address}"',
            'user = "root"',
            f'identity = "{self.client_key}"',
            f'workdir = "{root / host.name}"',
            f'python = "{sys.executable}"',
            f"ssh_options = {json.dumps(self.ssh_options())}",
            "",
        ]

    def _wait_for_ssh(self, host: NetnsHost) -> None:
        deadline = time.monotonic() + 20
        argv = ["ssh", "-i", str(self.client_key), *self.ssh_options(), "-o", "BatchMode=yes"]
        while True:
            done = subprocess.run(
                [*argv, f"root@{host.address}", "true"], capture_output=True, timeout=20
            )
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"sshd on {host.name} not answering: {done.stderr!r}")
            time.sleep(0.2)

    def in_namespace(self, host: NetnsHost, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", host.namespace, *argv],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def __exit__(self, *exc: object) -> None:
        for process in self._sshd:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        for host in self.hosts:
            # anything still running inside a namespace goes with it
            pids = subprocess.run(
                ["ip", "netns", "pids", host.namespace], capture_output=True, text=True
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
