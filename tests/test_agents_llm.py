"""LLMAgent across real processes: the tiny local model loaded by the real loading code,
streamed over the mesh, cancelled, throttled by a slow reader, queued and refused."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal

import pytest

from agents.tiny import build_tiny_model
from mesh import BadRequest, Overloaded, PeerLost
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


async def stream_and_move(node, body, to: str, before=None, *, follow=True) -> list:
    """The writer's streamed generation, read through a window of 2 so that it is held
    mid-way; after the third chunk its reader asks for it to move to ``to``."""
    stream = node.stream(
        "writer", "generate_stream", body, timeout=60, window=2, follow_redirects=follow
    )
    chunks = []
    async with contextlib.aclosing(stream):
        async for chunk in stream:
            chunks.append(chunk)
            if len(chunks) == 3:
                if before is not None:
                    await before()
                assert await node.request("writer", "move", {"to": to}) == {"moving": True}
    return chunks


def assert_one_stream(chunks: list, unmoved: dict) -> dict:
    """Every chunk once, in order, joined to the text of the unmoved run; the end."""
    *texts, done = chunks
    counts = [c["tokens"] for c in texts]
    assert counts == sorted(set(counts))  # no repeat, no reordering, across the move
    assert "".join(c["text"] for c in texts) == unmoved["text"]
    assert done["done"] and done["tokens"] == unmoved["tokens"]
    assert done["finish_reason"] == unmoved["finish_reason"]
    return done


@pytest.mark.asyncio
@pytest.mark.parametrize("follow", [True, False], ids=["redirected", "relayed"])
async def test_a_generation_moved_mid_stream_goes_on_token_exactly_from_the_replica(
    llm, discovery, home, follow
):
    """An API call moves a running generation to a replica of the same model: the reader's
    stream goes on without a gap, a repeat or a reordering, and the text is the one the
    generation would have had unmoved (seeded sampling: its generator moved too). A reader
    that follows redirects then reads the replica directly; one that does not gets the
    rest through the writer."""
    llm("writer")
    llm("replica")
    body = {"prompt": "Your order", "max_new_tokens": 40, "temperature": 0.9, "seed": 5}
    async with Node("caller", discovery=discovery, mesh=home) as node:
        unmoved = await node.request("replica", "generate", body, timeout=60)
        chunks = await stream_and_move(node, body, "replica", follow=follow)
        writer = await node.request("writer", "status")
        replica = await node.request("replica", "status")
    done = assert_one_stream(chunks, unmoved)
    assert done["moved_to"] == "replica" and 3 <= done["moved_at"] < 40
    assert done.get("moved_from") == ("writer" if follow else None)  # said by the replica
    assert writer["moved"] == 1 and writer["served"] == 0
    assert replica["served"] == 2  # the unmoved run, and the moved one's rest


@pytest.mark.asyncio
async def test_a_move_to_another_model_is_refused_before_any_state_is_sent(
    llm, discovery, home, tmp_path
):
    """The agent named serves another model (its card's fingerprint differs): the move is
    one BadRequest, no state leaves, and the generation goes on where it was; its reader
    sees the text an unmoved run gives. Nobody but the reader may move it."""
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
        stream = node.stream("writer", "generate_stream", body, timeout=60, window=2)
        async with contextlib.aclosing(stream):
            chunks = [await anext(stream)]
            with pytest.raises(BadRequest, match="only the caller"):
                await mallory.request("writer", "move", {"to": "mallory"})
            with pytest.raises(BadRequest, match="not a live agent serving this same model"):
                await node.request("writer", "move", {"to": "stranger"})
            chunks += [chunk async for chunk in stream]
        writer = await node.request("writer", "status")
        stranger = await node.request("stranger", "status")
    assert "moved_to" not in assert_one_stream(chunks, unmoved)
    assert writer["served"] == 2 and writer["moved"] == 0
    assert stranger["served"] == 0 and stranger["failed"] == 0  # it never saw a state


@pytest.mark.asyncio
async def test_mesh_drain_moves_two_generations_to_the_replica_and_ends_the_agent(
    llm, spawn, discovery, home
):
    """`mesh drain` on an agent with one generation running and one waiting: both finish
    on the replica, each reader saw every token once (the text of an unmoved run), and the
    drained process leaves the directory and exits 0."""
    writer = llm("writer", "--max-queue", "2")
    llm("replica")
    bodies = [
        {"prompt": "Your order", "max_new_tokens": 60, "temperature": 0.9, "seed": 5},
        {"prompt": "The invoice", "max_new_tokens": 60, "seed": 11},  # greedy
    ]
    async with Node("caller", discovery=discovery, mesh=home) as node:
        unmoved = [await node.request("replica", "generate", b, timeout=60) for b in bodies]
        streams = [node.stream("writer", "generate_stream", b, timeout=60, window=1)
                   for b in bodies]  # fmt: skip
        first = [await anext(streams[0]), await anext(streams[1])]
        assert "text" in first[0] and first[1] == {"queued": 1}  # one runs, one waits
        drained = spawn("drain", "writer", "--discovery", discovery, "--timeout", "60")
        await eventually(lambda: _draining(node, "writer"), timeout=60)  # held till then
        rest = await asyncio.gather(*(_read_all(stream) for stream in streams))
        answer = json.loads(drained.wait_line('"drained"', timeout=90))
        assert drained.popen.wait(30) == 0 and writer.popen.wait(60) == 0
        names = {info.name for info in await node.peers()}
        replica = await node.request("replica", "status")
    assert answer == {"drained": "writer", "moved": 2, "finished_here": 0, "still_running": 0}
    assert "writer" not in names
    assert assert_one_stream([first[0], *rest[0]], unmoved[0])["moved_from"] == "writer"
    done = assert_one_stream(rest[1], unmoved[1])
    assert done["moved_from"] == "writer" and done["moved_at"] == 0  # moved before it ran
    assert replica["served"] == 4


async def _draining(node, name: str) -> bool:
    return (await node.request(name, "status", timeout=10))["draining"]


async def _read_all(stream) -> list:
    async with contextlib.aclosing(stream):
        return [chunk async for chunk in stream]


@pytest.mark.asyncio
@pytest.mark.parametrize("replica", [True, False], ids=["to-a-replica", "no-replica"])
async def test_sigterm_under_run_drain_hands_the_generation_over_then_exits_0(
    llm, discovery, home, replica
):
    """SIGTERM under --drain: the generation moves to the replica; with none, the drain
    waits for it (within its bound) instead of dropping it, and the reader gets all of it
    from the agent it began on. Either way the reader sees one whole stream, and exit 0."""
    writer = llm("writer", "--drain", "60")
    if replica:
        llm("replica")
    body = {"prompt": "Your order", "max_new_tokens": 60, "temperature": 0.9, "seed": 5}
    async with Node("caller", discovery=discovery, mesh=home) as node:
        unmoved = await node.request("writer", "generate", body, timeout=60)
        stream = node.stream("writer", "generate_stream", body, timeout=60, window=1)
        first = await anext(stream)
        writer.popen.send_signal(signal.SIGTERM)
        await eventually(lambda: _draining(node, "writer"), timeout=60)  # held till then
        rest = await _read_all(stream)
        assert writer.popen.wait(60) == 0
    done = assert_one_stream([first, *rest], unmoved)
    assert done.get("moved_from") == ("writer" if replica else None)
    summary = '{"moved": 1, "finished_here": 0' if replica else '"finished_here": 1'
    assert writer.wait_line(summary, timeout=10)


@pytest.mark.asyncio
async def test_a_mover_killed_mid_transfer_leaves_nothing_half_taken(
    llm, discovery, home, tmp_path
):
    """GPT-2 small's shape: the writer hands a generation of some 300 tokens (a state of
    about 20 MB) to a replica that is stopped (SIGSTOP), so the state fills the socket
    buffers and waits half-sent (the kernel's queue toward the replica shows it), and the
    writer is killed (SIGKILL) there. The replica,
    let go on, holds nothing of it (ZeroMQ delivers a message whole or not at all, and a
    whole one is checked whole before it is held), serves the next request as before, and
    the reader gets one typed error: no hang, nothing made up."""
    from agents.tiny import build_random_model

    model = str(build_random_model(tmp_path / "gpt2", layers=12, width=768, heads=12))
    writer = llm("writer", "--model", model)
    replica = llm("replica", "--model", model)
    prompt = "Your order is on its way and the invoice follows by mail. " * 25
    body = {"prompt": prompt, "max_new_tokens": 300, "seed": 5}
    async with Node("caller", discovery=discovery, mesh=home, heartbeat=0.5) as node:
        # a session from the writer to the replica, as a first move makes it
        first = await stream_and_move(node, {**body, "max_new_tokens": 8}, "replica")
        assert first[-1]["moved_to"] == "replica"
        stream = node.stream("writer", "generate_stream", body, timeout=60, window=1)
        chunks = [await anext(stream)]
        replica.popen.send_signal(signal.SIGSTOP)
        try:
            assert await node.request("writer", "move", {"to": "replica"}) == {"moving": True}
            reading = asyncio.create_task(_read_all(stream))  # the writer may capture now
            await eventually(lambda: _handing_over(node), timeout=60)
            port = int(replica.endpoint().rsplit(":", 1)[1])
            await eventually(lambda: _unsent_to(port), timeout=60)  # on the wire, stuck
            writer.popen.kill()
        finally:
            replica.popen.send_signal(signal.SIGCONT)
        with pytest.raises(PeerLost):
            chunks += await reading
        after = await node.request("replica", "status", timeout=30)
        again = await node.request("replica", "generate", {**body, "max_new_tokens": 4})
    assert after["adopted"] == 0 and after["failed"] == 0
    assert again["tokens"] == 4 and again["finish_reason"] == "length"
    assert all("text" in chunk for chunk in chunks)


async def _unsent_to(port: int) -> bool:
    """Whether a loopback TCP connection to ``port`` holds bytes its receiver has not
    taken (the tx_queue column of /proc/net/tcp): a message stuck half-sent."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                queue = fields[4].split(":")[0]
                if int(fields[2].rsplit(":", 1)[1], 16) == port and int(queue, 16) > 0:
                    return True
    return False


async def _handing_over(node) -> bool:
    return (await node.request("writer", "status", timeout=10))["handing_over"]


@pytest.mark.asyncio
async def test_decode_on_splits_prefill_and_decoding_between_two_agents(llm, discovery, home):
    """``decode_on``: one agent computes the prompt (and the first token), the named one
    decodes the rest from the shipped cache; the reader sees the text of one agent's run.
    An agent that does not serve the same model is refused up front."""
    llm("prefill")
    llm("decoder")
    body = {"prompt": "Your order", "max_new_tokens": 30, "temperature": 0.9, "seed": 7}
    async with Node("caller", discovery=discovery, mesh=home) as node:
        alone = await node.request("decoder", "generate", body, timeout=60)
        split = {**body, "decode_on": "decoder"}
        chunks = await _read_all(node.stream("prefill", "generate_stream", split, timeout=60))
        with pytest.raises(BadRequest, match="not an agent serving this model"):
            await node.request("prefill", "generate", {**body, "decode_on": "nobody"})
    done = assert_one_stream(chunks, alone)
    assert done["moved_from"] == "prefill"
    assert done["moved_at"] == 1


@pytest.mark.asyncio
async def test_a_reader_that_asked_for_a_restart_gets_the_whole_answer_when_its_agent_dies(
    llm, discovery, home
):
    """The writer is killed mid-answer. A reader using agents.recovery (the caller asked
    for a restart) gets the same generation from the replica, from the prompt, and only
    what it had not read: the text of an uninterrupted run. A generation that is not
    reproducible (sampled, no seed) is not restarted: one typed error."""
    from agents.recovery import stream_generation

    writer = llm("writer")
    llm("replica")
    body = {"prompt": "Your order", "max_new_tokens": 200, "temperature": 0.9, "seed": 5}
    async with Node("caller", discovery=discovery, mesh=home, heartbeat=0.5) as node:
        unmoved = await node.request("replica", "generate", body, timeout=60)
        agents = ["writer", "replica"]
        stream = stream_generation(node, agents, "generate_stream", body, window=1)
        chunks = [await anext(stream), await anext(stream)]
        writer.popen.kill()
        chunks += await _read_all(stream)
        second = llm("writer-2")
        unseeded = {"prompt": "Your order", "max_new_tokens": 200, "temperature": 0.9}
        stream = stream_generation(node, ["writer-2", "replica"], "generate_stream", unseeded,
                                   window=1)  # fmt: skip
        await anext(stream)
        second.popen.kill()
        with pytest.raises(PeerLost):
            await _read_all(stream)
    done = assert_one_stream(chunks, unmoved)
    assert done["restarted_on"] == "replica"


def test_mesh_bench_migration_prints_and_writes_the_cost_table(spawn, tmp_path):
    """`mesh bench --migration`: the state's bytes, the move beside recomputing and beside
    raw pyzmq, and the prefill/decode split, for each context asked."""
    out = tmp_path / "migration.json"
    bench = spawn("bench", "--migration", "--contexts", "16,64", "--runs", "1", "--json",
                  str(out))  # fmt: skip
    assert bench.popen.wait(START_S + 200) == 0, bench.popen.stderr.read()[-2000:]
    printed = "\n".join(bench.lines(10_000, timeout=10))
    assert "move to next token ms" in printed and "raw pyzmq, same bytes ms" in printed
    assert "prefill/decode split, 16 tokens" in printed
    rows = json.loads(out.read_text())["migration"]["rows"]
    assert all(row["context"] <= limit for row, limit in zip(rows, (16, 64), strict=True))
    assert rows[0]["bytes"] < rows[1]["bytes"]  # a longer context, a larger cache
    for row in rows:
        assert all(len(row[key]) == 1 and row[key][0] > 0 for key in (
            "capture_ms", "move_ms", "recompute_ms", "raw_ms", "split_ttft_ms",
            "split_total_ms", "alone_ttft_ms", "alone_total_ms"))  # fmt: skip
