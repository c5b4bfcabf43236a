"""Writes accepted durably: publish the event, wait for JetStream's PubAck, then (bounded) for the API's own
projection to apply that stream sequence, so a GET right after the write finds it (read-your-writes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import nats.errors
import nats.js.errors
import structlog

from proto.envelope import new_envelope
from proto.events import Event
from services.api import store
from services.api.errors import ApiError
from services.api.freshness import Freshness
from services.runtime.bus import Bus, ConcurrencyConflict

log = structlog.get_logger(__name__)


@dataclass
class Writer:
    bus: Bus
    pool: asyncpg.Pool
    read_your_writes_timeout: float = 2.0
    poll_interval: float = 0.01
    freshness: Freshness | None = None
    """When listening (services/api/freshness.py), waits end at the commit's NOTIFY instead of by polling."""

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
        """True once the projection's checkpoint reaches ``seq`` (False after the bound)."""
        bound = self.read_your_writes_timeout if timeout is None else timeout
        if self.freshness is not None:
            done = await self.freshness.wait_applied(seq, bound)
            if done is not None:
                return done
        return await self.wait_until(lambda: self._applied(seq), bound)

    def watch_admission(self, cluster_uuid: str) -> AdmissionWatch:
        """Start listening for the scheduler's decision on ``cluster_uuid``: call BEFORE publishing its create,
        then ``decision()``, and ``close()`` in any case."""
        fut = self.freshness.admission_waiter(cluster_uuid) if self.freshness is not None else None
        return AdmissionWatch(self, cluster_uuid, fut)

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
    fut: asyncio.Future[str | None] | None
    """Resolved by the decision's NOTIFY (services/api/freshness.py); None when not listening."""

    async def decision(self, read: Callable[[], Awaitable[str | None]], timeout: float) -> str | None:
        """``admitted`` or ``rejected``, or None when still undecided after ``timeout``. Learned from the NOTIFY's
        payload when listening (no query); ``read`` (the row's admission) is polled when not listening, or once
        the listening connection was lost."""
        deadline = time.monotonic() + timeout
        if self.fut is not None:
            try:
                decided = await asyncio.wait_for(asyncio.shield(self.fut), timeout)
            except TimeoutError:
                return await read()
            if decided is not None:
                return decided
        seen: list[str | None] = [None]

        async def known() -> bool:
            seen[0] = await read()
            return seen[0] is not None

        await self.writer.wait_until(known, max(0.0, deadline - time.monotonic()))
        return seen[0]

    def close(self) -> None:
        if self.fut is not None and self.writer.freshness is not None:
            self.writer.freshness.forget_admission(self.cluster_uuid, self.fut)
