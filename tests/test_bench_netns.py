"""``mesh bench --server-host``: the servers on another host (a network namespace with a real
sshd), the client here; nothing of the bench is left on that host afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.netns import Hosts, why_not
from tests.processes import ROOT

REASON = why_not()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


def test_bench_with_the_servers_on_another_host(tmp_path):
    with Hosts(tmp_path, 1) as hosts:
        host = hosts.hosts[0]
        cluster = tmp_path / "cluster.toml"
        cluster.write_text("\n".join([*hosts.host_toml(host, tmp_path), "[discovery]",
                                      f'host = "{host.name}"']) + "\n")  # fmt: skip
        out = tmp_path / "bench.json"
        done = subprocess.run(
            [sys.executable, "-m", "mesh.cli", "bench", "--tiny", "--cluster", str(cluster),
             "--server-host", host.name, "--json", str(out)],
            capture_output=True, text=True, timeout=300, cwd=ROOT,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        summary = json.loads(out.read_text())
        # the servers bound the namespace's address, which exists nowhere else
        assert summary["server_host"] == {"name": host.name, "address": host.address}
        systems = {(r["scenario"], r["system"]) for r in summary["results"]}
        assert {("request/reply 64 B", "mesh"), ("request/reply 64 B", "raw pyzmq")} <= systems
        assert ("tensor 4 MiB round trip", "mesh") in systems
        assert not any(s.endswith("peers connected") for s, _ in systems)  # local only
        assert summary["ratios"]["request/reply 64 B"]["p50"] > 0

        deadline = time.monotonic() + 10  # they exit when ssh goes: give sshd a moment
        while True:
            left = hosts.in_namespace(host, "sh", "-c", "ps -eo args | grep '[b]ench_servers'")
            if left.stdout == "" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert left.stdout == "", f"bench servers outlived the run: {left.stdout}"
        workdir = tmp_path / host.name
        assert not workdir.exists() or not any(workdir.glob("bench-*")), "workdir left behind"


def test_an_unknown_server_host_is_one_line(tmp_path):
    cluster = tmp_path / "cluster.toml"
    cluster.write_text('[hosts.a]\naddress = "10.0.0.1"\nuser = "root"\n[discovery]\nhost = "a"\n')
    done = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "bench", "--tiny", "--cluster", str(cluster),
         "--server-host", "b"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == f"mesh: error: no host 'b' in {cluster} (it has a)"
