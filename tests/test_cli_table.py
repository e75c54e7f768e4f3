"""The command's tables keep their columns whatever the cells hold (issue 21, item 11)."""

from __future__ import annotations

import io

from rich.console import Console

from mesh.cli import status
from mesh.cli.table import plain


def row(name: str, capabilities: list[str], state: str = "up") -> dict:
    figures = {"rtt_ms": 0.4, "requests": 3, "requests_per_s": 1.5, "errors": 0,
               "credit_held": 0, "waiting_for_credit": 0, "drops": {}}  # fmt: skip
    return {"name": name, "host": "10.0.0.7", "kind": "", "capabilities": capabilities,
            "state": state, **(figures if state == "up" else {})}  # fmt: skip


def starts(line: str, cells: list[str]) -> list[int]:
    found, at = [], 0
    for cell in cells:
        at = line.index(cell, at)
        found.append(at)
        at += len(cell)
    return found


def test_a_long_capability_list_widens_its_column_and_the_rest_stay_in_line():
    rows = [
        row("alpha", ["echo"]),
        row("summariser-for-the-billing-department", ["summarise", "translate", "classify"]),
        row("beta", ["echo"], state="unreachable: no answer"),
    ]
    lines = status.table(rows).splitlines()
    header = starts(lines[0], ["name", "host", "kind/capabilities", "state", "rtt ms"])
    for line, r in zip(lines[1:], rows, strict=True):
        what = ",".join(r["capabilities"])
        state = r["state"].split(":")[0]
        assert starts(line, [r["name"], "10.0.0.7", what, state])[:4] == header[:4], line
    assert all(line == line.rstrip() for line in lines)


def test_a_cell_with_tabs_and_newlines_stays_on_its_row():
    text = plain(["name", "state"], [["odd\tname", "stopped\nagain"], ["b", "up"]])
    lines = text.splitlines()
    assert lines[1] == "odd\\tname  stopped\\nagain"
    assert starts(lines[2], ["b", "up"]) == starts(lines[0], ["name", "state"])


def test_rich_never_cuts_a_name_at_80_columns():
    name = "a-rather-long-agent-name-for-the-shipping-desk"
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(
        status.rich_table([row(name, ["route", "embed", "classify", "summarise"])])
    )
    assert name in out.getvalue()
    assert max(len(line) for line in out.getvalue().splitlines()) <= 80


def test_a_peers_text_is_shown_as_text_not_rich_markup():
    """A card's kind and a stats key come from the peer: "[/]" once crashed mesh status."""
    odd = row("odd", [])
    odd["kind"], odd["drops"] = "[/]", {"[link=http://evil.example]x": 1}
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(status.rich_table([odd]))
    assert "[/]" in out.getvalue() and "[link=http://evil.example]x" in out.getvalue()
