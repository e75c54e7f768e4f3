"""The cluster file: which hosts, where discovery runs, which agents run where (pure).

```toml
[hosts.gpu]
address = "10.0.0.12"          # how ssh reaches it
advertise = "10.0.0.12"        # what peers dial (default: address); never 0.0.0.0/127.0.0.1
user = "mesh"                  # default: the launching user
port = 22
identity = "~/.ssh/id_ed25519" # optional
workdir = "/srv/mesh"          # mesh keys, logs and pid files there (default /tmp/agent-mesh)
python = "/srv/venv/bin/python"  # an environment with agent-mesh installed
install = "pip install agent-mesh"  # optional: run there when the check fails
shell = ["ip", "netns", "exec", "gpu"]  # optional: instead of ssh
ssh_options = ["-o", "ProxyJump=bastion"]  # optional: more ssh arguments

[discovery]
host = "gpu"
port = 7700

[[agents]]
name = "writer"
host = "gpu"
target = "agents.llm:LLMAgent"
port = 7801                    # default: 7800 + its index
args = ["--model", "/models/qwen"]
```
"""

from __future__ import annotations

import getpass
import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import InvalidArgument
from ..core.identity import validate_name

DEFAULT_WORKDIR = "/tmp/agent-mesh"
FIRST_AGENT_PORT = 7800


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    advertise: str
    user: str
    port: int = 22
    identity: str | None = None
    workdir: str = DEFAULT_WORKDIR
    python: str = "python3"
    install: str | None = None
    shell: tuple[str, ...] = ()
    ssh_options: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentSpec:
    name: str
    host: str
    target: str
    port: int
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cluster:
    hosts: dict[str, Host]
    discovery_host: str
    discovery_port: int
    agents: tuple[AgentSpec, ...] = field(default_factory=tuple)

    @property
    def discovery_url(self) -> str:
        return f"tcp://{self.hosts[self.discovery_host].advertise}:{self.discovery_port}"


def load_cluster(path: str | Path) -> Cluster:
    """Read and check a cluster file; InvalidArgument names the first problem."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidArgument(f"cluster file {path}: {exc}") from exc
    return parse_cluster(data)


def parse_cluster(data: dict[str, Any]) -> Cluster:
    hosts_table = _table(data, "hosts")
    if not hosts_table:
        raise InvalidArgument("the cluster file needs at least one [hosts.NAME]")
    hosts = {name: _host(name, _table(hosts_table, name)) for name in hosts_table}
    discovery = _table(data, "discovery")
    discovery_host = _host_ref(discovery.get("host"), hosts, "[discovery] host")
    discovery_port = _port(discovery.get("port", 7700), "[discovery] port")
    agents = []
    raw_agents = data.get("agents", [])
    if not isinstance(raw_agents, list):
        raise InvalidArgument("[[agents]] must be an array of tables")
    for index, raw in enumerate(raw_agents):
        agents.append(_agent(index, raw, hosts))
    names = [a.name for a in agents]
    if len(set(names)) != len(names) or "discovery" in names:
        raise InvalidArgument("agent names must be unique (and not 'discovery')")
    taken = {(discovery_host, discovery_port)}
    for agent in agents:
        if (agent.host, agent.port) in taken:
            raise InvalidArgument(f"agent {agent.name}: port {agent.port} on {agent.host} is taken")
        taken.add((agent.host, agent.port))
    return Cluster(hosts, discovery_host, discovery_port, tuple(agents))


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise InvalidArgument(f"[{key}] must be a table")
    return value


def _host(name: str, raw: dict[str, Any]) -> Host:
    where = f"[hosts.{name}]"
    address = raw.get("address")
    if not isinstance(address, str) or not address:
        raise InvalidArgument(f"{where} needs an address")
    advertise = raw.get("advertise", address)
    if not isinstance(advertise, str) or _unreachable(advertise):
        raise InvalidArgument(
            f"{where} advertise {advertise!r}: peers on other hosts cannot dial that; give an "
            "address they can reach"
        )
    shell = raw.get("shell", [])
    if not isinstance(shell, list) or not all(isinstance(s, str) for s in shell):
        raise InvalidArgument(f"{where} shell must be a list of strings")
    options = raw.get("ssh_options", [])
    if not isinstance(options, list) or not all(isinstance(s, str) for s in options):
        raise InvalidArgument(f"{where} ssh_options must be a list of strings")
    strings = {k: raw.get(k) for k in ("identity", "workdir", "python", "install", "user")}
    for key, value in strings.items():
        if value is not None and not isinstance(value, str):
            raise InvalidArgument(f"{where} {key} must be a string")
    return Host(
        name,
        address,
        advertise,
        strings["user"] or getpass.getuser(),
        _port(raw.get("port", 22), f"{where} port"),
        strings["identity"],
        strings["workdir"] or DEFAULT_WORKDIR,
        strings["python"] or "python3",
        strings["install"],
        tuple(shell),
        tuple(options),
    )


def _unreachable(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address in ("", "localhost", "*")
    return ip.is_unspecified or ip.is_loopback


def _agent(index: int, raw: Any, hosts: dict[str, Host]) -> AgentSpec:
    if not isinstance(raw, dict):
        raise InvalidArgument("each [[agents]] entry must be a table")
    name = raw.get("name")
    if not isinstance(name, str):
        raise InvalidArgument(f"agent #{index + 1} needs a name")
    validate_name(name)
    target = raw.get("target", "echo")
    args = raw.get("args", [])
    if not isinstance(target, str) or not (
        isinstance(args, list) and all(isinstance(a, str) for a in args)
    ):
        raise InvalidArgument(f"agent {name}: target is a string and args a list of strings")
    host = _host_ref(raw.get("host"), hosts, f"agent {name} host")
    port = _port(raw.get("port", FIRST_AGENT_PORT + index), f"agent {name} port")
    return AgentSpec(name, host, target, port, tuple(args))


def _host_ref(value: Any, hosts: dict[str, Host], where: str) -> str:
    if value not in hosts:
        raise InvalidArgument(f"{where} must name one of the hosts ({', '.join(hosts)})")
    return str(value)


def _port(value: Any, where: str) -> int:
    if type(value) is not int or not 0 < value < 65536:
        raise InvalidArgument(f"{where} must be a port number")
    return value
