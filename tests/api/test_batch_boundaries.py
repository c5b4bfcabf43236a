"""The API projection's batch path, cut at random boundaries, against one event at a time: the live consumer's
batches are whatever the server delivered, a replay's are 1,000 events, and ``cove verify`` compares the two
stores row by row (ids included), so where a batch ends must never change the store."""

from __future__ import annotations

import random

import pytest

from benchmarks.replay import lifecycles
from services.api import projection
from services.api.service import MIGRATIONS
from tests.batching import apply_in_batches
from tests.scheduler.test_admission_run import Schemas, snapshot

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("seed", [1, 2])
async def test_random_batch_boundaries_leave_the_store_as_one_by_one(database_url: str, seed: int) -> None:
    envs = [env for _, env in lifecycles(2_400)]
    schemas = Schemas(database_url, "api_cut")
    try:
        one_by_one, batched = await schemas.new(MIGRATIONS), await schemas.new(MIGRATIONS)
        await apply_in_batches(one_by_one, envs, projection.handle, projection.handle_batch, None)
        await apply_in_batches(batched, envs, projection.handle, projection.handle_batch, random.Random(seed))
        expected = await snapshot(one_by_one)
        assert len(expected["clusters"]) > 80  # the deleted half is gone
        got = await snapshot(batched)
        for table in expected:
            want = {r.get("uuid", repr(sorted(r.items()))): r for r in expected[table]}
            have = {r.get("uuid", repr(sorted(r.items()))): r for r in got[table]}
            diffs = [(k, c, want[k].get(c), have.get(k, {}).get(c)) for k in want for c in want[k]
                     if k not in have or want[k][c] != have[k].get(c)]
            diffs += [(k, "(row)", None, "present") for k in have if k not in want]
            assert not diffs, f"{table}: {len(diffs)} difference(s), first: {diffs[:5]}"
    finally:
        await schemas.close()
