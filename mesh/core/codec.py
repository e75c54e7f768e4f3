"""Messages and their msgpack encoding, with binary attachments kept out of msgpack.

A sealed frame carries a *payload*: a msgpack array of messages, each
``[kind, msg_id, corr_id, name, ttl_ms, body, meta]``. Bodies are plain msgpack data.
Large binary values (numpy arrays, torch tensors, :class:`Blob`) are not re-encoded: each
becomes one attachment frame of raw bytes, and the body holds a small ext value (type
``EXT_ATTACHMENT``) naming the frame, its dtype and shape. On receipt the array is built
over the decrypted buffer itself, so a float32 tensor arrives without a per-element copy.

Decoding is for untrusted bytes (authenticated, but from a peer that may be buggy or
compromised). Contract: :func:`decode_payload` raises only :class:`MalformedEnvelope`
subclasses (and :class:`UnsupportedAttachment`); anything else escaping is a bug.
Every length is bounded by the buffer, depth by ``MAX_DEPTH``, map keys must be strings,
strings valid UTF-8, and the only ext type is the project's own.

Specified in protocol.md 7.5 (messages), 7.6 (message kinds), 7.7 (attachments).
"""

from __future__ import annotations

import importlib
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import NoneType
from typing import Any

import msgpack

from .errors import (
    InvalidArgument,
    InvalidBody,
    LimitExceeded,
    MalformedEnvelope,
    ProtocolError,
    UnsupportedAttachment,
)
from .wire import (
    EXT_ATTACHMENT,
    KIND_VALUES,
    MAX_ATTACHMENTS,
    MAX_BATCH,
    MAX_DEPTH,
    MAX_NAME_LEN,
    MAX_TTL_MS,
    MAX_U64,
    AttachmentKind,
    Kind,
)


@dataclass(frozen=True, slots=True)
class Message:
    """One message inside a sealed frame. See protocol.md, "Messages".

    ``kind`` is a :class:`mesh.core.wire.Kind`; ``name`` is the method or topic; ``corr_id`` links
    a reply, error or stream chunk to its request; ``ttl_ms`` (0 = none) counts from the
    frame's timestamp; ``meta`` carries optional headers such as a trace context.
    """

    kind: int
    msg_id: int
    corr_id: int = 0
    name: str = ""
    body: Any = None
    ttl_ms: int = 0
    meta: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # Runs for every message sent and received, so the common case is one chained test.
        if not (
            (type(self.kind) is int or type(self.kind) is Kind)
            and self.kind in KIND_VALUES
            and type(self.msg_id) is int
            and 0 <= self.msg_id <= MAX_U64
            and type(self.corr_id) is int
            and 0 <= self.corr_id <= MAX_U64
            and type(self.ttl_ms) is int
            and 0 <= self.ttl_ms <= MAX_TTL_MS
            and type(self.name) is str
            and len(self.name) <= MAX_NAME_LEN
            and (self.meta is None or type(self.meta) is dict)
        ):
            raise InvalidArgument(self._header_problem())

    def _header_problem(self) -> str:
        if type(self.kind) not in (int, Kind) or self.kind not in KIND_VALUES:
            return f"unknown message kind {self.kind!r}"
        for name, value, top in (
            ("msg_id", self.msg_id, MAX_U64),
            ("corr_id", self.corr_id, MAX_U64),
            ("ttl_ms", self.ttl_ms, MAX_TTL_MS),
        ):
            if type(value) is not int or not 0 <= value <= top:
                return f"{name} must be an integer from 0 to {top}"
        if type(self.name) is not str or len(self.name) > MAX_NAME_LEN:
            return f"name must be a string of at most {MAX_NAME_LEN} characters"
        return "meta must be a dict or None"


class Blob:
    """Raw bytes that travel as an attachment frame instead of inside msgpack.

    Wrap large ``bytes`` in a Blob to avoid a copy into the msgpack buffer. A received
    Blob's ``data`` is a writable ``memoryview`` of the decrypted bytes, whatever its size
    (large ones are decrypted where they arrived, without a copy): ``bytes(blob)`` for a
    ``bytes`` copy. Compares equal to another Blob with the same bytes.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = data

    def __bytes__(self) -> bytes:
        return bytes(self.data)

    def __len__(self) -> int:
        return memoryview(self.data).nbytes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Blob) and bytes(self.data) == bytes(other.data)

    def __hash__(self) -> int:
        return hash(bytes(self.data))

    def __repr__(self) -> str:
        return f"Blob({len(self)} bytes)"


class Unmaterialised:
    """A valid array or tensor attachment this process cannot build (numpy or torch is not
    installed): its description and raw bytes, in place of the value. A node answers a
    request holding one with BAD_REQUEST instead of running it (protocol.md 7.7)."""

    __slots__ = ("data", "dtype", "library", "shape")

    def __init__(self, library: str, dtype: str, shape: list[int], data: Any) -> None:
        self.library = library
        self.dtype = dtype
        self.shape = shape
        self.data = data

    def __repr__(self) -> str:
        return f"Unmaterialised({self.library} {self.dtype} {self.shape})"


# --------------------------------------------------------------------------- dtypes

_NUMPY_DTYPES = frozenset(
    order + code
    for order in "<>"
    for code in ("i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "c8", "c16")
) | {"|b1", "|i1", "|u1"}
_TORCH_ITEMSIZE = {  # bytes per element, known without torch (so sizes are checked anyway)
    "bool": 1,
    "uint8": 1,
    "int8": 1,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
    "complex64": 8,
    "complex128": 16,
}
_TORCH_DTYPES = frozenset(_TORCH_ITEMSIZE)
MAX_NDIM = 32


def _numpy() -> Any:
    return sys.modules.get("numpy")


def _torch() -> Any:
    return sys.modules.get("torch")


_leaf_cache: dict[tuple[bool, bool], tuple[type, ...]] = {}


def _attachment_types() -> tuple[type, ...]:
    """Types that become attachments: Blob and Unmaterialised (an array passed on as it
    came), plus numpy/torch arrays once those are imported."""
    np, torch = _numpy(), _torch()
    key = (np is None, torch is None)
    types = _leaf_cache.get(key)
    if types is None:
        found: list[type] = [Blob, Unmaterialised]
        if np is not None:
            found.append(np.ndarray)
        if torch is not None:
            found.append(torch.Tensor)
        types = _leaf_cache[key] = tuple(found)
    return types


# --------------------------------------------------------------------------- validation

_SCALARS = frozenset({NoneType, bool, int, float, str, bytes})
_SCALAR_BASES = (int, float, str, bytes)


def _check_tree(value: Any, depth: int, leaves: tuple[type, ...], error: type[Exception]) -> None:
    """Walk containers only: depth bound, string map keys, allowed leaf types."""
    kind = type(value)
    if kind is list or kind is tuple:
        items: Any = value
    elif kind is dict:
        if not set(map(type, value)) <= {str}:
            raise _tree_error(error, "map keys must be strings", "map_key")
        items = value.values()
    elif kind in _SCALARS or isinstance(value, (leaves, _SCALAR_BASES)):
        return  # subclasses (an IntEnum, a str subclass) travel as their base type
    else:
        raise _tree_error(error, f"values of type {kind.__name__} cannot be sent", "type")
    if depth >= MAX_DEPTH:
        raise (
            LimitExceeded("nesting depth", depth + 1, MAX_DEPTH)
            if error is MalformedEnvelope
            else InvalidBody(f"nesting deeper than {MAX_DEPTH} levels")
        )
    if set(map(type, items)) <= _SCALARS:
        return
    for item in items:
        _check_tree(item, depth + 1, leaves, error)


def _tree_error(error: type[Exception], message: str, reason: str) -> Exception:
    return (
        MalformedEnvelope(message, reason=reason) if error is MalformedEnvelope else error(message)
    )


# --------------------------------------------------------------------------- encoding


def encode_payload(messages: Sequence[Message]) -> tuple[bytes, list[memoryview]]:
    """Pack ``messages`` into one msgpack payload plus the attachment buffers it references.

    Raises :class:`InvalidBody` if a body holds something msgpack cannot carry, nests deeper
    than ``MAX_DEPTH``, has non-string map keys, or has too many attachments.
    """
    if not 0 < len(messages) <= MAX_BATCH:
        raise InvalidArgument(f"a frame carries 1 to {MAX_BATCH} messages")
    leaves = _attachment_types()
    attachments: list[memoryview] = []

    def attach(obj: Any) -> msgpack.ExtType:
        if len(attachments) >= MAX_ATTACHMENTS:
            raise InvalidBody(f"more than {MAX_ATTACHMENTS} attachments in one frame")
        descriptor, buffer = _describe_attachment(obj)
        attachments.append(buffer)
        # a small buffer: packb's default (256 KiB) while the outer packb holds its own
        # costs a fresh allocation, ~10 us a frame
        meta = msgpack.packb([len(attachments) - 1, *descriptor], buf_size=256)
        return msgpack.ExtType(EXT_ATTACHMENT, meta)

    rows = []
    for m in messages:
        _check_tree(m.body, 1, leaves, InvalidBody)
        if m.meta is not None:
            _check_tree(m.meta, 1, leaves, InvalidBody)
        rows.append([m.kind, m.msg_id, m.corr_id, m.name, m.ttl_ms, m.body, m.meta])
    try:
        payload = msgpack.packb(rows, default=attach, use_bin_type=True)
    except InvalidBody:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidBody(f"body cannot be encoded: {exc}") from exc
    return payload, attachments


def encode_row(message: Message) -> bytes | None:
    """``message`` packed alone, to be coalesced with others by :func:`payload_of_rows`;
    None when it needs attachments (whose indices are per frame: it goes alone). Raises
    :class:`InvalidBody` as :func:`encode_payload` does, so a caller learns at once."""
    payload, attachments = encode_payload([message])
    return None if attachments else payload[1:]  # past the one-byte array header


def payload_of_rows(rows: Sequence[bytes]) -> bytes:
    """The payload of a frame carrying the messages of ``rows`` (from :func:`encode_row`):
    byte for byte what :func:`encode_payload` makes of the same messages."""
    if not 0 < len(rows) <= MAX_BATCH:
        raise InvalidArgument(f"a frame carries 1 to {MAX_BATCH} messages")
    return msgpack.Packer().pack_array_header(len(rows)) + b"".join(rows)


def _describe_attachment(obj: Any) -> tuple[list[Any], memoryview]:
    if isinstance(obj, Blob):
        return [AttachmentKind.BLOB], memoryview(obj.data).cast("B")
    if isinstance(obj, Unmaterialised):  # forwarded unchanged by a node without its library
        kind = AttachmentKind.NDARRAY if obj.library == "numpy" else AttachmentKind.TENSOR
        return [kind, obj.dtype, obj.shape], memoryview(obj.data).cast("B")
    np, torch = _numpy(), _torch()
    if np is not None and isinstance(obj, np.ndarray):
        array = np.ascontiguousarray(obj)
        if array.dtype.str not in _NUMPY_DTYPES:
            raise InvalidBody(f"numpy dtype {array.dtype} cannot be sent as an attachment")
        flat = array.reshape(-1).view(np.uint8)
        return [AttachmentKind.NDARRAY, array.dtype.str, list(array.shape)], memoryview(flat)
    if torch is not None and isinstance(obj, torch.Tensor):
        tensor = obj.detach().to("cpu").contiguous()
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in _TORCH_DTYPES:
            raise InvalidBody(f"torch dtype {dtype} cannot be sent as an attachment")
        flat = tensor.reshape(-1).view(torch.uint8).numpy()
        return [AttachmentKind.TENSOR, dtype, list(tensor.shape)], memoryview(flat)
    if isinstance(obj, int):
        raise InvalidBody(f"integer {obj} is outside the range -2**63 to 2**64-1")
    raise InvalidBody(f"values of type {type(obj).__name__} cannot be sent")


# --------------------------------------------------------------------------- decoding


def decode_payload(
    payload: bytes | bytearray | memoryview,
    attachments: Sequence[bytearray | memoryview],
    unmaterialised: list[int] | None = None,
) -> list[Message]:
    """Unpack a payload; materialise each attachment over its buffer. See module contract.

    An array this process has no library for raises UnsupportedAttachment, unless the
    caller passes ``unmaterialised``: then it becomes an :class:`Unmaterialised` and the
    index of each message holding one is appended there (the message can be answered)."""
    used = [False] * len(attachments)
    lacking: list[bool] = []

    def ext_hook(code: int, data: bytes) -> Any:
        if code != EXT_ATTACHMENT:
            raise MalformedEnvelope(f"msgpack ext type {code} is not allowed", reason="ext")
        index, kind, described = _parse_descriptor(data, len(attachments))
        if used[index]:
            raise MalformedEnvelope("attachment referenced twice", reason="attachment_ref")
        used[index] = True
        value = _materialise(kind, described, attachments[index], unmaterialised is not None)
        if isinstance(value, Unmaterialised):
            lacking.append(True)
        return value

    size = len(payload)
    try:
        rows = msgpack.unpackb(
            payload,
            ext_hook=ext_hook,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
            max_ext_len=1024,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack signals bad input with several exception types
        raise _unpack_error(exc) from exc
    messages = _messages_from_rows(rows)
    if not all(used):
        raise MalformedEnvelope("attachment frame not referenced", reason="attachment_ref")
    if lacking and unmaterialised is not None:  # rare: find which messages hold them
        unmaterialised.extend(
            index
            for index, message in enumerate(messages)
            if _holds_unmaterialised(message.body) or _holds_unmaterialised(message.meta)
        )
    return messages


def _holds_unmaterialised(value: Any) -> bool:
    if isinstance(value, Unmaterialised):
        return True
    if isinstance(value, list):
        return any(_holds_unmaterialised(item) for item in value)
    if isinstance(value, dict):
        return any(_holds_unmaterialised(item) for item in value.values())
    return False


_DECLARED_LENGTH = re.compile(r"(\d+) exceeds (max_\w+)\((\d+)\)")


def unpack_bounded(
    data: bytes,
    what: str,
    *,
    reason: str = "malformed",
    max_array: int,
    max_str: int = 0,
    max_bin: int = 0,
) -> Any:
    """A small msgpack structure from untrusted bytes: a certificate, a handshake payload, an
    attachment descriptor.

    No maps and no ext types; strings, binaries and arrays are capped before anything is
    allocated (0 forbids the type). Whatever msgpack raises (it signals bad input with several
    exception types) becomes one :class:`MalformedEnvelope` naming ``what``, counted as
    ``reason``.
    """
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            max_array_len=max_array,
            max_str_len=max_str,
            max_bin_len=max_bin,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:
        raise MalformedEnvelope(f"{what} is not valid msgpack: {exc}", reason=reason) from exc


def _unpack_error(exc: Exception) -> MalformedEnvelope:
    """Name what msgpack refused, so every kind of bomb has one typed, counted error."""
    if isinstance(exc, msgpack.exceptions.StackError):
        return LimitExceeded("nesting depth", MAX_DEPTH + 1, MAX_DEPTH)
    if isinstance(exc, msgpack.ExtraData):
        return MalformedEnvelope("trailing bytes after the payload", reason="trailing")
    if isinstance(exc, UnicodeDecodeError):
        return MalformedEnvelope("string is not valid UTF-8", reason="utf8")
    text = str(exc)
    if match := _DECLARED_LENGTH.search(text):
        return LimitExceeded(f"declared {match[2][4:]}", int(match[1]), int(match[3]))
    if "incomplete input" in text:
        return MalformedEnvelope("payload is truncated", reason="truncated")
    if "map key" in text:
        return MalformedEnvelope("map keys must be strings", reason="map_key")
    return MalformedEnvelope(f"payload is not valid msgpack: {text}")


def _messages_from_rows(rows: Any) -> list[Message]:
    if type(rows) is not list or not 0 < len(rows) <= MAX_BATCH:
        raise MalformedEnvelope("payload must be an array of 1 to 1024 messages")
    leaves = _attachment_types()
    messages = []
    for row in rows:
        if type(row) is not list or len(row) != 7:
            raise MalformedEnvelope("a message must be an array of 7 fields")
        try:
            message = Message(row[0], row[1], row[2], row[3], row[5], row[4], row[6])
        except InvalidArgument as exc:
            raise MalformedEnvelope(f"bad message header: {exc}") from exc
        _check_tree(message.body, 1, leaves, MalformedEnvelope)
        if message.meta is not None:
            _check_tree(message.meta, 1, leaves, MalformedEnvelope)
        messages.append(message)
    return messages


def _parse_descriptor(data: bytes, count: int) -> tuple[int, int, list[Any]]:
    fields = unpack_bounded(
        data, "attachment descriptor", reason="attachment_ref", max_array=MAX_NDIM + 4, max_str=32
    )
    if not (
        isinstance(fields, list)
        and len(fields) >= 2
        and type(fields[0]) is int
        and type(fields[1]) is int
        and 0 <= fields[0] < count
    ):
        raise MalformedEnvelope("bad attachment descriptor", reason="attachment_ref")
    return fields[0], fields[1], fields[2:]


def _materialise(
    kind: int, described: list[Any], buffer: bytearray | memoryview, lenient: bool = False
) -> Any:
    if kind == AttachmentKind.BLOB and not described:
        return Blob(buffer if isinstance(buffer, memoryview) else memoryview(buffer))
    if kind not in (AttachmentKind.NDARRAY, AttachmentKind.TENSOR) or len(described) != 2:
        raise MalformedEnvelope("bad attachment descriptor", reason="attachment_ref")
    dtype, shape = described
    if not (
        isinstance(shape, list)
        and len(shape) <= MAX_NDIM
        and all(type(n) is int and n >= 0 for n in shape)
    ):
        raise MalformedEnvelope("bad attachment shape", reason="attachment_ref")
    try:
        if kind == AttachmentKind.NDARRAY:
            return _as_ndarray(dtype, shape, buffer)
        return _as_tensor(dtype, shape, buffer)
    except UnsupportedAttachment:
        if not lenient:
            raise
        library = "numpy" if kind == AttachmentKind.NDARRAY else "torch"
        return Unmaterialised(library, dtype, shape, buffer)


def _import_for_attachment(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UnsupportedAttachment(
            f"an attachment needs {module}, which is not installed"
        ) from exc


def _as_ndarray(dtype: Any, shape: list[int], buffer: bytearray) -> Any:
    if dtype not in _NUMPY_DTYPES:
        raise MalformedEnvelope(f"dtype {dtype!r} is not allowed", reason="attachment_ref")
    itemsize = int(dtype[2:])
    if math.prod(shape) * itemsize != len(buffer):
        raise MalformedEnvelope("attachment size does not match its shape", reason="attachment_ref")
    np = _numpy() or _import_for_attachment("numpy")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _as_tensor(dtype: Any, shape: list[int], buffer: bytearray) -> Any:
    if dtype not in _TORCH_DTYPES:
        raise MalformedEnvelope(f"dtype {dtype!r} is not allowed", reason="attachment_ref")
    if math.prod(shape) * _TORCH_ITEMSIZE[dtype] != len(buffer):
        raise MalformedEnvelope("attachment size does not match its shape", reason="attachment_ref")
    torch = _torch() or _import_for_attachment("torch")
    torch_dtype = getattr(torch, dtype)
    if not buffer:
        return torch.empty(shape, dtype=torch_dtype)
    return torch.frombuffer(buffer, dtype=torch_dtype).reshape(shape)
