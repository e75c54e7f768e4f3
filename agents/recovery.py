"""Reading a generation so that it survives the agent serving it dying mid-way.

A generation that moves between agents (a ``move``, a drain) is handed over whole or not
at all. What no hand-over can save is an agent killed outright, with its state: its reader
gets one typed error (PeerLost, RequestTimeout...). A reader that would rather have the
answer asks for a restart: :func:`stream_generation` then asks the next agent serving the
same model for the same generation from its prompt, and passes on only what comes after
the tokens already read, checking that the replayed part is the very text it read. That
holds only for a generation that is reproducible: greedy (temperature 0) or seeded; any
other cannot be restarted without the reader seeing two different answers spliced, so its
failure is raised as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from mesh import (
    InvalidArgument,
    MeshError,
    Node,
    PeerLost,
    PeerNotFound,
    RedirectFailed,
    RequestTimeout,
)

# the agent (or the one it moved to) is gone: another may start the generation again
RESTARTABLE = (PeerLost, PeerNotFound, RequestTimeout, RedirectFailed)


class RestartDiverged(MeshError):
    """A restarted generation did not repeat the text already read: another model, or
    not reproducible after all. Nothing of it was passed on."""


async def stream_generation(
    node: Node,
    agents: Sequence[str],
    method: str,
    body: dict[str, Any],
    *,
    timeout: float | None = 60.0,
    window: int = 64,
) -> AsyncIterator[dict[str, Any]]:
    """The chunks of ``method(body)`` (``generate_stream`` or ``chat_stream``) from the
    first of ``agents``; if the agent serving it is lost, the same generation from the
    next one, from what was already read on. Raises the last failure when no agent is
    left, and at once for a generation that is not reproducible."""
    if not agents:
        raise InvalidArgument("stream_generation needs at least one agent")
    reproducible = body.get("temperature", 0) == 0 or body.get("seed") is not None
    read_tokens, read_text = 0, ""
    for index, agent in enumerate(agents):
        replayed = ""
        chunks = node.stream(agent, method, body, timeout=timeout, window=window)
        try:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    tokens = chunk.get("tokens") if "text" in chunk else None
                    if tokens is not None and tokens <= read_tokens:  # read already
                        replayed += chunk["text"]
                        if not read_text.startswith(replayed):
                            raise RestartDiverged(f"{agent} did not repeat the text read")
                        continue
                    if tokens is not None:
                        if replayed != read_text:
                            raise RestartDiverged(f"{agent} did not repeat the text read")
                        read_tokens, read_text = tokens, read_text + chunk["text"]
                    elif index and chunk.get("done"):
                        chunk = {**chunk, "restarted_on": agent}
                    elif index and "queued" in chunk:
                        continue  # the reader's stream began elsewhere
                    yield chunk
                    replayed = read_text
            return
        except RESTARTABLE:
            if not reproducible or index == len(agents) - 1:
                raise
