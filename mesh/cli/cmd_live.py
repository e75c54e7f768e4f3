"""The live-mesh commands of ``mesh``: discovery, run, call, peers.

Long-running commands stop cleanly on Ctrl-C (exit 130) and SIGTERM (exit 0): they
unregister, say BYE and close their sockets. ``--discovery`` defaults to
``$MESH_DISCOVERY``, then ``tcp://127.0.0.1:7700``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from typing import Any

from ..core.codec import Blob
from ..core.errors import InvalidArgument, KeyFileError, MeshError, NoSuchMethod
from ..core.flow import Window
from ..ops.processes import serving_line
from ..runtime.discovery import DiscoveryServer
from ..runtime.keystore import mesh_directory
from ..runtime.node import Node
from .options import (
    DEFAULT_DISCOVERY,
    discovery_option,
    existing_mesh,
    json_option,
    seconds,
    seconds_or_zero,
)
from .run_targets import close_agent, load_target
from .table import printable

CLI_IDENTITY = "mesh-cli"
DEFAULT_DRAIN_S = 60.0  # agents.base.DEFAULT_DRAIN_S: the core does not import agents
DRAIN_ANSWER_S = 30.0  # what a drain's answer may take beyond its own timeout
FINISH_GRACE_S = 0.5  # a drained agent keeps reading this long after its last answer
ENV_METRICS_PORT = "MESH_METRICS_PORT"


def add_commands(commands: Any) -> None:
    discovery = commands.add_parser(
        "discovery",
        help="run a discovery node",
        description="Run a discovery node. Example: mesh discovery --bind tcp://0.0.0.0:7700",
    )
    discovery.add_argument("--bind", default=DEFAULT_DISCOVERY, help="ROUTER address to bind")
    _metrics_option(discovery)
    discovery.set_defaults(run=lambda args: asyncio.run(_discovery(args)))

    run = commands.add_parser(
        "run",
        help="run an agent (echo, or module:attribute)",
        description="Run an agent until stopped. Examples: mesh run echo --name echo-1; "
        "mesh run myagent:Greeter --name greeter; mesh run agents.llm:LLMAgent --help (an "
        "agent class's own options follow these)",
        add_help=False,
    )
    run.add_argument(
        "-h", "--help", action=RunHelp, help="show this help; after TARGET, the agent's options too"
    )
    run.add_argument("target", help="'echo' or module:attribute (a callable taking the node)")
    run.add_argument("--name", required=True, help="the node's name in the mesh")
    discovery_option(run)
    run.add_argument("--bind", default="tcp://127.0.0.1:0", help="ROUTER bind address")
    run.add_argument("--advertise", default=None, help="address peers should dial")
    run.add_argument("--caps", default="", help="extra comma-separated capabilities")
    run.add_argument("--heartbeat", type=seconds, default=1.0, help="seconds (default 1)")
    run.add_argument("--lease-ms", type=int, default=10_000, help="discovery lease (ms)")
    run.add_argument(
        "--window",
        type=int,
        default=1024,
        help="messages a caller may have unconsumed here (flow control)",
    )
    run.add_argument(
        "--drain",
        type=seconds_or_zero,
        nargs="?",
        const=DEFAULT_DRAIN_S,
        default=None,
        metavar="SECONDS",
        help="on SIGTERM, drain before exiting (an agent class: hand its work to replicas, "
        f"wait at most SECONDS, default {DEFAULT_DRAIN_S:g}, for the rest; a second signal "
        "cuts the wait short)",
    )
    _metrics_option(run)
    run.set_defaults(run=lambda args: asyncio.run(_agent(args)), agent_options=[])

    drain = commands.add_parser(
        "drain",
        help="take an agent out of service without dropping its work, then end it",
        description="The agent leaves the directory, hands its in-flight work to replicas "
        "(an LLM agent moves its generations), waits at most --timeout for what stays, "
        "prints what happened and exits 0. Example: mesh drain billing",
    )
    drain.add_argument("name", help="the agent's name")
    discovery_option(drain)
    drain.add_argument(
        "--timeout", type=seconds_or_zero, default=DEFAULT_DRAIN_S,
        help=f"seconds to wait for work no replica took (default {DEFAULT_DRAIN_S:g})",
    )  # fmt: skip
    drain.set_defaults(run=lambda args: asyncio.run(_drain(args)))

    call = commands.add_parser(
        "call",
        help="call a method and print the reply as JSON",
        description="Example: mesh call echo-1 echo '{\"x\": 1}' --timeout 2",
    )
    call.add_argument("name", help="the peer's name")
    call.add_argument("method")
    call.add_argument("body", nargs="?", default="null", help="JSON body (default null)")
    discovery_option(call)
    call.add_argument("--timeout", type=seconds, default=10.0, help="seconds (default 10)")
    call.add_argument("--stream", action="store_true", help="print one JSON line per chunk")
    call.set_defaults(run=lambda args: asyncio.run(_call(args)))

    publish = commands.add_parser(
        "publish",
        help="publish a JSON message on a topic",
        description="Publish to every subscriber of TOPIC, waiting (bounded) until the ones "
        "that subscribed before are connected. Example: mesh publish orders.new '{\"id\": 7}'",
    )
    publish.add_argument("topic", help="a concrete topic such as orders.new")
    publish.add_argument("body", nargs="?", default="null", help="JSON body (default null)")
    discovery_option(publish)
    _name_option(publish, "pub")
    publish.add_argument("--count", type=int, default=1, help="publish it N times (default 1)")
    publish.add_argument(
        "--interval", type=seconds_or_zero, default=0.0, help="seconds between messages (default 0)"
    )
    publish.add_argument(
        "--timeout", type=seconds, default=2.0, help="seconds to wait for subscribers (default 2)"
    )
    publish.set_defaults(run=lambda args: asyncio.run(_publish(args)))

    subscribe = commands.add_parser(
        "subscribe",
        help="print messages on matching topics, one JSON line each",
        description="Print {topic, publisher, seq, body} as one JSON line per message until "
        "Ctrl-C. Patterns: orders.new, orders.* (one token), orders.> (the rest). "
        "Example: mesh subscribe 'orders.>'",
    )
    subscribe.add_argument("pattern", help="topic or pattern")
    discovery_option(subscribe)
    _name_option(subscribe, "sub")
    subscribe.add_argument("--count", type=int, default=0, help="exit after N messages")
    subscribe.set_defaults(run=lambda args: asyncio.run(_subscribe(args)))

    peers = commands.add_parser(
        "peers", help="list the live nodes", description="Example: mesh peers --json"
    )
    discovery_option(peers)
    json_option(peers)
    peers.set_defaults(run=lambda args: asyncio.run(_peers(args)))


class RunHelp(argparse.Action):
    """``mesh run [TARGET] --help``: run's own options and, when TARGET came first and is an
    agent class (it has ``options_help``), that agent's options (``--model``...), which
    ``mesh run`` passes on to it."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, *_: Any) -> None:
        target = getattr(namespace, "target", None)
        options_help = None
        if target is not None:
            try:
                options_help = getattr(load_target(target), "options_help", None)
            except MeshError as exc:
                parser.exit(1, f"mesh: error: {exc}\n")
        parser.print_help()
        if callable(options_help):
            print(f"\n{options_help()}", end="")
        parser.exit()


def _metrics_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port at 127.0.0.1/metrics (needs "
        "prometheus-client; default: $MESH_METRICS_PORT, or none)",
    )


def _metrics_port(args: argparse.Namespace) -> int | None:
    if args.metrics_port is not None:
        return int(args.metrics_port)
    return _env_int(ENV_METRICS_PORT)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"${name} must be a port number, not {value!r}") from None


def _name_option(parser: argparse.ArgumentParser, prefix: str) -> None:
    parser.add_argument(
        "--name",
        default=None,
        help=f"identity to use (default: a fresh one, {prefix}-HOST-PID, issued in memory by "
        "this host's authority)",
    )


def _identity_for(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """Node arguments for a short-lived command: the named identity, or a fresh in-memory
    one, so that two such commands at once never share a name in discovery."""
    directory = existing_mesh(args)
    if args.name:
        return {"name": args.name, "mesh": directory}
    name = f"{prefix}-{socket.gethostname().split('.')[0]}-{os.getpid()}"
    try:
        identity = directory.ephemeral_identity(name)
    except KeyFileError as exc:
        raise InvalidArgument(
            f"no authority secret on this host to issue {name!r} ({exc}); pass --name with an "
            "identity issued for this host"
        ) from exc
    return {"name": name, "identity": identity, "trust": directory.trust()}


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """SIGINT (exit status 130) and SIGTERM (0) request a clean stop; a second signal
    (:meth:`wait_again`) cuts short what the first began (a drain), and after it the
    handlers are gone: a third signal ends the process by its default action.

    Installed before the command announces itself, so a signal sent as soon as the
    "serving on" line appears is never met by the default handler (which would kill the
    process without unregistering). One object counts both signals, so two that arrive
    together are both seen."""

    def __init__(self) -> None:
        self._stopped = asyncio.Event()
        self._again = asyncio.Event()
        self.code = 0
        self.again_code = 0  # 128 + the second signal's number
        self._loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            self._loop.add_signal_handler(signum, self._stop, signum)

    def _stop(self, signum: int) -> None:
        if not self._stopped.is_set():
            self.code = 130 if signum == signal.SIGINT else 0
            self._stopped.set()
            return
        self.again_code = 128 + signum
        self._again.set()
        for each in STOP_SIGNALS:  # the next one is not asked twice: it kills
            self._loop.remove_signal_handler(each)
            signal.signal(each, signal.SIG_DFL)  # SIGINT too, not a KeyboardInterrupt

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    async def wait(self, seconds: float | None = None) -> int:
        """Until a signal came (or ``seconds`` passed); the exit status so far."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopped.wait()
        return self.code

    async def wait_again(self) -> int:
        """Until a second signal came; its exit status (143 for SIGTERM, 130 for SIGINT)."""
        await self._again.wait()
        return self.again_code


async def _discovery(args: argparse.Namespace) -> int:
    signals = StopSignals()
    async with DiscoveryServer(bind=args.bind, mesh=mesh_directory(args.mesh)) as server:
        metrics = None
        port = _metrics_port(args)
        if port is not None:
            from ..ops.metrics import MetricsServer

            metrics = MetricsServer(server.stats, port, "127.0.0.1")
        print(serving_line("discovery", server.endpoint), flush=True)
        if metrics is not None:
            print(f"metrics on http://127.0.0.1:{metrics.port}/metrics", flush=True)
        try:
            return await signals.wait()
        finally:
            if metrics is not None:
                metrics.close()


async def _agent(args: argparse.Namespace) -> int:
    factory = load_target(args.target)
    caps = [c.strip() for c in args.caps.split(",") if c.strip()]
    node_options = {
        "name": args.name,
        "discovery": args.discovery,
        "bind": args.bind,
        "advertise": args.advertise,
        "capabilities": caps,
        "mesh": mesh_directory(args.mesh),
        "heartbeat": args.heartbeat,
        "lease_ms": args.lease_ms,
        "window": Window(args.window),
        "metrics_port": _metrics_port(args),
    }
    if args.drain is not None and not (
        hasattr(factory, "from_command_line") and hasattr(factory, "drain")
    ):
        raise InvalidArgument(
            f"--drain: {args.target} cannot drain (an agents.Agent class can: it hands its "
            "work to replicas); without --drain, SIGTERM stops it at once"
        )
    if hasattr(factory, "from_command_line"):  # an agents.Agent class: it owns its node
        return await _agent_class(factory, args.agent_options, node_options, args.drain)
    if args.agent_options:
        raise InvalidArgument(f"unrecognized arguments: {' '.join(args.agent_options)}")
    node = Node(**node_options)
    agent = factory(node)
    signals = StopSignals()
    try:
        await node.start()
        print(serving_line(args.name, node.endpoint), flush=True)
        if node.metrics_url:
            print(f"metrics on {node.metrics_url}", flush=True)
        return await signals.wait()
    finally:
        await close_agent(agent)
        await node.close()


async def _agent_class(
    factory: Any, argv: list[str], node_options: dict[str, Any], drain_s: float | None
) -> int:
    agent = factory.from_command_line(argv, node_options)
    signals = StopSignals()
    starting = asyncio.create_task(agent.start(), name="agent-start")
    stopping = asyncio.create_task(signals.wait(), name="agent-signals")
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # a signal while it loads a model or reads a card: stop now
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        return signals.code
    stopping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stopping
    starting.result()  # its error, if starting failed
    try:
        print(serving_line(agent.name, agent.node.endpoint), flush=True)
        # an agents.Agent can be drained (`mesh drain`, SIGTERM under --drain); other
        # classes that own their node (mesh run a2a) just stop
        finished = getattr(agent, "finished", None) or asyncio.Event()
        stopped = asyncio.create_task(signals.wait(), name="agent-signals")
        drained = asyncio.create_task(finished.wait(), name="agent-drained")
        try:
            await asyncio.wait({stopped, drained}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            drained.cancel()
            await asyncio.gather(stopped, drained, return_exceptions=True)
        if signals.stopped and signals.code == 0 and drain_s is not None:  # SIGTERM
            return await _drained_on_signal(agent, drain_s, signals)
        if finished.is_set():
            # drained by `mesh drain`: its answer is on the wire; closing the sockets at
            # once could reset the connection under it (the operator would never read it)
            await signals.wait(FINISH_GRACE_S)
        return signals.code
    finally:
        await agent.stop()


async def _drained_on_signal(agent: Any, drain_s: float, signals: StopSignals) -> int:
    """SIGTERM under --drain: drain, print what happened; 0. A second signal (an operator
    who will not wait) cuts the drain short: what was still running is dropped, and the
    exit status is that signal's."""
    draining = asyncio.create_task(agent.drain(drain_s), name="agent-drain")
    again = asyncio.create_task(signals.wait_again(), name="agent-signals")
    try:
        await asyncio.wait({draining, again}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        again.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await again
    if not draining.done():  # Agent.stop ends the drain itself
        draining.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await draining
        print("mesh: drain cut short by a second signal", file=sys.stderr, flush=True)
        return signals.again_code
    print(f"draining: {json.dumps(draining.result())}", flush=True)
    return 0


async def _drain(args: argparse.Namespace) -> int:
    async with Node(
        CLI_IDENTITY, discovery=args.discovery, mesh=existing_mesh(args), register=False
    ) as node:
        body = {"timeout": args.timeout}
        try:
            answer = await node.request(
                args.name, "drain", body, timeout=args.timeout + DRAIN_ANSWER_S
            )
        except NoSuchMethod:
            raise InvalidArgument(
                f"{args.name} cannot be drained: it is not an agents.Agent (stop it with "
                "SIGTERM; its callers' requests in flight fail)"
            ) from None
        print(_json({"drained": args.name, **(answer if isinstance(answer, dict) else {})}))
    return 0


async def _call(args: argparse.Namespace) -> int:
    body = _json_argument(args.body)
    async with Node(
        CLI_IDENTITY, discovery=args.discovery, mesh=existing_mesh(args), register=False
    ) as node:
        if args.stream:
            async for chunk in node.stream(args.name, args.method, body, timeout=args.timeout):
                print(_json(chunk), flush=True)
        else:
            print(_json(await node.request(args.name, args.method, body, timeout=args.timeout)))
    return 0


async def _publish(args: argparse.Namespace) -> int:
    body = _json_argument(args.body)
    if args.count < 1:
        raise InvalidArgument("--count must be at least 1")
    async with Node(discovery=args.discovery, register=False, **_identity_for(args, "pub")) as node:
        for index in range(args.count):
            if index and args.interval:
                await asyncio.sleep(args.interval)
            await node.publish(args.topic, body, timeout=args.timeout)
        stats = node.stats()["topics"]
    unconfirmed = stats.get("offers_unconfirmed", 0)
    if unconfirmed:
        print(
            f"mesh: warning: {unconfirmed} subscriber(s) did not confirm in time", file=sys.stderr
        )
    return 0


async def _subscribe(args: argparse.Namespace) -> int:
    signals = StopSignals()
    async with Node(discovery=args.discovery, **_identity_for(args, "sub")) as node:
        subscription = await node.subscribe(args.pattern)
        print(f"subscribed to {args.pattern} as {node.name}", file=sys.stderr, flush=True)
        stopped = asyncio.ensure_future(signals.wait())
        received = 0
        try:
            while not args.count or received < args.count:
                message = asyncio.ensure_future(subscription.get())
                await asyncio.wait([message, stopped], return_when=asyncio.FIRST_COMPLETED)
                if not message.done():
                    message.cancel()
                    return stopped.result()
                item = message.result()
                record = {"topic": item.topic, "publisher": item.publisher, "seq": item.seq}
                print(_json({**record, "body": item.body}), flush=True)
                received += 1
        finally:
            stopped.cancel()
        gaps = node.stats()["topics"]["gaps"]
    if gaps:
        print(f"mesh: warning: {gaps} message(s) were lost in transit", file=sys.stderr)
    return 0


def _json_argument(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"body is not valid JSON: {exc}") from exc


async def _peers(args: argparse.Namespace) -> int:
    async with Node(
        CLI_IDENTITY, discovery=args.discovery, mesh=existing_mesh(args), register=False
    ) as node:
        peers = [p.to_dict() for p in await node.peers() if p.name != CLI_IDENTITY]
    peers.sort(key=lambda p: p["name"])
    if args.json:
        print(json.dumps(peers, indent=2))
        return 0
    print(f"{'name':<24} {'endpoint':<28} capabilities")
    for peer in peers:
        print(f"{peer['name']:<24} {peer['endpoint']:<28} {', '.join(peer['capabilities'])}")
        card = peer["meta"].get("card")
        if isinstance(card, dict) and isinstance(card.get("description"), str):
            kind = card.get("kind") if isinstance(card.get("kind"), str) else "agent"
            print(f"{'':<24} {printable(kind)}: {printable(card['description'])}")
    return 0


def _json(value: Any) -> str:
    def fallback(obj: Any) -> Any:
        if isinstance(obj, bytes | bytearray | memoryview):
            return bytes(obj).hex()
        if isinstance(obj, Blob):
            return bytes(obj).hex()
        if hasattr(obj, "tolist"):
            return obj.tolist()
        return repr(obj)

    return json.dumps(value, default=fallback)
