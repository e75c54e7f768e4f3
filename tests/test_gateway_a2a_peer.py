"""``mesh run a2a``: an outside A2A agent (an a2a-sdk server started here, as its author
would write it) joins the mesh as a peer; mesh nodes call it by request and by stream,
and leaving a stream early cancels its task there."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest
import uvicorn
from a2a.helpers import get_text_parts, new_task_from_user_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill
from a2a.utils.errors import InvalidParamsError
from starlette.applications import Starlette

from mesh import BadRequest, Node, RemoteError
from tests.conftest import eventually

pytestmark = pytest.mark.slow  # processes and sockets: not in --fast

TOKEN = "outside-agent-token-42"


class Words(AgentExecutor):
    """Streams the words of the message back, one artifact update each. ``slow`` says two
    ticks, then waits until cancelled, ``fail`` fails the task, ``invalid`` is refused."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.authorization: list[str | None] = []

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        self.authorization.append(context.call_context.state["headers"].get("authorization"))
        text = " ".join(get_text_parts(context.message.parts))
        if text == "invalid":
            raise InvalidParamsError(message="no such word")
        task = context.current_task or new_task_from_user_message(context.message)
        await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work()
        if text == "fail":
            await updater.failed(updater.new_agent_message([new_text_part("out of words")]))
            return
        words = text.split() if text != "slow" else ["tick0", "tick1"]
        for index, word in enumerate(words):
            await updater.add_artifact(
                [new_text_part(word + " ")], artifact_id="words", append=index > 0
            )
        if text == "slow":
            await asyncio.Event().wait()  # never ends by itself: only a cancel stops it
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        self.cancelled.append(context.task_id)
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        await updater.cancel()


@contextlib.asynccontextmanager
async def outside_agent(executor: Words):
    """An A2A server on a free port of loopback, in this process; its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    card = AgentCard(
        name="wordsmith",
        description="Says words back.",
        version="1.0",
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="words", name="words", description="repeat words", tags=["t"])],
    )
    handler = DefaultRequestHandler(
        agent_executor=executor, task_store=InMemoryTaskStore(), agent_card=card
    )
    app = Starlette(routes=[*create_agent_card_routes(card), *create_jsonrpc_routes(handler, "/")])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve([sock]))
    try:
        yield url
    finally:
        server.should_exit = True
        await serving
        sock.close()


@pytest.mark.asyncio
async def test_an_outside_a2a_agent_is_called_like_a_peer(spawn, discovery, home):
    executor = Words()
    async with outside_agent(executor) as url:
        bridge = spawn(
            "run", "a2a", "--url", url, "--name", "outside", "--discovery", discovery,
            "--token", TOKEN,
        )  # fmt: skip
        await asyncio.to_thread(bridge.endpoint, 60)  # it reads the card from this loop
        async with Node("caller", discovery=discovery, mesh=home) as node:
            [peer] = await node.peers(capability="chat_stream")
            card = peer.meta["card"]
            assert card["kind"] == "A2A" and card["description"].startswith("Says words back.")
            assert "words: repeat words" in card["description"]

            reply = await node.request("outside", "message", {"text": "hello mesh world"})
            assert reply["text"] == "hello mesh world " and reply["state"] == "TASK_STATE_COMPLETED"
            assert executor.authorization[-1] == f"Bearer {TOKEN}"

            chunks = [c async for c in node.stream("outside", "message_stream", "a b c")]
            assert chunks[:3] == [{"text": "a "}, {"text": "b "}, {"text": "c "}]
            assert chunks[3]["done"] is True and chunks[3]["state"] == "TASK_STATE_COMPLETED"

            chat = {"messages": [{"role": "user", "content": "as a router asks"}]}
            said = [c.get("text", "") async for c in node.stream("outside", "chat_stream", chat)]
            assert "".join(said) == "as a router asks "

            with pytest.raises(RemoteError, match="out of words") as failed:
                await node.request("outside", "message", {"text": "fail"}, timeout=30)
            assert failed.value.remote_type == "A2AFailure"
            with pytest.raises(BadRequest, match="no such word"):
                await node.request("outside", "message", {"text": "invalid"}, timeout=30)

            async with contextlib.aclosing(node.stream("outside", "message_stream", "slow")) as s:
                assert [await anext(s) for _ in range(2)] == [
                    {"text": "tick0 "},
                    {"text": "tick1 "},
                ]
            await eventually(lambda: executor.cancelled)  # left early: the task was cancelled
            assert len(executor.cancelled) == 1

        async with Node("leaver", discovery=discovery, mesh=home) as leaver:
            chunks = leaver.stream("outside", "message_stream", "slow")
            assert await anext(chunks) == {"text": "tick0 "}
            await chunks.aclose()
        # the CANCEL and at once the BYE: the bridge still cancels the task on the agent
        await eventually(lambda: len(executor.cancelled) == 2)
