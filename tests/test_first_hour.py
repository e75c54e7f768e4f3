"""A newcomer's first hour (issue 21): the documented paths, run the way a user runs them
(the console script, from their own folder)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT, Process

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast

MESH = Path(sys.executable).parent / "mesh"  # the console script a user types
GREETER = """
class Greeter:
    def __init__(self, node):
        node.handler("greet", self.greet)

    async def greet(self, body, ctx):
        return f"hello {body['name']}, from {ctx.peer}"
"""


def test_mesh_run_imports_from_the_folder_the_user_stands_in(tmp_path, discovery, home):
    """`mesh run myagent:Greeter` (mesh run --help's example) from the folder holding
    myagent.py, as `python -m` and `uvicorn app:app` allow; and a handler's failure reads
    as its type and message (`KeyError: 'name'`), not a bare `'name'`."""
    (tmp_path / "myagent.py").write_text(GREETER)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MESH_DISCOVERY")}
    env["MESH_HOME"] = str(home)
    greeter = Process(
        "myagent:Greeter", "--name", "greeter", "--discovery", discovery,
        home=home, command=[str(MESH), "run"], cwd=tmp_path, env=env,
    )  # fmt: skip
    try:
        greeter.endpoint()
        call = [str(MESH), "call", "greeter", "greet"]
        where = ["--discovery", discovery]
        answered = subprocess.run(
            [*call, '{"name": "ada"}', *where], capture_output=True, text=True, env=env, timeout=60
        )
        assert answered.returncode == 0, answered.stderr
        assert "hello ada" in answered.stdout
        failed = subprocess.run(
            [*call, '{"nom": "ada"}', *where], capture_output=True, text=True, env=env, timeout=60
        )
        assert failed.returncode != 0
        assert failed.stderr.strip().splitlines() == ["mesh: error: KeyError: 'name'"]
    finally:
        greeter.close()


def test_scripts_launch_reads_a_cluster_file_relative_to_the_user(tmp_path):
    """`scripts/launch cluster.toml status`, the README's form, from the folder holding the
    file: the path is the user's, not the repository's."""
    readme = (ROOT / "README.md").read_text()
    (sample,) = re.findall(r"```toml\n(.*?)```", readme, re.S)
    (tmp_path / "cluster.toml").write_text(sample)
    done = subprocess.run(
        [str(ROOT / "scripts" / "launch"), "cluster.toml", "logs"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.stderr.strip().splitlines()[-1] == "mesh: error: logs needs the name of a node"


def test_a_negative_timeout_and_a_help_flag_are_not_taken_literally(tmp_path):
    """Item 10: `mesh call --timeout -1` is refused in one line; `python -m agents.tiny
    --help` prints its usage instead of building a model into a folder named --help."""
    refused = subprocess.run(
        [str(MESH), "call", "x", "y", "--timeout", "-1"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode == 2
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .endswith("argument --timeout: '-1' is not a positive number of seconds")
    )
    helped = subprocess.run(
        [sys.executable, "-m", "agents.tiny", "--help"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert helped.returncode == 0 and "usage" in helped.stdout
    assert list(tmp_path.iterdir()) == []


def test_bad_addresses_are_one_clear_line_each(tmp_path):
    """Item 7: each address a user mistypes is named as typed, with what to write."""
    env = {**os.environ, "MESH_HOME": str(tmp_path / "mesh")}
    env.pop("MESH_DISCOVERY", None)
    cases = [
        (["discovery", "--bind", "127.0.0.1:7701"],
         "--bind '127.0.0.1:7701' has no scheme: write tcp://127.0.0.1:7701"),
        (["discovery", "--bind", "tcp://127.0.0.1:99999"],
         "--bind 'tcp://127.0.0.1:99999': the port must be 0 to 65535 (or *)"),
        (["discovery", "--bind", "tcp://10.255.255.1:7700"], "cannot bind 'tcp://10.255.255.1:7700'"),
        (["peers", "--discovery", "127.0.0.1:7700"],
         "discovery URL '127.0.0.1:7700' has no scheme: write tcp://127.0.0.1:7700"),
    ]  # fmt: skip
    for args, expected in cases:
        done = subprocess.run(
            [str(MESH), *args], capture_output=True, text=True, timeout=60, env=env
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0 and len(lines) == 1, (args, done.stderr)
        assert lines[0].startswith(f"mesh: error: {expected}"), (args, lines)


def test_commands_that_use_a_mesh_never_create_one(tmp_path):
    """Item 9: `mesh --mesh ./typo peers` (or call, status, show…) says which directory has
    no mesh, in one line, and creates nothing there."""
    env = {k: v for k, v in os.environ.items() if k not in ("MESH_HOME", "MESH_DISCOVERY")}
    for command in (["peers"], ["call", "x", "y"], ["status"], ["show"], ["subscribe", "a"]):
        done = subprocess.run(
            [str(MESH), "--mesh", "./typo", *command],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
        )  # fmt: skip
        assert done.returncode != 0, command
        assert done.stderr.strip().splitlines() == [
            f"mesh: error: no mesh in {tmp_path / 'typo'} (create one with: mesh init; or give "
            "--mesh DIR or set $MESH_HOME)"
        ], command
        assert not (tmp_path / "typo").exists(), command


def test_mesh_demo_keeps_its_keys_where_every_command_does(tmp_path):
    """Item 10: `mesh demo` from the user's own folder, with an empty HOME, writes nothing
    there: the authority and identities go to ~/.agent-mesh, the documented default (and to
    --mesh DIR when given), and it says where; the stop is announced before its wait."""
    folder, home = tmp_path / "work", tmp_path / "home"
    folder.mkdir()
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MESH_HOME", "MESH_DISCOVERY")}
    env["HOME"] = str(home)
    done = subprocess.run(
        [str(MESH), "demo"], capture_output=True, text=True, timeout=120, cwd=folder, env=env
    )
    assert done.returncode == 0, done.stderr
    assert list(folder.iterdir()) == []
    lines = done.stdout.splitlines()
    assert (
        lines[0] == f"mesh directory: {home / '.agent-mesh'} (its authority, identities and logs)"
    )
    assert (home / ".agent-mesh" / "identities" / "echo-1.key").exists()
    assert lines[lines.index("stopping 4 processes") + 1 :] == [
        f"stopped {name}: exit status 0" for name in ("echo-1", "echo-2", "echo-3", "discovery")
    ]


def test_mesh_run_help_shows_the_agents_own_options(tmp_path):
    """Item 10: `mesh run agents.llm:LLMAgent --help` lists what the agent takes (--model,
    --device, --max-queue...) after mesh run's own options; a target that does not import
    is one line."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    helped = subprocess.run(
        [str(MESH), "run", "agents.llm:LLMAgent", "--help"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert helped.returncode == 0, helped.stderr
    run_part, agent_part = helped.stdout.split("usage: mesh run agents.llm:LLMAgent --name NAME")
    assert "--name NAME" in run_part and "--discovery" in run_part
    for option in ("--model", "--device", "--max-queue", "--token-limit", "--description"):
        assert option in agent_part, option
    typo = subprocess.run(
        [str(MESH), "run", "agents.lm:LLMAgent", "--help"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert typo.returncode == 1 and typo.stdout == ""
    assert typo.stderr.splitlines() == [
        "mesh: error: agent 'agents.lm:LLMAgent': cannot import 'agents.lm': "
        "No module named 'agents.lm'"
    ]


def test_a_node_and_the_mesh_command_find_discovery_by_one_rule(tmp_path, discovery, home):
    """Item 10: without a discovery argument, a Node in a user's program goes where every
    `mesh` command goes: $MESH_DISCOVERY, else tcp://127.0.0.1:7700 (`mesh discovery`'s
    default bind). A program started beside `mesh peers` with the same environment is
    listed by it; `discovery=[]` is a static node."""
    (tmp_path / "app").mkdir()  # not beside the mesh directory named "mesh": it would shadow
    program = tmp_path / "app" / "app.py"
    program.write_text(
        "import sys\n"
        "from mesh import SyncNode\n"
        "with SyncNode('app') as node:\n"
        "    print('app up', flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(MESH_HOME=str(home), MESH_DISCOVERY=discovery)
    app = subprocess.Popen(
        [sys.executable, str(program)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env=env,
    )  # fmt: skip
    try:
        assert app.stdout.readline() == "app up\n"
        peers = subprocess.run(
            [str(MESH), "peers", "--json"], capture_output=True, text=True, timeout=60, env=env
        )
        assert peers.returncode == 0, peers.stderr
        assert "app" in [p["name"] for p in json.loads(peers.stdout)]
    finally:
        app.communicate("\n", timeout=60)
    assert app.returncode == 0

    # with nothing set, both go to tcp://127.0.0.1:7700, and both say it was the default
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 7700)) == 0:
            pytest.fail("port 7700 is in use here: this test needs nothing to answer there")
    without = {k: v for k, v in os.environ.items() if k not in ("MESH_DISCOVERY", "PYTHONPATH")}
    peers = subprocess.run(
        [str(MESH), "peers"], capture_output=True, text=True, timeout=60,
        env={**without, "MESH_HOME": str(home)},
    )  # fmt: skip
    assert peers.returncode == 1 and peers.stderr.strip().endswith(
        "(tcp://127.0.0.1:7700 is the default: start `mesh discovery`, or give --discovery "
        "URL or $MESH_DISCOVERY)"
    )
    helped = subprocess.run(
        [str(MESH), "peers", "--help"], capture_output=True, text=True, env=without, timeout=60
    )
    assert "(default: $MESH_DISCOVERY or tcp://127.0.0.1:7700)" in " ".join(helped.stdout.split())
    alone = subprocess.run(
        [sys.executable, "-c", "from mesh import SyncNode; SyncNode('app', connect_timeout=1)"],
        capture_output=True, text=True, timeout=60, env={**without, "MESH_HOME": str(home)},
    )  # fmt: skip
    assert alone.returncode == 1
    assert (
        alone.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "discovery tcp://127.0.0.1:7700 is unreachable: no answer from tcp://127.0.0.1:7700 "
            "within 1.0 s: it is the default address (start `mesh discovery`, or point at one "
            "with $MESH_DISCOVERY or discovery=URL; discovery=[] for a node without one)"
        )
    )


def test_a_host_that_only_verifies_never_gets_an_authority_of_its_own(tmp_path):
    """The demos (and init, selfcheck) use the default mesh directory; on a node's host set
    up as docs/guide.md says (keygen, then install), that directory holds only the
    authority's public key. Minting an authority there would cut the node off from its mesh:
    they refuse in one line instead."""
    authority, node = tmp_path / "authority", tmp_path / "node"

    def mesh(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
        return subprocess.run(
            [str(MESH), *args], capture_output=True, text=True, timeout=120, cwd=tmp_path,
            env={**env, "MESH_HOME": str(home)},
        )  # fmt: skip

    assert mesh(authority, "init").returncode == 0
    assert mesh(node, "keygen", "worker", "--out", "w.pub.json").returncode == 0
    certify = ["certify", "w.pub.json", "--capabilities", "echo", "--out", "w.cert.json"]
    assert mesh(authority, *certify).returncode == 0
    assert mesh(node, "install", "--from", "w.cert.json").returncode == 0
    for command in (["demo"], ["init"], ["selfcheck"]):
        refused = mesh(node, *command)
        assert refused.returncode == 1, command
        assert refused.stderr.splitlines() == [
            f"mesh: error: {node}: holds another host's authority.pub and no authority: this "
            "host only verifies (give --mesh DIR or $MESH_HOME for a mesh of its own)"
        ], command
        assert not (node / "authority.key").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    demo = subprocess.run(
        [sys.executable, "-m", "agents.demo"], capture_output=True, text=True, timeout=120,
        cwd=tmp_path, env={**env, "MESH_HOME": str(node), "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert demo.returncode == 1 and demo.stderr.splitlines() == [
        f"demo: error: {node}: holds another host's authority.pub and no authority: this "
        "host only verifies (give --mesh DIR or $MESH_HOME for a mesh of its own)"
    ]
    assert not (node / "authority.key").exists()
