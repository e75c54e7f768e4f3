"""Topic names and subscription patterns, in the spirit of NATS subjects (pure code).

A topic is a dot-separated list of non-empty tokens: ``orders.eu.new``. A pattern is a topic
in which a token may be ``*`` (exactly one token) and the last token may be ``>`` (one or
more tokens): ``orders.*`` matches ``orders.new`` but not ``orders.eu.new``; ``orders.>``
matches both, and not ``orders`` itself.

Matching happens at the edges, never on the wire: topic names are hashed into keyed tags
there (protocol.md, 7.8), so a subscriber learns concrete topic names from the publishers'
directory entries and matches its patterns against them, and discovery matches registered
patterns against a topic when a publisher asks who subscribes.

Specified in protocol.md 10.1 (names and patterns).
"""

from __future__ import annotations

from .errors import InvalidArgument
from .wire import MAX_NAME_LEN

ONE = "*"
REST = ">"
_FORBIDDEN = frozenset(" \t\r\n\x00")


def _tokens(text: object, what: str) -> list[str]:
    if not isinstance(text, str) or not 0 < len(text) <= MAX_NAME_LEN:
        raise InvalidArgument(f"a {what} is a string of 1 to {MAX_NAME_LEN} characters")
    if _FORBIDDEN & set(text):
        raise InvalidArgument(f"{what} {text!r} contains whitespace or NUL")
    tokens = text.split(".")
    if "" in tokens:
        raise InvalidArgument(f"{what} {text!r} has an empty token (check the dots)")
    return tokens


def validate_topic(topic: object) -> str:
    """Return ``topic`` if it is a concrete topic name; raise InvalidArgument otherwise."""
    tokens = _tokens(topic, "topic")
    if ONE in tokens or REST in tokens:
        raise InvalidArgument(f"topic {topic!r} contains a wildcard: publish to a concrete topic")
    assert isinstance(topic, str)
    return topic


def validate_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a valid subscription pattern; raise InvalidArgument."""
    tokens = _tokens(pattern, "pattern")
    if REST in tokens[:-1]:
        raise InvalidArgument(f"pattern {pattern!r}: '>' may only be the last token")
    assert isinstance(pattern, str)
    return pattern


def matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` (concrete) falls under ``pattern``. Both must be valid."""
    if pattern == topic:
        return True
    wanted = pattern.split(".")
    given = topic.split(".")
    for index, token in enumerate(wanted):
        if token == REST:
            return len(given) > index
        if index >= len(given) or (token != ONE and token != given[index]):
            return False
    return len(given) == len(wanted)
