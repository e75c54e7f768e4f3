"""An outside A2A agent as a peer of the mesh: ``mesh run a2a --url URL --name NAME``.

The node joins the mesh as NAME and forwards what it is asked to the A2A agent at URL,
with the a2a-sdk's client. Its card is made from the A2A card (description, skills), so
``mesh peers``, the gateways and the router see it like any agent; and it offers the
methods mesh agents call on one another:

- ``message`` / ``message_stream``: ``{"text", "data"?, "metadata"?}``; the reply's text
  and data, or a stream of ``{"text"}`` (and ``{"data"}``) chunks as the agent produces
  them, then ``{"done": true, "state", "task_id"}``;
- ``chat`` / ``chat_stream``: ``{"messages": [{role, content}]}`` as an LLM agent takes
  it (the router's ``route_method``): the last user message is sent.

Leaving a stream early (a mesh CANCEL) cancels the A2A task. An A2A error keeps its type:
invalid params is the caller's mistake (:class:`~mesh.InvalidArgument`); a task the agent
failed or an HTTP failure is :class:`A2AFailure`, which callers see as a RemoteError.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn, Self

import httpx
from a2a.client import A2ACardResolver, A2AClientError, ClientConfig, ClientFactory
from a2a.helpers import get_data_parts, get_text_parts, new_data_part, new_text_part
from a2a.types import (
    AgentCard,
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    TaskState,
)
from a2a.utils.errors import A2AError, InvalidParamsError
from google.protobuf.json_format import MessageToDict

from ..core.errors import InvalidArgument
from ..runtime.node import Node
from .a2a_server import ENDED
from .calls import Assembled
from .views import MAX_TEXT

log = logging.getLogger(__name__)
ENV_TOKEN = "MESH_A2A_TOKEN"
CANCEL_TIMEOUT_S = 5.0
CARD_TIMEOUT_S = 10.0
POLL_S = 0.1
POLL_MAX_S = 2.0
ASKING = {TaskState.TASK_STATE_INPUT_REQUIRED, TaskState.TASK_STATE_AUTH_REQUIRED}
TEXT_PARAMS = {
    "text": "str: the message to the agent",
    "data": "optional object: sent as a data part",
    "metadata": "optional object: the message's metadata",
}
CHAT_PARAMS = {"messages": "[{role, content}]: the last user message is sent", "...": "ignored"}


class A2AFailure(Exception):
    """The outside agent failed the task, asked for input this bridge cannot give, or
    could not be reached: the mesh caller sees a RemoteError of this type."""


class _Options(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise InvalidArgument(f"{self.prog}: {message}")


class A2APeer:
    """A mesh node that forwards requests and streams to the A2A agent at ``url``."""

    def __init__(
        self,
        name: str,
        *,
        url: str,
        token: str | None = None,
        timeout: float = 300.0,
        **node_options: Any,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise InvalidArgument(f"--url {url!r}: an http(s) address of the A2A agent")
        self.name = name
        self.url = url
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(headers=headers, timeout=timeout)
        self.node = Node(name, **node_options)
        self._client: Any = None
        self._cancelling: set[asyncio.Task[None]] = set()
        self.card: AgentCard | None = None
        for method, handler in [
            ("message", self.message),
            ("message_stream", self.message_stream),
            ("chat", self.chat),
            ("chat_stream", self.chat_stream),
        ]:
            self.node.handler(method, handler)

    # ------------------------------------------------------------------ command line

    @classmethod
    def _option_parser(cls) -> _Options:
        parser = _Options(
            prog="mesh run a2a",
            usage="mesh run a2a --url URL --name NAME [mesh run's options] [--token T]",
            add_help=False,
        )
        parser.add_argument("--url", required=True, help="the A2A agent's address (its card)")
        parser.add_argument(
            "--token", default=None, help=f"bearer token for it (default ${ENV_TOKEN})"
        )
        parser.add_argument(
            "--timeout", type=float, default=300.0, help="seconds per call (default 300)"
        )
        return parser

    @classmethod
    def from_command_line(cls, argv: Sequence[str], node_options: dict[str, Any]) -> A2APeer:
        options = vars(cls._option_parser().parse_args(list(argv)))
        options["token"] = options["token"] or os.environ.get(ENV_TOKEN) or None
        return cls(**node_options, **options)

    @classmethod
    def options_help(cls) -> str:
        return cls._option_parser().format_help()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> Self:
        """Read the A2A card (before registering: no call reaches a bridge without a
        client), publish it as this node's card, join the mesh."""
        try:
            async with asyncio.timeout(CARD_TIMEOUT_S):
                self.card = await A2ACardResolver(self._http, self.url).get_agent_card()
        except (A2AClientError, httpx.HTTPError, ValueError, TimeoutError) as exc:
            await self._http.aclose()
            why = _one_line(str(exc)) or f"no answer within {CARD_TIMEOUT_S:.0f} s"
            raise InvalidArgument(f"cannot read the A2A card at {self.url}: {why}") from None
        except BaseException:
            await self._http.aclose()
            raise
        config = ClientConfig(streaming=self.card.capabilities.streaming, httpx_client=self._http)
        self._client = ClientFactory(config).create(self.card)
        self.node.meta["card"] = self.mesh_card(self.card)
        try:
            await self.node.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        await self.node.close()  # handlers end: their tasks on the agent are cancelled
        if self._cancelling:
            await asyncio.gather(*self._cancelling, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
        await self._http.aclose()

    @staticmethod
    def mesh_card(card: AgentCard) -> dict[str, Any]:
        """The mesh card of an A2A agent: its description and skills, the bridge's methods."""
        skills = "; ".join(f"{s.name}: {s.description}" for s in card.skills)
        description = card.description or f"The A2A agent {card.name}."
        if skills:
            description = f"{description} Skills: {skills}"
        return {
            "kind": "A2A",
            "description": " ".join(description.split())[:MAX_TEXT],
            "default": "message_stream",
            "a2a": {"name": card.name, "skills": [s.id for s in card.skills]},
            "methods": [
                _method("message", "Send a message; the whole reply.", TEXT_PARAMS, False),
                _method("message_stream", "Send a message; the reply streamed.", TEXT_PARAMS, True),
                _method(
                    "chat", "Send a chat's last user message; the whole reply.", CHAT_PARAMS, False
                ),
                _method(
                    "chat_stream", "Send a chat's last user message; streamed.", CHAT_PARAMS, True
                ),
            ],
        }

    # ------------------------------------------------------------------ methods

    async def message(self, body: Any) -> dict[str, Any]:
        return await _collect(self.message_stream(body))

    async def message_stream(self, body: Any) -> AsyncIterator[dict[str, Any]]:
        async for chunk in self._forward(_message_of(body)):
            yield chunk

    async def chat(self, body: Any) -> dict[str, Any]:
        return await _collect(self.chat_stream(body))

    async def chat_stream(self, body: Any) -> AsyncIterator[dict[str, Any]]:
        messages = body.get("messages") if isinstance(body, dict) else None
        asked = [
            m.get("content")
            for m in messages or []
            if isinstance(m, dict) and m.get("role") == "user"
        ]
        if not asked or not isinstance(asked[-1], str):
            raise InvalidArgument("chat needs {'messages': [{'role': 'user', 'content': str}]}")
        async for chunk in self._forward(_message_of({"text": asked[-1]})):
            yield chunk

    async def _forward(self, message: Message) -> AsyncIterator[dict[str, Any]]:
        """Send ``message``; yield the reply's parts as they come, then a ``done`` chunk.
        A reply that ends before its task did (a stream cut short, a non-streaming agent's
        working task) is followed with ``get task`` until the task ends. Left early (the
        mesh caller cancelled), the task is cancelled on the agent."""
        task_id = ""
        state: int | None = None
        passed = 0  # chunks of the reply yielded so far
        try:
            events = self._client.send_message(SendMessageRequest(message=message))
            try:
                async for event in events:
                    task_id = task_id or _task_id(event)
                    for chunk in _chunks(event):
                        yield chunk
                        passed += 1
                    state = _state(event) or state
                    _check(state, event)
            finally:
                await events.aclose()
            if state not in ENDED:
                if not task_id:
                    raise A2AFailure("the A2A agent's reply ended without a task or a message")
                task = await self._settled(task_id)
                state = task.status.state
                wrapped = StreamResponse(task=task)
                for chunk in _chunks(wrapped)[passed:]:
                    yield chunk
                _check(state, wrapped)
        except InvalidParamsError as exc:
            raise InvalidArgument(f"the A2A agent refused the message: {exc.message}") from None
        except (A2AError, A2AClientError, httpx.HTTPError) as exc:
            raise A2AFailure(_one_line(f"{type(exc).__name__}: {exc}")) from None
        except (GeneratorExit, asyncio.CancelledError):
            if task_id and state not in ENDED:
                self._cancel_soon(task_id)
            raise
        yield {"done": True, "state": TaskState.Name(state or 0), "task_id": task_id}

    async def _settled(self, task_id: str) -> Any:
        """The task once it has ended (or asks for input), asked for with backoff, at
        most ``timeout`` seconds."""
        wait = POLL_S
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    task = await self._client.get_task(GetTaskRequest(id=task_id))
                    if task.status.state in ENDED | ASKING:
                        return task
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, POLL_MAX_S)
        except TimeoutError:
            raise A2AFailure(f"the A2A task did not end within {self.timeout:.0f} s") from None

    def _cancel_soon(self, task_id: str) -> None:
        """Cancel the task on the agent in a task of this bridge's own: the handler that
        asked is being cancelled (perhaps twice, a CANCEL then the caller's BYE), and that
        must not cut the request to the agent short. :meth:`stop` waits for it."""
        task = asyncio.get_running_loop().create_task(self._cancel(task_id))
        self._cancelling.add(task)
        task.add_done_callback(self._cancelling.discard)

    async def _cancel(self, task_id: str) -> None:
        """Cancel the task on the agent, bounded; a failure is logged, the caller has left."""
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT_S):
                await self._client.cancel_task(CancelTaskRequest(id=task_id))
        except (TimeoutError, A2AError, A2AClientError, httpx.HTTPError) as exc:
            log.warning("a2a: could not cancel task %s on %s: %s", task_id, self.url, exc)


def _check(state: int | None, event: StreamResponse) -> None:
    """Raise what a state says went wrong: the agent failed the task, ended it, or asks
    for what this bridge cannot give."""
    if state in ASKING:
        raise A2AFailure(f"the A2A agent asks for more ({TaskState.Name(state)})")
    if state == TaskState.TASK_STATE_FAILED:
        raise A2AFailure(f"the A2A agent failed the task: {_status_text(event)}")
    if state in (TaskState.TASK_STATE_CANCELED, TaskState.TASK_STATE_REJECTED):
        raise A2AFailure(f"the A2A agent ended the task: {TaskState.Name(state)}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _method(name: str, description: str, params: dict[str, str], streams: bool) -> dict[str, Any]:
    return {"name": name, "description": description, "params": params, "streams": streams}


def _message_of(body: Any) -> Message:
    if isinstance(body, str):
        body = {"text": body}
    if not isinstance(body, dict) or not isinstance(body.get("text", ""), str):
        raise InvalidArgument("message needs {'text': str, 'data'?: object, 'metadata'?: object}")
    parts: list[Part] = []
    if body.get("text"):
        parts.append(new_text_part(body["text"]))
    if isinstance(body.get("data"), dict):
        parts.append(new_data_part(body["data"]))
    if not parts:
        raise InvalidArgument("message needs text or data")
    message = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=parts)
    if isinstance(body.get("metadata"), dict):
        message.metadata.update(body["metadata"])
    return message


def _task_id(event: StreamResponse) -> str:
    kind = event.WhichOneof("payload")
    if kind == "task":
        return event.task.id
    if kind == "status_update":
        return event.status_update.task_id
    if kind == "artifact_update":
        return event.artifact_update.task_id
    return ""


def _state(event: StreamResponse) -> int | None:
    kind = event.WhichOneof("payload")
    if kind == "message":  # a direct reply: no task, nothing more to come
        return TaskState.TASK_STATE_COMPLETED
    if kind == "task":
        return event.task.status.state
    if kind == "status_update":
        return event.status_update.status.state
    return None


def _chunks(event: StreamResponse) -> list[dict[str, Any]]:
    """What an event adds to the reply: artifact parts, a whole task's artifacts (the
    reply of a non-streaming agent), or a direct message."""
    kind = event.WhichOneof("payload")
    if kind == "artifact_update":
        parts = list(event.artifact_update.artifact.parts)
    elif kind == "task":
        parts = [p for artifact in event.task.artifacts for p in artifact.parts]
    elif kind == "message":
        parts = list(event.message.parts)
    else:
        return []
    return [{"text": t} for t in get_text_parts(parts)] + [
        {"data": d} for d in get_data_parts(parts)
    ]


def _status_text(event: StreamResponse) -> str:
    status = event.task.status if event.HasField("task") else event.status_update.status
    return " ".join(get_text_parts(status.message.parts)) or MessageToDict(status).get(
        "state", "no reason given"
    )


async def _collect(chunks: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    assembled = Assembled()
    done: dict[str, Any] = {}
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            if chunk.get("done"):
                done = chunk
            else:
                assembled.add(chunk)
    return {
        "text": assembled.text,
        "data": [c["data"] for c in assembled.data],
        "state": done.get("state"),
        "task_id": done.get("task_id"),
    }
