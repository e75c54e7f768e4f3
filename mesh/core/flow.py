"""Credit-based flow control, pure: what a sender may send, what a receiver grants.

Theory of operation. Each direction of a session that carries work (REQUEST and SEND from
caller to callee; STREAM chunks from callee to caller, per stream) has a *window*: how many
messages and bytes the receiver is ready to hold that its application has not consumed yet.

* The receiver announces its window first (in the handshake for a session, in the REQUEST
  for a stream), then grants credit back **as its application consumes**, never merely when
  bytes arrive. So a slow consumer stops granting, the sender runs out, and its ``await``
  blocks: backpressure reaches the producing code and nobody's memory grows.
* Grants are batched: the receiver sends one when at least a quarter of the window has been
  consumed since the last grant, or at once when the sender has no credit left (or when it
  could have none left, as far as the receiver knows) — the second rule is what makes
  deadlock impossible: a sender waiting for credit always gets it once its earlier messages
  are consumed.
* Bytes may overdraw: a message needs one message of credit and *some* byte credit; its full
  size is then charged. So a message larger than the byte window still goes (alone), and the
  receiver holds at most ``window bytes + one message``.
* Counters are cumulative 64-bit totals on the receiver; grants on the wire are increments.
  A new session starts from a fresh window: credit never carries over, so a peer that
  restarts or reconnects can never be left without any.

Specified in protocol.md 11 (credit-based flow control).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidArgument, LocalProtocolError


@dataclass(frozen=True)
class Window:
    """How much a receiver holds unconsumed: messages and bytes."""

    messages: int = 1024
    bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if not (0 < self.messages < 2**32 and 0 < self.bytes < 2**63):
            raise InvalidArgument("a window needs 1 to 2**32-1 messages and a positive size")

    @property
    def as_grant(self) -> tuple[int, int]:
        return (self.messages, self.bytes)


class SendCredit:
    """The sender's side: credit on hand, charged per message sent."""

    __slots__ = ("bytes", "messages")

    def __init__(self, initial: tuple[int, int]) -> None:
        self.messages, self.bytes = initial

    def can_send(self) -> bool:
        return self.messages >= 1 and self.bytes > 0

    def charge(self, size: int) -> None:
        """Record one message of ``size`` bytes sent (call only when ``can_send()``)."""
        self.reserve(size)

    def reserve(self, size: int = 0) -> None:
        """Take one message's credit and ``size`` bytes for a message to be coalesced into a
        frame; the frame's own overhead is charged when it is sealed (:meth:`charge_bytes`).
        Charging the rows as they are queued keeps :meth:`can_send` true to what the frame
        will cost, so a request checked after them is never sent on credit already spent."""
        if not self.can_send():  # the caller skipped its credit check: our bug, not the peer's
            raise LocalProtocolError("no credit to charge")
        self.messages -= 1
        self.bytes -= size

    def charge_bytes(self, size: int) -> None:
        self.bytes -= size

    def grant(self, messages: int, bytes_: int) -> None:
        """Add a grant received from the peer."""
        self.messages += messages
        self.bytes += bytes_


class ReceiveCredit:
    """The receiver's side: what it granted, received and consumed; when to grant more."""

    __slots__ = (
        "consumed_bytes",
        "consumed_messages",
        "granted_bytes",
        "granted_messages",
        "received_bytes",
        "received_messages",
        "window",
    )

    def __init__(self, window: Window) -> None:
        self.window = window
        self.granted_messages, self.granted_bytes = window.as_grant
        self.received_messages = self.received_bytes = 0
        self.consumed_messages = self.consumed_bytes = 0

    def receive(self, size: int, messages: int = 1) -> bool:
        """Account for a frame of ``size`` bytes carrying ``messages`` credited messages;
        False if the sender had no credit for them (a protocol violation: they are to be
        dropped, not consumed). Bytes are checked before the frame, as the sender did."""
        if (
            self.received_messages + messages > self.granted_messages
            or self.received_bytes >= self.granted_bytes
        ):
            return False
        self.received_messages += messages
        self.received_bytes += size
        return True

    def consume(self, size: int) -> None:
        """The application has taken one received message of ``size`` bytes (of a frame of
        several, the first carries the frame's size and the others 0)."""
        if (
            self.consumed_messages + 1 > self.received_messages
            or self.consumed_bytes + size > self.received_bytes
        ):  # every arrival is consumed once: a second consume is a bug on this side
            raise LocalProtocolError("consumed more than was received")
        self.consumed_messages += 1
        self.consumed_bytes += size

    def held(self) -> tuple[int, int]:
        """Received but not yet consumed."""
        return (
            self.received_messages - self.consumed_messages,
            self.received_bytes - self.consumed_bytes,
        )

    def due(self) -> tuple[int, int]:
        """The grant to send now, or (0, 0) to wait and batch."""
        window = self.window
        messages = self.consumed_messages + window.messages - self.granted_messages
        bytes_ = self.consumed_bytes + window.bytes - self.granted_bytes
        sender_exhausted = (
            self.received_messages >= self.granted_messages
            or self.received_bytes >= self.granted_bytes
        )
        batch_ready = messages >= max(1, window.messages // 4) or bytes_ >= window.bytes // 4
        if (messages > 0 or bytes_ > 0) and (batch_ready or sender_exhausted):
            return (max(messages, 0), max(bytes_, 0))
        return (0, 0)

    def granted(self, grant: tuple[int, int]) -> None:
        """Record that ``grant`` (from :meth:`due`) was sent."""
        self.granted_messages += grant[0]
        self.granted_bytes += grant[1]
