"""``mesh gateway`` (A2A) and ``mesh mcp`` (MCP): the mesh's agents for outside clients.

Both need the ``gateway`` extra (``pip install 'agent-mesh[gateway]'``); without it they
say so in one line. Over HTTP a bearer token is required unless ``--no-auth`` is given on
a loopback address; without ``--token`` (or ``$MESH_GATEWAY_TOKEN``) one is generated and
printed once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import sys
from typing import Any

from ..core.errors import InvalidArgument
from ..ops.processes import serving_line
from ..runtime.keystore import mesh_directory
from .cmd_live import StopSignals
from .options import discovery_option

NEEDS = ("a2a", "mcp", "uvicorn")
ENV_TOKEN = "MESH_GATEWAY_TOKEN"


def add_commands(commands: Any) -> None:
    gateway = commands.add_parser(
        "gateway",
        help="serve every mesh agent as an A2A agent over HTTP",
        description="Serve each live mesh agent at http://HOST:PORT/agents/NAME/ (its A2A "
        "card at .well-known/agent-card.json under it). Example: mesh gateway --listen "
        "127.0.0.1:8700",
    )
    discovery_option(gateway)
    _http_options(gateway, required=True, default_port=8700)
    gateway.add_argument(
        "--public-url",
        default=None,
        help="where clients reach it, for the cards (default: http(s)://HOST:PORT of --listen)",
    )
    gateway.add_argument("--name", default="gateway", help="the gateway's node name")
    gateway.set_defaults(run=lambda args: _run(_a2a, args, "mesh gateway"))

    mcp = commands.add_parser(
        "mcp",
        help="offer every mesh agent's methods as MCP tools (stdio, or HTTP)",
        description="An MCP server: each method of each live agent is a tool AGENT__METHOD. "
        "Over stdio by default (for an MCP client to start); --http HOST:PORT serves "
        "streamable HTTP at /mcp. Example: mesh mcp --http 127.0.0.1:8701",
    )
    discovery_option(mcp)
    _http_options(mcp, required=False, default_port=8701)
    mcp.add_argument("--name", default="mcp", help="the gateway's node name")
    mcp.set_defaults(run=lambda args: _run(_mcp, args, "mesh mcp"))


def _http_options(parser: argparse.ArgumentParser, *, required: bool, default_port: int) -> None:
    flag = "--listen" if required else "--http"
    parser.add_argument(
        flag,
        dest="listen",
        default=f"127.0.0.1:{default_port}" if required else None,
        metavar="HOST:PORT",
        help=f"where to serve HTTP (default 127.0.0.1:{default_port})"
        if required
        else "serve streamable HTTP there instead of stdio",
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"the bearer token clients must send (default ${ENV_TOKEN}: out of ps's sight)",
    )
    parser.add_argument(
        "--no-auth", action="store_true", help="no token (only on a loopback address)"
    )
    parser.add_argument("--tls-cert", default=None, help="serve HTTPS with this certificate")
    parser.add_argument("--tls-key", default=None, help="... and this key")


def _run(command: Any, args: argparse.Namespace, what: str) -> int:
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise InvalidArgument(
            f"{what} needs the gateway extra ({', '.join(missing)} missing): "
            "pip install 'agent-mesh[gateway]' (scripts/setup dev installs it)"
        )
    return asyncio.run(command(args))


def _exposure(args: argparse.Namespace) -> Any:
    from ..gateway.http import check_exposure

    return check_exposure(
        args.listen,
        token=args.token or os.environ.get(ENV_TOKEN) or None,
        no_auth=args.no_auth,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def _announce_token(exposure: Any, out: Any) -> None:
    if exposure.token is None:
        print("no token: anyone on this host can call every agent", file=out, flush=True)
    elif exposure.generated:
        print(f"token (shown once): {exposure.token}", file=out, flush=True)


async def _a2a(args: argparse.Namespace) -> int:
    from ..gateway.a2a_server import A2AGateway
    from ..gateway.http import Guard, HttpServer
    from ..gateway.serve import gateway_node

    exposure = _exposure(args)
    signals = StopSignals()
    async with gateway_node(
        args.name,
        discovery=args.discovery,
        mesh=mesh_directory(args.mesh),
        description="A2A gateway: serves the mesh's agents over HTTP",
    ) as (node, catalog):
        server = HttpServer(exposure)
        public = args.public_url or server.bind()  # the cards need the port (0: any)
        gateway = A2AGateway(node, catalog, public, bearer=exposure.token is not None)
        try:
            await server.serve(Guard(gateway, exposure.token))
            _announce_token(exposure, sys.stdout)
            print(serving_line(args.name, gateway.public_url), flush=True)
            print(
                f"each agent at {gateway.public_url}/agents/NAME/ ({len(catalog.agents)} now)",
                flush=True,
            )
            return await signals.wait()
        finally:
            await server.close()
            await gateway.close()


async def _mcp(args: argparse.Namespace) -> int:
    from ..gateway.mcp_server import MeshTools
    from ..gateway.serve import gateway_node

    exposure = _exposure(args) if args.listen is not None else None
    if exposure is None and (args.token or args.no_auth or args.tls_cert or args.tls_key):
        raise InvalidArgument("--token, --no-auth and TLS apply to --http")
    signals = StopSignals()
    async with gateway_node(
        args.name,
        discovery=args.discovery,
        mesh=mesh_directory(args.mesh),
        description="MCP gateway: offers the mesh's agents as tools",
    ) as (node, catalog):
        tools = MeshTools(node, catalog)
        if exposure is None:
            return await _mcp_stdio(tools, signals)
        return await _mcp_http(tools, exposure, signals)


async def _mcp_stdio(tools: Any, signals: StopSignals) -> int:
    """Serve the client on stdin/stdout until it closes them or a signal comes; every
    word of ours goes to stderr (stdout is the protocol)."""
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read, write):
        served = asyncio.create_task(
            tools.server.run(read, write, tools.initialization_options()), name="mcp-stdio"
        )
        stopped = asyncio.create_task(signals.wait(), name="mcp-signals")
        try:
            await asyncio.wait({served, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (served, stopped):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return signals.code


async def _mcp_http(tools: Any, exposure: Any, signals: StopSignals) -> int:
    from ..gateway.http import Guard, HttpServer

    app = tools.server.streamable_http_app(streamable_http_path="/mcp", host=exposure.host)
    server = HttpServer(exposure)
    try:
        await server.serve(Guard(app, exposure.token))
        _announce_token(exposure, sys.stdout)
        print(serving_line(tools.node.name, f"{server.url}/mcp"), flush=True)
        return await signals.wait()
    finally:
        await server.close()
