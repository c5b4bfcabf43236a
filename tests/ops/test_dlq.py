"""`cove dlq`: a message dead-lettered by a failing projection is listed with its reason, retried once the fault
is fixed, and applied exactly once, by the consumer that gave up on it only."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import pytest

from proto import subjects
from proto.envelope import Envelope, new_envelope
from proto.events import ClusterRejected
from proto.streams import ConsumerSettings
from services.runtime import db
from services.runtime.projection import InboxPruning, Outgoing, Projection
from tests.conftest import wait_for
from tests.ops.conftest import Ops

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).parent / "migrations"
FAST = ConsumerSettings(ack_wait=5.0, max_deliver=2, backoff=(0.05,), fetch_timeout=0.2)


class Faulty:
    """A projection handler that fails on one event id while ``broken``, counting every application."""

    def __init__(self, poison: str) -> None:
        self.poison = poison
        self.broken = True

    async def handle(self, env: Envelope, tx: asyncpg.Connection) -> Sequence[Outgoing]:
        if env.id == self.poison and self.broken:
            raise RuntimeError("the store is read-only (injected fault)")
        await tx.execute(
            "INSERT INTO applied (event_id, times) VALUES ($1, 1)"
            " ON CONFLICT (event_id) DO UPDATE SET times = applied.times + 1", env.id,
        )
        return ()


async def start(ops: Ops, name: str, handler: Faulty) -> tuple[Projection, asyncpg.Pool]:
    pool = await db.create_pool(ops.database_url, name)
    await db.migrate(pool, name, MIGRATIONS)
    proj = Projection(name=name, schema=name, pool=pool, bus=ops.bus, handler=handler.handle,
                      filter_subjects=[subjects.producer_events("scheduler")], settings=FAST,
                      inbox_pruning=InboxPruning(interval=None))
    await proj.start()
    return proj, pool


async def times(pool: asyncpg.Pool, event_id: str) -> int | None:
    return await pool.fetchval("SELECT times FROM applied WHERE event_id = $1", event_id)


async def test_a_dead_letter_is_retried_after_the_fault_is_fixed_and_applied_once(ops: Ops) -> None:
    cid = str(uuid.uuid4())
    env = new_envelope(ClusterRejected(uuid=cid, project_id="p", reason="quota"), project_id="p", cluster_id=cid)
    faulty, healthy = Faulty(env.id), Faulty("none")
    failing, failing_pool = await start(ops, "dlq_failing", faulty)
    other, other_pool = await start(ops, "dlq_healthy", healthy)
    try:
        ack = await ops.bus.publish(subjects.cluster_events("scheduler", cid), env)
        await wait_for(lambda: other.checkpoint(), message="the healthy projection applied it")
        await wait_for(lambda: _checkpoint_at(failing, ack.seq), timeout=20, message="dead-lettered")
        assert await times(failing_pool, env.id) is None
        assert await times(other_pool, env.id) == 1

        code, out, err = await ops.cove("dlq", "list", "-f", "json")
        assert code == 0, err
        letters = json.loads(out)
        assert len(letters) == 1
        letter = letters[0]
        assert letter["consumer"] == "dlq_failing" and letter["type"] == "ClusterRejected"
        assert letter["cluster"] == cid and letter["stream_seq"] == ack.seq
        assert "injected fault" in letter["reason"]
        code, out, _ = await ops.cove("dlq", "show", str(letter["id"]), "-f", "json")
        assert code == 0 and json.loads(out)["event"]["id"] == env.id

        faulty.broken = False  # the fault is fixed
        code, out, err = await ops.cove("dlq", "retry", str(letter["id"]), "-f", "json")
        assert code == 0, err
        copy_seq = json.loads(out)[0]["republished_seq"]
        assert copy_seq > ack.seq
        await wait_for(lambda: _checkpoint_at(failing, copy_seq), message="the failing consumer took the copy")
        await wait_for(lambda: _checkpoint_at(other, copy_seq), message="the healthy consumer saw the copy")
        assert await times(failing_pool, env.id) == 1  # applied, once
        assert await times(other_pool, env.id) == 1  # skipped: its inbox knew the event id

        code, out, _ = await ops.cove("dlq", "list", "-f", "json")
        assert code == 0 and json.loads(out) == []
        code, _, err = await ops.cove("dlq", "retry", str(letter["id"]))
        assert code == 1 and f"no dead letter {letter['id']}" in err
    finally:
        for proj, pool in ((failing, failing_pool), (other, other_pool)):
            await proj.stop()
            await pool.close()


async def test_dlq_drop_deletes_and_retry_all_needs_a_consumer(ops: Ops) -> None:
    cid = str(uuid.uuid4())
    env = new_envelope(ClusterRejected(uuid=cid, project_id="p", reason="q"), project_id="p", cluster_id=cid)
    faulty = Faulty(env.id)
    failing, pool = await start(ops, "dlq_drop", faulty)
    try:
        ack = await ops.bus.publish(subjects.cluster_events("scheduler", cid), env)
        await wait_for(lambda: _checkpoint_at(failing, ack.seq), timeout=20, message="dead-lettered")
        code, _, _ = await ops.cove("dlq", "retry", "--all")
        assert code == 2
        code, out, _ = await ops.cove("dlq", "list", "--consumer", "dlq_drop", "-f", "value", "-c", "id")
        assert code == 0
        code, out, err = await ops.cove("dlq", "drop", out.strip(), "-f", "json")
        assert code == 0, err
        assert json.loads(out)["dropped"] is True
        code, out, _ = await ops.cove("dlq", "retry", "--all", "--consumer", "dlq_drop", "-f", "json")
        assert code == 0 and json.loads(out) == []
        assert await times(pool, env.id) is None

        # bytes no consumer can read are dead-lettered at once, and refused by retry
        ack = await ops.bus.publish_raw(subjects.cluster_events("scheduler", cid), b"not an event")
        await wait_for(lambda: _checkpoint_at(failing, ack.seq), timeout=20, message="dead-lettered")
        code, out, _ = await ops.cove("dlq", "list", "-f", "json")
        (letter,) = json.loads(out)
        assert letter["type"] == "(malformed)" and letter["reason"].startswith("malformed")
        code, _, err = await ops.cove("dlq", "retry", str(letter["id"]))
        assert code == 1 and "not an event any consumer can read" in err
    finally:
        await failing.stop()
        await pool.close()


async def _checkpoint_at(proj: Projection, seq: int) -> bool:
    return await proj.checkpoint() >= seq
