"""Options several ``mesh`` subcommands share, declared once."""

from __future__ import annotations

import argparse

from ..core.errors import InvalidArgument
from ..runtime.keystore import MeshDirectory, mesh_directory
from ..runtime.node import DEFAULT_DISCOVERY


def discovery_option(parser: argparse.ArgumentParser) -> None:
    """``--discovery URL[,URL...]``; by default what a Node takes by default (None:
    ``$MESH_DISCOVERY``, then :data:`DEFAULT_DISCOVERY`; ``runtime.node.discovery_urls``)."""
    parser.add_argument(
        "--discovery",
        default=None,
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


def existing_mesh(args: argparse.Namespace) -> MeshDirectory:
    """The mesh directory of a command that only *uses* a mesh (peers, call, status, show,
    publish, subscribe, deadletters): it must be there. Such commands never create one: a
    typo in ``--mesh`` would otherwise make a new authority that nobody trusts, and the error
    would come later, about certificates. ``init``, ``issue``, ``discovery``, ``run`` and
    ``demo`` create a mesh where there is none."""
    mesh = mesh_directory(args.mesh)
    if not (mesh.authority_file.exists() or mesh.authority_public_file.exists()):
        raise InvalidArgument(
            f"no mesh in {mesh.path.absolute()} (create one with: mesh init; or give --mesh DIR or "
            "set $MESH_HOME)"
        )
    return mesh
