"""The base of every agent: a node, a card that says what the agent is good at, methods.

An agent is a class. Its methods marked with :func:`method` become the node's handlers, and
its *card* (kind, a one-line description, every method with its parameters; in the spirit of
A2A's agent cards) is published in discovery as ``meta["card"]``, so a router can choose by
meaning and ``mesh peers`` can show it. The lifecycle is ``await agent.start()`` (``setup``
loads models *before* the node registers, so no request reaches a half-loaded agent) and
``await agent.stop()``; ``async with`` does both.

``mesh run module:Class --name NAME [agent options]`` runs any subclass: options the
command does not know are parsed by the class's :meth:`Agent.add_options`.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn, Self

from mesh import InvalidArgument, Node

MAX_DESCRIPTION = 300


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
        await self.node.close()
        await self.teardown()

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
