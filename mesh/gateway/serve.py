"""A gateway's mesh side: its node, registered under its own identity, and the catalog."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ..runtime.keystore import MeshDirectory
from ..runtime.node import Node
from .catalog import Catalog
from .views import GATEWAY_KIND


@contextlib.asynccontextmanager
async def gateway_node(
    name: str, *, discovery: str | None, mesh: MeshDirectory, description: str
) -> AsyncIterator[tuple[Node, Catalog]]:
    """Start the gateway's node and fill its catalog; close both on exit. The node
    registers (so it hears JOIN and LEAVE) with a card of kind ``gateway`` and no methods:
    other gateways leave it out, and no client can call the gateway's own node."""
    card: dict[str, Any] = {"kind": GATEWAY_KIND, "description": description, "methods": []}
    async with Node(name, discovery=discovery, mesh=mesh, meta={"card": card}) as node:
        catalog = Catalog(node)
        await catalog.start()
        try:
            yield node, catalog
        finally:
            await catalog.close()
