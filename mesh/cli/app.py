"""The ``mesh`` command line: create a mesh, issue certificates, show identities, self-check.

Every error is one readable line on stderr and a non-zero exit status; a traceback from
this module is a bug. ``--mesh DIR`` (default ``$MESH_HOME`` or ``~/.agent-mesh``) picks
the mesh directory for every command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from ..core.errors import DiscoveryUnavailable, MeshError
from ..core.identity import Certificate, Identity
from ..ops.logs import configure as configure_logs
from ..runtime.keystore import default_mesh_dir, mesh_directory
from ..runtime.node import DEFAULT_DISCOVERY, ENV_DISCOVERY
from ..runtime.sockets import close_shared_context
from . import cmd_bench, cmd_deadletters, cmd_gateway, cmd_launch, cmd_live, cmd_status
from .completion import script as completion_script
from .options import existing_mesh, json_option

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mesh`` console script; returns the exit status."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not hasattr(args, "agent_options"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.agent_options = extra
    if args.verbose or args.log_json:
        configure_logs(args.verbose, args.log_json)
    try:
        return int(args.run(args) or 0)
    except MeshError as exc:
        print(f"mesh: error: {exc}{_default_discovery_hint(args, exc)}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(
            f"mesh: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
            file=sys.stderr,
        )
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:  # the process ends here: what its sockets still hold goes out first
        close_shared_context()


def _default_discovery_hint(args: argparse.Namespace, exc: MeshError) -> str:
    """When discovery did not answer at the default address, say it was the default: a
    newcomer who typed no --discovery may not know where the command looked."""
    if (
        isinstance(exc, DiscoveryUnavailable)
        and getattr(args, "discovery", "given") is None
        and not os.environ.get(ENV_DISCOVERY, "").strip()
        and "default address" not in str(exc)  # a registering node has said so already
    ):
        return (
            f" ({DEFAULT_DISCOVERY} is the default: start `mesh discovery`, or give "
            "--discovery URL or $MESH_DISCOVERY)"
        )
    return ""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mesh",
        description="agent-mesh: a brokerless, sealed messaging mesh for LLM agents.",
        epilog="Examples:\n  mesh init\n  mesh issue alice --caps echo,generate\n"
        "  mesh show alice --json\n  mesh selfcheck\n  mesh discovery &\n"
        "  mesh run echo --name echo-1 &\n  mesh call echo-1 echo '{\"x\": 1}'\n  mesh peers",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--mesh",
        metavar="DIR",
        default=None,
        help=f"mesh directory (default: $MESH_HOME or {default_mesh_dir()})",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=_env_verbosity(),
        help="log more (-v info, -vv debug) to stderr (default: $MESH_LOG: info or debug)",
    )  # fmt: skip
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    init = commands.add_parser(
        "init",
        help="create the mesh authority (idempotent)",
        description="Create this mesh's authority key (kept here; other hosts need only "
        "authority.pub). Examples: mesh init; mesh --mesh /srv/mesh init",
    )
    init.set_defaults(run=_cmd_init)

    issue = commands.add_parser(
        "issue",
        help="create an identity and certify it",
        description="Create NAME's keys and sign its certificate "
        "with this mesh's authority. Example: mesh issue alice "
        "--caps echo",
    )
    issue.add_argument("name")
    issue.add_argument("--caps", default="", help="comma-separated capabilities")
    issue.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    issue.add_argument(
        "--force", action="store_true", help="replace an existing identity (new keys)"
    )
    issue.set_defaults(run=_cmd_issue)

    show = commands.add_parser(
        "show",
        help="show the authority or an identity",
        description="Examples: mesh show; mesh show alice --json",
    )
    show.add_argument("name", nargs="?", help="identity to show (default: the authority)")
    json_option(show)
    show.set_defaults(run=_cmd_show)

    check = commands.add_parser(
        "selfcheck",
        help="handshake, seal and open in this process",
        description="Run a handshake between two identities of the "
        "mesh and seal, open, tamper with and replay envelopes. Examples: mesh selfcheck; "
        "mesh selfcheck --json",
    )
    json_option(check)
    check.set_defaults(run=_cmd_selfcheck)
    demo = commands.add_parser(
        "demo",
        help="start a local mesh and show it working",
        description="Start a discovery node and three echo agents as "
        "processes, call them, and stop them. Example: mesh demo",
    )
    demo.set_defaults(run=_cmd_demo)
    cmd_live.add_commands(commands)
    cmd_deadletters.add_commands(commands)
    cmd_launch.add_commands(commands)
    cmd_bench.add_commands(commands)
    cmd_status.add_commands(commands)
    cmd_gateway.add_commands(commands)
    completion = commands.add_parser(
        "completion",
        help="print a shell completion script",
        description="Examples: source <(mesh completion bash); "
        "mesh completion zsh > ~/.mesh-completion.zsh",
    )
    completion.add_argument("shell", choices=("bash", "zsh"))
    completion.set_defaults(run=lambda args: print(completion_script(parser, args.shell)) or 0)
    return parser


def _env_verbosity() -> int:
    return {"info": 1, "debug": 2}.get(os.environ.get("MESH_LOG", "").lower(), 0)


def _cmd_init(args: argparse.Namespace) -> int:
    mesh = mesh_directory(args.mesh)
    existed = mesh.authority_file.exists()
    authority = mesh.create()
    state = "exists" if existed else "created"
    print(f"mesh {state} at {mesh.path} (authority {authority.authority_id.hex()})")
    return 0


def _cmd_issue(args: argparse.Namespace) -> int:
    mesh = mesh_directory(args.mesh)
    caps = tuple(c.strip() for c in args.caps.split(",") if c.strip())
    if mesh.identity_file(args.name).exists() and not args.force:
        print(
            f"mesh: error: identity {args.name!r} exists (use --force to replace it)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    authority = mesh.create()
    identity = authority.issue_for(
        Identity.generate(args.name),
        capabilities=caps,
        not_before=int(time.time()) - 300,
        lifetime_s=args.days * 86400,
    )
    mesh.save_identity(identity, replace=args.force)
    print(f"issued {args.name} (node {identity.node_id.hex()}) in {mesh.path}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    mesh = existing_mesh(args)
    if args.name is None:
        trust = mesh.trust()
        info: dict[str, Any] = {
            "mesh": str(mesh.path),
            "authority_id": trust.authority_id.hex(),
            "authority_key": trust.authority_key.hex(),
            "identities": mesh.names(),
        }
    else:
        info = _certificate_info(mesh.load_identity(args.name).require_certificate())
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>14}: {', '.join(value) if isinstance(value, list) else value}")
    return 0


def _certificate_info(cert: Certificate) -> dict[str, Any]:
    def stamp(seconds: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))

    return {
        "name": cert.name,
        "node_id": cert.node_id.hex(),
        "box_public": cert.box_public.hex(),
        "sign_public": cert.sign_public.hex(),
        "capabilities": list(cert.capabilities),
        "not_before": stamp(cert.not_before),
        "not_after": stamp(cert.not_after),
        "authority_id": cert.authority_id.hex(),
    }


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(mesh_directory(args.mesh))


def _cmd_selfcheck(args: argparse.Namespace) -> int:
    from .selfcheck import run_selfcheck

    report = run_selfcheck(mesh_directory(args.mesh))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for line in report["lines"]:
            print(line)
    return 0 if report["ok"] else EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
