"""The CLI as a whole: help with examples everywhere, shell completion, logs (quiet by
default, structured when asked), environment variables as defaults."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from mesh.cli.app import _parser
from mesh.cli.completion import _commands
from tests.processes import ROOT

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast


def mesh(*args: str, home, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "MESH_HOME": str(home), "PYTHONPATH": str(ROOT)}
    for name in ("MESH_DISCOVERY", "MESH_LOG", "MESH_METRICS_PORT"):
        environment.pop(name, None)  # only what the test sets
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", *args],
        capture_output=True, text=True, timeout=60, env=environment, cwd=ROOT,
    )  # fmt: skip


def test_every_command_has_help_with_examples():
    commands = _commands(_parser())
    assert {"status", "bench", "launch", "run", "call", "completion"} <= set(commands)
    for name, parser in commands.items():
        text = parser.format_help()
        assert "Example" in text, f"mesh {name} --help has no example"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_knows_commands_and_their_options(home):
    script = mesh("completion", "bash", home=home).stdout
    probe = (
        "source /dev/stdin; "
        "COMP_WORDS=(mesh sta); COMP_CWORD=1; _mesh_complete; echo ${COMPREPLY[@]}; "
        "COMP_WORDS=(mesh -v status --wa); COMP_CWORD=3; _mesh_complete; echo ${COMPREPLY[@]}; "
        "COMP_WORDS=(mesh bench --serv); COMP_CWORD=2; _mesh_complete; echo ${COMPREPLY[@]}"
    )
    done = subprocess.run(["bash", "-c", probe], input=script, capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    assert done.stdout.splitlines() == ["status", "--watch", "--server-host"], done.stderr


def test_logs_are_quiet_by_default_and_structured_when_asked(spawn, discovery, home):
    spawn("run", "echo", "--name", "logged", "--discovery", discovery).endpoint()
    quiet = mesh("call", "logged", "echo", '"x"', "--discovery", discovery, home=home)
    assert quiet.returncode == 0 and quiet.stdout.strip() == '"x"'
    assert quiet.stderr == ""
    loud = mesh("-v", "--log-json", "call", "logged", "echo", '"y"', "--discovery", discovery,
                home=home)  # fmt: skip
    assert loud.returncode == 0, loud.stderr
    records = [json.loads(line) for line in loud.stderr.splitlines()]
    assert records and all(r["logger"].startswith("mesh") for r in records)
    connected = [r for r in records if r["message"].startswith("connected to logged")]
    assert connected and connected[0]["peer"] == "logged" and connected[0]["level"] == "info"


def test_environment_variables_are_the_defaults(spawn, discovery, home):
    spawn("run", "echo", "--name", "by-env", "--discovery", discovery).endpoint()
    done = mesh("peers", "--json", home=home, env={"MESH_DISCOVERY": discovery})
    assert done.returncode == 0, done.stderr
    assert "by-env" in {p["name"] for p in json.loads(done.stdout)}
    logged = mesh("peers", home=home, env={"MESH_DISCOVERY": discovery, "MESH_LOG": "info"})
    assert "connected to" in logged.stderr
    bad = mesh("run", "echo", "--name", "x", home=home, env={"MESH_METRICS_PORT": "eighty"})
    assert bad.returncode == 1
    assert (
        bad.stderr.strip() == "mesh: error: $MESH_METRICS_PORT must be a port number, not 'eighty'"
    )
