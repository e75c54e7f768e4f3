"""The handshake: HELLO, WELCOME (or REJECT), as pure state machines with no sockets.

Why this shape. Boxing every envelope between the two long-term keys would let one stolen
key decrypt all past traffic, and would not notice replays. Instead each side makes a fresh
(ephemeral) Curve25519 key per handshake and signs it with its long-term Ed25519 key, which
its certificate binds to its name; the session keys come from the two ephemeral keys only.
Steal a long-term key later and past sessions stay closed (forward secrecy).

* HELLO (initiator to responder) carries the initiator's ephemeral key in clear, and,
  boxed to the responder's long-term key (known from its certificate), the initiator's
  certificate, a timestamp and its receive session id, signed over the clear part. Only
  the intended responder can read who is calling.
* WELCOME (responder to initiator) carries the responder's ephemeral key, and, boxed
  between the two ephemeral keys, its certificate, timestamp and receive id, signed over
  a hash of the HELLO: a WELCOME cannot be replayed into another handshake.
* A responder accepts a HELLO only if its timestamp is within the clock-skew bound and it
  has not accepted that same HELLO (the same ephemeral key) before, so a captured HELLO
  cannot be replayed; two processes sharing one identity do not get in each other's way.
  Nothing is stored for a HELLO that fails.

Both sides then derive one key per direction from the ephemeral shared secret and a hash
of both handshake frames. Separate keys mean a frame cannot be reflected back to its sender.

An :class:`Initiator` takes exactly one answer: its :class:`HandshakeState` goes from
``AWAITING_ANSWER`` to ``ESTABLISHED`` (one session registered) or ``FAILED``, and asking it
to receive again raises :class:`LocalProtocolError` before it looks at the frame. A second
session under the same receive id would come with a fresh replay window, so a frame the
first one accepted would be accepted again.

Specified in protocol.md 6 (handshake).
"""

from __future__ import annotations

import enum
import hashlib
import os
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.signing import VerifyKey

from .codec import unpack_bounded
from .envelope import Frame, local_suites
from .errors import (
    AuthenticationFailed,
    CertificateExpired,
    ClockSkew,
    HandshakeBusy,
    HandshakeFailed,
    HandshakeRejected,
    LocalProtocolError,
    MalformedEnvelope,
    ProtocolError,
    ReplayDetected,
    Unauthorized,
    UnsupportedVersion,
)
from .identity import Certificate, Identity, Trust
from .session import Session, SessionLimits, SessionTable
from .wire import (
    KEY_SIZE,
    MAC_SIZE,
    MAX_CERT_SIZE,
    MAX_HANDSHAKE_FRAME,
    MAX_U64,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    SESSION_ID_SIZE,
    SIGNATURE_SIZE,
    FrameType,
    RejectCode,
    Suite,
)

HELLO_CONTEXT = b"agent-mesh hello v1\x00"
WELCOME_CONTEXT = b"agent-mesh welcome v1\x00"
HELLO_CLEAR = struct.Struct(">BBB32s16s")  # version, type, suite, ephemeral key, responder id
WELCOME_CLEAR = struct.Struct(">BB32s8s")  # version, type, ephemeral key, initiator's recv id
REJECT = struct.Struct(">BBB32s")  # version, type, code, initiator's ephemeral key
DEFAULT_CREDIT = (1024, 64 * 1024 * 1024)
MAX_REMEMBERED_HELLOS = 65536

Random = Callable[[int], bytes]


class HandshakeState(enum.Enum):
    """Where an :class:`Initiator` stands; only ``AWAITING_ANSWER`` may receive."""

    AWAITING_ANSWER = "awaiting_answer"
    ESTABLISHED = "established"
    FAILED = "failed"


# --------------------------------------------------------------------------- helpers


def _frame(frames: Sequence[Frame], expected: FrameType, minimum: int) -> bytes:
    if len(frames) != 1:
        raise MalformedEnvelope("a handshake message is exactly one frame")
    data = bytes(frames[0])
    if len(data) > MAX_HANDSHAKE_FRAME:
        raise MalformedEnvelope("handshake frame too large", reason="limit")
    if len(data) < 2:
        raise MalformedEnvelope("frame too short for a header")
    if data[0] != PROTOCOL_VERSION:
        raise UnsupportedVersion(data[0])
    if data[1] != expected:
        raise MalformedEnvelope(f"expected a {expected.name} frame", reason="frame_type")
    if len(data) < minimum:
        raise MalformedEnvelope(f"{expected.name} frame too short")
    return data


def _signed_fields(
    fields: list[Any], context: bytes, signed_prefix: bytes, identity: Identity
) -> bytes:
    encoded = msgpack.packb(fields, use_bin_type=True)
    signature = identity.signing_key.sign(context + signed_prefix + encoded).signature
    return msgpack.packb([encoded, signature], use_bin_type=True)


def _open_fields(plaintext: bytes, context: bytes, signed_prefix: bytes) -> tuple[list[Any], Any]:
    """Parse ``[fields, signature]`` and the fields; the caller verifies the signature."""
    outer = _unpack(plaintext)
    if not (
        isinstance(outer, list)
        and len(outer) == 2
        and isinstance(outer[0], bytes)
        and isinstance(outer[1], bytes)
        and len(outer[1]) == SIGNATURE_SIZE
    ):
        raise MalformedEnvelope("handshake payload is not [fields, signature]")
    encoded, signature = outer
    fields = _unpack(encoded)
    if not (isinstance(fields, list) and len(fields) == 5):
        raise MalformedEnvelope("handshake fields must be an array of 5")
    cert_bytes, timestamp, recv_id, credit_messages, credit_bytes = fields
    if not (
        isinstance(cert_bytes, bytes)
        and type(timestamp) is int
        and 0 <= timestamp <= MAX_U64
        and isinstance(recv_id, bytes)
        and len(recv_id) == SESSION_ID_SIZE
        and type(credit_messages) is int
        and 0 <= credit_messages < 2**32
        and type(credit_bytes) is int
        and 0 <= credit_bytes <= MAX_U64
    ):
        raise MalformedEnvelope("handshake field has the wrong type or range")
    certificate = Certificate.from_bytes(cert_bytes)
    message = context + signed_prefix + encoded
    return [certificate, timestamp, recv_id, (credit_messages, credit_bytes)], (message, signature)


def _verify_signature(certificate: Certificate, signed: tuple[bytes, bytes]) -> None:
    try:
        VerifyKey(certificate.sign_public).verify(*signed)
    except BadSignatureError as exc:
        raise AuthenticationFailed(f"handshake signature of {certificate.name!r} is bad") from exc


def _unpack(data: bytes) -> Any:
    return unpack_bounded(data, "handshake payload", max_array=8, max_bin=MAX_CERT_SIZE)


def _check_skew(timestamp: int, now_ms: int, trust: Trust) -> None:
    skew = timestamp - now_ms
    if abs(skew) > trust.max_skew_ms:
        raise ClockSkew(skew, trust.max_skew_ms)


def _session_keys(shared: bytes, transcript: bytes) -> tuple[bytes, bytes]:
    """(initiator-to-responder key, responder-to-initiator key)."""
    digest = hashlib.blake2b(transcript, digest_size=32).digest()
    return tuple(  # type: ignore[return-value]
        hashlib.blake2b(digest, key=shared, digest_size=KEY_SIZE, person=person).digest()
        for person in (b"agent-mesh i2r 1", b"agent-mesh r2i 1")
    )


def _establish(
    table: SessionTable,
    limits: SessionLimits,
    peer: Certificate,
    initiator: bool,
    keys: tuple[bytes, bytes],
    send_id: bytes,
    recv_id: bytes,
    credit: tuple[int, int],
    now_ms: int,
    replaces: Session | None,
    suite: Suite,
) -> Session:
    """Create the session from the derived keys and register it (retiring the session it
    replaces on the same connection, if any)."""
    i2r, r2i = keys
    send_key, recv_key = (i2r, r2i) if initiator else (r2i, i2r)
    session = Session(
        peer=peer,
        initiator=initiator,
        send_key=send_key,
        recv_key=recv_key,
        send_id=send_id,
        recv_id=recv_id,
        created_ms=now_ms,
        initial_credit=credit,
        limits=limits,
        suite=suite,
    )
    table.add(session, now_ms, replaces)
    return session


# --------------------------------------------------------------------------- initiator


class Initiator:
    """The calling side of one handshake. Build it, send ``hello``, feed it the answer.

    ``state`` is a :class:`HandshakeState`. One HELLO gets one answer: the caller picks it
    with :meth:`matches` (cheap) and hands it to :meth:`receive` once; whatever that call
    decides is final, and a failed handshake is retried with a new :class:`Initiator` (a
    fresh ephemeral key).
    """

    def __init__(
        self,
        identity: Identity,
        trust: Trust,
        peer: Certificate,
        table: SessionTable,
        now_ms: int,
        *,
        credit: tuple[int, int] = DEFAULT_CREDIT,
        limits: SessionLimits | None = None,
        replaces: Session | None = None,
        suite: Suite = Suite.XSALSA20_POLY1305,
        _random: Random = os.urandom,
    ) -> None:
        self._identity = identity
        self._trust = trust
        self._peer = peer
        # offered only to a peer known to run it (its directory entry says so): a node
        # without it drops the HELLO unanswered, and the caller would wait for nothing
        self.suite = suite
        self._replaces = replaces
        self._table = table
        self._limits = limits or SessionLimits(max_skew_ms=trust.max_skew_ms)
        self._ephemeral = PrivateKey(_random(KEY_SIZE))
        self.recv_id = table.new_id()
        clear = HELLO_CLEAR.pack(
            PROTOCOL_VERSION,
            FrameType.HELLO,
            suite,
            bytes(self._ephemeral.public_key),
            peer.node_id,
        )
        fields = [identity.require_certificate().to_bytes(), now_ms, self.recv_id, *credit]
        plaintext = _signed_fields(fields, HELLO_CONTEXT, clear, identity)
        nonce = _random(NONCE_SIZE)
        boxed = Box(self._ephemeral, PublicKey(peer.box_public)).encrypt(plaintext, nonce)
        self.hello = clear + nonce + boxed.ciphertext
        self.state = HandshakeState.AWAITING_ANSWER

    @property
    def ephemeral_public(self) -> bytes:
        return bytes(self._ephemeral.public_key)

    def hello_frames(self) -> list[Frame]:
        return [self.hello]

    def matches(self, frames: Sequence[Frame]) -> bool:
        """Whether a WELCOME or REJECT frame answers this handshake (cheap, unauthenticated)."""
        if len(frames) != 1 or len(frames[0]) < 2:
            return False
        data = bytes(frames[0])
        if data[1] == FrameType.WELCOME and len(data) >= WELCOME_CLEAR.size:
            return data[34:42] == self.recv_id
        if data[1] == FrameType.REJECT and len(data) == REJECT.size:
            return data[3:35] == self.ephemeral_public
        return False

    def receive(self, frames: Sequence[Frame], now_ms: int) -> Session:
        """Complete the handshake from a WELCOME; raise a typed error for anything else.

        Returns the session, already added to the table; ``state`` is then ``ESTABLISHED``.
        A REJECT raises :class:`HandshakeRejected`, any other bad answer a
        :class:`ProtocolError`; ``state`` is then ``FAILED``. Raises
        :class:`LocalProtocolError`, changing nothing, unless ``state`` is
        ``AWAITING_ANSWER``: receiving twice is the caller's bug, not the peer's doing.
        """
        if self.state is not HandshakeState.AWAITING_ANSWER:
            raise LocalProtocolError(
                f"this handshake is {self.state.value}: it takes one answer; start a new one"
            )
        try:
            session = self._complete(frames, now_ms)
        except Exception:
            self.state = HandshakeState.FAILED
            raise
        self.state = HandshakeState.ESTABLISHED
        return session

    def _complete(self, frames: Sequence[Frame], now_ms: int) -> Session:
        if len(frames) == 1 and len(frames[0]) >= 2 and frames[0][1] == FrameType.REJECT:
            raise _rejection(bytes(frames[0]), self.ephemeral_public)
        data = _frame(frames, FrameType.WELCOME, WELCOME_CLEAR.size + NONCE_SIZE + MAC_SIZE)
        _, _, their_ephemeral, echoed_id = WELCOME_CLEAR.unpack_from(data)
        if echoed_id != self.recv_id:
            raise HandshakeFailed("WELCOME answers another handshake")
        nonce_end = WELCOME_CLEAR.size + NONCE_SIZE
        try:
            plaintext = Box(self._ephemeral, PublicKey(their_ephemeral)).decrypt(
                data[nonce_end:], data[WELCOME_CLEAR.size : nonce_end]
            )
        except CryptoError as exc:
            raise AuthenticationFailed("WELCOME does not open") from exc
        transcript_hash = hashlib.blake2b(self.hello, digest_size=32).digest()
        prefix = transcript_hash + data[: WELCOME_CLEAR.size]
        (certificate, timestamp, send_id, credit), signed = _open_fields(
            plaintext, WELCOME_CONTEXT, prefix
        )
        self._trust.verify(certificate, now_ms)
        if certificate.node_id != self._peer.node_id:
            raise HandshakeFailed(f"expected {self._peer.name!r}, {certificate.name!r} answered")
        _verify_signature(certificate, signed)
        _check_skew(timestamp, now_ms, self._trust)
        shared = Box(self._ephemeral, PublicKey(their_ephemeral)).shared_key()
        keys = _session_keys(shared, self.hello + data)
        return _establish(
            self._table,
            self._limits,
            certificate,
            True,
            keys,
            send_id,
            self.recv_id,
            credit,
            now_ms,
            self._replaces,
            self.suite,
        )


def _rejection(data: bytes, ephemeral_public: bytes) -> HandshakeFailed:
    if len(data) != REJECT.size or data[0] != PROTOCOL_VERSION:
        return MalformedEnvelope("malformed REJECT frame")
    _, _, code, echoed = REJECT.unpack(data)
    if echoed != ephemeral_public:
        return HandshakeFailed("REJECT answers another handshake")
    try:
        meaning = RejectCode(code).name.lower().replace("_", " ")
    except ValueError:
        meaning = "unknown reason"
    return HandshakeRejected(code, meaning)


# --------------------------------------------------------------------------- responder


class Responder:
    """The answering side: turns each valid HELLO into a session and a WELCOME.

    One per node. Its only state is the ephemeral keys of the HELLOs it accepted within the
    clock-skew bound (at most ``MAX_REMEMBERED_HELLOS``): a HELLO seen before is a replay.
    Older HELLOs fail the skew check, so nothing older needs remembering. It has no finished
    state to check: each HELLO is answered whole within one :meth:`receive`, and a second
    delivery of the same HELLO is the peer's input, refused as ``replay_hello``.
    """

    def __init__(
        self,
        identity: Identity,
        trust: Trust,
        table: SessionTable,
        *,
        credit: tuple[int, int] | Callable[[Certificate], tuple[int, int]] = DEFAULT_CREDIT,
        limits: SessionLimits | None = None,
        suites: tuple[Suite, ...] | None = None,
        _random: Random = os.urandom,
    ) -> None:
        self._identity = identity
        self._trust = trust
        self._table = table
        self.suites = local_suites() if suites is None else suites  # what HELLOs may offer
        # the window granted to each caller, or a function choosing it per caller
        self._credit = credit if callable(credit) else (lambda _peer, fixed=credit: fixed)
        self._limits = limits or SessionLimits(max_skew_ms=trust.max_skew_ms)
        self._random = _random
        self._seen: OrderedDict[bytes, int] = OrderedDict()  # ephemeral key -> forget after

    def receive(
        self, frames: Sequence[Frame], now_ms: int, replaces: Session | None = None
    ) -> tuple[Session, list[Frame]]:
        """Accept a HELLO: return the new session (already in the table) and the WELCOME.

        Raises only :class:`ProtocolError` subclasses; :meth:`reject_frames` says whether
        the error deserves a REJECT answer.
        """
        data = _frame(frames, FrameType.HELLO, HELLO_CLEAR.size + NONCE_SIZE + MAC_SIZE)
        _, _, suite, their_ephemeral, responder_id = HELLO_CLEAR.unpack_from(data)
        if suite not in self.suites:
            raise MalformedEnvelope(f"cipher suite {suite} is not supported", reason="suite")
        if responder_id != self._identity.node_id:
            raise HandshakeFailed("HELLO is for another node", reason="wrong_responder")
        nonce_end = HELLO_CLEAR.size + NONCE_SIZE
        try:
            plaintext = Box(self._identity.box_key, PublicKey(their_ephemeral)).decrypt(
                data[nonce_end:], data[HELLO_CLEAR.size : nonce_end]
            )
        except CryptoError as exc:
            raise AuthenticationFailed("HELLO does not open") from exc
        (certificate, timestamp, send_id, credit), signed = _open_fields(
            plaintext, HELLO_CONTEXT, data[: HELLO_CLEAR.size]
        )
        self._trust.verify(certificate, now_ms)
        _verify_signature(certificate, signed)
        _check_skew(timestamp, now_ms, self._trust)
        self._forget_old(now_ms)
        if their_ephemeral in self._seen:
            raise ReplayDetected("this HELLO was already accepted", reason="replay_hello")
        self._seen[their_ephemeral] = now_ms + 2 * self._trust.max_skew_ms
        while len(self._seen) > MAX_REMEMBERED_HELLOS:
            self._seen.popitem(last=False)
        return self._welcome(
            data, their_ephemeral, certificate, send_id, credit, now_ms, replaces, Suite(suite)
        )

    def _forget_old(self, now_ms: int) -> None:
        seen = self._seen
        while seen:
            key, forget_after = next(iter(seen.items()))
            if forget_after > now_ms:
                return
            del seen[key]

    def _welcome(
        self,
        hello: bytes,
        their_ephemeral: bytes,
        certificate: Certificate,
        send_id: bytes,
        credit: tuple[int, int],
        now_ms: int,
        replaces: Session | None,
        suite: Suite,
    ) -> tuple[Session, list[Frame]]:
        ephemeral = PrivateKey(self._random(KEY_SIZE))
        recv_id = self._table.new_id()
        clear = WELCOME_CLEAR.pack(
            PROTOCOL_VERSION, FrameType.WELCOME, bytes(ephemeral.public_key), send_id
        )
        window = self._credit(certificate)
        fields = [self._identity.require_certificate().to_bytes(), now_ms, recv_id, *window]
        transcript_hash = hashlib.blake2b(hello, digest_size=32).digest()
        plaintext = _signed_fields(fields, WELCOME_CONTEXT, transcript_hash + clear, self._identity)
        nonce = self._random(NONCE_SIZE)
        box = Box(ephemeral, PublicKey(their_ephemeral))
        welcome = clear + nonce + box.encrypt(plaintext, nonce).ciphertext
        keys = _session_keys(box.shared_key(), hello + welcome)
        session = _establish(
            self._table,
            self._limits,
            certificate,
            False,
            keys,
            send_id,
            recv_id,
            credit,
            now_ms,
            replaces,
            suite,
        )
        return session, [welcome]

    @staticmethod
    def reject_frames(frames: Sequence[Frame], error: ProtocolError) -> list[Frame] | None:
        """The REJECT to send for ``error`` raised on this HELLO, or None to stay silent.

        Only refusals a legitimate but misconfigured peer can act on get an answer; frames
        that do not authenticate get none, so a scanner learns nothing.
        """
        code = _REJECT_CODES.get(type(error))
        if code is None:
            code = _REJECT_REASONS.get(getattr(error, "reason", ""))
        if code is None or len(frames) != 1 or len(frames[0]) < HELLO_CLEAR.size:
            return None
        ephemeral = bytes(frames[0][3 : 3 + KEY_SIZE])
        return [REJECT.pack(PROTOCOL_VERSION, FrameType.REJECT, code, ephemeral)]


_REJECT_REASONS: dict[str, RejectCode] = {
    "wrong_responder": RejectCode.WRONG_RESPONDER,
    "suite": RejectCode.UNSUPPORTED_SUITE,
}
_REJECT_CODES: dict[type, RejectCode] = {
    UnsupportedVersion: RejectCode.UNSUPPORTED_VERSION,
    Unauthorized: RejectCode.UNTRUSTED_CERTIFICATE,
    CertificateExpired: RejectCode.CERTIFICATE_EXPIRED,
    ClockSkew: RejectCode.CLOCK_SKEW,
    HandshakeBusy: RejectCode.BUSY,
}
