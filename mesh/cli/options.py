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
