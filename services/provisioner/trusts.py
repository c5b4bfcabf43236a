"""The trust reaper: deletes the Keystone trusts Cove no longer needs, crash-safely.

The API creates a trust per cluster (and a new one on every credential rotation); nothing else deletes them. The
provisioner's projection records, in the same transaction as the event, which trusts are done with
(``trusts_to_delete``: the cluster's trust on ``ClusterDeleteCompleted``, the replaced one on
``ClusterTrustRotated``). This worker deletes each with the Cove service user's own credentials
(``DELETE /v3/OS-TRUST/trusts/{id}``; 404 means already gone), retrying failures with a capped backoff, and then
publishes ``ClusterTrustDeleted``, whose projection removes the row. A crash anywhere in between leaves the row,
so the next start deletes (or finds gone) the trust and publishes the fact again (deduplicated by its id).

A replaced trust may still be held by a reconcile pass that loaded the cluster before the rotation was applied,
so it is deleted only once no pass holds it and ``rotation_grace`` seconds have passed since it was recorded.

The API hands one trust to the clusters a user creates in a burst (proto/trusts.py): a trust is deleted only when
no cluster in the store acts with it (``store.trusts_to_delete``) and ``hold`` seconds have passed since the newest
cluster created with it was requested, so that a create the API accepted with it, not yet applied here, finds it.

In N copies the reaper runs in one (the singleton lease ``provisioner.singleton.trust-reaper``, docs/adr/0011),
and its ``ClusterTrustDeleted`` is published fenced by that lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog

from proto import subjects
from proto.envelope import Envelope, new_envelope
from proto.events import ClusterTrustDeleted
from services.provisioner import store
from services.provisioner.cloud import Cloud, CloudError
from services.provisioner.tracking import PRODUCER, AppliedTracker, event_id
from services.runtime.bus import Bus, ConcurrencyConflict
from services.runtime.lease import Lease, Leases, publish_fenced

log = structlog.get_logger(__name__)

WAKING_EVENTS = frozenset({"ClusterDeleteCompleted", "ClusterTrustRotated"})
"""Events after which the projection may have recorded a trust to delete."""


@dataclass(frozen=True)
class TrustReaperSettings:
    rotation_grace: float = 5.0
    """Seconds a replaced trust is kept after the rotation was applied (a pass may have loaded it just before)."""
    hold: float = 0.0
    """Seconds a trust is kept after the newest cluster created with it was requested (``proto.trusts``)."""
    scan_interval: float = 5.0
    """Seconds between scans of the table when nothing woke the reaper."""
    retry_base: float = 0.5
    retry_cap: float = 60.0
    concurrency: int = 4


def retry_delay(failures: int, *, base: float = 0.5, cap: float = 60.0) -> float:
    """Backoff after ``failures`` failed attempts in a row (1, 2, ...): base * 2^(failures-1), at most ``cap``."""
    return min(base * 2 ** max(failures - 1, 0), cap)


def due(
    pending: Iterable[store.PendingTrust],
    *,
    now: datetime,
    in_use: Callable[[str], bool],
    not_before: dict[str, float],
    monotonic: float,
    rotation_grace: float,
    hold: float = 0.0,
) -> list[store.PendingTrust]:
    """The pending trusts to delete now: not held by a reconcile pass, past their retry time, past the hold since
    a cluster was last created with them, and (replaced trusts) past the rotation grace."""
    out = []
    for p in pending:
        if in_use(p.trust_id) or not_before.get(p.trust_id, 0.0) > monotonic:
            continue
        if p.reason == "rotated" and now - p.recorded_at < timedelta(seconds=rotation_grace):
            continue
        if hold_left(p, now=now, hold=hold) > 0:
            continue
        out.append(p)
    return out


def hold_left(p: store.PendingTrust, *, now: datetime, hold: float) -> float:
    """Seconds until the API can no longer hand ``p``'s trust to a new cluster (0: it cannot now)."""
    if hold <= 0 or p.handed_out_at is None:
        return 0.0
    return max(0.0, hold - (now - p.handed_out_at).total_seconds())


@dataclass
class TrustReaper:
    pool: asyncpg.Pool
    bus: Bus
    cloud: Cloud
    tracker: AppliedTracker
    in_use: Callable[[str], bool]
    """Whether a reconcile pass holds the trust (``Reconciler.trust_in_use``)."""
    settings: TrustReaperSettings = TrustReaperSettings()
    catch_up_timeout: float = 15.0
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _failures: dict[str, int] = field(default_factory=dict)
    _not_before: dict[str, float] = field(default_factory=dict)
    deleted: int = 0
    """Trusts this process deleted or found gone (and published ClusterTrustDeleted for)."""
    leases: Leases | None = None
    lease: Lease | None = None
    """The singleton lease the reaper runs under (set by whoever starts it): its publishes are fenced by it."""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="trust-reaper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def on_applied(self, env: Envelope) -> None:
        """Projection callback: wake up when an event may have recorded a trust to delete."""
        if env.type in WAKING_EVENTS:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            wait = self.settings.scan_interval
            try:
                wait = min(wait, await self.reap_once())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the reaper survives NATS/DB hiccups
                log.warning("trust_reaper_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.05))

    async def reap_once(self) -> float:
        """One pass over the table. Returns the seconds until something pending may become due."""
        pending = await store.trusts_to_delete(self.pool)
        live = {p.trust_id for p in pending}
        for gone in [t for t in self._not_before if t not in live]:
            self._not_before.pop(gone, None)
            self._failures.pop(gone, None)
        mono, now = time.monotonic(), datetime.now(UTC)
        ready = due(pending, now=now, in_use=self.in_use, not_before=self._not_before,
                    monotonic=mono, rotation_grace=self.settings.rotation_grace, hold=self.settings.hold)
        sem = asyncio.Semaphore(self.settings.concurrency)

        async def one(p: store.PendingTrust) -> None:
            async with sem:
                await self._reap(p)

        await asyncio.gather(*(one(p) for p in ready))
        waiting = [p for p in pending if p not in ready]
        if not waiting:
            return self.settings.scan_interval
        # Something is held, in its grace or backing off: look again soon (at most scan_interval); what only waits
        # out the hold is looked at again when its hold ends.
        holds = [hold_left(p, now=now, hold=self.settings.hold) for p in waiting]
        others = [p for p, left in zip(waiting, holds, strict=True) if left <= 0]
        if not others:
            return max(min(min(holds), self.settings.scan_interval), 0.1)
        soonest = min(self._not_before.get(p.trust_id, mono) - mono for p in others)
        return max(min(soonest, 0.5), 0.1)

    async def _reap(self, p: store.PendingTrust) -> None:
        try:
            deleted = await self.cloud.delete_trust(p.trust_id)
        except CloudError as err:
            failures = self._failures.get(p.trust_id, 0) + 1
            self._failures[p.trust_id] = failures
            delay = retry_delay(failures, base=self.settings.retry_base, cap=self.settings.retry_cap)
            self._not_before[p.trust_id] = time.monotonic() + delay
            # Never dropped: a trust left behind is a standing delegation of the user's roles.
            (log.error if err.permanent else log.warning)(
                "trust_delete_failed", trust_id=p.trust_id, cluster_id=p.cluster_id, reason=err.reason,
                permanent=err.permanent, failures=failures, retry_in=delay,
            )
            return
        log.info("trust_deleted", trust_id=p.trust_id, cluster_id=p.cluster_id, reason=p.reason,
                 already_gone=not deleted)
        try:
            await self._publish(p, already_gone=not deleted)
        except ConcurrencyConflict:
            # The reconciler wrote to the cluster's subject meanwhile: try again once the store caught up.
            self._not_before[p.trust_id] = time.monotonic() + 0.2
            return
        self._failures.pop(p.trust_id, None)
        self._not_before.pop(p.trust_id, None)
        self.deleted += 1

    async def _publish(self, p: store.PendingTrust, *, already_gone: bool) -> None:
        """``ClusterTrustDeleted`` on the cluster's provisioner subject, conditional on the subject's last sequence
        (the provisioner stays the single, ordered writer of it) and with a deterministic id."""
        payload = ClusterTrustDeleted(
            uuid=p.cluster_id, project_id=p.project_id or "", trust_id=p.trust_id,
            reason="rotated" if p.reason == "rotated" else "cluster_deleted", already_gone=already_gone,
        )
        env_id = event_id(p.cluster_id, f"ClusterTrustDeleted:{p.trust_id}")
        env = new_envelope(payload, project_id=p.project_id, cluster_id=p.cluster_id, id=env_id)
        expected = await store.last_seq(self.pool, p.cluster_id)
        subject = subjects.cluster_events(PRODUCER, p.cluster_id)
        if self.leases is not None and self.lease is not None:
            ack = await publish_fenced(self.bus, self.leases, self.lease, subject, env, msg_id=env_id,
                                       expected_last_subject_seq=expected)
        else:
            ack = await self.bus.publish(subject, env, msg_id=env_id, expected_last_subject_seq=expected)
        await self.tracker.wait(ack.seq, self.catch_up_timeout)
