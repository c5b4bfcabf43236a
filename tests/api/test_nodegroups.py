"""Nodegroups and cluster actions (resize, upgrade) against the API in-process, a real nats-server, PostgreSQL
and the devcloud's identity, image and compute services (magnum-api.md §1.3, §1.4).

The scheduler and provisioner are not running: a cluster is made CREATE_COMPLETE (or an update settled) by
publishing their events directly, so what is tested is the API's validation, status rules and read model.

Cove departs from Magnum on purpose in one place asserted here: a resize (or nodegroup create) of a cluster that
is not in a state allowing it answers 409, where Magnum answers 202 and the conductor drops the request silently.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from proto.events import (
    ClusterAdmitted,
    ClusterCreateCompleted,
    ClusterCreateStarted,
    ClusterUpdateCompleted,
    NodeBecameActive,
    NodeCreated,
)
from tests.api.conftest import RunningApi, user_token
from tests.api.test_api_integration import Client, publish
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def mv(version: str) -> dict[str, str]:
    return {"OpenStack-API-Version": f"container-infra {version}"}


V19, V114 = mv("1.9"), mv("1.14")
LIST_FIELDS = {"uuid", "name", "flavor_id", "image_id", "node_count", "role", "is_default", "status", "stack_id"}
SHOW_FIELDS = LIST_FIELDS | {
    "id", "cluster_id", "project_id", "docker_volume_size", "labels", "labels_overridden", "labels_added",
    "labels_skipped", "links", "node_addresses", "min_node_count", "max_node_count", "status_reason", "version",
    "merge_labels", "created_at", "updated_at",
}


@pytest.fixture(scope="module")
async def demo(api: RunningApi) -> Client:
    return Client(api.url, await user_token(api.devcloud, "demo", "demo-pass", "demo"))


@pytest.fixture(scope="module")
async def template(demo: Client) -> dict[str, Any]:
    status, body, _ = await demo.call("POST", "/v1/clustertemplates", {
        "name": f"ng-{uuid.uuid4().hex[:6]}", "coe": "kubernetes", "image_id": "fedora-coreos",
        "flavor_id": "m1.small", "master_flavor_id": "m1.medium", "external_network_id": "public",
        "labels": {"kube_tag": "v1.30.1", "auto_healing_enabled": "false"},
    })
    assert status == 201, body
    return dict(body)


async def new_cluster(demo: Client, template: dict[str, Any]) -> tuple[str, str]:
    """A cluster just accepted (CREATE_IN_PROGRESS, no api_address): (uuid, project_id)."""
    status, body, _ = await demo.call("POST", "/v1/clusters", {
        "name": f"ng-{uuid.uuid4().hex[:6]}", "cluster_template_id": template["uuid"], "node_count": 2})
    assert status == 202, body
    cid = str(body["uuid"])
    _, body, _ = await demo.call("GET", f"/v1/clusters/{cid}")
    return cid, str(body["project_id"])


async def cluster_status(demo: Client, cid: str, wanted: str) -> dict[str, Any] | None:
    status, body, _ = await demo.call("GET", f"/v1/clusters/{cid}")
    assert status == 200, body
    return dict(body) if body["status"] == wanted else None


async def ready_cluster(api: RunningApi, demo: Client, template: dict[str, Any]) -> tuple[str, str]:
    """A CREATE_COMPLETE cluster (1 master at 10.0.0.5, 2 workers), driven there by the other services' events."""
    cid, pid = await new_cluster(demo, template)
    await publish(api, "scheduler", cid, pid, ClusterAdmitted(uuid=cid, project_id=pid, master_count=1, node_count=2))
    await publish(api, "provisioner", cid, pid, ClusterCreateStarted(uuid=cid, project_id=pid, stack_id="kube-ng"))
    await publish(api, "provisioner", cid, pid, NodeCreated(
        cluster_id=cid, project_id=pid, node_name="m0", role="master", server_id=f"srv-{cid}", flavor_id="f",
        flavor_name="m1.medium", vcpus=2, ram_mb=4096, disk_gb=40))
    await publish(api, "provisioner", cid, pid, NodeBecameActive(
        cluster_id=cid, project_id=pid, server_id=f"srv-{cid}", node_name="m0", role="master",
        addresses={"net": ["10.0.0.5"]}))
    await publish(api, "provisioner", cid, pid, ClusterCreateCompleted(
        uuid=cid, project_id=pid, api_address="https://10.0.0.5:6443", coe_version="v1.30.1"))
    await wait_for(lambda: cluster_status(demo, cid, "CREATE_COMPLETE"), timeout=10, message="CREATE_COMPLETE")
    return cid, pid


async def settle(api: RunningApi, demo: Client, cid: str, pid: str, counts: dict[str, int]) -> dict[str, Any]:
    """The provisioner's word that the update is done: the cluster goes UPDATE_COMPLETE."""
    await publish(api, "provisioner", cid, pid, ClusterUpdateCompleted(
        uuid=cid, project_id=pid, node_count=sum(counts.values()), nodegroup_counts=counts))
    body = await wait_for(lambda: cluster_status(demo, cid, "UPDATE_COMPLETE"), timeout=10, message="UPDATE_COMPLETE")
    assert body is not None
    return body


def detail(body: Any) -> str:
    return str(body["errors"][0]["detail"])


async def test_versions_gate_nodegroups_and_actions(api: RunningApi, demo: Client,
                                                    template: dict[str, Any]) -> None:
    cid, _ = await ready_cluster(api, demo, template)
    for headers in ({}, mv("1.8")):  # no header is 1.1
        status, body, _ = await demo.call("GET", f"/v1/clusters/{cid}/nodegroups", headers=headers)
        assert status == 406, body
        assert body["errors"][0]["code"] == "magnum.microversion-unsupported"
        assert body["errors"][0]["max_version"] == "1.14"
        status, body, _ = await demo.call("POST", f"/v1/clusters/{cid}/nodegroups", {"name": "x"}, headers=headers)
        assert status == 406, body
    assert (await demo.call("GET", f"/v1/clusters/{cid}/nodegroups/default-worker", headers=mv("1.8")))[0] == 406
    assert (await demo.call("DELETE", f"/v1/clusters/{cid}/nodegroups/default-worker", headers=mv("1.8")))[0] == 406
    assert (await demo.call("GET", f"/v1/clusters/{cid}/nodegroups", headers=V19))[0] == 200

    resize = f"/v1/clusters/{cid}/actions/resize"
    status, body, _ = await demo.call("POST", resize, {"node_count": 3}, headers=mv("1.6"))
    assert status == 406 and body["errors"][0]["code"] == "magnum.microversion-unsupported"
    assert (await demo.call("POST", resize, {"node_count": 3}))[0] == 406  # openstacksdk's default 1.1
    # from 1.7 the action exists: the body is validated (node_count is mandatory; 0 only from 1.10)
    status, body, _ = await demo.call("POST", resize, {}, headers=mv("1.7"))
    assert status == 400 and "node_count" in detail(body)
    status, body, _ = await demo.call("POST", resize, {"node_count": 0}, headers=V19)
    assert status == 400 and "1.10" in detail(body)

    upgrade = f"/v1/clusters/{cid}/actions/upgrade"
    body_up = {"cluster_template": template["uuid"]}
    assert (await demo.call("POST", upgrade, body_up, headers=mv("1.6")))[0] == 406
    status, body, _ = await demo.call("POST", upgrade, body_up, headers=mv("1.7"))
    assert status == 400 and body["errors"][0]["code"] == "client" and "1.8" in detail(body)
    status, body, _ = await demo.call("POST", upgrade, {"max_batch_size": 1}, headers=mv("1.8"))
    assert status == 400 and "cluster_template" in detail(body)
    # none of the refusals moved the cluster
    assert await cluster_status(demo, cid, "CREATE_COMPLETE")


async def test_list_and_show_shapes_and_paging(api: RunningApi, demo: Client, template: dict[str, Any]) -> None:
    cid, pid = await ready_cluster(api, demo, template)
    base = f"/v1/clusters/{cid}/nodegroups"
    status, body, _ = await demo.call("GET", base, headers=V19)
    assert status == 200 and "next" not in body
    groups = {g["name"]: g for g in body["nodegroups"]}
    assert set(groups) == {"default-master", "default-worker"}
    for g in groups.values():
        assert set(g) == LIST_FIELDS, g  # Magnum's list items: no links, no counts bounds
        assert g["is_default"] and g["status"] == "CREATE_COMPLETE" and g["stack_id"] == "kube-ng"
        assert g["image_id"] == "fedora-coreos"
    assert groups["default-master"]["role"] == "master" and groups["default-master"]["node_count"] == 1
    assert groups["default-master"]["flavor_id"] == "m1.medium"
    assert groups["default-worker"]["role"] == "worker" and groups["default-worker"]["node_count"] == 2
    assert groups["default-worker"]["flavor_id"] == "m1.small"
    # magnumclient's trailing slash, and ?role=
    status, body, _ = await demo.call("GET", f"{base}/?role=master", headers=V19)
    assert status == 200 and [g["name"] for g in body["nodegroups"]] == ["default-master"]

    # show by name and by uuid: Magnum's full object; node_labels/node_taints only from 1.14
    worker_uuid = groups["default-worker"]["uuid"]
    for ident in ("default-worker", worker_uuid):
        status, ng, _ = await demo.call("GET", f"{base}/{ident}", headers=V19)
        assert status == 200 and ng["uuid"] == worker_uuid
    assert set(ng) == SHOW_FIELDS, set(ng) ^ SHOW_FIELDS
    assert isinstance(ng["id"], int) and ng["cluster_id"] == cid and ng["project_id"] == pid
    assert ng["min_node_count"] == 0 and ng["max_node_count"] is None and ng["node_count"] == 2
    assert ng["labels"] == template["labels"] and ng["labels_added"] == {} and ng["labels_overridden"] == {}
    assert ng["links"][0]["rel"] == "self" and ng["links"][0]["href"].endswith(f"{base}/{worker_uuid}")
    assert ng["links"][1]["rel"] == "bookmark" and "/v1/" not in ng["links"][1]["href"]
    assert ng["created_at"].endswith("+00:00")
    status, master, _ = await demo.call("GET", f"{base}/default-master", headers=V114)
    assert status == 200 and master["node_addresses"] == ["10.0.0.5"]
    assert master["node_labels"] == {} and master["node_taints"] == []
    assert set(master) == SHOW_FIELDS | {"node_labels", "node_taints"}
    status, body, _ = await demo.call("GET", f"{base}/no-such-group", headers=V19)
    assert status == 404 and "no-such-group" in detail(body)

    # paging: next only when the page is full, a full URL that continues after the marker
    status, body, _ = await demo.call("GET", f"{base}?limit=1", headers=V19)
    assert status == 200 and len(body["nodegroups"]) == 1
    first = body["nodegroups"][0]["uuid"]
    nxt = body["next"]
    assert nxt.startswith("http") and f"/v1/clusters/{cid}/nodegroups?" in nxt and f"marker={first}" in nxt
    status, body, _ = await demo.call("GET", nxt[len(api.url):], headers=V19)
    assert status == 200 and len(body["nodegroups"]) == 1 and body["nodegroups"][0]["uuid"] != first
    second = body["nodegroups"][0]["uuid"]
    status, body, _ = await demo.call("GET", f"{base}?limit=1&marker={second}", headers=V19)
    assert status == 200 and body["nodegroups"] == [] and "next" not in body
    status, body, _ = await demo.call("GET", f"{base}?sort_key=name&sort_dir=desc", headers=V19)
    assert [g["name"] for g in body["nodegroups"]] == ["default-worker", "default-master"]
    for bad in ("sort_key=flavor", "sort_dir=up", "limit=0", "limit=x", "marker=no-such"):
        assert (await demo.call("GET", f"{base}?{bad}", headers=V19))[0] == 400, bad
    # a marker is a nodegroup of this cluster: another cluster's group is no marker here
    other, _ = await new_cluster(demo, template)
    _, body, _ = await demo.call("GET", f"/v1/clusters/{other}/nodegroups", headers=V19)
    status, body, _ = await demo.call("GET", f"{base}?marker={body['nodegroups'][0]['uuid']}", headers=V19)
    assert status == 400, body
    assert (await demo.call("GET", "/v1/clusters/no-such-cluster/nodegroups", headers=V19))[0] == 404


async def test_create_validation_and_access(api: RunningApi, demo: Client, template: dict[str, Any]) -> None:
    cid, pid = await ready_cluster(api, demo, template)
    url = f"/v1/clusters/{cid}/nodegroups"
    # another project does not see the cluster; a reader of this one may look but not create
    alt = Client(api.url, await user_token(api.devcloud, "alt", "alt-pass", "alt"))
    assert (await alt.call("GET", url, headers=V19))[0] == 404
    status, body, _ = await alt.call("POST", url, {"name": "mine"}, headers=V19)
    assert status == 404, body
    viewer = Client(api.url, await user_token(api.devcloud, "viewer", "viewer-pass", "demo"))
    assert (await viewer.call("GET", url, headers=V19))[0] == 200
    status, body, _ = await viewer.call("POST", url, {"name": "mine"}, headers=V19)
    assert status == 403 and "nodegroup:create" in detail(body)

    refused: list[tuple[dict[str, Any], dict[str, str], int, str]] = [
        # node_labels / node_taints are 1.14 fields
        ({"name": "a", "node_labels": {"tier": "gpu"}}, mv("1.13"), 400, "1.14"),
        ({"name": "a", "node_taints": [{"key": "gpu"}]}, V19, 400, "1.14"),
        # WSME-level input errors are 400
        ({"node_count": 1}, V19, 400, "name"),
        ({"name": "a", "role": "master"}, V19, 400, "master"),
        ({"name": "a", "node_count": -1}, V19, 400, "node_count"),
        ({"name": "a", "bogus": 1}, V19, 400, "bogus"),
        ({"name": "a", "node_labels": ["tier=gpu"]}, V114, 400, "node_labels"),
        # NodeGroupInvalidInput is 409: counts out of order, restricted labels, bad taints
        ({"name": "a", "node_count": 1, "min_node_count": 3, "max_node_count": 2}, V19, 409, "min_node_count"),
        ({"name": "a", "node_count": 4, "max_node_count": 2}, V19, 409, "max_node_count"),
        ({"name": "a", "node_count": 1, "min_node_count": 2}, V19, 409, "min_node_count"),
        ({"name": "a", "node_labels": {"kubernetes.io/role": "x"}}, V114, 409, "kubernetes.io"),
        ({"name": "a", "node_labels": {"foo.k8s.io/x": "y"}}, V114, 409, "k8s.io"),
        ({"name": "a", "node_taints": [{"key": "gpu", "effect": "Sometimes"}]}, V114, 409, "effect"),
        ({"name": "a", "node_taints": [{"value": "v"}]}, V114, 409, "key"),
        ({"name": "a", "node_taints": {"key": "gpu"}}, V114, 409, "node_taints"),
        # names are unique within the cluster
        ({"name": "default-worker"}, V19, 409, "already exists"),
        ({"name": "a", "flavor_id": "m9.huge"}, V19, 400, "m9.huge"),
    ]
    for req, headers, code, words in refused:
        status, body, _ = await demo.call("POST", url, req, headers=headers)
        assert status == code and words in detail(body), (req, status, body)
    assert await cluster_status(demo, cid, "CREATE_COMPLETE"), "a refused create changed the cluster"

    # accepted: 202 with the full object; labels default to the cluster's; the cluster goes UPDATE_IN_PROGRESS
    status, ng, _ = await demo.call("POST", url, {
        "name": "gpu", "node_count": 1, "max_node_count": 3, "labels": {"extra": "yes"}, "merge_labels": True,
        "node_labels": {"tier": "gpu", "node.kubernetes.io/exclude-from-external-load-balancers": "true"},
        "node_taints": [{"key": "gpu", "value": "true", "effect": "NoExecute"}, {"key": "dedicated"}],
    }, headers=V114)
    assert status == 202, ng
    assert ng["status"] == "CREATE_IN_PROGRESS" and not ng["is_default"] and ng["role"] == "worker"
    assert ng["flavor_id"] == "m1.small" and ng["image_id"] == "fedora-coreos" and ng["cluster_id"] == cid
    assert ng["labels"] == {**template["labels"], "extra": "yes"} and ng["labels_added"] == {"extra": "yes"}
    assert ng["node_labels"]["tier"] == "gpu"
    assert ng["node_taints"] == [{"key": "gpu", "value": "true", "effect": "NoExecute"},
                                 {"key": "dedicated", "value": None, "effect": "NoSchedule"}]
    cluster = await cluster_status(demo, cid, "UPDATE_IN_PROGRESS")
    assert cluster is not None and cluster["node_count"] == 3  # the sum of the worker groups
    status, body, _ = await demo.call("POST", url, {"name": "gpu"}, headers=V19)
    assert status == 409 and "already exists" in detail(body)
    await settle(api, demo, cid, pid, {"default-worker": 2, "gpu": 1})
    status, shown, _ = await demo.call("GET", f"{url}/gpu", headers=V19)
    assert status == 200 and shown["status"] == "CREATE_COMPLETE" and "node_labels" not in shown


async def test_create_and_resize_need_a_settled_cluster(api: RunningApi, demo: Client,
                                                        template: dict[str, Any]) -> None:
    cid, _ = await new_cluster(demo, template)  # CREATE_IN_PROGRESS, no api_address yet
    status, body, _ = await demo.call("GET", f"/v1/clusters/{cid}/nodegroups", headers=V19)
    assert status == 200 and {g["status"] for g in body["nodegroups"]} == {"CREATE_IN_PROGRESS"}
    status, body, _ = await demo.call("POST", f"/v1/clusters/{cid}/nodegroups", {"name": "early"}, headers=V19)
    assert status == 409 and "api_address" in detail(body)
    # Cove's choice: 409 where Magnum answers 202 and its conductor silently drops the resize
    status, body, _ = await demo.call("POST", f"/v1/clusters/{cid}/actions/resize", {"node_count": 3},
                                      headers=V19)
    assert status == 409 and "CREATE_IN_PROGRESS" in detail(body)
    assert (await demo.call("DELETE", f"/v1/clusters/{cid}/nodegroups/default-worker", headers=V19))[0] == 400
    assert await cluster_status(demo, cid, "CREATE_IN_PROGRESS")


async def test_patch_rules(api: RunningApi, demo: Client, template: dict[str, Any]) -> None:
    cid, _ = await ready_cluster(api, demo, template)
    url = f"/v1/clusters/{cid}/nodegroups"

    async def patch(ng: str, ops: list[dict[str, Any]], headers: dict[str, str]) -> tuple[int, Any]:
        status, body, _ = await demo.call("PATCH", f"{url}/{ng}", ops, headers=headers)
        return status, body

    status, body = await patch("default-worker", [{"op": "replace", "path": "/node_count", "value": 5}], V19)
    assert status == 400 and "node_count" in detail(body)  # node_count changes go through resize
    status, body = await patch("default-worker", [{"op": "replace", "path": "/node_labels", "value": {}}],
                               mv("1.13"))
    assert status == 400 and "node_labels" in detail(body)
    status, body = await patch("default-worker", [{"op": "replace", "path": "/max_node_count", "value": 1}], V19)
    assert status == 409 and "max_node_count" in detail(body)  # node_count 2 > max 1
    status, body = await patch("default-worker", [{"op": "replace", "path": "/min_node_count", "value": 3}], V19)
    assert status == 409 and "min_node_count" in detail(body)  # min 3 > node_count 2
    status, body = await patch("default-master", [{"op": "add", "path": "/node_labels", "value": {"a": "b"}}],
                               V114)
    assert status == 409 and "master" in detail(body)
    status, body = await patch("default-worker", [{"op": "replace", "path": "/node_taints",
                                                   "value": [{"key": "k", "effect": "Never"}]}], V114)
    assert status == 409 and "effect" in detail(body)
    status, body = await patch("default-worker", {"op": "replace"}, V19)  # type: ignore[arg-type]
    assert status == 400
    status, body = await patch("no-such", [{"op": "replace", "path": "/min_node_count", "value": 1}], V19)
    assert status == 404

    status, body = await patch("default-worker", [
        {"op": "replace", "path": "/min_node_count", "value": 1},
        {"op": "replace", "path": "/max_node_count", "value": 4},
        {"op": "add", "path": "/node_labels", "value": {"tier": "general"}},
    ], V114)
    assert status == 202, body
    assert (body["min_node_count"], body["max_node_count"], body["node_labels"]) == (1, 4, {"tier": "general"})
    status, body = await patch("default-worker", [{"op": "remove", "path": "/max_node_count"}], V19)
    assert status == 202 and body["max_node_count"] is None and body["min_node_count"] == 1
    _, shown, _ = await demo.call("GET", f"{url}/default-worker", headers=V114)
    assert shown["node_labels"] == {"tier": "general"} and shown["max_node_count"] is None
    # bounds and labels need no server change: the cluster stays as it was
    assert await cluster_status(demo, cid, "CREATE_COMPLETE")


async def test_resize_rules(api: RunningApi, demo: Client, template: dict[str, Any]) -> None:
    cid, pid = await ready_cluster(api, demo, template)
    resize = f"/v1/clusters/{cid}/actions/resize"
    url = f"/v1/clusters/{cid}/nodegroups"
    status, body, _ = await demo.call("POST", resize, {"node_count": 3, "nodegroup": "default-master"},
                                      headers=V19)
    assert status == 400 and "master" in detail(body)
    status, body, _ = await demo.call("POST", resize, {"node_count": 3, "nodegroup": "no-such"}, headers=V19)
    assert status == 404 and "no-such" in detail(body)
    status, body, _ = await demo.call("POST", resize, {"node_count": 3, "nodes_to_remove": "srv-1"}, headers=V19)
    assert status == 400 and "nodes_to_remove" in detail(body)
    status, body, _ = await demo.call("POST", resize, {"node_count": 3, "bogus": 1}, headers=V19)
    assert status == 400

    # NGResizeOutBounds is 400 (not NodeGroupInvalidInput's 409)
    status, body, _ = await demo.call("PATCH", f"{url}/default-worker", [
        {"op": "replace", "path": "/min_node_count", "value": 1},
        {"op": "replace", "path": "/max_node_count", "value": 3}], headers=V19)
    assert status == 202, body
    for count in (4, 0):
        status, body, _ = await demo.call("POST", resize, {"node_count": count}, headers=mv("1.10"))
        assert status == 400, body
        assert detail(body) == ("Resizing default-worker outside the allowed range: min_node_count = 1, "
                                "max_node_count = 3")
    assert await cluster_status(demo, cid, "CREATE_COMPLETE")

    # an unknown node in nodes_to_remove is accepted as Magnum does (the driver removes the servers it has;
    # Cove's provisioner ignores names it does not know), openstacksdk's null too
    status, body, _ = await demo.call("POST", resize, {"node_count": 3, "nodes_to_remove": ["no-such-server"]},
                                      headers=V19)
    assert status == 202 and body == {"uuid": cid}
    cluster = await cluster_status(demo, cid, "UPDATE_IN_PROGRESS")
    assert cluster is not None and cluster["node_count"] == 3
    _, ng, _ = await demo.call("GET", f"{url}/default-worker", headers=V19)
    assert ng["status"] == "UPDATE_IN_PROGRESS" and ng["node_count"] == 3
    # allowed again while UPDATE_IN_PROGRESS (Magnum's autoscaler case), by name of the cluster
    _, shown, _ = await demo.call("GET", f"/v1/clusters/{cid}")
    status, body, _ = await demo.call("POST", f"/v1/clusters/{shown['name']}/actions/resize",
                                      {"node_count": 2, "nodes_to_remove": None, "nodegroup": ng["uuid"]},
                                      headers=V19)
    assert status == 202, body
    await settle(api, demo, cid, pid, {"default-worker": 2})
    _, ng, _ = await demo.call("GET", f"{url}/default-worker", headers=V19)
    assert ng["status"] == "UPDATE_COMPLETE" and ng["node_count"] == 2
    viewer = Client(api.url, await user_token(api.devcloud, "viewer", "viewer-pass", "demo"))
    status, body, _ = await viewer.call("POST", resize, {"node_count": 3}, headers=V19)
    assert status == 403 and "cluster:resize" in detail(body)


async def test_delete_rules(api: RunningApi, demo: Client, template: dict[str, Any]) -> None:
    cid, pid = await ready_cluster(api, demo, template)
    url = f"/v1/clusters/{cid}/nodegroups"
    for name in ("default-worker", "default-master"):
        status, body, _ = await demo.call("DELETE", f"{url}/{name}", headers=V19)
        assert status == 400 and "default" in detail(body), body
    assert (await demo.call("DELETE", f"{url}/no-such", headers=V19))[0] == 404
    status, ng, _ = await demo.call("POST", url, {"name": "spare", "node_count": 2}, headers=V19)
    assert status == 202, ng
    await settle(api, demo, cid, pid, {"default-worker": 2, "spare": 2})
    # upgrade: a non-default group only to the cluster's current template (409), unknown names 404
    status, newer, _ = await demo.call("POST", "/v1/clustertemplates", {
        "name": f"ng2-{uuid.uuid4().hex[:6]}", "coe": "kubernetes", "image_id": "ubuntu-22.04"})
    assert status == 201, newer
    upgrade = f"/v1/clusters/{cid}/actions/upgrade"
    status, body, _ = await demo.call("POST", upgrade, {"cluster_template": newer["uuid"], "nodegroup": "spare"},
                                      headers=V19)
    assert status == 409 and "non-default" in detail(body)
    for req in ({"cluster_template": newer["uuid"], "nodegroup": "no-such"}, {"cluster_template": "no-such"}):
        assert (await demo.call("POST", upgrade, req, headers=V19))[0] == 404, req
    assert await cluster_status(demo, cid, "UPDATE_COMPLETE")
    # a non-default group of another cluster is not this cluster's
    other, _ = await ready_cluster(api, demo, template)
    assert (await demo.call("DELETE", f"/v1/clusters/{other}/nodegroups/{ng['uuid']}", headers=V19))[0] == 404
    viewer = Client(api.url, await user_token(api.devcloud, "viewer", "viewer-pass", "demo"))
    assert (await viewer.call("DELETE", f"{url}/spare", headers=V19))[0] == 403
    alt = Client(api.url, await user_token(api.devcloud, "alt", "alt-pass", "alt"))
    assert (await alt.call("DELETE", f"{url}/spare", headers=V19))[0] == 404

    status, _, _ = await demo.call("DELETE", f"{url}/{ng['uuid']}", headers=V19)
    assert status == 204
    _, shown, _ = await demo.call("GET", f"{url}/spare", headers=V19)
    assert shown["status"] == "DELETE_IN_PROGRESS"
    cluster = await cluster_status(demo, cid, "UPDATE_IN_PROGRESS")
    assert cluster is not None and cluster["node_count"] == 2  # the group being deleted no longer counts
    assert (await demo.call("DELETE", f"{url}/spare", headers=V19))[0] == 204  # already going: no new event
    await settle(api, demo, cid, pid, {"default-worker": 2})
    assert (await demo.call("GET", f"{url}/spare", headers=V19))[0] == 404
