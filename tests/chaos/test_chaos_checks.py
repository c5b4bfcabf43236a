"""The chaos test's own checks see what they must: a duplicate in the ledger, a doubled event, a server the cloud
made without a NodeCreated; and its kill plan repeats with its seed and spreads over the phase."""

from __future__ import annotations

import random

from proto.envelope import new_envelope
from proto.events import ClusterCreateCompleted, ClusterCreateStarted, ClusterDeleteCompleted, NodeCreated
from tests.chaos.test_provisioner_kill import (
    SHAPE,
    Form,
    check_events,
    cloud_quotas,
    duplicate_records,
    kill_plan,
)

CID = "8987f568-fea2-4af0-9128-8b4e11e8a3de"
PREFIXES = {"chaos-00-8987f568": CID}


def record(kind: str, name: str, rid: str, deleted: bool = False) -> dict[str, object]:
    return {"kind": kind, "name": name, "id": rid, "status": "deleted" if deleted else "ACTIVE",
            "created_at": "t", "deleted_at": "t" if deleted else None}


def test_a_second_record_of_one_kind_and_name_is_a_duplicate_even_when_deleted() -> None:
    records = [record("server", "chaos-00-8987f568-master-0", "s1"),
               record("server", "chaos-00-8987f568-master-0", "s2", deleted=True),
               record("server", "chaos-00-8987f568-node-0", "s3"),
               record("volume", "chaos-00-8987f568-node-0-docker", "v1"),
               record("port", "", "p1"), record("port", "", "p2"),  # unnamed: Nova's ports
               record("server", "someone-else-master-0", "x1"), record("server", "someone-else-master-0", "x2")]
    found = duplicate_records(records, PREFIXES)
    assert [(d["kind"], d["name"], [r["id"] for r in d["records"]]) for d in found] == [
        ("server", "chaos-00-8987f568-master-0", ["s1", "s2"])]


def envelope(payload: object) -> object:
    return new_envelope(payload, project_id="p", cluster_id=CID)  # type: ignore[arg-type]


def node(server_id: str) -> NodeCreated:
    return NodeCreated(cluster_id=CID, project_id="p", node_name="n", role="worker", server_id=server_id,
                       flavor_id="f", flavor_name="m1.small", vcpus=1, ram_mb=2048, disk_gb=20)


def test_events_doubled_or_missing_are_reported() -> None:
    good = [envelope(ClusterCreateStarted(uuid=CID, project_id="p")), envelope(node("s1")),
            envelope(ClusterCreateCompleted(uuid=CID, project_id="p", api_address="https://x:6443")),
            envelope(ClusterDeleteCompleted(uuid=CID, project_id="p"))]
    assert check_events(good, [CID], {CID: {"s1"}}, deleted=True) == []  # type: ignore[arg-type]
    bad = [*good, envelope(ClusterCreateStarted(uuid=CID, project_id="p")), envelope(node("s1"))]
    errors = check_events(bad, [CID], {CID: {"s1", "s2"}}, deleted=True)  # type: ignore[arg-type]
    assert errors == ["NodeCreated 2 times for server s1", f"{CID}: ClusterCreateStarted 2 times",
                      f"{CID}: servers the cloud made without a NodeCreated: ['s2']"]


def test_the_kill_plan_repeats_with_its_seed_and_has_a_point_in_every_slice() -> None:
    plan = kill_plan(random.Random(7), 8, 300)
    assert plan == kill_plan(random.Random(7), 8, 300)
    assert [p.after_events // (275 / 8) for p in plan] == list(range(8))  # 300 less the last twelfth
    assert all(0 <= p.jitter <= 0.5 for p in plan)


def test_the_forms_and_the_quotas() -> None:
    assert Form.from_env({"COVE_CHAOS_SEED": "5"}).clusters == 6
    full = Form.from_env({"COVE_CHAOS": "full", "COVE_CHAOS_SEED": "5", "COVE_CHAOS_CREATE_KILLS": "3"})
    assert (full.name, full.clusters, full.create_kills, full.seed) == ("full", 50, 3, 5)
    quotas = cloud_quotas(50)
    assert quotas["network"]["floatingip"] == 2 * 50 * SHAPE.floating_ips
    assert quotas["load_balancer"]["load_balancer"] == 100 and quotas["volume"]["volumes"] == 200
