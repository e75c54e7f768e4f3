"""The mesh directory on disk: permissions, atomic creation, clear errors."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import time

import pytest

from mesh import InsecureKeyFile, KeyFileError, MeshDirectory
from mesh.runtime import keystore

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast


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


def test_an_in_memory_identity_on_a_fresh_machine_creates_the_mesh(tmp_path):
    """What ``mesh subscribe`` does first on a machine with no mesh yet."""
    mesh = MeshDirectory(tmp_path / "fresh")
    sub = mesh.ephemeral_identity("sub-host-1")
    assert mesh.trust().verify(sub.require_certificate(), int(time.time() * 1000))
    assert mesh.names() == []  # nothing of the in-memory identity was written


def test_a_verifying_host_cannot_issue_in_memory_identities(tmp_path):
    issuing = MeshDirectory(tmp_path / "issuing")
    issuing.create()
    verifying = MeshDirectory(tmp_path / "verifying")
    verifying.path.mkdir()
    verifying.authority_public_file.write_bytes(issuing.authority_public_file.read_bytes())
    with pytest.raises(KeyFileError, match="no such file"):
        verifying.ephemeral_identity("sub-host-1")
    assert not verifying.authority_file.exists()  # it did not start a mesh of its own


def test_a_mesh_left_half_created_is_completed_by_the_next_process(tmp_path):
    """The creator died after writing the secret, before ``authority.pub``."""
    mesh = MeshDirectory(tmp_path / "mesh")
    authority = mesh.create()
    mesh.authority_public_file.unlink()
    sub = mesh.ephemeral_identity("sub-host-1")
    assert mesh.trust().authority_key == authority.trust().authority_key
    assert mesh.trust().verify(sub.require_certificate(), int(time.time() * 1000))


def test_a_creator_that_hangs_makes_others_fail_clearly_not_wait_forever(tmp_path, monkeypatch):
    mesh = MeshDirectory(tmp_path / "mesh")
    mesh.path.mkdir()
    monkeypatch.setattr(keystore, "CREATE_WAIT_S", 0.2)
    with keystore.locked_directory(mesh.path, fcntl.LOCK_EX):  # a creator, stopped halfway
        with pytest.raises(KeyFileError, match="locked"):
            mesh.identity("alice")
        with pytest.raises(KeyFileError, match="locked"):
            mesh.trust()
    assert mesh.identity("alice").name == "alice"  # once it is gone, the next one creates
