"""Sessions: the keys a handshake produced, and everything that must be fresh.

A :class:`Session` is one side of one handshake: a key per direction, the next sequence
number to send, the replay window for what it receives, and the key's age. A
:class:`SessionTable` is a node's set of sessions, found by the session id in each frame's
clear header.

Theory of operation, the freshness rules in one place:

* Each side picks the id under which it *receives* (``recv_id``) and tells the peer in
  the handshake; the sender writes the peer's id in every frame.
* A session id is ``epoch u32 | counter u32``. The epoch is random per table, that is, per
  boot of the process; the counter only grows. So a frame sealed before a restart names an
  epoch nobody issues any more and is refused as a replay, and a frame naming a session
  this boot issued but has since dropped is refused as a replay of a retired session.
  When the counter has issued its last value (2^32 - 1) the table draws a new random epoch,
  unlike every epoch it used, and counts from 1 again: ids never repeat within a boot, the
  sessions of the earlier epoch keep working, and the table remembers its earlier epochs
  (one per 2^32 - 1 ids) so their dropped sessions are still told apart as retired.
* A frame's sequence number must pass the session's :class:`ReplayWindow`, and its
  timestamp must be within ``max_skew_ms`` of ours.
* A sealing side rekeys (a fresh handshake) after ``REKEY_AFTER_*``; it refuses to seal past
  ``REJECT_AFTER_*``. A session replaced on its connection (rekey, reconnect) is retired: it
  still opens frames for ``RETIRED_GRACE_MS`` (those in flight), then goes; a session past
  the hard age limit goes too, since no peer may use it any more.

Specified in protocol.md 6.3 (session keys), 6.5 (rekeying), 7.2 (session ids and freshness).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import _gcm
from ._gcm import GcmKey
from .codec import Message
from .envelope import Frame, Opened, open_sealed, seal, seal_payload, sealed_session_id
from .errors import (
    ClockSkew,
    InvalidArgument,
    LocalProtocolError,
    ReplayDetected,
    SessionExpired,
    UnknownSession,
)
from .identity import Certificate
from .replay import ReplayWindow
from .wire import (
    DEFAULT_MAX_SKEW_MS,
    DEFAULT_REPLAY_WINDOW,
    REJECT_AFTER_FRAMES,
    REJECT_AFTER_MS,
    REKEY_AFTER_FRAMES,
    REKEY_AFTER_MS,
    RETIRED_GRACE_MS,
    Suite,
)

_SESSION_ID = struct.Struct(">II")
_MAX_U32 = 2**32 - 1  # the largest epoch, and the last counter value before a new epoch


@dataclass(frozen=True)
class SessionLimits:
    """When to rekey and when to refuse; defaults from protocol.md."""

    rekey_after_frames: int = REKEY_AFTER_FRAMES
    rekey_after_ms: int = REKEY_AFTER_MS
    reject_after_frames: int = REJECT_AFTER_FRAMES
    reject_after_ms: int = REJECT_AFTER_MS
    retired_grace_ms: int = RETIRED_GRACE_MS
    replay_window: int = DEFAULT_REPLAY_WINDOW
    max_skew_ms: int = DEFAULT_MAX_SKEW_MS


class Session:
    """One established session with an authenticated peer."""

    __slots__ = (
        "_next_seq",
        "_opening",
        "_recv_key",
        "_sealing",
        "_send_key",
        "created_ms",
        "initial_credit",
        "initiator",
        "limits",
        "peer",
        "recv_id",
        "retired_ms",
        "send_id",
        "suite",
        "window",
    )

    def __init__(
        self,
        *,
        peer: Certificate,
        initiator: bool,
        send_key: bytes,
        recv_key: bytes,
        send_id: bytes,
        recv_id: bytes,
        created_ms: int,
        initial_credit: tuple[int, int],
        limits: SessionLimits,
        suite: Suite = Suite.XSALSA20_POLY1305,
    ) -> None:
        self.peer = peer
        self.suite = suite  # the cipher suite the handshake agreed on
        self.initiator = initiator
        self._send_key = send_key
        self._recv_key = recv_key
        # what seals and opens: suite 2's keys prepared once (OpenSSL expands them), not per frame
        gcm = suite is Suite.AES256_GCM
        self._sealing: bytes | GcmKey = _gcm.prepare(send_key) if gcm else send_key
        self._opening: bytes | GcmKey = _gcm.prepare(recv_key) if gcm else recv_key
        self.send_id = send_id
        self.recv_id = recv_id
        self.created_ms = created_ms
        self.initial_credit = initial_credit
        self.limits = limits
        self.window = ReplayWindow(limits.replay_window)
        self._next_seq = 0
        self.retired_ms: int | None = None

    def needs_rekey(self, now_ms: int) -> bool:
        """True once the key has carried enough frames or lived long enough to replace it."""
        return (
            self._next_seq >= self.limits.rekey_after_frames
            or now_ms - self.created_ms >= self.limits.rekey_after_ms
        )

    def seal(
        self, messages: Sequence[Message], now_ms: int, grant: tuple[int, int] = (0, 0)
    ) -> list[Frame]:
        """Seal ``messages`` as the next frame of this session.

        Raises :class:`SessionExpired` past the hard limits (rekey first), and
        :class:`InvalidBody` or :class:`EnvelopeTooLarge` for what cannot be sent.
        """
        seq = self._take_seq(now_ms)
        frames = seal(self.send_id, self._sealing, seq, now_ms, messages, grant, suite=self.suite)
        self._next_seq = seq + 1
        return frames

    def seal_payload(self, payload: bytes, now_ms: int) -> list[Frame]:
        """:meth:`seal` for coalesced rows (:func:`~mesh.core.codec.payload_of_rows`)."""
        seq = self._take_seq(now_ms)
        frames = seal_payload(self.send_id, self._sealing, seq, now_ms, payload, suite=self.suite)
        self._next_seq = seq + 1
        return frames

    def _take_seq(self, now_ms: int) -> int:
        seq = self._next_seq
        if seq >= self.limits.reject_after_frames or (
            now_ms - self.created_ms >= self.limits.reject_after_ms
        ):
            raise SessionExpired(f"session with {self.peer.name!r} must be rekeyed")
        return seq

    def open(self, frames: Sequence[Frame], now_ms: int) -> Opened:
        """Authenticate, check freshness, and decode a frame addressed to this session."""
        opened = open_sealed(frames, self._opening, self.suite)
        skew = opened.timestamp_ms - now_ms
        if abs(skew) > self.limits.max_skew_ms:
            raise ClockSkew(skew, self.limits.max_skew_ms)
        self.window.accept(opened.seq)
        return opened


class SessionTable:
    """A node's sessions by receive id; issues ids and applies the retirement rules.

    ``epoch`` fixes the first epoch (test vectors); otherwise it is drawn from ``_random``,
    as is every later epoch. ``_issued`` is the last counter value already issued in the
    first epoch, so a test can start next to the wrap.
    """

    def __init__(
        self,
        epoch: int | None = None,
        *,
        _random: Callable[[int], bytes] = os.urandom,
        _issued: int = 0,
    ) -> None:
        if epoch is not None and not 0 < epoch <= _MAX_U32:
            raise InvalidArgument(f"a session epoch must be in 1..{_MAX_U32}")
        if not 0 <= _issued <= _MAX_U32:
            raise InvalidArgument(f"the issued counter must be in 0..{_MAX_U32}")
        self._random = _random
        self._earlier_epochs: set[int] = set()  # grows by one per 2^32 - 1 ids issued
        self.epoch = epoch if epoch is not None else self._fresh_epoch()
        self._issued = _issued
        self._sessions: dict[bytes, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def new_id(self) -> bytes:
        """A fresh receive id: the current epoch and the next counter value; past the
        counter's last value, a new epoch and counter 1."""
        if self._issued >= _MAX_U32:
            self._earlier_epochs.add(self.epoch)
            self.epoch = self._fresh_epoch()
            self._issued = 0
        self._issued += 1
        return _SESSION_ID.pack(self.epoch, self._issued)

    def _fresh_epoch(self) -> int:
        """A random epoch that is neither 0 nor an earlier one (the current epoch joins the
        earlier ones before a new one is drawn). A draw that collides moves on to the next
        free value, so even a constant random source cannot loop."""
        epoch = int.from_bytes(self._random(4), "big")
        while epoch == 0 or epoch in self._earlier_epochs:
            epoch = (epoch + 1) & _MAX_U32
        return epoch

    def add(self, session: Session, now_ms: int, replaces: Session | None = None) -> None:
        """Register ``session``; the session it ``replaces`` (a rekey or a reconnect of the
        same connection) is retired. Other sessions with the same peer stay: two processes
        may share one identity.

        Raises :class:`LocalProtocolError` if another session holds ``session.recv_id``
        already: it would come with a fresh replay window and accept old frames again.
        """
        registered = self._sessions.get(session.recv_id)
        if registered is not None and registered is not session:
            raise LocalProtocolError("another session is registered under this receive id")
        if replaces is not None and replaces.retired_ms is None:
            replaces.retired_ms = now_ms
        self._sessions[session.recv_id] = session

    def remove(self, session: Session) -> None:
        self._sessions.pop(session.recv_id, None)

    def find(self, session_id: bytes, now_ms: int) -> Session:
        """The live session named ``session_id``, or a typed error saying why there is none."""
        session = self._sessions.get(session_id)
        if session is not None:
            retired = session.retired_ms
            if retired is None or now_ms - retired <= session.limits.retired_grace_ms:
                return session
            del self._sessions[session_id]
        epoch, counter = _SESSION_ID.unpack(session_id)
        if epoch in self._earlier_epochs or (epoch == self.epoch and counter <= self._issued):
            raise ReplayDetected("frame names a retired session", reason="replay_retired")
        if epoch != self.epoch:
            raise ReplayDetected("frame names a session of another boot", reason="replay_epoch")
        raise UnknownSession("frame names a session that was never issued")

    def open(self, frames: Sequence[Frame], now_ms: int) -> tuple[Session, Opened]:
        """Route a SEALED message to its session and open it. Raises only ProtocolError."""
        session = self.find(sealed_session_id(frames), now_ms)
        return session, session.open(frames, now_ms)

    def expire(self, now_ms: int) -> list[Session]:
        """Drop sessions whose retirement grace has passed, and sessions too old for anyone
        to use (past the hard age limit: the peer must rekey first); return them."""
        gone = [
            s
            for s in self._sessions.values()
            if (s.retired_ms is not None and now_ms - s.retired_ms > s.limits.retired_grace_ms)
            or now_ms - s.created_ms > s.limits.reject_after_ms + s.limits.retired_grace_ms
        ]
        for session in gone:
            del self._sessions[session.recv_id]
        return gone
