"""The soak's reliable sender: at-least-once and durable ``record`` messages, logged.

``python -m tests.soak_sender NAME DISCOVERY LEDGER_DIR RECEIVERS RATE SEED HEARTBEAT SETTLE``
with ``MESH_HOME`` set (RECEIVERS comma-separated, RATE messages a second, SETTLE seconds).
It sends ``record([lane, seq])`` to a random receiver in a random reliable mode, logging to
``LEDGER_DIR/NAME.sent`` (format: tests/soak_ledger.py). A restart under the same name and
mesh directory resumes the durable outbox (the node does that) and carries on numbering the
durable lanes from the log; its at-least-once lanes are new ones.

SIGUSR1: stop sending, wait (at most SETTLE s) until every reliable message is acked or
dead-lettered, log ``settled`` (or ``unsettled``) and print one JSON line: the node's
delivery stats and every dead letter of ``record`` as ``[lane, seq, reason]``. SIGTERM:
close and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path

from mesh.ops.processes import serving_line
from mesh.runtime.node import Node
from tests.soak_ledger import RELIABLE_MODES, Ending, Lane, read_lines

SETTLE_S = 90.0  # beyond the default 60 s deadline: by then all is acked or dead-lettered


def sender_log(ledger_dir: Path, name: str) -> Path:
    return ledger_dir / f"{name}.sent"


class SenderLog:
    """This sender's log: continues the durable lanes' numbering of earlier incarnations."""

    def __init__(self, path: Path, name: str) -> None:
        self.name = name
        self.next_seq: dict[Lane, int] = defaultdict(int)
        self.incarnation = 1
        for line in read_lines(path):
            word, *rest = line.split()
            if word == "start":
                self.incarnation = int(rest[0]) + 1
            elif word == "want":
                lane = Lane.parse(rest[0])
                self.next_seq[lane] = max(self.next_seq[lane], int(rest[1]) + 1)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.write(f"start {self.incarnation} {os.getpid()} {time.time():.3f}")

    def write(self, line: str) -> None:
        os.write(self._fd, f"{line}\n".encode())

    def lane(self, mode: str, receiver: str) -> Lane:
        return Lane.of(mode, self.name, self.incarnation, receiver)


async def send_until(
    node: Node, log: SenderLog, receivers: list[str], rate: float, seed: int, stop: asyncio.Event
) -> None:
    rng = random.Random(seed * 1000 + log.incarnation)
    while not stop.is_set():
        lane = log.lane(rng.choice(RELIABLE_MODES), rng.choice(receivers))
        seq = log.next_seq[lane]
        log.next_seq[lane] += 1
        log.write(f"want {lane.key} {seq}")
        await node.send(lane.receiver, "record", [lane.key, seq], delivery=lane.mode)
        log.write(f"queued {lane.key} {seq}")
        with contextlib.suppress(TimeoutError):  # pacing, not synchronisation
            async with asyncio.timeout(rng.expovariate(rate)):
                await stop.wait()


async def main(argv: list[str]) -> None:
    name, url, ledger_dir, receivers, rate, seed, heartbeat, settle_s = argv
    log = SenderLog(sender_log(Path(ledger_dir), name), name)
    stop, leave = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, stop.set)
    loop.add_signal_handler(signal.SIGTERM, leave.set)
    async with Node(name, discovery=url, heartbeat=float(heartbeat)) as node:
        print(serving_line(name, node.endpoint), flush=True)
        await send_until(node, log, receivers.split(","), float(rate), int(seed), stop)
        try:
            await node.delivered(timeout=float(settle_s))
            ending = Ending.SETTLED
        except TimeoutError:
            ending = Ending.UNSETTLED
        log.write(ending)
        dead = [
            [letter["body"][0], letter["body"][1], letter["reason"]]
            for letter in node.dead_letters.dead_letters()
            if letter["method"] == "record" and isinstance(letter["body"], list)
        ]
        report = {"ending": ending, "delivery": node.stats()["delivery"], "dead_letters": dead}
        print(json.dumps(report), flush=True)
        await leave.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
