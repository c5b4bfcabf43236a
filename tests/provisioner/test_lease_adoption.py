"""Adoption of the clusters whose lease nobody holds (``Reconciler.adopt``, docs/adr/0011), against real NATS
(the key-value bucket of the leases) and real PostgreSQL (the provisioner's store): an orphan left by every copy's
fair share is taken by the next pass that still finds it, whatever the share. Without that, the shares add up to the
work only while every copy's adopter runs, and a copy whose adoption stalls strands what the others' shares do not
cover (issue 16: with 2 copies, the last 2 of 20 clusters, share 1 each, one of them left CREATE_IN_PROGRESS)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from nats.js.api import KeyValueConfig, StorageType

from services.provisioner.loop import COPY_PREFIX, Reconciler, lease_key
from services.provisioner.service import MIGRATIONS, SCHEMA
from services.provisioner.tracking import AppliedTracker
from services.runtime import db
from services.runtime.bus import Bus
from services.runtime.lease import Leases
from tests.conftest import drop_database, fresh_database

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(pg_admin_url: str) -> AsyncIterator[asyncpg.Pool]:
    url = await fresh_database(pg_admin_url)
    p = await db.create_pool(url, SCHEMA)
    await db.migrate(p, SCHEMA, MIGRATIONS)
    try:
        yield p
    finally:
        await p.close()
        await drop_database(pg_admin_url, url)


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_url, name="test-lease-adoption")
    yield b
    await b.close()


async def leases_of(bus: Bus, bucket: str, holder: str) -> Leases:
    """A copy's leases in a bucket of the test's own (the keys are the provisioner's; values live 60 s: the test
    adopts by hand, with no renewals running)."""
    return await Leases.open(bus.js, holder=holder, config=KeyValueConfig(
        bucket=bucket, history=1, ttl=60.0, storage=StorageType.MEMORY, direct=True))


async def creating(pool: asyncpg.Pool, n: int) -> list[str]:
    """``n`` clusters with work left (CREATE_IN_PROGRESS), oldest first."""
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for i, cid in enumerate(ids):
        await pool.execute(
            "INSERT INTO clusters (uuid, project_id, name, spec, ca_cert_pem, status, updated_at)"
            " VALUES ($1, 'p', $2, '{}'::jsonb, 'ca', 'CREATE_IN_PROGRESS', now() - make_interval(secs => $3))",
            cid, f"c{i}", float(n - i))
    return ids


async def test_an_orphan_no_copys_share_covers_is_taken_by_the_next_pass_that_finds_it(
        pool: asyncpg.Pool, bus: Bus) -> None:
    bucket = f"TEST_ADOPT_{uuid.uuid4().hex[:8].upper()}"
    a = await leases_of(bus, bucket, "copy-a")
    b = await leases_of(bus, bucket, "copy-b")
    assert await b.acquire(f"{COPY_PREFIX}copy-b") is not None  # copy b is alive: the work is divided by 2
    held, orphan = await creating(pool, 2)
    r = Reconciler(pool=pool, bus=bus, cloud=None, tracker=AppliedTracker(), leases=a)  # type: ignore[arg-type]
    started: list[str] = []
    r.ensure = lambda cluster_id, *, forwarded=False: started.append(cluster_id)  # type: ignore[method-assign]
    running: asyncio.Task[Any] = asyncio.create_task(asyncio.sleep(3600))
    r._tasks[held] = running  # copy a reconciles one of the two: its share (one of two clusters over two copies)
    try:
        # the first pass that finds the orphan leaves it to copy b, whose share has room for it
        assert await r.adopt() == 0 and started == []
        assert set((await a.live(COPY_PREFIX)).values()) == {"copy-a", "copy-b"}
        assert lease_key(orphan) not in await a.live("provisioner.cluster.")
        # copy b's adopter did not take it (stalled, or dead without its copy lease having expired yet): the next
        # pass takes it whatever the share
        assert await r.adopt() == 1 and started == [orphan]
    finally:
        await r.stop()
        await bus.js.delete_key_value(bucket)
