"""The provisioner store's migrations keep what an older store held."""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


async def test_migration_0012_keeps_when_each_trust_was_last_handed_out(database_url: str, tmp_path: Path) -> None:
    """A store made before 0012 kept the trust a cluster was created with, and when, only in its stored request:
    0012 copies both into their columns, which ``trusts_to_delete`` reads (``handed_out_at``)."""
    from services.provisioner import store
    from services.provisioner.service import MIGRATIONS
    from services.runtime import db

    schema = f"prov_mig_{uuid.uuid4().hex[:6]}"
    old = tmp_path / "migrations"
    old.mkdir()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        if path.name < "0012":
            shutil.copy(path, old / path.name)
    pool = await db.create_pool(database_url, schema)
    try:
        await db.migrate(pool, schema, old)
        async with pool.acquire() as conn:
            for cluster, requested in (("c1", "2026-01-01T10:00:00+00:00"), ("c2", "2026-01-02T10:00:00+00:00")):
                await conn.execute(
                    "INSERT INTO clusters (uuid, project_id, spec, trust_id) VALUES ($1, 'p1', $2::jsonb, 'rotated')",
                    cluster, json.dumps({"uuid": cluster, "trust_id": "t1", "requested_at": requested}))
            await conn.execute("INSERT INTO trusts_to_delete (trust_id, cluster_id, project_id, reason)"
                               " VALUES ('t1', 'c1', 'p1', 'rotated')")
        assert await db.migrate(pool, schema, MIGRATIONS) == ["0012_requested_trust.sql"]
        async with pool.acquire() as conn:
            (pending,) = await store.trusts_to_delete(conn)
        assert pending.trust_id == "t1"
        assert pending.handed_out_at == datetime(2026, 1, 2, 10, tzinfo=UTC)
    finally:
        async with pool.acquire() as conn:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await pool.close()
