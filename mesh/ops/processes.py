"""Mesh commands as child processes, and the one line that says a child is ready.

A ``mesh`` command that serves (discovery, ``mesh run``, a bench server) prints
``NAME serving on ENDPOINT`` on stdout once it accepts connections. Whoever starts one (the
demo, ``mesh bench``, the soak, the tests) waits for that line rather than a fixed time, and
takes the endpoint from it, since the port is often chosen by the OS (``tcp://host:0``).
Both sides of that contract live here.
"""

from __future__ import annotations

import ctypes
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

SERVING_ON = "serving on"
START_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h

# Loaded before any fork: the child then makes one C call between fork and exec.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def serving_line(name: str, endpoint: str) -> str:
    """What a child prints (and flushes) once it serves at ``endpoint``."""
    return f"{name} {SERVING_ON} {endpoint}"


def served_endpoint(line: str) -> str | None:
    """The endpoint of a "serving on" line; None for any other line."""
    if SERVING_ON not in line:
        return None
    return line.strip().rsplit(" ", 1)[-1]


def read_line(stream: IO[str] | None, timeout: float) -> str:
    """The child's next line, or "" if none comes within ``timeout`` (or at its end)."""
    if stream is None:
        return ""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if selector.select(timeout):
            return stream.readline().strip()
    return ""


def dying_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send ``sig`` to the child when its parent dies, so
    a launcher killed outright (SIGKILL, a test's timeout) leaves no children behind; None
    where there is no such thing."""
    libc = _LIBC
    if libc is None:
        return None

    def arm() -> None:
        libc.prctl(PR_SET_PDEATHSIG, sig)

    return arm


class MeshProcess:
    """A ``mesh`` subcommand (``python -m mesh.cli ARGS``) in its own process.

    ``home`` is the mesh directory the child uses (``MESH_HOME``). ``endpoint()`` waits for
    its "serving on" line; ``stop()`` ends it (SIGTERM, then SIGKILL). The child gets SIGTERM
    if this process dies first.
    """

    def __init__(
        self,
        home: str | os.PathLike[str],
        *args: str,
        name: str | None = None,
        log: Path | None = None,
    ) -> None:
        env = {**os.environ, "MESH_HOME": os.fspath(home)}
        self.name = name or (args[-1] if args[0] == "run" else "discovery")
        self.log = log  # stderr goes there when given (a chatty child never blocks on a pipe)
        stderr: IO[str] | int = subprocess.PIPE
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            stderr = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mesh.cli", *args],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=stderr,
            preexec_fn=dying_with_parent(),
        )
        if log is not None:
            stderr.close()  # type: ignore[union-attr]

    def endpoint(self, timeout: float = START_TIMEOUT_S) -> str:
        """The address from the child's "serving on" line; RuntimeError (with the child's
        last word) if it does not come."""
        line = read_line(self.process.stdout, timeout)
        endpoint = served_endpoint(line)
        if endpoint is not None:
            return endpoint
        if self.log is not None:
            if self.process.poll() is None:
                self.process.kill()
            err = self.log.read_text()
        else:
            err = self.process.stderr.read() if self.process.stderr else ""
        last = err.strip().splitlines()[-1] if err.strip() else line
        raise RuntimeError(f"{self.name} did not start: {last}")

    def next_line(self, timeout: float) -> str:
        """The child's next line on stdout (a command's answer), or "" if none comes within
        ``timeout`` seconds."""
        return read_line(self.process.stdout, timeout)

    def stop(self) -> int:
        """SIGTERM, and the exit status; SIGKILL if it has not exited within 10 s."""
        return MeshProcess.stop_all([self])[0]

    @staticmethod
    def stop_mesh(
        discovery: MeshProcess, agents: Sequence[MeshProcess]
    ) -> list[tuple[MeshProcess, int]]:
        """Stop a local mesh: its agents together, then its discovery node, which is still
        listening when they say LEAVE. Each process with its exit status, in that order."""
        statuses = MeshProcess.stop_all(agents) + MeshProcess.stop_all([discovery])
        return list(zip([*agents, discovery], statuses, strict=True))

    @staticmethod
    def stop_all(children: Sequence[MeshProcess], timeout: float = 10.0) -> list[int]:
        """Stop ``children`` at once and return their exit statuses, in order: SIGTERM to
        each, then one shared deadline, SIGKILL for any still running at it. Each child
        spends about a second closing its node, so stopping eight one after another kept
        a person waiting 7-10 s after the demo had finished."""
        for child in children:
            if child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + timeout
        statuses = []
        for child in children:
            try:
                statuses.append(child.process.wait(max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                child.process.kill()
                statuses.append(child.process.wait(timeout))
            for pipe in (child.process.stdout, child.process.stderr):
                if pipe is not None:
                    pipe.close()
        return statuses
