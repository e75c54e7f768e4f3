"""Operations: Prometheus metrics after known traffic, and one trace across two hops."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request

import pytest

from mesh.core.errors import NoSuchMethod
from mesh.runtime.node import Node
from tests.processes import ROOT

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.mark.asyncio
async def test_prometheus_counts_known_traffic(mesh):
    pytest.importorskip("prometheus_client")
    async with (
        Node("server", discovery=[], mesh=mesh, metrics_port=0) as server,
        Node("client", discovery=[], mesh=mesh, metrics_port=0) as client,
    ):

        async def echo(body):
            return body

        server.handler("echo", echo)
        client.add_peer(server.identity.require_certificate(), server.endpoint)
        for i in range(7):
            assert await client.request("server", "echo", i, timeout=10) == i
        for i in range(3):
            await client.send("server", "echo", i)
        with pytest.raises(NoSuchMethod):
            await client.request("server", "missing", timeout=10)
        await client.request("server", "echo", "flush", timeout=10)  # the sends are in
        seen = await asyncio.to_thread(scrape, server.metrics_url)
        assert seen[("mesh_messages_received_total", (("kind", "REQUEST"),))] == 9
        assert seen[("mesh_messages_received_total", (("kind", "SEND"),))] == 3
        assert seen[("mesh_messages_sent_total", (("kind", "REPLY"),))] == 8
        assert seen[("mesh_messages_sent_total", (("kind", "ERROR"),))] == 1
        assert seen[("mesh_bytes_received_total", (("kind", "REQUEST"),))] > 9 * 64
        mine = await asyncio.to_thread(scrape, client.metrics_url)
        peer = (("peer", "server"),)
        assert mine[("mesh_requests_total", (("outcome", "ok"), ("peer", "server")))] == 8
        assert mine[("mesh_requests_total", (("outcome", "NoSuchMethod"), ("peer", "server")))] == 1
        assert mine[("mesh_request_duration_seconds_count", peer)] == 8
        assert (
            mine[("mesh_request_duration_seconds_bucket", (("le", "+Inf"), ("peer", "server")))]
            == 8
        )
        assert 0 < mine[("mesh_request_duration_seconds_sum", peer)] < 8 * 10
        assert mine[("mesh_messages_sent_total", (("kind", "SEND"),))] == 3
        assert mine[("mesh_credit_messages", peer)] > 0
        assert ("mesh_drops_total", (("reason", "auth"),)) not in mine  # nothing dropped


def test_a_request_through_two_hops_is_one_trace():
    pytest.importorskip("opentelemetry.sdk")
    done = subprocess.run(
        [sys.executable, "-m", "tests.trace_chain"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    spans = {s["name"] + "/" + s["kind"]: s for s in map(json.loads, done.stdout.splitlines())}
    first = spans["mesh.request relay/CLIENT"]
    handled = spans["mesh.handle relay/SERVER"]
    inner = spans["mesh.request echo/CLIENT"]
    last = spans["mesh.handle echo/SERVER"]
    stream, generated = spans["mesh.stream count/CLIENT"], spans["mesh.handle count/SERVER"]
    assert generated["parent"] == stream["span"] and generated["trace"] == stream["trace"]
    assert stream["parent"] is None and stream["trace"] != first["trace"]  # a trace of its own
    del spans["mesh.stream count/CLIENT"], spans["mesh.handle count/SERVER"]
    assert len({s["trace"] for s in spans.values()}) == 1  # one trace
    assert first["parent"] is None
    assert handled["parent"] == first["span"]  # across the wire, via traceparent
    assert inner["parent"] == handled["span"]  # the handler's own call nests in it
    assert last["parent"] == inner["span"]


@pytest.mark.asyncio
async def test_a_tracer_provider_named_by_nobody_leaves_nodes_untraced(mesh, monkeypatch, caplog):
    monkeypatch.setenv("OTEL_PYTHON_TRACER_PROVIDER", "no_such_provider")
    async with (
        Node("untraced", discovery=[], mesh=mesh) as node,
        Node("caller", discovery=[], mesh=mesh) as caller,
    ):
        node.handler("echo", _echo)
        caller.add_peer(node.identity.require_certificate(), node.endpoint)
        assert await caller.request("untraced", "echo", 1, timeout=10) == 1
    assert "names no provider: not tracing" in caplog.text


async def _echo(body):
    return body
