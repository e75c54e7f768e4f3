"""LLMAgent across real processes: the tiny local model loaded by the real loading code,
streamed over the mesh, cancelled, throttled by a slow reader, queued and refused."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from agents.tiny import build_tiny_model
from mesh import BadRequest, Overloaded
from mesh.runtime.node import Node
from tests.conftest import eventually, spent_stream_credit

LLM = "agents.llm:LLMAgent"
START_S = 90.0  # importing torch on a busy 2-core machine
# each test starts a model process (up to START_S) and then generates: the suite's 120 s
# guard against hangs is too short for that on a loaded machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(START_S + 210)]
DESCRIPTION = "Billing: invoices, refunds and payment methods."
# a reader of window 2 that took 1 chunk and stopped: 1 taken + 2 in the reader's window + 2
# the model may run ahead + 1 being produced
THROTTLED_TOKENS = 6


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def llm(spawn, discovery, tiny_model):
    def start(name: str, *extra: str):
        process = spawn(
            "run", LLM, "--name", name, "--discovery", discovery, "--model", str(tiny_model),
            "--description", DESCRIPTION, *extra,
        )  # fmt: skip
        process.endpoint(START_S)
        return process

    return start


@pytest.mark.asyncio
async def test_stream_arrives_in_order_and_joins_to_the_whole_generation(llm, discovery, home):
    llm("writer")
    body = {"prompt": "Your order", "max_new_tokens": 40, "temperature": 0.9, "seed": 11}
    async with Node("caller", discovery=discovery, mesh=home) as node:
        chunks = [c async for c in node.stream("writer", "generate_stream", body, timeout=60)]
        whole = await node.request("writer", "generate", body, timeout=60)
    *texts, done = chunks
    counts = [c["tokens"] for c in texts]
    assert counts == sorted(set(counts)) and counts[0] >= 1  # in order, one chunk per token...
    assert all(c["text"] for c in texts)  # ...that decodes to text (an end token does not)
    assert "".join(c["text"] for c in texts) == whole["text"]  # same seed: same text
    assert done["done"] is True
    assert done["tokens"] == whole["tokens"] >= counts[-1]
    assert done["finish_reason"] in ("length", "eos")
    assert done["tokens_per_s"] > 0


@pytest.mark.asyncio
async def test_chat_goes_through_the_tokenizers_chat_template(llm, discovery, home, tiny_model):
    from transformers import AutoTokenizer

    llm("chatter")
    chat = [{"role": "system", "content": DESCRIPTION}, {"role": "user", "content": "Hello"}]
    rendered = AutoTokenizer.from_pretrained(tiny_model).apply_chat_template(
        chat, add_generation_prompt=True, tokenize=False
    )
    assert rendered.endswith("<|assistant|>")
    async with Node("caller", discovery=discovery, mesh=home) as node:
        answer = await node.request("chatter", "chat", {"messages": chat, "max_new_tokens": 12})
        same = await node.request("chatter", "generate", {"prompt": rendered, "max_new_tokens": 12})
    assert answer["text"] == same["text"] and answer["tokens"] == 12


@pytest.mark.asyncio
async def test_leaving_the_stream_stops_the_model(llm, discovery, home):
    llm("stoppable")
    body = {"prompt": "Hello", "max_new_tokens": 1000}
    async with Node("caller", discovery=discovery, mesh=home) as node:
        async with contextlib.aclosing(node.stream("stoppable", "generate_stream", body)) as s:
            first = [await anext(s) for _ in range(3)]
        assert [c["tokens"] for c in first] == [1, 2, 3]

        async def stopped():
            status = await node.request("stoppable", "status", timeout=10)
            return status if status["active_tokens"] is None and status["last"] else None

        status = await eventually(stopped)
    assert status["cancelled"] == 1 and status["served"] == 0
    assert status["last"]["finish_reason"] == "cancelled"
    assert status["last"]["tokens"] < 100  # of 1000 asked for


@pytest.mark.asyncio
async def test_a_slow_reader_throttles_generation(llm, discovery, home):
    llm("throttled")
    body = {"prompt": "Hello", "max_new_tokens": 400}
    async with Node("caller", discovery=discovery, mesh=home) as node:
        stream = node.stream("throttled", "generate_stream", body, window=2)
        async with contextlib.aclosing(stream):
            assert (await anext(stream))["tokens"] == 1
            # not reading: the mesh sends what we granted, the model runs ahead as far as
            # it may, then it must wait for us
            await eventually(lambda: spent_stream_credit(node, "throttled"))
            paused = await eventually(
                lambda: _produced_at_least(node, "throttled", THROTTLED_TOKENS)
            )
            assert node.drops.get("no_credit", 0) == 0  # nothing beyond our window came
            rest = [chunk async for chunk in stream]
    assert paused["active_tokens"] <= THROTTLED_TOKENS
    assert rest[-1]["done"] and rest[-1]["tokens"] == 400  # and it resumed to the end


async def _produced_at_least(node, name: str, tokens: int) -> dict | None:
    """The model's status once it has produced at least ``tokens`` of its generation."""
    status = await node.request(name, "status", timeout=10)
    return status if (status["active_tokens"] or 0) >= tokens else None


@pytest.mark.asyncio
async def test_a_full_queue_refuses_with_overloaded_and_queued_requests_say_where(
    llm, discovery, home
):
    llm("busy", "--max-queue", "1")
    body = {"prompt": "Hello", "max_new_tokens": 300}
    async with Node("caller", discovery=discovery, mesh=home) as node:
        results = await asyncio.gather(
            *(node.request("busy", "generate", body, timeout=60) for _ in range(4)),
            return_exceptions=True,
        )
        status = await node.request("busy", "status", timeout=10)
    refused = [r for r in results if isinstance(r, Overloaded)]
    answered = [r for r in results if isinstance(r, dict)]
    assert len(refused) + len(answered) == 4
    assert len(refused) >= 1 and "limit 1" in str(refused[0])
    assert [r.get("queued") for r in answered if "queued" in r] in ([1], [])
    assert status["refused"] == len(refused)


@pytest.mark.asyncio
async def test_bad_parameters_are_bad_requests_with_the_rule(llm, discovery, home):
    llm("strict")
    async with Node("caller", discovery=discovery, mesh=home) as node:
        for body, rule in [
            ({"prompt": "x", "temprature": 1}, "unknown parameter 'temprature'"),
            ({"prompt": "x", "max_new_tokens": 5000}, "max_new_tokens must be an integer from 1"),
            ({"prompt": "x", "top_p": 0}, "top_p must be above 0"),
            ({"prompt": 3}, "prompt must be a string"),
        ]:
            with pytest.raises(BadRequest, match=rule) as refused:
                await node.request("strict", "generate", body, timeout=30)
            assert refused.value.remote_type == "InvalidArgument"
        with pytest.raises(BadRequest, match="exceed the model's context of 1024"):
            await node.request("strict", "generate", {"prompt": "a " * 900, "max_new_tokens": 1000})


def test_peers_shows_the_card_and_run_errors_are_one_line(llm, spawn, discovery, home):
    llm("carded")
    peers = spawn("peers", "--discovery", discovery, "--json")
    listed = json.loads("\n".join(peers.lines(10_000, timeout=30)))
    card = next(p for p in listed if p["name"] == "carded")["meta"]["card"]
    assert card["kind"] == "LLMAgent" and card["description"] == DESCRIPTION
    assert {m["name"] for m in card["methods"]} >= {"generate", "generate_stream", "chat_stream"}
    assert next(m for m in card["methods"] if m["name"] == "chat_stream")["streams"] is True
    table = spawn("peers", "--discovery", discovery)
    assert table.wait_line(f"LLMAgent: {DESCRIPTION}")

    missing = spawn("run", LLM, "--name", "x", "--discovery", discovery, "--model", "/nowhere")
    assert missing.popen.wait(60) != 0
    error = missing.popen.stderr.read().strip()
    assert error == "mesh: error: model directory /nowhere does not exist or is not a directory"
    unknown = spawn("run", LLM, "--name", "y", "--discovery", discovery, "--modle", "m")
    assert unknown.popen.wait(60) != 0
    assert "unrecognized arguments: --modle" in unknown.popen.stderr.read()


async def stream_and_move(node, body, to: str, before=None) -> list:
    """The writer's streamed generation, read through a window of 2 so that it is held
    mid-way; after the third chunk its reader asks for it to move to ``to``."""
    stream = node.stream("writer", "generate_stream", body, timeout=60, window=2)
    chunks = []
    async with contextlib.aclosing(stream):
        async for chunk in stream:
            chunks.append(chunk)
            if len(chunks) == 3:
                if before is not None:
                    await before()
                assert await node.request("writer", "move", {"to": to}) == {"moving": True}
    return chunks


@pytest.mark.asyncio
async def test_a_generation_moved_mid_stream_goes_on_token_exactly_from_the_replica(
    llm, discovery, home
):
    """An API call moves a running generation to a replica of the same model: the reader's
    stream goes on without a gap, a repeat or a reordering, and the text is the one the
    generation would have had unmoved (seeded sampling: its generator moved too)."""
    llm("writer")
    llm("replica")
    body = {"prompt": "Your order", "max_new_tokens": 40, "temperature": 0.9, "seed": 5}
    async with Node("caller", discovery=discovery, mesh=home) as node:
        unmoved = await node.request("replica", "generate", body, timeout=60)
        chunks = await stream_and_move(node, body, "replica")
        status = await node.request("replica", "status")
    *texts, done = chunks
    counts = [c["tokens"] for c in texts]
    assert counts == sorted(set(counts))  # every chunk once, in order, across the move
    assert "".join(c["text"] for c in texts) == unmoved["text"]
    assert done["moved_to"] == "replica" and 3 <= done["moved_at"] < 40
    assert done["tokens"] == unmoved["tokens"] == 40 and done["finish_reason"] == "length"
    assert status["served"] == 2  # the unmoved run, and the moved one's rest


@pytest.mark.asyncio
async def test_a_move_the_target_refuses_goes_on_where_it_was(llm, discovery, home, tmp_path):
    """The agent named cannot take the generation (another model: refused before any of
    the state is used): the generation goes on where it was, and its reader, who asked for
    the move, sees the same text an unmoved run gives. Nobody else may move it."""
    from agents.tiny import build_random_model

    other = build_random_model(tmp_path / "other", layers=3, width=64, heads=2)
    llm("writer")
    llm("stranger", "--model", str(other))  # the last --model wins: another model
    body = {"prompt": "Your order", "max_new_tokens": 40, "temperature": 0.9, "seed": 5}
    async with (
        Node("caller", discovery=discovery, mesh=home) as node,
        Node("mallory", discovery=discovery, mesh=home) as mallory,
    ):
        unmoved = await node.request("writer", "generate", body, timeout=60)

        async def hijack() -> None:
            with pytest.raises(BadRequest, match="only the caller"):
                await mallory.request("writer", "move", {"to": "mallory"})

        chunks = await stream_and_move(node, body, "stranger", before=hijack)
        status = await node.request("writer", "status")
    *texts, done = chunks
    assert "".join(c["text"] for c in texts) == unmoved["text"]
    assert [c["tokens"] for c in texts] == sorted({c["tokens"] for c in texts})
    assert done["tokens"] == 40 and "moved_to" not in done
    assert status["served"] == 2 and status["failed"] == 0
