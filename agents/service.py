"""The front and the back of the customer-service mesh: intake and the consultation log.

``IntakeAgent`` takes a customer's question (``ask``), has the router pick who answers,
streams the answer back as it comes, and publishes the whole consultation (question, route,
score, answer, timings) on the ``consultations`` topic. ``LoggerAgent`` subscribes to that
topic and appends every consultation to a JSONL file, one line each, flushed as it comes.

    mesh run agents.service:IntakeAgent --name intake
    mesh run agents.service:LoggerAgent --name logger --path consultations.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from mesh import InvalidArgument, Subscription, TopicMessage

from .base import Agent, method
from .generation import MAX_PROMPT_CHARS

TOPIC = "consultations"
ROUTE_TIMEOUT_S = 120.0  # the most a chunk of the answer may take (a queued model waits)


class IntakeAgent(Agent):
    description = "Front desk: takes customer questions, has them answered, logs each one."
    default_method = "ask"

    def __init__(
        self,
        name: str,
        *,
        route_capability: str = "route_stream",
        topic: str = TOPIC,
        **options: Any,
    ) -> None:
        super().__init__(name, **options)
        self.route_capability = route_capability
        self.topic = topic

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--route-capability", default="route_stream", help="who routes the questions"
        )
        parser.add_argument("--topic", default=TOPIC, help="where consultations are published")

    @method(
        "Ask a customer-service question; the answer streams back, route first.",
        params={"question": "str", "customer": "optional str", "...": "generation parameters"},
    )
    async def ask(self, body: Any) -> AsyncIterator[dict[str, Any]]:
        question, customer, params = _ask_body(body)
        received = time.perf_counter()
        consultation = uuid.uuid4().hex[:12]
        yield {"consultation": consultation}
        record: dict[str, Any] = {"id": consultation, "customer": customer, "question": question}
        answer: list[str] = []
        chunks = self.node.stream(
            capability=self.route_capability,
            body={"text": question, **params},
            timeout=ROUTE_TIMEOUT_S,
        )
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if "route" in chunk and not chunk.get("done"):
                    routed_ms = round((time.perf_counter() - received) * 1000, 3)
                    yield {**chunk, "intake_to_route_ms": routed_ms}
                elif chunk.get("done"):
                    record.update((k, v) for k, v in chunk.items() if k != "done")
                elif "text" in chunk:
                    answer.append(chunk["text"])
                    yield chunk
                else:
                    yield chunk  # queued: the reader may want to know
        record["answer"] = "".join(answer)
        record["intake_total_ms"] = round((time.perf_counter() - received) * 1000, 3)
        record["at"] = time.time()
        await self.node.publish(self.topic, record)
        yield {"done": True, **{k: v for k, v in record.items() if k not in ("question", "answer")}}


def _ask_body(body: Any) -> tuple[str, str, dict[str, Any]]:
    question = body.get("question") if isinstance(body, dict) else None
    if not isinstance(question, str) or not question.strip() or len(question) > MAX_PROMPT_CHARS:
        raise InvalidArgument(
            f"ask needs {{'question': text}} of 1 to {MAX_PROMPT_CHARS} characters"
        )
    customer = body.get("customer", "")
    if not isinstance(customer, str) or len(customer) > 200:
        raise InvalidArgument("customer must be a string of at most 200 characters")
    return question, customer, {k: v for k, v in body.items() if k not in ("question", "customer")}


class LoggerAgent(Agent):
    description = "Keeps the record: appends every consultation to a JSONL file."

    def __init__(
        self, name: str, *, path: str = "consultations.jsonl", topic: str = TOPIC, **options: Any
    ) -> None:
        super().__init__(name, **options)
        self.path = Path(path)
        self.topic = topic
        self.written = 0
        self._file: IO[str] | None = None
        self._recording: asyncio.Task[None] | None = None

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--path", default="consultations.jsonl", help="the JSONL file")
        parser.add_argument("--topic", default=TOPIC, help="the topic to record")

    async def setup(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    async def started(self) -> None:
        # subscribed before start() returns: nothing published after that is missed
        subscription = await self.node.subscribe(self.topic)
        self._recording = asyncio.create_task(self._record_all(subscription))

    async def teardown(self) -> None:
        if self._recording is not None:
            self._recording.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recording
        if self._file is not None:
            self._file.close()

    async def _record_all(self, subscription: Subscription) -> None:
        async for message in subscription:
            self._record(message)

    def _record(self, message: TopicMessage) -> None:
        assert self._file is not None
        line = {"topic": message.topic, "from": message.publisher, "seq": message.seq}
        self._file.write(json.dumps({**line, **_plain(message.body)}) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.written += 1

    @method("How many consultations are on file, and where.")
    async def count(self, body: Any = None) -> dict[str, Any]:
        return {"written": self.written, "path": str(self.path.resolve())}


def _plain(body: Any) -> dict[str, Any]:
    return body if isinstance(body, dict) else {"body": body}
