"""Plain-text tables for the ``mesh`` command (``status``, ``launch … status``).

Each column is as wide as its widest cell, so a long name or capability list widens its
column instead of pushing the rest of its row out of line, and nothing is cut: a name cut
short is a name a user cannot copy into the next command.
"""

from __future__ import annotations

from collections.abc import Sequence

GAP = "  "


def plain(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The table as lines: headers, then rows, columns two spaces apart, no trailing space."""
    cells = [[printable(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        GAP.join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def printable(text: str) -> str:
    """``text`` on one line: a tab, a newline or any other control character (in a name a
    remote chose, or an error a host printed) shown escaped rather than breaking the row."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
