"""A template, a quota or a nodegroup's settings keep the newest event's values whatever order the API's copies apply
their events in (services/api/versions.py): an update applied after the delete does not bring the thing back, an
older update applied after a newer one does not replace it. Real PostgreSQL, every table compared with the same
stream applied in order."""

from __future__ import annotations

import msgspec
import pytest

from proto.events import (
    ClusterTemplateDeleted,
    ClusterTemplateUpdated,
    NodeGroupUpdateRequested,
    QuotaCreated,
    QuotaDeleted,
    QuotaUpdated,
)
from services.api import ngstore
from services.api.service import MIGRATIONS
from tests.api.test_batch_projection import PROJECT, Stream
from tests.api.test_parking import apply
from tests.scheduler.test_admission_run import Schemas, snapshot

pytestmark = pytest.mark.integration



def story() -> Stream:
    """1 a template, 2 a cluster of it, 3 and 4 two settings of its worker group (min 1, then min 2), 5 and 6 a quota
    set to 5 then 7, 7 and 8 a second template updated then deleted, 9 a quota deleted."""
    s = Stream()
    t = s.template("t")
    req = s.request("c", t)
    group = ngstore.default_uuid(req.uuid, "default-worker")
    for low in (1, 2):
        s.add(NodeGroupUpdateRequested(cluster_id=req.uuid, project_id=PROJECT, uuid=group, min_node_count=low,
                                       node_labels={"min": str(low)}), req.uuid)
    s.add(QuotaCreated(project_id=PROJECT, hard_limit=5))
    s.add(QuotaUpdated(project_id=PROJECT, hard_limit=7))
    gone = s.template("gone")
    s.envs.pop()
    s.add(ClusterTemplateUpdated(template=msgspec.structs.replace(gone, name="renamed")))
    s.add(ClusterTemplateDeleted(uuid=gone.uuid, project_id=PROJECT))
    s.add(QuotaDeleted(project_id="p-other", resource="Cluster"))
    return s


@pytest.mark.parametrize("delivery", [
    [[1], [2], [4], [3], [6], [5], [8], [7], [9]],
    [[1, 2], [4, 6, 8], [3, 5, 7, 9]],
], ids=["one-by-one", "batched"])
async def test_the_newest_event_wins_whatever_order_they_are_applied_in(
        schemas: Schemas, delivery: list[list[int]]) -> None:
    s = story()
    in_order, out_of_order = await schemas.new(MIGRATIONS), await schemas.new(MIGRATIONS)
    await apply(in_order, s.envs, [[n] for n in range(1, len(s.envs) + 1)])
    await apply(out_of_order, s.envs, delivery)
    expected = await snapshot(in_order)
    assert await snapshot(out_of_order) == expected
    assert [row["name"] for row in expected["cluster_templates"]] == ["t"]
    assert [(row["project_id"], row["hard_limit"]) for row in expected["quotas"]] == [(PROJECT, 7)]
    worker = next(row for row in expected["nodegroups"] if row["name"] == "default-worker")
    assert worker["min_node_count"] == 2
