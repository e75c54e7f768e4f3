"""Real OS processes for the live tests: start ``mesh`` commands, read their first line, kill."""

from __future__ import annotations

import contextlib
import os
import queue
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from mesh.ops.processes import SERVING_ON, served_endpoint

ROOT = Path(__file__).resolve().parent.parent


class Process:
    """One ``python -m mesh.cli ...`` (or another ``module``) child with MESH_HOME set;
    always killed at the end."""

    def __init__(
        self,
        *args: str,
        home: Path,
        module: str = "mesh.cli",
        prefix: tuple[str, ...] = (),
        command: list[str] | None = None,
        cwd: Path = ROOT,
        env: dict[str, str] | None = None,
    ) -> None:
        """``command`` replaces ``python -m module`` (a console script, say), ``env`` the
        environment (a user's: no PYTHONPATH), ``cwd`` the folder it starts in."""
        if env is None:
            env = {**os.environ, "MESH_HOME": str(home), "PYTHONPATH": str(ROOT)}
            env.pop("MESH_DISCOVERY", None)
        self.args = args
        self.endpoint_line = ""
        self.popen = subprocess.Popen(
            # prefix: e.g. ip netns exec NS
            [*prefix, *(command or [sys.executable, "-m", module]), *args],
            cwd=cwd,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._stdout: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None
        with contextlib.suppress(ValueError, OSError):  # closed under us: the test is over
            for line in self.popen.stdout:
                self._stdout.put(line.strip())
        self._stdout.put(None)

    def _next_stdout(self, deadline: float) -> str | None:
        """The next stdout line; None at end of output or at the deadline."""
        try:
            return self._stdout.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None

    def wait_line(self, needle: str, timeout: float = 30.0, *, stderr: bool = False) -> str:
        """The first stdout (or stderr) line containing ``needle``; fails if the process
        dies or times out."""
        deadline = time.monotonic() + timeout
        if stderr:
            found = self._wait_stderr_line(needle, deadline)
        else:
            found = None
            while found is None and (line := self._next_stdout(deadline)) is not None:
                found = line if needle in line else None
        if found is not None:
            return found
        self.kill()
        rest = "" if stderr or not self.popen.stderr else self.popen.stderr.read()
        raise AssertionError(f"{self.args}: no line with {needle!r}; stderr: {rest[-2000:]}")

    def _wait_stderr_line(self, needle: str, deadline: float) -> str | None:
        assert self.popen.stderr is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.popen.stderr, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    continue
                line = self.popen.stderr.readline()
                if not line:
                    return None
                if needle in line:
                    return line.strip()
        return None

    def lines(self, count: int, timeout: float = 60.0) -> list[str]:
        """The next ``count`` stdout lines (fewer if the process ends or time runs out)."""
        deadline = time.monotonic() + timeout
        taken: list[str] = []
        while len(taken) < count and (line := self._next_stdout(deadline)) is not None:
            taken.append(line)
        return taken

    def endpoint(self, timeout: float = 30.0) -> str:
        """Wait for the "... serving on ENDPOINT" line and return (and remember) ENDPOINT."""
        if not self.endpoint_line:
            self.endpoint_line = served_endpoint(self.wait_line(SERVING_ON, timeout)) or ""
        return self.endpoint_line

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait; SIGKILL if it does not exit in time. Returns the exit status."""
        self.kill(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.popen.wait(5)
            raise AssertionError(f"{self.args} did not stop on SIGTERM") from None

    def close(self) -> None:
        self.kill()
        try:
            self.popen.wait(10)
            self._reader.join(5)  # output ends with the process
        finally:
            for stream in (self.popen.stdout, self.popen.stderr):
                if stream:
                    stream.close()
