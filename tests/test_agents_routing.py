"""Embeddings from the real MiniLM weights, and semantic routing kept current by discovery
events: agents in this process, talking over real sockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest
import pytest_asyncio

from agents.embedding import EmbeddingAgent
from agents.llm import LLMAgent
from agents.router import RouterAgent
from agents.tiny import build_tiny_model
from mesh import BadRequest, DiscoveryServer, MeshDirectory, Node
from tests.conftest import eventually

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast

SPECIALITIES = {
    "billing": "Billing: invoices, charges, refunds and payment methods.",
    "tech": "Technical support: devices that will not start, network and Wi-Fi problems, "
    "software updates and error messages.",
    "shipping": "Shipping: parcel tracking, delivery dates, lost packages and returns.",
}


@pytest_asyncio.fixture
async def mesh(tmp_path):
    """A discovery node and a client node in this process; agents are added by the test."""
    directory = MeshDirectory(tmp_path / "mesh")
    directory.create()
    started: list = []
    async with DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=directory) as server:
        options = {"discovery": server.endpoint, "mesh": directory, "heartbeat": 0.5}
        async with Node("client", **options) as client:

            async def add(agent_class, name, **extra):
                agent = agent_class(name, **options, **extra)
                await agent.start()
                started.append(agent)
                return agent

            yield client, add
            for agent in reversed(started):
                with contextlib.suppress(Exception):
                    await agent.stop()


@pytest.mark.asyncio
async def test_minilm_embeds_similar_sentences_closer_as_float32_attachments(mesh):
    client, add = mesh
    await add(EmbeddingAgent, "embedder")
    texts = [
        "How do I get my money back for a double charge?",
        "I was billed twice and want a refund.",
        "The cat sleeps on the warm windowsill.",
    ]
    reply = await client.request("embedder", "embed", {"texts": texts}, timeout=60)
    vectors = reply["vectors"]
    assert isinstance(vectors, np.ndarray)  # an attachment, not a list of floats
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384) == (3, reply["dim"])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > 0.5 > unrelated + 0.3
    with pytest.raises(BadRequest, match="1 to 256 strings"):
        await client.request("embedder", "embed", {"texts": []}, timeout=10)


@pytest.mark.asyncio
async def test_the_router_picks_the_speciality_and_follows_joins_and_leaves(mesh, tmp_path):
    client, add = mesh
    model = build_tiny_model(tmp_path / "tiny")
    await add(EmbeddingAgent, "embedder")
    router = await add(RouterAgent, "router")
    agents = {}
    for name, description in SPECIALITIES.items():
        agents[name] = await add(LLMAgent, name, model=str(model), description=description)

    async def table_is(names):
        table = await client.request("router", "table", timeout=30)
        return table if set(table) == names else None

    await eventually(lambda: table_is(set(SPECIALITIES)), timeout=30)
    for question, expected in [
        ("I was charged twice on my invoice, can I get a refund?", "billing"),
        ("My laptop will not start after the software update.", "tech"),
        ("Where is my parcel? It was due yesterday.", "shipping"),
    ]:
        answer = await client.request(
            "router", "route", {"text": question, "max_new_tokens": 5}, timeout=60
        )
        assert answer["route"] == expected, answer["scores"]
        assert answer["score"] == max(answer["scores"].values())
        assert 1 <= answer["tokens"] <= 5 and answer["finish_reason"] in ("length", "eos")

    await agents["shipping"].stop()  # LEAVE: the router forgets it
    await eventually(lambda: table_is({"billing", "tech"}), timeout=30)
    answer = await client.request("router", "route", {"text": "Where is my parcel?"}, timeout=60)
    assert answer["route"] in ("billing", "tech")
    await add(LLMAgent, "returns", model=str(model), description=SPECIALITIES["shipping"])
    await eventually(lambda: table_is({"billing", "tech", "returns"}), timeout=30)  # JOIN
    answer = await client.request("router", "route", {"text": "Where is my parcel?"}, timeout=60)
    assert answer["route"] == "returns"
    assert router.routes.keys() == {"billing", "tech", "returns"}


@pytest.mark.asyncio
async def test_a_specialist_drained_mid_answer_goes_on_from_a_replica_through_the_router(
    mesh, tmp_path
):
    """The router passes a specialist's stream on; the specialist is drained mid-answer
    and hands the generation to another agent serving the same model. The router's own
    stream read follows the redirect, so the user's stream through the router goes on
    token-exactly (seeded sampling), nothing missing or repeated."""
    client, add = mesh
    model = build_tiny_model(tmp_path / "tiny")
    await add(EmbeddingAgent, "embedder")
    await add(RouterAgent, "router")
    billing = await add(LLMAgent, "billing", model=str(model), description=SPECIALITIES["billing"])
    await add(LLMAgent, "tech", model=str(model), description=SPECIALITIES["tech"])
    await eventually(lambda: _table_is(client, {"billing", "tech"}), timeout=30)
    body = {"text": "I was charged twice, can I get a refund?", "max_new_tokens": 300,
            "temperature": 0.9, "seed": 3}  # fmt: skip
    unmoved = [chunk async for chunk in client.stream("router", "route_stream", body, timeout=60)]
    stream = client.stream("router", "route_stream", body, timeout=60, window=1)
    async with contextlib.aclosing(stream):
        head = [await anext(stream), await anext(stream)]  # the route, the first text
        draining = asyncio.create_task(billing.drain(60))  # moves it at its next token
        chunks = head + [chunk async for chunk in stream]
        drained = await draining
    assert drained == {"moved": 1, "finished_here": 0, "still_running": 0}
    assert chunks[0]["route"] == unmoved[0]["route"] == "billing"
    texts = [c["text"] for c in chunks if "text" in c]
    assert "".join(texts) == "".join(c["text"] for c in unmoved if "text" in c)
    tokens = [c["tokens"] for c in chunks if "text" in c]
    assert tokens == sorted(set(tokens))
    done = chunks[-1]
    assert done["tokens"] == unmoved[-1]["tokens"] and done["moved_from"] == "billing"
    assert 1 <= done["moved_at"] < done["tokens"]


async def _table_is(client, names):
    table = await client.request("router", "table", timeout=30)
    return table if set(table) == names else None
