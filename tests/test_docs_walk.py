"""Every command block of README.md and docs/guide.md, run as a newcomer runs them (issue
21): in a fresh clone, with an empty HOME, nothing activated. ``mesh`` and ``python`` are
typed as the paths the README says they are (``.venv/bin/mesh``, ``.venv/bin/python``).

How a block is walked, line by line, as a person at a terminal would:

- a line ending in ``&`` starts in the background, and the next line waits until it has
  said something (a server's "serving on", a subscriber's "subscribed to");
- ``mesh call`` is repeated (for up to a minute) until it succeeds: what it calls becomes
  reachable asynchronously (a router learns the agents' cards as they join);
- ``python NAME.py`` runs the Python sample just above the block, saved as NAME.py;
- a comment ``# on the node's host`` switches to a second mesh directory (another machine's),
  ``# on the authority's host`` / ``# anywhere in the mesh`` back to the first; the
  placeholder host ``discovery-host`` is this machine;
- at the block's end a background command given ``--count N`` must have ended by itself
  (it got its messages); the others must still run; all are stopped with SIGTERM.

Lines this machine cannot run are listed in ELSEWHERE with the test that runs them, and the
walk checks that test does mention the command.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mesh.ops.processes import dying_with_parent
from tests.conftest import wait_until
from tests.processes import ROOT

pytestmark = pytest.mark.slow

DOCS = ("README.md", "docs/guide.md")
FENCE = re.compile(r"```(sh|bash|python)\n(.*?)```", re.S)
ELSEWHERE = {  # a command's start: the file that runs it, and what shows it does
    "./scripts/test": (".ci/run", "exec ./scripts/test"),  # here it would run itself
    # scripts/launch itself (from the user's folder) in test_first_hour; `mesh launch`
    # up/status/logs/down across hosts made of network namespaces in test_launch_netns
    "scripts/launch ": ("tests/test_first_hour.py", 'ROOT / "scripts" / "launch"'),
    "mesh deadletters ": ("tests/test_delivery_processes.py", 'spawn("deadletters"'),
}
PORTS = (7700, 5555)  # README's discovery address, the guide's
READY_S = 180.0  # a background command's first word (LLM agents load a model)
CALL_RETRY_S = 60.0


@dataclass
class Block:
    doc: str
    line: int
    text: str
    sample: str | None  # the Python sample just above, if any


def blocks() -> list[Block]:
    found = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        sample = None
        for match in FENCE.finditer(text):
            if match.group(1) == "python":
                sample = match.group(2)
                continue
            line = text.count("\n", 0, match.start()) + 1
            found.append(Block(doc, line, match.group(2), sample))
    return found


@dataclass
class Walk:
    clone: Path
    env: dict[str, str]
    homes: dict[str, Path]
    background: list[tuple[str, subprocess.Popen[str], Path]] = field(default_factory=list)
    home: str = "authority"

    def command(self, line: str) -> str:
        words = line.split(" ", 1)
        if words[0] == "mesh":
            words[0] = str(self.clone / ".venv/bin/mesh")
        elif words[0] == "python":
            words[0] = str(self.clone / ".venv/bin/python")
        return " ".join(words).replace("discovery-host", "127.0.0.1")

    def environment(self) -> dict[str, str]:
        return {**self.env, "MESH_HOME": str(self.homes[self.home])}

    def comment(self, text: str) -> None:
        if "on the node's host" in text:
            self.home = "node"
        elif "on the authority's host" in text or "anywhere in the mesh" in text:
            self.home = "authority"

    def start(self, line: str, where: str) -> None:
        log = self.clone.parent / f"background-{len(self.background)}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                ["bash", "-c", "exec " + self.command(line)], cwd=self.clone,
                env=self.environment(), stdout=out, stderr=subprocess.STDOUT, text=True,
                preexec_fn=dying_with_parent(),  # nothing outlives a killed pytest
            )  # fmt: skip
        self.background.append((line, process, log))
        # it has said something, or ended (the check below says which)
        wait_until(lambda: log.read_text().strip() or process.poll() is not None, timeout=READY_S)
        said = log.read_text()
        first = said.split("\n", 1)[0]
        failed = not said.strip() or process.poll() not in (None, 0) or "error" in first
        assert not failed, f"{where}: {line!r} failed: {said}"  # e.g. a port already taken

    def run(self, line: str, where: str) -> str:
        tries: list[subprocess.CompletedProcess[str]] = []

        def succeeded() -> bool:
            done = subprocess.run(
                ["bash", "-c", self.command(line)], cwd=self.clone, env=self.environment(),
                capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            tries.append(done)
            return tries[-1].returncode == 0

        if line.startswith("mesh call "):  # what it calls becomes reachable asynchronously
            with contextlib.suppress(AssertionError):
                wait_until(succeeded, timeout=CALL_RETRY_S, interval=0.5)
        else:
            succeeded()
        done = tries[-1]
        assert done.returncode == 0, f"{where}: {line!r}\n{done.stdout[-2000:]}{done.stderr}"
        return done.stdout

    def end_block(self, where: str) -> None:
        """Check the block's background commands, then stop them all, whatever failed."""
        problems = []
        for line, process, log in self.background:
            if " --count " in line:  # it ends by itself once it has had that many
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    problems.append(f"{line!r} did not get its messages")
            status = process.poll()
            if status not in (None, 0):
                problems.append(f"{line!r} exited {status}: {log.read_text()}")
        problems += self.stop_all()
        assert not problems, f"{where}: " + "; ".join(problems)

    def stop_all(self) -> list[str]:
        """SIGTERM to every background command, SIGKILL to one still there after 30 s."""
        for _, process, _ in self.background:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        ignored = []
        for line, process, _ in self.background:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                ignored.append(f"{line!r} ignored SIGTERM")
        self.background.clear()
        return ignored


def lines_of(block: Block) -> list[str]:
    """The block's lines, without trailing comments (a ``#`` outside quotes)."""
    found = []
    for raw in block.text.splitlines():
        if raw.lstrip().startswith("#"):
            found.append(raw.strip())
            continue
        words = shlex.split(raw, comments=True)
        if words:
            background = words[-1] == "&"
            code = shlex.join(words[:-1] if background else words)
            found.append(code + (" &" if background else ""))
    return found


def pypi_only(base: Path, env: dict[str, str]) -> None:
    """Make pip see what a machine with only PyPI sees (no pip configuration, no local
    wheels), with a mirror of PyTorch's CPU index (``$MESH_TORCH_INDEX``) holding the CPU
    wheel this machine has: scripts/setup must then find that PyPI offers the CUDA build
    and take the CPU one from the index (issue 21, item 5)."""
    wheels = base / "cpu-index" / "torch"
    wheels.mkdir(parents=True)
    fetched = subprocess.run(
        ["python3", "-m", "pip", "download", "-q", "--no-deps", "--dest", str(wheels),
         "torch==2.13.0+cpu"],
        check=False, timeout=600, capture_output=True, text=True,
    )  # fmt: skip
    if fetched.returncode != 0:
        pytest.fail(
            "the walk needs torch 2.13.0+cpu where this machine's pip finds it (a local wheel "
            f"or PyTorch's CPU index): {fetched.stderr.strip().splitlines()[-1:]}"
        )
    (wheel,) = wheels.glob("torch-*.whl")
    link = f'<a href="{wheel.name}">{wheel.name}</a>'
    (wheels / "index.html").write_text(f"<!DOCTYPE html><html><body>{link}</body></html>\n")
    for name in [k for k in env if k.startswith("PIP_") and k != "PIP_CACHE_DIR"]:
        del env[name]
    env.update(PIP_CONFIG_FILE=os.devnull, MESH_TORCH_INDEX=(base / "cpu-index").as_uri())


@pytest.fixture(scope="module")
def walk(tmp_path_factory) -> Iterator[Walk]:
    """A fresh clone, set up by the README's first command, which must run as written."""
    base = tmp_path_factory.mktemp("walk")
    clone = base / "agent-mesh"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    home = base / "home"
    home.mkdir()
    path = [p for p in os.environ["PATH"].split(os.pathsep) if ".venv" not in p]
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith("MESH_") and k not in ("VIRTUAL_ENV", "PYTHONPATH")
    }  # fmt: skip
    # An empty HOME, but pip's download cache kept: a fresh machine downloads the same.
    cache = subprocess.run(
        ["python3", "-m", "pip", "cache", "dir"], capture_output=True, text=True, check=False
    ).stdout.strip()
    env.update(HOME=str(home), PATH=os.pathsep.join(path), PIP_CACHE_DIR=cache or "")
    pypi_only(base, env)
    homes = {"authority": home / ".agent-mesh", "node": base / "node-host"}
    for port in PORTS:  # the docs' own addresses, typed as written: they must be free
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(f"port {port} is in use here; the README's commands bind it")
    walk = Walk(clone, env, homes)
    yield walk
    walk.stop_all()


@pytest.mark.timeout(1200)
def test_the_readme_and_the_guide_run_as_written(walk):
    (demo, tests, *rest) = blocks()
    assert demo.text.startswith("./scripts/demo") and tests.text.startswith("./scripts/test")
    # 1. the main job, set up from nothing (MESH_HOME: the README's default, none set)
    done = subprocess.run(
        ["./scripts/demo"], cwd=walk.clone, env=walk.env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "stopped every process (exit statuses:" in done.stdout
    assert "the CPU build from file://" in done.stderr  # PyPI's is CUDA: the CPU index's
    installed = subprocess.run(
        [str(walk.clone / ".venv/bin/python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True, text=True, check=True, env=walk.env,
    ).stdout  # fmt: skip
    assert "torch==2.13.0+cpu" in installed.split() and "nvidia" not in installed
    assert "Traceback" not in done.stderr and "Editable installation" not in done.stderr
    # 2. every other block, in order
    walked = 0
    for block in [tests, *rest]:
        where = f"{block.doc}:{block.line}"
        walk.home = "authority"
        try:
            for line in lines_of(block):
                elsewhere = next((f for c, f in ELSEWHERE.items() if line.startswith(c)), None)
                if line.startswith("#"):
                    walk.comment(line)
                elif elsewhere is not None:
                    runner, needle = elsewhere
                    assert needle in (ROOT / runner).read_text(), (line, runner)
                elif line.endswith(" &"):
                    walk.start(line[:-2], where)
                    walked += 1
                else:
                    script = re.fullmatch(r"python (\w+\.py)", line)
                    if script:
                        assert block.sample, f"{where}: no sample above for {line!r}"
                        (walk.clone / script.group(1)).write_text(block.sample)
                    walk.run(line, where)
                    walked += 1
        finally:
            walk.end_block(where)
    assert walked >= 25  # the blocks were walked, not skipped
