"""Every method of every live mesh agent as an MCP tool, with the official ``mcp`` SDK.

A tool is named ``AGENT__METHOD`` (:func:`~mesh.gateway.views.tool_name`); its input schema
comes from the card's params and its description from the card. Calling it is a mesh
request made by the gateway's node; a streaming method reports one progress notification
per chunk as it arrives (when the client asked for progress) and returns the assembled
result: the chunks' text, and the chunks that carried more as data. Cancelling the call
(``notifications/cancelled``) cancels the mesh call, so the CANCEL reaches the handler.

A mesh error is a tool error (``isError``) whose text starts with its type
(``NoSuchMethod: ...``) and whose structured content is ``{"error": {type, message}}``: the
model calling the tool sees what went wrong. An unknown tool is a protocol error
(invalid params); a fault of the gateway itself is an internal error, never reported as
the client's.

The tool list follows the :class:`~mesh.gateway.catalog.Catalog`. A change is announced both
ways the SDK knows: on ``subscriptions/listen`` streams (protocol 2026-07-28) and as
``notifications/tools/list_changed`` to every session of the older protocol that has
asked for anything.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any

import anyio
import mcp_types as types
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.shared.exceptions import MCPError

from ..core.errors import MeshError
from ..runtime.node import Node
from .calls import Assembled, Failure, chunk_text, failure, jsonable, to_json
from .catalog import Catalog
from .views import MethodView, tool_name

log = logging.getLogger(__name__)
CALL_TIMEOUT_S = 300.0  # a request, or the wait for each chunk of a stream
MAX_CALL_S = 900.0  # a whole call, however its client went away
MODERN = "2026-07-28"  # protocol versions from this one hear changes on listen streams


class MeshTools:
    """The MCP server of the mesh's tools; one instance serves stdio or HTTP."""

    def __init__(self, node: Node, catalog: Catalog) -> None:
        self.node = node
        self.catalog = catalog
        self.bus = InMemorySubscriptionBus()
        self._sessions: weakref.WeakSet[ServerSession] = weakref.WeakSet()
        self.server: Server[Any] = Server(
            "agent-mesh",
            version="0.1.0",
            instructions="Tools are the methods of the agents live on an agent-mesh; the list "
            "follows agents as they join and leave.",
            lifespan=self._lifespan,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_subscriptions_listen=ListenHandler(self.bus),
        )

    def initialization_options(self) -> Any:
        return self.server.create_initialization_options(NotificationOptions(tools_changed=True))

    @contextlib.asynccontextmanager
    async def _lifespan(self, _server: Server[Any]) -> AsyncIterator[dict[str, Any]]:
        """While the server runs, one task announces every change of the catalog."""
        async with anyio.create_task_group() as group:
            group.start_soon(self._announce_changes)
            yield {}
            group.cancel_scope.cancel()

    async def _announce_changes(self) -> None:
        version = self.catalog.version
        while True:
            version = await self.catalog.changed(version)
            await self.bus.publish(ToolsListChanged())
            for session in list(self._sessions):
                try:
                    await session.send_tool_list_changed()
                except Exception:  # that client went away; the others still hear it
                    self._sessions.discard(session)

    def _seen(self, ctx: ServerRequestContext[Any]) -> None:
        if ctx.protocol_version != MODERN:
            self._sessions.add(ctx.session)

    # ------------------------------------------------------------------ handlers

    async def _list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        self._seen(ctx)
        tools = [
            _tool(name, method, self.catalog.agents[method.agent].kind)
            for name, method in sorted(self.catalog.tools.by_name.items())
        ]
        return types.ListToolsResult(tools=tools)

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        self._seen(ctx)
        method = self.catalog.tools.lookup(params.name)
        if method is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"no tool {params.name!r}")
        body = method.body_from_arguments(params.arguments)
        try:
            with anyio.fail_after(MAX_CALL_S):  # work a client left behind ends by then
                if method.streams:
                    return await self._stream(ctx, method, body)
                reply = await self.node.request(
                    method.agent, method.name, body, timeout=CALL_TIMEOUT_S
                )
        except MeshError as exc:
            return _tool_error(failure(exc))
        except TimeoutError:
            return _tool_error(Failure("RequestTimeout", f"the call took over {MAX_CALL_S:.0f} s"))
        except Exception:  # the gateway's own fault: said as such, never as the caller's
            log.exception("mcp: %s failed in the gateway", params.name)
            raise MCPError(
                code=types.INTERNAL_ERROR, message="internal error in the gateway"
            ) from None
        text = reply if isinstance(reply, str) else to_json(reply)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)],
            structured_content={"result": jsonable(reply)},
        )

    async def _stream(
        self, ctx: ServerRequestContext[Any], method: MethodView, body: Any
    ) -> types.CallToolResult:
        assembled = Assembled()
        async for chunk in self.node.stream(
            method.agent, method.name, body, timeout=CALL_TIMEOUT_S
        ):
            assembled.add(chunk)
            text = chunk_text(chunk)
            note = text if text is not None else to_json(chunk)
            await ctx.session.report_progress(assembled.chunks, None, note)
        result = assembled.result()
        text = assembled.text or to_json(result["data"])
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)], structured_content=result
        )


def _tool_error(found: Failure) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"{found.type}: {found.message}")],
        structured_content={"error": found.to_json()},
        is_error=True,
    )


def _tool(name: str, method: MethodView, kind: str) -> types.Tool:
    streams = " Streams: progress is reported per chunk." if method.streams else ""
    return types.Tool(
        name=name,
        title=f"{method.agent}.{method.name}",
        description=f"{method.description} (method {method.name} of the mesh {kind} "
        f"{method.agent}.){streams}",
        input_schema=method.input_schema(),
    )


__all__ = ["MeshTools", "tool_name"]
