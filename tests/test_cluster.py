"""The cluster file, pure: the README's sample parses; each mistake is named."""

from __future__ import annotations

import re
import tomllib

import pytest

from mesh import InvalidArgument
from mesh.cli.cluster import parse_cluster
from tests.test_readme import README


def readme_cluster() -> dict:
    (sample,) = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
    return tomllib.loads(sample)


def test_the_readme_sample_parses_with_its_defaults():
    cluster = parse_cluster(readme_cluster())
    assert cluster.discovery_url == "tcp://10.0.0.13:7700"
    writer, echo = cluster.agents
    assert (writer.host, writer.port, writer.args[0]) == ("gpu", 7800, "--model")
    assert (echo.target, echo.port) == ("echo", 7811)
    assert cluster.hosts["tools"].advertise == "10.0.0.13"  # defaults to the address
    assert cluster.hosts["tools"].workdir == "/tmp/agent-mesh"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda c: c["hosts"]["gpu"].update(advertise="0.0.0.0"), "peers on other hosts"),
        (lambda c: c["hosts"]["gpu"].update(advertise="127.0.0.1"), "cannot dial that"),
        (lambda c: c["hosts"]["gpu"].pop("address"), r"\[hosts.gpu\] needs an address"),
        (lambda c: c["discovery"].update(host="nowhere"), "must name one of the hosts"),
        (lambda c: c["agents"][0].update(host="moon"), "agent writer host must name"),
        (lambda c: c["agents"][1].update(name="writer"), "agent names must be unique"),
        (lambda c: c["agents"][1].update(port=7700, host="tools"), "port 7700 on tools"),
        (lambda c: c["agents"][0].update(args="--model x"), "args a list of strings"),
        (lambda c: c["hosts"]["gpu"].update(port=70000), "port must be a port number"),
        (lambda c: c.pop("hosts"), "at least one"),
    ],
)
def test_each_mistake_is_named(change, problem):
    data = readme_cluster()
    change(data)
    with pytest.raises(InvalidArgument, match=problem):
        parse_cluster(data)


def test_the_remote_shell_is_ssh_or_the_hosts_own_command():
    from mesh.cli.launch import Remote

    data = readme_cluster()
    data["hosts"]["gpu"]["ssh_options"] = ["-o", "ProxyJump=bastion"]
    data["hosts"]["tools"]["shell"] = ["ip", "netns", "exec", "tools"]
    cluster = parse_cluster(data)
    ssh = Remote(cluster.hosts["gpu"]).argv("echo hi")
    assert ssh[0] == "ssh" and ssh[-2:] == ["mesh@10.0.0.12", "echo hi"]
    assert ssh[1:3] == ["-p", "22"] and "BatchMode=yes" in ssh
    assert ssh[ssh.index("-i") + 1].endswith("/.ssh/id_ed25519")  # ~ expanded
    assert ssh[-4:-2] == ["-o", "ProxyJump=bastion"]
    assert Remote(cluster.hosts["tools"]).argv("echo hi") == [
        "ip", "netns", "exec", "tools", "sh", "-c", "echo hi",
    ]  # fmt: skip
