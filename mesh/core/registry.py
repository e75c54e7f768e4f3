"""The discovery node's state: who is up, where, with which keys and capabilities.

Pure: every method takes ``now_ms``. A registration comes from an authenticated session,
so the certificate in it has already been verified by the handshake; the registry adds the
rule a handshake cannot: a live name belongs to one process. A process is told apart by
what its registration carries, its keys, ``endpoint`` and ``started_ms``: the same process
registering again (a renewal, new capabilities or topics, a reconnect, a restarted discovery
node) refreshes its entry; another process under a live name is a conflict, whether it has
other keys or the same ones (two ``mesh run --name echo-1``). Leases expire unless renewed,
and an expired or unregistered name is free again. Whether a holder is gone before its lease
ran out is for the discovery server to judge (it knows the holder's connection), see
:meth:`Registry.holder`.

Specified in protocol.md 9 (discovery).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidArgument, NameConflict, PeerNotFound
from .identity import Certificate
from .subjects import matches, validate_pattern, validate_topic
from .wire import MAX_CAPABILITIES, MAX_CAPABILITY_LEN, MAX_DEPTH, MAX_TOPICS, MAX_U64, Suite

MAX_ENDPOINT_LEN = 256
MAX_SUITES = 8
MAX_U32 = 2**32 - 1
LOOKUP_KEYS = ("name", "capability", "publishers", "subscribers")
_XSALSA = int(Suite.XSALSA20_POLY1305)  # what every node accepts, and an entry without suites
MAX_LEASE_MS = 300_000
MIN_LEASE_MS = 200


@dataclass(eq=False)
class PeerInfo:
    """A directory entry: a node's certificate and what it registered (protocol.md 9).

    The same rules read a REGISTER body on the discovery node and an entry a node receives in
    ENTRIES or an EVENT (:func:`parse_entry`), so a node never holds an entry discovery would
    have refused.
    """

    certificate: Certificate
    endpoint: str
    capabilities: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    started_ms: int = 0
    topics: tuple[str, ...] = ()
    subscriptions: tuple[str, ...] = ()
    topics_endpoint: str = ""
    suites: tuple[int, ...] = (_XSALSA,)  # the cipher suites it accepts (6.1), any order

    @property
    def name(self) -> str:
        return self.certificate.name

    def suite_for(self, ours: tuple[Suite, ...]) -> Suite:
        """The suite to offer this peer in a HELLO: our most preferred one it accepts."""
        return next((suite for suite in ours if suite in self.suites), Suite.XSALSA20_POLY1305)

    def to_wire(self) -> dict[str, Any]:
        """The entry as ENTRIES and EVENT bodies carry it."""
        return {
            "cert": self.certificate.to_bytes(),
            "endpoint": self.endpoint,
            "capabilities": list(self.capabilities),
            "meta": self.meta,
            "started_ms": self.started_ms,
            "topics": list(self.topics),
            "subscriptions": list(self.subscriptions),
            "topics_endpoint": self.topics_endpoint,
            "suites": list(self.suites),
        }

    def to_dict(self) -> dict[str, Any]:
        """The entry for people and JSON: the node id instead of the certificate's bytes."""
        fields = self.to_wire()
        del fields["cert"]
        return {"name": self.name, "node_id": self.certificate.node_id.hex(), **fields}


@dataclass(eq=False)
class Entry(PeerInfo):
    """One registration as the discovery node keeps it: the entry and its lease."""

    lease_ms: int = 0
    expires_ms: int = 0

    @property
    def registration(self) -> tuple[str, int]:
        """What tells this process's registration from another's under the same keys."""
        return (self.endpoint, self.started_ms)

    def same_process(self, other: Entry) -> bool:
        return (
            self.certificate.node_id == other.certificate.node_id
            and self.registration == other.registration
        )


def parse_entry(certificate: Certificate, body: Any) -> PeerInfo:
    """Validate a directory entry's fields (raises InvalidArgument); the certificate is
    verified by the caller. ``endpoint`` and ``started_ms`` are required, the rest default."""
    if not isinstance(body, dict):
        raise InvalidArgument("a directory entry must be a map")
    endpoint = body.get("endpoint")
    caps = body.get("capabilities", [])
    meta = body.get("meta", {})
    started = body.get("started_ms")
    if not (
        isinstance(endpoint, str) and 0 < len(endpoint) <= MAX_ENDPOINT_LEN and "://" in endpoint
    ):
        raise InvalidArgument("endpoint must be a ZeroMQ address such as tcp://host:port")
    if not (
        isinstance(caps, list)
        and len(caps) <= MAX_CAPABILITIES
        and all(isinstance(c, str) and 0 < len(c) <= MAX_CAPABILITY_LEN for c in caps)
    ):
        raise InvalidArgument("capabilities must be a list of short strings")
    if not (isinstance(meta, dict) and _plain(meta)):
        raise InvalidArgument("meta must be a map of plain values (no attachments)")
    if not (type(started) is int and 0 <= started <= MAX_U64):
        raise InvalidArgument("started_ms is required: the process's start, ms (uint)")
    topics_endpoint = body.get("topics_endpoint", "")
    if not (isinstance(topics_endpoint, str) and len(topics_endpoint) <= MAX_ENDPOINT_LEN):
        raise InvalidArgument("topics_endpoint must be a ZeroMQ address")
    suites = body.get("suites", [_XSALSA])
    if not (
        isinstance(suites, list)
        and 0 < len(suites) <= MAX_SUITES
        and all(type(s) is int and 0 < s < 256 for s in suites)
    ):
        raise InvalidArgument(f"suites must be a list of 1 to {MAX_SUITES} suite numbers")
    return PeerInfo(
        certificate,
        endpoint,
        tuple(caps),
        meta,
        started,
        _names(body.get("topics", []), validate_topic, "topics"),
        _names(body.get("subscriptions", []), validate_pattern, "subscriptions"),
        topics_endpoint,
        tuple(suites),
    )


def parse_registration(certificate: Certificate, body: Any, now_ms: int) -> Entry:
    """Validate a REGISTER body (raises InvalidArgument) and build the entry with its lease."""
    info = parse_entry(certificate, body)
    lease = body.get("lease_ms", 10_000)
    if not (type(lease) is int and 0 <= lease <= MAX_U32):
        raise InvalidArgument("lease_ms must be an integer of 32 bits")
    lease = min(max(lease, MIN_LEASE_MS), MAX_LEASE_MS)
    return Entry(**vars(info), lease_ms=lease, expires_ms=now_ms + lease)


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is msgpack data without attachments (a directory entry is carried
    in topic frames, which have none)."""
    if value is None or type(value) in (bool, int, float, str, bytes):
        return True
    if depth >= MAX_DEPTH:
        return False
    if type(value) is list:
        return all(_plain(item, depth + 1) for item in value)
    if type(value) is dict:
        return all(_plain(item, depth + 1) for item in value.values())
    return False


def parse_lookup(body: Any) -> dict[str, str]:
    """A LOOKUP body: nil or ``{}`` (everything), or a map with one of ``name``,
    ``capability``, ``publishers``, ``subscribers`` (a string). Raises InvalidArgument."""
    if body is None:
        return {}
    if not isinstance(body, dict) or len(body) > 1 or not set(body) <= set(LOOKUP_KEYS):
        raise InvalidArgument(f"LOOKUP takes nil, {{}} or one of {', '.join(LOOKUP_KEYS)}")
    asked = dict(body)
    if not all(isinstance(value, str) for value in asked.values()):
        raise InvalidArgument("a LOOKUP names a string")
    if "publishers" in asked:
        validate_pattern(asked["publishers"])
    if "subscribers" in asked:
        validate_topic(asked["subscribers"])
    return asked


def parse_registration_key(body: Any) -> tuple[str, int] | None:
    """The ``{endpoint, started_ms}`` a RENEW or UNREGISTER names its registration by; None
    for a nil body (an older node: its keys alone say which entry it means)."""
    if body is None:
        return None
    if not isinstance(body, dict):
        raise InvalidArgument("RENEW and UNREGISTER take nil or {endpoint, started_ms}")
    endpoint, started = body.get("endpoint"), body.get("started_ms")
    if (
        not (isinstance(endpoint, str) and len(endpoint) <= MAX_ENDPOINT_LEN)
        or type(started) is not int
    ):
        raise InvalidArgument("endpoint must be a string and started_ms an integer")
    return (endpoint, started)


def _names(value: Any, validate: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_TOPICS:
        raise InvalidArgument(f"{what} must be a list of at most {MAX_TOPICS} names")
    return tuple(validate(v) for v in value)


class Registry:
    """Live entries by name, with leases."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def holder(self, entry: Entry) -> Entry | None:
        """The entry of another process holding ``entry``'s name, or None: the name is free
        or held by ``entry``'s own process. Call :meth:`expire` first: an expired lease holds
        nothing."""
        current = self._entries.get(entry.name)
        if current is None or current.same_process(entry):
            return None
        return current

    def register(self, entry: Entry) -> str:
        """Add or refresh ``entry``; returns the event: ``"JOIN"`` or ``"UPDATE"``. Raises
        NameConflict while another process holds the name (see :meth:`holder`)."""
        current = self._entries.get(entry.name)
        if current is not None and current.certificate.node_id != entry.certificate.node_id:
            raise NameConflict(f"name {entry.name!r} is live with other keys", peer=entry.name)
        if current is not None and not current.same_process(entry):
            raise NameConflict(
                f"name {entry.name!r} is live in another process (at {current.endpoint}); "
                "stop it or pick another name",
                peer=entry.name,
            )
        self._entries[entry.name] = entry
        return "JOIN" if current is None else "UPDATE"

    def renew(
        self, certificate: Certificate, now_ms: int, registration: tuple[str, int] | None = None
    ) -> Entry:
        """Extend the lease of ``certificate``'s entry (of that ``registration`` only, when
        given: a process whose name passed to another is not registered any more)."""
        entry = self._entry_of(certificate, registration)
        if entry is None:
            raise PeerNotFound(f"{certificate.name!r} is not registered", peer=certificate.name)
        entry.expires_ms = now_ms + entry.lease_ms
        return entry

    def unregister(
        self, certificate: Certificate, registration: tuple[str, int] | None = None
    ) -> Entry | None:
        """Remove ``certificate``'s entry (only that ``registration``'s, when given: a process
        refused under a live name never removes the one that holds it)."""
        if self._entry_of(certificate, registration) is None:
            return None
        return self._entries.pop(certificate.name)

    def _entry_of(
        self, certificate: Certificate, registration: tuple[str, int] | None
    ) -> Entry | None:
        entry = self._entries.get(certificate.name)
        if entry is None or entry.certificate.node_id != certificate.node_id:
            return None
        if registration is not None and entry.registration != registration:
            return None
        return entry

    def lookup(
        self,
        *,
        name: str | None = None,
        capability: str | None = None,
        publishers: str | None = None,
        subscribers: str | None = None,
    ) -> list[Entry]:
        """Entries by name, by capability, publishing a topic matching the pattern
        ``publishers``, subscribed to a pattern matching the topic ``subscribers``; or all."""
        if name is not None:
            entry = self._entries.get(name)
            return [entry] if entry is not None else []
        entries = self._entries.values()
        if capability is not None:
            return [e for e in entries if capability in e.capabilities]
        if publishers is not None:
            return [e for e in entries if any(matches(publishers, t) for t in e.topics)]
        if subscribers is not None:
            return [e for e in entries if any(matches(p, subscribers) for p in e.subscriptions)]
        return list(entries)

    def expire(self, now_ms: int) -> list[Entry]:
        """Remove and return the entries whose lease ran out."""
        gone = [e for e in self._entries.values() if e.expires_ms <= now_ms]
        for entry in gone:
            del self._entries[entry.name]
        return gone
