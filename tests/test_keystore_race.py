"""Processes starting at the same instant on a fresh machine all end up in one mesh.

The scene of the bug: ``mesh discovery`` and ``mesh subscribe news`` started together with a
fresh HOME. The first creates the mesh and issues its stored identity; the second issues an
in-memory identity from the authority secret and reads the authority's public key. Whoever
comes second must find the whole mesh (secret and public key) or wait for it, never half of
it. Real processes, released together by a file appearing, several rounds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.processes import ROOT

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast

PROCESSES = 6
ROUNDS = 3

# Half the processes act like a node or discovery (a stored identity, then the verifier),
# half like `mesh subscribe` (an in-memory identity, then authority.pub).
SCRIPT = textwrap.dedent("""
    import os, sys, time
    from mesh import MeshDirectory
    go, role, name = sys.argv[1:4]
    deadline = time.monotonic() + 60
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            sys.exit("the start signal never came")
        time.sleep(0.001)
    mesh = MeshDirectory.default()
    if role == "stored":
        identity, trust = mesh.identity(name), mesh.verifier()
    else:
        identity, trust = mesh.ephemeral_identity(name), mesh.trust()
    trust.verify(identity.require_certificate(), int(time.time() * 1000))
    print(trust.authority_id.hex())
""")


def _start_together(env: dict[str, str], go: Path) -> list[subprocess.CompletedProcess[str]]:
    """Start PROCESSES interpreters, release them at once, and collect their outcomes."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(go), role, f"{role}-{i}"],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(PROCESSES)
        for role in ["stored" if i % 2 == 0 else "ephemeral"]
    ]
    go.touch()
    results = []
    for child in children:
        out, err = child.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(child.args, child.returncode, out, err))
    return results


@pytest.mark.parametrize("where", ["fresh-home", "empty-mesh-home"])
def test_processes_started_together_on_a_fresh_host_share_one_authority(tmp_path, where):
    """``fresh-home``: HOME is new, so ``~/.agent-mesh`` does not exist yet (built aside and
    renamed into place). ``empty-mesh-home``: MESH_HOME names an existing empty directory."""
    for round_ in range(ROUNDS):
        base = tmp_path / f"round-{round_}"
        base.mkdir()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(base)}
        env.pop("MESH_HOME", None)
        mesh_dir = base / ".agent-mesh"
        if where == "empty-mesh-home":
            mesh_dir = base / "mesh"
            mesh_dir.mkdir(mode=0o700)
            env["MESH_HOME"] = str(mesh_dir)
        results = _start_together(env, base / "go")
        failures = [r.stderr.strip().splitlines()[-1:] for r in results if r.returncode != 0]
        assert failures == [], f"round {round_}: {failures}"
        authorities = {r.stdout.strip() for r in results}
        assert len(authorities) == 1, authorities
        assert (mesh_dir / "authority.key").stat().st_mode & 0o777 == 0o600
        assert list(mesh_dir.rglob(".*")) == []  # no temporary or lock file left inside...
        assert {p.name for p in base.iterdir()} == {"go", mesh_dir.name}  # ...or beside it
