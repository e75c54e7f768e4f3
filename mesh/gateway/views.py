"""What a gateway offers of a mesh agent, read from its directory entry: pure, no I/O.

An agent's card (``meta["card"]``, see ``agents/base.py``) says its kind, what it is good
at and each method with its parameters; the gateways turn that into MCP tools and A2A
skills. The card is the peer's own words, so everything here is checked and bounded: a
malformed card is read as no card, and a node without one still offers each capability as
a method taking any body.

One method of one agent is a :class:`MethodView`; the mapping both ways between a
gateway's names and the mesh's (``echo-1`` + ``echo`` is the tool ``echo-1__echo``) is a
:class:`ToolNames`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..core.registry import PeerInfo

GATEWAY_KIND = "gateway"  # a gateway's own node: never offered by another gateway
RESERVED_PREFIX = "mesh."  # the protocol's own methods (protocol.md 8.4): never offered
MAX_METHODS = 64
MAX_PARAMS = 32
MAX_TEXT = 1_000
MAX_TOOL_NAME = 64  # the strictest limit MCP clients apply to tool names
MAX_METHOD_PART = 30
TOOL_SEPARATOR = "__"
EXTRA_FIELDS = "..."  # a card param saying "more fields are passed on"
_TOOL_CHAR = re.compile(r"[^A-Za-z0-9_-]")
_TYPES = {  # the leading word of a card param's description, to a JSON schema type
    "int": "integer",
    "float": "number",
    "number": "number",
    "str": "string",
    "string": "string",
    "bool": "boolean",
    "list": "array",
    "[": "array",
    "dict": "object",
    "{": "object",
}
_TEXT_PARAMS = ("text", "prompt", "question", "query", "input")  # where plain text goes
CHAT_PARAM = "messages"  # [{role, content}]: plain text becomes one user message


@dataclass(frozen=True)
class MethodView:
    """One method as a gateway offers it. ``params`` maps body fields to their card
    description; ``carded`` is False for a capability of a node without a card (its whole
    body is one ``body`` argument)."""

    agent: str
    name: str
    description: str
    params: dict[str, str]
    streams: bool
    carded: bool

    def input_schema(self) -> dict[str, Any]:
        """A JSON schema of the arguments: one property per card param (typed where its
        description starts with a type word), required unless it says optional or a
        default; a node without a card takes ``{"body": anything}``."""
        if not self.carded:
            return {
                "type": "object",
                "properties": {"body": {"description": "the request body, passed as is"}},
            }
        properties: dict[str, Any] = {}
        required = []
        for field, text in self.params.items():
            if field == EXTRA_FIELDS:
                continue
            schema: dict[str, Any] = {"description": text}
            kind = _type_of(text)
            if kind is not None:
                schema["type"] = kind
            properties[field] = schema
            lowered = text.lower()
            if not (lowered.startswith("optional") or "default" in lowered):
                required.append(field)
        return {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": True,  # agents check their own bodies
        }

    def body_from_arguments(self, arguments: dict[str, Any] | None) -> Any:
        """The mesh request body for a tool call's arguments."""
        arguments = arguments or {}
        if not self.carded:
            return arguments.get("body")
        return dict(arguments) if arguments or self.params else None

    def body_from_message(self, texts: list[str], data: list[Any]) -> Any:
        """The mesh request body for an A2A message's parts, the way the card's params say:
        an object data part is the body (its text, if any, fills the text field it lacks);
        plain text fills the method's text field (``text``, ``prompt``, ``question``,
        ``query``, ``input`` or its only param) or becomes one user message of a chat."""
        text = "\n".join(texts)
        objects = [item for item in data if isinstance(item, dict)]
        body: dict[str, Any] = {}
        for item in objects:
            body.update(item)
        if not self.carded:
            if objects:
                return body
            if data:
                return data[0]
            return text or None
        field = self.text_field()
        if field is None:
            if body or data:
                return body if objects else data[0]
            return text or None
        if text and field not in body:
            body[field] = [{"role": "user", "content": text}] if field == CHAT_PARAM else text
        return body

    def text_field(self) -> str | None:
        """Which body field plain text fills, or None when the method takes no text."""
        fields = [name for name in self.params if name != EXTRA_FIELDS]
        for name in (*_TEXT_PARAMS, CHAT_PARAM):
            if name in fields:
                return name
        return fields[0] if len(fields) == 1 else None


@dataclass(frozen=True)
class AgentView:
    """One live agent: its card read and bounded, or its capabilities when it has none."""

    name: str
    kind: str
    description: str
    methods: tuple[MethodView, ...]
    default_method: str | None

    def method(self, name: str) -> MethodView | None:
        return next((m for m in self.methods if m.name == name), None)

    @property
    def streams(self) -> bool:
        return any(m.streams for m in self.methods)


def agent_view(info: PeerInfo) -> AgentView:
    """What ``info``'s card (or, without a readable one, its capabilities) offers."""
    card = info.meta.get("card") if isinstance(info.meta, dict) else None
    methods = _carded_methods(info.name, card) if isinstance(card, dict) else None
    if methods is None:
        methods = tuple(
            MethodView(info.name, name, f"{name} on {info.name}", {}, False, False)
            for name in sorted(info.capabilities)[:MAX_METHODS]
            if not name.startswith(RESERVED_PREFIX)
        )
        return AgentView(info.name, "node", f"The mesh node {info.name}.", methods, None)
    assert isinstance(card, dict)
    kind = _text(card.get("kind")) or "agent"
    description = _text(card.get("description")) or f"The mesh agent {info.name}."
    names = {m.name for m in methods}
    default = card.get("default")
    if not (isinstance(default, str) and default in names):
        default = methods[0].name if len(methods) == 1 else None
    return AgentView(info.name, kind, description, methods, default)


def _carded_methods(agent: str, card: dict[str, Any]) -> tuple[MethodView, ...] | None:
    listed = card.get("methods")
    if not isinstance(listed, list):
        return None
    found: dict[str, MethodView] = {}
    for entry in listed[:MAX_METHODS]:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name")
        if not isinstance(name, str) or not name or name.startswith(RESERVED_PREFIX):
            continue
        params = entry.get("params")
        params = params if isinstance(params, dict) else {}
        found.setdefault(
            name,
            MethodView(
                agent,
                name[:MAX_TEXT],
                _text(entry.get("description")) or name,
                {
                    key[:MAX_TEXT]: _text(value)
                    for key, value in list(params.items())[:MAX_PARAMS]
                    if isinstance(key, str) and key
                },
                entry.get("streams") is True,
                True,
            ),
        )
    return tuple(sorted(found.values(), key=lambda m: m.name))


def _text(value: Any) -> str:
    """A card's free text, one line, bounded; anything else is no text."""
    return " ".join(value.split())[:MAX_TEXT] if isinstance(value, str) else ""


def _type_of(description: str) -> str | None:
    words = description.replace(",", " ").split()
    if description.startswith(("[", "{")):
        return _TYPES[description[0]]
    return _TYPES.get(words[0].lower()) if words else None


class ToolNames:
    """Tool names for agents' methods, both ways. A name is ``AGENT__METHOD`` with every
    character outside ``A-Z a-z 0-9 _ -`` made ``_`` and each part cut (what MCP clients
    accept: 64 characters). Two methods that would share a name are both left out (and
    listed in ``ambiguous``): a name never reaches a method it does not mean, and one
    agent joining never takes over another's tool."""

    def __init__(self, agents: list[AgentView]) -> None:
        found: dict[str, list[MethodView]] = {}
        for agent in agents:
            for method in agent.methods:
                found.setdefault(tool_name(agent.name, method.name), []).append(method)
        self.by_name = {name: methods[0] for name, methods in found.items() if len(methods) == 1}
        self.ambiguous = sorted(name for name, methods in found.items() if len(methods) > 1)

    def lookup(self, name: str) -> MethodView | None:
        return self.by_name.get(name)


def tool_name(agent: str, method: str) -> str:
    """``AGENT__METHOD`` within 64 characters: room kept for the method's part."""
    method_part = _TOOL_CHAR.sub("_", method)[:MAX_METHOD_PART]
    room = MAX_TOOL_NAME - len(TOOL_SEPARATOR) - len(method_part)
    return f"{_TOOL_CHAR.sub('_', agent)[:room]}{TOOL_SEPARATOR}{method_part}"
