"""``mesh launch`` and the two commands it runs on each host: ``keygen`` and ``install``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..core.errors import InvalidArgument
from ..core.identity import Certificate
from ..runtime.keystore import mesh_directory
from .cluster import load_cluster
from .launch import Launcher
from .options import json_option


def add_commands(commands: Any) -> None:
    launch = commands.add_parser(
        "launch",
        help="bring a mesh up across hosts from a cluster file; status, down, logs",
        description="Examples: mesh launch cluster.toml up; mesh launch cluster.toml status "
        "--json; mesh launch cluster.toml logs writer; mesh launch cluster.toml down",
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
        description="Run by mesh launch on each host: the secret keys stay on this host. "
        "Example: mesh keygen worker-1 (prints the public keys as JSON)",
    )
    keygen.add_argument("name")
    keygen.set_defaults(run=_keygen)

    install = commands.add_parser(
        "install",
        help="install NAME's certificate and the authority's public key",
        description="Run by mesh launch on each host after keygen. Example: mesh install "
        "worker-1 --certificate HEX --authority HEX",
    )
    install.add_argument("name")
    install.add_argument("--certificate", required=True, help="hex")
    install.add_argument("--authority", required=True, help="the authority's verify key, hex")
    install.set_defaults(run=_install)


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
            print(f"{'name':<16} {'host':<12} {'state':<10} {'registered':<11} rtt")
            for r in rows:
                rtt = f"{r['rtt_ms']:.2f} ms" if r["rtt_ms"] is not None else "-"
                registered = "yes" if r["registered"] else "no"
                print(f"{r['name']:<16} {r['host']:<12} {r['state']:<10} {registered:<11} {rtt}")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    mesh = mesh_directory(args.mesh)
    certified = mesh.identity_file(args.name).exists()
    identity = mesh.load_identity(args.name) if certified else mesh.pending_identity(args.name)
    answer = {
        "name": args.name,
        "box_public": identity.box_public.hex(),
        "sign_public": identity.sign_public.hex(),
        "certified": certified,
        "authority": mesh.trust().authority_key.hex() if certified else "",
    }
    print(json.dumps(answer))
    return 0


def _install(args: argparse.Namespace) -> int:
    mesh = mesh_directory(args.mesh)
    try:
        certificate = Certificate.from_bytes(bytes.fromhex(args.certificate))
        authority = bytes.fromhex(args.authority)
    except ValueError as exc:
        raise InvalidArgument(f"--certificate and --authority are hex: {exc}") from exc
    identity = mesh.install(args.name, certificate, authority)
    print(f"installed {args.name} (node {identity.node_id.hex()})")
    return 0
