"""The provisioner's own events: their producer name, their deterministic ids, and how far its projection applied.

The provisioner is the single writer of ``cove.evt.provisioner.cluster.<uuid>``. Its tasks publish, then wait
until the projection has applied what they published (``AppliedTracker``), so their next decision reads a store
that knows it.
"""

from __future__ import annotations

import asyncio
import uuid

EVENT_NAMESPACE = uuid.UUID("0c8f6a52-3a4e-4b7e-9f3e-6a2f1d0b7c44")
PRODUCER = "provisioner"


def event_id(cluster_id: str, key: str) -> str:
    """Deterministic envelope id (and Nats-Msg-Id) of the provisioner's event ``key`` about a cluster."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{cluster_id}:{key}"))


class AppliedTracker:
    """The highest stream sequence the provisioner's projection has applied; tasks wait on it.

    No lock: each waiter is a future with the sequence it waits for, resolved by the ``advance`` that reaches it (a
    few hundred cluster tasks wait at once, most for a tenth of a second at a time; with an ``asyncio.Condition``
    every advance woke all of them to take its lock in turn, and a timed-out wait took it again to leave)."""

    def __init__(self, seq: int = 0) -> None:
        self.seq = seq
        self._waiters: dict[asyncio.Future[None], int] = {}

    async def advance(self, seq: int) -> None:
        if seq <= self.seq:
            return
        self.seq = seq
        for fut, wanted in list(self._waiters.items()):
            if wanted <= seq:
                del self._waiters[fut]
                if not fut.done():
                    fut.set_result(None)

    async def wait(self, seq: int, timeout: float) -> None:
        """Return once ``seq`` is applied; ``TimeoutError`` after ``timeout`` seconds."""
        if self.seq >= seq:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[fut] = seq
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.pop(fut, None)

    @property
    def waiting(self) -> int:
        """Waits in progress."""
        return len(self._waiters)
