"""``mesh mcp`` as MCP clients meet it: the official SDK's ``ClientSession`` over stdio (the
gateway a child process of the client, as an MCP host starts it) and over streamable HTTP,
against real agents in their own processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

import httpx2
import mcp_types as types
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from mesh import Node
from tests.conftest import eventually
from tests.processes import ROOT

pytestmark = pytest.mark.slow  # processes and sockets: not in --fast

TOKEN = "test-token-0123456789abcdef"
FIXTURE = "tests.fixture_agent:FixtureAgent"


class Changes:
    """What the server announced: list-changed notifications, counted."""

    def __init__(self) -> None:
        self.count = 0

    async def __call__(self, message) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self.count += 1


async def tool_names(session: ClientSession) -> set[str]:
    return {tool.name for tool in (await session.list_tools()).tools}


async def check_echo_calls(session: ClientSession) -> None:
    """What every transport must do: list, call, stream with progress, fail typed."""
    tools = {tool.name: tool for tool in (await session.list_tools()).tools}
    assert "echo-1__echo" in tools and "echo-1__echo_stream" in tools
    assert not any(name.startswith(("mcp", "gateway")) for name in tools)  # never the gateway
    assert tools["echo-1__relay"].input_schema["required"] == ["to"]
    assert tools["echo-1__echo"].description.startswith("Return the body as sent.")

    echoed = await session.call_tool("echo-1__echo", {"x": 1, "words": ["a", "b"]})
    assert not echoed.is_error
    assert echoed.structured_content == {"result": {"x": 1, "words": ["a", "b"]}}

    progress: list[tuple[float, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, message))

    streamed = await session.call_tool(
        "echo-1__echo_stream", {"items": ["tok", "en", "s"]}, progress_callback=on_progress
    )
    assert streamed.structured_content == {"text": "tokens", "data": [], "chunks": 3}
    assert progress == [(1, "tok"), (2, "en"), (3, "s")]  # one per chunk, as it came

    refused = await session.call_tool("echo-1__relay", {"method": "echo"})  # no "to"
    assert refused.is_error
    assert refused.structured_content["error"]["type"] == "BadRequest"
    assert refused.structured_content["error"]["remote_type"] == "InvalidArgument"
    assert refused.content[0].text.startswith("BadRequest: ")
    missing = await session.call_tool("echo-1__relay", {"to": "nobody-here"})
    assert missing.is_error and "PeerNotFound" in missing.content[0].text

    with pytest.raises(Exception, match="no tool 'echo-1__nothing'"):
        await session.call_tool("echo-1__nothing", {})


@pytest.mark.asyncio
async def test_over_stdio_tools_follow_the_agents_that_join_and_leave(spawn, discovery, home):
    spawn("run", "echo", "--name", "echo-1", "--discovery", discovery).endpoint()
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mesh.cli", "mcp", "--discovery", discovery],
        env={**os.environ, "MESH_HOME": str(home), "PYTHONPATH": str(ROOT)},
        cwd=str(ROOT),
    )
    changes = Changes()
    async with (
        stdio_client(server) as (read, write),
        ClientSession(read, write, message_handler=changes) as session,
    ):
        await session.initialize()
        await check_echo_calls(session)

        before = changes.count
        joined = spawn("run", "echo", "--name", "echo-2", "--discovery", discovery)
        joined.endpoint()
        await eventually(lambda: changes.count > before)  # told, not polled
        assert "echo-2__echo" in await tool_names(session)
        assert (await session.call_tool("echo-2__whoami", {})).structured_content == {
            "result": "echo-2"
        }

        before = changes.count
        assert joined.stop() == 0  # unregisters: a LEAVE
        await eventually(lambda: changes.count > before)
        assert not any(name.startswith("echo-2__") for name in await tool_names(session))


@pytest.mark.asyncio
async def test_over_http_the_token_is_required_and_a_cancelled_call_cancels_the_handler(
    spawn, discovery, home
):
    spawn("run", "echo", "--name", "echo-1", "--discovery", discovery).endpoint()
    spawn("run", FIXTURE, "--name", "fixture", "--discovery", discovery).endpoint()
    gateway = spawn("mcp", "--discovery", discovery, "--http", "127.0.0.1:0", "--token", TOKEN)
    url = gateway.endpoint()
    assert url.startswith("http://127.0.0.1:") and url.endswith("/mcp")

    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "fixture__record", "arguments": {"body": "sneaked in"}},
    }
    async with httpx2.AsyncClient() as plain:
        for headers in ({}, {"Authorization": "Bearer not-the-token-at-all"}):
            refused = await plain.post(url, json=call, headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {TOKEN}"})
    async with (
        http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        await check_echo_calls(session)
        recorded = await session.call_tool("fixture__recorded", {})
        assert recorded.structured_content == {"result": []}  # the refused call reached no one

        async with Node("observer", discovery=discovery, mesh=home) as observer:
            slow = asyncio.create_task(session.call_tool("fixture__slow", {"body": 60}))
            await eventually(lambda: observer.request("fixture", "inflight", timeout=5))
            slow.cancel()  # the SDK sends notifications/cancelled
            with contextlib.suppress(asyncio.CancelledError):
                await slow
            await eventually(
                lambda: _is_zero(observer.request("fixture", "inflight", timeout=5))
            )  # the handler was cancelled, long before its 60 s
        after = await session.call_tool("echo-1__echo", {"after": 1})  # the session goes on
        assert after.structured_content == {"result": {"after": 1}}


async def _is_zero(pending) -> bool:
    return await pending == 0
