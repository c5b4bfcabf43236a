"""``cove services`` and ``cove consumers prune``: what runs, how far behind it is, and what was left behind.

Services are known by their heartbeats (the last ``ServiceHeartbeat`` per service in ``COVE_HEARTBEATS``, which
forgets a service that stopped beating a minute ago) and by their durable consumers on ``COVE_EVENTS`` (lag: the
messages not yet delivered, and those delivered but not acknowledged).

Each durable consumer ``<c>`` has a companion ``<c>_dropped`` on ``COVE_ADVISORIES`` through which it hears of the
messages the server gave up on (services/runtime/consumer.py). Deleting ``<c>`` (a service renamed its consumer,
a test or a replica set went away) leaves the companion behind, collecting advisories for no one: those are the
orphans ``prune`` deletes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import nats.js.errors
from nats.js.api import ConsumerInfo

from proto import subjects
from proto.envelope import MalformedMessage, decode
from proto.events import ServiceHeartbeat
from services.runtime.bus import Bus

DROPPED_SUFFIX = "_dropped"
SERVICE_COLUMNS = ("service", "consumer", "state", "host", "pid", "version", "last_heartbeat_s", "started_at",
                   "pending", "ack_pending", "redelivered")


@dataclass(frozen=True)
class ServiceRow:
    service: str
    consumer: str
    state: str
    host: str
    pid: int | None
    version: str
    age: float | None
    started_at: str
    pending: int | None
    ack_pending: int | None
    redelivered: int | None

    def values(self) -> tuple[object, ...]:
        return (self.service, self.consumer, self.state, self.host, self.pid if self.pid is not None else "",
                self.version, round(self.age, 1) if self.age is not None else "", self.started_at,
                _n(self.pending), _n(self.ack_pending), _n(self.redelivered))


def _n(value: int | None) -> object:
    return value if value is not None else ""


async def heartbeats(bus: Bus) -> dict[str, tuple[ServiceHeartbeat, datetime | None]]:
    """The last heartbeat of each service that beat in the last minute, with the time the stream stored it."""
    out: dict[str, tuple[ServiceHeartbeat, datetime | None]] = {}
    try:
        info = await bus.js.stream_info(subjects.HEARTBEATS_STREAM, subjects_filter=subjects.HEARTBEATS_ALL)
    except nats.js.errors.NotFoundError:
        return out
    for subject in sorted((info.state.subjects or {}).keys()):
        try:
            raw = await bus.js.get_last_msg(subjects.HEARTBEATS_STREAM, subject)
            env = decode(raw.data or b"")
        except (nats.js.errors.NotFoundError, MalformedMessage):
            continue
        if isinstance(env.payload, ServiceHeartbeat):
            out[env.payload.service] = (env.payload, raw.time or env.occurred_at)
    return out


async def consumers(bus: Bus, stream: str) -> list[ConsumerInfo]:
    try:
        return list(await bus.js.consumers_info(stream))
    except nats.js.errors.NotFoundError:
        return []


def _service_of(consumer: str, known: set[str]) -> str:
    for service in sorted(known, key=len, reverse=True):
        if consumer == service or consumer.startswith((service + "_", service + "-")):
            return service
    return ""


async def services(bus: Bus) -> list[ServiceRow]:
    """One row per durable consumer of ``COVE_EVENTS`` with the state of its service, and one per service with a
    heartbeat and no consumer."""
    beats = await heartbeats(bus)
    infos = await consumers(bus, subjects.EVENTS_STREAM)
    known = set(beats) | {"api", "scheduler", "certs", "provisioner", "accounting"}
    now = datetime.now(UTC)
    rows: list[ServiceRow] = []
    seen: set[str] = set()
    for info in sorted(infos, key=lambda i: i.name):
        if not (info.config and info.config.durable_name):
            continue  # ephemeral (someone's ``cove events tail``)
        service = _service_of(info.name, known)
        seen.add(service)
        rows.append(_row(service, info.name, beats.get(service), now, info))
    for service in sorted(set(beats) - seen):
        rows.append(_row(service, "", beats[service], now, None))
    return rows


def _row(
    service: str, consumer: str, beat: tuple[ServiceHeartbeat, datetime | None] | None, now: datetime,
    info: ConsumerInfo | None,
) -> ServiceRow:
    hb, at = beat if beat is not None else (None, None)
    return ServiceRow(
        service=service or "(unknown)",
        consumer=consumer,
        state=hb.state if hb is not None else "down",
        host=hb.host if hb is not None else "",
        pid=hb.pid if hb is not None else None,
        version=(hb.version or "") if hb is not None else "",
        age=(now - at).total_seconds() if at is not None else None,
        started_at=hb.started_at.isoformat() if hb is not None else "",
        pending=info.num_pending if info is not None else None,
        ack_pending=info.num_ack_pending if info is not None else None,
        redelivered=info.num_redelivered if info is not None else None,
    )


async def orphaned_dropped(bus: Bus) -> list[tuple[str, str, str]]:
    """``(companion, stream, consumer)`` for every ``<consumer>_dropped`` whose consumer no longer exists."""
    out: list[tuple[str, str, str]] = []
    prefix = subjects.MAX_DELIVERIES_PREFIX + "."
    for info in await consumers(bus, subjects.ADVISORIES_STREAM):
        if not info.name.endswith(DROPPED_SUFFIX):
            continue
        cfg = info.config
        filt = (cfg.filter_subject or "") if cfg else ""
        if filt.startswith(prefix) and filt.count(".") >= prefix.count(".") + 1:
            stream, _, consumer = filt[len(prefix):].partition(".")
        else:
            stream, consumer = subjects.EVENTS_STREAM, info.name[: -len(DROPPED_SUFFIX)]
        try:
            await bus.js.consumer_info(stream, consumer)
        except nats.js.errors.NotFoundError:
            out.append((info.name, stream, consumer))
    return out


async def prune(bus: Bus, *, dry_run: bool = False) -> list[tuple[str, str, str]]:
    orphans = await orphaned_dropped(bus)
    if not dry_run:
        for name, _stream, _consumer in orphans:
            try:
                await bus.js.delete_consumer(subjects.ADVISORIES_STREAM, name)
            except nats.js.errors.NotFoundError:
                pass
    return orphans
