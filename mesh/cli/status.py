"""``mesh status``: the live state of a mesh, gathered from its nodes.

Discovery says who is registered; each node is then pinged (round trip, no handler) and asked
for ``mesh.stats`` (its :meth:`~mesh.runtime.node.Node.stats`), all at once with a short timeout, so
one stopped or partitioned node shows as ``unreachable`` instead of stalling the view. Rates
need two looks: ``--watch`` computes requests/s from the change between refreshes; a single
look divides by the node's uptime.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from ..core.errors import MeshError, NoSuchMethod
from ..core.registry import PeerInfo
from ..runtime.node import STATS_METHOD, Node
from .table import plain, printable

ASK_TIMEOUT_S = 2.0


async def look(node: Node, exclude: str, timeout: float = ASK_TIMEOUT_S) -> list[dict[str, Any]]:
    """One row per registered node (but ``exclude``), in name order."""
    peers = sorted((p for p in await node.peers() if p.name != exclude), key=lambda p: p.name)
    return list(await asyncio.gather(*(_row(node, peer, timeout) for peer in peers)))


async def _row(node: Node, peer: PeerInfo, timeout: float) -> dict[str, Any]:
    card = peer.meta.get("card") if isinstance(peer.meta, dict) else None
    kind = card.get("kind") if isinstance(card, dict) else None  # the peer's choice: any type
    row: dict[str, Any] = {
        "name": peer.name,
        "host": urlsplit(peer.endpoint).hostname or "",
        "endpoint": peer.endpoint,
        "capabilities": list(peer.capabilities),
        "kind": kind if isinstance(kind, str) else "",
        "state": "up",
        "rtt_ms": None,
    }
    try:
        row["rtt_ms"] = round(await node.ping(peer.name, timeout=timeout) * 1000, 3)
    except MeshError as exc:
        row["state"] = f"unreachable ({type(exc).__name__})"
        return row
    try:
        stats = await node.request(peer.name, STATS_METHOD, timeout=timeout)
    except NoSuchMethod:  # optional (protocol.md 8.4): up, without figures
        row["state"] = "up (no mesh.stats)"
        return row
    except MeshError as exc:
        row["state"] = f"up (mesh.stats: {type(exc).__name__})"
        return row
    try:
        row.update(_figures(stats))
    except (AttributeError, TypeError, ValueError, ArithmeticError):  # another node's idea
        row["state"] = "up (mesh.stats unreadable)"
    return row


def _figures(stats: Any) -> dict[str, Any]:
    """The status columns from a ``mesh.stats`` answer (protocol.md 8.4: every key optional;
    a wrongly shaped one raises, and the caller shows the node without figures)."""
    received = stats.get("traffic", {}).get("received", {})
    sent = stats.get("traffic", {}).get("sent", {})
    requests = int(received.get("REQUEST", {}).get("messages", 0))
    uptime = float(stats.get("uptime_s", 0.0))
    callers = stats.get("callers", {})
    return {
        "requests": requests,
        "one_way": int(received.get("SEND", {}).get("messages", 0)),
        "errors": int(sent.get("ERROR", {}).get("messages", 0)),
        "uptime_s": uptime,
        "requests_per_s": round(requests / uptime, 2) if uptime else 0,
        "credit_held": sum(int(c.get("held_messages", 0)) for c in callers.values()),
        "waiting_for_credit": sum(
            int(c.get("waiting", 0)) for c in stats.get("connections", {}).values()
        ),
        "drops": {str(k): int(v) for k, v in dict(stats.get("drops", {})).items()},
    }


def with_rates(
    rows: list[dict[str, Any]], before: dict[str, dict[str, Any]], seconds: float
) -> list[dict[str, Any]]:
    """Requests/s from the change since the previous look (``--watch``)."""
    for row in rows:
        earlier = before.get(row["name"])
        if earlier is not None and "requests" in row and "requests" in earlier and seconds > 0:
            row["requests_per_s"] = round((row["requests"] - earlier["requests"]) / seconds, 2)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """A plain-text view (``rich`` renders the same columns when installed)."""
    return plain(COLUMNS, [cells(row) for row in rows])


COLUMNS = (
    "name", "host", "kind/capabilities", "state", "rtt ms", "req/s", "errors", "credit held",
    "drops",
)  # fmt: skip


def cells(row: dict[str, Any]) -> list[str]:
    what = row["kind"] or ",".join(row["capabilities"]) or "-"
    if row["state"] != "up" or "requests" not in row:
        return [row["name"], row["host"], what, row["state"], "-", "-", "-", "-", "-"]
    drops = ", ".join(f"{k} {v}" for k, v in sorted(row["drops"].items())) or "0"
    waiting = row["waiting_for_credit"]
    held = f"{row['credit_held']}" + (f" ({waiting} waiting)" if waiting else "")
    return [
        row["name"], row["host"], what, "up", f"{row['rtt_ms']:.2f}",
        f"{row['requests_per_s']:.1f}", str(row["errors"]),
        held, drops,
    ]  # fmt: skip


def rich_table(rows: list[dict[str, Any]]) -> Any:
    """The same columns through rich. Names are never cut (rich would end them with an
    ellipsis at 80 columns): their column keeps its widest name and the others fold. Cells
    are plain Text, never markup: a peer chooses its card's kind and its stats' keys."""
    from rich.table import Table
    from rich.text import Text

    view = Table(title="agent-mesh status")
    names = [printable(row["name"]) for row in rows]
    view.add_column(COLUMNS[0], no_wrap=True, min_width=max(map(len, names), default=4))
    for title in COLUMNS[1:]:
        view.add_column(title, overflow="fold")
    for row in rows:
        style = None if row["state"].startswith("up") else "red"
        view.add_row(*(Text(printable(cell)) for cell in cells(row)), style=style)
    return view
