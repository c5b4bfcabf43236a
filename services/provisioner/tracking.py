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
    """The highest stream sequence the provisioner's projection has applied; tasks wait on it."""

    def __init__(self, seq: int = 0) -> None:
        self.seq = seq
        self._cond = asyncio.Condition()

    async def advance(self, seq: int) -> None:
        async with self._cond:
            if seq > self.seq:
                self.seq = seq
                self._cond.notify_all()

    async def wait(self, seq: int, timeout: float) -> None:
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(lambda: self.seq >= seq), timeout)
