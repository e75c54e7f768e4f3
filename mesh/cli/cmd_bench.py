"""``mesh bench``: latency and throughput, the sealed mesh beside raw pyzmq in one run."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from ..core.errors import InvalidArgument
from .cluster import Host, load_cluster


def add_commands(commands: Any) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure the mesh beside raw pyzmq (latency percentiles, throughput, ratios)",
        description="Scenarios: request/reply 64 B to 1 MiB, one-way throughput, 1-64 "
        "outstanding, streamed chunks, a 4 MiB float32 tensor, topic fan-out to 1/10/50 "
        "subscribers. Examples: mesh bench --quick; "
        "mesh bench --json out.json --plot charts/; mesh bench --rate 2000; "
        "mesh bench --cluster hosts.toml --server-host gpu1",
    )
    bench.add_argument("--quick", action="store_true", help="small counts (under a minute)")
    bench.add_argument("--json", metavar="FILE", help="write every figure and the machine")
    bench.add_argument("--plot", metavar="DIR", help="write PNG charts (needs matplotlib)")
    bench.add_argument(
        "--rate", type=int, default=None, help="also run 64 B requests at N/s, fixed schedule"
    )
    bench.add_argument(
        "--nats", metavar="URL", help="also NATS request/reply via nats-py (scripts/bench-peers)"
    )
    bench.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the test suite
    bench.add_argument(
        "--rabbitmq",
        metavar="URL",
        help="also RabbitMQ RPC (reply_to + correlation_id) via pika, e.g. "
        "amqp://guest:guest@127.0.0.1:5672/ (scripts/bench-peers)",
    )
    bench.add_argument(
        "--server-host",
        metavar="HOST",
        help="run the servers on HOST of --cluster (over its ssh or shell), the client here",
    )
    bench.add_argument("--cluster", metavar="FILE", help="the cluster file naming --server-host")
    bench.add_argument(
        "--gateways",
        action="store_true",
        help="also the 64 B call through mesh gateway (A2A) and mesh mcp (MCP over HTTP), "
        "with their official clients (needs the gateway extra)",
    )
    bench.add_argument(
        "--costs",
        action="store_true",
        help="instead of the scenarios: where a round trip's time goes (each cipher's "
        "seal and open; CPU per round trip by process and thread, mesh and raw pyzmq)",
    )
    bench.add_argument(
        "--migration",
        action="store_true",
        help="instead of the scenarios: what moving a generation between two LLM agents "
        "costs (state bytes, move vs recomputing the context vs raw pyzmq for the same "
        "bytes, a prefill/decode split) at --contexts tokens (needs the llm extra)",
    )
    bench.add_argument(
        "--contexts", default="64,512,1024", help="with --migration: context lengths in tokens"
    )
    bench.add_argument("--runs", type=int, default=5, help="with --migration: runs of each")
    bench.add_argument(
        "--device", default="cpu", help="with --migration: cpu or cuda[:N] (the cache's place)"
    )
    bench.set_defaults(run=_bench)


def _bench(args: argparse.Namespace) -> int:
    from ..bench import suite

    if args.costs:
        return _costs(args)
    if args.migration:
        return _migration(args)

    if args.rate is not None and args.rate <= 0:
        raise InvalidArgument("--rate must be a positive number of requests per second")
    if args.tiny:
        plan = suite.Plan.tiny()
    elif args.quick:
        plan = suite.Plan.quick(args.rate)
    else:
        plan = suite.Plan(rate=args.rate)
    brokers = {k: v for k, v in (("nats", args.nats), ("rabbitmq", args.rabbitmq)) if v}
    if args.gateways and args.server_host:
        raise InvalidArgument("--gateways runs here: leave out --server-host")
    return suite.main(plan, args.json, args.plot, brokers, _server_host(args), args.gateways)


def _server_host(args: argparse.Namespace) -> Host | None:
    if args.server_host is None:
        if args.cluster:
            raise InvalidArgument("--cluster is for --server-host: name the host to serve on")
        return None
    if not args.cluster:
        raise InvalidArgument("--server-host needs --cluster FILE (the file that describes it)")
    cluster = load_cluster(args.cluster)
    if args.server_host not in cluster.hosts:
        known = ", ".join(sorted(cluster.hosts))
        raise InvalidArgument(f"no host {args.server_host!r} in {args.cluster} (it has {known})")
    return cluster.hosts[args.server_host]


def _migration(args: argparse.Namespace) -> int:
    try:
        contexts = tuple(int(c) for c in args.contexts.split(","))
    except ValueError:
        raise InvalidArgument("--contexts takes token counts such as 64,512,1024") from None
    if not all(0 < c <= 1024 for c in contexts) or args.runs < 1:
        raise InvalidArgument("--contexts are 1 to 1024 tokens, and --runs at least 1")
    if args.costs or args.server_host or args.plot or args.rate or args.nats or args.rabbitmq:
        raise InvalidArgument("--migration runs alone, here: leave out the other options")
    try:
        from agents import move_cost
    except ImportError as exc:
        raise InvalidArgument(
            f"mesh bench --migration needs the llm extra ({exc.name} is missing): "
            "scripts/setup llm, or pip install -e '.[llm]'"
        ) from None
    measured = move_cost.measure(contexts, 2 if args.quick else args.runs, device=args.device)
    print(move_cost.table(measured))
    if args.json:
        Path(args.json).write_text(json.dumps({"migration": measured}, indent=2) + "\n")
    return 0


def _costs(args: argparse.Namespace) -> int:
    from ..bench import costs

    others = (args.server_host, args.cluster, args.gateways, args.nats, args.rabbitmq)
    if any(others) or args.rate is not None or args.plot or args.tiny:
        raise InvalidArgument(
            "--costs runs alone, here: leave out the other systems, hosts, --rate and --plot"
        )
    measured = asyncio.run(costs.measure(seconds=1.0 if args.quick else 3.0))
    print(costs.table(measured))
    if args.json:
        Path(args.json).write_text(json.dumps({"costs": measured}, indent=2) + "\n")
    return 0
