"""The soak's reliable-delivery ledger: what senders queued against what receivers ran.

Senders (tests/soak_sender.py) log ``start N PID TIME`` for each incarnation, ``want LANE
SEQ`` before ``node.send(..., delivery=MODE)`` and ``queued LANE SEQ`` once it returned, then
``settled`` (or ``unsettled``) when ``delivered()`` returned at the end. Receivers
(tests/soak_receiver.py) log ``start PID TIME`` for each incarnation and ``ran LANE SEQ PEER`` from
the handler. Each line is one write(2) to a file opened for appending, so a kill -9 loses no
line that was written; a torn last line (no newline) is ignored.

A *lane* is one sender, receiver and mode: the order the mesh promises. A durable lane
outlives its sender's restarts (the outbox keeps its stream); an at-least-once lane belongs
to one sender incarnation (its stream is in memory).

Theory of the verdict. Every message a sender *wanted* ends in one :class:`Outcome`:

* ``ran`` (at least once, counted once), or ``dead_lettered`` (a typed outcome, by reason);
* ``unconfirmed``: never ran, and its sender died inside ``send()`` (no ``queued`` line):
  the caller was never told it was accepted, so either way is right;
* ``lost_with_sender``: an at-least-once message queued by an incarnation that was killed
  before it ran: allowed, at-least-once is kept in memory only;
* ``lost``: anything else that never ran, a durable message above all. It must be 0.

And every run is checked: a lane's first runs come in increasing order, and within one
receiver incarnation every run comes after the previous one (else ``order``); a run of a
message that ran before is a ``duplicate`` unless it is the one documented window
(mesh/core/sequencer.py, README): the earlier run was in an earlier incarnation of the receiver
(killed), among the last ``LANE_WINDOW`` runs of that lane there (a sender has at most that
many messages awaiting their ack), so its ack may have died with the receiver. Those are
counted as ``duplicates_in_crash_window``, not as failures. A run of a message never wanted
is ``phantom``; a run at the wrong receiver or from the wrong sender is ``misrouted``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from mesh.runtime.delivery import AT_LEAST_ONCE, DURABLE, LANE_WINDOW

RELIABLE_MODES = (AT_LEAST_ONCE, DURABLE)
DURABLE_INCARNATION = 0  # a durable lane is shared by every incarnation of its sender
EXAMPLES = 10


class Outcome(StrEnum):
    RAN = "ran"
    DEAD_LETTERED = "dead_lettered"
    UNCONFIRMED = "unconfirmed"
    LOST_WITH_SENDER = "lost_with_sender"
    LOST = "lost"


class Violation(StrEnum):
    ORDER = "order_violations"
    DUPLICATE = "duplicates"
    PHANTOM = "phantom"
    MISROUTED = "misrouted"


class Ending(StrEnum):
    """How a sender incarnation ended, from its last line."""

    KILLED = "killed"  # no settle line: it died (kill -9) while sending
    SETTLED = "settled"  # delivered() returned: every message acked or dead-lettered
    UNSETTLED = "unsettled"  # delivered() timed out: what is missing is lost


@dataclass(frozen=True)
class Lane:
    """One sender, receiver and mode; ``incarnation`` tells at-least-once lanes apart."""

    mode: str
    sender: str
    incarnation: int
    receiver: str

    @property
    def key(self) -> str:
        return f"{self.mode}:{self.sender}:{self.incarnation}:{self.receiver}"

    @classmethod
    def parse(cls, key: str) -> Lane:
        mode, sender, incarnation, receiver = key.split(":")
        if mode not in RELIABLE_MODES:
            raise ValueError(f"not a reliable mode: {mode!r}")
        return cls(mode, sender, int(incarnation), receiver)

    @classmethod
    def of(cls, mode: str, sender: str, incarnation: int, receiver: str) -> Lane:
        kept = DURABLE_INCARNATION if mode == DURABLE else incarnation
        return cls(mode, sender, kept, receiver)


def complete_lines(text: str) -> list[str]:
    """The lines of a log; a torn last line (the writer was killed) is not one."""
    return text.split("\n")[:-1]


def read_lines(path: Path) -> list[str]:
    return complete_lines(path.read_text()) if path.exists() else []


@dataclass
class _Sent:
    """What senders asked for: per lane, seq -> (sender incarnation, confirmed)."""

    wanted: dict[Lane, dict[int, tuple[int, bool]]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    endings: dict[tuple[str, int], Ending] = field(default_factory=dict)


@dataclass
class Verdict:
    queued: Counter[str] = field(default_factory=Counter)  # per mode
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    ran: Counter[str] = field(default_factory=Counter)  # per mode
    dead_letters: Counter[str] = field(default_factory=Counter)  # per reason
    violations: Counter[Violation] = field(default_factory=Counter)
    duplicates_in_crash_window: int = 0
    lanes: int = 0
    examples: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.examples) < EXAMPLES:
            self.examples.append(text)

    def summary(self) -> dict[str, Any]:
        return {
            "lanes": self.lanes,
            "queued": dict(self.queued),
            "ran": dict(self.ran),
            "duplicates_in_crash_window": self.duplicates_in_crash_window,
            "unconfirmed": self.outcomes[Outcome.UNCONFIRMED],
            "lost_with_sender": self.outcomes[Outcome.LOST_WITH_SENDER],
            "dead_lettered": dict(self.dead_letters),
            "lost": self.outcomes[Outcome.LOST],
            **{violation.value: self.violations[violation] for violation in Violation},
            "examples": self.examples,
        }


class Ledger:
    """Feed it the logs (and the dead letters), then ask for the :class:`Verdict`."""

    def __init__(self) -> None:
        self._sent = _Sent()
        self._runs: dict[Lane, list[tuple[int, int]]] = defaultdict(list)  # (rx incarnation, seq)
        self._dead: dict[tuple[Lane, int], str] = {}
        self._strays: list[tuple[Violation, str]] = []

    def add_sender_log(self, sender: str, lines: list[str]) -> None:
        incarnation = 0
        for line in lines:
            word, *rest = line.split()
            if word == "start":
                incarnation = int(rest[0])
                self._sent.endings[(sender, incarnation)] = Ending.KILLED
            elif word in ("want", "queued"):
                lane, seq = Lane.parse(rest[0]), int(rest[1])
                self._sent.wanted[lane][seq] = (incarnation, word == "queued")
            elif word in (Ending.SETTLED, Ending.UNSETTLED):
                self._sent.endings[(sender, incarnation)] = Ending(word)

    def add_receiver_log(self, receiver: str, lines: list[str]) -> None:
        incarnation = 0
        for line in lines:
            word, *rest = line.split()
            if word == "start":
                incarnation += 1
            elif word == "ran":
                lane, seq, peer = Lane.parse(rest[0]), int(rest[1]), rest[2]
                if lane.receiver != receiver or lane.sender != peer:
                    self._strays.append((Violation.MISROUTED, f"{line} at {receiver}"))
                else:
                    self._runs[lane].append((incarnation, seq))

    def add_dead_letter(self, lane_key: str, seq: int, reason: str) -> None:
        self._dead[(Lane.parse(lane_key), seq)] = reason

    def verdict(self) -> Verdict:
        verdict = Verdict()
        for violation, text in self._strays:
            verdict.violations[violation] += 1
            verdict.note(f"{violation}: {text}")
        lanes = set(self._sent.wanted) | set(self._runs)
        verdict.lanes = len(lanes)
        for lane in sorted(lanes, key=lambda lane: lane.key):
            ran = self._check_runs(lane, verdict)
            self._settle_outcomes(lane, ran, verdict)
        return verdict

    def _check_runs(self, lane: Lane, verdict: Verdict) -> set[int]:
        """Order and exactly-once over one lane's runs; returns the seqs that ran."""
        runs = self._runs.get(lane, [])
        per_incarnation = Counter(incarnation for incarnation, _ in runs)
        wanted = self._sent.wanted.get(lane, {})
        first: dict[int, tuple[int, int]] = {}  # seq -> (incarnation, position there)
        position: Counter[int] = Counter()
        last_in: dict[int, int] = {}
        highest = -1
        for incarnation, seq in runs:
            at = position[incarnation]
            position[incarnation] += 1
            out_of_turn = seq <= last_in.get(incarnation, -1)
            last_in[incarnation] = max(seq, last_in.get(incarnation, -1))
            if seq not in wanted:
                verdict.violations[Violation.PHANTOM] += 1
                verdict.note(f"phantom: {lane.key} {seq} ran but was never sent")
            if seq in first:
                was_in, was_at = first[seq]
                in_window = was_in < incarnation and per_incarnation[was_in] - was_at <= LANE_WINDOW
                if in_window and not out_of_turn:
                    verdict.duplicates_in_crash_window += 1
                else:
                    verdict.violations[Violation.DUPLICATE] += 1
                    verdict.note(
                        f"duplicate: {lane.key} {seq} ran in receiver incarnations "
                        f"{was_in} and {incarnation}"
                    )
                continue
            first[seq] = (incarnation, at)
            if seq < highest or out_of_turn:
                verdict.violations[Violation.ORDER] += 1
                verdict.note(f"order: {lane.key} {seq} ran after {max(highest, seq)}")
            highest = max(highest, seq)
        return set(first)

    def _settle_outcomes(self, lane: Lane, ran: set[int], verdict: Verdict) -> None:
        for seq, (incarnation, confirmed) in self._sent.wanted.get(lane, {}).items():
            if confirmed:
                verdict.queued[lane.mode] += 1
            outcome = self._outcome(lane, seq, incarnation, confirmed, ran)
            verdict.outcomes[outcome] += 1
            if outcome == Outcome.RAN:
                verdict.ran[lane.mode] += 1
            elif outcome == Outcome.DEAD_LETTERED:
                verdict.dead_letters[self._dead[(lane, seq)]] += 1
            elif outcome == Outcome.LOST:
                verdict.note(f"lost: {lane.key} {seq} (sender incarnation {incarnation})")

    def _outcome(
        self, lane: Lane, seq: int, incarnation: int, confirmed: bool, ran: set[int]
    ) -> Outcome:
        if seq in ran:
            return Outcome.RAN
        if (lane, seq) in self._dead:
            return Outcome.DEAD_LETTERED
        if not confirmed:
            return Outcome.UNCONFIRMED
        ending = self._sent.endings.get((lane.sender, incarnation), Ending.KILLED)
        if lane.mode == AT_LEAST_ONCE and ending == Ending.KILLED:
            return Outcome.LOST_WITH_SENDER
        return Outcome.LOST
