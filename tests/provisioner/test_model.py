"""The provisioner's model of a cluster in the cloud (services/provisioner/model.py): names, what a list call
shows, the delete plan. Pure functions, no cloud or bus."""

from __future__ import annotations

import re

from services.provisioner import model, nodeplan

CID = "5d12f6fd-a196-4bf0-ae4c-1f639a523a52"


def sv(name: str, status: str, sid: str | None = None, fault: str | None = None) -> model.ServerView:
    role = "master" if "-master-" in name else "worker"
    return model.ServerView(id=sid or f"id-{name}", name=name, status=status, fault=fault,
                            metadata={"cove_cluster_id": CID, "cove_role": role})


def test_names() -> None:
    prefix = model.cluster_prefix("my cluster", CID)
    assert prefix == "my-cluster-5d12f6fd"
    worker = nodeplan.GroupSpec(name="default-worker", role="worker", node_count=2)
    node = model.DesiredNode(nodeplan.group_node_name(prefix, worker, 0), "worker", 0)
    assert node.name == "my-cluster-5d12f6fd-node-0"
    assert model.node_metadata(CID, node) == {
        "cove_cluster_id": CID, "cove_role": "worker", "cove_node": "my-cluster-5d12f6fd-node-0",
    }
    assert re.match(model.server_name_filter("a.b-5d12f6fd"), "a.b-5d12f6fd-node-0")
    assert not re.match(model.server_name_filter("a.b-5d12f6fd"), "axb-5d12f6fd-node-0")


def test_owned_servers_checks_metadata() -> None:
    mine = sv("c-1-master-0", "ACTIVE")
    other = model.ServerView(id="x", name="c-1-master-0", status="ACTIVE", metadata={"cove_cluster_id": "other"})
    assert model.owned_servers([mine, other], CID) == [mine]


def test_plan_delete() -> None:
    known = {
        "a": model.KnownNode("a", "c-1-master-0", "master", model.NODE_ACTIVE),
        "b": model.KnownNode("b", "c-1-node-0", "worker", model.NODE_ACTIVE),
        "c": model.KnownNode("c", "c-1-node-1", "worker", model.NODE_DELETED),
    }
    plan = model.plan_delete([sv("c-1-master-0", "ACTIVE", "a")], known, requested=set())
    assert [s.id for s in plan.to_delete] == ["a"]
    assert [n.server_id for n in plan.gone] == ["b"]
    assert plan.servers_left == 1
    again = model.plan_delete([sv("c-1-master-0", "ACTIVE", "a")], known, requested={"a"})
    assert again.to_delete == []


def test_addresses() -> None:
    raw = {"c-1-net": [{"addr": "10.0.0.5", "version": 4}, {"addr": "172.24.4.9", "version": 4}]}
    assert model.addresses_of(raw) == {"c-1-net": ["10.0.0.5", "172.24.4.9"]}
