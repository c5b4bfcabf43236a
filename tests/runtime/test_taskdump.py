"""``kill -USR1`` of a service logs where every asyncio task awaits (services/runtime/taskdump.py)."""

from __future__ import annotations

import asyncio
import os
import signal

from structlog.testing import capture_logs

from services.runtime.taskdump import dump_tasks


async def parked(event: asyncio.Event) -> None:
    await event.wait()


async def test_every_task_is_logged_with_where_it_awaits() -> None:
    event = asyncio.Event()
    task = asyncio.create_task(parked(event), name="reconcile:c-1")
    await asyncio.sleep(0)
    try:
        with capture_logs() as logs:
            assert dump_tasks() >= 2  # this test's task and the parked one
        stacks = [(e["task"], e["stack"]) for e in logs if e["event"] == "task_stack"]
        ours = [stack for name, stack in stacks if name == "reconcile:c-1"]
        assert len(ours) == 1 and "in parked" in ours[0] and "event.wait()" in ours[0]
        # one line per task (other tests' leftover tasks in this process may share a name)
        assert [e["count"] for e in logs if e["event"] == "tasks_dumped"] == [len(stacks)]
    finally:
        event.set()
        await task


async def test_sigusr1_dumps_the_tasks_of_the_running_loop() -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    try:
        with capture_logs() as logs:
            os.kill(os.getpid(), signal.SIGUSR1)
            for _ in range(50):
                await asyncio.sleep(0.01)
                if any(e["event"] == "tasks_dumped" for e in logs):
                    break
        assert any(e["event"] == "tasks_dumped" for e in logs)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
