"""``mesh gateway`` as A2A clients meet it: the official a2a-sdk client (card resolver,
client factory) against the gateway process, in front of real agents: the echo agent and
the customer-service router with its LLM agents on the tiny model."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import httpx
import pytest
import pytest_asyncio
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.helpers import new_data_part
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    TaskState,
)
from a2a.utils.errors import InvalidParamsError
from google.protobuf.json_format import MessageToDict

from agents.embedding import EmbeddingAgent
from agents.llm import LLMAgent
from agents.router import RouterAgent
from agents.tiny import build_tiny_model
from mesh import DiscoveryServer, MeshDirectory, Node
from tests.conftest import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # models load on a busy machine

TOKEN = "a2a-test-token-0123456789"
FIXTURE = "tests.fixture_agent:FixtureAgent"
SPECIALITIES = {
    "billing": "Billing: invoices, charges, refunds and payment methods.",
    "shipping": "Shipping: parcel tracking, delivery dates, lost packages and returns.",
}


def message(*parts: Part, method: str | None = None) -> SendMessageRequest:
    sent = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=list(parts))
    if method is not None:
        sent.metadata.update({"method": method})
    return SendMessageRequest(message=sent)


@contextlib.asynccontextmanager
async def a2a_client(base: str, agent: str, *, streaming: bool = True):
    """The way an A2A user connects: resolve the card, let the factory make the client."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as http:
        card = await A2ACardResolver(http, f"{base}/agents/{agent}/").get_agent_card()
        client = ClientFactory(ClientConfig(streaming=streaming, httpx_client=http)).create(card)
        try:
            yield card, client
        finally:
            await client.close()


def events_of(stream):
    return contextlib.aclosing(stream)


def artifact_parts(event) -> list[Part]:
    return list(event.artifact_update.artifact.parts) if event.HasField("artifact_update") else []


@pytest.mark.asyncio
async def test_echo_through_the_gateway_token_calls_streams_errors_and_leaves(
    spawn, discovery, home
):
    spawn("run", "echo", "--name", "echo-1", "--discovery", discovery).endpoint()
    spawn("run", FIXTURE, "--name", "fixture", "--discovery", discovery).endpoint()
    gateway = spawn(
        "gateway", "--discovery", discovery, "--listen", "127.0.0.1:0", "--token", TOKEN
    )
    base = gateway.endpoint()
    assert base.startswith("http://127.0.0.1:")

    async with httpx.AsyncClient() as plain:
        card_url = f"{base}/agents/fixture/.well-known/agent-card.json"
        assert (await plain.get(card_url)).status_code == 401
        sneaked = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "SendMessage",
            "params": {
                "message": {
                    "role": "ROLE_USER",
                    "messageId": "m1",
                    "parts": [{"text": "sneaked in"}],
                    "metadata": {"method": "record"},
                }
            },
        }
        refused = await plain.post(f"{base}/agents/fixture/", json=sneaked)
        assert refused.status_code == 401
        listing = await plain.get(f"{base}/", headers={"Authorization": f"Bearer {TOKEN}"})
        assert set(listing.json()["agents"]) == {"echo-1", "fixture"}  # not the gateway

    async with a2a_client(base, "echo-1", streaming=False) as (card, client):
        assert card.name == "echo-1" and card.capabilities.streaming
        assert {s.id for s in card.skills} >= {"echo", "echo_stream", "relay"}
        assert "bearer" in card.security_schemes
        [event] = [e async for e in client.send_message(message(Part(text="hello")))]
        task = event.task
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
        assert [p.text for p in task.artifacts[0].parts] == ["hello"]  # default method: echo
        again = await client.get_task(GetTaskRequest(id=task.id))
        assert again.status.state == TaskState.TASK_STATE_COMPLETED

    async with a2a_client(base, "echo-1") as (_, client):
        request = message(new_data_part({"items": ["tok", "en", "s"]}), method="echo_stream")
        async with events_of(client.send_message(request)) as events:
            seen = [e async for e in events]
        texts = [p.text for e in seen for p in artifact_parts(e)]
        assert texts == ["tok", "en", "s"]  # one artifact update per chunk
        assert seen[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED

        with pytest.raises(InvalidParamsError, match="NoSuchMethod"):
            async with events_of(
                client.send_message(message(Part(text="x"), method="nothing"))
            ) as events:
                [e async for e in events]

    async with a2a_client(base, "fixture") as (card, client):
        with pytest.raises(InvalidParamsError, match="no default method"):
            async with events_of(client.send_message(message(Part(text="x")))) as events:
                [e async for e in events]
        async with events_of(client.send_message(message(Part(text="x"), method="boom"))) as events:
            seen = [e async for e in events]
        failed = seen[-1].status_update.status
        assert failed.state == TaskState.TASK_STATE_FAILED
        assert failed.message.parts[0].text.startswith("RemoteError: ValueError: bad input")
        request = message(new_data_part(60), method="slow")  # a plain request, 60 s long
        async with Node("observer", discovery=discovery, mesh=home) as observer:
            async with events_of(client.send_message(request)) as events:
                first = await anext(events)  # the task exists before the call ends
                task_id = first.task.id or first.status_update.task_id
                await eventually(lambda: observer.request("fixture", "inflight", timeout=5))
                cancelled = await client.cancel_task(CancelTaskRequest(id=task_id))
            assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
            await eventually(lambda: _is_zero(observer.request("fixture", "inflight", timeout=5)))
        async with events_of(
            client.send_message(message(Part(text="?"), method="recorded"))
        ) as events:
            replies = [p for e in [x async for x in events] for p in artifact_parts(e)]
        assert [MessageToDict(p)["data"] for p in replies] == [[]]  # the refused one got nowhere

    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        leaving = spawn("run", "echo", "--name", "echo-2", "--discovery", discovery)
        leaving.endpoint()
        card_url = f"{base}/agents/echo-2/.well-known/agent-card.json"
        await eventually(lambda: _status_is(http, card_url, 200))  # mounted on JOIN
        assert leaving.stop() == 0
        await eventually(lambda: _status_is(http, card_url, 404))  # unmounted on LEAVE


async def _is_zero(pending) -> bool:
    return await pending == 0


async def _status_is(http: httpx.AsyncClient, url: str, status: int) -> bool:
    return (await http.get(url)).status_code == status


@pytest_asyncio.fixture
async def service(home, tmp_path):
    """The customer-service mesh in this process: discovery, the embedder, the router and
    two LLM specialists on the tiny model, sharing ``home`` with the gateway process."""
    directory = MeshDirectory(home)
    model = build_tiny_model(tmp_path / "tiny")
    started: list = []
    async with DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=directory) as server:
        options = {"discovery": server.endpoint, "mesh": directory, "heartbeat": 0.5}
        try:
            for agent in [
                EmbeddingAgent("embedder", **options),
                RouterAgent("router", **options),
                *(
                    LLMAgent(name, model=str(model), description=text, **options)
                    for name, text in SPECIALITIES.items()
                ),
            ]:
                await agent.start()
                started.append(agent)
            async with Node("observer", **options) as observer:
                yield server.endpoint, observer
        finally:
            for agent in reversed(started):
                with contextlib.suppress(Exception):
                    await agent.stop()


@pytest.mark.asyncio
async def test_the_router_answers_token_by_token_and_a_cancelled_task_stops_the_model(
    spawn, service
):
    discovery, observer = service
    await eventually(
        lambda: _table_has(observer, set(SPECIALITIES)), timeout=60
    )  # the router embedded every speciality's card
    gateway = spawn(
        "gateway", "--discovery", discovery, "--listen", "127.0.0.1:0", "--token", TOKEN
    )
    base = await asyncio.to_thread(gateway.endpoint)  # the loop serves discovery meanwhile

    async with a2a_client(base, "router") as (card, client):
        assert card.name == "router" and "nearest in meaning" in card.description
        default = next(s for s in card.skills if s.id == "route_stream")
        assert "The default" in default.description

        question = Part(text="I was charged twice on my invoice, can I get a refund?")
        request = message(question, new_data_part({"max_new_tokens": 8}))
        async with events_of(client.send_message(request)) as events:
            seen = [e async for e in events]
        parts = [p for e in seen for p in artifact_parts(e)]
        route = MessageToDict(parts[0])["data"]
        assert route["route"] == "billing"
        tokens = [p for p in parts if p.HasField("text")]
        assert len(tokens) >= 2  # streamed: each token its own artifact update
        assert [int(MessageToDict(p)["metadata"]["tokens"]) for p in tokens] == list(
            range(1, len(tokens) + 1)
        )
        done = MessageToDict(parts[-1])["data"]
        assert done["done"] is True and done["tokens"] == len(tokens) <= 8
        assert seen[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED

        asked = 900  # with the prompt, within the tiny model's context of 1024
        request = message(question, new_data_part({"max_new_tokens": asked}))
        async with events_of(client.send_message(request)) as events:
            task_id = ""
            async for event in events:
                task_id = task_id or event.task.id or event.status_update.task_id
                if any(p.HasField("text") for p in artifact_parts(event)):
                    break  # the first token: cancel now
            cancelled = await client.cancel_task(CancelTaskRequest(id=task_id))
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED

    async def stopped():
        status = await observer.request("billing", "status", timeout=10)
        return status if status["active_tokens"] is None and status["cancelled"] else None

    status = await eventually(stopped, timeout=60)
    assert status["last"]["finish_reason"] == "cancelled"
    assert status["last"]["tokens"] < asked  # the generation stopped, not just the stream


async def _table_has(node: Node, names: set[str]) -> bool:
    return set(await node.request("router", "table", timeout=30)) == names
