"""Embed a mesh node in an existing asyncio application.

The "application" here is a ticker that keeps running while the node serves and calls.
Run a mesh first (``mesh discovery &``, ``mesh run echo --name echo-1 &``), then
``python examples/asyncio_app.py``.
"""

from __future__ import annotations

import asyncio
import sys

from mesh import MeshError, Node


async def application(state: dict[str, int]) -> None:
    """Stands for whatever the app already does on its event loop."""
    while True:
        state["ticks"] += 1
        await asyncio.sleep(0.01)


async def main() -> int:
    state = {"ticks": 0}
    app = asyncio.create_task(application(state))
    try:
        async with Node("asyncio-app") as node:

            @node.handler("status")
            async def status(body: object) -> dict[str, int]:
                return dict(state)

            replies = await asyncio.gather(
                *(node.request("echo-1", "echo", {"n": n}, timeout=5) for n in range(5))
            )
            print(f"echo-1 answered {replies}")
            async for chunk in node.stream("echo-1", "echo_stream", ["a", "b"], timeout=5):
                print(f"streamed {chunk}")
            print(f"the app kept running: {state['ticks'] > 0}")
    except MeshError as exc:
        print(f"asyncio-app: {exc}", file=sys.stderr)
        return 1
    finally:
        app.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
