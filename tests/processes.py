"""Real OS processes for the live tests: start ``mesh`` commands, read their first line, kill."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Process:
    """One ``python -m mesh.cli ...`` child with MESH_HOME set; always killed at the end."""

    def __init__(self, *args: str, home: Path) -> None:
        env = {**os.environ, "MESH_HOME": str(home), "PYTHONPATH": str(ROOT)}
        env.pop("MESH_DISCOVERY", None)
        self.args = args
        self.endpoint_line = ""
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "mesh.cli", *args],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def wait_line(self, needle: str, timeout: float = 30.0) -> str:
        """The first stdout line containing ``needle``; fails if the process dies or times out."""
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.popen.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    continue
                line = self.popen.stdout.readline()
                if not line:
                    break
                if needle in line:
                    return line.strip()
        self.kill()
        stderr = self.popen.stderr.read() if self.popen.stderr else ""
        raise AssertionError(f"{self.args}: no line with {needle!r}; stderr: {stderr[-2000:]}")

    def endpoint(self) -> str:
        """Wait for the "... serving on ENDPOINT" line and return (and remember) ENDPOINT."""
        if not self.endpoint_line:
            self.endpoint_line = self.wait_line("serving on").rsplit(" ", 1)[-1]
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
        finally:
            for stream in (self.popen.stdout, self.popen.stderr):
                if stream:
                    stream.close()
