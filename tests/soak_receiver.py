"""The soak's agent: the built-in echo agent plus ``record``, which logs what it ran.

``mesh run tests.soak_receiver:SoakReceiver --name NAME`` with ``SOAK_LEDGER_DIR`` set. Each
start appends ``start`` to ``$SOAK_LEDGER_DIR/NAME.ran``; each reliable message
``record([lane, seq])`` appends ``ran LANE SEQ SENDER``, one write(2) on a file opened for
appending, before the handler returns (so before its ack can go): a kill -9 never loses a run
that was acked. tests/soak_ledger.py reads these files.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from mesh import CallContext
from mesh.cli.run_targets import install_echo
from mesh.core.errors import InvalidArgument
from mesh.runtime.node import Node

LEDGER_DIR_ENV = "SOAK_LEDGER_DIR"


def receiver_log(ledger_dir: Path, name: str) -> Path:
    return ledger_dir / f"{name}.ran"


class SoakReceiver:
    """Registers echo's handlers and ``record`` on the node; ``close`` closes the log."""

    def __init__(self, node: Node) -> None:
        install_echo(node)
        path = receiver_log(Path(os.environ[LEDGER_DIR_ENV]), node.name)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(self._fd, f"start {os.getpid()} {time.time():.3f}\n".encode())
        node.handler("record", self.record)

    async def record(self, body: Any, ctx: CallContext) -> None:
        if not (
            isinstance(body, list)
            and len(body) == 2
            and isinstance(body[0], str)
            and type(body[1]) is int
        ):
            raise InvalidArgument("record needs [lane, seq]")
        os.write(self._fd, f"ran {body[0]} {body[1]} {ctx.peer}\n".encode())

    def close(self) -> None:
        os.close(self._fd)
