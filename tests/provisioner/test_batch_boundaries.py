"""The provisioner's projection, its batch path cut at random boundaries, against one event at a time, on real
PostgreSQL: the live consumer's batches are whatever the server delivered, a replay's are 1,000 events, and a batch
runs its planned writes grouped and compacted (``handlers.compact`` drops the ``last_seq`` moves a later write
makes anyway), so where a batch ends must never change the store. The stream is the one tests/ops/
test_replay_batched.py replays (lifecycles, then every other kind of event interleaved over clusters); every column
is compared but those set to the transaction's time."""

from __future__ import annotations

import random
from typing import Any

import pytest

from services.provisioner import handlers
from services.provisioner.service import MIGRATIONS
from tests.batching import apply_in_batches
from tests.ops.test_replay_batched import TRANSACTION_TIME, _envelopes
from tests.scheduler.test_admission_run import Schemas, snapshot

pytestmark = pytest.mark.integration


def comparable(snap: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    volatile = TRANSACTION_TIME["provisioner"]
    return {t: sorted(({k: v for k, v in r.items() if k not in volatile} for r in rows),
                      key=lambda row: repr(sorted(row.items()))) for t, rows in snap.items()}


@pytest.mark.parametrize("seed", [1, 2])
async def test_random_batch_boundaries_leave_the_store_as_one_by_one(database_url: str, seed: int) -> None:
    envs = [env for _, env in _envelopes()]
    schemas = Schemas(database_url, "prov_cut")
    try:
        one_by_one, batched = await schemas.new(MIGRATIONS), await schemas.new(MIGRATIONS)
        await apply_in_batches(one_by_one, envs, handlers.project, handlers.project.batch, None)
        await apply_in_batches(batched, envs, handlers.project, handlers.project.batch, random.Random(seed))
        want, have = comparable(await snapshot(one_by_one)), comparable(await snapshot(batched))
        assert len(want["clusters"]) > 100 and len(want["nodes"]) > 100
        assert any(r["last_seq"] for r in want["clusters"])
        for table in want:
            assert have[table] == want[table], f"{table} differs"
        compacted = handlers.compact([w for env in envs for w in handlers.plan(env) or ()])
        assert len(compacted) < sum(len(handlers.plan(env) or ()) for env in envs)  # something was compacted
    finally:
        await schemas.close()
