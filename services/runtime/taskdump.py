"""``kill -USR1 <pid>`` of a running service: the stack of every asyncio task, to the log.

A service that stops making progress without an error (a task awaiting something that never comes) shows nothing a
thread dump (py-spy) can see: the event loop is idle. This handler logs each task's name and where it awaits
(``task_stack``, newest frames last), then ``tasks_dumped`` with their number. ``Service.run_until_stopped``
installs it; it changes nothing in the running service."""

from __future__ import annotations

import asyncio
import io

import structlog

log = structlog.get_logger(__name__)

STACK_FRAMES = 12
STACK_CHARS = 4000


def dump_tasks() -> int:
    """Log every task of the running loop with its stack; returns how many."""
    tasks = sorted(asyncio.all_tasks(), key=lambda t: t.get_name())
    for task in tasks:
        buf = io.StringIO()
        task.print_stack(limit=STACK_FRAMES, file=buf)
        log.warning("task_stack", task=task.get_name(), stack=buf.getvalue()[-STACK_CHARS:])
    log.warning("tasks_dumped", count=len(tasks))
    return len(tasks)
