"""Run by test_telemetry in its own process (a tracer provider can be set once per process):
three nodes; one untraced request, then a provider set after the nodes started; a request
from ``front`` to ``middle``'s ``relay``, which calls ``back``'s ``echo``, then a stream from
``front`` of ``middle``'s ``count``; prints every finished span as one JSON line."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mesh import MeshDirectory
from mesh.runtime.node import Node


async def main() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with tempfile.TemporaryDirectory() as home:
        mesh = MeshDirectory(home)
        mesh.create()
        async with (
            Node("back", discovery=[], mesh=mesh) as back,
            Node("middle", discovery=[], mesh=mesh) as middle,
            Node("front", discovery=[], mesh=mesh) as front,
        ):

            async def echo(body: object) -> object:
                return body

            async def relay(body: object) -> object:
                return await middle.request("back", "echo", body, timeout=10)

            async def count(body: int):
                for i in range(body):
                    yield i

            back.handler("echo", echo)
            middle.handler("relay", relay)
            middle.handler("count", count)
            middle.add_peer(back.identity.require_certificate(), back.endpoint)
            front.add_peer(middle.identity.require_certificate(), middle.endpoint)
            assert await front.request("middle", "relay", "untraced", timeout=10) == "untraced"
            trace.set_tracer_provider(provider)  # after the nodes started: they follow it
            assert await front.request("middle", "relay", "traced", timeout=10) == "traced"
            assert [i async for i in front.stream("middle", "count", 3, timeout=10)] == [0, 1, 2]
    for span in exporter.get_finished_spans():
        parent = span.parent.span_id if span.parent is not None else None
        print(json.dumps({
            "name": span.name,
            "kind": span.kind.name,
            "trace": span.context.trace_id,
            "span": span.context.span_id,
            "parent": parent,
        }))  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
