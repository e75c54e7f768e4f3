"""A third party joins a mesh from outside (protocol.md 17, docs/guide.md "Joining from
another host"): keys made where the node runs, a certificate signed where the authority
lives, only public material in between; then the node answers ``mesh call``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast


def mesh(home: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MESH_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("MESH_DISCOVERY", None)
    done = subprocess.run(
        [sys.executable, "-m", "mesh.cli", *args],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )  # fmt: skip
    assert (done.returncode == 0) is ok, done.stderr
    return done


def test_a_node_keyed_elsewhere_joins_and_answers_a_call(tmp_path, spawn, discovery, home):
    worker_home = tmp_path / "worker-host"  # another machine: no authority secret, ever
    public, certificate = tmp_path / "worker.pub.json", tmp_path / "worker.cert.json"
    mesh(worker_home, "keygen", "worker", "--out", str(public))
    mesh(home, "certify", str(public), "--capabilities", "echo", "--days", "2",
         "--out", str(certificate))  # fmt: skip
    forged = tmp_path / "forged.cert.json"
    record = json.loads(certificate.read_text())
    forged.write_text(json.dumps({**record, "authority": "11" * 32}))
    refused = mesh(worker_home, "install", "--from", str(forged), ok=False)
    assert "certificate refused" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert not (worker_home / "authority.pub").exists()  # a refused install wrote nothing
    mesh(worker_home, "install", "--from", str(certificate))

    for travelled in (public, certificate):  # only public material crossed
        record = json.loads(travelled.read_text())
        assert record["version"] == 1 and not {"box_secret", "sign_seed"} & set(record)
    assert json.loads(certificate.read_text())["kind"] == "agent-mesh certificate"
    assert not (worker_home / "authority.key").exists()
    assert (worker_home / "authority.pub").read_text() == (home / "authority.pub").read_text()

    worker = spawn("run", "echo", "--name", "worker", "--discovery", discovery, mesh=worker_home)
    worker.endpoint()
    answer = mesh(home, "call", "worker", "echo", '{"x": 1}', "--discovery", discovery)
    assert json.loads(answer.stdout) == {"x": 1}


def test_key_files_of_another_kind_or_version_are_one_line(tmp_path, home):
    wrong = tmp_path / "wrong.pub.json"
    wrong.write_text(json.dumps({"kind": "agent-mesh public keys", "version": 2}))
    env = {**os.environ, "MESH_HOME": str(home), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "certify", str(wrong)],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "version 2" in done.stderr
