"""A cluster's events applied before its creation are parked, and applied after it (services/api/parking.py).

The API's two copies share its durable consumer: a copy killed holding the batch with a cluster's request gets it
delivered again only after the ack wait, while the other copy applies the admission, the build's node reports and
the completion. Before parking, those found no row and were lost (make test's short chaos form: acknowledged
clusters never listed, refused ones ``CREATE_IN_PROGRESS`` for ever). On real PostgreSQL with the API's migrations,
every table compared with the same stream applied in order.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import asyncpg
import msgspec
import pytest

from proto.envelope import Envelope
from proto.events import (
    ClusterCreateCompleted,
    ClusterCreateStarted,
    ClusterDeleteCompleted,
    ClusterDeleteRequested,
    ClusterHealthChanged,
    ClusterUpdateCompleted,
    ClusterUpdateRequested,
    ClusterUpdateStarted,
    NodeBecameActive,
    NodeCreated,
    NodeDeleted,
    NodeGroup,
    NodeGroupCreateRequested,
    NodeGroupDeleteRequested,
)
from services.api import parking, projection
from services.api.service import MIGRATIONS
from services.runtime.projection import _BATCH_SEQUENCES, _SEQUENCE
from tests.api.test_batch_projection import PROJECT, Stream, json_list
from tests.scheduler.test_admission_run import Schemas, snapshot

pytestmark = pytest.mark.integration



def lifecycle() -> tuple[Stream, str]:
    """Stream sequence n is ``envs[n - 1]``: a template, two clusters asked for, the second built (its nodes, its
    completion), the first deleted. Returns the stream and the built cluster's uuid."""
    s = Stream()
    t = s.template("t")
    other = s.request("other", t)
    built = s.request("built", t, node_count=1)
    s.admitted(other)
    s.admitted(built)
    s.add(ClusterCreateStarted(uuid=built.uuid, project_id=PROJECT, stack_id="stack-1"), built.uuid)
    for name, role, ip in (("m-0", "master", "10.0.0.2"), ("w-0", "worker", "10.0.0.3")):
        sid = f"{built.uuid}-{name}"
        s.add(NodeCreated(cluster_id=built.uuid, project_id=PROJECT, node_name=name, role=role, server_id=sid,
                          flavor_id="f", flavor_name="m1.small", vcpus=1, ram_mb=1024, disk_gb=10), built.uuid)
        s.add(NodeBecameActive(cluster_id=built.uuid, project_id=PROJECT, server_id=sid, node_name=name, role=role,
                               addresses={"private": [ip]}), built.uuid)
    s.add(ClusterCreateCompleted(uuid=built.uuid, project_id=PROJECT, api_address="https://127.0.0.1:6443"),
          built.uuid)
    s.add(ClusterDeleteRequested(uuid=other.uuid, project_id=PROJECT), other.uuid)
    return s, built.uuid


async def apply(pool: asyncpg.Pool, envs: list[Envelope], batches: list[list[int]]) -> None:
    """Apply the events of the given stream sequences, one transaction per batch, as the runtime does (one event
    through ``handle`` with its sequence, more through ``handle_batch`` with theirs)."""
    for batch in batches:
        async with pool.acquire() as conn, conn.transaction():
            if len(batch) == 1:
                token = _SEQUENCE.set(batch[0])
                try:
                    await projection.handle(envs[batch[0] - 1], conn)
                finally:
                    _SEQUENCE.reset(token)
            else:
                many = _BATCH_SEQUENCES.set(batch)
                try:
                    await projection.handle_batch([envs[seq - 1] for seq in batch], conn)
                finally:
                    _BATCH_SEQUENCES.reset(many)


REQUEST = 3
"""The stream sequence of the built cluster's request."""

DELIVERIES = {
    # The request's copy died; the other copy applied everything after it, one event at a time, then the request
    # came back alone.
    "request-last-one-by-one": [[n] for n in (1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12)] + [[REQUEST]],
    # The same in batches.
    "request-last-batched": [[1, 2, 4, 5], [6, 7, 8, 9, 10, 11, 12], [REQUEST]],
    # The dead copy held the request and a worker's creation; they came back with events newer than all the other
    # copy applied meanwhile: the parked ones go by their sequence, before the redelivered NodeCreated (BUILD) or
    # after it (the same worker's NodeBecameActive, ACTIVE), then the newer ones.
    "redelivered-with-a-follower": [[1, 2], [4, 5, 6, 7], [8, 10], [REQUEST, 9, 11, 12]],
}


@pytest.mark.parametrize("delivery", list(DELIVERIES))
async def test_a_cluster_whose_request_is_applied_after_its_later_events_ends_as_in_stream_order(
        schemas: Schemas, delivery: str) -> None:
    s, built = lifecycle()
    assert isinstance(s.envs[REQUEST - 1].payload, projection.ev.ClusterCreateRequested)
    in_order, out_of_order = await schemas.new(MIGRATIONS), await schemas.new(MIGRATIONS)
    await apply(in_order, s.envs, [[n] for n in range(1, len(s.envs) + 1)])
    await apply(out_of_order, s.envs, DELIVERIES[delivery])
    expected = await snapshot(in_order)
    assert await snapshot(out_of_order) == expected
    # The reference is the built cluster, complete with its nodes (not two empty read models), and nothing is left
    # parked.
    clusters = {row["name"]: row for row in expected["clusters"]}
    assert (clusters["built"]["status"], clusters["built"]["admission"], clusters["built"]["stack_id"]) == (
        "CREATE_COMPLETE", "admitted", "stack-1")
    assert clusters["other"]["status"] == "DELETE_IN_PROGRESS"
    assert sorted(row["status"] for row in expected["nodes"]) == ["ACTIVE", "ACTIVE"]
    assert expected["parked_events"] == []
    assert built == clusters["built"]["uuid"]


async def test_the_late_request_waits_for_a_copy_parking_its_clusters_event_at_that_moment(
        schemas: Schemas) -> None:
    """Two copies' transactions overlap: one parks the admission (no row yet), the other inserts the cluster. The
    parker holds the cluster's lock until it commits, and the request's transaction then takes the admission
    back (without the lock each would miss the other's uncommitted write, and the admission would stay parked)."""
    s, built = lifecycle()
    pool = await schemas.new(MIGRATIONS)
    await apply(pool, s.envs, [[1], [2]])
    async with pool.acquire() as a, pool.acquire() as b:
        parker = a.transaction()
        await parker.start()
        token = _SEQUENCE.set(5)
        try:
            await projection.handle(s.envs[5 - 1], a)  # the admission: parked, not committed
        finally:
            _SEQUENCE.reset(token)
        assert await a.fetchval("SELECT count(*) FROM parked_events") == 1

        async def request() -> None:
            async with b.transaction():
                one = _SEQUENCE.set(REQUEST)
                try:
                    await projection.handle(s.envs[REQUEST - 1], b)  # waits for the parker's lock
                finally:
                    _SEQUENCE.reset(one)

        waiting = asyncio.create_task(request())
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await parker.commit()
        await asyncio.wait_for(waiting, 10)
    got = await snapshot(pool)
    assert [(row["uuid"], row["admission"]) for row in got["clusters"] if row["name"] == "built"] == [
        (built, "admitted")]
    assert got["parked_events"] == []


async def test_an_event_after_its_cluster_was_deleted_is_parked_and_pruned_a_day_later(schemas: Schemas) -> None:
    """A straggler (here an admission after the delete completed) has no cluster to wait for: it stays parked,
    the same one event at a time and in a batch (so a replay's store equals the live one), until an event parked
    more than ``RETENTION`` later prunes it."""
    s = Stream()
    t = s.template("t")
    gone = s.request("gone", t)
    s.add(ClusterDeleteCompleted(uuid=gone.uuid, project_id=PROJECT), gone.uuid)
    s.admitted(gone)
    one_by_one, batched = await schemas.new(MIGRATIONS), await schemas.new(MIGRATIONS)
    await apply(one_by_one, s.envs, [[1], [2], [3], [4]])
    await apply(batched, s.envs, [[1, 2, 3, 4]])
    parked = await snapshot(one_by_one)
    assert await snapshot(batched) == parked
    assert [(row["cluster_uuid"], row["stream_seq"]) for row in parked["parked_events"]] == [(gone.uuid, 4)]
    assert parked["clusters"] == []

    late = Stream()
    later = late.request("later", s.envs[0].payload.template)  # type: ignore[attr-defined]
    late.add(ClusterDeleteCompleted(uuid=later.uuid, project_id=PROJECT), later.uuid)
    late.admitted(later)
    envs = [*s.envs, *late.envs]
    for i in (4, 5, 6):  # a day and a bit after the first straggler
        envs[i] = msgspec.structs.replace(envs[i], occurred_at=envs[i].occurred_at + parking.RETENTION
                                          + timedelta(hours=1))
    await apply(one_by_one, envs, [[5], [6], [7]])
    got = await snapshot(one_by_one)
    assert [(row["cluster_uuid"], row["stream_seq"]) for row in got["parked_events"]] == [(later.uuid, 7)]


def resized() -> tuple[Stream, str]:
    """``lifecycle`` (sequences 1 to 12), then the built cluster resized from 1 worker to 2: its request (13), the
    provisioner's start (14), the new worker (15, 16) and the completion (17)."""
    s, built = lifecycle()
    s.add(ClusterUpdateRequested(uuid=built, project_id=PROJECT, node_count=2, previous_node_count=1), built)
    s.add(ClusterUpdateStarted(uuid=built, project_id=PROJECT, node_count=2), built)
    sid = f"{built}-w-1"
    s.add(NodeCreated(cluster_id=built, project_id=PROJECT, node_name="w-1", role="worker", server_id=sid,
                      flavor_id="f", flavor_name="m1.small", vcpus=1, ram_mb=1024, disk_gb=10), built)
    s.add(NodeBecameActive(cluster_id=built, project_id=PROJECT, server_id=sid, node_name="w-1", role="worker",
                           addresses={"private": ["10.0.0.4"]}), built)
    s.add(ClusterUpdateCompleted(uuid=built, project_id=PROJECT, node_count=2,
                                 nodegroup_counts={"default-master": 1, "default-worker": 2}), built)
    return s, built


RESIZE = 13
"""The stream sequence of the resize's request."""

RESIZE_DELIVERIES = {
    # The copy holding the request died: the provisioner's start, the new worker and the completion came first.
    "request-after-its-completion": [[n] for n in range(1, RESIZE)] + [[14], [15], [16], [17], [RESIZE]],
    "request-after-its-completion-batched": [list(range(1, RESIZE)), [14, 15, 16, 17], [RESIZE]],
    # The request came back with the completion: the start before it is superseded, the completion waits for it.
    "start-late": [list(range(1, RESIZE)), [15, 17], [RESIZE, 16], [14]],
}


@pytest.mark.parametrize("delivery", list(RESIZE_DELIVERIES))
async def test_a_resize_whose_events_are_applied_out_of_order_ends_as_in_stream_order(
        schemas: Schemas, delivery: str) -> None:
    """Applied as they came, the request after its completion moved the cluster back to ``UPDATE_IN_PROGRESS``,
    where it stayed: a status event older than the one that last moved the cluster is superseded now, and one that
    does not apply yet waits, parked, for the status it applies from. (The superseded request's one other effect, its
    group in progress, the completion makes itself: its counts say which group it changed.)"""
    s, built = resized()
    in_order, out_of_order = await schemas.new(MIGRATIONS), await schemas.new(MIGRATIONS)
    await apply(in_order, s.envs, [[n] for n in range(1, len(s.envs) + 1)])
    await apply(out_of_order, s.envs, RESIZE_DELIVERIES[delivery])
    expected = await snapshot(in_order)
    assert await snapshot(out_of_order) == expected
    (row,) = [r for r in expected["clusters"] if r["uuid"] == built]
    assert (row["status"], row["status_seq"], row["spec"]["node_count"] if isinstance(row["spec"], dict) else
            msgspec.json.decode(row["spec"])["node_count"]) == ("UPDATE_COMPLETE", 17, 2)
    assert expected["parked_events"] == []


@pytest.mark.parametrize("delivery", [
    # a master's NodeCreated (7) redelivered after its NodeBecameActive (8)
    [[1, 2, 3, 4, 5, 6], [8], [7], [9, 10, 11, 12, 13]],
    # a worker's NodeBecameActive (10) redelivered after its NodeDeleted (13), in a batch and alone
    [[1, 2, 3, 4, 5, 6, 7, 8, 9], [11, 12, 13], [10]],
    [[1, 2, 3, 4, 5, 6, 7, 8, 9], [11], [12], [13], [10]],
], ids=["created-after-active", "active-after-deleted-batched", "active-after-deleted"])
async def test_a_nodes_late_report_does_not_move_it_back(schemas: Schemas, delivery: list[list[int]]) -> None:
    """A node's row only moves forward (BUILD, then ACTIVE or ERROR, then DELETED, kept as such until the cluster
    goes): applied as it came, a late NodeCreated made an ACTIVE node BUILD again, and a late NodeBecameActive
    brought a deleted node, and its address, back into the cluster's addresses."""
    s, built = lifecycle()
    s.add(NodeDeleted(cluster_id=built, project_id=PROJECT, server_id=f"{built}-w-0", node_name="w-0"), built)
    in_order, out_of_order = await schemas.new(MIGRATIONS), await schemas.new(MIGRATIONS)
    await apply(in_order, s.envs, [[n] for n in range(1, len(s.envs) + 1)])
    await apply(out_of_order, s.envs, delivery)
    expected = await snapshot(in_order)
    assert await snapshot(out_of_order) == expected
    assert sorted((row["node_name"], row["status"]) for row in expected["nodes"]) == [
        ("m-0", "ACTIVE"), ("w-0", "DELETED")]
    (row,) = [r for r in expected["clusters"] if r["uuid"] == built]
    assert (json_list(row["master_addresses"]), json_list(row["node_addresses"])) == (["10.0.0.2"], [])


@pytest.mark.parametrize("delivery", [[[1], [4], [2, 3]], [[1, 2], [4], [3]], [[1, 2], [4, 3]]],
                         ids=["parked-between-redelivered", "older-alone", "older-batched"])
async def test_two_health_reports_end_with_the_newer_whatever_order_they_are_applied_in(
        schemas: Schemas, delivery: list[list[int]]) -> None:
    """Health reports come only on a change, so the older one applied last would stay shown. A killed copy held the
    request and the first report; the other copy applied the second (no cluster yet: parked). When the two come
    back, the parked report goes after the redelivered one, by its sequence, not right after the creation. With the
    cluster there, the older report applied after the newer changes nothing (``health_seq``)."""
    s = Stream()
    t = s.template("t")
    req = s.request("watched", t)
    for health in ("HEALTHY", "UNHEALTHY"):
        s.add(ClusterHealthChanged(uuid=req.uuid, project_id=PROJECT, health_status=health), req.uuid)
    in_order, out_of_order = await schemas.new(MIGRATIONS), await schemas.new(MIGRATIONS)
    await apply(in_order, s.envs, [[1], [2], [3], [4]])
    await apply(out_of_order, s.envs, delivery)
    expected = await snapshot(in_order)
    assert await snapshot(out_of_order) == expected
    assert [(row["health_status"], row["health_seq"]) for row in expected["clusters"]] == [("UNHEALTHY", 4)]


def grouped() -> Stream:
    """``lifecycle`` (1 to 12), then a nodegroup ``extra`` made (13 its request, 14 the start, 15 the completion)
    and deleted (16, 17, 18)."""
    s, built = lifecycle()
    extra = NodeGroup(uuid=str(uuid.uuid4()), name="extra", cluster_id=built, project_id=PROJECT, node_count=1)
    s.add(NodeGroupCreateRequested(nodegroup=extra), built)
    s.add(ClusterUpdateStarted(uuid=built, project_id=PROJECT, node_count=2), built)
    s.add(ClusterUpdateCompleted(uuid=built, project_id=PROJECT, node_count=2,
                                 nodegroup_counts={"default-master": 1, "default-worker": 1, "extra": 1}), built)
    s.add(NodeGroupDeleteRequested(cluster_id=built, project_id=PROJECT, uuid=extra.uuid, name="extra"), built)
    s.add(ClusterUpdateStarted(uuid=built, project_id=PROJECT, node_count=1), built)
    s.add(ClusterUpdateCompleted(uuid=built, project_id=PROJECT, node_count=1,
                                 nodegroup_counts={"default-master": 1, "default-worker": 1}), built)
    return s


@pytest.mark.parametrize("delivery,groups", [
    ([list(range(1, 13)), [14], [15], [13]], {"default-master", "default-worker", "extra"}),
    ([list(range(1, 16)), [17], [18], [16]], {"default-master", "default-worker"}),
    ([list(range(1, 13)), [14, 15], [13, 16, 17, 18]], {"default-master", "default-worker"}),
], ids=["create-request-last", "delete-request-last", "create-request-with-the-delete"])
async def test_a_nodegroups_request_applied_after_its_update_completed_leaves_the_group_as_in_stream_order(
        schemas: Schemas, delivery: list[list[int]], groups: set[str]) -> None:
    """The request's status move is superseded (the cluster stays as its update left it), and its group is made
    (CREATE_COMPLETE) or removed as that update did: applied as it came, the group was missing, or stayed listed."""
    s = grouped()
    last = max(n for batch in delivery for n in batch)
    in_order, out_of_order = await schemas.new(MIGRATIONS), await schemas.new(MIGRATIONS)
    await apply(in_order, s.envs, [[n] for n in range(1, last + 1)])
    await apply(out_of_order, s.envs, delivery)
    expected = await snapshot(in_order)
    assert await snapshot(out_of_order) == expected
    built = next(row for row in expected["clusters"] if row["name"] == "built")
    assert {row["name"] for row in expected["nodegroups"] if row["cluster_uuid"] == built["uuid"]} == groups
    assert built["status"] == "UPDATE_COMPLETE"
