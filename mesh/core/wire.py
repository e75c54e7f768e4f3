"""Numbers of the wire format: versions, frame types, message kinds, error codes and limits.

Everything here is a constant that protocol.md defines; nothing here does work. Keeping
them in one module means the spec has exactly one counterpart in code.

Specified in protocol.md 4 (frame types), 7.6 (message kinds), 12 (error codes), 13 (limits).
"""

from __future__ import annotations

from enum import IntEnum

PROTOCOL_VERSION = 1

NODE_ID_SIZE = 16
SESSION_ID_SIZE = 8
NONCE_SIZE = 24
MAC_SIZE = 16
KEY_SIZE = 32
SIGNATURE_SIZE = 64


class FrameType(IntEnum):
    """Second byte of every first frame: what the rest of the frame is."""

    HELLO = 0x01
    WELCOME = 0x02
    SEALED = 0x03
    PUBLISH = 0x04
    REJECT = 0x05
    CERT_REQUEST = 0x06
    CERTIFICATE = 0x07


class Kind(IntEnum):
    """What a message inside a sealed frame is. Unknown kinds are malformed."""

    REQUEST = 1
    REPLY = 2
    ERROR = 3
    SEND = 4
    STREAM = 5
    STREAM_END = 6
    CANCEL = 7
    CREDIT = 8
    PING = 9
    PONG = 10
    BYE = 11
    REGISTER = 20
    RENEW = 21
    LOOKUP = 22
    ENTRIES = 23
    UNREGISTER = 24
    EVENT = 25
    PUBLISH = 30
    SUBSCRIBE = 31
    TOPIC_KEY = 32
    TOPIC_PROBE = 33
    TOPIC_OFFER = 34


KIND_VALUES = frozenset(int(k) for k in Kind)


class ErrorCode(IntEnum):
    """Codes carried in the body of an ERROR message."""

    BAD_REQUEST = 1
    UNKNOWN_METHOD = 2
    HANDLER_FAILED = 3
    DEADLINE_EXCEEDED = 4
    OVERLOADED = 5
    UNAUTHORIZED = 6
    CANCELLED = 7
    NO_CREDIT = 8
    NOT_FOUND = 9
    CONFLICT = 10
    INTERNAL = 11


class RejectCode(IntEnum):
    """The one byte of a REJECT frame: why a HELLO was refused."""

    UNSUPPORTED_VERSION = 1
    UNTRUSTED_CERTIFICATE = 2
    CERTIFICATE_EXPIRED = 3
    CLOCK_SKEW = 4
    BUSY = 5
    WRONG_RESPONDER = 6
    UNSUPPORTED_SUITE = 7  # the initiator may try again with suite 1


class Suite(IntEnum):
    """Cipher suites a HELLO may offer (protocol.md 6.1, 7.1)."""

    XSALSA20_POLY1305 = 1  # every node: the default
    AES256_GCM = 2  # where the CPU has AES instructions; nonces from the frame's seq


class AttachmentKind(IntEnum):
    """How an attachment frame is materialised on receipt."""

    BLOB = 0
    NDARRAY = 1
    TENSOR = 2


EXT_ATTACHMENT = 1  # the only msgpack ext type code allowed on the wire

# --------------------------------------------------------------------------- limits
MAX_FIRST_FRAME = 16 * 1024 * 1024
MAX_ATTACHMENT = 256 * 1024 * 1024
MAX_MESSAGE_TOTAL = 512 * 1024 * 1024
MAX_ATTACHMENTS = 64
MAX_FRAMES = 1 + MAX_ATTACHMENTS
MAX_BATCH = 1024
MAX_DEPTH = 32
MAX_PING_ECHO = 1024  # a PONG echoes the PING's body only from a SEALED message this small
MAX_NAME_LEN = 256
MAX_HANDSHAKE_FRAME = 8192
MAX_CERT_SIZE = 4096
MAX_CAPABILITIES = 64
MAX_CAPABILITY_LEN = 128
MAX_TOPICS = 256  # topics a node publishes, and patterns it subscribes to
MAX_TTL_MS = 2**32 - 1
MAX_U64 = 2**64 - 1

DEFAULT_MAX_SKEW_MS = 60_000
DEFAULT_REPLAY_WINDOW = 1024
REKEY_AFTER_FRAMES = 2**24
REKEY_AFTER_MS = 600_000
REJECT_AFTER_FRAMES = 2**32
REJECT_AFTER_MS = 720_000
RETIRED_GRACE_MS = 10_000

DEFAULT_HEARTBEAT_S = 1.0
MISSED_HEARTBEATS = 3
DEFAULT_LEASE_MS = 10_000
DIRECTORY_TOPIC = "$directory"  # the topic of discovery's JOIN/LEAVE/UPDATE events
