"""The scheduler's batch path, cut at random boundaries, against one event at a time: the live consumer's batches
are whatever the server delivered, a replay's are 1,000 events, and ``cove verify`` compares the two stores row by
row, so where a batch ends must never change the store nor the decisions.

The stream is ``benchmarks.replay.lifecycles`` (every cluster admitted, as its stream says) with quota changes,
failed creates, repeated requests and rejections mixed in, applied under a default quota far below what the stream
admitted: most requests are re-decided as rejections that the published ``ClusterAdmitted`` then overrides, the
case a replay under another quota meets, so each project's usage moves with every kind of event."""

from __future__ import annotations

import random

import pytest

from benchmarks.replay import lifecycles
from proto.envelope import Envelope, new_envelope
from proto.events import (
    ClusterCreateFailed,
    ClusterCreateRequested,
    ClusterRejected,
    Event,
    QuotaCreated,
    QuotaDeleted,
    QuotaUpdated,
)
from services.runtime.projection import Outgoing
from services.scheduler.handlers import Handlers
from services.scheduler.service import MIGRATIONS
from tests.scheduler.test_admission_run import Schemas, snapshot

pytestmark = pytest.mark.integration


def stream(seed: int) -> list[Envelope]:
    rng = random.Random(seed)
    envs: list[Envelope] = []

    def add(payload: Event, like: Envelope, project: str) -> None:
        envs.append(new_envelope(payload, project_id=project, cluster_id=like.cluster_id, trace={},
                                 occurred_at=like.occurred_at))

    for _, env in lifecycles(2_400):
        p = env.payload
        envs.append(env)
        roll = rng.random()
        if isinstance(p, ClusterCreateRequested) and roll < 0.05:
            add(p, env, p.project_id)  # a client retry: no second decision
        elif isinstance(p, ClusterCreateRequested) and roll < 0.08:
            add(ClusterRejected(uuid=p.uuid, project_id=p.project_id, reason="refused elsewhere"), env, p.project_id)
        elif isinstance(p, ClusterCreateRequested) and roll < 0.11:
            add(ClusterCreateFailed(uuid=p.uuid, project_id=p.project_id, status_reason="boom"), env, p.project_id)
        elif roll < 0.02:
            project = f"p-{rng.randrange(10)}"
            kind = rng.choice([QuotaCreated, QuotaUpdated, QuotaDeleted])
            if kind is QuotaDeleted:
                add(QuotaDeleted(project_id=project), env, project)
            else:
                add(kind(project_id=project, hard_limit=rng.randrange(0, 12)), env, project)
    return envs


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_batch_boundaries_decide_and_store_as_one_by_one(database_url: str, seed: int) -> None:
    envs = stream(seed)
    handlers = Handlers(3)
    schemas = Schemas(database_url, "sched_cut")
    try:
        one_by_one, batched = await schemas.new(MIGRATIONS), await schemas.new(MIGRATIONS)
        expected: list[list[Outgoing]] = []
        for env in envs:
            async with one_by_one.acquire() as conn, conn.transaction():
                expected.append(list(await handlers.handle(env, conn)))
        rng = random.Random(seed)
        got: list[list[Outgoing]] = []
        start = 0
        while start < len(envs):
            batch = envs[start:start + rng.choice([1, 2, 3, 7, 16, 50, 250, 1000])]
            async with batched.acquire() as conn, conn.transaction():
                if len(batch) > 1:
                    out = await handlers.handle_batch(batch, conn)
                else:
                    out = [await handlers.handle(batch[0], conn)]
            assert len(out) == len(batch)
            got.extend(list(o) for o in out)
            start += len(batch)
        assert got == expected
        decided = [o for out in expected for o in out]
        assert len(decided) > 150 and {type(o.payload).__name__ for o in decided} == {
            "ClusterAdmitted", "ClusterRejected"}
        want, have = await snapshot(one_by_one), await snapshot(batched)
        assert len(want["clusters"]) > 150 and want["project_usage"] and want["quotas"]
        for table in want:
            assert have[table] == want[table], f"{table} differs"
    finally:
        await schemas.close()
