"""Keys on disk: the mesh directory, written safely and created atomically.

Zero configuration on one machine is the secure path: with no keys given, a node calls
``MeshDirectory.default().identity(name)``, which creates the mesh authority and issues the
node's certificate locally. Layout::

    <mesh dir>/authority.key          secret authority key (0600)
    <mesh dir>/authority.pub          the authority's public key, safe to copy to other hosts
    <mesh dir>/identities/NAME.key    a node's secret keys and certificate (0600)

Every file is published with "write a private temporary file, then ``link`` it to its final
name": ``link`` fails if the name exists, so when two processes start at the same instant
exactly one file wins, complete, and both go on to read that one. They end up in one mesh
with one identity per name, and nobody ever reads a half-written key.

The authority is two files (the secret, then ``authority.pub``), so creating it is one step
more: it happens under an exclusive ``flock`` on the mesh directory itself. A process that
finds the mesh incomplete takes the same lock, so it waits (``CREATE_WAIT_S`` at most) for
the creator to finish instead of reading half a mesh; the kernel drops the lock of a
process that dies, and the next one completes what it left (``authority.pub`` is derived
from the secret). Locking the directory, not a lock file, leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from ..core.errors import InsecureKeyFile, KeyFileError, MalformedEnvelope, MeshError
from ..core.identity import Authority, Certificate, Identity, Trust, validate_name

ENV_MESH_HOME = "MESH_HOME"
AUTHORITY_KIND = "agent-mesh authority"
AUTHORITY_PUBLIC_KIND = "agent-mesh authority public key"
IDENTITY_KIND = "agent-mesh identity"
PENDING_KIND = "agent-mesh pending identity"
PUBLIC_KEYS_KIND = "agent-mesh public keys"  # what keygen hands the authority
CERTIFICATE_KIND = "agent-mesh certificate"  # what certify hands back
KEY_FILE_VERSION = 1
NOT_BEFORE_SLACK_S = 300  # certificates start a little in the past, for skewed peers
EPHEMERAL_LIFETIME_S = 24 * 3600
CREATE_WAIT_S = 30.0  # how long a process waits for another one creating the same mesh
LOCK_POLL_S = 0.005


def default_mesh_dir() -> Path:
    """``$MESH_HOME`` if set, else ``~/.agent-mesh``."""
    return Path(os.environ.get(ENV_MESH_HOME) or Path.home() / ".agent-mesh")


def publish_file(path: Path, content: bytes, *, secret: bool) -> bool:
    """Create ``path`` with ``content`` unless it exists. True if this call created it.

    The file appears complete or not at all; secret files are 0600 from the first byte.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600 if secret else 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(temporary)


@contextlib.contextmanager
def locked_directory(folder: Path, operation: int, wait_s: float | None = None) -> Iterator[None]:
    """Hold ``flock(operation)`` on ``folder`` itself for the ``with`` block, waiting at most
    ``wait_s`` (default ``CREATE_WAIT_S``) for another holder: KeyFileError after that (a
    creator that hangs), never a process stuck for good."""
    wait_s = CREATE_WAIT_S if wait_s is None else wait_s
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except NotADirectoryError as exc:
        raise KeyFileError(str(folder), "is not a directory") from exc
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, operation | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise KeyFileError(
                        str(folder), f"another process has held it locked for {wait_s:g} s"
                    ) from None
                time.sleep(LOCK_POLL_S)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def read_secret_file(path: Path) -> bytes:
    """Read a secret key file, refusing one that group or others could read."""
    try:
        with open(path, "rb") as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            if mode & 0o077:
                raise InsecureKeyFile(str(path), mode)
            return handle.read()
    except FileNotFoundError as exc:
        raise KeyFileError(str(path), "no such file") from exc
    except IsADirectoryError as exc:
        raise KeyFileError(str(path), "is a directory") from exc


def _load_json(path: Path, raw: bytes, kind: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise KeyFileError(str(path), "not a valid key file (bad JSON)") from exc
    if not isinstance(data, dict) or data.get("kind") != kind:
        raise KeyFileError(str(path), f"not an {kind} file")
    if type(data.get("version")) is not int or data["version"] != KEY_FILE_VERSION:
        raise KeyFileError(str(path), f"version {data.get('version')!r} is not one this reads")
    return data


def read_record(path: Path, kind: str) -> dict[str, Any]:
    """A key file that is not secret (public keys, a certificate): its fields, checked for
    ``kind`` and version (protocol.md 17)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(str(path), exc.strerror or "cannot be read") from exc
    return _load_json(path, raw, kind)


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write a key file that holds nothing secret, replacing any."""
    try:
        path.write_bytes(_dump(record))
    except OSError as exc:
        raise KeyFileError(str(path), exc.strerror or "cannot be written") from exc


def _authority_public_record(verify_key: bytes) -> dict[str, Any]:
    return {
        "kind": AUTHORITY_PUBLIC_KIND,
        "version": KEY_FILE_VERSION,
        "verify_key": verify_key.hex(),
    }


def public_keys_record(identity: Identity) -> dict[str, Any]:
    return {
        "kind": PUBLIC_KEYS_KIND,
        "version": KEY_FILE_VERSION,
        "name": identity.name,
        "box_public": identity.box_public.hex(),
        "sign_public": identity.sign_public.hex(),
    }


def certificate_record(certificate: Certificate, authority_key: bytes) -> dict[str, Any]:
    return {
        "kind": CERTIFICATE_KIND,
        "version": KEY_FILE_VERSION,
        "name": certificate.name,
        "certificate": certificate.to_bytes().hex(),
        "authority": authority_key.hex(),
    }


def hex_field(path: Path, data: dict[str, Any], key: str) -> bytes:
    try:
        return bytes.fromhex(data[key])
    except (KeyError, TypeError, ValueError) as exc:
        raise KeyFileError(str(path), f"field {key!r} is missing or not hex") from exc


def mesh_directory(mesh: MeshDirectory | str | os.PathLike[str] | None) -> MeshDirectory:
    """A MeshDirectory from what a caller passed: one, a path, or None (the default)."""
    if isinstance(mesh, MeshDirectory):
        return mesh
    return MeshDirectory(mesh) if mesh else MeshDirectory.default()


class MeshDirectory:
    """One mesh's keys on this machine. Cheap to construct; touches disk on use."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        """The folder, so a MeshDirectory goes wherever a path does (``MESH_HOME``)."""
        return str(self.path)

    @classmethod
    def default(cls) -> MeshDirectory:
        return cls(default_mesh_dir())

    @property
    def authority_file(self) -> Path:
        return self.path / "authority.key"

    @property
    def authority_public_file(self) -> Path:
        return self.path / "authority.pub"

    def identity_file(self, name: str) -> Path:
        return self.path / "identities" / f"{validate_name(name)}.key"

    def create(self) -> Authority:
        """Create the mesh authority if there is none; return the authority either way.

        Safe when several processes call it at once on a fresh machine: one creates, under
        the directory's lock, and the others wait for it and load the same authority. On a
        host that only verifies (``authority.pub`` installed, no secret) it refuses: a new
        authority there would silently cut the host off from the mesh it was joined to."""
        if self.verifies_only():
            raise KeyFileError(
                str(self.path),
                "holds another host's authority.pub and no authority: this host only verifies "
                "(give --mesh DIR or $MESH_HOME for a mesh of its own)",
            )
        if not (self.authority_file.exists() and self.authority_public_file.exists()):
            self._create_locked()
        return self.authority()

    def _create_locked(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except (FileExistsError, NotADirectoryError) as exc:
            raise KeyFileError(str(self.path), "exists and is not a directory") from exc
        with locked_directory(self.path, fcntl.LOCK_EX):
            if not self.authority_file.exists():
                fresh = Authority.generate()
                record = {
                    "kind": AUTHORITY_KIND,
                    "version": KEY_FILE_VERSION,
                    "signing_seed": bytes(fresh.signing_key).hex(),
                    "verify_key": fresh.verify_key.hex(),
                }
                publish_file(self.authority_file, _dump(record), secret=True)
            public = _authority_public_record(self.authority().verify_key)
            publish_file(self.authority_public_file, _dump(public), secret=False)

    def verifies_only(self) -> bool:
        """True on a host that holds ``authority.pub`` but not the secret: it verifies
        certificates and cannot issue them (``mesh launch`` sets such hosts up). Never true
        of a mesh half created: the secret is written first."""
        return self.authority_public_file.exists() and not self.authority_file.exists()

    def authority(self) -> Authority:
        """Load the secret authority key (only the machine that issues certificates has it)."""
        raw = read_secret_file(self.authority_file)
        data = _load_json(self.authority_file, raw, AUTHORITY_KIND)
        seed = hex_field(self.authority_file, data, "signing_seed")
        if len(seed) != 32:
            raise KeyFileError(str(self.authority_file), "signing seed must be 32 bytes")
        return Authority(SigningKey(seed))

    def trust(self) -> Trust:
        """The authority's public key, from ``authority.pub`` (all a verifying host needs).
        Waits for a process creating this mesh right now to finish."""
        if not self.authority_public_file.exists() and self.path.is_dir():
            with locked_directory(self.path, fcntl.LOCK_SH):
                pass
        try:
            raw = self.authority_public_file.read_bytes()
        except FileNotFoundError as exc:
            raise KeyFileError(
                str(self.authority_public_file), "no such file (create the mesh with: mesh init)"
            ) from exc
        data = _load_json(self.authority_public_file, raw, AUTHORITY_PUBLIC_KIND)
        key = hex_field(self.authority_public_file, data, "verify_key")
        if len(key) != 32:
            raise KeyFileError(str(self.authority_public_file), "verify key must be 32 bytes")
        return Trust(key)

    def verifier(self) -> Trust:
        """What a node here trusts: the installed ``authority.pub`` on a host that only
        verifies (``mesh launch`` installs it), else this directory's own authority."""
        if self.verifies_only():
            return self.trust()
        return self.create().trust()

    def identity(self, name: str, *, capabilities: tuple[str, ...] = ()) -> Identity:
        """Load ``name``'s identity, creating the mesh and issuing it first if needed (only
        where the authority lives: a verifying-only host needs it installed)."""
        path = self.identity_file(name)
        if not path.exists():
            if self.verifies_only():
                raise KeyFileError(str(path), "no such identity, and no authority here to issue it")
            authority = self.create()
            fresh = authority.issue_for(
                Identity.generate(name),
                not_before=int(time.time()) - NOT_BEFORE_SLACK_S,
                capabilities=capabilities,
            )
            self.save_identity(fresh)
        return self.load_identity(name)

    def ephemeral_identity(self, name: str, *, lifetime_s: int = EPHEMERAL_LIFETIME_S) -> Identity:
        """A fresh identity certified by this mesh's authority and never written to disk.

        For short-lived processes such as ``mesh subscribe``: each gets keys of its own, so two
        of them never collide in discovery, and nothing accumulates in the directory. Creates
        the mesh on a fresh machine, like :meth:`identity`; on a host that only verifies there
        is no secret to issue with (KeyFileError: use a stored identity instead)."""
        authority = self.authority() if self.verifies_only() else self.create()
        return authority.issue_for(
            Identity.generate(name),
            not_before=int(time.time()) - NOT_BEFORE_SLACK_S,
            lifetime_s=lifetime_s,
        )

    def save_identity(self, identity: Identity, *, replace: bool = False) -> bool:
        """Write ``identity`` (with its certificate); True if this call wrote it."""
        cert = identity.require_certificate()
        record = {
            "kind": IDENTITY_KIND,
            "version": KEY_FILE_VERSION,
            "name": identity.name,
            "box_secret": bytes(identity.box_key).hex(),
            "sign_seed": bytes(identity.signing_key).hex(),
            "certificate": cert.to_bytes().hex(),
        }
        path = self.identity_file(identity.name)
        if replace:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return publish_file(path, _dump(record), secret=True)

    def load_identity(self, name: str) -> Identity:
        path = self.identity_file(name)
        data = _load_json(path, read_secret_file(path), IDENTITY_KIND)
        try:
            cert = Certificate.from_bytes(hex_field(path, data, "certificate"))
            return Identity.from_secrets(
                name,
                hex_field(path, data, "box_secret"),
                hex_field(path, data, "sign_seed"),
                cert,
            )
        except (MalformedEnvelope, ValueError) as exc:
            raise KeyFileError(str(path), f"unusable identity: {exc}") from exc

    # ------------------------------------------------------------ keys made on another host

    def pending_file(self, name: str) -> Path:
        return self.path / "identities" / f"{validate_name(name)}.pending"

    def pending_identity(self, name: str) -> Identity:
        """``name``'s keys made here and waiting for a certificate from the authority's host
        (the secret never leaves this host); created on first call, the same afterwards."""
        path = self.pending_file(name)
        if not path.exists():
            fresh = Identity.generate(name)
            record = {
                "kind": PENDING_KIND,
                "version": KEY_FILE_VERSION,
                "name": name,
                "box_secret": bytes(fresh.box_key).hex(),
                "sign_seed": bytes(fresh.signing_key).hex(),
            }
            publish_file(path, _dump(record), secret=True)
        data = _load_json(path, read_secret_file(path), PENDING_KIND)
        return Identity.from_secrets(
            name, hex_field(path, data, "box_secret"), hex_field(path, data, "sign_seed")
        )

    def install(self, name: str, certificate: Certificate, authority_key: bytes) -> Identity:
        """Join a mesh run from elsewhere: trust ``authority_key`` (``authority.pub``) and
        attach ``certificate`` to the pending keys of ``name``. Raises KeyFileError if this
        directory already trusts another authority or the certificate is not for these keys.
        Everything is checked before anything is written: a refused install changes nothing."""
        if self.authority_public_file.exists() and self.trust().authority_key != authority_key:
            raise KeyFileError(str(self.authority_public_file), "trusts another authority")
        pending = self.pending_file(name)
        if pending.exists():
            keys = self.pending_identity(name)
        elif self.identity_file(name).exists():  # certified before: a new certificate
            keys = self.load_identity(name)
        else:
            raise KeyFileError(str(pending), f"no keys for {name!r} here: run mesh keygen first")
        try:
            Trust(authority_key).verify(certificate, int(time.time() * 1000))
            identity = keys.with_certificate(certificate)
        except (MeshError, ValueError) as exc:
            raise KeyFileError(str(pending), f"certificate refused: {exc}") from exc
        public = _authority_public_record(authority_key)
        publish_file(self.authority_public_file, _dump(public), secret=False)
        self.save_identity(identity, replace=True)
        pending.unlink(missing_ok=True)
        return identity

    def names(self) -> list[str]:
        """Names of the identities stored here."""
        folder = self.path / "identities"
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.key"))


def _dump(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, indent=2) + "\n").encode()
