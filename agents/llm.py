"""``LLMAgent``: a causal language model on the mesh, streamed token by token.

    mesh run agents.llm:LLMAgent --name billing --model DIR \\
        --description "Billing: invoices, refunds and payment methods"

Methods: ``generate`` / ``generate_stream`` (a prompt), ``chat`` / ``chat_stream`` (a list of
messages, through the tokenizer's chat template where it has one), ``converse`` (a
conversation with another LLM agent through the mesh), ``move`` (hand the running
generation, at its next token, to a replica of the same model: its ``resume`` continues it
from the captured state, token-exactly, and the stream is passed on) and ``status``. Parameters are
checked by :class:`~agents.generation.GenerationParams` (``max_new_tokens``,
``temperature``, ``top_p``, ``stop``, ``seed``): a wrong one is a :class:`mesh.BadRequest`.

One generation runs at a time (it uses every core, or the GPU); up to ``max_queue`` more
wait in order, and a streamed reply's first chunk then says ``{"queued": position}``;
beyond that a request fails at once with :class:`mesh.Overloaded`. Streamed chunks are
``{"text", "tokens", "t"}`` (``t``: when the model produced it, Unix seconds, so a reader on
the same clock can measure the mesh's share), then ``{"done": true, ...}`` with the finish
reason and timings. A reader that stops reading pauses the model; one that leaves stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mesh import CallContext, InvalidArgument, MeshError, Overloaded

from .admission import Admission
from .base import Agent, method
from .decoding import Decoder, Generation, capture
from .generation import GenerationParams, check_fields, messages_of, prompt_of
from .models import load_causal_lm
from .streaming import DONE, Bridge
from .tiny import is_tiny_model

DEFAULT_MAX_QUEUE = 8
DEFAULT_TOKEN_LIMIT = 1024
LOOKAHEAD = 2  # chunks the model may run ahead of what the mesh has sent
MAX_TURNS = 20
log = logging.getLogger("agents")
RESUME_TIMEOUT_S = 60.0  # the most a moved generation's next chunk may take to come
PARAMS_CARD = {
    "max_new_tokens": "int, 1..limit (default 64)",
    "temperature": "float 0..5, 0 = greedy (default 0)",
    "top_p": "float (0, 1] (default 1)",
    "stop": "string or list of strings that end the text",
    "seed": "int, repeatable sampling",
}


class MoveFailed(MeshError):
    """The agent a generation moved to answered with something that does not continue it."""


class LLMAgent(Agent):
    """A causal LM from ``model`` (a local directory, or a hub id where there is network)."""

    description = "A general assistant that answers questions in plain text."
    default_method = "chat_stream"

    def __init__(
        self,
        name: str,
        *,
        model: str,
        device: str = "auto",
        max_queue: int = DEFAULT_MAX_QUEUE,
        token_limit: int = DEFAULT_TOKEN_LIMIT,
        **options: Any,
    ) -> None:
        if not model:
            raise InvalidArgument("LLMAgent needs --model DIR")
        if token_limit < 1:
            raise InvalidArgument("token_limit must be at least 1")
        super().__init__(name, **options)
        self.model_source = model
        self.device = device
        self.token_limit = token_limit
        self.admission = Admission(max_queue)
        self.tokenizer: Any = None
        self.model: Any = None
        self.decoder: Decoder
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-generate")
        self._active: Bridge | None = None
        self.counts = {"served": 0, "cancelled": 0, "failed": 0}
        self.last: dict[str, Any] | None = None  # the last generation's end and length

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", default="", help="model directory (or hub id)")
        parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
        parser.add_argument(
            "--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
            help=f"generations waiting beyond the running one (default {DEFAULT_MAX_QUEUE})",
        )  # fmt: skip
        parser.add_argument(
            "--token-limit", type=int, default=DEFAULT_TOKEN_LIMIT,
            help=f"the most max_new_tokens a caller may ask (default {DEFAULT_TOKEN_LIMIT})",
        )  # fmt: skip

    async def setup(self) -> None:
        loop = asyncio.get_running_loop()
        self.tokenizer, self.model, self.device = await loop.run_in_executor(
            self._executor, load_causal_lm, self.model_source, self.device
        )
        # the model's fingerprint (a pass over its weights): what a generation moved here
        # from another agent must carry
        self.decoder = await loop.run_in_executor(
            self._executor, Decoder, self.model, self.tokenizer
        )

    async def teardown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ methods

    @method("Continue a prompt; the whole text at once.", params={"prompt": "str", **PARAMS_CARD})
    async def generate(self, body: Any, ctx: CallContext) -> dict[str, Any]:
        return await _collect(self.generate_stream(body, ctx))

    @method("Continue a prompt, streamed.", params={"prompt": "str", **PARAMS_CARD})
    async def generate_stream(self, body: Any, ctx: CallContext) -> AsyncIterator[dict[str, Any]]:
        fields = check_fields(body, "prompt")
        async for chunk in self._generation(prompt_of(fields), fields, ctx.peer):
            yield chunk

    @method("Answer a chat; the whole reply at once.", params={"messages": "[{role, content}]"})
    async def chat(self, body: Any, ctx: CallContext) -> dict[str, Any]:
        return await _collect(self.chat_stream(body, ctx))

    @method("Answer a chat, streamed.", params={"messages": "[{role, content}]", **PARAMS_CARD})
    async def chat_stream(self, body: Any, ctx: CallContext) -> AsyncIterator[dict[str, Any]]:
        fields = check_fields(body, "messages")
        prompt = self.chat_prompt(messages_of(fields))
        async for chunk in self._generation(prompt, fields, ctx.peer):
            yield chunk

    @method(
        "Hold a conversation with another LLM agent through the mesh, streamed turn by turn.",
        params={"with": "agent name", "opening": "str", "turns": f"int 1..{MAX_TURNS}"},
    )
    async def converse(self, body: Any, ctx: CallContext) -> AsyncIterator[dict[str, Any]]:
        if not isinstance(body, dict) or not isinstance(body.get("with"), str):
            raise InvalidArgument("converse needs {'with': agent name, 'opening': text}")
        turns = body.get("turns", 4)
        if type(turns) is not int or not 1 <= turns <= MAX_TURNS:
            raise InvalidArgument(f"turns must be an integer from 1 to {MAX_TURNS}")
        opening = body.get("opening", "Hello.")
        params = {k: v for k, v in body.items() if k not in ("with", "turns", "opening")}
        GenerationParams.from_body(params, limit=self.token_limit)  # fail before turn one
        transcript: list[tuple[str, str]] = [(ctx.peer, str(opening))]
        partner = body["with"]
        for turn in range(turns):
            speaker = self.name if turn % 2 == 0 else partner
            view = [
                {"role": "assistant" if who == speaker else "user", "content": text}
                for who, text in transcript
            ]
            if speaker == self.name:
                chunks = self.chat_stream({"messages": view, **params}, ctx)
            else:
                chunks = self.node.stream(partner, "chat_stream", {"messages": view, **params})
            said = []
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    if "text" in chunk:
                        said.append(chunk["text"])
                        yield {"turn": turn, "speaker": speaker, "text": chunk["text"]}
            transcript.append((speaker, "".join(said)))
        yield {"done": True, "turns": turns}

    @method(
        "Move the generation running here to another agent serving the same model; its "
        "reader's stream goes on from there.",
        params={"to": "agent name"},
    )
    async def move(self, body: Any, ctx: CallContext) -> dict[str, Any]:
        """Ask the running generation to move (at its next token); whether one was
        running. The reader's stream is then passed on from ``to``'s ``resume``. Over the
        mesh only the generation's own caller may move it (anyone else could have it sent
        to themselves); the agent's own code calls :meth:`move_to`."""
        if not isinstance(body, dict) or not isinstance(body.get("to"), str) or not body["to"]:
            raise InvalidArgument("move needs {'to': the name of an agent with the same model}")
        active = self._active
        if active is not None and active.owner != ctx.peer:
            raise InvalidArgument("only the caller of a generation may move it")
        return {"moving": self.move_to(body["to"])}

    def move_to(self, target: str) -> bool:
        """Move the running generation to ``target`` at its next token; False when none is
        running, it has ended, or a move is already under way. If ``target`` cannot take
        it, the generation goes on here."""
        if target == self.name:
            raise InvalidArgument("a generation cannot move to the agent it runs on")
        active = self._active
        if active is None or active.ended or active.move_to is not None:
            return False
        active.move_to = target
        return True

    @method(
        "Continue a generation moved here from another agent serving the same model "
        "(its captured state), streamed.",
        params={"state": "what the moving agent captured"},
    )
    async def resume(self, body: Any, ctx: CallContext) -> AsyncIterator[dict[str, Any]]:
        if self._active is not None and self._active.move_to is not None:
            # a generation is moving away from here: taking one in could wait on it forever
            raise Overloaded("this agent is handing a generation on")
        params = body.get("params") if isinstance(body, dict) else None
        wanted = params.get("max_new_tokens") if isinstance(params, dict) else None
        if type(wanted) is int and wanted > self.token_limit:  # cheap checks first
            raise InvalidArgument(f"max_new_tokens is above this agent's {self.token_limit}")
        # checked and rebuilt off the loop (a digest over the whole cache); StateRefused,
        # a BadRequest to the mover, before any of it is used
        generation = await asyncio.to_thread(self.decoder.restore, body)
        if generation.params.max_new_tokens > self.token_limit:
            raise InvalidArgument(f"max_new_tokens is above this agent's {self.token_limit}")
        self._check_length(generation.prompt_tokens, generation.params.max_new_tokens)
        async for chunk in self._served(lambda: generation, ctx.peer):
            if "queued" not in chunk:  # the reader's stream began elsewhere: no queue news
                yield chunk

    @method("What the model is doing: queue, active generation, counts.")
    async def status(self, body: Any = None) -> dict[str, Any]:
        active = self._active
        return {
            "model": str(self.model_source),
            "device": self.device,
            "random_weights": is_tiny_model(self.model_source),
            "waiting": self.admission.waiting,
            "refused": self.admission.refused,
            "active_tokens": active.produced if active is not None else None,
            "last": self.last,
            **self.counts,
        }

    # ------------------------------------------------------------------ generation

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n".join([*lines, "Assistant:"])

    async def _generation(
        self, prompt: str, fields: dict[str, Any], owner: str
    ) -> AsyncIterator[dict[str, Any]]:
        """Chunks of one generation: maybe ``queued``, text, then ``done`` with timings."""
        params = GenerationParams.from_body(fields, limit=self.token_limit)
        encoded = self.tokenizer(prompt, return_tensors="pt")
        self._check_length(encoded["input_ids"].shape[1], params.max_new_tokens)
        prompt_ids = encoded["input_ids"][0].tolist()
        if not prompt_ids:
            raise InvalidArgument("the prompt encodes to no tokens")
        async for chunk in self._served(lambda: self.decoder.start(prompt_ids, params), owner):
            yield chunk

    async def _served(
        self, start: Callable[[], Generation], owner: str
    ) -> AsyncIterator[dict[str, Any]]:
        """Queue, then run the generation ``start`` makes (in the worker thread) to its end:
        its chunks, then ``done``. Moved to another agent meanwhile (:meth:`move`), the rest
        of its chunks are that agent's, passed on here: the reader sees one stream. If that
        agent cannot take it (absent, refusing, busy) before passing on anything, the
        generation goes on here from the state it was moved with."""
        received = time.perf_counter()
        ticket = self.admission.join()  # Overloaded if the queue is full
        try:
            if ticket.position:
                yield {"queued": ticket.position}
            await ticket.ready()
            admitted = time.perf_counter()
            first_token_at: float | None = None
            finish = "cancelled"
            moved: dict[str, Any] = {}
            while True:
                finish, going_on_here = "cancelled", False
                bridge = Bridge(asyncio.get_running_loop(), LOOKAHEAD)
                bridge.owner = owner
                bridge.first_token_at = first_token_at
                self._active = bridge
                running = asyncio.get_running_loop().run_in_executor(
                    self._executor, self._generate, start, bridge
                )
                try:
                    while (chunk := await bridge.chunks.get()) is not DONE:
                        yield chunk
                        bridge.taken()
                    finish = await running
                    if finish == "moved":
                        relay = self._moved_on(bridge, moved)
                        async with contextlib.aclosing(relay):
                            async for chunk in relay:
                                yield chunk
                        finish = moved.get("finish_reason") or "moved"
                except (asyncio.CancelledError, GeneratorExit):  # the reader left: stop it
                    bridge.cancelled.set()
                    finish = "cancelled"
                    raise
                except MeshError as exc:
                    if finish != "moved" or moved.get("relayed"):
                        bridge.cancelled.set()
                        finish = "failed"
                        raise
                    log.warning("%s could not take the generation (%s); going on here",
                                bridge.move_to, exc)  # fmt: skip
                    start = functools.partial(self.decoder.restore, bridge.state)
                    first_token_at = bridge.first_token_at
                    moved.clear()
                    going_on_here = True
                    continue
                except Exception:
                    bridge.cancelled.set()
                    finish = "failed"
                    raise
                finally:
                    await asyncio.shield(_settled(running))  # the thread is done first
                    self._active = None
                    if not going_on_here:
                        self.last = {"finish_reason": finish, "tokens": bridge.produced}
                        self.counts[finish if finish in self.counts else "served"] += 1
                break
            yield {**_done(finish, bridge, received, admitted), **moved.get("where", {})}
        finally:
            ticket.leave()

    async def _moved_on(
        self, bridge: Bridge, moved: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """The rest of a moved generation, from the agent it moved to (its ``resume``,
        read with this agent's own lookahead): its text chunks as they come, each checked
        to follow the last; its end noted in ``moved``."""
        target, state = bridge.move_to, bridge.state
        assert target is not None and state is not None
        limit = state["params"]["max_new_tokens"]
        chunks = self.node.stream(
            target, "resume", state, timeout=RESUME_TIMEOUT_S, window=LOOKAHEAD
        )
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                tokens = chunk.get("tokens") if isinstance(chunk, dict) else None
                if type(tokens) is not int or not bridge.produced <= tokens <= limit:
                    raise MoveFailed(f"{target} sent a chunk that does not follow: {chunk!r:.80}")
                bridge.produced = tokens
                if chunk.get("done"):
                    moved["finish_reason"] = chunk.get("finish_reason")
                elif isinstance(chunk.get("text"), str):
                    moved["relayed"] = True
                    yield chunk
                else:
                    raise MoveFailed(f"{target} sent a chunk without text: {chunk!r:.80}")
        moved["where"] = {"moved_to": target, "moved_at": bridge.moved_at}

    def _check_length(self, prompt_tokens: int, max_new: int) -> None:
        window = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(window, int) and prompt_tokens + max_new > window:
            raise InvalidArgument(
                f"prompt ({prompt_tokens} tokens) + max_new_tokens ({max_new}) exceed the "
                f"model's context of {window} tokens"
            )

    def _generate(self, start: Callable[[], Generation], bridge: Bridge) -> str:
        """In the worker thread: run the model a token at a time (each step's state is
        what a move carries: agents/decoding.py); returns the finish reason."""
        try:
            return self._continue(start(), bridge)
        finally:
            bridge.finish()

    def _continue(self, generation: Generation, bridge: Bridge) -> str:
        """Step ``generation`` to its end, handing each sendable piece to ``bridge``; stops
        before the next token once the reader has left ("cancelled"), or once asked to
        move, with the state captured on the bridge ("moved")."""
        while generation.finish is None:
            if bridge.cancelled.is_set():
                return "cancelled"
            if bridge.move_to is not None:
                try:
                    bridge.state = capture(self.decoder, generation)
                except Exception:  # this cache cannot move: the generation stays here
                    log.exception("the generation cannot move to %s", bridge.move_to)
                    bridge.move_to = None
                else:
                    bridge.moved_at = generation.produced
                    return "moved"
            self.decoder.step(generation)
            bridge.produced = generation.produced
            if bridge.first_token_at is None:
                bridge.first_token_at = time.perf_counter()
            piece = self.decoder.piece(generation)
            if piece and not bridge.cancelled.is_set():
                bridge.put({"text": piece, "tokens": generation.produced, "t": time.time()})
        bridge.ended = True  # too late to move: move_to reports it
        return generation.finish


async def _settled(future: asyncio.Future[Any]) -> None:
    """Wait for ``future`` without raising what it raised (the caller saw it already)."""
    try:
        await future
    except BaseException:  # what it raised went to the caller already: only wait here
        return


def _done(finish: str, bridge: Bridge, received: float, admitted: float) -> dict[str, Any]:
    ended = time.perf_counter()
    first = bridge.first_token_at or ended
    generating = max(ended - admitted, 1e-9)
    return {
        "done": True,
        "finish_reason": finish,
        "tokens": bridge.produced,
        "queued_ms": round((admitted - received) * 1000, 3),
        "ttft_ms": round((first - admitted) * 1000, 3),
        "generate_ms": round(generating * 1000, 3),
        "tokens_per_s": round(bridge.produced / generating, 1),
    }


async def _collect(chunks: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """A streamed generation as one reply: the text and the ``done`` chunk's fields."""
    text: list[str] = []
    result: dict[str, Any] = {}
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            if "text" in chunk:
                text.append(chunk["text"])
            elif chunk.get("done"):
                result.update((k, v) for k, v in chunk.items() if k != "done")
            elif "queued" in chunk:
                result["queued"] = chunk["queued"]
    return {"text": "".join(text), **result}
