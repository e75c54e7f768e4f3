"""The base of every agent: a node, a card that says what the agent is good at, methods.

An agent is a class. Its methods marked with :func:`method` become the node's handlers, and
its *card* (kind, a one-line description, every method with its parameters; in the spirit of
A2A's agent cards) is published in discovery as ``meta["card"]``, so a router can choose by
meaning and ``mesh peers`` can show it. The lifecycle is ``await agent.start()`` (``setup``
loads models *before* the node registers, so no request reaches a half-loaded agent) and
``await agent.stop()``; ``async with`` does both.

``mesh run module:Class --name NAME [agent options]`` runs any subclass: options the
command does not know are parsed by the class's :meth:`Agent.add_options`.

A *drain* (``mesh drain NAME``, or SIGTERM under ``mesh run --drain``) takes an agent out of
service without dropping work: it leaves the directory (new callers choose others), hands
what it holds to replicas where it can (:meth:`Agent.stop_taking_work`: an LLM agent moves
its generations), waits, within a bound, for the rest to finish, then ends the process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn, Self

from mesh import CallContext, InvalidArgument, Node

MAX_DESCRIPTION = 300
DEFAULT_DRAIN_S = 60.0  # how long a drain waits for work it could not hand over
OPERATOR = "mesh-cli"  # the identity `mesh` commands use: the one that may drain an agent
DRAIN_POLL_S = 0.05  # how often a drain looks whether the work it waits for has ended


@dataclass(frozen=True)
class MethodSpec:
    """One method as the card shows it: name, what it does, its parameters, whether it streams."""

    name: str
    description: str
    params: dict[str, str] = field(default_factory=dict)
    streams: bool = False

    def to_card(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "params": dict(self.params),
            "streams": self.streams,
        }


def method(
    description: str, *, name: str | None = None, params: dict[str, str] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark an agent's method as a mesh handler. ``params`` maps each body field to a short
    description of its type and meaning, for the card."""

    def mark(function: Callable[..., Any]) -> Callable[..., Any]:
        spec = MethodSpec(
            name or function.__name__,
            description,
            dict(params or {}),
            inspect.isasyncgenfunction(function),
        )
        function.__agent_method__ = spec  # type: ignore[attr-defined]
        return function

    return mark


class _OptionParser(argparse.ArgumentParser):
    """Agent options from the command line; a mistake is an InvalidArgument (one line)."""

    def error(self, message: str) -> NoReturn:
        raise InvalidArgument(f"{self.prog}: {message}")


class Agent:
    """A node plus a card. Subclasses set ``description`` (one line: what the agent is good
    at), mark methods with :func:`method`, and override ``setup`` / ``teardown`` to load and
    free what they need. ``node_options`` go to :class:`mesh.Node` (discovery, bind, mesh...).
    """

    description: ClassVar[str] = "An agent on the mesh."
    default_method: ClassVar[str | None] = None  # what a gateway calls when none is named

    def __init__(self, name: str, *, description: str | None = None, **node_options: Any) -> None:
        text = " ".join((description or type(self).description).split())
        if not text or len(text) > MAX_DESCRIPTION:
            raise InvalidArgument(f"an agent's description is 1 to {MAX_DESCRIPTION} characters")
        self.name = name
        self.description = text
        self.node = Node(name, **node_options)
        self.methods = self._collect_methods()
        for spec, function in self.methods:
            self.node.handler(spec.name, function)
        self.node.handler("drain", self._drain_handler)  # not on the card: operators only
        self.draining = False
        self.finished = asyncio.Event()  # set once a drain asked over the mesh is done
        self._drain: asyncio.Task[dict[str, Any]] | None = None
        self._drain_requests = 0  # `mesh drain` requests waiting on it

    def _collect_methods(self) -> list[tuple[MethodSpec, Callable[..., Any]]]:
        found = []
        for attribute in dir(type(self)):
            spec = getattr(getattr(type(self), attribute), "__agent_method__", None)
            if isinstance(spec, MethodSpec):
                found.append((spec, getattr(self, attribute)))
        return sorted(found, key=lambda pair: pair[0].name)

    def card(self) -> dict[str, Any]:
        """What discovery publishes about this agent (``meta["card"]``); ``default`` is
        the method an A2A message reaches when it names none (``mesh gateway``)."""
        card: dict[str, Any] = {
            "kind": type(self).__name__,
            "description": self.description,
            "methods": [spec.to_card() for spec, _ in self.methods],
        }
        if self.default_method is not None:
            card["default"] = self.default_method
        return card

    # ------------------------------------------------------------------ lifecycle

    async def setup(self) -> None:
        """Load what the agent needs (models...). Runs before the node registers."""

    async def started(self) -> None:
        """Runs once the node is registered (subscribe, watch the directory...)."""

    async def teardown(self) -> None:
        """Free what ``setup`` took. Runs after the node has closed."""

    async def start(self) -> Self:
        await self.setup()
        self.node.meta["card"] = self.card()
        try:
            await self.node.start()
            await self.started()
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.cancel()  # stopping now: the drain's wait is over
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
        await self.node.close()
        await self.teardown()

    async def drain(self, timeout: float = DEFAULT_DRAIN_S) -> dict[str, Any]:
        """Take the agent out of service: refuse new work and start handing over what it
        holds (:meth:`stop_taking_work`), leave the directory, then wait up to ``timeout``
        seconds for every request it is still serving to end. What happened
        (:meth:`summary`). One drain runs in its own task: a second call, or a caller
        that gives up (``mesh drain`` interrupted), neither starts another nor stops it."""
        if self._drain is None:
            self._drain = asyncio.create_task(self._drained(timeout))
        return await asyncio.shield(self._drain)

    async def _drained(self, timeout: float) -> dict[str, Any]:
        self.draining = True
        self.stop_taking_work()
        await self.node.withdraw()
        deadline = asyncio.get_running_loop().time() + timeout
        # what was in flight ends on its own (or moves): its requests' ends are all there is
        # to wait on, so look every DRAIN_POLL_S until then or the deadline
        while self._serving_work() or self.holding():
            if asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(DRAIN_POLL_S)
        return self.summary()

    def _serving_work(self) -> int:
        """Requests being served but the drain requests themselves (they wait on it)."""
        return self.node.serving - self._drain_requests

    def stop_taking_work(self) -> None:
        """The first step of a drain, at once: start handing over what is held (an agent
        with nothing long-running has nothing to do here; new work is refused where the
        agent checks :attr:`draining`)."""

    def holding(self) -> bool:
        """Whether the agent holds work that no running request stands for (an LLM agent:
        a generation handed to it, waiting for its reader); a drain waits for it too."""
        return False

    def summary(self) -> dict[str, Any]:
        """What a drain reports once it is over: ``still_running``, what it cut off."""
        return {"still_running": self._serving_work()}

    async def _drain_handler(self, body: Any, ctx: CallContext) -> dict[str, Any]:
        """``mesh drain``: drain, answer, then end (:attr:`finished`; ``mesh run`` exits)."""
        if ctx.peer != OPERATOR:
            raise InvalidArgument(f"only {OPERATOR} (the operator's mesh commands) may drain")
        timeout = body.get("timeout", DEFAULT_DRAIN_S) if isinstance(body, dict) else None
        if type(timeout) not in (int, float) or not 0 <= timeout <= 3600:
            raise InvalidArgument("drain takes {'timeout': seconds from 0 to 3600}")
        if self._drain is None:
            self._drain = asyncio.create_task(self._drained(float(timeout)))
        self._drain_requests += 1
        try:
            return await asyncio.shield(self._drain)
        finally:  # the end, once the drain is over and this answer (if any) is on its way
            self._drain_requests -= 1
            self._drain.add_done_callback(self._finish_soon)

    def _finish_soon(self, _: object) -> None:
        asyncio.get_running_loop().call_soon(self.finished.set)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ command line

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        """Add the subclass's own ``mesh run`` options (``--model``...) to ``parser``."""

    @classmethod
    def from_command_line(cls, argv: Sequence[str], node_options: dict[str, Any]) -> Agent:
        """Build the agent for ``mesh run``: ``argv`` holds the options ``mesh run`` did not
        know; raises InvalidArgument for a wrong or unknown one."""
        options = vars(cls._option_parser().parse_args(list(argv)))
        return cls(**node_options, **options)

    @classmethod
    def options_help(cls) -> str:
        """The agent's own options, as ``mesh run TARGET --help`` lists them after its own."""
        return cls._option_parser().format_help()

    @classmethod
    def _option_parser(cls) -> _OptionParser:
        target = f"{cls.__module__}:{cls.__qualname__}"
        parser = _OptionParser(
            prog=f"mesh run {target}",
            usage=f"mesh run {target} --name NAME [mesh run's options] [{cls.__name__}'s options]",
            add_help=False,
        )
        parser.add_argument("--description", default=None, help="what this agent is good at")
        cls.add_options(parser)
        return parser
