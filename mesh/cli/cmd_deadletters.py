"""``mesh deadletters``: what a node could not deliver, read from its delivery store.

Works whether or not the node runs (the store is SQLite in WAL mode). ``retry`` marks a
letter: the running node sends it again within a second (durably), or at its next start.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..core.errors import InvalidArgument
from ..runtime.outbox import DeliveryStore
from .options import existing_mesh, json_option


def add_commands(commands: Any) -> None:
    letters = commands.add_parser(
        "deadletters",
        help="list, show, retry or purge a node's dead letters",
        description="Examples: mesh deadletters --node alice list; "
        "mesh deadletters --node alice show 3; mesh deadletters --node alice retry 3; "
        "mesh deadletters --store PATH purge",
    )
    letters.add_argument("action", choices=("list", "show", "retry", "purge"))
    letters.add_argument("id", nargs="?", type=int, help="a dead letter's id (show, retry, purge)")
    where = letters.add_mutually_exclusive_group(required=True)
    where.add_argument("--node", help="the node's name (its store in the mesh directory)")
    where.add_argument("--store", help="the delivery store's path")
    json_option(letters)
    letters.set_defaults(run=_deadletters)


def _store_path(args: argparse.Namespace) -> Path:
    if args.store:
        return Path(args.store)
    return existing_mesh(args).path / "outbox" / f"{args.node}.sqlite3"


def _deadletters(args: argparse.Namespace) -> int:
    path = _store_path(args)
    if not path.exists():
        raise InvalidArgument(f"no delivery store at {path}")
    store = DeliveryStore(path)
    try:
        if args.action == "list":
            _print_list(store.dead_letters(), args.json)
        elif args.id is None and args.action in ("show", "retry"):
            raise InvalidArgument(f"deadletters {args.action} needs a dead letter's id")
        elif args.action == "show":
            print(json.dumps(store.dead_letter(args.id), indent=2, default=repr))
        elif args.action == "retry":
            store.ask_retry(args.id)
            print(f"dead letter {args.id} will be sent again by its node")
        else:
            print(f"purged {store.purge(args.id)} dead letter(s)")
    finally:
        store.close()
    return 0


def _print_list(letters: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps([{k: v for k, v in d.items() if k != "body"} for d in letters]))
        return
    print(f"{'id':>5}  {'peer':<16} {'method':<16} {'reason':<15} {'tries':>5}  when")
    for d in letters:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d["dead_ms"] / 1000))
        print(
            f"{d['id']:>5}  {d['peer']:<16} {d['method']:<16} {d['reason']:<15} "
            f"{d['attempts']:>5}  {when}{'  (retry asked)' if d['retry'] else ''}"
        )
