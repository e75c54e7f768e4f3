"""The peer the README's embedding sample talks to: ``echo``, a streamed ``generate`` and a
one-way ``event``. From the checkout: ``mesh run examples.bob:Bob --name bob``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from mesh import Node


class Bob:
    def __init__(self, node: Node) -> None:
        node.handler("echo", self.echo)
        node.handler("generate", self.generate)
        node.handler("event", self.event)

    async def echo(self, body: Any) -> Any:
        return body

    async def generate(self, body: Any) -> AsyncIterator[str]:
        for token in ("hello", "world"):
            yield token

    async def event(self, body: Any) -> None:
        return None
