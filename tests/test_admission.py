"""Admission to the model: FIFO, positions, a bounded queue, and leaving at any point."""

from __future__ import annotations

import asyncio

import pytest

from agents.admission import Admission
from mesh import Overloaded


@pytest.mark.asyncio
async def test_positions_then_refusal_when_the_queue_is_full():
    admission = Admission(max_waiting=2)
    first, second, third = admission.join(), admission.join(), admission.join()
    assert [first.position, second.position, third.position] == [0, 1, 2]
    with pytest.raises(Overloaded, match=r"2 requests already waiting \(limit 2\)"):
        admission.join()
    assert admission.refused == 1
    assert admission.waiting == 2


@pytest.mark.asyncio
async def test_turns_come_in_order_and_one_at_a_time():
    admission = Admission(max_waiting=5)
    order: list[int] = []

    async def work(index: int) -> None:
        ticket = admission.join()
        try:
            await ticket.ready()
            order.append(index)
            assert admission.waiting <= 4
            await asyncio.sleep(0)
        finally:
            ticket.leave()

    async with asyncio.timeout(5):
        await asyncio.gather(*(work(i) for i in range(5)))
    assert order == [0, 1, 2, 3, 4]


@pytest.mark.asyncio
async def test_leaving_the_queue_before_the_turn_frees_the_place_and_skips_the_turn():
    admission = Admission(max_waiting=1)
    running, waiting = admission.join(), admission.join()
    waiting.leave()  # the reader went away while queued
    assert admission.waiting == 0
    latecomer = admission.join()
    assert latecomer.position == 1
    running.leave()
    async with asyncio.timeout(5):
        await latecomer.ready()  # the slot went to the latecomer, not the one who left
    latecomer.leave()
    latecomer.leave()  # idempotent
    assert admission.join().position == 0
