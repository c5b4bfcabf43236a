"""The API projection's batch handler against its per-event handler, on real PostgreSQL with the API's migrations.

``handle_batch`` inserts a run's new clusters and their default nodegroups set-based and then sets the run's
admissions in one statement; it must leave the read model exactly as ``handle`` applied one event at a time in
stream order. One stream is applied both ways into fresh schemas and every table is compared, all columns.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from proto.envelope import Envelope, new_envelope
from proto.events import (
    ClusterAdmitted,
    ClusterCreateRequested,
    ClusterDeleteCompleted,
    ClusterDeleteRequested,
    ClusterRejected,
    ClusterTemplate,
    ClusterTemplateCreated,
    ClusterWithdrawn,
    Event,
)
from services.api import projection
from services.api.service import MIGRATIONS
from tests.scheduler.test_admission_run import Schemas, snapshot

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PROJECT = "p-batch"


class Stream:
    """Stream-ordered envelopes, one second apart (every recorded time tells which event set it)."""

    def __init__(self) -> None:
        self.envs: list[Envelope] = []

    def add(self, payload: Event, cluster: str | None = None) -> None:
        self.envs.append(
            new_envelope(
                payload,
                project_id=PROJECT,
                cluster_id=cluster,
                occurred_at=T0 + timedelta(seconds=len(self.envs)),
            )
        )

    def template(self, name: str, **fields: Any) -> ClusterTemplate:
        t = ClusterTemplate(
            uuid=str(uuid.uuid4()),
            name=name,
            project_id=PROJECT,
            user_id="u",
            image_id=f"img-{name}",
            created_at=T0,
            **fields,
        )
        self.add(ClusterTemplateCreated(template=t))
        return t

    def request(self, name: str, template: ClusterTemplate, **fields: Any) -> ClusterCreateRequested:
        req = ClusterCreateRequested(
            uuid=str(uuid.uuid4()), name=name, project_id=PROJECT, user_id="u", template=template, **fields
        )
        self.add(req, req.uuid)
        return req

    def admitted(self, req: ClusterCreateRequested) -> None:
        self.add(
            ClusterAdmitted(
                uuid=req.uuid,
                project_id=PROJECT,
                master_count=req.master_count,
                node_count=req.node_count,
                name=req.name,
            ),
            req.uuid,
        )


def story() -> tuple[Stream, dict[str, ClusterCreateRequested]]:
    """Templates, requests of several shapes interleaved with the scheduler's decisions on earlier ones (the runs
    the batch handler applies set-based), a rejection, deletes in between, a repeated request and a decision that
    arrives after its cluster is gone."""
    s = Stream()
    t1 = s.template(
        "t1",
        labels={"kube_tag": "v1.27"},
        flavor_id="m1.small",
        master_flavor_id="m1.medium",
        docker_volume_size=5,
    )
    c: dict[str, ClusterCreateRequested] = {}
    c["c1"] = s.request("c1", t1)
    t2 = s.template("t2", flavor_id="m1.large")
    c["c2"] = s.request("c2", t1, master_count=3, node_count=4, labels={"a": "b"}, flavor_id="m1.xlarge")
    c["c3"] = s.request("c3", t2, node_count=2)
    s.admitted(c["c1"])
    c["c4"] = s.request(
        "c4",
        t2,
        master_count=5,
        node_count=0,
        labels={"x": "y"},
        docker_volume_size=20,
        master_flavor_id="m1.tiny",
    )
    s.admitted(c["c2"])
    c["c5"] = s.request("c5", t1, node_count=3, requested_at=T0 - timedelta(hours=1), keypair="kp")
    s.add(ClusterRejected(uuid=c["c3"].uuid, project_id=PROJECT, reason="quota exceeded"), c["c3"].uuid)
    s.admitted(c["c4"])
    c["c6"] = s.request("c6", t2, master_count=1, node_count=6)
    c["c7"] = s.request("c7", t1)
    s.add(ClusterDeleteRequested(uuid=c["c2"].uuid, project_id=PROJECT), c["c2"].uuid)
    s.admitted(c["c5"])
    # the same cluster asked for again (other counts): ignored
    s.add(msgspec.structs.replace(c["c6"], node_count=9), c["c6"].uuid)
    s.admitted(c["c6"])
    s.add(ClusterDeleteRequested(uuid=c["c7"].uuid, project_id=PROJECT), c["c7"].uuid)
    s.admitted(c["c7"])  # decided after its delete was asked for
    c["c8"] = s.request("c8", t2)
    s.add(ClusterDeleteCompleted(uuid=c["c8"].uuid, project_id=PROJECT), c["c8"].uuid)
    s.admitted(c["c8"])  # the cluster is gone: changes nothing
    c["c9"] = s.request("c9", t1, labels={"only": "mine"})
    s.admitted(c["c9"])
    return s, c



@pytest.mark.parametrize(
    "size", [None, 2, 3, 5], ids=["whole-stream", "batches-of-2", "batches-of-3", "batches-of-5"]
)
async def test_batch_leaves_the_read_model_exactly_as_one_by_one(schemas: Schemas, size: int | None) -> None:
    stream, c = story()
    envs = stream.envs
    sequential_pool, batched_pool = await schemas.new(MIGRATIONS), await schemas.new(MIGRATIONS)
    for env in envs:
        async with sequential_pool.acquire() as conn, conn.transaction():
            await projection.handle(env, conn)
    size = size or len(envs)
    for start in range(0, len(envs), size):
        batch = envs[start : start + size]
        async with batched_pool.acquire() as conn, conn.transaction():
            # As Projection._handle_fresh does: more than one event through the batch handler.
            if len(batch) > 1:
                assert len(await projection.handle_batch(batch, conn)) == len(batch)
            else:
                await projection.handle(batch[0], conn)

    # Every table, every column. The bigserial ids (clusters.id, nodegroups.id, cluster_templates.id) are compared
    # too: each schema is new, so they count from 1, and they are Magnum's integer ids and default sort key, so
    # the batch path must insert in stream order.
    expected = await snapshot(sequential_pool)
    assert await snapshot(batched_pool) == expected

    # The reference itself is what the story says, so the comparison is not between two empty tables.
    clusters = {row["name"]: row for row in expected["clusters"]}
    assert {name: (row["status"], row["admission"]) for name, row in clusters.items()} == {
        "c1": ("CREATE_IN_PROGRESS", "admitted"),
        "c2": ("DELETE_IN_PROGRESS", "admitted"),
        "c3": ("CREATE_FAILED", "rejected"),
        "c4": ("CREATE_IN_PROGRESS", "admitted"),
        "c5": ("CREATE_IN_PROGRESS", "admitted"),
        "c6": ("CREATE_IN_PROGRESS", "admitted"),
        "c7": ("DELETE_IN_PROGRESS", "admitted"),
        "c9": ("CREATE_IN_PROGRESS", "admitted"),
    }
    assert [row["name"] for row in sorted(expected["clusters"], key=lambda row: row["id"])] == [
        "c1",
        "c2",
        "c3",
        "c4",
        "c5",
        "c6",
        "c7",
        "c9",
    ]
    groups = {(row["cluster_uuid"], row["name"]): row for row in expected["nodegroups"]}
    assert len(groups) == 2 * 8
    for name, req in c.items():
        if name == "c8":
            continue
        master, worker = groups[(req.uuid, "default-master")], groups[(req.uuid, "default-worker")]
        assert (master["node_count"], worker["node_count"]) == (req.master_count, req.node_count)
    assert groups[(c["c3"].uuid, "default-worker")]["status"] == "CREATE_FAILED"
    assert groups[(c["c1"].uuid, "default-worker")]["status"] == "CREATE_IN_PROGRESS"
    assert len(expected["cluster_templates"]) == 2


async def test_a_batch_of_node_changes_after_completion_leaves_the_addresses_of_the_last(schemas: Schemas) -> None:
    """``compact`` keeps only a cluster's last address refresh of a run: nodes that become ACTIVE and go after the
    cluster completed (a resize), all in one batch, leave the addresses one event at a time leaves (the lifecycle
    stream alone cannot tell: its completion sets the addresses again after every refresh)."""
    from proto.events import (
        ClusterCreateCompleted,
        ClusterCreateStarted,
        NodeBecameActive,
        NodeCreated,
        NodeDeleted,
    )

    s = Stream()
    t = s.template("t")
    req = s.request("grows", t, node_count=1)
    s.admitted(req)
    s.add(ClusterCreateStarted(uuid=req.uuid, project_id=PROJECT), req.uuid)

    def node(name: str, role: str, ip: str, *, active: bool = True) -> None:
        sid = f"{req.uuid}-{name}"
        s.add(NodeCreated(cluster_id=req.uuid, project_id=PROJECT, node_name=name, role=role, server_id=sid,
                          flavor_id="f", flavor_name="m1.small", vcpus=1, ram_mb=1024, disk_gb=10), req.uuid)
        if active:
            s.add(NodeBecameActive(cluster_id=req.uuid, project_id=PROJECT, server_id=sid, node_name=name, role=role,
                                   addresses={"private": [ip]}), req.uuid)

    node("m-0", "master", "10.0.0.2")
    node("w-0", "worker", "10.0.0.3")
    s.add(ClusterCreateCompleted(uuid=req.uuid, project_id=PROJECT, api_address="https://127.0.0.1:6443"), req.uuid)
    before = len(s.envs)
    node("w-1", "worker", "10.0.0.4")
    node("w-2", "worker", "10.0.0.5")
    s.add(NodeDeleted(cluster_id=req.uuid, project_id=PROJECT, server_id=f"{req.uuid}-w-0", node_name="w-0"),
          req.uuid)
    node("w-3", "worker", "10.0.0.6")
    sequential_pool, batched_pool = await schemas.new(MIGRATIONS), await schemas.new(MIGRATIONS)
    for env in s.envs:
        async with sequential_pool.acquire() as conn, conn.transaction():
            await projection.handle(env, conn)
    async with batched_pool.acquire() as conn, conn.transaction():
        await projection.handle_batch(s.envs[:before], conn)
        await projection.handle_batch(s.envs[before:], conn)
    expected = await snapshot(sequential_pool)
    assert await snapshot(batched_pool) == expected
    (row,) = expected["clusters"]
    assert (json_list(row["master_addresses"]), json_list(row["node_addresses"])) == (
        ["10.0.0.2"], ["10.0.0.4", "10.0.0.5", "10.0.0.6"])


async def test_a_nodes_shown_address_is_the_first_of_its_first_network_that_has_one(schemas: Schemas) -> None:
    """The statements that compute a cluster's addresses (a node's refresh, the completion's move) take each ACTIVE
    node's first address of its first network with any, in the order the store keeps the networks, as
    ``store.node_addresses`` reads them in Python: a network without addresses is passed over."""
    from proto.events import ClusterCreateCompleted, ClusterCreateStarted, NodeBecameActive, NodeCreated
    from services.api import store

    s = Stream()
    t = s.template("t")
    req = s.request("nets", t, node_count=1)
    s.admitted(req)
    s.add(ClusterCreateStarted(uuid=req.uuid, project_id=PROJECT), req.uuid)
    nets = {
        "m-0": ("master", {"a": [], "bb": ["10.0.0.9", "10.0.0.10"], "ccc": ["192.168.0.1"]}),
        "w-0": ("worker", {"public": ["203.0.113.7"], "private": ["10.0.1.4"]}),
        "w-1": ("worker", {"x": []}),
    }
    for name, (role, addresses) in nets.items():
        sid = f"{req.uuid}-{name}"
        s.add(NodeCreated(cluster_id=req.uuid, project_id=PROJECT, node_name=name, role=role, server_id=sid,
                          flavor_id="f", flavor_name="m1.small", vcpus=1, ram_mb=1024, disk_gb=10), req.uuid)
        s.add(NodeBecameActive(cluster_id=req.uuid, project_id=PROJECT, server_id=sid, node_name=name, role=role,
                               addresses=addresses), req.uuid)
    active = len(s.envs)
    s.add(ClusterCreateCompleted(uuid=req.uuid, project_id=PROJECT, api_address="https://127.0.0.1:6443"), req.uuid)
    pool = await schemas.new(MIGRATIONS)
    for upto in (active, len(s.envs)):  # after the refreshes, then after the completion's move
        async with pool.acquire() as conn, conn.transaction():
            await projection.handle_batch(s.envs[:upto] if upto == active else s.envs[active:], conn)
        async with pool.acquire() as conn:
            row = await conn.fetchrow("SELECT master_addresses, node_addresses FROM clusters")
            shown = (json_list(row["master_addresses"]), json_list(row["node_addresses"]))
            assert shown == await store.node_addresses(conn, req.uuid)
        # (jsonb keeps an object's keys shortest first: "public" before "private")
        assert shown == (["10.0.0.9"], ["203.0.113.7"])


def json_list(value: Any) -> list[str]:
    return msgspec.json.decode(value) if isinstance(value, str | bytes) else list(value)


@pytest.mark.parametrize("order", [
    ("request", "rejected", "withdrawn"),
    ("request", "withdrawn", "rejected"),
    ("withdrawn", "rejected", "request"),
    ("rejected", "withdrawn", "request"),
    ("request", "rejected"),
    ("rejected", "request"),
], ids=["in-stream-order", "withdrawal-before-rejection", "request-redelivered-last", "request-last",
        "rejected-after-202", "rejected-before-its-request"])
@pytest.mark.parametrize("batched", [False, True], ids=["one-by-one", "batched"])
async def test_a_refused_create_shows_as_decided_whatever_order_its_events_are_applied_in(
        schemas: Schemas, order: tuple[str, ...], batched: bool) -> None:
    """The API's two copies share its durable consumer: the scheduler's rejection and the API's withdrawal, a few
    milliseconds apart, can be applied by different copies in either order, and a killed copy's batch (the request
    itself) comes back after both (make chaos: refused clusters left CREATE_FAILED, or CREATE_IN_PROGRESS for
    ever). Withdrawn (answered 403): no cluster. Only rejected (answered 202 before the decision came): the
    cluster and its nodegroups CREATE_FAILED with the reason, as when the events come in stream order."""
    s = Stream()
    t = s.template("t")
    kept = s.request("kept", t)
    refused = ClusterCreateRequested(uuid=str(uuid.uuid4()), name="refused", project_id=PROJECT, user_id="u",
                                     template=t)
    events = {"request": refused,
              "rejected": ClusterRejected(uuid=refused.uuid, project_id=PROJECT, reason="quota exceeded"),
              "withdrawn": ClusterWithdrawn(uuid=refused.uuid, project_id=PROJECT)}
    for name in order:
        s.add(events[name], refused.uuid)
    pool = await schemas.new(MIGRATIONS)
    async with pool.acquire() as conn, conn.transaction():
        if batched:
            await projection.handle_batch(s.envs, conn)
        else:
            for env in s.envs:
                await projection.handle(env, conn)
    got = await snapshot(pool)
    clusters = {row["name"]: (row["status"], row["admission"], row["status_reason"]) for row in got["clusters"]}
    groups = {(row["cluster_uuid"], row["status"], row["status_reason"]) for row in got["nodegroups"]}
    if "withdrawn" in order:
        assert clusters == {"kept": ("CREATE_IN_PROGRESS", None, None)}
        assert groups == {(kept.uuid, "CREATE_IN_PROGRESS", None)}
    else:
        assert clusters == {"kept": ("CREATE_IN_PROGRESS", None, None),
                            "refused": ("CREATE_FAILED", "rejected", "quota exceeded")}
        assert groups == {(kept.uuid, "CREATE_IN_PROGRESS", None), (refused.uuid, "CREATE_FAILED", "quota exceeded")}


@pytest.mark.parametrize("first", ["request", "withdrawn"])
async def test_a_withdrawal_and_its_request_applied_at_once_by_two_copies_leave_no_cluster(
        schemas: Schemas, first: str) -> None:
    """Two API copies' transactions, one applying the request and the other the withdrawal, overlap: whichever
    started first holds the cluster's lock until it commits, and the other then sees its write (make chaos, without
    the lock: the request's copy inserted the cluster while the withdrawal's copy found no row to remove)."""
    s = Stream()
    t = s.template("t")
    req = s.request("refused", t)
    s.add(ClusterRejected(uuid=req.uuid, project_id=PROJECT, reason="quota exceeded"), req.uuid)
    s.add(ClusterWithdrawn(uuid=req.uuid, project_id=PROJECT), req.uuid)
    template, request, rejection, withdrawal = s.envs
    pool = await schemas.new(MIGRATIONS)
    async with pool.acquire() as conn:
        await projection.handle(template, conn)
    one, other = (request, withdrawal) if first == "request" else (withdrawal, request)
    async with pool.acquire() as a, pool.acquire() as b:
        tx_a = a.transaction()
        await tx_a.start()
        await projection.handle(one, a)  # not committed yet

        async def second() -> None:
            async with b.transaction():
                await projection.handle(other, b)  # waits for the first's lock

        waiting = asyncio.create_task(second())
        await asyncio.sleep(0.3)
        assert not waiting.done()  # held by the first transaction's lock
        await tx_a.commit()
        await asyncio.wait_for(waiting, 10)
    async with pool.acquire() as conn:
        await projection.handle(rejection, conn)  # applied last, by either copy: changes nothing
    got = await snapshot(pool)
    assert got["clusters"] == [] and got["nodegroups"] == []
