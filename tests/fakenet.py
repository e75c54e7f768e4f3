"""A network without sockets and a clock moved by hand: the runtime tested the way httpcore
tests its pool over a mock backend.

:class:`FakeNetwork` implements :class:`mesh.runtime.transport.Network`: a "DEALER" dialled to an
endpoint and a "ROUTER" bound at one exchange frames through the event loop (one
``call_soon`` per frame, as a socket's reader would fire), every frame is recorded, and a
test may hold a direction to reorder, duplicate or drop what was sent, or cut a link.

:func:`run` runs a coroutine on an event loop whose clock is virtual: when nothing is ready
to run, the loop's time jumps to the next timer instead of sleeping, so heartbeats,
timeouts and retry back-offs take no real time and a test never depends on how fast the
machine is. Handlers in these tests are ``async def`` (a thread would finish in real time).
"""

from __future__ import annotations

import asyncio
import itertools
import selectors
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from mesh.runtime.transport import OnFrames

_routing_ids = itertools.count(1)


@dataclass
class Sent:
    """One frame list that left a transport: who sent it, to whom, and whether it arrived."""

    source: str
    destination: str
    frames: list[bytes]
    delivered: bool = True


class FakeDealer:
    """The dialling side: what it sends reaches the listener at ``endpoint``."""

    def __init__(self, network: FakeNetwork, endpoint: str, on_frames: OnFrames) -> None:
        self.network = network
        self.endpoint = endpoint
        self.on_frames = on_frames
        self.routing = next(_routing_ids).to_bytes(5, "big")
        self.closed = False
        network.dealers[self.routing] = self

    def send(self, frames: list) -> bool:
        listener = self.network.listeners.get(self.endpoint)
        if self.closed or listener is None or listener.reader is None:
            return False  # IMMEDIATE: nothing connected, the send is refused
        if self.endpoint in self.network.cut:
            return False
        self.network.carry(
            Sent(f"dealer:{self.endpoint}", self.endpoint, [bytes(f) for f in frames]),
            lambda data: listener.arrive([self.routing, *data]),
        )
        return True

    def read_now(self) -> None:
        """Frames are handed over as they arrive: nothing waits unread."""

    def close(self) -> None:
        self.closed = True
        self.network.dealers.pop(self.routing, None)


class FakeRouter:
    """The bound side, reading: its sends name the DEALER by routing id, as a ROUTER's do."""

    def __init__(self, listener: FakeListener) -> None:
        self.listener = listener

    def send(self, frames: list) -> bool:
        routing, *data = frames
        dealer = self.listener.network.dealers.get(bytes(routing))
        if dealer is None or self.listener.closed:
            return False  # ROUTER_MANDATORY: an unknown routing id is refused
        if self.listener.endpoint in self.listener.network.cut:
            return False
        self.listener.network.carry(
            Sent(self.listener.endpoint, f"dealer:{dealer.endpoint}", [bytes(f) for f in data]),
            lambda frames: None if dealer.closed else dealer.on_frames(frames),
        )
        return True

    def read_now(self) -> None:
        """Frames are handed over as they arrive: nothing waits unread."""

    def close(self) -> None:
        self.listener.close()


class FakeListener:
    def __init__(self, network: FakeNetwork, endpoint: str) -> None:
        self.network = network
        self.endpoint = endpoint
        self.reader: OnFrames | None = None
        self.closed = False

    def start(self, on_frames: OnFrames) -> FakeRouter:
        self.reader = on_frames
        return FakeRouter(self)

    def arrive(self, frames: list[bytes]) -> None:
        if self.reader is not None and not self.closed:
            self.reader(frames)

    def close(self) -> None:
        self.closed = True
        if self.network.listeners.get(self.endpoint) is self:
            del self.network.listeners[self.endpoint]


@dataclass
class FakeNetwork:
    """Endpoints are any unique string (``inproc://name`` keeps the node's topic PUB happy).

    ``sent`` records every frame list sent. ``hold()`` keeps what is sent afterwards in
    ``held`` instead of delivering it; ``release()`` delivers it (optionally only some),
    ``drop_held()`` loses it. ``cut`` holds endpoints whose link refuses sends both ways.
    """

    listeners: dict[str, FakeListener] = field(default_factory=dict)
    dealers: dict[bytes, FakeDealer] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    held: list[tuple[Sent, Callable[[list[bytes]], None]]] = field(default_factory=list)
    cut: set[str] = field(default_factory=set)
    holding: bool = False

    def listen(self, bind: str) -> FakeListener:
        if bind in self.listeners:
            raise OSError(f"{bind} is bound already")
        listener = self.listeners[bind] = FakeListener(self, bind)
        return listener

    def dial(self, endpoint: str, on_frames: OnFrames) -> FakeDealer:
        return FakeDealer(self, endpoint, on_frames)

    def carry(self, sent: Sent, deliver: Callable[[list[bytes]], None]) -> None:
        self.sent.append(sent)
        if self.holding:
            sent.delivered = False
            self.held.append((sent, deliver))
        else:
            asyncio.get_running_loop().call_soon(deliver, sent.frames)

    def hold(self) -> None:
        self.holding = True

    def release(
        self,
        keep: Callable[[Sent], bool] = lambda sent: True,
        then: Callable[[], None] | None = None,
    ) -> int:
        """Stop holding; deliver what was held (that ``keep`` accepts; the rest is lost), in
        one loop callback that ends with ``then()``: it runs right after the frames are
        read and before anything they woke, which is how a test closes a connection between
        a WELCOME arriving and the handshake resuming."""
        self.holding = False
        held, self.held = self.held, []
        kept = [(sent, deliver) for sent, deliver in held if keep(sent)]

        def hand_over() -> None:
            for sent, deliver in kept:
                sent.delivered = True
                deliver(sent.frames)
            if then is not None:
                then()

        asyncio.get_running_loop().call_soon(hand_over)
        return len(kept)

    def drop_held(self) -> int:
        return self.release(keep=lambda sent: False)

    def frames_to(self, destination: str) -> list[list[bytes]]:
        return [s.frames for s in self.sent if s.destination == destination]


# --------------------------------------------------------------------------- virtual time


class _JumpingSelector(selectors.DefaultSelector):
    """Polls the real descriptors without blocking; when the loop would wait for a timer,
    the clock jumps to it instead."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list:
        ready = super().select(0)
        if ready or timeout is None or timeout <= 0:
            if not ready and timeout is None:  # nothing scheduled at all: a real wait
                return super().select(0.05)
            return ready
        self._clock.now += timeout
        return []


@dataclass
class VirtualClock:
    now: float = 1000.0


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.clock = VirtualClock()
        super().__init__(_JumpingSelector(self.clock))

    def time(self) -> float:
        return self.clock.now

    def idle(self) -> bool:
        """Nothing is ready to run (timers aside): asyncio's own ready queue is empty."""
        return not self._ready  # type: ignore[attr-defined]


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``main()`` on a virtual-time loop (a fresh one per test) and close it."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())


async def settle(turns: int = 10_000) -> None:
    """Until nothing can run but timers: every frame in flight has arrived and everything it
    woke has run (no virtual time passes). Fails if the loop never gets there."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop), "settle() needs fakenet.run()"
    for _ in range(turns):
        await asyncio.sleep(0)  # one turn; then look at what the others scheduled
        if loop.idle():
            return
    raise AssertionError(f"still busy after {turns} loop turns")


async def wait_until(condition: Callable[[], bool], within: float = 30.0) -> None:
    """Until ``condition()`` holds, or fail after ``within`` virtual seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"not true within {within} virtual seconds")
        await asyncio.sleep(0.01)
