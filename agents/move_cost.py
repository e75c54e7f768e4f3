"""What moving a generation costs beside what it saves: ``mesh bench --migration``.

Two LLM agents serve the same model (by default GPT-2 small's shape with random weights: 12
layers, 768 wide, 12 heads, and 2,048 positions so that 1,024 tokens of context leave room
to generate) in their own processes; the bench runs the same model here. For each context
length, in interleaved turns (one of each per run, so a slow spell of the machine hits all
alike):

- **move**: a generation of that context, one token in, is captured here and handed to the
  agent (``adopt``: sealed, sent, checked whole there), then ``resume``d: timed from the
  capture to the next token's chunk arriving here;
- **recompute**: the agent's ``generate_stream`` of the same context from scratch: the
  prefix computed again, then its first token, arriving here;
- **raw pyzmq**: the state's tensors sent as two frames of one message to a process that
  answers once it has them: the wire's floor for the same bytes;
- **prefill/decode split**: ``generate_stream`` on one agent with ``decode_on`` the other
  (the prompt computed on the first, the cache shipped, the rest decoded on the second),
  beside the decoding agent generating alone: time to first token and to the last of
  ``SPLIT_TOKENS``. On one machine the split can only cost (both agents share its cores);
  it pays where the decoding agent is busy or on other hardware.

Figures are medians with the lowest and highest of the runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from mesh import MeshDirectory, MeshProcess, Node

from .decoding import Decoder, capture
from .generation import GenerationParams
from .models import load_causal_lm
from .tiny import build_random_model

CONTEXTS = (64, 512, 1024)
POSITIONS = 2048  # the model's longest context: 1,024 of prompt and what is generated
SPLIT_TOKENS = 16  # what the split and the lone agent generate
START_S = 180.0  # an agent process importing torch and loading the model on a busy machine
RAW_SINK = """
import sys, zmq
socket = zmq.Context().socket(zmq.ROUTER)
port = socket.bind_to_random_port("tcp://127.0.0.1")
print(port, flush=True)
while True:
    parts = socket.recv_multipart(copy=False)
    socket.send_multipart([parts[0], b"ok"])
"""


def measure(
    contexts: tuple[int, ...] = CONTEXTS,
    runs: int = 5,
    model: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Start the agents, measure every context ``runs`` times (after one warm-up), stop
    them; the figures as a JSON-able dict (:func:`table` renders it). ``device``: where
    the agents and this process keep the model and the cache (``cuda`` on a GPU)."""
    described = model or "GPT-2 small's shape, random weights"
    with tempfile.TemporaryDirectory() as home:
        mesh = MeshDirectory(Path(home))
        mesh.create()
        if model is None:
            model = str(build_random_model(
                Path(home) / "gpt2-small", layers=12, width=768, heads=12, positions=POSITIONS
            ))  # fmt: skip
        children = [MeshProcess(mesh, "discovery", "--bind", "tcp://127.0.0.1:0")]
        try:
            url = children[0].endpoint()
            for name in ("agent", "prefill"):
                children.append(MeshProcess(
                    mesh, "run", "--discovery", url, "agents.llm:LLMAgent", "--name", name,
                    "--model", model, "--token-limit", str(POSITIONS), "--device", device,
                    name=name,
                    log=Path(home) / f"{name}.log",
                ))  # fmt: skip
            for child in children[1:]:
                child.endpoint(START_S)
            rows = asyncio.run(_measure(url, mesh, model, contexts, runs, device))
        finally:
            for child in reversed(children):
                child.stop()
    machine = f"{_machine()}; the cache on {device}"
    return {"model": described, "machine": machine, "runs": runs, "rows": rows}


async def _measure(
    url: str,
    mesh: MeshDirectory,
    model: str,
    contexts: tuple[int, ...],
    runs: int,
    device: str,
) -> list[dict[str, Any]]:
    tokenizer, lm, _ = load_causal_lm(model, device)
    decoder = Decoder(lm, tokenizer)
    sink = subprocess.Popen([sys.executable, "-c", RAW_SINK], stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    ready, _, _ = select.select([sink.stdout], [], [], START_S)
    port = sink.stdout.readline().strip() if ready else ""
    if not port.isdigit():
        sink.kill()
        raise RuntimeError("the raw pyzmq sink did not start")
    raw = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    raw.connect(f"tcp://127.0.0.1:{port}")
    rows = []
    try:
        async with Node("bench", discovery=url, mesh=mesh) as node:
            for context in contexts:
                prompt = prompt_of(tokenizer, context)
                ids = tokenizer(prompt)["input_ids"]  # what the agents make of the prompt
                row: dict[str, Any] = {"context": len(ids)}
                for run in range(runs + 1):  # run 0 warms up
                    figures = {
                        **await _move(node, decoder, ids),
                        **await _recompute(node, prompt),
                        **await _split(node, prompt),
                    }
                    figures["raw_ms"] = await _raw(raw, figures.pop("tensors"))
                    if run:
                        for key, value in figures.items():
                            row.setdefault(key, []).append(value)
                row["bytes"] = row.pop("bytes")[0]
                rows.append(row)
    finally:
        raw.close(0)
        sink.kill()
        sink.wait()
    return rows


async def _move(node: Node, decoder: Decoder, ids: list[int]) -> dict[str, Any]:
    generation = decoder.start(ids, GenerationParams(max_new_tokens=4))
    decoder.step(generation)  # the context is in the cache: mid-generation
    started = time.perf_counter()
    state = capture(decoder, generation)
    captured = time.perf_counter()
    handed = {"state": state, "reader": node.name}
    ticket = await node.request("agent", "adopt", handed, timeout=120)
    await _first_text(node.stream("agent", "resume", ticket, timeout=120))
    moved = time.perf_counter()
    tensors = [state["keys"].numpy(), state["values"].numpy()]
    return {
        "bytes": sum(t.nbytes for t in tensors) + len(bytes(state["generator"])),
        "capture_ms": (captured - started) * 1e3,
        "move_ms": (moved - started) * 1e3,
        "tensors": tensors,
    }


async def _recompute(node: Node, prompt: str) -> dict[str, float]:
    started = time.perf_counter()
    body = {"prompt": prompt, "max_new_tokens": 4}
    await _first_text(node.stream("agent", "generate_stream", body, timeout=120))
    return {"recompute_ms": (time.perf_counter() - started) * 1e3}


async def _split(node: Node, prompt: str) -> dict[str, float]:
    """Time to first token and to the end: prefill on one agent and decoding on the other,
    then the decoding agent alone (a fixed seed: the same tokens both ways)."""
    body = {"prompt": prompt, "max_new_tokens": SPLIT_TOKENS, "temperature": 0.9, "seed": 1}
    figures = {}
    for label, peer, extra in (("split", "prefill", {"decode_on": "agent"}),
                               ("alone", "agent", {})):  # fmt: skip
        started = time.perf_counter()
        first = None
        async with contextlib.aclosing(
            node.stream(peer, "generate_stream", {**body, **extra}, timeout=120)
        ) as chunks:
            async for chunk in chunks:
                if first is None and "text" in chunk:
                    first = time.perf_counter()
        ended = time.perf_counter()
        figures[f"{label}_ttft_ms"] = ((first or ended) - started) * 1e3
        figures[f"{label}_total_ms"] = (ended - started) * 1e3
    return figures


async def _raw(raw: zmq.asyncio.Socket, tensors: list[Any]) -> float:
    started = time.perf_counter()
    await raw.send_multipart(tensors, copy=False)
    await raw.recv()
    return (time.perf_counter() - started) * 1e3


async def _first_text(chunks: AsyncIterator[dict[str, Any]]) -> None:
    """Until the first chunk of text; the stream is then closed (the agent stops)."""
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            if "text" in chunk:
                return


def prompt_of(tokenizer: Any, context: int) -> str:
    """Text of at most ``context`` tokens, as many as whole words allow."""
    words = ("Your order is on its way and the invoice follows by mail. " * context).split()
    low, high = 1, len(words)
    while low < high:  # the most words whose text stays within the context
        middle = (low + high + 1) // 2
        if len(tokenizer(" ".join(words[:middle]))["input_ids"]) <= context:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low])


def table(measured: dict[str, Any]) -> str:
    """The figures as text: one line per context length, then the split."""
    spread = _spread
    lines = [
        f"model: {measured['model']}; {measured['runs']} runs; {measured['machine']}",
        "context   state MB   capture ms   move to next token ms   recompute to next "
        "token ms   raw pyzmq, same bytes ms",
    ]
    for row in measured["rows"]:
        lines.append(
            f"{row['context']:>7} {row['bytes'] / 1e6:>10.1f} {spread(row['capture_ms']):>12} "
            f"{spread(row['move_ms']):>23} {spread(row['recompute_ms']):>28} "
            f"{spread(row['raw_ms']):>26}"
        )
    lines += [
        "",
        f"prefill/decode split, {SPLIT_TOKENS} tokens: first token and last token, ms",
        "context   split: first   split: last   decoding agent alone: first   alone: last",
    ]
    for row in measured["rows"]:
        lines.append(
            f"{row['context']:>7} {spread(row['split_ttft_ms']):>14} "
            f"{spread(row['split_total_ms']):>13} {spread(row['alone_ttft_ms']):>29} "
            f"{spread(row['alone_total_ms']):>13}"
        )
    lines.append(
        "(median of the runs, lowest-highest in brackets; move: capture, seal, send, check "
        "and restore there, one token; the split and the agent alone share this machine)"
    )
    return "\n".join(lines)


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.0f}-{max(values):.0f})"


def _machine() -> str:
    import torch

    return (
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}, Python {platform.python_version()}"
    )
