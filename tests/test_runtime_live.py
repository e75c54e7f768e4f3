"""Runtime defects that only real ZeroMQ sockets can show: what a failed start leaves bound,
and what a send on our own closed socket is called."""

from __future__ import annotations

import uuid

import pytest
import zmq

from mesh import InvalidArgument, NodeClosed
from mesh.runtime.node import Node
from mesh.runtime.reactor import Reactor
from mesh.runtime.sockets import shared_context


@pytest.mark.asyncio
async def test_a_failed_start_closes_what_it_opened(mesh):
    """Defect 11: the topic PUB's bind fails after the ROUTER was bound; ``__aexit__``
    never runs when ``__aenter__`` raises, so start itself must let the ROUTER go."""
    endpoint = f"inproc://start-{uuid.uuid4().hex}"
    blocker = shared_context().socket(zmq.PUB)
    blocker.bind(f"{endpoint}.topics")  # where the node's topic PUB will try to bind
    try:
        with pytest.raises(InvalidArgument):
            async with Node("first", discovery=[], mesh=mesh, bind=endpoint):
                pass
    finally:
        blocker.close(0)
    async with Node(
        "second", discovery=[], mesh=mesh, bind=endpoint
    ) as second:  # the ROUTER is free
        assert second.endpoint == endpoint


@pytest.mark.asyncio
async def test_a_send_on_our_own_closed_socket_is_not_the_peer_being_unreachable():
    """Item 3: ENOTSOCK (or ETERM) is this side shutting down, not the peer gone."""
    context = zmq.Context()
    try:
        socket = context.socket(zmq.DEALER)
        socket.connect("tcp://127.0.0.1:9")
        reactor = Reactor(socket, lambda frames: None)
        socket.close(0)
        with pytest.raises(NodeClosed):
            reactor.send([b"x"])
        assert reactor.closed
        assert reactor.send([b"x"]) is False  # closed: refused quietly from now on
    finally:
        context.term()
