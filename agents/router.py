"""``RouterAgent``: semantic routing. Each question goes to the agent whose card
description is nearest to it in meaning, and the answer streams back through the router.

    mesh run agents.router:RouterAgent --name router

The router keeps a table of candidates: every agent offering ``route_method`` (by default
``chat_stream``), with its card's description embedded by an agent offering ``embed`` (the
:class:`~agents.embedding.EmbeddingAgent`) over the mesh. Discovery's JOIN, UPDATE and
LEAVE events keep the table current, and a lookup refreshes it before a question finds it
empty. A question is embedded the same way and scored against every candidate (cosine:
the vectors are unit length); the best is asked, with its own description as the system
prompt. If it cannot be reached before its first chunk, the next best is asked.

``route_stream`` yields ``{"route", "score", "scores", "route_ms"}`` first, then the answer's
text chunks, then ``{"done": true, ...}``: the answering agent's figures plus the route.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mesh import InvalidArgument, PeerInfo, PeerLost, PeerNotFound, RemoteError

from .base import Agent, method
from .generation import MAX_PROMPT_CHARS

EMBED_TIMEOUT_S = 30.0
REFRESH_BACKOFF_S = 0.2
REFRESH_BACKOFF_MAX_S = 5.0


@dataclass(frozen=True)
class Route:
    name: str
    description: str
    vector: np.ndarray


def card_description(info: PeerInfo) -> str:
    """What an agent says it is good at: its card's description, else its name."""
    card = info.meta.get("card")
    if isinstance(card, dict) and isinstance(card.get("description"), str):
        return card["description"]
    return info.name


class RouterAgent(Agent):
    description = "Routes each question to the agent whose speciality is nearest in meaning."
    default_method = "route_stream"

    def __init__(
        self,
        name: str,
        *,
        route_method: str = "chat_stream",
        embed_capability: str = "embed",
        **options: Any,
    ) -> None:
        super().__init__(name, **options)
        self.route_method = route_method
        self.embed_capability = embed_capability
        self.routes: dict[str, Route] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._stale = False

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--route-method", default="chat_stream", help="method routed to")
        parser.add_argument("--embed-capability", default="embed", help="who embeds text")

    async def started(self) -> None:
        self.node.on_peer_event(self._on_peer_event)
        self._refresh_soon()

    async def teardown(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(BaseException):
                await self._refreshing

    # ------------------------------------------------------------------ the table

    def _on_peer_event(self, event: str, info: PeerInfo) -> None:
        if info.name == self.name:
            return
        if event == "LEAVE":
            self.routes.pop(info.name, None)
        elif {self.route_method, self.embed_capability} & set(info.capabilities):
            self._refresh_soon()  # a candidate came or changed, or an embedder came back

    def _refresh_soon(self) -> None:
        """One refresh at a time; an event during one asks for another after it."""
        if self._refreshing is not None and not self._refreshing.done():
            self._stale = True
            return
        self._refreshing = asyncio.create_task(self._refresh_until_fresh())

    async def _refresh_until_fresh(self) -> None:
        """Refresh until a refresh succeeds with no event since; an embedder that is not up
        yet is waited for with backoff, so the table converges without a question."""
        self._stale = True
        backoff = REFRESH_BACKOFF_S
        while self._stale:
            self._stale = False
            try:
                await self.refresh()
            except (PeerNotFound, PeerLost, TimeoutError, RemoteError):
                self._stale = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, REFRESH_BACKOFF_MAX_S)

    async def refresh(self) -> None:
        """Look up the candidates; embed the descriptions not embedded yet."""
        found = {
            info.name: card_description(info)
            for info in await self.node.peers(capability=self.route_method)
            if info.name != self.name
        }
        new = {
            n: d
            for n, d in found.items()
            if n not in self.routes or self.routes[n].description != d
        }
        if new:
            vectors = await self._embed(list(new.values()))
            for (name, description), vector in zip(new.items(), vectors, strict=True):
                self.routes[name] = Route(name, description, vector)
        for gone in set(self.routes) - set(found):
            del self.routes[gone]

    async def _embed(self, texts: list[str]) -> np.ndarray:
        reply = await self.node.request(
            capability=self.embed_capability,
            method="embed",
            body={"texts": texts},
            timeout=EMBED_TIMEOUT_S,
        )
        return np.asarray(reply["vectors"], dtype=np.float32)

    def rank(self, vector: np.ndarray) -> list[tuple[str, float]]:
        """Candidates by cosine similarity to ``vector``, best first."""
        scored = [(r.name, float(np.dot(r.vector, vector))) for r in self.routes.values()]
        return sorted(scored, key=lambda pair: pair[1], reverse=True)

    # ------------------------------------------------------------------ methods

    @method("Which agents questions can go to, and what each is good at.")
    async def table(self, body: Any = None) -> dict[str, str]:
        return {name: route.description for name, route in sorted(self.routes.items())}

    @method(
        "Route a question to the agent nearest in meaning; its answer streamed, route first.",
        params={"text": "the question", "...": "generation parameters, passed on"},
    )
    async def route_stream(self, body: Any) -> AsyncIterator[dict[str, Any]]:
        text, params = _question(body)
        started = time.perf_counter()
        if not self.routes:
            await self.refresh()
        if not self.routes:
            raise PeerNotFound(f"no agent offers {self.route_method!r} to route to")
        ranking = self.rank((await self._embed([text]))[0])
        route_ms = round((time.perf_counter() - started) * 1000, 3)
        for index, (name, score) in enumerate(ranking):
            messages = [
                {"role": "system", "content": self.routes[name].description}
                if name in self.routes
                else {"role": "system", "content": name},
                {"role": "user", "content": text},
            ]
            asked = time.perf_counter()
            chunks = self.node.stream(name, self.route_method, {"messages": messages, **params})
            route = {"route": name, "score": round(score, 4), "route_ms": route_ms}
            try:
                first = await anext(chunks)
            except (PeerLost, PeerNotFound):
                if index == len(ranking) - 1:
                    raise
                continue  # nothing was said yet: the next best may answer
            except StopAsyncIteration:
                first = {"done": True}
            route["answer_first_chunk_ms"] = round((time.perf_counter() - asked) * 1000, 3)
            yield {**route, "scores": {n: round(s, 4) for n, s in ranking}}
            async with contextlib.aclosing(chunks):
                async for chunk in _prepend(first, chunks):
                    yield {**chunk, **route} if chunk.get("done") else chunk
            return

    @method("Route a question; the whole answer at once.", params={"text": "the question"})
    async def route(self, body: Any) -> dict[str, Any]:
        result: dict[str, Any] = {"text": ""}
        parts: list[str] = []
        async with contextlib.aclosing(self.route_stream(body)) as chunks:
            async for chunk in chunks:
                if "text" in chunk:
                    parts.append(chunk["text"])
                else:
                    result.update(chunk)
        result["text"] = "".join(parts)
        result.pop("done", None)
        return result


def _question(body: Any) -> tuple[str, dict[str, Any]]:
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_PROMPT_CHARS:
        raise InvalidArgument(
            f"routing needs {{'text': question}} of 1 to {MAX_PROMPT_CHARS} characters"
        )
    return text, {k: v for k, v in body.items() if k != "text"}


async def _prepend(first: dict[str, Any], rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item
