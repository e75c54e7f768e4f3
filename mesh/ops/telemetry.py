"""What a node counts about its traffic, and its optional OpenTelemetry spans.

Counting is a few integer additions per frame on the hot path, nothing formatted; everything
else (percentiles, Prometheus, ``mesh status``) is computed from these counters when asked.
Tracing costs one check per call unless ``opentelemetry-api`` is installed and the
application has set a tracer provider (the SDK): then a request carries the W3C
``traceparent`` of its client span in ``meta`` (protocol.md 7.5) and the callee's handler
runs inside a server span that is its child, so a request through several nodes is one
trace.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from ..core.codec import Message
from ..core.histogram import Histogram
from ..core.wire import Kind

log = logging.getLogger("mesh")
TRACEPARENT = "traceparent"


def kind_name(kind: int) -> str:
    try:
        return Kind(kind).name
    except ValueError:
        return str(kind)


class Traffic:
    """Messages and bytes by kind, each way (a frame's bytes go to its first message's kind)."""

    __slots__ = ("received_bytes", "received_messages", "sent_bytes", "sent_messages")

    def __init__(self) -> None:
        self.sent_messages: Counter[int] = Counter()
        self.sent_bytes: Counter[int] = Counter()
        self.received_messages: Counter[int] = Counter()
        self.received_bytes: Counter[int] = Counter()

    def sent(self, messages: Sequence[Message], size: int) -> None:
        for message in messages:
            self.sent_messages[message.kind] += 1
        self.sent_bytes[messages[0].kind] += size

    def sent_rows(self, kind: int, count: int, size: int) -> None:
        self.sent_messages[kind] += count
        self.sent_bytes[kind] += size

    def received(self, messages: Sequence[Message], size: int) -> None:
        for message in messages:
            self.received_messages[message.kind] += 1
        if messages:
            self.received_bytes[messages[0].kind] += size

    def snapshot(self) -> dict[str, dict[str, dict[str, int]]]:
        def by_kind(messages: Counter[int], sizes: Counter[int]) -> dict[str, dict[str, int]]:
            kinds = sorted(set(messages) | set(sizes))
            return {kind_name(k): {"messages": messages[k], "bytes": sizes[k]} for k in kinds}

        return {
            "sent": by_kind(self.sent_messages, self.sent_bytes),
            "received": by_kind(self.received_messages, self.received_bytes),
        }


class CallStats:
    """Per peer called: request latency (HDR histogram) and outcomes (ok or error type)."""

    def __init__(self) -> None:
        self.latency: defaultdict[str, Histogram] = defaultdict(Histogram)
        self.outcomes: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def record(self, peer: str, elapsed_ns: int, outcome: str) -> None:
        if outcome == "ok":
            self.latency[peer].record(elapsed_ns)
        self.outcomes[peer][outcome] += 1

    def snapshot(self) -> dict[str, Any]:
        peers = sorted(set(self.latency) | set(self.outcomes))
        return {
            peer: {
                "outcomes": dict(self.outcomes[peer]),
                "latency_us": self.latency[peer].summary_us() if peer in self.latency else None,
                "latency": self.latency[peer].to_json() if peer in self.latency else None,
            }
            for peer in peers
        }


# ---------------------------------------------------------------------------- tracing


class Tracing:
    """Finds the application's OpenTelemetry tracer provider at each call (it may be set
    after the node starts); None while none is set, so untraced calls pay one check.

    That check reads the API's global (``_TRACER_PROVIDER``, set by ``set_tracer_provider``)
    rather than calling ``get_tracer_provider``, which looks the environment up on every
    call while nothing is set: a measurable share of a one-way message's cost. A provider
    named in the environment is loaded the public way, once, when the node starts."""

    def __init__(self, trace: Any, idle: tuple[type, ...]) -> None:
        self._trace = trace
        self._idle = idle  # the API's stand-ins for "no SDK configured"
        self._provider: Any = None
        self._tracer: Any = None
        if not hasattr(trace, "_TRACER_PROVIDER"):  # an API without that global: ask it
            self._current = trace.get_tracer_provider
        else:
            try:
                trace.get_tracer_provider()  # loads one named by OTEL_PYTHON_TRACER_PROVIDER
            except Exception:  # a name no package provides: untraced, and said so once
                log.warning("OTEL_PYTHON_TRACER_PROVIDER names no provider: not tracing")
            self._current = lambda: trace._TRACER_PROVIDER

    def tracer(self) -> Any:
        provider = self._current()
        if provider is None:
            return None
        if isinstance(provider, self._idle):
            return None
        if provider is not self._provider:
            self._provider, self._tracer = provider, provider.get_tracer("agent-mesh")
        return self._tracer


def tracing() -> Tracing | None:
    """None when ``opentelemetry-api`` is not installed: then nothing is ever traced."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return Tracing(trace, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


@contextlib.contextmanager
def client_span(otel: Any, peer: str, method: str) -> Iterator[dict[str, Any] | None]:
    """A CLIENT span around a call; yields the ``meta`` that carries its context (or None
    when nothing records, so nothing extra goes on the wire)."""
    from opentelemetry import trace
    from opentelemetry.propagate import inject

    with otel.start_as_current_span(
        f"mesh.request {method}",
        kind=trace.SpanKind.CLIENT,
        attributes={"rpc.system": "agent-mesh", "rpc.method": method, "peer.name": peer},
    ) as span:
        if not span.is_recording():
            yield None
            return
        carrier: dict[str, str] = {}
        inject(carrier)
        yield {TRACEPARENT: carrier[TRACEPARENT]} if TRACEPARENT in carrier else None


def stream_span(otel: Any, peer: str, method: str) -> tuple[Any, dict[str, Any] | None]:
    """A CLIENT span for a streamed call and the ``meta`` carrying it, or (None, None).

    Started, not made current: a stream is read across an async generator's yields, and a
    context set inside one would leak into whatever the reader does between chunks. The
    caller ends it when the stream ends."""
    if otel is None:
        return None, None
    from opentelemetry import trace
    from opentelemetry.propagate import inject

    span = otel.start_span(
        f"mesh.stream {method}",
        kind=trace.SpanKind.CLIENT,
        attributes={"rpc.system": "agent-mesh", "rpc.method": method, "peer.name": peer},
    )
    if not span.is_recording():
        return span, None
    carrier: dict[str, str] = {}
    inject(carrier, context=trace.set_span_in_context(span))
    return span, ({TRACEPARENT: carrier[TRACEPARENT]} if TRACEPARENT in carrier else None)


@contextlib.contextmanager
def server_span(otel: Any, message: Message, peer: str) -> Iterator[None]:
    """A SERVER span around a handler, the child of the caller's span when the request
    carried a ``traceparent``; current while the handler runs, so its own calls nest."""
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    meta = message.meta
    parent = None
    if meta is not None and isinstance(meta.get(TRACEPARENT), str):
        parent = extract({TRACEPARENT: meta[TRACEPARENT]})
    with otel.start_as_current_span(
        f"mesh.handle {message.name}",
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={
            "rpc.system": "agent-mesh",
            "rpc.method": message.name or "",
            "peer.name": peer,
        },
    ):
        yield
