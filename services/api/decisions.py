"""The scheduler's admission decisions, heard the moment the events stream stores them.

The events stream re-announces each decision once stored (proto/streams.py, JetStream RePublish, headers only) on
``cove.stored.scheduler.cluster.<uuid>``. One ``StoredDecisions`` per API process subscribes to them all and
resolves the cluster creates waiting for theirs, so a create answers without waiting for its own projection to
apply the decision too (a stored decision is the fact: the scheduler's store and the API's projection both follow
it). The create then waits only for its OWN event to be applied (read-your-writes), which the projection has
usually done while the scheduler was deciding.

Core NATS does not keep what a subscriber missed (a reconnection): a create that hears nothing here still learns
its decision from the projection's NOTIFY (services/api/freshness.py) or, after that, from its row.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from proto import subjects
from services.runtime.bus import EVENT_TYPE, Bus

log = structlog.get_logger(__name__)

VERDICTS = {
    "ClusterAdmitted": "admitted",
    "ClusterQueued": "queued",
    "ClusterRejected": "rejected",
    "ClusterUpdateAdmitted": "admitted",
    "ClusterUpdateRejected": "rejected",
    "NodeGroupCreateAdmitted": "admitted",
}
"""Event type of a decision -> the verdict a create (or a decided resize) answers with. ``queued`` is accepted: the
quota is reserved and the cluster waits for a build slot (docs/adr/0008), so the create answers 202."""

STREAM_SEQUENCE = "Nats-Sequence"
"""Header of a re-announced message: the stream sequence the event was stored at."""


@dataclass(frozen=True)
class Decision:
    verdict: str
    """``admitted`` or ``rejected``."""
    seq: int
    """The stream sequence from which the read model shows the decision (a rejection's reason): the decision's own
    when heard here, 0 when it was learned from the read model itself."""


@dataclass
class StoredDecisions:
    bus: Bus
    wakeups: int = 0
    """Creates this process answered from a stored decision (woken while still waiting)."""
    _waiting: dict[str, list[asyncio.Future[Decision]]] = field(default_factory=dict)
    _sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.bus.nc.subscribe(subjects.stored_decisions(), cb=self._on_stored)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
                await sub.unsubscribe()

    def waiter(self, cluster_uuid: str) -> asyncio.Future[Decision] | None:
        """A future resolved when the decision on ``cluster_uuid`` is stored (None when not subscribed). Register
        it BEFORE the decision can be taken (before publishing the create); ``forget`` it in any case."""
        if self._sub is None:
            return None
        fut: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(cluster_uuid, []).append(fut)
        return fut

    def forget(self, cluster_uuid: str, fut: asyncio.Future[Decision]) -> None:
        waiting = self._waiting.get(cluster_uuid)
        if waiting is not None and fut in waiting:
            waiting.remove(fut)
            if not waiting:
                del self._waiting[cluster_uuid]

    async def _on_stored(self, msg: Msg) -> None:
        cluster_uuid = msg.subject.rpartition(".")[2]
        if cluster_uuid not in self._waiting:
            return  # another API process's create, or one that stopped waiting
        headers = msg.headers or {}
        verdict = VERDICTS.get(headers.get(EVENT_TYPE, ""))
        raw_seq = headers.get(STREAM_SEQUENCE, "")
        if verdict is None or not raw_seq.isdigit():
            log.warning("stored_decision_unreadable", subject=msg.subject, event_type=headers.get(EVENT_TYPE))
            return
        decided = Decision(verdict, int(raw_seq))
        for fut in self._waiting.pop(cluster_uuid):
            if not fut.done():
                fut.set_result(decided)
                self.wakeups += 1
