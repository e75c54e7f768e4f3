"""Every live mesh agent served as an A2A agent, with the a2a-sdk's server pieces.

``http://HOST:PORT/agents/NAME/`` is agent NAME's JSON-RPC endpoint and
``.../agents/NAME/.well-known/agent-card.json`` its card: name and description from the
mesh card, one skill per method, streaming always (a plain reply streams as one artifact).
The table of agents follows the :class:`~mesh.gateway.catalog.Catalog`: an agent that
joins is mounted, one that leaves is unmounted and its running tasks end.

A message reaches the method named in its metadata (``{"method": "chat_stream"}``, on the
message or the request), else the card's default method. Its parts become the body
(:meth:`~mesh.gateway.views.MethodView.body_from_message`). A streaming method's chunks
are appended to the task's artifact ``answer`` as they arrive (text as text parts, with a
token's figures as the part's metadata; other chunks as data parts), so a streaming client
sees each token when the agent produced it.
The task exists from the start, so cancelling it stops the mesh call at any point: the
CANCEL reaches the agent's handler and the generation stops. A task left running by a
client that went away ends after ``MAX_CALL_S``; each agent's store keeps its newest
``MAX_TASKS`` tasks (at most ``MAX_TASK_BYTES``). Errors keep their mesh type: a method the
card does not have, or an agent that is gone, is an A2A ``InvalidParamsError`` and no
task; an error of the call fails the task with ``TYPE: message`` and the error as a data
part.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from a2a.helpers import (
    get_data_parts,
    get_text_parts,
    new_data_part,
    new_task_from_user_message,
    new_text_part,
)
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    Part,
    SecurityRequirement,
    SecurityScheme,
    Task,
    TaskState,
)
from a2a.utils.errors import InvalidParamsError
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette
from starlette.responses import JSONResponse

from ..core.errors import MeshError
from ..runtime.node import Node
from .calls import Failure, chunk_text, failure, jsonable
from .catalog import Catalog
from .http import Receive, Scope, Send
from .views import AgentView, MethodView

log = logging.getLogger(__name__)
PREFIX = "/agents/"
ARTIFACT = "answer"
CALL_TIMEOUT_S = 300.0  # a request, or the wait for each chunk of a stream
MAX_CALL_S = 900.0  # a whole call: work a client left behind ends by then
MAX_TASKS = 1000  # tasks an agent's store keeps (the newest; ended ones go first)
MAX_TASK_BYTES = 64 << 20
ENDED = {  # a task in one of these states is over
    TaskState.TASK_STATE_COMPLETED,
    TaskState.TASK_STATE_FAILED,
    TaskState.TASK_STATE_CANCELED,
    TaskState.TASK_STATE_REJECTED,
}
BEARER = "bearer"


class MeshExecutor(AgentExecutor):
    """Runs A2A tasks of one mesh agent as mesh calls made by the gateway's node."""

    def __init__(self, node: Node, catalog: Catalog, agent: str) -> None:
        self.node = node
        self.catalog = catalog
        self.agent = agent
        self._stopped: set[str] = set()  # tasks cancelled: nothing more is emitted for them

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Check the method against the card (a caller's mistake is an error, no task),
        then make the task at once, so it can be cancelled from the start, and run the
        mesh call, at most ``MAX_CALL_S``."""
        message = context.message
        if message is None:
            raise InvalidParamsError(message="a message is needed")
        method = self._method(context)
        body = method.body_from_message(
            get_text_parts(message.parts), [_integral(d) for d in get_data_parts(message.parts)]
        )
        task = context.current_task or new_task_from_user_message(message)
        if context.current_task is None:
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work()
        chunks = self._chunks(method, body)
        try:
            try:
                async with asyncio.timeout(MAX_CALL_S):
                    ended = await self._relay(task.id, updater, chunks)
            except TimeoutError:
                ended = Failure("RequestTimeout", f"the call took over {MAX_CALL_S:.0f} s")
            finally:
                await chunks.aclose()  # ends the mesh call (a CANCEL) if it still runs
            if task.id in self._stopped:
                return  # cancel() has ended the task
            if isinstance(ended, Failure):
                await _fail(updater, ended)
            else:
                await updater.complete()
        finally:
            self._stopped.discard(task.id)

    async def _relay(
        self, task_id: str, updater: TaskUpdater, chunks: AsyncIterator[Any]
    ) -> Failure | None:
        """Append each chunk to the artifact as it comes, until the call ends (None) or
        fails (its Failure) or the task is cancelled."""
        appended = 0
        while task_id not in self._stopped:
            try:
                item = await anext(chunks)
            except StopAsyncIteration:
                return None
            except MeshError as exc:
                return failure(exc)
            if task_id in self._stopped:
                break
            await updater.add_artifact(
                [_part(item)], artifact_id=ARTIFACT, name=ARTIFACT, append=appended > 0
            )
            appended += 1
        return None

    async def _chunks(self, method: MethodView, body: Any) -> AsyncIterator[Any]:
        """The call's output as chunks: a stream's own, or a request's single reply."""
        if method.streams:
            async for chunk in self.node.stream(
                self.agent, method.name, body, timeout=CALL_TIMEOUT_S
            ):
                yield jsonable(chunk)
        else:
            yield jsonable(
                await self.node.request(self.agent, method.name, body, timeout=CALL_TIMEOUT_S)
            )

    def _method(self, context: RequestContext) -> MethodView:
        view = self.catalog.agents.get(self.agent)
        if view is None:
            raise InvalidParamsError(message=f"PeerNotFound: no live agent {self.agent!r}")
        asked = _asked_method(context)
        name = asked or view.default_method
        if name is None:
            raise InvalidParamsError(
                message=f"{self.agent} has no default method: put one of "
                f"{', '.join(m.name for m in view.methods)} in the message's metadata "
                "as {'method': NAME}"
            )
        method = view.method(name)
        if method is None:
            raise InvalidParamsError(message=f"NoSuchMethod: {self.agent} has no method {name!r}")
        return method

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Mark the task stopped (its execute emits nothing more), report it cancelled; the
        SDK then cancels the execute task, whose mesh stream sends CANCEL to the agent."""
        if context.task_id is None:
            return
        self._stopped.add(context.task_id)
        updater = TaskUpdater(event_queue, context.task_id, context.context_id or "")
        await updater.cancel()


def _asked_method(context: RequestContext) -> str | None:
    found: dict[str, Any] = {}
    if context.message is not None and context.message.HasField("metadata"):
        found.update(MessageToDict(context.message.metadata))
    found.update(context.metadata or {})
    method = found.get("method")
    if method is not None and not isinstance(method, str):
        raise InvalidParamsError(message="metadata 'method' must be a string")
    return method


def _integral(value: Any) -> Any:
    """A data part's numbers arrive as floats (protobuf's Struct): 3.0 is 3 again."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _part(chunk: Any) -> Part:
    """A text chunk as a text part (its other fields, a token's figures, as the part's
    metadata); any other chunk as a data part."""
    text = chunk_text(chunk)
    if text is None:
        return new_data_part(chunk)
    part = new_text_part(text)
    if isinstance(chunk, dict) and len(chunk) > 1:
        part.metadata.update({k: v for k, v in chunk.items() if k != "text"})
    return part


async def _fail(updater: TaskUpdater, found: Failure) -> None:
    await updater.failed(
        updater.new_agent_message(
            [new_text_part(f"{found.type}: {found.message}"), new_data_part(found.to_json())]
        )
    )


class BoundedTaskStore(InMemoryTaskStore):
    """The SDK's in-memory store, keeping an agent's newest ``max_tasks`` tasks and at most
    ``max_bytes`` of them: a client cannot grow the gateway by sending messages. Ended
    tasks go first, oldest first; a running one only when nothing else is left."""

    def __init__(self, max_tasks: int = MAX_TASKS, max_bytes: int = MAX_TASK_BYTES) -> None:
        super().__init__()
        self.max_tasks = max_tasks
        self.max_bytes = max_bytes
        self.bytes = 0
        self._kept: OrderedDict[str, tuple[int, bool, ServerCallContext]] = OrderedDict()

    async def save(self, task: Task, context: ServerCallContext) -> None:
        await super().save(task, context)
        self._forget(task.id)
        size = task.ByteSize()
        self._kept[task.id] = (size, task.status.state in ENDED, context)
        self.bytes += size
        while len(self._kept) > 1 and (
            len(self._kept) > self.max_tasks or self.bytes > self.max_bytes
        ):
            others = [(i, ended) for i, (_, ended, _) in self._kept.items() if i != task.id]
            victim = next((i for i, ended in others if ended), others[0][0])
            await self.delete(victim, self._kept[victim][2])

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        await super().delete(task_id, context)
        self._forget(task_id)

    def _forget(self, task_id: str) -> None:
        kept = self._kept.pop(task_id, None)
        if kept is not None:
            self.bytes -= kept[0]


def agent_card(view: AgentView, url: str, *, bearer: bool) -> AgentCard:
    """The A2A card of a mesh agent served at ``url`` (absolute, ending in ``/``)."""
    skills = [
        AgentSkill(
            id=method.name,
            name=method.name,
            description=_skill_description(method, view.default_method),
            tags=[view.kind, "streams" if method.streams else "reply"],
        )
        for method in view.methods
    ]
    card = AgentCard(
        name=view.name,
        description=view.description,
        version="0.1.0",
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
        default_input_modes=["text/plain", "application/json"],
        default_output_modes=["text/plain", "application/json"],
        skills=skills,
    )
    if bearer:
        card.security_schemes[BEARER].CopyFrom(
            SecurityScheme(http_auth_security_scheme=HTTPAuthSecurityScheme(scheme="Bearer"))
        )
        requirement = SecurityRequirement()
        requirement.schemes[BEARER].SetInParent()
        card.security_requirements.append(requirement)
    return card


def _skill_description(method: MethodView, default: str | None) -> str:
    text = method.description
    params = [f"{k} ({v})" if v else k for k, v in method.params.items()]
    if params:
        text += f" Body fields: {'; '.join(params)}."
    if method.name == default:
        text += " The default: a message without metadata 'method' reaches it."
    else:
        text += f" Reached with metadata {{'method': '{method.name}'}}."
    return text


class _Mounted:
    """One agent's application: card routes (rebuilt when its card changes) and the
    JSON-RPC routes of its request handler (kept, so running tasks go on)."""

    def __init__(self, view: AgentView, handler: DefaultRequestHandler, card: AgentCard) -> None:
        self.view = view
        self.handler = handler
        self.jsonrpc = create_jsonrpc_routes(handler, rpc_url="/")
        self.app = Starlette(routes=[*create_agent_card_routes(card), *self.jsonrpc])

    def recard(self, view: AgentView, card: AgentCard) -> None:
        self.view = view
        self.app = Starlette(routes=[*create_agent_card_routes(card), *self.jsonrpc])


class A2AGateway:
    """The ASGI application serving every agent of ``catalog`` under ``/agents/NAME/``;
    ``public_url`` is where clients reach this server (the cards point there)."""

    def __init__(self, node: Node, catalog: Catalog, public_url: str, *, bearer: bool) -> None:
        self.node = node
        self.catalog = catalog
        self.public_url = public_url.rstrip("/")
        self.bearer = bearer
        self.mounted: dict[str, _Mounted] = {}
        self._closing: set[asyncio.Task[None]] = set()
        catalog.on_change(self.sync)
        self.sync()

    def card_url(self, name: str) -> str:
        return f"{self.public_url}{PREFIX}{name}/.well-known/agent-card.json"

    def sync(self) -> None:
        """Mount the catalog's agents, re-card the changed ones, unmount the gone."""
        for name, view in self.catalog.agents.items():
            card = agent_card(view, f"{self.public_url}{PREFIX}{name}/", bearer=self.bearer)
            mounted = self.mounted.get(name)
            if mounted is None:
                handler = DefaultRequestHandler(
                    agent_executor=MeshExecutor(self.node, self.catalog, name),
                    task_store=BoundedTaskStore(),
                    agent_card=card,
                )
                self.mounted[name] = _Mounted(view, handler, card)
            elif mounted.view != view:
                mounted.recard(view, card)
        for name in set(self.mounted) - set(self.catalog.agents):
            gone = self.mounted.pop(name)
            task = asyncio.get_running_loop().create_task(gone.handler.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """End every agent's running tasks (their mesh calls are cancelled)."""
        for mounted in self.mounted.values():
            with contextlib.suppress(Exception):
                await mounted.handler.aclose()
        self.mounted.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        path = scope["path"]
        if path in ("/", "/agents", PREFIX):
            listing = {name: self.card_url(name) for name in sorted(self.mounted)}
            await JSONResponse({"agents": listing})(scope, receive, send)
            return
        name = path[len(PREFIX) :].split("/", 1)[0] if path.startswith(PREFIX) else ""
        mounted = self.mounted.get(name)
        if mounted is None:
            await JSONResponse({"error": f"no agent at {path}"}, 404)(scope, receive, send)
            return
        mount = f"{PREFIX}{name}"
        if path == mount:
            scope = dict(scope, path=mount + "/", raw_path=(mount + "/").encode())
        await mounted.app(dict(scope, root_path=scope.get("root_path", "") + mount), receive, send)


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to start or stop with the server: the gateway owns its node and catalog."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
