"""The price of the bridges, for ``mesh bench --gateways``: the 64 B request/reply through
``mesh gateway`` (A2A) and through ``mesh mcp --http`` (MCP over streamable HTTP), each
called with its official client the way its users call it, beside the direct mesh call and
raw pyzmq of the same run.

The gateways are processes, like the bench's other servers: a built-in echo agent
(``bench-echo``) and both gateways in front of it, with a bearer token. A call is one
HTTP request to the gateway, which makes a sealed mesh request to the agent: the ratio
mesh / gateway is what the bridge costs.
"""

from __future__ import annotations

import contextlib
import secrets
import uuid
from typing import Any

from ..core.codec import Blob
from ..core.errors import InvalidArgument

AGENT = "bench-echo"
# every step but the 64 B request/reply (by label or its first word)
SKIPPED = (
    "rr 1024",
    "rr 65536",
    "rr 1048576",
    "blocking",
    "one-way",
    "concurrency",
    "stream",
    "tensor",
    "peers",
    "fan-out",
    "fixed",
)


def token() -> str:
    return secrets.token_urlsafe(24)


def _text(body: Any) -> str:
    return bytes(body.data if isinstance(body, Blob) else body).decode("ascii")


class A2ATarget:
    """The a2a-sdk client: card resolver, client factory, ``send_message``."""

    name = "A2A gateway"
    skipped = SKIPPED

    def __init__(self, http: Any, client: Any) -> None:
        self._http = http
        self._client = client

    @classmethod
    async def connect(cls, base: str, bearer: str) -> A2ATarget:
        import httpx
        from a2a.client import A2ACardResolver, ClientConfig, ClientFactory

        http = httpx.AsyncClient(headers={"Authorization": f"Bearer {bearer}"}, timeout=30)
        card = await A2ACardResolver(http, f"{base}/agents/{AGENT}/").get_agent_card()
        client = ClientFactory(ClientConfig(streaming=False, httpx_client=http)).create(card)
        return cls(http, client)

    async def echo(self, body: Any) -> str:
        from a2a.types import Message, Part, Role, SendMessageRequest

        message = Message(
            role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(text=_text(body))]
        )
        async for event in self._client.send_message(SendMessageRequest(message=message)):
            return event.task.artifacts[0].parts[0].text
        raise InvalidArgument("the A2A gateway sent no reply")

    async def close(self) -> None:
        await self._client.close()
        await self._http.aclose()


class McpTarget:
    """The mcp SDK's ``ClientSession`` over streamable HTTP: ``call_tool``."""

    name = "MCP http"
    skipped = SKIPPED

    def __init__(self, stack: contextlib.AsyncExitStack, session: Any) -> None:
        self._stack = stack
        self._session = session

    @classmethod
    async def connect(cls, url: str, bearer: str) -> McpTarget:
        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        stack = contextlib.AsyncExitStack()
        try:
            http = await stack.enter_async_context(
                create_mcp_http_client(headers={"Authorization": f"Bearer {bearer}"})
            )
            read, write = await stack.enter_async_context(
                streamable_http_client(url, http_client=http)
            )
            session = await stack.enter_async_context(ClientSession(read, write))
            await session.initialize()
        except BaseException:
            await stack.aclose()
            raise
        return cls(stack, session)

    async def echo(self, body: Any) -> Any:
        result = await self._session.call_tool(f"{AGENT}__echo", {"text": _text(body)})
        if result.is_error:
            raise InvalidArgument(f"the MCP gateway failed: {result.content}")
        return result.structured_content

    async def close(self) -> None:
        await self._stack.aclose()
