"""``LLMAgent``: a causal language model on the mesh, streamed token by token.

    mesh run agents.llm:LLMAgent --name billing --model DIR \\
        --description "Billing: invoices, refunds and payment methods"

Methods: ``generate`` / ``generate_stream`` (a prompt), ``chat`` / ``chat_stream`` (a list of
messages, through the tokenizer's chat template where it has one), ``converse`` (a
conversation with another LLM agent through the mesh), ``move`` (hand the running
generation, at its next token, to a replica of the same model) and ``status``. Parameters are
checked by :class:`~agents.generation.GenerationParams` (``max_new_tokens``,
``temperature``, ``top_p``, ``stop``, ``seed``): a wrong one is a :class:`mesh.BadRequest`.

One generation runs at a time (it uses every core, or the GPU); up to ``max_queue`` more
wait in order, and a streamed reply's first chunk then says ``{"queued": position}``;
beyond that a request fails at once with :class:`mesh.Overloaded`. Streamed chunks are
``{"text", "tokens", "t"}`` (``t``: when the model produced it, Unix seconds, so a reader on
the same clock can measure the mesh's share), then ``{"done": true, ...}`` with the finish
reason and timings. A reader that stops reading pauses the model; one that leaves stops it.

Moving a generation (``move``, a drain: :meth:`LLMAgent.stop_taking_work`, ``decode_on``):
at a token boundary the worker thread captures its state (:mod:`agents.decoding`); the
replica's ``adopt`` checks it whole and holds it under a ticket bound to the reader; the
stream here then ends with a :class:`mesh.Redirect` to the replica's ``resume`` with that
ticket, which the reader's ``Node.stream`` follows: one stream, token-exact, and this agent
is free (it can exit). A reader that does not follow redirects (a plain request, another
implementation) gets the rest through this agent instead, which resumes the ticket itself.
Only replicas whose card shows the same model fingerprint and runtime (device type, CPU
threads, torch) are asked; if none takes it, the generation goes on here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import torch

from mesh import CallContext, InvalidArgument, MeshError, Overloaded, PeerInfo, Redirect

from .admission import Admission, Ticket
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
ADOPT_TIMEOUT_S = 60.0  # the most handing a state to a replica may take (megabytes)
MAX_NAME = 256  # characters in a node's name (protocol.md 13)
TICKET_TTL_S = 30.0  # an adopted generation waits this long for its reader, then is dropped
PARAMS_CARD = {
    "max_new_tokens": "int, 1..limit (default 64)",
    "temperature": "float 0..5, 0 = greedy (default 0)",
    "top_p": "float (0, 1] (default 1)",
    "stop": "string or list of strings that end the text",
    "seed": "int, repeatable sampling",
    "decode_on": "agent name: the prompt is computed here, the rest decoded there",
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
        self._adopted: dict[str, _Adopted] = {}  # handed over here, by ticket: for resume
        self._restoring = 0  # adopts restoring a state now (each will hold a cache)
        self._drain_started = asyncio.Event()  # the waiting generations move too
        self.counts = {"served": 0, "moved": 0, "cancelled": 0, "failed": 0}
        self._counts_at_drain = dict(self.counts)
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
        for adopted in self._adopted.values():
            adopted.expiry.cancel()
        self._adopted.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def card(self) -> dict[str, Any]:
        """The agent's card, with the model's fingerprint and what its arithmetic runs on: a
        generation moves only to an agent whose card shows the same of both (the same
        weights on other kernels, or on another number of CPU threads, can pick another
        token)."""
        return {**super().card(), "model": self._model_card()}

    def _model_card(self) -> dict[str, str]:
        where = f"{self.model.device.type}, {torch.get_num_threads()} threads, {torch.__version__}"
        return {"fingerprint": self.decoder.fingerprint, "runtime": where}

    # ------------------------------------------------------------------ methods

    @method("Continue a prompt; the whole text at once.", params={"prompt": "str", **PARAMS_CARD})
    async def generate(self, body: Any, ctx: CallContext) -> dict[str, Any]:
        return await _collect(self.generate_stream(body, _collecting(ctx)))

    @method("Continue a prompt, streamed.", params={"prompt": "str", **PARAMS_CARD})
    async def generate_stream(self, body: Any, ctx: CallContext) -> AsyncIterator[dict[str, Any]]:
        fields = check_fields(body, "prompt")
        async for chunk in self._generation(prompt_of(fields), fields, ctx):
            yield chunk

    @method("Answer a chat; the whole reply at once.", params={"messages": "[{role, content}]"})
    async def chat(self, body: Any, ctx: CallContext) -> dict[str, Any]:
        return await _collect(self.chat_stream(body, _collecting(ctx)))

    @method("Answer a chat, streamed.", params={"messages": "[{role, content}]", **PARAMS_CARD})
    async def chat_stream(self, body: Any, ctx: CallContext) -> AsyncIterator[dict[str, Any]]:
        async for chunk in self._chat(body, ctx):
            yield chunk

    async def _chat(
        self, body: Any, ctx: CallContext, *, new: bool = True
    ) -> AsyncIterator[dict[str, Any]]:
        fields = check_fields(body, "messages")
        prompt = self.chat_prompt(messages_of(fields))
        async for chunk in self._generation(prompt, fields, ctx, new=new):
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
            if speaker == self.name:  # read here, not by a reader that follows redirects
                chunks = self._chat({"messages": view, **params}, _collecting(ctx), new=False)
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
        running. Over the mesh only the generation's own caller may move it (anyone else
        could have it sent to themselves), and only to an agent whose card shows this
        model's fingerprint; the agent's own code calls :meth:`move_to`."""
        if not isinstance(body, dict) or not isinstance(body.get("to"), str) or not body["to"]:
            raise InvalidArgument("move needs {'to': the name of an agent with the same model}")
        active = self._active
        if active is not None and active.owner != ctx.peer:
            raise InvalidArgument("only the caller of a generation may move it")
        if body["to"] not in {info.name for info in await self._replicas()}:
            raise InvalidArgument(f"{body['to']} is not a live agent serving this same model")
        if active is None or self._active is not active:  # it ended during the lookup
            return {"moving": False}
        return {"moving": self._ask_to_move(body["to"], active)}

    def move_to(self, target: str) -> bool:
        """Move the running generation to ``target`` at its next token; False when none is
        running, it has ended, or a move is already under way. If ``target`` cannot take
        it, the generation goes on here."""
        if not target or target == self.name:
            raise InvalidArgument("a generation moves to another agent, named")
        return self._ask_to_move(target, self._active)

    @staticmethod
    def _ask_to_move(target: str, active: Bridge | None) -> bool:
        """Move ``active`` to ``target`` ("": any replica, a drain) at its next token."""
        if active is None or active.ended or active.move_to is not None:
            return False
        active.move_to = target
        return True

    @method(
        "Take a generation another agent serving the same model is handing over (its "
        "captured state), for a reader to resume; a ticket.",
        params={"state": "what the moving agent captured", "reader": "who will resume it"},
    )
    async def adopt(self, body: Any, ctx: CallContext) -> dict[str, Any]:
        """Check a moved generation whole (fingerprint, digest, shapes, limits: StateRefused,
        a BadRequest to the mover, before any of it is used) and hold it for ``reader``'s
        ``resume``, at most ``max_queue`` at a time, each for ``TICKET_TTL_S``."""
        self._check_taking()
        reader = body.get("reader") if isinstance(body, dict) else None
        if not isinstance(reader, str) or not 0 < len(reader) <= MAX_NAME:
            raise InvalidArgument("adopt needs {'state': a captured generation, 'reader': name}")
        state = body.get("state")
        params = state.get("params") if isinstance(state, dict) else None
        wanted = params.get("max_new_tokens") if isinstance(params, dict) else None
        if type(wanted) is int and wanted > self.token_limit:  # cheap checks first
            raise InvalidArgument(f"max_new_tokens is above this agent's {self.token_limit}")
        # off the loop; its place is kept until the thread is done (a mover that gives up
        # does not stop the restore), so concurrent adopts count it
        self._restoring += 1
        restoring = asyncio.get_running_loop().run_in_executor(None, self.decoder.restore, state)
        try:
            generation = await asyncio.shield(restoring)
        except asyncio.CancelledError:
            restoring.add_done_callback(self._restored)  # the thread still runs
            raise
        except BaseException:
            self._restoring -= 1
            raise
        self._restoring -= 1  # here, not in a callback: no loop pass without its place
        if generation.params.max_new_tokens > self.token_limit:
            raise InvalidArgument(f"max_new_tokens is above this agent's {self.token_limit}")
        self._check_length(generation.prompt_tokens, generation.params.max_new_tokens)
        self._check_taking()  # again: a drain may have begun meanwhile
        ticket = secrets.token_hex(16)
        expiry = asyncio.get_running_loop().call_later(TICKET_TTL_S, self._expire, ticket)
        self._adopted[ticket] = _Adopted(generation, reader, ctx.peer, expiry)
        return {"ticket": ticket}

    def _restored(self, restoring: asyncio.Future[Generation]) -> None:
        """The restore of an adopt that was given up has ended: its place is free."""
        self._restoring -= 1
        if not restoring.cancelled():
            restoring.exception()  # seen here if its adopt has gone: no warning at exit

    def _expire(self, ticket: str) -> None:
        """Its reader never came: the generation (its cache) is dropped."""
        if self._adopted.pop(ticket, None) is not None:
            log.warning("a handed-over generation waited for its reader in vain; dropped")

    def _check_taking(self) -> None:
        if self.draining:
            raise Overloaded("this agent is draining")
        if self._active is not None and self._active.move_to is not None:
            # a generation is moving away from here: taking one in could wait on it forever
            raise Overloaded("this agent is handing a generation on")
        held = len(self._adopted) + self._restoring  # a restored cache each: the bound
        if held >= max(1, self.admission.max_waiting):
            raise Overloaded(f"{held} handed-over generations are held or restored already")

    @method(
        "Continue a generation handed over here (adopt's ticket), streamed.",
        params={"ticket": "what adopt answered"},
    )
    async def resume(self, body: Any, ctx: CallContext) -> AsyncIterator[Any]:
        ticket = body.get("ticket") if isinstance(body, dict) else None
        adopted = self._adopted.get(ticket) if isinstance(ticket, str) else None
        if adopted is None:
            raise InvalidArgument("no generation waits here under that ticket (expired?)")
        if adopted.reader != ctx.peer:
            raise InvalidArgument("that generation was handed over for another reader")
        del self._adopted[ticket]
        adopted.expiry.cancel()
        log.info("resuming a generation from %s at token %d", adopted.source,
                 adopted.generation.produced)  # fmt: skip
        moved_at = adopted.generation.produced
        # adopt bounded how many wait here: the queue's own bound does not refuse it now
        chunks = self._served(
            lambda: adopted.generation, ctx.peer, ctx.follows_redirects, adopted=True
        )
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if type(chunk) is Redirect:
                    yield chunk
                elif chunk.get("done"):
                    here = chunk["tokens"] - moved_at  # what this agent produced of it
                    rate = round(here / max(chunk["generate_ms"], 1e-6) * 1000, 1)
                    yield {**chunk, "tokens_per_s": rate, "moved_from": adopted.source,
                           "moved_at": moved_at, "moved_to": self.name}  # fmt: skip
                elif "queued" not in chunk:  # the reader's stream began elsewhere
                    yield chunk

    def stop_taking_work(self) -> None:
        """A drain: every generation here, running or waiting, moves to a replica at its
        next token (or before its first); one that none takes goes on here."""
        self._counts_at_drain = dict(self.counts)
        self._ask_to_move("", self._active)
        self._drain_started.set()  # the waiting ones leave the queue to move

    def holding(self) -> bool:
        """Generations handed over here whose readers have not come yet: a drain waits
        for them (they come, and are moved on, or expire)."""
        return bool(self._adopted)

    def summary(self) -> dict[str, Any]:
        """What moved and what finished here since the drain began; what still runs."""
        before = self._counts_at_drain
        return {
            "moved": self.counts["moved"] - before["moved"],
            "finished_here": self.counts["served"] - before["served"],
            **super().summary(),
        }

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
            "handing_over": active is not None and active.state is not None,
            "adopted": len(self._adopted),  # handed over here, their readers not yet come
            "draining": self.draining,
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
        self, prompt: str, fields: dict[str, Any], ctx: CallContext, *, new: bool = True
    ) -> AsyncIterator[Any]:
        """Chunks of one generation: maybe ``queued``, text, then ``done`` with timings (or
        a Redirect, if it moved and its reader follows redirects). A ``new`` one (a request
        rather than a turn of a conversation under way) is refused while draining."""
        params = GenerationParams.from_body(fields, limit=self.token_limit)
        encoded = self.tokenizer(prompt, return_tensors="pt")
        self._check_length(encoded["input_ids"].shape[1], params.max_new_tokens)
        prompt_ids = encoded["input_ids"][0].tolist()
        if not prompt_ids:
            raise InvalidArgument("the prompt encodes to no tokens")
        if self.draining and new:
            raise Overloaded("this agent is draining")
        decode_on = fields.get("decode_on")
        if decode_on is not None and (
            not isinstance(decode_on, str)
            or decode_on not in {info.name for info in await self._replicas()}
        ):
            raise InvalidArgument(f"decode_on: {decode_on!r} is not an agent serving this model")
        start = functools.partial(self.decoder.start, prompt_ids, params)
        async for chunk in self._served(start, ctx.peer, ctx.follows_redirects, decode_on):
            yield chunk

    async def _served(
        self,
        start: Callable[[], Generation],
        owner: str,
        follows: bool,
        decode_on: str | None = None,
        *,
        adopted: bool = False,
    ) -> AsyncIterator[Any]:
        """Queue, then run the generation ``start`` makes (in the worker thread) to its end:
        its chunks, then ``done``. Moved meanwhile (:meth:`move`, a drain, or ``decode_on``
        after its first token: the prompt computed here, the rest decoded there), it ends
        with a Redirect to the replica that took it if its reader ``follows`` redirects,
        else the replica's chunks are passed on from here; if no replica takes it, it goes
        on here. A drain moves the waiting ones too, before they ever run here; if one it
        asked for could not move (or a named move it met failed), it tries any replica
        once."""
        loop = asyncio.get_running_loop()
        received = time.perf_counter()
        ticket = self.admission.join(beyond_limit=adopted)  # Overloaded if the queue is full
        redirect: Redirect | None = None
        try:
            if ticket.position:
                yield {"queued": ticket.position}
            has_turn = await self._turn(ticket)  # False: a drain began while it waited
            admitted = time.perf_counter()
            first_token_at: float | None = None
            stays = False  # a move was tried and nobody took it: it runs here
            moved: dict[str, Any] = {}
            while True:
                finish, going_on_here, handed = "cancelled", False, False
                if stays and not has_turn:
                    await ticket.ready()
                    has_turn, admitted = True, time.perf_counter()
                bridge = Bridge(loop, LOOKAHEAD)
                bridge.owner = owner
                bridge.first_token_at = first_token_at
                if self.draining and not stays:
                    bridge.move_to = ""  # to any replica, at its next token (or before its first)
                elif decode_on is not None and not stays:
                    bridge.move_to, bridge.move_at = decode_on, 1
                if has_turn:
                    self._active = bridge
                running = loop.run_in_executor(self._executor, self._generate, start, bridge)
                try:
                    while (chunk := await bridge.chunks.get()) is not DONE:
                        yield chunk
                        bridge.taken()
                    finish = await running
                    if finish == "moved":
                        target, handle = await self._hand_over(bridge, owner if follows else "")
                        handed = True
                        if self._active is bridge:
                            self._active = None
                        ticket.leave()  # nothing more is computed here: the model is free
                        if follows:
                            redirect = Redirect(target, "resume", {"ticket": handle})
                        else:
                            relay = self._moved_on(target, handle, bridge, moved)
                            async with contextlib.aclosing(relay):
                                async for chunk in relay:
                                    yield chunk
                            finish = moved.get("finish_reason") or "moved"
                except (asyncio.CancelledError, GeneratorExit):  # the reader left: stop it
                    bridge.cancelled.set()
                    finish = "cancelled"
                    raise
                except MeshError as exc:
                    if finish != "moved" or handed:
                        bridge.cancelled.set()
                        went_on, finish, handed = handed, "failed", False
                        if went_on:  # the replica's (or the relay's) failure: not the caller's
                            raise MoveFailed(
                                f"the generation failed on {bridge.move_to}: {exc}"
                            ) from exc
                        raise
                    log.warning("no agent took the generation (%s); going on here", exc)
                    start = functools.partial(self.decoder.restore, bridge.state)
                    first_token_at = bridge.first_token_at
                    going_on_here = True
                    # a drain tries any replica once, after a named move (or decode_on) failed
                    stays = not (self.draining and bridge.move_to != "")
                    continue
                except Exception:
                    bridge.cancelled.set()
                    finish = "failed"
                    raise
                finally:
                    await asyncio.shield(_settled(running))  # the thread is done first
                    if self._active is bridge:
                        self._active = None
                    if not going_on_here:
                        self.last = {"finish_reason": finish, "tokens": bridge.produced}
                        counted = "moved" if handed else finish
                        self.counts[counted if counted in self.counts else "served"] += 1
                break
            if redirect is None:
                yield {**_done(finish, bridge, received, admitted), **moved.get("where", {})}
        finally:
            ticket.leave()
        if redirect is not None:
            # last: the handler sends it as the stream's end, and its request ends with it
            yield redirect

    async def _turn(self, ticket: Ticket) -> bool:
        """Wait for this generation's turn at the model: True when it came; False when a
        drain began first (the generation then moves without running here)."""
        if ticket.position == 0:
            return True
        turn = asyncio.ensure_future(ticket.ready())
        drain = asyncio.ensure_future(self._drain_started.wait())
        try:
            await asyncio.wait({turn, drain}, return_when=asyncio.FIRST_COMPLETED)
            came = turn.done() and not turn.cancelled()
        finally:
            turn.cancel()  # the ticket's own place is shielded: leave() gives it back
            drain.cancel()
            await asyncio.gather(turn, drain, return_exceptions=True)
        return came

    async def _replicas(self) -> list[PeerInfo]:
        """Live agents serving this very model on the same arithmetic (their card's
        fingerprint and runtime), not this one."""
        ours = self._model_card()
        return [
            info
            for info in await self.node.peers("adopt")  # only agents that can take one
            if info.name != self.name and _model_of(info) == ours
        ]

    async def _hand_over(self, bridge: Bridge, reader: str) -> tuple[str, str]:
        """Hand the captured state to the agent asked for (or, in a drain, to the first
        replica that takes it), for ``reader`` ("": this agent, which relays); (the agent,
        its ticket). The state goes only to agents whose card shows this model: MoveFailed,
        or the last refusal, when nobody took it."""
        replicas = [info.name for info in await self._replicas()]
        if bridge.move_to:
            replicas = [bridge.move_to] if bridge.move_to in replicas else []
        if not replicas:
            raise MoveFailed(f"no live agent serving this model ({bridge.move_to or 'any'})")
        random.shuffle(replicas)  # a drain's generations spread over the replicas
        failure: MeshError = MoveFailed("unreachable")
        body = {"state": bridge.state, "reader": reader or self.name}
        for name in replicas:
            try:
                answer = await self.node.request(name, "adopt", body, timeout=ADOPT_TIMEOUT_S)
            except MeshError as exc:
                log.info("%s did not take the generation: %s", name, exc)
                failure = exc
                continue
            handle = answer.get("ticket") if isinstance(answer, dict) else None
            if isinstance(handle, str):
                bridge.move_to = name
                return name, handle
            failure = MoveFailed(f"{name} answered adopt without a ticket: {answer!r:.80}")
        raise failure

    async def _moved_on(
        self, target: str, handle: str, bridge: Bridge, moved: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """The rest of a moved generation for a reader that does not follow redirects:
        ``target``'s ``resume`` read here with this agent's own lookahead, each text chunk
        checked to follow the last and passed on; its end noted in ``moved``."""
        assert bridge.state is not None
        limit = bridge.state["params"]["max_new_tokens"]
        chunks = self.node.stream(
            target, "resume", {"ticket": handle}, timeout=RESUME_TIMEOUT_S, window=LOOKAHEAD
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
            if bridge.move_to is not None and generation.produced >= bridge.move_at:
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


@dataclass
class _Adopted:
    """A generation handed over here, waiting for its reader's ``resume``."""

    generation: Generation
    reader: str  # the one peer that may resume it
    source: str  # the agent that handed it over
    expiry: asyncio.TimerHandle


def _collecting(ctx: CallContext) -> CallContext:
    """``ctx`` for a stream read by this agent's own code, which follows no redirect."""
    return replace(ctx, follows_redirects=False)


def _model_of(info: PeerInfo) -> Any:
    card = info.meta.get("card")
    return card.get("model") if isinstance(card, dict) else None


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
