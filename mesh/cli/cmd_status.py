"""``mesh status``: who is up, how fast each hop is, requests/s, errors, credit, drops."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from ..core.errors import InvalidArgument
from ..runtime.node import Node
from .cmd_live import CLI_IDENTITY, StopSignals
from .options import discovery_option, existing_mesh, json_option


def add_commands(commands: Any) -> None:
    status = commands.add_parser(
        "status",
        help="the live mesh: nodes, round trips, requests/s, errors, credit, drops",
        description="Examples: mesh status; mesh status --watch; mesh status --json | jq .; "
        "MESH_DISCOVERY=tcp://10.0.0.5:7700 mesh status --watch 5",
    )
    discovery_option(status)
    json_option(status)
    status.add_argument(
        "--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C",
    )  # fmt: skip
    status.add_argument(
        "--timeout", type=float, default=2.0, help="seconds to wait for each node (default 2)"
    )
    status.set_defaults(run=lambda args: asyncio.run(_status(args)))


async def _status(args: argparse.Namespace) -> int:
    from . import status

    if args.timeout <= 0 or (args.watch is not None and args.watch <= 0):
        raise InvalidArgument("--timeout and --watch take a positive number of seconds")
    async with Node(
        CLI_IDENTITY, discovery=args.discovery, mesh=existing_mesh(args), register=False
    ) as node:
        if args.watch is None:
            rows = await status.look(node, CLI_IDENTITY, args.timeout)
            _show(rows, args.json, status)
            return 0
        signals = StopSignals()
        before: dict[str, dict[str, Any]] = {}
        last = time.monotonic()
        while not signals.stopped:
            rows = await status.look(node, CLI_IDENTITY, args.timeout)
            now = time.monotonic()
            status.with_rates(rows, before, now - last)
            before, last = {r["name"]: r for r in rows}, now
            if not args.json:
                sys.stdout.write("\033[2J\033[H")  # clear the terminal, top left
            _show(rows, args.json, status)
            await signals.wait(args.watch)
        return signals.code


def _show(rows: list[dict[str, Any]], as_json: bool, status: Any) -> None:
    if as_json:
        print(json.dumps(rows), flush=True)
        return
    if sys.stdout.isatty():  # pipes and logs get plain columns
        try:
            from rich.console import Console
        except ImportError:
            pass
        else:
            Console().print(status.rich_table(rows))
            return
    print(status.table(rows), flush=True)
