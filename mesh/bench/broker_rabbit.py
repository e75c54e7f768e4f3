"""RabbitMQ through pika for ``mesh bench --rabbitmq URL``: the broker this project replaces.

The pattern is classic AMQP RPC: the client publishes to a named queue with ``reply_to`` (its
exclusive reply queue) and a fresh ``correlation_id``, and a responder process
(``python -m mesh.bench.broker_rabbit URL``, pika's BlockingConnection) answers to ``reply_to``
with the same id. The client runs pika's asyncio adapter on the bench's own event loop, so
no thread hop is charged to RabbitMQ. One-way is a publish to ``bench.sink``, counted by the
responder. Streamed replies, blocking callers and topic fan-out are left out for it.
``scripts/bench-peers`` installs Debian's rabbitmq-server and pika and runs it on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
import sys
import time
from typing import Any

from ..core.codec import Blob
from ..core.errors import InvalidArgument
from ..ops.processes import serving_line
from .targets import reachable

SKIPPED = ("stream", "blocking", "fan-out")  # steps RabbitMQ does not run here
QUEUES = ("bench.echo", "bench.sink", "bench.count")
CONNECT_TIMEOUT_S = 10.0
STARTING_S = 30.0  # a broker that just opened its port may still refuse AMQP for a while
CALL_TIMEOUT_S = 30.0


def _pika() -> Any:
    try:
        import pika
    except ImportError as exc:
        raise InvalidArgument("--rabbitmq needs pika: pip install pika") from exc
    return pika


def _bytes(body: Any) -> bytes:
    if isinstance(body, Blob):
        return bytes(body.data)
    if hasattr(body, "tobytes"):  # a numpy array
        return body.tobytes()
    return bytes(body)


class RabbitTarget:
    name = "rabbitmq"
    skipped = SKIPPED

    def __init__(self) -> None:
        self._connection: Any = None
        self._channel: Any = None
        self._reply_queue = ""
        self._waiting: dict[str, asyncio.Future[bytes]] = {}
        self._ids = itertools.count()
        self._pika: Any = None

    @classmethod
    async def connect(cls, url: str) -> RabbitTarget:
        await reachable(url, 5672, "rabbitmq-server", CONNECT_TIMEOUT_S)
        deadline = time.monotonic() + STARTING_S
        while True:
            target = cls()
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await target._open(url)
                return target
            except (InvalidArgument, TimeoutError) as exc:
                await target.close()
                if time.monotonic() > deadline:
                    raise InvalidArgument(
                        f"rabbitmq at {url} did not open a session: {exc}"
                    ) from None
                await asyncio.sleep(0.5)

    async def _open(self, url: str) -> None:
        """pika's callbacks, each step turned into an await."""
        pika = self._pika = _pika()
        from pika.adapters.asyncio_connection import AsyncioConnection

        loop = asyncio.get_running_loop()
        step: asyncio.Future[Any] = loop.create_future()

        def fail(_: Any, error: Any) -> None:
            if not step.done():
                step.set_exception(InvalidArgument(f"rabbitmq at {url}: {error}"))

        self._connection = AsyncioConnection(
            pika.URLParameters(url),
            on_open_callback=step.set_result,
            on_open_error_callback=fail,
            custom_ioloop=loop,
        )
        await step
        step = loop.create_future()
        self._connection.channel(on_open_callback=step.set_result)
        self._channel = await step
        step = loop.create_future()
        self._channel.queue_declare("", exclusive=True, auto_delete=True, callback=step.set_result)
        self._reply_queue = (await step).method.queue
        step = loop.create_future()
        self._channel.basic_consume(
            self._reply_queue, self._on_reply, auto_ack=True, callback=step.set_result
        )
        await step

    def _on_reply(self, _channel: Any, _method: Any, properties: Any, body: bytes) -> None:
        waiter = self._waiting.pop(properties.correlation_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(body)

    async def _call(self, queue: str, data: bytes) -> bytes:
        correlation = str(next(self._ids))
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = waiter
        properties = self._pika.BasicProperties(
            reply_to=self._reply_queue, correlation_id=correlation
        )
        self._channel.basic_publish("", queue, data, properties)
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                return await waiter
        finally:
            self._waiting.pop(correlation, None)

    async def echo(self, body: Any) -> bytes:
        return await self._call("bench.echo", _bytes(body))

    async def sink(self, body: Any) -> None:
        self._channel.basic_publish("", "bench.sink", _bytes(body))
        await asyncio.sleep(0)  # let the adapter write, as an awaited send would

    async def count(self) -> int:
        return int(struct.unpack("!Q", await self._call("bench.count", b""))[0])

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            with contextlib.suppress(Exception):  # pika refuses to close a half-open one
                self._connection.close()
            await asyncio.sleep(0)


def respond(url: str) -> None:
    """The responder: echo, sink and count, each reply to ``reply_to`` with the same id."""
    pika = _pika()
    deadline = time.monotonic() + STARTING_S
    while True:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(url))
            break
        except pika.exceptions.AMQPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    channel = connection.channel()
    for queue in QUEUES:
        channel.queue_declare(queue, auto_delete=True)
    sunk = [0]

    def answer(properties: Any, body: bytes) -> None:
        reply = pika.BasicProperties(correlation_id=properties.correlation_id)
        channel.basic_publish("", properties.reply_to, body, reply)

    def echo(_ch: Any, _method: Any, properties: Any, body: bytes) -> None:
        answer(properties, body)

    def sink(_ch: Any, _method: Any, _properties: Any, _body: bytes) -> None:
        sunk[0] += 1

    def count(_ch: Any, _method: Any, properties: Any, _body: bytes) -> None:
        seen, sunk[0] = sunk[0], 0
        answer(properties, struct.pack("!Q", seen))

    for queue, callback in zip(QUEUES, (echo, sink, count), strict=True):
        channel.basic_consume(queue, callback, auto_ack=True)
    print(serving_line("rabbitmq", url), flush=True)
    channel.start_consuming()


if __name__ == "__main__":
    respond(sys.argv[1])
