"""The layout keeps the architecture: a pure protocol core, agents on the public API only.

Read from the source with ``ast`` (nothing is imported), so a forbidden import fails here
even where it sits in a function that no other test calls.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mesh

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "mesh" / "core"
AGENTS = ROOT / "agents"

# I/O and concurrency the sans-IO core never touches (its callers pass time and bytes in).
FORBIDDEN_IN_CORE = {"zmq", "asyncio", "socket", "sqlite3", "subprocess", "threading"}

# The public API, exactly: adding or removing a name is a decision, made here as well.
PUBLIC = [
    "AuthenticationFailed",
    "Authority",
    "BadRequest",
    "Blob",
    "CallContext",
    "CallError",
    "Certificate",
    "CertificateExpired",
    "ClockSkew",
    "DiscoveryServer",
    "DiscoveryUnavailable",
    "EnvelopeTooLarge",
    "ErrorCode",
    "FlowControlTimeout",
    "HandshakeBusy",
    "HandshakeFailed",
    "HandshakeRejected",
    "Identity",
    "IdentityError",
    "Initiator",
    "InsecureKeyFile",
    "InvalidArgument",
    "InvalidBody",
    "InvalidName",
    "KeyFileError",
    "Kind",
    "LimitExceeded",
    "LocalProtocolError",
    "MalformedEnvelope",
    "MeshDirectory",
    "MeshError",
    "MeshProcess",
    "Message",
    "NameConflict",
    "NoCredit",
    "NoSuchMethod",
    "Node",
    "NodeClosed",
    "Overloaded",
    "PeerInfo",
    "PeerLost",
    "PeerNotFound",
    "ProtocolError",
    "Redirect",
    "RedirectFailed",
    "RemoteError",
    "ReplayDetected",
    "ReplyTooLarge",
    "RequestTimeout",
    "Responder",
    "Session",
    "SessionExpired",
    "SessionLimits",
    "SessionTable",
    "Subscription",
    "SyncNode",
    "SyncSubscription",
    "TopicMessage",
    "Trust",
    "Unauthorized",
    "UnknownSession",
    "UnsupportedAttachment",
    "UnsupportedVersion",
    "Window",
]


def imports(path: Path, package: str) -> list[tuple[int, str, list[str]]]:
    """Every import in ``path`` as (line, absolute module, names), relative ones resolved
    against ``package`` (the dotted package the file lives in)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            found.append((node.lineno, module, [alias.name for alias in node.names]))
    return found


def core_violations(path: Path) -> list[str]:
    """What a core module imports that the core must not: I/O, or mesh outside mesh.core."""
    bad = []
    for line, module, names in imports(path, "mesh.core"):
        top = module.split(".")[0]
        if top in FORBIDDEN_IN_CORE:
            bad.append(f"{path.name}:{line}: imports {module}")
        elif top == "mesh":
            targets = [module] if module != "mesh" else [f"mesh.{name}" for name in names]
            for target in targets:
                if not (target == "mesh.core" or target.startswith("mesh.core.")):
                    bad.append(f"{path.name}:{line}: imports {target}, outside mesh.core")
    return bad


CORE_MODULES = sorted(CORE.glob("*.py"))


def test_the_core_has_its_modules():
    names = {path.stem for path in CORE_MODULES}
    assert {"codec", "envelope", "handshake", "session", "flow", "sequencer", "wire"} <= names


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda path: path.name)
def test_the_core_does_no_io_and_imports_only_the_core(path):
    assert core_violations(path) == []


def test_the_boundary_check_sees_a_forbidden_import(tmp_path):
    for source in ("import zmq\n", "from ..runtime import node\n", "from mesh.ops import logs\n"):
        path = tmp_path / "bad.py"
        path.write_text(source)
        assert core_violations(path), source
    (tmp_path / "good.py").write_text("from .wire import Kind\nfrom mesh.core import codec\n")
    assert core_violations(tmp_path / "good.py") == []


# What each layer may import from mesh: only itself and the layers below. The gateways are
# nodes with outside protocols on top (the ``gateway`` extra's SDKs stay out of the library);
# the CLI and the benchmarks are applications on top (``mesh bench`` is a subcommand, and the
# benchmark uses the launcher's hosts); the package's own ``__init__`` exports the library.
BELOW = {
    "core": {"core"},
    "ops": {"core", "ops"},
    "runtime": {"core", "ops", "runtime"},
    "gateway": {"core", "ops", "runtime", "gateway"},
    "cli": {"core", "ops", "runtime", "gateway", "cli", "bench"},
    "bench": {"core", "ops", "runtime", "gateway", "cli", "bench"},
    "": {"core", "ops", "runtime"},  # mesh/__init__.py
}


def layer_violations(path: Path, layer: str) -> list[str]:
    """The imports in ``path`` (a module of ``layer``) of a mesh layer above it."""
    package = f"mesh.{layer}" if layer else "mesh"
    bad = []
    for line, module, names in imports(path, package):
        parts = module.split(".")
        if parts[0] != "mesh":
            continue
        targets = [parts[1]] if len(parts) > 1 else [name for name in names if name in BELOW]
        bad += [f"{path.name}:{line}: imports mesh.{t}" for t in targets if t not in BELOW[layer]]
    return bad


MESH_MODULES = [
    (layer, path)
    for layer in BELOW
    for path in sorted(
        (ROOT / "mesh" / layer).glob("*.py") if layer else [ROOT / "mesh" / "__init__.py"]
    )
]


def test_every_module_is_in_a_layer():
    modules = {p for p in (ROOT / "mesh").rglob("*.py")} - {p for _, p in MESH_MODULES}
    assert modules == set()


@pytest.mark.parametrize(
    ("layer", "path"), MESH_MODULES, ids=lambda v: v if isinstance(v, str) else v.name
)
def test_a_layer_imports_only_the_layers_below(layer, path):
    assert layer_violations(path, layer) == []


def test_the_layer_check_sees_an_upward_import(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("from ..cli import demo\n")
    assert layer_violations(path, "runtime") == ["bad.py:1: imports mesh.cli"]
    path.write_text("from mesh import runtime\n")
    assert layer_violations(path, "ops") == ["bad.py:1: imports mesh.runtime"]
    path.write_text("from .runtime.node import Node\n")
    assert layer_violations(path, "") == []


@pytest.mark.parametrize("path", sorted(AGENTS.glob("*.py")), ids=lambda path: path.name)
def test_agents_use_only_the_public_api(path):
    for line, module, names in imports(path, "agents"):
        if module == "mesh":
            private = sorted(set(names) - set(mesh.__all__))
            assert not private, f"{path.name}:{line}: {private} are not public names of mesh"
        else:
            assert not module.startswith("mesh."), f"{path.name}:{line}: imports {module}"


# Written from protocol.md alone: they must not lean on the implementation they check.
MESH_FREE = [
    ROOT / "tests" / "thirdparty_client.py",
    ROOT / "tests" / "test_vectors_independent.py",
]


@pytest.mark.parametrize("path", MESH_FREE, ids=lambda path: path.name)
def test_the_spec_only_checks_import_nothing_of_the_implementation(path):
    modules = [module for _, module, _ in imports(path, "tests")]
    assert not [m for m in modules if m.split(".")[0] in ("mesh", "agents", "tests")], modules


def test_the_public_names_are_these():
    assert sorted(mesh.__all__) == PUBLIC
    assert len(mesh.__all__) == len(set(mesh.__all__))
    for name in PUBLIC:
        assert getattr(mesh, name) is not None


# `scripts/test --fast` runs the tests not marked slow: a module that starts processes, needs
# a host tool or the network, or loads a model is marked slow as a whole.
SLOW_SIGNS = (
    "import subprocess", "from subprocess import", "from tests.processes import",
    "from tests.netns import", "agents.llm", "agents.embedding", "agents.router",
    "(spawn", "(discovery", ", discovery,", "spawn)", "discovery)",
)  # fmt: skip


@pytest.mark.parametrize(
    "path",
    sorted(set((ROOT / "tests").glob("test_*.py")) - {Path(__file__).resolve()}),
    ids=lambda path: path.name,
)
def test_a_test_module_that_starts_processes_is_marked_slow(path):
    source = path.read_text()
    signs = [sign for sign in SLOW_SIGNS if sign in source]
    marks = [
        node for node in ast.parse(source).body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "pytestmark"
    ]  # fmt: skip
    slow = any("mark.slow" in ast.unparse(node.value) for node in marks)
    assert slow or not signs, f"{path.name} shows {signs} but is not marked slow"
