"""Moving generations between LLM agents at the awkward moments: a full queue at the
target, a drain while a handed-over generation waits for its reader, a move asked while
the generation it names changes, a drain that meets a refused move. Agents in this
process, over real sockets on loopback (tests/test_agents_llm.py runs them as processes)."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
import pytest_asyncio

from agents.decoding import capture
from agents.generation import GenerationParams
from agents.llm import LLMAgent
from agents.tiny import build_tiny_model
from mesh import BadRequest, DiscoveryServer, MeshDirectory, Node, Overloaded
from tests.conftest import eventually

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast

BODY = {"prompt": "Your order", "max_new_tokens": 120, "temperature": 0.9, "seed": 5}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


@pytest_asyncio.fixture
async def mesh(tmp_path, tiny):
    """A discovery node, a client, and ``add(name, **options)`` for LLM agents."""
    directory = MeshDirectory(tmp_path / "mesh")
    directory.create()
    started: list[LLMAgent] = []
    async with DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=directory) as server:
        options = {"discovery": server.endpoint, "mesh": directory, "heartbeat": 0.5}
        async with Node("client", **options) as client:

            async def add(name: str, **extra) -> LLMAgent:
                agent = LLMAgent(name, model=tiny, **options, **extra)
                await agent.start()
                started.append(agent)
                return agent

            yield client, add
            for agent in reversed(started):
                with contextlib.suppress(Exception):
                    await agent.stop()


async def read_all(stream) -> list:
    async with contextlib.aclosing(stream):
        return [chunk async for chunk in stream]


def text_of(chunks: list) -> str:
    return "".join(chunk["text"] for chunk in chunks if "text" in chunk)


def handed_over_state(agent: LLMAgent, tokens: int) -> dict:
    """A generation of BODY, ``tokens`` in, captured on ``agent``."""
    ids = agent.tokenizer(BODY["prompt"])["input_ids"]
    params = GenerationParams(max_new_tokens=BODY["max_new_tokens"], temperature=0.9, seed=5)
    generation = agent.decoder.start(ids, params)
    for _ in range(tokens):
        agent.decoder.step(generation)
    return capture(agent.decoder, generation)


@pytest.mark.asyncio
async def test_a_generation_handed_to_a_busy_agent_waits_its_turn_there(mesh):
    """The replica's queue is full (max_queue 0, its one slot held by a paused reader)
    when the moved generation's reader arrives: the generation adopt accepted is not
    refused then, it waits for the slot, and its reader gets all of it."""
    client, add = mesh
    await add("writer")
    await add("replica", max_queue=0)
    unmoved = await client.request("writer", "generate", BODY, timeout=60)
    busy = client.stream("replica", "generate_stream", {**BODY, "seed": 9}, timeout=60, window=1)
    await anext(busy)  # the replica's one slot, held
    stream = client.stream("writer", "generate_stream", BODY, timeout=60, window=1)
    chunks = [await anext(stream)]
    assert await client.request("writer", "move", {"to": "replica"}) == {"moving": True}
    reading = asyncio.create_task(read_all(stream))
    await eventually(lambda: _resumed(client), timeout=30)  # the reader waits at the replica
    await read_all(busy)  # the slot comes free
    chunks += await reading
    assert text_of(chunks) == unmoved["text"]
    assert chunks[-1]["moved_to"] == "replica"


async def _resumed(client) -> bool:
    return (await client.request("replica", "status", timeout=10))["waiting"] == 1


@pytest.mark.asyncio
async def test_a_drain_waits_for_a_handed_over_generation_and_moves_it_on(mesh):
    """A generation was handed to the replica, whose reader has not come yet, when the
    replica is drained: the drain does not end (the generation is held for its reader),
    and when the reader comes the replica moves it on to another agent, whole."""
    client, add = mesh
    writer = await add("writer")
    replica = await add("replica")
    await add("spare")
    unmoved = await client.request("writer", "generate", BODY, timeout=60)
    state = handed_over_state(writer, 0)
    handed = {"state": state, "reader": "client"}
    ticket = await client.request("replica", "adopt", handed, timeout=60)
    draining = asyncio.create_task(replica.drain(60))
    await eventually(lambda: replica.draining and replica.node.serving == 0, timeout=30)
    assert not draining.done()  # held for the reader
    chunks = await read_all(client.stream("replica", "resume", ticket, timeout=60))
    summary = await draining
    assert text_of(chunks) == unmoved["text"]
    assert chunks[-1]["moved_to"] in ("writer", "spare")  # any agent of the model but itself
    assert chunks[-1]["moved_from"] == "replica"
    assert summary == {"moved": 1, "finished_here": 0, "still_running": 0}


@pytest.mark.asyncio
async def test_a_move_acts_on_the_generation_its_caller_owns_only(mesh, monkeypatch):
    """Mallory asks to move while nothing runs, and the replica lookup is slow: a
    generation that starts meanwhile (the client's) is not moved by her request."""
    client, add = mesh
    writer = await add("writer")
    await add("replica")
    mallory = await add("mallory")
    lookup, gate, entered = writer._replicas, asyncio.Event(), asyncio.Event()

    async def slow_lookup():
        entered.set()
        await gate.wait()
        return await lookup()

    monkeypatch.setattr(writer, "_replicas", slow_lookup)
    moving = asyncio.create_task(
        mallory.node.request("writer", "move", {"to": "replica"}, timeout=60)
    )
    await entered.wait()
    monkeypatch.setattr(writer, "_replicas", lookup)
    stream = client.stream("writer", "generate_stream", BODY, timeout=60, window=1)
    chunks = [await anext(stream)]
    gate.set()
    assert await moving == {"moving": False}
    chunks += await read_all(stream)
    assert "moved_to" not in chunks[-1]


@pytest.mark.asyncio
async def test_a_drain_that_meets_a_refused_move_tries_the_other_replicas(mesh, monkeypatch):
    """The generation's caller asked it to move to "full", which refuses (its one place
    for handed-over generations is taken); a drain began meanwhile: the generation goes
    to "free" instead of running out the drain here."""
    client, add = mesh
    writer = await add("writer")
    await add("full", max_queue=0)
    await add("free")
    unmoved = await client.request("writer", "generate", BODY, timeout=60)
    taken = {"state": handed_over_state(writer, 1), "reader": "client"}
    await client.request("full", "adopt", taken, timeout=60)  # its one place
    lookup, gate, entered = writer._replicas, asyncio.Event(), asyncio.Event()

    async def gated():
        if bridge_moving(writer):  # the hand-over's own lookup: the drain begins there
            entered.set()
            await gate.wait()
        return await lookup()

    monkeypatch.setattr(writer, "_replicas", gated)
    stream = client.stream("writer", "generate_stream", BODY, timeout=60, window=1)
    chunks = [await anext(stream)]
    assert await client.request("writer", "move", {"to": "full"}) == {"moving": True}
    reading = asyncio.create_task(read_all(stream))
    await entered.wait()
    draining = asyncio.create_task(writer.drain(60))
    await eventually(lambda: writer.draining, timeout=30)
    gate.set()
    chunks += await reading
    summary = await draining
    assert text_of(chunks) == unmoved["text"]
    assert chunks[-1]["moved_to"] == "free"
    assert summary == {"moved": 1, "finished_here": 0, "still_running": 0}


def bridge_moving(agent: LLMAgent) -> bool:
    return agent._active is not None and agent._active.state is not None


@pytest.mark.asyncio
async def test_a_decode_on_that_is_not_a_name_is_the_callers_bad_request(mesh):
    client, add = mesh
    await add("writer")
    for value in (["a"], {"a": 1}, 7):
        with pytest.raises(BadRequest, match="decode_on"):
            await client.request("writer", "generate", {**BODY, "decode_on": value}, timeout=60)


@pytest.mark.asyncio
@pytest.mark.parametrize("mover", ["waits", "gives-up"])
async def test_adopts_under_way_count_against_the_bound_before_they_restore(
    mesh, monkeypatch, mover
):
    """The replica holds at most max_queue handed-over generations, each a cache in memory:
    an adopt still restoring its state keeps its place, so a second one, concurrent, is
    refused before it restores anything (not after both caches are in memory); and it
    keeps it until its restore has ended, even when its mover gave up on it (cancelled)."""
    client, add = mesh
    replica = await add("replica", max_queue=1)
    state = handed_over_state(replica, 3)
    restoring, gate = [], threading.Event()
    restore = replica.decoder.restore

    def slow_restore(state):
        restoring.append(state)
        gate.wait(60)
        return restore(state)

    monkeypatch.setattr(replica.decoder, "restore", slow_restore)
    body = {"state": state, "reader": "client"}
    first = asyncio.create_task(client.request("replica", "adopt", body, timeout=60))
    try:
        await eventually(lambda: restoring, timeout=30)
        if mover == "gives-up":
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first
            await eventually(lambda: not replica.node.serving, timeout=30)  # adopt stopped
        with pytest.raises(Overloaded, match="held or restored already"):
            await client.request("replica", "adopt", body, timeout=60)
    finally:
        gate.set()
    assert len(restoring) == 1  # the refused one never restored
    if mover == "waits":
        assert "ticket" in await first
        assert (await client.request("replica", "status", timeout=10))["adopted"] == 1
    else:  # its place comes back once the restore it left behind has ended
        await eventually(lambda: replica._restoring == 0, timeout=30)
        assert "ticket" in await client.request("replica", "adopt", body, timeout=60)
