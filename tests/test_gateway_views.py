"""What the gateways make of an agent's card, its replies and errors, and who they let in:
the pure parts, and the HTTP guard driven as an ASGI application (requests in, responses
out, no socket)."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from mesh import (
    Authority,
    BadRequest,
    Identity,
    NoSuchMethod,
    PeerInfo,
    RemoteError,
    RequestTimeout,
)
from mesh.cli.run_targets import ECHO_CARD
from mesh.gateway.calls import Assembled, failure, jsonable, to_json
from mesh.gateway.http import Guard, check_exposure
from mesh.gateway.views import MAX_METHODS, AgentView, ToolNames, agent_view, tool_name


def entry(name: str, meta: dict | None = None, capabilities: tuple[str, ...] = ()) -> PeerInfo:
    authority = Authority.generate()
    certificate = authority.issue_for(Identity.generate(name), not_before=0).certificate
    return PeerInfo(certificate, "tcp://127.0.0.1:1", capabilities, meta or {})


LLM_CARD = {
    "kind": "LLMAgent",
    "description": "Billing:   invoices\nand refunds.",
    "default": "chat_stream",
    "methods": [
        {
            "name": "generate_stream",
            "description": "Continue a prompt, streamed.",
            "params": {"prompt": "str", "max_new_tokens": "int, 1..limit (default 64)"},
            "streams": True,
        },
        {
            "name": "chat_stream",
            "description": "Answer a chat, streamed.",
            "params": {"messages": "[{role, content}]", "top_p": "optional float"},
            "streams": True,
        },
        {"name": "status", "description": "What it does.", "params": {}, "streams": False},
        {"name": "mesh.stats", "description": "reserved", "params": {}, "streams": False},
    ],
}


def test_a_card_becomes_methods_with_schemas_and_a_default():
    view = agent_view(entry("billing", {"card": LLM_CARD}))
    assert view.kind == "LLMAgent" and view.description == "Billing: invoices and refunds."
    assert [m.name for m in view.methods] == ["chat_stream", "generate_stream", "status"]
    assert view.default_method == "chat_stream" and view.streams
    schema = view.method("generate_stream").input_schema()
    assert schema["properties"]["prompt"] == {"description": "str", "type": "string"}
    assert schema["properties"]["max_new_tokens"]["type"] == "integer"
    assert schema["required"] == ["prompt"]  # a default makes max_new_tokens optional
    chat = view.method("chat_stream").input_schema()
    assert chat["properties"]["messages"]["type"] == "array" and chat["required"] == ["messages"]


def test_plain_text_fills_the_field_the_params_say():
    view = agent_view(entry("billing", {"card": LLM_CARD}))
    chat = view.method("chat_stream").body_from_message(["Where is my refund?"], [])
    assert chat == {"messages": [{"role": "user", "content": "Where is my refund?"}]}
    prompt = view.method("generate_stream").body_from_message(["Once"], [{"max_new_tokens": 5}])
    assert prompt == {"prompt": "Once", "max_new_tokens": 5}
    given = view.method("generate_stream").body_from_message(["ignored"], [{"prompt": "mine"}])
    assert given == {"prompt": "mine"}  # a data part that names the field wins
    assert view.method("status").body_from_message([], []) is None
    echo = agent_view(entry("echo-1", {"card": ECHO_CARD}))
    assert echo.default_method == "echo"
    assert echo.method("echo").body_from_message(["hello"], []) == "hello"
    assert echo.method("echo_stream").body_from_message(["a"], [{"items": [1]}]) == {"items": [1]}
    assert echo.method("echo").body_from_arguments({"x": 1}) == {"x": 1}


def test_a_node_without_a_card_offers_its_capabilities_taking_any_body():
    view = agent_view(entry("plain", capabilities=("echo", "mesh.stats", "work")))
    assert view.kind == "node" and view.default_method is None
    assert [m.name for m in view.methods] == ["echo", "work"]
    method = view.method("echo")
    assert method.input_schema()["properties"].keys() == {"body"}
    assert method.body_from_arguments({"body": [1, 2]}) == [1, 2]
    assert method.body_from_message([], [{"a": 1}]) == {"a": 1}
    assert method.body_from_message(["hi"], []) == "hi"


@pytest.mark.parametrize(
    "card",
    [
        "not a dict",
        {"methods": "no list"},
        {"methods": [5, {"name": 7}, {"name": ""}, {"name": "ok", "params": [1], "streams": 1}]},
        {
            "kind": ["x"],
            "description": {"a": 1},
            "methods": [{"name": f"m{i}"} for i in range(500)],
        },
    ],
)
def test_a_malformed_card_is_read_safely_and_bounded(card):
    view = agent_view(entry("odd", {"card": card}, capabilities=("fallback",)))
    assert isinstance(view, AgentView) and len(view.methods) <= MAX_METHODS
    for method in view.methods:
        assert isinstance(method.name, str) and method.name
        assert method.streams in (True, False) and isinstance(method.params, dict)
        json.dumps(method.input_schema())


def test_tool_names_are_what_mcp_clients_accept_and_never_ambiguous():
    assert tool_name("echo-1", "echo") == "echo-1__echo"
    assert tool_name("a.b", "c d") == "a_b__c_d"
    assert tool_name("x" * 64, "y" * 64) == "x" * 32 + "__" + "y" * 30
    assert tool_name("x" * 64, "go").endswith("x__go") and len(tool_name("x" * 64, "go")) == 64
    first = agent_view(entry("a.b", capabilities=("go", "stop")))
    second = agent_view(entry("a_b", capabilities=("go",)))
    names = ToolNames([second, first])
    assert names.lookup("a_b__go") is None  # both left out: neither takes the other's name
    assert names.ambiguous == ["a_b__go"]
    assert names.lookup("a_b__stop").agent == "a.b"
    long = agent_view(entry("n" * 64, capabilities=("alpha", "beta")))
    assert len(ToolNames([long]).by_name) == 2  # each method keeps a name of its own


def test_replies_become_json_and_streams_are_assembled():
    assert jsonable({"b": b"\x00\x01", "n": [1, 2.5]}) == {
        "b": base64.b64encode(b"\x00\x01").decode(),
        "n": [1, 2.5],
    }
    assembled = Assembled()
    for chunk in [{"route": "billing"}, {"text": "Hel", "tokens": 1}, "lo", {"done": True}]:
        assembled.add(chunk)
    assert assembled.result() == {
        "text": "Hello",
        "data": [{"route": "billing"}, {"done": True}],
        "chunks": 4,
    }


def test_errors_keep_their_type():
    remote = failure(BadRequest("prompt must be a string", remote_type="InvalidArgument"))
    assert (remote.type, remote.remote_type) == ("BadRequest", "InvalidArgument")
    assert remote.message.endswith("prompt must be a string")
    assert failure(NoSuchMethod("no such method", peer="a", method="m")).type == "NoSuchMethod"
    crashed = failure(RemoteError("boom", code=2, remote_type="ZeroDivisionError"))
    assert crashed.to_json() == {
        "type": "RemoteError",
        "message": crashed.message,
        "remote_type": "ZeroDivisionError",
    }
    assert failure(RequestTimeout("slow", peer="a")).to_json() == {
        "type": "RequestTimeout",
        "message": "slow",
    }


def test_json_is_strict_json_even_for_nan():
    assert to_json({"x": float("nan"), "y": [float("inf"), 1.5]}) == '{"x": null, "y": [null, 1.5]}'
    assert jsonable([float("-inf")]) == [None]


def test_exposure_needs_a_token_off_loopback(tmp_path):
    generated = check_exposure("0.0.0.0:8700", token=None, no_auth=False)
    assert generated.generated and len(generated.token) >= 40
    assert check_exposure("127.0.0.1:0", token=None, no_auth=True).token is None
    assert check_exposure("[::1]:9", token=None, no_auth=True).host == "::1"
    for listen, options, says in [
        ("0.0.0.0:8700", {"no_auth": True}, "only on a loopback"),
        ("10.0.0.1:1", {"no_auth": True}, "only on a loopback"),
        ("8700", {}, "HOST:PORT"),
        ("h:99999", {}, "HOST:PORT"),
        ("127.0.0.1:1", {"token": "short"}, "at least 16"),
        ("127.0.0.1:1", {"token": "x" * 20, "no_auth": True}, "not both"),
        ("127.0.0.1:1", {"tls_cert": "c.pem"}, "both --tls-cert and --tls-key"),
    ]:
        with pytest.raises(ValueError, match=says):
            check_exposure(listen, **{"token": None, "no_auth": False, **options})


class Recorder:
    """An ASGI application that records what reached it and reads the whole body."""

    def __init__(self):
        self.reached: list[bytes] = []
        self.disconnected = False

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.reached.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(
    app, headers: dict[str, str], chunks: list[bytes], kind: str = "http"
) -> tuple[int | None, bytes]:
    headers = {"Host": "127.0.0.1:8700", **headers}
    scope = {
        "type": kind,
        "method": "POST",
        "path": "/mcp",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    incoming = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[dict] = []

    async def receive():
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    if kind == "websocket":
        return (None if not sent else sent[0].get("code")), b""
    status = next((m["status"] for m in sent if m["type"] == "http.response.start"), None)
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_the_guard_refuses_without_the_token_before_the_application():
    inner = Recorder()
    guard = Guard(inner, "the-right-token-0123", max_body=100)
    assert call(guard, {}, [b"{}"])[0] == 401
    assert call(guard, {"Authorization": "Bearer wrong-token-0123456"}, [b"{}"])[0] == 401
    assert call(guard, {"Authorization": "Basic the-right-token-0123"}, [b"{}"])[0] == 401
    assert call(guard, {}, [], kind="websocket")[0] == 1008  # closed, never the app's
    status, body = call(guard, {"Authorization": "bearer the-right-token-0123"}, [b"{}"])
    assert (status, body) == (200, b"ok")
    foreign = {"Authorization": "Bearer the-right-token-0123", "Host": "gw.example.com"}
    assert call(guard, foreign, [b"[]"])[0] == 200  # a token is enough, wherever from
    assert inner.reached == [b"{}", b"[]"]  # only the authorised requests got through
    assert guard.refused["unauthorized"] == 3 and guard.refused["not_http"] == 1


def test_without_a_token_only_this_machine_may_call():
    inner = Recorder()
    guard = Guard(inner, None, max_body=100)
    for headers in (
        {"Host": "evil.example.com"},  # DNS rebinding: a page's name pointed at 127.0.0.1
        {"Origin": "http://evil.example.com"},  # a cross-site request from a page
        {"Host": "127.0.0.1.evil.example.com:8700"},
        {"Origin": "null"},
    ):
        assert call(guard, headers, [b"{}"])[0] == 403, headers
    for headers in ({}, {"Host": "localhost:8700"}, {"Host": "[::1]:8700"},
                    {"Origin": "http://127.0.0.1:3000"}):  # fmt: skip
        assert call(guard, headers, [b"{}"])[0] == 200, headers
    assert guard.refused["foreign_origin"] == 4 and len(inner.reached) == 4


def test_the_guard_limits_bodies_declared_or_not():
    inner = Recorder()
    guard = Guard(inner, None, max_body=100)
    assert call(guard, {"Content-Length": "101"}, [b"x" * 101])[0] == 413
    assert call(guard, {"Content-Length": "nan"}, [b"x"])[0] == 413
    assert call(guard, {}, [b"x" * 60, b"x" * 60])[0] == 413  # no length: read, then refused
    assert inner.reached == []
    assert call(guard, {}, [b"x" * 60, b"y" * 40])[0] == 200  # read whole, then handed on
    assert call(guard, {"Content-Length": "100"}, [b"x" * 100])[0] == 200
    assert inner.reached == [b"x" * 60 + b"y" * 40, b"x" * 100]
    assert guard.refused["too_large"] == 3


def test_an_agents_task_store_keeps_its_newest_tasks_ended_ones_going_first():
    from a2a.server.context import ServerCallContext
    from a2a.types import Task, TaskState, TaskStatus

    from mesh.gateway.a2a_server import BoundedTaskStore

    working, done = TaskState.TASK_STATE_WORKING, TaskState.TASK_STATE_COMPLETED

    def task(name: str, state: int, size: int = 0) -> Task:
        found = Task(id=name, context_id="c", status=TaskStatus(state=state))
        found.metadata.update({"pad": "x" * size})
        return found

    async def scenario() -> None:
        context = ServerCallContext()
        store = BoundedTaskStore(max_tasks=3, max_bytes=10_000)
        for name, state in [("a", working), ("b", done), ("c", working), ("d", done)]:
            await store.save(task(name, state), context)
        assert [await store.get(n, context) is not None for n in "abcd"] == [1, 0, 1, 1]
        await store.save(task("e", working), context)  # d is the only ended one: it goes
        assert [await store.get(n, context) is not None for n in "acde"] == [1, 1, 0, 1]
        await store.save(task("f", working, size=9_000), context)  # over the bytes: oldest
        assert await store.get("f", context) is not None and await store.get("a", context) is None
        assert store.bytes <= 10_000 and len(store._kept) <= 3
        await store.save(task("g", done, size=20_000), context)  # alone over the limit: kept
        assert await store.get("g", context) is not None and len(store._kept) == 1

    asyncio.run(scenario())


def test_the_catalog_offers_agents_with_something_to_call_and_never_gateways():
    from mesh.gateway.catalog import Catalog

    class Quiet:  # what the catalog asks of its node, before start()
        name = "gw"

    catalog = Catalog(Quiet())  # type: ignore[arg-type]
    subscriber = entry("sub-1")  # registered, no handlers: nothing to call
    other_gateway = entry("gw2", {"card": {"kind": "gateway", "methods": []}}, ("x",))
    echo = entry("echo-1", {"card": ECHO_CARD})
    catalog._replace([subscriber, other_gateway, echo])
    assert set(catalog.agents) == {"echo-1"}
    catalog._on_event("JOIN", entry("sub-2"))
    assert set(catalog.agents) == {"echo-1"} and catalog.version == 1
    catalog._on_event("UPDATE", entry("echo-1"))  # it lost its handlers: no longer offered
    assert catalog.agents == {} and catalog.version == 2
