"""``cove events``: read the event stream as an operator: a cluster's whole history, or live events, filtered.

Both read ``COVE_EVENTS`` through an ordered push consumer (nothing durable is left behind), filtered by subject on
the server where the subject can say it (a cluster's events: ``cove.evt.*.cluster.<uuid>``) and by envelope fields
here (project, type).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from proto import subjects
from proto.envelope import Envelope, MalformedMessage, decode
from services.ops.connect import OpsError, nothing_to_read
from services.runtime.bus import Bus

COLUMNS = ("seq", "time", "type", "producer", "project", "cluster", "user", "correlation_id", "causation_id",
           "event_id")


@dataclass(frozen=True)
class Row:
    seq: int
    env: Envelope
    subject: str

    @property
    def producer(self) -> str:
        parts = self.subject.split(".")
        return parts[2] if len(parts) > 2 else ""

    @property
    def user(self) -> str:
        """Who caused it, as far as the event says: the user who asked, else the service that decided."""
        p = self.env.payload
        for field in ("user_name", "user_id", "by"):
            value = getattr(p, field, None)
            if value:
                return str(value)
        return f"({self.producer})"

    def values(self, *, payload: bool = False) -> tuple[Any, ...]:
        env = self.env
        out: tuple[Any, ...] = (
            self.seq, env.occurred_at.isoformat(), env.type, self.producer, env.project_id or "",
            env.cluster_id or "", self.user, env.correlation_id, env.causation_id or "", env.id,
        )
        if payload:
            out += (msgspec.to_builtins(env.payload),)
        return out


def since_to_config(since: str | None) -> ConsumerConfig:
    """``--since``: a stream sequence, or an ISO 8601 time; None: from now on (only new events)."""
    if since is None:
        return ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
    if since.isdigit():
        seq = int(since)
        if seq <= 1:
            return ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=seq)
    try:
        at = datetime.fromisoformat(since)
    except ValueError as exc:
        raise OpsError(f"--since {since!r}: neither a stream sequence nor an ISO 8601 time") from exc
    if at.tzinfo is None:
        raise OpsError(f"--since {since!r}: give the time zone (e.g. {since}Z or {since}+00:00)")
    if at > datetime.now(UTC):
        # Nothing stored is after it (and the server's clock counts nanoseconds in 64 bits: year 2262 wraps).
        return ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
    return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=at)


@dataclass(frozen=True)
class Filter:
    project: str | None = None
    cluster: str | None = None
    types: frozenset[str] = frozenset()

    @property
    def subject(self) -> str:
        return subjects.any_cluster_events(self.cluster) if self.cluster else subjects.EVENTS_ALL

    def accepts(self, env: Envelope) -> bool:
        if self.project is not None and env.project_id != self.project:
            return False
        if self.cluster is not None and env.cluster_id != self.cluster:
            return False
        return not self.types or env.type in self.types


async def read(
    bus: Bus, flt: Filter, config: ConsumerConfig, *, follow: bool, idle: float = 1.0
) -> AsyncIterator[Row]:
    """The events ``flt`` accepts, in stream order, from where ``config`` says; with ``follow`` forever, else until
    the end of the stream as it was (a stream with nothing for the filter ends at once)."""
    queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=10_000)

    async def on_msg(msg: Msg) -> None:
        await queue.put(msg)

    try:
        sub = await bus.js.subscribe(
            flt.subject, stream=subjects.EVENTS_STREAM, config=config, ordered_consumer=True, cb=on_msg,
            idle_heartbeat=2.0,
        )
    except nats.js.errors.NotFoundError as exc:
        raise OpsError(f"no stream {subjects.EVENTS_STREAM} on this NATS server: has Cove run here?") from exc
    try:
        if not follow and nothing_to_read(await sub.consumer_info(), not queue.empty()):
            return
        while True:
            try:
                msg = await asyncio.wait_for(queue.get(), None if follow else idle * 10)
            except TimeoutError:
                if (await sub.consumer_info()).num_pending == 0:
                    return
                continue
            md = msg.metadata
            with contextlib.suppress(MalformedMessage):
                env = decode(msg.data)
                if flt.accepts(env):
                    yield Row(md.sequence.stream, env, msg.subject)
            if not follow and md.num_pending == 0:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def history(bus: Bus, cluster: str) -> list[Row]:
    """Every event about ``cluster``, in stream order."""
    try:
        subjects.any_cluster_events(cluster)
    except ValueError as exc:
        raise OpsError(f"not a cluster id: {cluster!r}") from exc
    return [row async for row in read(bus, Filter(cluster=cluster), ConsumerConfig(), follow=False)]

