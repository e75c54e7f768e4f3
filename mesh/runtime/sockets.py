"""Every ZeroMQ socket the mesh opens, with its options set on purpose.

* ``LINGER`` is short so a process exits promptly even when its peers are gone: anything
  still queued then is lost, and the mesh's own timeouts and retries, not ZeroMQ's, decide.
* ``ROUTER_MANDATORY`` makes a send to a vanished peer raise instead of dropping silently.
* ``IMMEDIATE`` on DEALERs queues nothing for a connection that is not up, so a send to a
  dead peer fails at once instead of waiting in a buffer.
* ``MAXMSGSIZE`` stops an oversized frame inside libzmq, before Python sees it.
* High-water marks sit above the protocol's credit windows: they are a backstop only.
* ``HANDSHAKE_IVL`` bounds ZMTP's own greeting, so a silent scanner costs a connection only
  for that long.

Specified in protocol.md 3 (transport and socket topology).
"""

from __future__ import annotations

import zmq

from ..core.errors import InvalidArgument
from ..core.wire import MAC_SIZE, MAX_ATTACHMENT

LINGER_MS = 200
HWM = 10_000
HANDSHAKE_IVL_MS = 5_000
MAX_ZMQ_MESSAGE = MAX_ATTACHMENT + MAC_SIZE

COMMON_OPTIONS = {
    zmq.LINGER: LINGER_MS,
    zmq.SNDHWM: HWM,
    zmq.RCVHWM: HWM,
    zmq.MAXMSGSIZE: MAX_ZMQ_MESSAGE,
    zmq.HANDSHAKE_IVL: HANDSHAKE_IVL_MS,
}
ROUTER_OPTIONS = {**COMMON_OPTIONS, zmq.ROUTER_MANDATORY: 1}
DEALER_OPTIONS = {**COMMON_OPTIONS, zmq.IMMEDIATE: 1}
PUB_OPTIONS = {zmq.LINGER: LINGER_MS, zmq.SNDHWM: HWM}


MAX_SOCKETS = 16_384
_shared: zmq.Context | None = None


def shared_context() -> zmq.Context:
    """The process-wide context every node uses unless given its own.

    One context means one I/O thread however many nodes a process embeds. Its socket limit is
    raised (libzmq's default is 1023) before the first socket exists, since a node keeps a
    DEALER per peer.
    """
    global _shared
    if _shared is None or _shared.closed:
        _shared = zmq.Context()
        _shared.set(zmq.MAX_SOCKETS, MAX_SOCKETS)
    return _shared


def close_shared_context() -> None:
    """At the end of a process: close what is left and flush what its sockets still hold
    (each for up to its ``LINGER``). Without it, pyzmq drops at interpreter exit what its
    I/O thread has not written yet: a drained agent's last reply, sent just before it
    exits, could be lost."""
    global _shared
    if _shared is not None and not _shared.closed:
        _shared.destroy(linger=LINGER_MS)
    _shared = None


SCHEMES = ("tcp", "ipc", "inproc")


def checked_endpoint(text: object, what: str = "address") -> str:
    """``text`` if it is a ZeroMQ address this mesh can use, else InvalidArgument in one line
    that says what is wrong and how to write it. Every address a user gives (``--bind``,
    ``--discovery``, ``advertise``) goes through here before ZeroMQ sees it: ZeroMQ's own
    answers are "Invalid argument", or a port silently taken modulo 65536."""
    if not isinstance(text, str) or not text:
        raise InvalidArgument(f"{what} must be a ZeroMQ address such as tcp://127.0.0.1:7700")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise InvalidArgument(f"{what} {text!r} has no scheme: write tcp://{text}")
    if scheme not in SCHEMES or not rest:
        raise InvalidArgument(f"{what} {text!r}: use tcp://HOST:PORT, ipc://PATH or inproc://NAME")
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host:
            raise InvalidArgument(f"{what} {text!r} needs a host and a port: tcp://HOST:PORT")
        if port != "*" and not (port.isdigit() and int(port) <= 65_535):
            raise InvalidArgument(f"{what} {text!r}: the port must be 0 to 65535 (or *)")
    return text


def _configure(socket: zmq.Socket, options: dict[int, int]) -> zmq.Socket:
    for option, value in options.items():
        socket.setsockopt(option, value)
    return socket


def router(context: zmq.Context, bind: str) -> tuple[zmq.Socket, str]:
    """A bound ROUTER and the endpoint it actually bound (the port filled in)."""
    socket = _configure(context.socket(zmq.ROUTER), ROUTER_OPTIONS)
    return socket, _bind(socket, bind)


def publisher(context: zmq.Context, bind: str) -> tuple[zmq.Socket, str]:
    socket = _configure(context.socket(zmq.PUB), PUB_OPTIONS)
    return socket, _bind(socket, bind)


def dealer(context: zmq.Context, endpoint: str) -> zmq.Socket:
    """A DEALER connected to ``endpoint``."""
    checked_endpoint(endpoint, "peer address")
    socket = _configure(context.socket(zmq.DEALER), DEALER_OPTIONS)
    try:
        socket.connect(endpoint)
    except zmq.ZMQError as exc:
        socket.close(0)
        raise InvalidArgument(f"cannot connect to {endpoint!r}: {exc}") from exc
    return socket


def _bind(socket: zmq.Socket, endpoint: str) -> str:
    checked_endpoint(endpoint, "bind address")
    if endpoint.startswith("tcp://") and endpoint.rsplit(":", 1)[-1] in ("0", "*"):
        endpoint = endpoint.rsplit(":", 1)[0] + ":*"
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        socket.close(0)
        raise InvalidArgument(f"cannot bind {endpoint!r}: {exc}") from exc
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


def advertised(bound: str, advertise: str | None) -> str:
    """The endpoint peers should dial: ``advertise`` if given, else the bound one.

    A wildcard bind (0.0.0.0, ``*``, ``::``) has no address a peer can dial, so it needs
    an explicit ``advertise``.
    """
    if advertise:
        return advertise
    host = bound.split("://", 1)[-1].rsplit(":", 1)[0]
    if host in ("0.0.0.0", "*", "[::]", "::"):
        raise InvalidArgument(
            f"bound to all interfaces ({bound}); pass advertise='tcp://HOST:PORT' with an "
            "address peers can reach"
        )
    return bound
