"""Shared helpers of the scheduler, certs and accounting integration tests (real NATS + PostgreSQL).

Each test gets a PRIVATE nats-server (a clean event stream) and its own schema in the session's database, and
runs the real service (``services.<name>.service.build_service``) in-process with its health server on port 0.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import asyncpg

from proto.envelope import Envelope, new_envelope
from proto.events import Event
from services.runtime import db
from services.runtime.bus import Bus
from services.runtime.projection import Projection
from services.runtime.service import Service, ServiceConfig
from tests.conftest import stream_events


class Harness:
    """A running service plus a publisher on the same private NATS server."""

    def __init__(self, svc: Service, bus: Bus, schema: str) -> None:
        self.svc, self.bus, self.schema = svc, bus, schema

    @property
    def pool(self) -> asyncpg.Pool:
        assert self.svc.pool is not None
        return self.svc.pool

    @property
    def projection(self) -> Projection:
        return self.svc.projections[0]

    async def publish(
        self, subject: str, payload: Event, *, project_id: str, cluster_id: str
    ) -> tuple[Envelope, int]:
        env = new_envelope(payload, project_id=project_id, cluster_id=cluster_id)
        ack = await self.bus.publish(subject, env)
        return env, ack.seq

    async def applied(self, seq: int) -> bool:
        return await self.projection.checkpoint() >= seq

    async def events(self, subject_filter: str) -> list[Envelope]:
        """Every event on ``subject_filter`` in the stream, in stream order."""
        return await stream_events(self.bus, subject_filter)

    async def last_seq(self) -> int:
        info = await self.bus.js.stream_info("COVE_EVENTS")
        return int(info.state.last_seq)

    async def rows(self, table: str, order_by: str) -> list[tuple[Any, ...]]:
        async with self.pool.acquire() as conn:
            recs = await conn.fetch(
                f"SELECT * FROM {db.ident(self.schema)}.{db.ident(table)} ORDER BY {order_by}"
            )
        return [tuple(r.values()) for r in recs]


async def start_harness(
    build: Callable[..., Service],
    name: str,
    nats_url: str,
    database_url: str,
    extra: dict[str, str] | None = None,
) -> Harness:
    schema = f"{name}_{uuid.uuid4().hex[:8]}"
    config = ServiceConfig(
        service=name, nats_url=nats_url, database_url=database_url, http_port=0, extra=dict(extra or {})
    )
    svc = build(config, schema=schema, durable=name)
    await svc.start()
    bus = await Bus.connect(nats_url, name=f"test-{name}")
    return Harness(svc, bus, schema)


async def stop_harness(h: Harness) -> None:
    await h.bus.close()
    pool = h.svc.pool
    await h.svc.stop()
    if pool is not None:
        # stop() closed the service's pool: drop the test schema through a fresh connection
        conn = await asyncpg.connect(h.svc.config.database_url)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {db.ident(h.schema)} CASCADE")
        finally:
            await conn.close()
