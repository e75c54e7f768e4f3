"""What a node knows of other nodes: verified directory entries, and who recently went down.

Entries come from discovery (lookups and JOIN/LEAVE/UPDATE events) or are added by hand.
Every one is kept only if its certificate verifies against the node's authority: a discovery
node can hide members, never invent one. A peer found dead is forgotten (the next call looks
it up again, since it may have restarted elsewhere) and skipped by capability routing for a
few seconds.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from ..core.errors import InvalidArgument, ProtocolError
from ..core.identity import Certificate, Trust
from ..core.registry import PeerInfo, parse_entry
from .stamps import now_ms

DOWN_FOR_S = 5.0


class PeerCache:
    """Verified entries by name, plus down marks."""

    def __init__(self, trust: Trust, drops: Counter[str]) -> None:
        self._trust = trust
        self._drops = drops
        self._entries: dict[str, PeerInfo] = {}
        self._down_until: dict[str, float] = {}
        self._left_at: dict[str, float] = {}  # monotonic time of the last LEAVE per name
        self._static: set[str] = set()
        self.events_seen = 0

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> PeerInfo | None:
        return self._entries.get(name)

    def add(
        self, certificate: Certificate, endpoint: str, suites: tuple[int, ...] = (1,)
    ) -> PeerInfo:
        """Know a peer by hand; raises Unauthorized if its certificate does not verify."""
        info = PeerInfo(self._trust.verify(certificate, now_ms()), endpoint, suites=suites)
        self._entries[info.name] = info
        self._static.add(info.name)
        return info

    def verified(self, entry: dict[str, Any]) -> PeerInfo | None:
        """The entry if its certificate verifies and its fields follow discovery's rules;
        None (counted) if not."""
        try:
            cert = self._trust.verify(Certificate.from_bytes(entry["cert"]), now_ms())
            return parse_entry(cert, entry)
        except (ProtocolError, InvalidArgument, KeyError, TypeError):
            self._drops["bad_entry"] += 1
            return None

    def merge(
        self, entries: list[dict[str, Any]], query: dict[str, str], asked_at: float
    ) -> list[PeerInfo]:
        """Take a lookup's answers (from one or several discovery nodes): by name, the newest.

        A name that left (LEAVE event) after the lookup was sent is not brought back by its
        late answer; a full snapshot (empty query) or a name lookup also forgets what it no
        longer lists. Peers added by hand stay.
        """
        merged: dict[str, PeerInfo] = {}
        for entry in entries:
            info = self.verified(entry)
            if info is None or self._left_at.get(info.name, float("-inf")) > asked_at:
                continue
            current = merged.get(info.name)
            if current is None or info.started_ms > current.started_ms:
                merged[info.name] = info
        if not query or "name" in query:
            gone = [
                n
                for n in self._entries
                if n not in merged and n not in self._static and (not query or n == query["name"])
            ]
            for name in gone:
                del self._entries[name]
        self._entries.update(merged)
        return list(merged.values())

    def on_event(self, body: Any) -> tuple[str, PeerInfo] | None:
        """Apply a discovery JOIN/LEAVE/UPDATE event; returns (type, verified entry) or None
        if it was dropped."""
        if not isinstance(body, dict) or not isinstance(body.get("entry"), dict):
            self._drops["bad_event"] += 1
            return None
        info = self.verified(body["entry"])
        if info is None:
            return None
        kind = body.get("type")
        if kind not in ("JOIN", "UPDATE", "LEAVE"):
            self._drops["bad_event"] += 1
            return None
        self.events_seen += 1
        current = self._entries.get(info.name)
        if kind != "LEAVE":
            if current is None or info.started_ms >= current.started_ms:
                self._entries[info.name] = info
                self._down_until.pop(info.name, None)
        else:
            self._left_at[info.name] = time.monotonic()
            if current is not None and (
                current.certificate.node_id == info.certificate.node_id
                and current.started_ms <= info.started_ms
            ):
                del self._entries[info.name]
        return kind, info

    def mark_down(self, name: str) -> None:
        self._entries.pop(name, None)
        self._down_until[name] = time.monotonic() + DOWN_FOR_S

    def up(self, candidates: list[PeerInfo]) -> list[PeerInfo]:
        """The candidates not marked down."""
        now = time.monotonic()
        return [c for c in candidates if self._down_until.get(c.name, 0) <= now]
