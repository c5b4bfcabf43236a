"""A store rebuilt by the batched path equals one rebuilt event by event, for every service whose projection batches.

One realistic mixed stream goes to a real nats-server: ``benchmarks.replay.lifecycles`` (create and delete
lifecycles, one cluster after another), then events of every other kind the batched handlers plan or decline,
interleaved across clusters (node failures and losses, health, updates, nodegroups, CA and trust rotations, trusts
shared by two clusters and deleted, volumes, floating IPs, a withdrawal, a failed create) and a message that does not
decode. Each service's store is built twice by the replayer into scratch schemas of its own: in transactions of
1,000 events (the batch handlers: ``PlannedHandler.batch``, the API's and the scheduler's ``handle_batch``) and in
transactions of one event (each handler alone, as the live consumer applies a lone message or retries a failed
batch one message at a time). Every table is compared, every column but the ones set to the transaction's time.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from benchmarks.replay import CA_PEM, T0, lifecycles, publish_all
from proto import subjects
from proto.envelope import Envelope, new_envelope
from proto.events import (
    ClusterAdmitted,
    ClusterCACreated,
    ClusterCAReplaced,
    ClusterCATrustNarrowed,
    ClusterCreateCompleted,
    ClusterCreateFailed,
    ClusterCreateRequested,
    ClusterCreateStarted,
    ClusterDeleteCompleted,
    ClusterDeleteRequested,
    ClusterDeleteStarted,
    ClusterHealthChanged,
    ClusterRejected,
    ClusterTrustDeleted,
    ClusterTrustRotated,
    ClusterUpdateCompleted,
    ClusterUpdateRequested,
    ClusterUpdateStarted,
    ClusterWithdrawn,
    Event,
    FloatingIpAllocated,
    FloatingIpReleased,
    NodeBecameActive,
    NodeCreated,
    NodeDeleted,
    NodeFailed,
    NodeGroupDeleteRequested,
    NodeLost,
    NodeRepaired,
    VolumeCreated,
    VolumeDeleted,
)
from services.ops import replay
from services.ops.connect import Settings
from services.ops.replay import Replayer
from services.ops.targets import target
from services.runtime import db
from tests.ops.conftest import Ops

pytestmark = pytest.mark.integration

TRANSACTION_TIME = {"provisioner": {"updated_at", "recorded_at"}}
"""Per service, the columns set to ``now()``: the transaction's start, which differs between the two builds by
construction (the inbox's ``applied_at`` too, for every service). Every other column is compared."""

LIFECYCLE_EVENTS = 3_000


def _envelopes() -> Iterator[tuple[str, Envelope]]:
    """The stream: lifecycles, then the other kinds of events interleaved over clusters still alive."""
    created: dict[str, ClusterCreateRequested] = {}
    deleted: set[str] = set()
    for subject, env in lifecycles(LIFECYCLE_EVENTS):
        p = env.payload
        if isinstance(p, ClusterCreateRequested):
            created[p.uuid] = p
        elif isinstance(p, ClusterDeleteRequested):
            deleted.add(p.uuid)
        yield subject, env
    alive = [c for c in created.values() if c.uuid not in deleted]
    template = next(iter(created.values())).template
    clock = itertools.count(10**6)

    def stamped(payload: Event, project: str, cluster: str) -> Envelope:
        return new_envelope(payload, project_id=project, cluster_id=cluster, trace={},
                            occurred_at=T0 + timedelta(seconds=next(clock)))

    def per_cluster(c: ClusterCreateRequested, n: int) -> list[tuple[str, Event]]:
        cid, pid, at = c.uuid, c.project_id, T0 + timedelta(days=1, seconds=n)
        worker = f"{cid}-1"
        steps: list[tuple[str, Event]] = [
            ("provisioner", ClusterHealthChanged(uuid=cid, project_id=pid, health_status="HEALTHY",
                                                 health_status_reason={"node.Ready": "True"})),
            ("provisioner", NodeFailed(cluster_id=cid, project_id=pid, server_id=worker, reason="boom",
                                       node_name=f"{c.name}-node-1")),
            ("provisioner", NodeLost(cluster_id=cid, project_id=pid, server_id=worker, reason="gone", lost_at=at)),
            ("provisioner", NodeRepaired(cluster_id=cid, project_id=pid, node_name=f"{c.name}-node-1",
                                         old_server_id=worker, new_server_id=f"{cid}-r", reason="lost")),
            ("provisioner", NodeCreated(cluster_id=cid, project_id=pid, node_name=f"{c.name}-node-r",
                                        role="worker", server_id=f"{cid}-r", flavor_id="f1", flavor_name="m1.small",
                                        vcpus=2, ram_mb=4096, disk_gb=20)),
            ("provisioner", NodeBecameActive(cluster_id=cid, project_id=pid, server_id=f"{cid}-r",
                                             node_name=f"{c.name}-node-r", addresses={"private": ["10.9.0.1"]})),
            # an older report arriving after a newer one: a node never moves back
            ("provisioner", NodeCreated(cluster_id=cid, project_id=pid, node_name=f"{c.name}-node-r",
                                        role="worker", server_id=f"{cid}-r", flavor_id="f2", flavor_name="m1.big",
                                        vcpus=4, ram_mb=8192, disk_gb=40)),
            ("provisioner", VolumeCreated(cluster_id=cid, project_id=pid, volume_id=f"{cid}-v", name="docker",
                                          size_gb=10, created_at=at)),
            ("provisioner", FloatingIpAllocated(cluster_id=cid, project_id=pid, floating_ip_id=f"{cid}-f",
                                                address="172.24.4.9", name="fip", created_at=at)),
        ]
        if n % 3 == 0:
            steps += [
                ("api", ClusterUpdateRequested(uuid=cid, project_id=pid, node_count=2, previous_node_count=1)),
                ("provisioner", ClusterUpdateStarted(uuid=cid, project_id=pid, node_count=2, generation=1)),
                ("provisioner", ClusterUpdateCompleted(uuid=cid, project_id=pid, node_count=2, generation=1,
                                                       node_addresses=["10.9.0.1"])),
                ("api", NodeGroupDeleteRequested(cluster_id=cid, project_id=pid, uuid=f"{cid}-ng",
                                                 name="default-worker")),
            ]
        if n % 3 == 1:
            steps += [
                ("certs", ClusterCAReplaced(uuid=cid, project_id=pid, ca_cert_pem=CA_PEM.replace("bench", "rot"),
                                            encrypted_ca_key=b"k2", key_id="bench-2")),
                ("provisioner", ClusterCATrustNarrowed(uuid=cid, project_id=pid, generation=2)),
                ("provisioner", VolumeDeleted(cluster_id=cid, project_id=pid, volume_id=f"{cid}-v",
                                              deleted_at=at + timedelta(hours=1))),
                ("provisioner", FloatingIpReleased(cluster_id=cid, project_id=pid, floating_ip_id=f"{cid}-f",
                                                   released_at=at + timedelta(hours=1))),
            ]
        if n % 3 == 2:  # deleted with the volume and floating IP still open: the delete closes them
            steps += [
                ("api", ClusterDeleteRequested(uuid=cid, project_id=pid, user_id="u")),
                ("provisioner", ClusterDeleteStarted(uuid=cid, project_id=pid)),
                ("provisioner", NodeDeleted(cluster_id=cid, project_id=pid, server_id=f"{cid}-r",
                                            node_name=f"{c.name}-node-r")),
                ("provisioner", ClusterDeleteCompleted(uuid=cid, project_id=pid)),
            ]
        return steps

    def trusted(n: int, trust: str) -> ClusterCreateRequested:
        return ClusterCreateRequested(uuid=f"trusted-{n}", name=f"trusted-{n}", project_id="p-t", user_id="u-t",
                                      template=template, trust_id=trust, trustee_user_id="trustee")

    def trust_cluster(c: ClusterCreateRequested, n: int) -> list[tuple[str, Event]]:
        """Two clusters share a trust (deleted once neither uses it), one rotates its own, one is withdrawn."""
        cid, pid = c.uuid, c.project_id
        steps: list[tuple[str, Event]] = [
            ("api", c),
            ("scheduler", ClusterRejected(uuid=cid, project_id=pid, reason="quota") if n == 3 else
             ClusterAdmitted(uuid=cid, project_id=pid, master_count=1, node_count=1, name=c.name)),
        ]
        if n == 3:
            return [*steps, ("api", ClusterWithdrawn(uuid=cid, project_id=pid))]
        steps += [
            ("certs", ClusterCACreated(uuid=cid, project_id=pid, ca_cert_pem=CA_PEM,
                                       encrypted_ca_key=base64.b64encode(cid.encode()), key_id="bench")),
            ("provisioner", ClusterCreateStarted(uuid=cid, project_id=pid)),
        ]
        if n == 2:
            steps += [
                ("provisioner", ClusterTrustRotated(uuid=cid, project_id=pid, trust_id="t-own-2",
                                                    trustee_user_id="trustee", previous_trust_id="t-own")),
                ("provisioner", ClusterTrustDeleted(uuid=cid, project_id=pid, trust_id="t-own", reason="rotated")),
                ("provisioner", ClusterCreateFailed(uuid=cid, project_id=pid, status_reason="no capacity")),
            ]
            return steps
        return [
            *steps,
            ("provisioner", ClusterCreateCompleted(uuid=cid, project_id=pid, api_address="https://127.0.0.1:6443")),
            ("api", ClusterDeleteRequested(uuid=cid, project_id=pid, user_id="u-t")),
            ("provisioner", ClusterDeleteStarted(uuid=cid, project_id=pid)),
            ("provisioner", ClusterDeleteCompleted(uuid=cid, project_id=pid)),
            ("provisioner", ClusterTrustDeleted(uuid=cid, project_id=pid, trust_id="t-shared")),
        ]

    plans = [per_cluster(c, n) for n, c in enumerate(alive[:60])]
    ids = [c.uuid for c in alive[:60]]
    for n, trust in enumerate(("t-shared", "t-shared", "t-own", "t-refused")):
        c = trusted(n, trust)
        plans.append(trust_cluster(c, n))
        ids.append(c.uuid)
    projects = {c.uuid: c.project_id for c in alive} | {i: "p-t" for i in ids if i.startswith("trusted-")}
    # round robin: each cluster's events in order, the clusters' interleaved
    for round_ in itertools.zip_longest(*plans):
        for cid, step in zip(ids, round_, strict=True):
            if step is not None:
                producer, payload = step
                yield subjects.cluster_events(producer, cid), stamped(payload, projects[cid], cid)


async def _rows(database_url: str, schema: str, volatile: set[str]) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        tables = [r[0] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1 AND tablename <> 'schema_migrations' ORDER BY 1",
            schema)]
        found: dict[str, Any] = {}
        for t in tables:
            rows = [{k: v for k, v in dict(r).items() if k not in volatile | {"applied_at"}}
                    for r in await conn.fetch(f"SELECT * FROM {db.ident(schema)}.{db.ident(t)}")]
            found[t] = sorted(rows, key=lambda row: repr(sorted(row.items())))
        return found
    finally:
        await conn.close()


async def _build(ops: Ops, service: str, scratch: str, until: int) -> tuple[dict[str, Any], replay.ReplayStats]:
    replayer = Replayer(ops.bus, Settings(nats_url=ops.nats_url, database_url=ops.database_url), target(service),
                        scratch=scratch)
    await replayer.prepare()
    try:
        stats = await replayer.run(until=until)
    finally:
        await replayer.close()
    return await _rows(ops.database_url, scratch, TRANSACTION_TIME.get(service, set())), stats


@pytest.mark.parametrize("service", ["provisioner", "accounting", "api", "scheduler"])
async def test_a_store_built_in_batches_equals_one_built_event_by_event(
    ops: Ops, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    last = await publish_all(ops.bus, _envelopes())
    ack = await ops.bus.js.publish(subjects.cluster_events("provisioner", "c-malformed"), b"not an envelope")
    last = ack.seq

    batched, stats = await _build(ops, service, f"{service}_batched", last)
    monkeypatch.setattr(replay, "BATCH", 1)
    one_by_one, alone = await _build(ops, service, f"{service}_alone", last)

    assert stats.applied == alone.applied > LIFECYCLE_EVENTS // 2
    assert [s for s, _ in stats.skipped] == [s for s, _ in alone.skipped] == [last]  # the malformed message
    checkpoint = batched.pop("checkpoint")
    assert checkpoint == one_by_one.pop("checkpoint")
    assert [row["stream_seq"] for row in checkpoint] == [last]
    assert sum(len(rows) for rows in batched.values()) > LIFECYCLE_EVENTS // 10, "the store is not empty"
    for table in batched:
        assert batched[table] == one_by_one[table], f"{service}: table {table} differs"
    assert batched.keys() == one_by_one.keys()
