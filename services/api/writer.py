"""Writes accepted durably: publish the event, wait for JetStream's PubAck, then (bounded) for the API's own
projection to apply that stream sequence, so a GET right after the write finds it (read-your-writes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import nats.errors
import nats.js.errors
import structlog

from proto.envelope import new_envelope
from proto.events import Event
from services.api import store
from services.api.decisions import Decision, StoredDecisions
from services.api.errors import ApiError
from services.api.freshness import Freshness
from services.runtime.bus import Bus, ConcurrencyConflict

log = structlog.get_logger(__name__)


@dataclass
class Writer:
    bus: Bus
    pool: asyncpg.Pool
    read_your_writes_timeout: float = 10.0
    poll_interval: float = 0.01
    freshness: Freshness | None = None
    """When listening (services/api/freshness.py), waits end at the commit's NOTIFY instead of by polling."""
    decisions: StoredDecisions | None = None
    """When subscribed (services/api/decisions.py), a create hears its decision as soon as it is stored."""

    async def publish(
        self,
        subject: str,
        payload: Event,
        *,
        project_id: str | None,
        cluster_id: str | None,
        correlation_id: str | None = None,
        expected_last_subject_seq: int | None = None,
        quiet: bool = False,
    ) -> int:
        """Publish and return the stream sequence; 503 when JetStream does not acknowledge. ``quiet``: the caller
        logs the accepted write itself (with the sequence), so this line is only a debug one."""
        env = new_envelope(payload, project_id=project_id, cluster_id=cluster_id, correlation_id=correlation_id)
        try:
            ack = await self.bus.publish(subject, env, expected_last_subject_seq=expected_last_subject_seq)
        except ConcurrencyConflict as exc:
            raise ApiError(409, f"The resource was changed concurrently ({exc.subject}); try again.") from exc
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            log.error("publish_failed", subject=subject, error=repr(exc))
            raise ApiError(503, "The request could not be stored; try again later.") from exc
        (log.debug if quiet else log.info)("event_accepted", subject=subject, type=env.type, seq=ack.seq,
                                            event_id=env.id)
        return int(ack.seq)

    async def wait_applied(self, seq: int, timeout: float | None = None) -> bool:
        """True once the projection's checkpoint reaches ``seq`` (False after the bound, logged: the write is then
        answered before a read shows it)."""
        bound = self.read_your_writes_timeout if timeout is None else timeout
        done = await self.freshness.wait_applied(seq, bound) if self.freshness is not None else None
        if done is None:
            done = await self.wait_until(lambda: self._applied(seq), bound)
        if not done:
            log.warning("read_your_writes_late", seq=seq, waited_seconds=bound)
        return done

    def watch_admission(self, cluster_uuid: str) -> AdmissionWatch:
        """Start listening for the scheduler's decision on ``cluster_uuid``: call BEFORE publishing its create,
        then ``decision()``, and ``close()`` in any case."""
        applied = self.freshness.admission_waiter(cluster_uuid) if self.freshness is not None else None
        stored = self.decisions.waiter(cluster_uuid) if self.decisions is not None else None
        return AdmissionWatch(self, cluster_uuid, applied, stored)

    async def _applied(self, seq: int) -> bool:
        return await store.checkpoint(self.pool) >= seq

    async def wait_until(self, predicate: Callable[[], Awaitable[bool]], timeout: float | None = None) -> bool:
        deadline = time.monotonic() + (self.read_your_writes_timeout if timeout is None else timeout)
        interval = self.poll_interval
        while True:
            if await predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, 0.1)


@dataclass
class AdmissionWatch:
    """One create's wait for the scheduler's decision (``Writer.watch_admission``)."""

    writer: Writer
    cluster_uuid: str
    applied: asyncio.Future[str | None] | None
    """Resolved by the NOTIFY of the projection applying the decision (services/api/freshness.py); None when not
    listening."""
    stored: asyncio.Future[Decision] | None
    """Resolved when the events stream stored the decision (services/api/decisions.py), usually well before the
    projection applies it; None when not subscribed."""

    async def decision(self, read: Callable[[], Awaitable[str | None]], timeout: float) -> Decision | None:
        """The decision, or None when still undecided after ``timeout``: from whichever of ``stored`` and
        ``applied`` comes first (no query); ``read`` (the row's admission) is polled when neither can come (not
        listening, or the listening connection was lost while the decision was not heard of)."""
        deadline = time.monotonic() + timeout
        pending: set[asyncio.Future[Any]] = {f for f in (self.stored, self.applied) if f is not None}
        while pending:
            done, pending = await asyncio.wait(
                pending, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                verdict = await read()
                return Decision(verdict, 0) if verdict is not None else None
            if self.stored in done:
                return self.stored.result()
            assert self.applied is not None
            verdict = self.applied.result()
            if verdict is not None:
                return Decision(verdict, 0)
        seen: list[str | None] = [None]

        async def known() -> bool:
            seen[0] = await read()
            return seen[0] is not None

        await self.writer.wait_until(known, max(0.0, deadline - time.monotonic()))
        return Decision(seen[0], 0) if seen[0] is not None else None

    def close(self) -> None:
        if self.applied is not None and self.writer.freshness is not None:
            self.writer.freshness.forget_admission(self.cluster_uuid, self.applied)
        if self.stored is not None and self.writer.decisions is not None:
            self.writer.decisions.forget(self.cluster_uuid, self.stored)
