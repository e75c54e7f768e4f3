"""The live agents a gateway offers, kept current from discovery.

The gateway's node is registered, so it hears discovery's JOIN, UPDATE and LEAVE events;
each one updates the catalog at once. A full lookup at start and then every
``refresh_s`` seconds repairs anything an event could not say (a discovery node that
restarted, an event lost while the gateway reconnected). Listeners are told after every
change, so an MCP server can send ``tools/list_changed`` and the A2A side can mount or
unmount an agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from ..core.errors import MeshError
from ..core.registry import PeerInfo
from ..runtime.node import Node
from .views import GATEWAY_KIND, AgentView, ToolNames, agent_view

log = logging.getLogger(__name__)
REFRESH_S = 30.0
RETRY_S = 2.0


class Catalog:
    """Agent name to :class:`AgentView` for every live node with a method to call, except
    gateways (the card kind ``gateway``, this one's included) and those named in ``hidden``."""

    def __init__(
        self, node: Node, *, hidden: Iterable[str] = (), refresh_s: float = REFRESH_S
    ) -> None:
        self.node = node
        self.hidden = {node.name, *hidden}
        self.refresh_s = refresh_s
        self.agents: dict[str, AgentView] = {}
        self.tools = ToolNames([])
        self.version = 0
        self._listeners: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` on the loop after every change of the catalog."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Fill the catalog once (raising if discovery cannot be asked), then keep it
        current in a task of its own until :meth:`close`."""
        self.node.on_peer_event(self._on_event)
        self._replace(await self.node.peers())
        self._task = asyncio.create_task(self._refresh_forever(), name="gateway-catalog")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def changed(self, version: int) -> int:
        """Wait until the catalog's version is past ``version``; return the new one."""
        while self.version <= version:
            self._changed.clear()
            await self._changed.wait()
        return self.version

    def _on_event(self, event: str, info: PeerInfo) -> None:
        if info.name in self.hidden:
            return
        if event == "LEAVE":
            if self.agents.pop(info.name, None) is not None:
                self._commit()
            return
        view = agent_view(info)
        if not _offered(view):
            if self.agents.pop(info.name, None) is not None:
                self._commit()
            return
        if self.agents.get(info.name) != view:
            self.agents[info.name] = view
            self._commit()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                self._replace(await self.node.peers())
            except MeshError as exc:  # discovery away: keep what we know, ask again soon
                log.warning("gateway: cannot refresh the agent list: %s", exc)
                await asyncio.sleep(RETRY_S)

    def _replace(self, peers: list[PeerInfo]) -> None:
        views = (agent_view(p) for p in peers if p.name not in self.hidden)
        fresh = {view.name: view for view in views if _offered(view)}
        if fresh != self.agents:
            self.agents = fresh
            self._commit()

    def _commit(self) -> None:
        self.tools = ToolNames(list(self.agents.values()))
        self.version += 1
        self._changed.set()
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # a listener's bug must not stop the catalog
                log.exception("gateway: a catalog listener failed")


def _offered(view: AgentView) -> bool:
    """Whether a gateway offers this node: not a gateway, and something to call (a
    subscriber with no handlers is no agent to a client)."""
    return view.kind != GATEWAY_KIND and bool(view.methods)
