"""Running a node's handlers for inbound requests: async, sync (off the loop) and streams.

A handler is ``fn(body)`` or ``fn(body, ctx)``:

* an ``async def`` is awaited on the event loop;
* a plain ``def`` runs in the default thread pool, so it may block;
* an ``async def`` with ``yield`` streams its reply: one STREAM message per item, then
  STREAM_END. Cancelling the caller's stream cancels the generator here (CANCEL). Its last
  item may be a :class:`Redirect` (only where ``ctx.follows_redirects``): the stream then
  ends by telling the reader where it goes on, and the reader's ``Node.stream`` follows.

Requests are deduplicated by (caller node id, message id): a request retried after a timeout
runs at most once; its reply is kept for a while and sent again to the retry. Answers go back
to the :class:`Caller` a request came from (its session, so its connection), never merely to
"the newest session of that node": two processes may share one identity (protocol.md 6.5),
and each gets its own replies, and a BYE or CANCEL from one never stops the other's work.

Specified in protocol.md 8.1 (request, reply, stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.codec import Message
from ..core.errors import BadRequest, InvalidArgument, LocalProtocolError, Overloaded
from ..core.flow import SendCredit, Window
from ..core.session import Session
from ..core.wire import MAX_NAME_LEN, MAX_PING_ECHO, ErrorCode, Kind
from ..ops.telemetry import Tracing, server_span
from .stamps import next_msg_id

REPLY_CACHE_SIZE = 4096
# and at most this many bytes of them: a soak with 1 MiB replies held 130 MiB without it
REPLY_CACHE_BYTES = 16 * 1024 * 1024
STREAM_STALL_S = 60.0  # a stream whose reader grants nothing for this long is abandoned
Handler = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request, and where its answers go: the session it arrived on (the
    callee side follows that connection through rekeys)."""

    session: Session

    @property
    def node_id(self) -> bytes:
        return self.session.peer.node_id

    @property
    def name(self) -> str:
        return self.session.peer.name


SendToCaller = Callable[[Caller, list[Message]], int]  # bytes sent, 0 if not delivered
SameConnection = Callable[[Caller, Caller], bool]


@dataclass(frozen=True)
class CallContext:
    """What a handler may want to know about the call it serves. ``follows_redirects``:
    the caller reads this stream with a reader that follows a :class:`Redirect`
    (protocol.md 8.1); a handler yields one only then."""

    peer: str
    method: str
    msg_id: int
    follows_redirects: bool = False


@dataclass(frozen=True)
class Redirect:
    """The last item of a streamed reply whose rest comes from elsewhere: the reader calls
    ``method(body)`` on ``peer`` and reads that stream as the continuation of this one
    (protocol.md 8.1). A handler that hands its work on (a generation moved to another
    agent) ends with it, so the reader's stream goes on without this node."""

    peer: str
    method: str
    body: Any = None

    def __post_init__(self) -> None:
        for value, what in ((self.peer, "peer"), (self.method, "method")):
            if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_LEN:
                raise InvalidArgument(f"a redirect's {what} is 1 to {MAX_NAME_LEN} characters")

    def meta(self) -> dict[str, Any]:
        """The STREAM_END's ``meta["redirect"]``."""
        return {"peer": self.peer, "method": self.method}

    @classmethod
    def from_meta(cls, meta: Any, body: Any) -> Redirect | None:
        """The redirect a STREAM_END's meta and body carry; None when there is none;
        InvalidArgument for one of the wrong shape."""
        if not isinstance(meta, dict) or "redirect" not in meta:
            return None
        value = meta["redirect"]
        if not isinstance(value, dict):  # nil included: a redirect key says there is one
            raise InvalidArgument("a redirect is a map {peer, method}")
        return cls(value.get("peer"), value.get("method"), body)  # type: ignore[arg-type]


def follows_redirects(meta: dict[str, Any] | None) -> bool:
    """Whether a REQUEST's reader follows a redirect: ``meta["follow"]`` is true."""
    return meta is not None and meta.get("follow") is True


@dataclass(frozen=True)
class HandlerSpec:
    function: Handler
    streaming: bool
    coroutine: bool
    takes_context: bool

    @classmethod
    def of(cls, function: Handler) -> HandlerSpec:
        if inspect.isgeneratorfunction(function):
            raise InvalidArgument("streaming handlers must be async generators (async def + yield)")
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"handler {function!r} has no inspectable signature") from exc
        positional = [
            p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        variadic = any(p.kind == p.VAR_POSITIONAL for p in parameters)
        return cls(
            function,
            inspect.isasyncgenfunction(function),
            inspect.iscoroutinefunction(function),
            len(positional) >= 2 or variadic,
        )


class ReaderStalled(Exception):
    """A stream's reader granted nothing for STREAM_STALL_S: the stream is abandoned."""


class StreamCredit:
    """A streaming handler's credit: the window its reader announced, and a waiter."""

    def __init__(self, meta: dict[str, object] | None) -> None:
        announced = (meta or {}).get("window")
        if not (
            isinstance(announced, list)
            and len(announced) == 2
            and all(type(n) is int and 0 < n < 2**63 for n in announced)
        ):
            announced = list(Window().as_grant)
        self.credit = SendCredit((announced[0], announced[1]))
        self._waiter: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        """Until the reader grants credit; a reader silent for STREAM_STALL_S is gone."""
        while not self.credit.can_send():
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(STREAM_STALL_S):
                    await self._waiter
            except TimeoutError:
                raise ReaderStalled from None
            finally:
                self._waiter = None

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def being_cancelled() -> bool:
    """Whether the running task was asked to stop (a CancelledError it meets is that), not
    only handed one by a task its handler awaited."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def own_cancellation(corr: int) -> Message:
    """The answer of a handler whose own code raised CancelledError: its failure."""
    return error_message(corr, ErrorCode.HANDLER_FAILED, "CancelledError", "CancelledError")


def error_code(exc: Exception) -> ErrorCode:
    """What a handler's exception tells the caller: its own mistake (BAD_REQUEST), a full
    queue (OVERLOADED), or a failure of the handler (HANDLER_FAILED)."""
    if isinstance(exc, Overloaded):
        return ErrorCode.OVERLOADED
    if isinstance(exc, InvalidArgument | BadRequest):
        return ErrorCode.BAD_REQUEST
    return ErrorCode.HANDLER_FAILED


def pong(ping: Message, frame_size: int) -> Message:
    """The PONG answering ``ping`` (protocol.md 7.6): its body echoed when the PING came in a
    SEALED message of at most MAX_PING_ECHO bytes, nil otherwise (an echo is not credited,
    so it stays small)."""
    body = ping.body if frame_size <= MAX_PING_ECHO else None
    return Message(Kind.PONG, next_msg_id(), ping.msg_id, body=body)


def error_message(corr: int, code: int, text: str, remote_type: str | None = None) -> Message:
    details = {"type": remote_type} if remote_type else None
    return Message(Kind.ERROR, next_msg_id(), corr, body=[int(code), text, details])


class HandlerRunner:
    """Runs handler tasks, remembers running and finished requests, applies CANCEL.

    ``send(caller, messages)`` answers a caller; ``same_connection(a, b)`` tells whether
    two callers are one connection (a rekey gives a connection a new session)."""

    def __init__(self, send: SendToCaller, same_connection: SameConnection | None = None) -> None:
        self._send = send
        self._same = same_connection or (lambda a, b: a.session is b.session)
        self.tracing: Tracing | None = None  # when set, handlers run in server spans
        self.handlers: dict[str, HandlerSpec] = {}
        self._running: dict[tuple[bytes, int], tuple[asyncio.Task, Caller]] = {}
        # tasks created and not yet run, with what to call when one is cancelled before it
        # ran (its own cleanup is in the body it never enters)
        self._unstarted: dict[tuple[bytes, int], Callable[[bool], None]] = {}
        self._streams: dict[tuple[bytes, int], StreamCredit] = {}
        self._one_way: set[tuple[bytes, int]] = set()
        self._replies: OrderedDict[tuple[bytes, int], tuple[list[Message], int]] = OrderedDict()
        self._reply_bytes = 0
        self.failures = 0
        self.duplicates = 0
        self._closed = False

    def add(self, name: str, function: Handler) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidArgument("a handler needs a non-empty method name")
        self.handlers[name] = HandlerSpec.of(function)

    def start(self, caller: Caller, message: Message, on_done: Callable[[bool], None]) -> None:
        """Begin serving a REQUEST or SEND (or answer a duplicate from the cache).

        ``on_done(reply_follows)`` runs when the handler is finished with the message (the
        application has consumed it: flow control grants credit then), just before any
        reply is sent, so the grant rides on the reply."""
        key = (caller.node_id, message.msg_id)
        if self._closed:
            on_done(False)
            return
        if key in self._running:
            self.duplicates += 1
            on_done(False)
            return
        cached = self._replies.get(key)
        if cached is not None:
            self.duplicates += 1
            on_done(True)
            self._send(caller, cached[0])
            return
        context = CallContext(
            caller.name, message.name, message.msg_id, follows_redirects(message.meta)
        )
        spec = self.handlers.get(message.name)
        # recorded before the task exists: an eager task factory runs its first step (and,
        # for a handler that never waits, all of it) inside create_task
        self._unstarted[key] = on_done
        if (
            message.kind == Kind.SEND
            and spec is not None
            and spec.coroutine
            and (self.tracing is None or self.tracing.tracer() is None)
        ):  # the common one-way case, on the shortest path: one coroutine, no reply
            args = (message.body, context) if spec.takes_context else (message.body,)
            task = asyncio.create_task(self._serve_one_way(key, spec.function, args, on_done))
        else:
            task = asyncio.create_task(self._serve(key, caller, message, context, on_done))
        if task.done():
            return  # it ran to its end already, and cleaned up after itself
        self._running[key] = (task, caller)
        if message.kind == Kind.SEND:
            self._one_way.add(key)

    def _stop(self, key: tuple[bytes, int]) -> None:
        """Cancel the task serving ``key``. One cancelled before its first step (a CANCEL
        read in the same batch as its REQUEST, a node closing) never enters its own
        ``try``: forget it here and give the caller's credit back, as its ``finally``
        would have. (A done callback would do it too, at the cost of a loop pass per call.)
        The credit goes back on the next loop pass, as the task's own would: after a BYE,
        once its session is forgotten, so nothing is granted to a peer that left."""
        task = self._running[key][0]
        task.cancel()
        on_done = self._unstarted.pop(key, None)
        if on_done is not None:
            del self._running[key]
            self._streams.pop(key, None)
            self._one_way.discard(key)
            task.get_loop().call_soon(on_done, False)

    @property
    def running(self) -> int:
        """Requests, streams and one-way messages being handled now."""
        return len(self._running)

    def _running_for(self, caller: Caller, msg_id: int) -> tuple[bytes, int] | None:
        key = (caller.node_id, msg_id)
        running = self._running.get(key)
        return key if running is not None and self._same(running[1], caller) else None

    def grant(self, caller: Caller, stream_id: int, body: object) -> None:
        """A CREDIT from a stream's reader: let its generator go on."""
        key = self._running_for(caller, stream_id)
        stream = self._streams.get(key) if key is not None else None
        if (
            stream is not None
            and isinstance(body, list)
            and len(body) == 2
            and all(type(n) is int and 0 <= n < 2**63 for n in body)
        ):
            stream.credit.grant(body[0], body[1])
            stream.wake()

    def cancel(self, caller: Caller, msg_id: int) -> None:
        """A CANCEL: stop the handler of ``msg_id``, if this caller's connection sent it."""
        key = self._running_for(caller, msg_id)
        if key is not None:
            self._stop(key)

    def cancel_peer(self, caller: Caller) -> None:
        """The caller left (BYE): stop work whose answer nobody will read. One-way messages
        already accepted are the callee's work now and run to the end. Only what arrived on
        that caller's connection: another process under the same name is not leaving."""
        for key, (_, started_by) in list(self._running.items()):
            if key not in self._one_way and self._same(started_by, caller):
                self._stop(key)

    async def close(self) -> None:
        self._closed = True
        tasks = [task for task, _ in self._running.values()]
        for key in list(self._running):
            self._stop(key)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(
        self,
        key: tuple[bytes, int],
        caller: Caller,
        message: Message,
        context: CallContext,
        on_done: Callable[[bool], None],
    ) -> None:
        self._unstarted.pop(key, None)
        corr = key[1]
        expects_reply = message.kind == Kind.REQUEST
        try:
            otel = self.tracing.tracer() if self.tracing is not None else None
            if otel is None:
                reply = await self._run(key, caller, message, context, expects_reply)
            else:
                with server_span(otel, message, context.peer):
                    reply = await self._run(key, caller, message, context, expects_reply)
        except asyncio.CancelledError:
            reply = [self._stopped(corr)] if expects_reply else []
        finally:
            self._running.pop(key, None)
            self._streams.pop(key, None)
            self._one_way.discard(key)
        on_done(bool(expects_reply and reply))
        if expects_reply and reply:
            self._remember(key, reply, self._send(caller, reply))

    def _stopped(self, corr: int) -> Message:
        """The answer of a handler that ended in CancelledError. Stopped here: by its
        caller (CANCEL, BYE: nobody reads it) or by this node closing, when the caller,
        which cancelled nothing, learns the callee left (CANCELLED, protocol.md 8.1). Not
        stopped here, the handler's own code raised it: its failure, not a departure."""
        if self._closed or being_cancelled():
            return error_message(corr, ErrorCode.CANCELLED, "the handler was stopped")
        self.failures += 1
        return own_cancellation(corr)

    async def _serve_one_way(
        self,
        key: tuple[bytes, int],
        function: Handler,
        args: tuple[Any, ...],
        on_done: Callable[[bool], None],
    ) -> None:
        """A SEND to a coroutine handler, traced by nobody: what :meth:`_serve` does for it
        (run it, count a failure, forget it, report it consumed), in one frame less."""
        self._unstarted.pop(key, None)
        try:
            await function(*args)  # type: ignore[misc]
        except asyncio.CancelledError:
            pass  # the node is closing
        except Exception:  # nobody to tell: counted, as for any one-way failure
            self.failures += 1
        finally:
            self._running.pop(key, None)
            self._one_way.discard(key)
        on_done(False)

    async def _run(
        self,
        key: tuple[bytes, int],
        caller: Caller,
        message: Message,
        context: CallContext,
        expects_reply: bool,
    ) -> list[Message]:
        corr = key[1]
        spec = self.handlers.get(message.name)
        if spec is None:
            return [
                error_message(corr, ErrorCode.UNKNOWN_METHOD, f"no handler for {message.name!r}")
            ]
        args = (message.body, context) if spec.takes_context else (message.body,)
        try:
            if spec.streaming:
                stream = self._streams[key] = StreamCredit(message.meta)
                # aclosing: a cancelled stream closes its generator now, so its own cleanup
                # (stopping a model, say) runs at once rather than whenever it is collected
                async with contextlib.aclosing(spec.function(*args)) as items:
                    async for item in items:
                        if not expects_reply:
                            continue
                        if type(item) is Redirect:
                            return [self._redirect(item, context, corr)]
                        await stream.wait()  # paused until the reader catches up
                        sent = self._send(
                            caller, [Message(Kind.STREAM, next_msg_id(), corr, body=item)]
                        )
                        if not sent:
                            return []  # the caller is gone: stop generating, answer nobody
                        stream.credit.charge(sent)
                return [Message(Kind.STREAM_END, next_msg_id(), corr)]
            result = await self.call(spec, args)
        except asyncio.CancelledError:
            raise
        except ReaderStalled:  # the reader's doing, and it may still be there to read it
            text = f"the stream's reader took nothing for {STREAM_STALL_S:g} s"
            return [error_message(corr, ErrorCode.DEADLINE_EXCEEDED, text)]
        except Exception as exc:  # the handler's failure becomes the caller's RemoteError
            self.failures += 1
            return [
                error_message(
                    corr, error_code(exc), str(exc) or type(exc).__name__, type(exc).__name__
                )
            ]
        return [Message(Kind.REPLY, next_msg_id(), corr, body=result)]

    @staticmethod
    def _redirect(item: Redirect, context: CallContext, corr: int) -> Message:
        """A stream's end that sends its reader on (the generator is closed on return)."""
        if not context.follows_redirects:  # the handler's own mistake, not the caller's
            raise LocalProtocolError(
                f"{context.method} redirected a reader that does not follow redirects"
            )
        return Message(Kind.STREAM_END, next_msg_id(), corr, body=item.body, meta={
            "redirect": item.meta()
        })  # fmt: skip

    @staticmethod
    async def call(spec: HandlerSpec, args: tuple[Any, ...]) -> Any:
        """Run a plain handler: awaited on the loop, or in the thread pool if it is sync."""
        if spec.coroutine:
            return await spec.function(*args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: spec.function(*args))

    def arguments(self, spec: HandlerSpec, message: Message, peer: str) -> tuple[Any, ...]:
        context = CallContext(peer, message.name, message.msg_id)
        return (message.body, context) if spec.takes_context else (message.body,)

    def _remember(self, key: tuple[bytes, int], reply: list[Message], size: int) -> None:
        """Keep ``reply`` (``size`` bytes as sent) to answer a retry of its request without
        running it again; the oldest go first past the count or the byte bound."""
        if reply[0].kind == Kind.STREAM_END:
            return  # streams are not replayed: a retried stream starts over
        self._replies[key] = (reply, size)
        self._reply_bytes += size
        while len(self._replies) > REPLY_CACHE_SIZE or (
            self._reply_bytes > REPLY_CACHE_BYTES and len(self._replies) > 1
        ):
            self._reply_bytes -= self._replies.popitem(last=False)[1][1]
