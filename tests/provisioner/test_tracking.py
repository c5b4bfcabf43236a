"""``AppliedTracker``: cluster tasks wait until the projection applied a sequence; hundreds wait at once, most with
short timeouts, while the projection advances (services/provisioner/tracking.py)."""

from __future__ import annotations

import asyncio
import random

import pytest

from services.provisioner.tracking import AppliedTracker


async def test_a_wait_ends_when_its_sequence_is_applied_and_not_before() -> None:
    t = AppliedTracker(5)
    await t.wait(5, 0.01)  # already applied: at once
    waiter = asyncio.create_task(t.wait(8, 5.0))
    await t.advance(7)
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await t.advance(9)
    await asyncio.wait_for(waiter, 1.0)
    assert t.waiting == 0


async def test_a_timed_out_or_cancelled_wait_leaves_nothing_behind() -> None:
    t = AppliedTracker()
    with pytest.raises(TimeoutError):
        await t.wait(1, 0.01)
    waiter = asyncio.create_task(t.wait(1, 5.0))
    await asyncio.sleep(0)
    assert t.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert t.waiting == 0
    await t.advance(1)
    assert t.seq == 1
    await t.advance(0)  # never goes back
    assert t.seq == 1


async def test_hundreds_of_tasks_with_short_timeouts_never_stall_the_advance_or_each_other() -> None:
    """As the provisioner's tasks do: 300 loops each waiting for the next sequence with 0.01-0.1 s timeouts (timing
    out, cancelled now and then) while the projection advances; every loop sees every sequence it needs, and no
    advance waits. (make chaos once hung so: a provisioner copy's every handler ran into its deadline after its
    commit, and its cluster tasks stopped.)"""
    t = AppliedTracker()
    rng = random.Random(7)
    last = 200
    reached: list[int] = []

    async def task(i: int) -> None:
        wanted = 1
        while wanted <= last:
            try:
                await t.wait(wanted, rng.choice([0.01, 0.05, 0.1]))
                wanted = t.seq + 1
            except TimeoutError:
                continue
        reached.append(i)

    tasks = [asyncio.create_task(task(i)) for i in range(300)]
    victims = tasks[:20]
    for seq in range(1, last + 1):
        # bounded: with an asyncio.Condition (the tracker before), the lock stayed taken after a few hundred
        # cancelled waits and this advance, like the projection's after each commit, waited for ever
        await asyncio.wait_for(t.advance(seq), 2.0)
        if seq % 10 == 0 and victims:
            victims.pop().cancel()
        await asyncio.sleep(0.002)
    _, pending = await asyncio.wait(tasks, timeout=10)
    assert not pending
    assert len(reached) >= 280 and t.waiting == 0
