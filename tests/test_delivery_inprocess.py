"""Reliable delivery between nodes in this process, over real sockets on loopback."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest

from mesh import InvalidArgument, InvalidBody, Node
from mesh.runtime.discovery import DiscoveryServer
from tests.conftest import eventually
from tests.processes import ROOT

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast


@pytest.mark.asyncio
async def test_retried_dead_letters_go_out_again_and_are_announced(mesh, tmp_path):
    async with (
        DiscoveryServer(bind="tcp://127.0.0.1:0", mesh=mesh) as discovery,
        Node("rx", discovery=discovery.endpoint, mesh=mesh) as rx,
        Node("tx", discovery=discovery.endpoint, mesh=mesh, publish_dead_letters=True) as tx,
    ):
        notices = await rx.subscribe("deadletters")
        await tx.send("rx", "late", {"n": 1}, delivery="at_least_once")
        await tx.delivered(timeout=30)
        (letter,) = tx.dead_letters.dead_letters()
        assert letter["reason"] == "no_such_method" and letter["body"] == {"n": 1}
        notice = await notices.get(timeout=10)
        assert notice.body == {"id": letter["id"], "peer": "rx", "method": "late",
                               "reason": "no_such_method"}  # fmt: skip

        arrived = asyncio.get_running_loop().create_future()
        rx.handler("late", arrived.set_result)  # the method exists now
        store = str(tx.dead_letters.path)
        retry = [sys.executable, "-m", "mesh.cli", "deadletters", "--store", store, "retry"]
        done = subprocess.run([*retry, str(letter["id"])], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        assert await asyncio.wait_for(arrived, 10) == {"n": 1}  # the running node sent it
        await tx.delivered(timeout=30)
        assert tx.dead_letters.dead_letters() == []
        assert tx.stats()["delivery"]["peers"]["rx (durable)"]["acked"] == 1


@pytest.mark.asyncio
async def test_reliable_sends_check_their_arguments(mesh, tmp_path):
    async with Node("rx", discovery=[], mesh=mesh) as rx, Node("tx", discovery=[], mesh=mesh) as tx:
        tx.add_peer(rx.identity.require_certificate(), rx.endpoint)
        with pytest.raises(InvalidArgument, match="delivery must be one of"):
            await tx.send("rx", "x", 1, delivery="exactly_once")
        with pytest.raises(InvalidArgument, match="deadline must be positive"):
            await tx.send("rx", "x", 1, delivery="at_least_once", deadline=0)
        with pytest.raises(InvalidBody, match="plain msgpack"):
            await tx.send("rx", "x", np.zeros(3), delivery="durable")


@pytest.mark.asyncio
async def test_resends_while_a_handler_runs_do_not_run_it_twice(mesh, monkeypatch):
    async with Node("rx", discovery=[], mesh=mesh) as rx, Node("tx", discovery=[], mesh=mesh) as tx:
        seen: list[int] = []

        async def slow(body):
            await asyncio.sleep(0.3 if body == 0 else 0)  # longer than nothing: retries come
            seen.append(body)

        rx.handler("slow", slow)
        tx.add_peer(rx.identity.require_certificate(), rx.endpoint)
        monkeypatch.setattr("mesh.runtime.delivery.ACK_WAIT_S", 0.05)  # resend while 0 still runs
        for i in range(20):
            await tx.send("rx", "slow", i, delivery="at_least_once")
        await tx.delivered(timeout=30)
        assert seen == list(range(20))  # once each, in order, despite the resends
        assert tx.stats()["delivery"]["peers"]["rx (at_least_once)"]["retries"] > 0


@pytest.mark.asyncio
async def test_the_receiver_remembers_a_bounded_number_of_idle_streams(mesh, monkeypatch):
    monkeypatch.setattr("mesh.runtime.delivery.MAX_STREAMS", 2)
    async with Node("rx", discovery=[], mesh=mesh) as rx:
        rx.handler("note", lambda body: None)
        for name in ("a", "b", "c", "d"):  # each sender brings a stream of its own
            async with Node(name, discovery=[], mesh=mesh) as tx:
                tx.add_peer(rx.identity.require_certificate(), rx.endpoint)
                await tx.send("rx", "note", name, delivery="at_least_once")
                await tx.delivered(timeout=30)
        received = rx.stats()["delivery"]["received"]
    assert received["streams"] == 2 and received["handled"] == 4


@pytest.mark.asyncio
async def test_once_delivered_the_receiver_holds_none_of_the_senders_credit(mesh, monkeypatch):
    """Issue 17 (2.2): resends of messages held behind a failing one kept their credit for
    good (39 messages of the sender's window, here, until the next rekey)."""
    async with Node("rx", discovery=[], mesh=mesh) as rx, Node("tx", discovery=[], mesh=mesh) as tx:
        ran: list[int] = []
        failures = [3]

        async def flaky(body):
            if failures[0]:
                failures[0] -= 1
                raise RuntimeError("not yet")
            ran.append(body)

        rx.handler("flaky", flaky)
        tx.add_peer(rx.identity.require_certificate(), rx.endpoint)
        monkeypatch.setattr("mesh.runtime.delivery.ACK_WAIT_S", 0.05)  # resends while 1.. are held
        for i in range(40):
            await tx.send("rx", "flaky", i, delivery="at_least_once")
        await tx.delivered(timeout=60)
        assert ran == list(range(40)) and tx.dead_letters.dead_letters() == []
        assert rx.stats()["delivery"]["received"]["failed"] == 3

        def holds_nothing() -> bool:  # resends still on the way are consumed as they land
            held = rx.stats()["callers"]["tx"]
            return held["held_messages"] == 0 and held["held_bytes"] == 0

        await eventually(holds_nothing)


@pytest.mark.asyncio
async def test_a_reliable_body_msgpack_cannot_carry_is_refused_by_send(mesh):
    """Issue 17 (2.5): a set body killed the lane's task and delivered() never returned."""
    async with Node("rx", discovery=[], mesh=mesh) as rx, Node("tx", discovery=[], mesh=mesh) as tx:
        rx.handler("x", lambda body: None)
        tx.add_peer(rx.identity.require_certificate(), rx.endpoint)
        with pytest.raises(InvalidBody):
            await tx.send("rx", "x", {"tags": {1, 2}}, delivery="at_least_once")
        await tx.send("rx", "x", {"tags": [1, 2]}, delivery="at_least_once")
        await tx.delivered(timeout=30)
        assert tx.stats()["delivery"]["peers"]["rx (at_least_once)"]["acked"] == 1


@pytest.mark.asyncio
async def test_a_handler_that_raises_cancelled_error_is_a_failure_not_a_stuck_lane(mesh):
    """A reliable message whose handler's own code raises CancelledError (a task it awaited
    was cancelled) has failed, and is retried like any failure: the lane goes on, in order,
    and the receiver neither stops nor spins."""
    async with Node("rx", discovery=[], mesh=mesh) as rx, Node("tx", discovery=[], mesh=mesh) as tx:
        ran: list[int] = []
        cancels = [2]

        async def cancelling(body):
            if cancels[0]:
                cancels[0] -= 1
                other = asyncio.create_task(asyncio.Event().wait())
                other.cancel()
                await other  # its CancelledError is this handler's own
            ran.append(body)

        rx.handler("cancelling", cancelling)
        tx.add_peer(rx.identity.require_certificate(), rx.endpoint)
        for i in range(5):
            await tx.send("rx", "cancelling", i, delivery="at_least_once")
        await tx.delivered(timeout=60)
        assert ran == list(range(5)) and tx.dead_letters.dead_letters() == []
        assert rx.stats()["delivery"]["received"]["failed"] == 2
