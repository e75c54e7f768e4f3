"""A node's delivery store: one SQLite file (WAL) holding the durable outbox and dead letters.

A *durable* message is written here before it is sent and deleted when its ack arrives,
so a sender that crashes or restarts resumes it: same stream, same sequence number, same
message id, hence deduplicated by a receiver that handled it already. The numbering of each
stream is kept here too. ``synchronous=NORMAL`` in WAL mode survives the process crashing
at any point; a power cut may lose the last commits (``synchronous=FULL`` would not, at
about twice the cost per message).

Dead letters (any delivery mode) land in the same file with their reason, for ``mesh
deadletters`` to list, show, retry or purge; a retry is picked up by the running node (it
polls) or at its next start.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import msgpack

from ..core.errors import InvalidArgument, InvalidBody
from .letter import Letter
from .stamps import now_ms

SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    peer TEXT PRIMARY KEY, stream INTEGER NOT NULL, next_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY, peer TEXT NOT NULL, stream INTEGER NOT NULL, seq INTEGER NOT NULL,
    msg_id INTEGER NOT NULL, method TEXT NOT NULL, body BLOB, deadline_ms INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY, peer TEXT NOT NULL, method TEXT NOT NULL, body BLOB,
    reason TEXT NOT NULL, detail TEXT NOT NULL, attempts INTEGER NOT NULL,
    created_ms INTEGER NOT NULL, dead_ms INTEGER NOT NULL, retry INTEGER NOT NULL DEFAULT 0);
"""


def pack_body(body: Any) -> bytes:
    """A stored body: plain msgpack (attachments such as arrays are not stored)."""
    try:
        return msgpack.packb(body, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidBody(f"a stored body must be plain msgpack data: {exc}") from exc


def unpack_body(data: bytes | None) -> Any:
    return None if data is None else msgpack.unpackb(data, raw=False)


class DeliveryStore:
    """The SQLite file. Every call is one short transaction; one connection, one thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise InvalidArgument(f"{self.path} is not a delivery store: {exc}") from exc
        os.chmod(self.path, 0o600)

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ the outbox

    def stream(self, peer: str, new_stream: int) -> tuple[int, int]:
        """(stream id, next sequence number) for ``peer``: kept across restarts."""
        row = self._db.execute(
            "SELECT stream, next_seq FROM streams WHERE peer = ?", (peer,)
        ).fetchone()
        if row is not None:
            return int(row[0]), int(row[1])
        self._db.execute("INSERT INTO streams VALUES (?, ?, 0)", (peer, new_stream))
        return new_stream, 0

    def enqueue(self, letter: Letter, stream: int, body: bytes) -> int:
        """Write a letter (its body packed) and its stream's next number in one commit;
        returns its row."""
        with self._db:
            self._db.execute("BEGIN")
            cursor = self._db.execute(
                "INSERT INTO outbox (peer, stream, seq, msg_id, method, body, deadline_ms,"
                " max_attempts, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    letter.peer, stream, letter.seq, letter.msg_id, letter.method, body,
                    letter.deadline_ms, letter.max_attempts, letter.created_ms,
                ),
            )  # fmt: skip
            self._db.execute(
                "UPDATE streams SET next_seq = ? WHERE peer = ?", (letter.seq + 1, letter.peer)
            )
        return int(cursor.lastrowid or 0)

    def acked(self, row: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE id = ?", (row,))

    def pending(self) -> list[Letter]:
        """Every durable letter not yet acknowledged, by peer then sequence."""
        rows = self._db.execute(
            "SELECT peer, seq, msg_id, method, body, deadline_ms, max_attempts, created_ms, id"
            " FROM outbox ORDER BY peer, seq"
        ).fetchall()
        return [Letter(*r[:4], unpack_body(r[4]), *r[5:]) for r in rows]

    # ------------------------------------------------------------------ dead letters

    def bury(
        self,
        peer: str,
        method: str,
        body: bytes | None,
        reason: str,
        detail: str,
        attempts: int,
        created_ms: int,
        outbox_row: int | None = None,
    ) -> int:
        """Record a dead letter (and drop its outbox row) in one commit; returns its id."""
        with self._db:
            self._db.execute("BEGIN")
            cursor = self._db.execute(
                "INSERT INTO dead_letters (peer, method, body, reason, detail, attempts,"
                " created_ms, dead_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (peer, method, body, reason, detail, attempts, created_ms, now_ms()),
            )
            if outbox_row is not None:
                self._db.execute("DELETE FROM outbox WHERE id = ?", (outbox_row,))
        return int(cursor.lastrowid or 0)

    def dead_letters(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT id, peer, method, reason, detail, attempts, created_ms, dead_ms, retry, body"
            " FROM dead_letters ORDER BY id"
        ).fetchall()
        keys = ("id", "peer", "method", "reason", "detail", "attempts", "created_ms", "dead_ms")
        return [
            {**dict(zip(keys, r[:8], strict=True)), "retry": bool(r[8]), "body": unpack_body(r[9])}
            for r in rows
        ]

    def dead_letter(self, letter_id: int) -> dict[str, Any]:
        for letter in self.dead_letters():
            if letter["id"] == letter_id:
                return letter
        raise InvalidArgument(f"no dead letter {letter_id} in {self.path}")

    def ask_retry(self, letter_id: int) -> None:
        """Mark a dead letter for another try: its node sends it again (durably)."""
        self.dead_letter(letter_id)
        self._db.execute("UPDATE dead_letters SET retry = 1 WHERE id = ?", (letter_id,))

    def take_retries(self) -> list[dict[str, Any]]:
        """The dead letters marked for retry, removed from the dead-letter list."""
        with self._db:
            self._db.execute("BEGIN")
            letters = [d for d in self.dead_letters() if d["retry"]]
            self._db.execute("DELETE FROM dead_letters WHERE retry = 1")
        return letters

    def purge(self, letter_id: int | None = None) -> int:
        """Delete one dead letter, or all; returns how many went."""
        if letter_id is None:
            return self._db.execute("DELETE FROM dead_letters").rowcount
        self.dead_letter(letter_id)
        return self._db.execute("DELETE FROM dead_letters WHERE id = ?", (letter_id,)).rowcount
