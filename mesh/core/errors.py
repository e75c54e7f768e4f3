"""The one exception hierarchy of agent-mesh.

Every error the library raises on purpose derives from :class:`MeshError`. Two branches
matter most to callers:

* :class:`ProtocolError` is what hostile or broken bytes from the wire turn into. The
  decoders promise that *only* subclasses of it escape when they are fed untrusted input;
  any other exception from them is a bug. A node drops the frame, counts the error's
  ``reason`` and carries on.
* :class:`InvalidArgument` (also a ``ValueError``) is what a caller of the API gets for
  asking something impossible, such as sealing a body msgpack cannot carry.

Exceptions carry fields (limit, size, path, ...) as well as a readable message, so code
can react without parsing text.

Specified in protocol.md 12 (error codes).
"""

from __future__ import annotations


class MeshError(Exception):
    """Root of every error agent-mesh raises on purpose."""


# --------------------------------------------------------------------------- wire input


class ProtocolError(MeshError):
    """Bytes received from the wire broke a rule of protocol.md; the frame is dropped.

    ``reason`` is a short, stable, machine-readable tag used as a counter name.
    """

    reason = "protocol"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class MalformedEnvelope(ProtocolError):
    """The frame is not a well-formed envelope (bad layout, type or encoding)."""

    reason = "malformed"


class UnsupportedVersion(MalformedEnvelope):
    """The frame names a protocol version this implementation does not speak."""

    reason = "version"

    def __init__(self, version: int) -> None:
        super().__init__(f"unsupported protocol version {version}")
        self.version = version


class LimitExceeded(MalformedEnvelope):
    """A length, count or depth in the input is beyond a named limit (a msgpack bomb...)."""

    reason = "limit"

    def __init__(self, what: str, value: int, limit: int) -> None:
        super().__init__(f"{what} is {value}, above the limit of {limit}")
        self.what = what
        self.value = value
        self.limit = limit


class EnvelopeTooLarge(LimitExceeded):
    """A frame or the whole message is larger than the configured maximum."""

    reason = "too_large"


class AuthenticationFailed(ProtocolError):
    """The frame does not open under the session's key, or its clear header was altered."""

    reason = "auth"


class UnknownSession(AuthenticationFailed):
    """The frame names a session this side never issued."""

    reason = "unknown_session"


class ReplayDetected(AuthenticationFailed):
    """The frame is authentic but not fresh: a repeat, too old, or from a retired session."""

    reason = "replay"


class ClockSkew(ProtocolError):
    """The sender's timestamp is further from our clock than the allowed skew."""

    reason = "clock_skew"

    def __init__(self, skew_ms: int, limit_ms: int) -> None:
        super().__init__(
            f"peer clock differs from ours by {skew_ms} ms, more than the {limit_ms} ms allowed"
        )
        self.skew_ms = skew_ms
        self.limit_ms = limit_ms


class HandshakeFailed(ProtocolError):
    """A HELLO or WELCOME could not be accepted."""

    reason = "handshake"


class Unauthorized(HandshakeFailed):
    """A certificate does not verify against this mesh's authority."""

    reason = "unauthorized"


class CertificateExpired(Unauthorized):
    """A certificate is outside its validity period."""

    reason = "cert_expired"


class HandshakeBusy(HandshakeFailed):
    """Too many HELLOs from one source: refused before any work (REJECT 5, busy)."""

    reason = "handshake_busy"


class HandshakeRejected(HandshakeFailed):
    """The peer answered our HELLO with a REJECT carrying ``code``."""

    reason = "rejected"

    def __init__(self, code: int, meaning: str) -> None:
        super().__init__(f"peer rejected the handshake: {meaning} (code {code})")
        self.code = code
        self.meaning = meaning


class UnsupportedAttachment(ProtocolError):
    """An attachment names a dtype or kind this process cannot materialise."""

    reason = "attachment"


# --------------------------------------------------------------------------- local problems


class InvalidArgument(MeshError, ValueError):
    """A caller passed something the API cannot accept."""


class InvalidBody(InvalidArgument):
    """A body or attachment cannot be encoded (unsupported type, integer out of range...)."""


class InvalidName(InvalidArgument):
    """A node name is empty, too long or uses characters outside ``[A-Za-z0-9._-]``."""


class LocalProtocolError(MeshError):
    """This side broke a rule of its own: an object used in the wrong state (a finished
    handshake asked to finish again, a closed connection asked to send) or an internal
    invariant that no longer holds (credit consumed twice). A bug or a misuse here, never the
    peer's fault: it is not counted as a drop and never answered as the caller's BAD_REQUEST."""


class SessionExpired(MeshError):
    """The session has reached its hard message or age limit and must not seal more."""


class IdentityError(MeshError):
    """A key, certificate or mesh directory on disk could not be used."""


class KeyFileError(IdentityError):
    """A key file is missing, unreadable or corrupt."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class InsecureKeyFile(KeyFileError, PermissionError):
    """A secret key file can be read by group or others; we refuse to use it."""

    def __init__(self, path: str, mode: int) -> None:
        super().__init__(
            path,
            f"secret key file has mode {mode:04o}; it must not be readable by group or "
            f"others (run: chmod 600 {path})",
        )
        self.mode = mode


# --------------------------------------------------------------------------- the live mesh


class CallError(MeshError):
    """A request, send or stream did not produce a result. ``peer`` and ``method`` say which."""

    def __init__(self, message: str, *, peer: str | None = None, method: str | None = None):
        super().__init__(message)
        self.peer = peer
        self.method = method


class PeerNotFound(CallError):
    """No live node has that name, or none offers that capability."""


class DiscoveryUnavailable(CallError):
    """No discovery node answered, and the answer was not in the local cache."""


class RequestTimeout(CallError, TimeoutError):
    """The reply did not arrive within the timeout (the peer may still be working on it)."""


class PeerLost(CallError):
    """The peer stopped answering heartbeats or went away while the call was in flight."""


class NoSuchMethod(CallError):
    """The peer has no handler for the method."""


class RemoteError(CallError):
    """The remote handler failed. ``code`` is the protocol's error code; ``remote_type`` the
    exception's class name on the other side (no traceback crosses the wire)."""

    def __init__(
        self,
        message: str,
        *,
        code: int,
        remote_type: str | None = None,
        peer: str | None = None,
        method: str | None = None,
    ) -> None:
        super().__init__(message, peer=peer, method=method)
        self.code = code
        self.remote_type = remote_type

    def __str__(self) -> str:
        """The remote exception's type before its message, as a traceback's last line reads:
        ``KeyError: 'name'`` (a bare ``'name'`` says nothing)."""
        text = super().__str__()
        return f"{self.remote_type}: {text}" if self.remote_type else text


class BadRequest(RemoteError):
    """The callee refused the body: a missing or invalid argument (code BAD_REQUEST). A
    handler raises it, or any :class:`InvalidArgument`, to report the caller's mistake."""

    def __init__(self, message: str, *, code: int = 1, **fields: str | None) -> None:
        super().__init__(message, code=code, **fields)


class Overloaded(RemoteError):
    """The callee's queue is full (code OVERLOADED): retry later or call another provider.
    A handler raises it to shed load instead of queueing without bound."""

    def __init__(self, message: str, *, code: int = 5, **fields: str | None) -> None:
        super().__init__(message, code=code, **fields)


class NameConflict(CallError):
    """Discovery refused a registration: the name is live with other keys."""


class ReplyTooLarge(CallError):
    """A plain request to a streaming method collected more chunks than it may hold (the
    stream's window): read such a method with ``stream()``, which pauses the generator
    instead of buffering it. ``limit`` is the number of chunks."""

    def __init__(self, message: str, *, limit: int, **fields: str | None) -> None:
        super().__init__(message, **fields)
        self.limit = limit


class RedirectFailed(CallError):
    """A stream's callee ended it with a redirect (protocol.md 8.1) that cannot be followed:
    of the wrong shape, sent to a reader that did not ask for redirects (a plain request,
    a stream read with ``follow_redirects=False``), or one hop past ``MAX_REDIRECTS``."""


class NodeClosed(MeshError):
    """The node was closed while the call waited."""


class NoCredit(CallError):
    """The peer has granted no credit right now, and the call was asked not to wait."""


class FlowControlTimeout(CallError, TimeoutError):
    """The peer granted no credit within the timeout: it is not consuming fast enough."""


class LaunchError(MeshError):
    """``mesh launch`` could not do something on a host: ``host`` says which."""

    def __init__(self, message: str, *, host: str | None = None) -> None:
        super().__init__(f"{host}: {message}" if host else message)
        self.host = host


class HostUnreachable(LaunchError):
    """``mesh launch`` could not reach a host at all (ssh's own failure: refused, timed out,
    no route, authentication), as opposed to a command that ran there and failed."""
