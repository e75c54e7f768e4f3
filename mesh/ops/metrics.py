"""A Prometheus endpoint for a node or a discovery node (``--metrics-port``).

Nothing is counted for Prometheus on the hot path: at each scrape the collector takes the
node's ``stats()`` snapshot on the node's own event loop (so no dict is read while it
changes) and turns it into metric families. Needs ``prometheus-client``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

from ..core.errors import InvalidArgument
from ..core.histogram import Histogram

SNAPSHOT_TIMEOUT_S = 5.0
LATENCY_BUCKETS_S = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class StatsCollector:
    """Prometheus metric families from a ``stats()`` snapshot, taken on ``loop``."""

    def __init__(self, stats: Callable[[], dict[str, Any]], loop: asyncio.AbstractEventLoop):
        self._stats = stats
        self._loop = loop

    def _snapshot(self) -> dict[str, Any]:
        async def take() -> dict[str, Any]:
            return self._stats()

        future = asyncio.run_coroutine_threadsafe(take(), self._loop)
        return future.result(SNAPSHOT_TIMEOUT_S)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        stats = self._snapshot()
        drops = CounterMetricFamily("mesh_drops", "Frames dropped, by reason", labels=["reason"])
        for reason, count in sorted(stats.get("drops", {}).items()):
            drops.add_metric([reason], count)
        yield drops
        traffic = stats.get("traffic")
        if traffic is not None:
            for way in ("sent", "received"):
                messages = CounterMetricFamily(
                    f"mesh_messages_{way}", f"Messages {way}, by kind", labels=["kind"]
                )
                sizes = CounterMetricFamily(
                    f"mesh_bytes_{way}", f"Bytes {way} (a frame's, by its first kind)",
                    labels=["kind"],
                )  # fmt: skip
                for kind, figures in sorted(traffic[way].items()):
                    messages.add_metric([kind], figures["messages"])
                    sizes.add_metric([kind], figures["bytes"])
                yield messages
                yield sizes
        calls = stats.get("calls")
        if calls is not None:
            latency = HistogramMetricFamily(
                "mesh_request_duration_seconds", "Request round trips that got a reply, by peer",
                labels=["peer"],
            )  # fmt: skip
            outcomes = CounterMetricFamily(
                "mesh_requests", "Requests by peer and outcome (ok or the error's type)",
                labels=["peer", "outcome"],
            )  # fmt: skip
            for peer, figures in sorted(calls.items()):
                for outcome, count in sorted(figures["outcomes"].items()):
                    outcomes.add_metric([peer, outcome], count)
                if figures["latency"] is not None:
                    histogram = Histogram.from_json(figures["latency"])
                    buckets = [
                        (repr(le), histogram.count_at_most(int(le * 1e9)))
                        for le in LATENCY_BUCKETS_S
                    ]
                    buckets.append(("+Inf", histogram.count))
                    latency.add_metric([peer], buckets, histogram.total / 1e9)
            yield latency
            yield outcomes
        connections = stats.get("connections")
        if connections is not None:
            credit = GaugeMetricFamily(
                "mesh_credit_messages", "Credit a peer has granted us, unused", labels=["peer"]
            )
            waiting = GaugeMetricFamily(
                "mesh_credit_waiting", "Sends waiting for a peer's credit", labels=["peer"]
            )
            for peer, figures in sorted(connections.items()):
                credit.add_metric([peer], figures["credit_messages"])
                waiting.add_metric([peer], figures["waiting"])
            yield credit
            yield waiting
        callers = stats.get("callers")
        if callers is not None:
            held = GaugeMetricFamily(
                "mesh_held_messages", "Received from a caller, not yet consumed",
                labels=["caller"],
            )  # fmt: skip
            for caller, figures in sorted(callers.items()):
                held.add_metric([caller], figures["held_messages"])
            yield held
        for name, help_text in (
            ("handler_failures", "Handlers that raised"),
            ("sessions", "Sessions open"),
            ("entries", "Directory entries (discovery)"),
        ):
            if name in stats:
                family = CounterMetricFamily if name == "handler_failures" else GaugeMetricFamily
                yield family(f"mesh_{name}", help_text, value=stats[name])


class MetricsServer:
    """The HTTP endpoint; ``close()`` stops it."""

    def __init__(self, stats: Callable[[], dict[str, Any]], port: int, address: str) -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError as exc:
            raise InvalidArgument("--metrics-port needs prometheus-client") from exc
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StatsCollector(stats, asyncio.get_running_loop()))  # type: ignore[arg-type]
        try:
            self._server, self._thread = start_http_server(port, addr=address, registry=registry)
        except OSError as exc:
            raise InvalidArgument(f"cannot serve metrics on {address}:{port}: {exc}") from exc
        self.port = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
