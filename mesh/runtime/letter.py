"""A reliable message: what it is, and how its delivery is going.

The first fields are what a durable letter keeps in the delivery store across restarts
(``row`` is its place there); the last ones are the sender's progress in this run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Letter:
    """One reliable message on its way to ``peer``, number ``seq`` of its lane."""

    peer: str
    seq: int
    msg_id: int
    method: str
    body: Any
    deadline_ms: int
    max_attempts: int
    created_ms: int
    row: int | None = None  # its outbox row, if durable
    failures: int = 0  # handler failures reported by the receiver
    sends: int = 0
    unreachable: bool = False  # the last try could not reach the peer
