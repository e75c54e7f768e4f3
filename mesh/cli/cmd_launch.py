"""``mesh launch``, and joining a mesh from another host: ``keygen`` (keys made where the
node runs; only the public half leaves), ``certify`` (the authority signs them) and
``install`` (the certificate and the authority's public key go where the keys are). The files
that travel are versioned JSON (protocol.md 17)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..core.errors import InvalidArgument, MeshError
from ..core.identity import Certificate
from ..runtime.keystore import (
    CERTIFICATE_KIND,
    NOT_BEFORE_SLACK_S,
    PUBLIC_KEYS_KIND,
    certificate_record,
    hex_field,
    mesh_directory,
    public_keys_record,
    read_record,
    write_record,
)
from .cluster import load_cluster
from .launch import Launcher
from .options import json_option
from .table import plain, printable


def add_commands(commands: Any) -> None:
    launch = commands.add_parser(
        "launch",
        help="bring a mesh up across hosts from a cluster file; status, down, logs",
        description="Examples: mesh launch cluster.toml up; mesh launch cluster.toml status "
        "--json; mesh launch cluster.toml logs writer; mesh launch cluster.toml down. status "
        "exits 0 only when every node runs and is registered (1 otherwise), so a script can "
        "use it as a health check.",
    )
    launch.add_argument("cluster", help="the cluster file (TOML)")
    launch.add_argument("action", choices=("up", "status", "down", "logs"))
    launch.add_argument("name", nargs="?", help="logs: which node")
    json_option(launch, "status: machine-readable")
    launch.add_argument("--lines", type=int, default=50, help="logs: how many lines")
    launch.set_defaults(run=_launch)

    keygen = commands.add_parser(
        "keygen",
        help="make NAME's keys here for a certificate from elsewhere (prints public keys)",
        description="The secret keys stay on this host; the public ones go to the authority "
        "for mesh certify. Examples: mesh keygen worker-1 --out worker-1.pub.json; "
        "mesh keygen worker-1 (prints them as JSON; mesh launch does this on each host)",
    )
    keygen.add_argument("name")
    keygen.add_argument("--out", metavar="FILE", help="write the public keys file here")
    keygen.set_defaults(run=_keygen)

    certify = commands.add_parser(
        "certify",
        help="sign a certificate for public keys made elsewhere (on the authority's host)",
        description="Read a public keys file from mesh keygen, sign a certificate with this "
        "mesh's authority and write a certificate file for mesh install. Example: mesh "
        "certify worker-1.pub.json --capabilities echo --days 30 --out worker-1.cert.json",
    )
    certify.add_argument("public_file", metavar="PUBLIC_FILE")
    certify.add_argument("--name", help="the certificate's name (default: the file's)")
    certify.add_argument("--capabilities", default="", help="comma-separated")
    certify.add_argument("--days", type=int, default=365, help="validity (default 365)")
    certify.add_argument("--out", metavar="FILE", help="default: NAME.cert.json")
    certify.set_defaults(run=_certify)

    install = commands.add_parser(
        "install",
        help="install NAME's certificate and the authority's public key",
        description="On the host where mesh keygen made NAME's keys. Examples: mesh install "
        "--from worker-1.cert.json; mesh install worker-1 --certificate HEX --authority HEX "
        "(what mesh launch runs)",
    )
    install.add_argument("name", nargs="?")
    install.add_argument("--from", dest="source", metavar="FILE", help="a mesh certify file")
    install.add_argument("--certificate", help="hex")
    install.add_argument("--authority", help="the authority's verify key, hex")
    install.set_defaults(run=_install)


MAX_DAYS = 36_500
EXIT_UNHEALTHY = 1  # status: some node is not running or not registered


def _launch(args: argparse.Namespace) -> int:
    launcher = Launcher(load_cluster(args.cluster), mesh_directory(args.mesh))
    if args.action == "up":
        launcher.up()
        print(f"mesh up: discovery at {launcher.cluster.discovery_url}")
    elif args.action == "down":
        launcher.down()
    elif args.action == "logs":
        if not args.name:
            raise InvalidArgument("logs needs the name of a node")
        print(launcher.logs(args.name, args.lines), end="")
    else:
        rows = launcher.status()
        if args.json:
            print(json.dumps(rows))
        else:
            print(_status_table(rows))
        healthy = all(r["state"] == "running" and r["registered"] for r in rows)
        return 0 if healthy else EXIT_UNHEALTHY
    return 0


def _status_table(rows: list[dict[str, Any]]) -> str:
    """The rows, then one line per unreachable host saying why (ssh's own words)."""
    cells = [
        [r["name"], r["host"], r["state"], "yes" if r["registered"] else "no",
         f"{r['rtt_ms']:.2f} ms" if r["rtt_ms"] is not None else "-"]
        for r in rows
    ]  # fmt: skip
    lines = [plain(["name", "host", "state", "registered", "rtt"], cells)]
    reasons = dict.fromkeys(r["reason"] for r in rows if r["reason"])
    lines += [printable(reason) for reason in reasons]
    return "\n".join(lines)


def _keygen(args: argparse.Namespace) -> int:
    mesh = mesh_directory(args.mesh)
    certified = mesh.identity_file(args.name).exists()
    identity = mesh.load_identity(args.name) if certified else mesh.pending_identity(args.name)
    answer = {
        **public_keys_record(identity),
        "certified": certified,
        "authority": mesh.trust().authority_key.hex() if certified else "",
    }
    if args.out:
        write_record(Path(args.out), answer)
        print(f"wrote {args.name}'s public keys to {args.out}: give it to the authority")
    else:
        print(json.dumps(answer))
    return 0


def _certify(args: argparse.Namespace) -> int:
    mesh = mesh_directory(args.mesh)
    keys = read_record(Path(args.public_file), PUBLIC_KEYS_KIND)
    name = args.name or keys.get("name")
    if not isinstance(name, str):
        raise InvalidArgument(f"{args.public_file} names no one: give --name")
    if not 0 < args.days <= MAX_DAYS:
        raise InvalidArgument(f"--days must be from 1 to {MAX_DAYS}")
    authority = mesh.authority()
    certificate = authority.issue(
        name,
        hex_field(args.public_file, keys, "box_public"),
        hex_field(args.public_file, keys, "sign_public"),
        capabilities=[c for c in args.capabilities.split(",") if c],
        not_before=int(time.time()) - NOT_BEFORE_SLACK_S,
        lifetime_s=args.days * 86_400,
    )
    out = Path(args.out or f"{name}.cert.json")
    write_record(out, certificate_record(certificate, authority.verify_key))
    print(f"wrote {name}'s certificate to {out}: install it where its keys are")
    return 0


def _install(args: argparse.Namespace) -> int:
    mesh = mesh_directory(args.mesh)
    if args.source:
        record = read_record(Path(args.source), CERTIFICATE_KIND)
        raw_certificate, raw_authority = record.get("certificate"), record.get("authority")
        where = args.source
    elif args.certificate and args.authority:
        raw_certificate, raw_authority, where = args.certificate, args.authority, "the options"
    else:
        raise InvalidArgument(
            "give --from FILE (from mesh certify), or --certificate and --authority"
        )
    try:
        certificate = Certificate.from_bytes(bytes.fromhex(str(raw_certificate)))
        authority = bytes.fromhex(str(raw_authority))
    except (ValueError, MeshError) as exc:
        raise InvalidArgument(f"{where}: a certificate and an authority key in hex: {exc}") from exc
    if args.name and args.name != certificate.name:
        raise InvalidArgument(f"the certificate is for {certificate.name!r}, not {args.name!r}")
    identity = mesh.install(certificate.name, certificate, authority)
    print(f"installed {certificate.name} (node {identity.node_id.hex()})")
    return 0
