"""Mesh replies and errors as a gateway's clients see them: JSON values, text, typed errors.

Both gateways speak JSON; a mesh reply is msgpack and may hold bytes, a Blob or an array.
Streamed chunks from the LLM agents are dicts with a ``text`` field (and per-token figures);
a stream's *text* is those texts joined, and the chunks without text (a route, the final
figures) are kept as data.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..core.codec import Blob
from ..core.errors import MeshError, RemoteError


def json_default(value: Any) -> Any:
    """``json.dumps``'s fallback for what msgpack carries and JSON lacks: bytes (and a
    Blob) as base64, an array as nested lists."""
    if isinstance(value, bytes | bytearray | memoryview | Blob):
        return base64.b64encode(bytes(value)).decode("ascii")
    if hasattr(value, "tolist"):
        return value.tolist()
    return repr(value)


def jsonable(value: Any) -> Any:
    """``value`` made of JSON's types only (NaN and the infinities, which JSON lacks, as
    null)."""
    return json.loads(to_json(value))


def to_json(value: Any) -> str:
    """``value`` as strict JSON text: what every JSON parser reads."""
    try:
        return json.dumps(value, default=json_default, allow_nan=False)
    except ValueError:  # a NaN or an infinity somewhere
        return json.dumps(_finite(json.loads(json.dumps(value, default=json_default))))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def chunk_text(chunk: Any) -> str | None:
    """The text a streamed chunk carries: a string, or a dict's ``text`` string."""
    if isinstance(chunk, str):
        return chunk
    if isinstance(chunk, dict) and isinstance(chunk.get("text"), str):
        return chunk["text"]
    return None


@dataclass
class Assembled:
    """A stream's chunks put together: the text, and the chunks that carried no text."""

    text: str = ""
    data: list[Any] = field(default_factory=list)
    chunks: int = 0

    def add(self, chunk: Any) -> None:
        self.chunks += 1
        text = chunk_text(chunk)
        if text is not None:
            self.text += text
        else:
            self.data.append(jsonable(chunk))

    def result(self) -> dict[str, Any]:
        return {"text": self.text, "data": self.data, "chunks": self.chunks}


@dataclass(frozen=True)
class Failure:
    """A mesh error as a gateway reports it: its type name (``BadRequest``,
    ``RemoteError``...), what it says, and the remote exception's type if it has one."""

    type: str
    message: str
    remote_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.remote_type:
            found["remote_type"] = self.remote_type
        return found


def failure(exc: MeshError) -> Failure:
    """How ``exc``, raised by a call the gateway made for a client, is reported."""
    remote_type = exc.remote_type if isinstance(exc, RemoteError) else None
    message = str(exc) or type(exc).__name__
    return Failure(type(exc).__name__, message, remote_type)
