"""A live store built by a service's real projection from the stream, and a snapshot of it to compare with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import asyncpg

from proto import subjects
from services.api import projection as api_projection
from services.api.service import MIGRATIONS as API_MIGRATIONS
from services.runtime import db
from services.runtime.bus import Bus
from services.runtime.projection import InboxPruning, Projection
from tests.conftest import wait_for

TRACKING = ("inbox", "checkpoint", "schema_migrations")


@dataclass
class LiveStore:
    projection: Projection
    pool: asyncpg.Pool

    async def applied(self, seq: int) -> bool:
        return await self.projection.checkpoint() >= seq

    async def wait_applied(self, seq: int, timeout: float = 300.0) -> None:
        await wait_for(lambda: self.applied(seq), timeout=timeout, interval=0.2,
                       message=f"the live store applied the stream up to {seq}")

    async def stop(self) -> None:
        await self.projection.stop()
        await self.pool.close()


async def live_api_store(
    bus: Bus, database_url: str, migrations: Path = API_MIGRATIONS, *, schema: str = "api"
) -> LiveStore:
    """The API's read model, built as the API service builds it (its projection, handlers and batch handler); with
    another ``schema``, a second copy with a durable consumer of that name."""
    pool = await db.create_pool(database_url, schema)
    await db.migrate(pool, schema, migrations)
    proj = Projection(
        name=schema, schema=schema, pool=pool, bus=bus, handler=api_projection.handle,
        batch_handler=api_projection.handle_batch, filter_subjects=[subjects.EVENTS_ALL],
        migrations_dir=migrations, inbox_pruning=InboxPruning(interval=None),
    )
    await proj.start()
    return LiveStore(proj, pool)


async def snapshot(database_url: str, schema: str) -> dict[str, list[str]]:
    """Every row of every table of ``schema`` but the tracking tables, as sorted JSON text, per table."""
    conn = await asyncpg.connect(database_url)
    try:
        tables = [r[0] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1", schema)]
        return {
            t: sorted(r[0] for r in await conn.fetch(f"SELECT to_jsonb(x)::text FROM {schema}.{t} x"))
            for t in tables if t not in TRACKING
        }
    finally:
        await conn.close()


async def table_oid(database_url: str, name: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT $1::regclass::oid", name))
    finally:
        await conn.close()
