"""`cove events show` lists a cluster's history in stream order with who caused each event; `events tail` filters."""

from __future__ import annotations

import json
import uuid

import pytest

from benchmarks.replay import lifecycles, publish_all
from tests.ops.conftest import Ops

pytestmark = pytest.mark.integration


async def test_events_show_lists_a_clusters_events_in_order_with_who_caused_them(ops: Ops) -> None:
    published = list(lifecycles(200))
    await publish_all(ops.bus, iter(published))
    cluster = published[20][1].cluster_id  # a cluster whose events are interleaved with others' in the stream
    assert cluster is not None
    mine = [env for _, env in published if env.cluster_id == cluster]

    code, out, err = await ops.cove("events", "show", cluster, "-f", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["event_id"] for r in rows] == [e.id for e in mine]
    assert [r["type"] for r in rows] == [e.type for e in mine]
    seqs = [r["seq"] for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    request = mine[0].payload
    assert rows[0]["user"] == request.user_id  # type: ignore[union-attr]
    assert rows[1]["user"] == "(scheduler)" and rows[1]["producer"] == "scheduler"
    assert {r["correlation_id"] for r in rows} == {mine[0].correlation_id}
    assert [r["causation_id"] for r in rows[1:]] == [r["event_id"] for r in rows[:-1]]

    code, out, _ = await ops.cove("events", "show", cluster, "-f", "value", "-c", "type")
    assert code == 0 and out.split() == [e.type for e in mine]

    code, _, err = await ops.cove("events", "show", str(uuid.uuid4()))
    assert code == 1 and "no events about cluster" in err


async def test_events_tail_filters_by_type_project_and_cluster(ops: Ops) -> None:
    published = list(lifecycles(300))
    await publish_all(ops.bus, iter(published))
    code, out, err = await ops.cove("events", "tail", "--since", "1", "--no-follow", "--type", "ClusterCreateCompleted",
                                    "--project", "p-3", "-f", "json", "-c", "type", "-c", "project", "-c", "cluster")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    expected = [e for _, e in published if e.type == "ClusterCreateCompleted" and e.project_id == "p-3"]
    assert rows == [{"type": "ClusterCreateCompleted", "project": "p-3", "cluster": e.cluster_id} for e in expected]
    assert rows

    cluster = expected[0].cluster_id
    code, out, _ = await ops.cove("events", "tail", "--since", "1", "--cluster", str(cluster), "--limit", "3",
                                  "-f", "value", "-c", "type")
    assert code == 0 and out.split() == [e.type for _, e in published if e.cluster_id == cluster][:3]


async def test_events_tail_since_a_time_and_a_bad_since(ops: Ops) -> None:
    published = list(lifecycles(20))
    await publish_all(ops.bus, iter(published))
    code, out, err = await ops.cove("events", "tail", "--since", "2000-01-01T00:00:00+00:00", "--no-follow",
                                    "-f", "value", "-c", "event_id")
    assert code == 0, err
    assert out.split() == [e.id for _, e in published]
    code, out, _ = await ops.cove("events", "tail", "--since", "2999-01-01T00:00:00Z", "--no-follow")
    assert code == 0 and out.splitlines()[1:] == []
    code, _, err = await ops.cove("events", "tail", "--since", "yesterday")
    assert code == 1 and "neither a stream sequence nor an ISO 8601 time" in err
