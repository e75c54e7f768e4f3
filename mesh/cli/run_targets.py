"""What ``mesh run`` runs: the built-in echo agent, ``a2a`` (an outside A2A agent brought
into the mesh, :mod:`mesh.gateway.a2a_peer`), or a user's ``module:attribute``.

A user's target is a callable taking the started-to-be :class:`Node` (a function or a
class): it registers handlers on the node and may return an object with an ``async
close()`` (or plain ``close()``) that is called when the node stops. For example::

    # myagent.py
    class Greeter:
        def __init__(self, node):
            node.handler("greet", self.greet)

        async def greet(self, body, ctx):
            return f"hello {body['name']}, from {ctx.peer}"

    $ mesh run myagent:Greeter --name greeter --discovery tcp://127.0.0.1:7700
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
from typing import Any

from ..core.errors import InvalidArgument
from ..runtime.node import Node

ECHO_CARD = {
    "kind": "echo",
    "description": "The built-in echo agent: echoes, streams back, sleeps and relays calls.",
    "default": "echo",
    "methods": [
        {
            "name": "announce",
            "description": "Publish the body on the topic agents.NAME.status.",
            "params": {"...": "any fields: published as sent"},
            "streams": False,
        },
        {
            "name": "echo",
            "description": "Return the body as sent.",
            "params": {"...": "any fields: returned as sent"},
            "streams": False,
        },
        {
            "name": "echo_stream",
            "description": "Stream each item back as one chunk.",
            "params": {"items": "list: each item becomes one chunk"},
            "streams": True,
        },
        {
            "name": "relay",
            "description": "Call a method on another agent and return its reply.",
            "params": {
                "to": "str: the agent's name",
                "method": "str (default echo)",
                "body": "optional: the body to pass",
            },
            "streams": False,
        },
        {
            "name": "sleep",
            "description": "Wait, then return the body.",
            "params": {"seconds": "float, 0..60 (default 1)"},
            "streams": False,
        },
        {
            "name": "whoami",
            "description": "The agent's name (after a wait, if the body is a number of seconds).",
            "params": {},
            "streams": False,
        },
    ],
}


def install_echo(node: Node) -> None:
    """The built-in agent: ``echo`` returns its body; ``echo_stream`` yields each item of a
    list body (or of its ``items``); ``sleep`` waits ``body`` (or its ``seconds``) seconds,
    at most 60, then returns it; ``whoami`` returns the node's name (after ``body`` seconds,
    if a number); ``announce`` publishes its body on the topic ``agents.NAME.status`` and
    returns the sequence number; ``relay`` calls ``{to, method, body}`` on another node and
    returns its reply (agent to agent). Its card (:data:`ECHO_CARD`) says so to gateways."""
    node.meta.setdefault("card", ECHO_CARD)

    @node.handler("announce")
    async def announce(body: Any) -> int:
        return await node.publish(f"agents.{node.name}.status", body)

    @node.handler("whoami")
    async def whoami(body: Any) -> str:
        if isinstance(body, int | float):  # optionally take a while, to show load balancing
            await asyncio.sleep(min(max(float(body), 0.0), 60.0))
        return node.name

    @node.handler("echo")
    async def echo(body: Any) -> Any:
        return body

    @node.handler("relay")
    async def relay(body: Any) -> Any:
        if not (isinstance(body, dict) and isinstance(body.get("to"), str)):
            raise InvalidArgument("relay needs {'to': peer, 'method': name, 'body': ...}")
        method = body.get("method", "echo")
        return await node.request(body["to"], str(method), body.get("body"), timeout=30)

    @node.handler("echo_stream")
    async def echo_stream(body: Any) -> Any:
        items = body.get("items") if isinstance(body, dict) else body
        for item in items if isinstance(items, list) else [items]:
            yield item

    @node.handler("sleep")
    async def sleep(body: Any) -> Any:
        seconds = body.get("seconds") if isinstance(body, dict) else body
        seconds = float(seconds) if isinstance(seconds, int | float) else 1.0
        await asyncio.sleep(min(max(seconds, 0.0), 60.0))
        return body


def load_target(target: str) -> Any:
    """``echo``, ``a2a`` or ``module:attribute`` to the callable that sets a node up."""
    if target == "echo":
        return install_echo
    if target == "a2a":
        try:
            from ..gateway.a2a_peer import A2APeer
        except ImportError as exc:
            raise InvalidArgument(
                f"mesh run a2a needs the gateway extra ({exc.name} missing): "
                "pip install 'agent-mesh[gateway]'"
            ) from exc
        return A2APeer
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise InvalidArgument(f"agent {target!r}: use 'echo', 'a2a' or 'module:attribute'")
    here = os.getcwd()  # as `python -m` and `uvicorn app:app` do: the user's folder imports
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidArgument(f"agent {target!r}: cannot import {module_name!r}: {exc}") from exc
    try:
        factory = getattr(module, attribute)
    except AttributeError as exc:
        raise InvalidArgument(f"agent {target!r}: {module_name} has no {attribute!r}") from exc
    if not callable(factory):
        raise InvalidArgument(f"agent {target!r} is not callable")
    return factory


async def close_agent(agent: Any) -> None:
    """Call the agent's ``close`` if it has one (sync or async)."""
    close = getattr(agent, "close", None)
    if callable(close):
        result = close()
        if inspect.isawaitable(result):
            await result
