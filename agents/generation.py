"""What a generation request may ask for, checked; and turning a growing decode into chunks.

Pure code, no torch: the rules a caller can break are checked here with messages that state
the rule (the caller gets them as :class:`mesh.BadRequest`), and :class:`TextAssembler`
decides what part of the text decoded so far is safe to send.

Why hold text back: a token boundary can fall inside a UTF-8 character (the decode ends
in U+FFFD until the next token completes it) or inside a stop string (``"\\n\\nUser:"``
arrives over several tokens). Text once streamed cannot be taken back, so the assembler
keeps the tail that might still turn out to be either, and sends it only once it cannot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mesh import InvalidArgument

DEFAULT_MAX_NEW_TOKENS = 64
MAX_STOP_STRINGS = 8
MAX_STOP_LEN = 64
MAX_PROMPT_CHARS = 32_000
MAX_MESSAGES = 64
ROLES = ("system", "user", "assistant")
PARAMETERS = ("max_new_tokens", "temperature", "top_p", "stop", "seed", "decode_on")
INCOMPLETE = "\ufffd"  # what a decoder shows for a character whose bytes have not all come


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings. ``temperature`` 0 means greedy; ``seed`` makes sampling repeatable."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any], *, limit: int) -> GenerationParams:
        """The parameters in a request body (other fields are the caller's business)."""
        max_new = body.get("max_new_tokens", min(DEFAULT_MAX_NEW_TOKENS, limit))
        if type(max_new) is not int or not 1 <= max_new <= limit:
            raise InvalidArgument(f"max_new_tokens must be an integer from 1 to {limit}")
        temperature = _number(body, "temperature", 0.0)
        if not 0.0 <= temperature <= 5.0:
            raise InvalidArgument("temperature must be from 0 (greedy) to 5")
        top_p = _number(body, "top_p", 1.0)
        if not 0.0 < top_p <= 1.0:
            raise InvalidArgument("top_p must be above 0 and at most 1")
        seed = body.get("seed")
        if seed is not None and (type(seed) is not int or not 0 <= seed < 2**63):
            raise InvalidArgument("seed must be a non-negative 64-bit integer")
        return cls(max_new, temperature, top_p, _stop_strings(body.get("stop", ())), seed)


def _number(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if type(value) not in (int, float) or not math.isfinite(value):
        raise InvalidArgument(f"{key} must be a number")
    return float(value)


def _stop_strings(value: Any) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if not (
        isinstance(stops, list | tuple)
        and len(stops) <= MAX_STOP_STRINGS
        and all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_LEN for s in stops)
    ):
        raise InvalidArgument(
            f"stop must be a string or a list of at most {MAX_STOP_STRINGS} non-empty strings "
            f"of at most {MAX_STOP_LEN} characters"
        )
    return tuple(stops)


def check_fields(body: Any, input_field: str) -> dict[str, Any]:
    """The body as a map holding ``input_field`` and known parameters only."""
    if not isinstance(body, dict):
        raise InvalidArgument(f"the body must be a map with {input_field!r} and parameters")
    unknown = sorted(str(k) for k in body if k != input_field and k not in PARAMETERS)
    if unknown:
        raise InvalidArgument(
            f"unknown parameter {unknown[0]!r}; known: {input_field}, {', '.join(PARAMETERS)}"
        )
    if input_field not in body:
        raise InvalidArgument(f"the body needs {input_field!r}")
    return body


def prompt_of(body: dict[str, Any]) -> str:
    prompt = body["prompt"]
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidArgument(f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters")
    return prompt


def messages_of(body: dict[str, Any]) -> list[dict[str, str]]:
    """A chat: a non-empty list of {role, content}, roles system/user/assistant."""
    messages = body["messages"]
    if not isinstance(messages, list) or not 0 < len(messages) <= MAX_MESSAGES:
        raise InvalidArgument(f"messages must be a list of 1 to {MAX_MESSAGES} messages")
    checked = []
    total = 0
    for message in messages:
        if not (
            isinstance(message, dict)
            and message.get("role") in ROLES
            and isinstance(message.get("content"), str)
            and set(message) <= {"role", "content"}
        ):
            raise InvalidArgument(
                f"each message must be {{role, content}} with role one of {', '.join(ROLES)}"
            )
        total += len(message["content"])
        checked.append({"role": message["role"], "content": message["content"]})
    if total > MAX_PROMPT_CHARS:
        raise InvalidArgument(f"messages hold at most {MAX_PROMPT_CHARS} characters in all")
    return checked


class TextAssembler:
    """Feeds on the whole text decoded so far; says what may be sent now, and when a stop
    string has appeared (the text is cut before it; the stop string itself is never sent)."""

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self.stop = stop
        self.sent = 0  # characters of the text already handed out
        self.stopped = False

    def feed(self, text: str) -> str:
        """The next piece to send (maybe empty). After a stop string, always empty."""
        if self.stopped:
            return ""
        cut = self._first_stop(text)
        if cut is not None:
            self.stopped = True
            return self._take(text, cut)
        return self._take(text, len(text) - self._held_back(text))

    def finish(self, text: str) -> str:
        """Generation ended: everything not yet sent (up to a stop string)."""
        if self.stopped:
            return ""
        cut = self._first_stop(text)
        self.stopped = cut is not None
        return self._take(text, len(text) if cut is None else cut)

    def _take(self, text: str, end: int) -> str:
        if end <= self.sent:
            return ""
        piece = text[self.sent : end]
        self.sent = end
        return piece

    def _first_stop(self, text: str) -> int | None:
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _held_back(self, text: str) -> int:
        """How many trailing characters might still become a stop string or a character."""
        held = 0
        for stop in self.stop:
            for length in range(min(len(stop) - 1, len(text)), held, -1):
                if text.endswith(stop[:length]):
                    held = length
                    break
        incomplete = len(text) - len(text.rstrip(INCOMPLETE))
        return max(held, incomplete)
