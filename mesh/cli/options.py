"""Options several ``mesh`` subcommands share, declared once."""

from __future__ import annotations

import argparse
import os

from ..runtime.node import ENV_DISCOVERY

DEFAULT_DISCOVERY = "tcp://127.0.0.1:7700"


def discovery_option(parser: argparse.ArgumentParser) -> None:
    """``--discovery URL[,URL...]``: ``$MESH_DISCOVERY``, then :data:`DEFAULT_DISCOVERY`."""
    parser.add_argument(
        "--discovery",
        default=os.environ.get(ENV_DISCOVERY) or DEFAULT_DISCOVERY,
        help=f"discovery URL(s), comma-separated (default: $MESH_DISCOVERY or {DEFAULT_DISCOVERY})",
    )


def json_option(parser: argparse.ArgumentParser, text: str = "machine-readable output") -> None:
    """``--json``: print one JSON document instead of text."""
    parser.add_argument("--json", action="store_true", help=text)


def seconds(text: str) -> float:
    """An argparse type: a positive number of seconds (a timeout of -1 is a typo, not a
    wish to wait forever)."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def seconds_or_zero(text: str) -> float:
    """An argparse type: zero or more seconds (an interval)."""
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not zero or more seconds")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value != value or value in (float("inf"), float("-inf")):  # nan, inf
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    return value
