"""The mesh directory on disk: permissions, atomic creation, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from mesh import InsecureKeyFile, KeyFileError, MeshDirectory


def test_zero_config_creates_authority_and_identity(tmp_path):
    mesh = MeshDirectory(tmp_path / "mesh")
    alice = mesh.identity("alice")
    assert mesh.trust().verify(alice.require_certificate(), int(time.time() * 1000))
    assert mesh.identity("alice").node_id == alice.node_id
    assert mesh.names() == ["alice"]
    for path in (mesh.authority_file, mesh.identity_file("alice")):
        assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(mesh.authority_public_file).st_mode & 0o077 == 0o044


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_readable_secret_is_refused(tmp_path, mode):
    mesh = MeshDirectory(tmp_path)
    mesh.identity("alice")
    os.chmod(mesh.identity_file("alice"), mode)
    with pytest.raises(InsecureKeyFile) as caught:
        mesh.load_identity("alice")
    assert caught.value.mode == mode
    assert "chmod 600" in str(caught.value)
    os.chmod(mesh.authority_file, mode)
    with pytest.raises(InsecureKeyFile):
        mesh.authority()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b'{"kind": "other"}',
        b'{"kind": "agent-mesh identity"}',
        b'{"kind": "agent-mesh identity", "box_secret": "zz"}',
    ],
)
def test_corrupt_key_files_raise_key_file_error(tmp_path, content):
    mesh = MeshDirectory(tmp_path)
    path = mesh.identity_file("alice")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError):
        mesh.load_identity("alice")


def test_missing_files_are_clear(tmp_path):
    mesh = MeshDirectory(tmp_path)
    with pytest.raises(KeyFileError, match="no such file"):
        mesh.load_identity("ghost")
    with pytest.raises(KeyFileError, match="mesh init"):
        mesh.trust()


def test_processes_started_together_end_up_in_one_mesh(tmp_path):
    """Eight real processes race to create the same mesh and identity at one instant."""
    go = tmp_path / "go"
    script = textwrap.dedent(f"""
        import os, sys, time
        from mesh import MeshDirectory
        deadline = time.monotonic() + 30
        while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:
            time.sleep(0.001)
        mesh = MeshDirectory({str(tmp_path / "mesh")!r})
        identity = mesh.identity("shared")
        print(mesh.trust().authority_id.hex(), identity.node_id.hex())
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    go.touch()
    outputs = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(outputs) == 1, outputs
    leftovers = [p.name for p in (tmp_path / "mesh").rglob(".*")]
    assert leftovers == []
