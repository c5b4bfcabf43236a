"""Cluster templates and clusters in full (issue 4, part A).

Pure rules first (JSON-patch, cluster PATCH, template PATCH), then the API in-process against real NATS,
PostgreSQL and the devcloud, driven with python-magnumclient (keystoneauth session), openstacksdk's
container_infrastructure_management proxy and raw HTTP for what clients send that their libraries hide
(Terraform's string node_count, Horizon's boolean labels, openstacksdk's nulls). Other services are not
running: the scheduler's and provisioner's facts are published by the test where needed.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3
from magnumclient import exceptions as mexc
from magnumclient.client import Client as MagnumClient
from magnumclient.common.utils import args_array_to_patch

from proto.events import ClusterAdmitted, ClusterCreateCompleted, ClusterTemplate
from services.api.errors import ApiError
from services.api.microversion import Microversion
from services.api.patch import (
    TEMPLATE_INTERNAL,
    TEMPLATE_NON_REMOVABLE,
    apply_patch,
    parse_patch,
)
from services.api.resources.clusters import cluster_patch
from services.api.resources.clustertemplates import patched_template
from tests.api.conftest import RunningApi, user_token
from tests.api.test_api_integration import LATEST, Client, publish
from tests.conftest import wait_for

V1_1, V1_9, V1_10, V1_14 = Microversion(1, 1), Microversion(1, 9), Microversion(1, 10), Microversion(1, 14)


# --------------------------------------------------------------------------- pure rules


def _tpl_patch(doc: dict[str, Any], body: Any) -> dict[str, Any]:
    return apply_patch(doc, parse_patch(body, internal=TEMPLATE_INTERNAL, non_removable=TEMPLATE_NON_REMOVABLE))


def _status_of(fn: Any, *args: Any) -> tuple[int, str]:
    with pytest.raises(ApiError) as info:
        fn(*args)
    return info.value.status, info.value.detail


def test_json_patch_rules() -> None:
    doc = {"name": "a", "labels": {"x": "1"}, "flavor_id": None, "coe": "kubernetes", "hidden": False}
    assert _status_of(_tpl_patch, doc, [{"op": "replace", "path": "/uuid", "value": "u"}]) == (
        400, "'/uuid' is an internal attribute and can not be updated")
    assert _status_of(_tpl_patch, doc, [{"op": "remove", "path": "/coe"}]) == (
        400, "'/coe' is a mandatory attribute and can not be removed")
    status, detail = _status_of(_tpl_patch, doc, [{"op": "add", "path": "/name", "value": "b"}])
    assert status == 400 and "please use 'replace'" in detail
    status, detail = _status_of(_tpl_patch, doc, [{"op": "add", "path": "/bogus", "value": "b"}])
    assert status == 400 and "not allowed" in detail
    status, detail = _status_of(_tpl_patch, doc, [{"op": "replace", "path": "/bogus", "value": "b"}])
    assert status == 400 and detail.startswith("Couldn't apply patch")
    assert _status_of(_tpl_patch, doc, [{"op": "move", "path": "/name", "value": "b"}])[0] == 400
    assert _status_of(_tpl_patch, doc, [{"op": "replace", "path": "name", "value": "b"}])[0] == 400
    assert _status_of(_tpl_patch, doc, [{"op": "replace", "path": "/name"}]) == (
        400, "'add' and 'replace' operations needs value")
    # add on a null attribute is fine; remove sets null; nested label add/remove
    out = _tpl_patch(doc, [
        {"op": "add", "path": "/flavor_id", "value": "m1.small"},
        {"op": "add", "path": "/labels/y", "value": "2"},
        {"op": "remove", "path": "/labels/x"},
        {"op": "remove", "path": "/name"},
    ])
    assert out["flavor_id"] == "m1.small" and out["labels"] == {"y": "2"} and out["name"] is None
    assert doc["labels"] == {"x": "1"}, "the source document is never changed"
    # magnumclient sends replace /labels as str(dict)
    out = _tpl_patch(doc, args_array_to_patch("replace", ["labels=a=b,c=d"]))
    assert out["labels"] == {"a": "b", "c": "d"}
    status, detail = _status_of(_tpl_patch, doc, [{"op": "replace", "path": "/labels", "value": "{oops"}])
    assert status == 400 and "Couldn't apply patch" in detail


def test_cluster_patch_rules() -> None:
    doc = {"name": "c", "node_count": 2, "health_status": None, "health_status_reason": {}, "status": "X",
           "labels": {}}
    # Terraform's string node_count
    assert cluster_patch(doc, [{"op": "replace", "path": "/node_count", "value": "3"}], V1_1) == {"node_count": 3}
    assert cluster_patch(doc, [{"op": "replace", "path": "/node_count", "value": 2}], V1_1) == {}
    assert _status_of(cluster_patch, doc, [{"op": "replace", "path": "/name", "value": "d"}], V1_1) == (
        400, "cannot change cluster property(ies) name.")
    assert _status_of(cluster_patch, doc, [{"op": "replace", "path": "/api_address", "value": "x"}], V1_1)[0] == 400
    assert _status_of(cluster_patch, doc, [{"op": "replace", "path": "/node_count", "value": 0}], V1_9)[0] == 400
    assert cluster_patch(doc, [{"op": "replace", "path": "/node_count", "value": 0}], V1_10) == {"node_count": 0}
    assert _status_of(cluster_patch, doc, [{"op": "replace", "path": "/node_count", "value": -1}], V1_14)[0] == 400
    assert _status_of(cluster_patch, doc, [{"op": "replace", "path": "/node_count", "value": "x"}], V1_14)[0] == 400
    patch = args_array_to_patch("replace", ["health_status=UNHEALTHY", "health_status_reason=api=down"])
    assert cluster_patch(doc, patch, V1_14) == {
        "health_status": "UNHEALTHY", "health_status_reason": {"api": "down"}}
    assert _status_of(cluster_patch, doc, [{"op": "replace", "path": "/health_status", "value": "SICK"}],
                      V1_14)[0] == 400


MOVE = {"op": "move", "from": "/uuid", "path": "/id"}  # what openstacksdk's update_cluster(<uuid>, ...) prepends


def test_openstacksdk_id_alias_diff_is_accepted_and_nothing_else() -> None:
    """openstacksdk sends [move /uuid->/id, add /<attr>] for update_cluster(<uuid>, attr=...): the move is a
    no-op and, in such a patch only, a root add on an existing attribute replaces it (RFC 6902)."""
    doc = {"name": "a", "labels": {"x": "1"}, "flavor_id": None, "coe": "kubernetes", "hidden": False}
    assert _tpl_patch(doc, [MOVE, {"op": "add", "path": "/name", "value": "b"}])["name"] == "b"
    assert _tpl_patch(doc, [{"op": "add", "path": "/flavor_id", "value": "m1.small"}, MOVE])["flavor_id"] == \
        "m1.small", "the sdk sorts by path: its move need not come first"
    assert _tpl_patch(doc, [MOVE]) == doc
    # without the sdk's move, Magnum's rule holds
    status, detail = _status_of(_tpl_patch, doc, [{"op": "add", "path": "/name", "value": "b"}])
    assert status == 400 and "please use 'replace'" in detail
    # any other move is still refused, and so is an add of an unknown attribute in an sdk patch
    for other in ({"op": "move", "from": "/name", "path": "/id"}, {"op": "move", "from": "/uuid", "path": "/name"},
                  {**MOVE, "value": 1}, {"op": "copy", "from": "/uuid", "path": "/id"}):
        assert _status_of(_tpl_patch, doc, [other, {"op": "replace", "path": "/name", "value": "b"}])[0] == 400, other
    status, detail = _status_of(_tpl_patch, doc, [MOVE, {"op": "add", "path": "/bogus", "value": "b"}])
    assert status == 400 and "not allowed" in detail
    # the cluster rules: resize through the sdk's diff; the uuid itself still cannot change
    cluster = {"uuid": "u", "name": "c", "node_count": 2, "health_status": None, "health_status_reason": {},
               "status": "X", "labels": {}}
    assert cluster_patch(cluster, [MOVE, {"op": "add", "path": "/node_count", "value": 3}], V1_1) == {"node_count": 3}
    assert _status_of(cluster_patch, cluster, [MOVE, {"op": "replace", "path": "/uuid", "value": "v"}], V1_1)[0] == 400


def test_integers_beyond_sql_integer_columns_are_refused() -> None:
    """Regression: node_count (or create_timeout, docker_volume_size) of 2**31 was accepted with a 202 and
    published as an event the API's projection could not store (integer columns): the cluster never appeared."""
    from services.api.validation import SQL_INT_MAX, cluster_fields

    latest = Microversion(1, 14)
    base = {"cluster_template_id": "t"}
    assert cluster_fields({**base, "node_count": SQL_INT_MAX}, latest)["node_count"] == SQL_INT_MAX
    for field in ("node_count", "master_count", "create_timeout", "docker_volume_size"):
        for value in (SQL_INT_MAX + 1, str(2**70)):
            with pytest.raises(ApiError) as err:
                cluster_fields({**base, field: value}, latest)
            assert err.value.status == 400 and "lower or equal to 2147483647" in err.value.detail, (field, value)


def test_template_patch_validates_like_create() -> None:
    t = ClusterTemplate(uuid="u", project_id="p", user_id="x", image_id="fedora-coreos", name="t",
                        network_driver="flannel", labels={"a": "1"}, created_at=datetime.now(UTC))
    new, diff = patched_template(t, [{"op": "replace", "path": "/docker_volume_size", "value": "10"},
                                     {"op": "replace", "path": "/master_lb_enabled", "value": "True"}],
                                 now=datetime.now(UTC))
    assert diff == {"docker_volume_size", "master_lb_enabled"}
    assert new.docker_volume_size == 10 and new.master_lb_enabled is True and new.labels == {"a": "1"}
    same, diff = patched_template(t, [{"op": "replace", "path": "/name", "value": "t"}], now=datetime.now(UTC))
    assert not diff and same is t
    for bad in ({"op": "replace", "path": "/network_driver", "value": "weave"},
                {"op": "replace", "path": "/apiserver_port", "value": 80},
                {"op": "replace", "path": "/server_type", "value": "vm2"},
                {"op": "replace", "path": "/dns_nameserver", "value": "not-an-ip"}):
        with pytest.raises(ApiError) as info:
            patched_template(t, [bad], now=datetime.now(UTC))
        assert info.value.status == 400, bad


# --------------------------------------------------------------------------- through the real clients


def magnum(api: RunningApi, user: str, password: str, project: str, version: str = "latest") -> Any:
    auth = v3.Password(auth_url=f"{api.devcloud.url}/identity/v3", username=user, password=password,
                       project_name=project, user_domain_name="Default", project_domain_name="Default")
    return MagnumClient("1", session=ks_session.Session(auth=auth), endpoint_override=f"{api.url}/v1",
                        api_version=version)


def sdk(api: RunningApi, user: str, password: str, project: str) -> Any:
    import openstack

    return openstack.connect(
        auth_url=f"{api.devcloud.url}/identity/v3", username=user, password=password, project_name=project,
        user_domain_name="Default", project_domain_name="Default",
        container_infrastructure_management_endpoint_override=f"{api.url}/v1",
    )


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
async def clients(api: RunningApi) -> dict[str, Client]:
    out: dict[str, Client] = {}
    for key, (user, pw, project) in {
        "demo": ("demo", "demo-pass", "demo"), "demo2": ("demo2", "demo2-pass", "demo"),
        "viewer": ("viewer", "viewer-pass", "demo"), "alt": ("alt", "alt-pass", "alt"),
        "admin": ("admin", "admin-pass", "admin"),
    }.items():
        out[key] = Client(api.url, await user_token(api.devcloud, user, pw, project))
    return out


@pytest.mark.integration
async def test_templates_with_magnumclient(api: RunningApi, clients: dict[str, Client]) -> None:
    mc = magnum(api, "demo", "demo-pass", "demo")
    name = _name("mc")
    t = await asyncio.to_thread(
        mc.cluster_templates.create, name=name, coe="kubernetes", image_id="fedora-coreos",
        external_network_id="public", flavor_id="m1.small", labels={"kube_tag": "v1.30.1"}, docker_volume_size=5)
    assert t.uuid and t.cluster_distro == "fedora-coreos" and t.public is False and t.hidden is False
    shown = await asyncio.to_thread(mc.cluster_templates.get, name)
    assert shown.uuid == t.uuid and shown.labels == {"kube_tag": "v1.30.1"}
    # `openstack coe cluster template update <t> replace labels=... name=...` sends a literal-string dict
    patch = args_array_to_patch("replace", ["labels=kube_tag=v1.31.0,auto_healing_enabled=true",
                                            "docker_volume_size=10"])
    updated = await asyncio.to_thread(mc.cluster_templates.update, t.uuid, patch)
    assert updated.labels == {"kube_tag": "v1.31.0", "auto_healing_enabled": "true"}
    assert updated.docker_volume_size == 10 and updated.updated_at
    removed = await asyncio.to_thread(mc.cluster_templates.update, t.uuid, args_array_to_patch("remove",
                                                                                               ["docker_volume_size"]))
    assert removed.docker_volume_size is None
    with pytest.raises(mexc.BadRequest):
        await asyncio.to_thread(mc.cluster_templates.update, t.uuid, args_array_to_patch("add", ["flavor_id=x"]))
    with pytest.raises(mexc.BadRequest):
        await asyncio.to_thread(mc.cluster_templates.update, t.uuid, args_array_to_patch("remove", ["image_id"]))
    # publishing is admin-only
    with pytest.raises(mexc.Forbidden):
        await asyncio.to_thread(mc.cluster_templates.update, t.uuid, args_array_to_patch("replace", ["public=True"]))
    listed = await asyncio.to_thread(mc.cluster_templates.list)
    assert t.uuid in [x.uuid for x in listed]
    # another project neither sees nor changes it; a reader cannot change it
    assert (await clients["alt"].call("GET", f"/v1/clustertemplates/{t.uuid}"))[0] == 404
    assert (await clients["alt"].call("PATCH", f"/v1/clustertemplates/{t.uuid}",
                                      [{"op": "replace", "path": "/name", "value": "x"}]))[0] == 404
    status, body, _ = await clients["viewer"].call("PATCH", f"/v1/clustertemplates/{t.uuid}",
                                                   [{"op": "replace", "path": "/name", "value": "x"}])
    assert status == 403 and "clustertemplate:update" in body["errors"][0]["detail"]
    await asyncio.to_thread(mc.cluster_templates.delete, t.uuid)
    with pytest.raises(mexc.NotFound):
        await asyncio.to_thread(mc.cluster_templates.get, t.uuid)


@pytest.mark.integration
async def test_public_and_hidden_templates(api: RunningApi, clients: dict[str, Client]) -> None:
    admin, demo, alt = clients["admin"], clients["demo"], clients["alt"]
    status, t, _ = await admin.call("POST", "/v1/clustertemplates", {
        "name": _name("pub"), "coe": "kubernetes", "image_id": "fedora-coreos", "public": True})
    assert status == 201 and t["public"] is True
    tid = t["uuid"]
    # public: every project sees it, lists it, and may build on it; only the owner's project (or admin) changes it
    for client in (demo, alt):
        assert (await client.call("GET", f"/v1/clustertemplates/{tid}"))[0] == 200
        _, body, _ = await client.call("GET", "/v1/clustertemplates")
        assert tid in [x["uuid"] for x in body["clustertemplates"]]
    status, body, _ = await demo.call("PATCH", f"/v1/clustertemplates/{tid}",
                                      [{"op": "replace", "path": "/name", "value": "mine"}])
    assert status == 403
    assert (await demo.call("DELETE", f"/v1/clustertemplates/{tid}"))[0] == 403
    # hidden: gone for non-admins (404 show, not listed), 403 on cluster create; admins still see it
    status, body, _ = await admin.call("PATCH", f"/v1/clustertemplates/{tid}",
                                       [{"op": "replace", "path": "/hidden", "value": True}])
    assert status == 200 and body["hidden"] is True
    assert (await alt.call("GET", f"/v1/clustertemplates/{tid}"))[0] == 404
    _, body, _ = await alt.call("GET", "/v1/clustertemplates/detail")
    assert tid not in [x["uuid"] for x in body["clustertemplates"]]
    _, body, _ = await admin.call("GET", "/v1/clustertemplates")
    assert tid in [x["uuid"] for x in body["clustertemplates"]]
    status, body, _ = await alt.call("POST", "/v1/clusters", {"cluster_template_id": tid}, headers=LATEST)
    assert status == 403, body
    # a non-admin can't publish or hide their own template either (ClusterTemplatePublishDenied)
    status, own, _ = await demo.call("POST", "/v1/clustertemplates", {"coe": "kubernetes", "image_id": "fedora-coreos"})
    assert status == 201
    status, body, _ = await demo.call("PATCH", f"/v1/clustertemplates/{own['uuid']}",
                                      [{"op": "replace", "path": "/hidden", "value": "true"}])
    assert status == 403 and body["errors"][0]["detail"] == (
        "Not authorized to set public or hidden flag for cluster template.")
    assert (await admin.call("DELETE", f"/v1/clustertemplates/{tid}"))[0] == 204
    assert (await demo.call("DELETE", f"/v1/clustertemplates/{own['uuid']}"))[0] == 204


async def _complete(api: RunningApi, client: Client, cid: str) -> dict[str, Any]:
    _, body, _ = await client.call("GET", f"/v1/clusters/{cid}")
    pid = body["project_id"]
    await publish(api, "scheduler", cid, pid, ClusterAdmitted(uuid=cid, project_id=pid, master_count=1,
                                                              node_count=body["node_count"]))
    await publish(api, "provisioner", cid, pid, ClusterCreateCompleted(
        uuid=cid, project_id=pid, api_address="https://10.0.0.9:6443"))

    async def complete() -> dict[str, Any] | None:
        _, b, _ = await client.call("GET", f"/v1/clusters/{cid}", headers=LATEST)
        return b if b["status"] == "CREATE_COMPLETE" else None

    return await wait_for(complete, timeout=10, message="CREATE_COMPLETE")


@pytest.mark.integration
async def test_clusters_with_client_quirks_and_patch(api: RunningApi, clients: dict[str, Client]) -> None:
    demo, demo2, viewer = clients["demo"], clients["demo2"], clients["viewer"]
    status, t, _ = await demo.call("POST", "/v1/clustertemplates", {
        "name": _name("ct"), "coe": "kubernetes", "image_id": "fedora-coreos", "flavor_id": "m1.small",
        "labels": {"kube_tag": "v1.30.1", "boot_volume_size": "10"}})
    assert status == 201, t
    # Horizon: boolean/int label values; Terraform: string node_count; openstacksdk: explicit nulls
    name = _name("q")
    status, body, _ = await demo.call("POST", "/v1/clusters", {
        "name": name, "cluster_template_id": t["name"], "node_count": "2", "master_count": 1,
        "labels": {"auto_healing_enabled": True, "max_node_count": 5, "kube_tag": "v1.31.0"},
        "merge_labels": True, "discovery_url": None, "keypair": None, "docker_volume_size": None,
        "create_timeout": None, "master_flavor_id": None, "flavor_id": None}, headers=LATEST)
    assert status == 202, body
    cid = body["uuid"]
    status, c, _ = await demo.call("GET", f"/v1/clusters/{name}", headers=LATEST)
    assert status == 200 and c["node_count"] == 2 and c["merge_labels"] is True and c["create_timeout"] == 60
    assert c["labels"] == {"auto_healing_enabled": "True", "max_node_count": "5", "kube_tag": "v1.31.0",
                           "boot_volume_size": "10"}
    assert c["labels_added"] == {"auto_healing_enabled": "True", "max_node_count": "5"}
    assert c["labels_overridden"] == {"kube_tag": "v1.30.1"} and c["labels_skipped"] == {}
    assert "cluster_id" in c and "stack_id" not in c
    _, c12, _ = await demo.call("GET", f"/v1/clusters/{cid}", headers={"OpenStack-API-Version": "container-infra 1.12"})
    assert "stack_id" in c12 and "cluster_id" not in c12
    # node_count 0 only from 1.10
    status, _, _ = await demo.call("POST", "/v1/clusters", {"cluster_template_id": t["uuid"], "node_count": 0},
                                   headers={"OpenStack-API-Version": "container-infra 1.9"})
    assert status == 400
    # resizing before the cluster is stable is refused; internal and unchangeable paths too
    patch = [{"op": "replace", "path": "/node_count", "value": "3"}]
    status, body, _ = await demo.call("PATCH", f"/v1/clusters/{cid}", patch, headers=LATEST)
    assert status == 400 and "CREATE_IN_PROGRESS" in body["errors"][0]["detail"]
    status, body, _ = await demo.call("PATCH", f"/v1/clusters/{cid}",
                                      [{"op": "replace", "path": "/name", "value": "x"}], headers=LATEST)
    assert status == 400 and body["errors"][0]["detail"] == "cannot change cluster property(ies) name."
    await _complete(api, demo, cid)
    # ?rollback only from 1.3; a reader can't update
    status, _, _ = await demo.call("PATCH", f"/v1/clusters/{cid}?rollback=True", patch,
                                   headers={"OpenStack-API-Version": "container-infra 1.2"})
    assert status == 400
    assert (await viewer.call("PATCH", f"/v1/clusters/{cid}", patch, headers=LATEST))[0] == 403
    # magnumclient's `coe cluster update <c> replace node_count=3` with rollback
    mc = magnum(api, "demo", "demo-pass", "demo")
    await asyncio.to_thread(mc.clusters.update, name, args_array_to_patch("replace", ["node_count=3"]), True)
    status, c, _ = await demo.call("GET", f"/v1/clusters/{cid}", headers=LATEST)
    assert c["status"] == "UPDATE_IN_PROGRESS" and c["node_count"] == 3
    # health: the owner (or admin/trustee) may report it; another member of the project may not
    health = args_array_to_patch("replace", ["health_status=UNHEALTHY", "health_status_reason=api=timeout"])
    status, body, _ = await demo2.call("PATCH", f"/v1/clusters/{cid}", health, headers=LATEST)
    assert status == 403 and "update_health_status" in body["errors"][0]["detail"]
    status, body, _ = await demo.call("PATCH", f"/v1/clusters/{cid}", health, headers=LATEST)
    assert status == 202 and body == {"uuid": cid}
    _, c, _ = await demo.call("GET", f"/v1/clusters/{cid}", headers=LATEST)
    assert c["health_status"] == "UNHEALTHY" and c["health_status_reason"] == {"api": "timeout"}
    assert c["status"] == "UPDATE_IN_PROGRESS", "a health-only patch does not change the status"
    # the template now referenced: only name/public/hidden may change
    status, body, _ = await demo.call("PATCH", f"/v1/clustertemplates/{t['uuid']}",
                                      [{"op": "replace", "path": "/flavor_id", "value": "m1.medium"}])
    assert status == 400 and "referenced by one or multiple clusters" in body["errors"][0]["detail"]
    new_name = _name("renamed")
    status, body, _ = await demo.call("PATCH", f"/v1/clustertemplates/{t['uuid']}",
                                      [{"op": "replace", "path": "/name", "value": new_name}])
    assert status == 200 and body["name"] == new_name
    # names: duplicate cluster names make the name ambiguous (409), the uuid still works
    status, body, _ = await demo.call("POST", "/v1/clusters", {"name": name, "cluster_template_id": t["uuid"]})
    assert status == 202
    status, body, _ = await demo.call("GET", f"/v1/clusters/{name}")
    assert status == 409 and body["errors"][0]["detail"] == (
        "Multiple clusters exist with same name. Please use the cluster uuid instead.")
    assert (await demo.call("GET", f"/v1/clusters/{cid}"))[0] == 200


@pytest.mark.integration
async def test_openstacksdk_proxy(api: RunningApi, clients: dict[str, Client]) -> None:
    # endpoint discovery is a blocking HTTP call: keep it off the loop the API runs on
    coe = await asyncio.to_thread(lambda: sdk(api, "demo", "demo-pass", "demo").container_infrastructure_management)
    name = _name("sdk")
    t = await asyncio.to_thread(coe.create_cluster_template, name=name, coe="kubernetes", image_id="fedora-coreos",
                                flavor_id="m1.small", labels={"kube_tag": "v1.30.1"})
    assert t.id and t.name == name
    got = await asyncio.to_thread(coe.get_cluster_template, t.id)
    assert got.labels == {"kube_tag": "v1.30.1"}
    # update by uuid sends [move /uuid->/id, add /name]: Magnum refuses it, Cove takes it (services/api/patch.py)
    renamed = await asyncio.to_thread(coe.update_cluster_template, t.id, name=f"{name}-r")
    assert renamed.name == f"{name}-r"
    assert (await asyncio.to_thread(coe.get_cluster_template, t.id)).name == f"{name}-r"
    templates = await asyncio.to_thread(lambda: [x.id for x in coe.cluster_templates()])
    assert t.id in templates
    cluster = await asyncio.to_thread(coe.create_cluster, name=_name("sdkc"), cluster_template_id=t.id,
                                      node_count=1, master_count=1)
    assert cluster.id
    shown = await asyncio.to_thread(coe.get_cluster, cluster.id)
    assert shown.status == "CREATE_IN_PROGRESS" and shown.cluster_template_id == t.id
    listed = await asyncio.to_thread(lambda: [c.id for c in coe.clusters()])
    assert cluster.id in listed
    await asyncio.to_thread(coe.delete_cluster, cluster.id)
    _, body, _ = await clients["demo"].call("GET", f"/v1/clusters/{cluster.id}")
    assert body["status"] == "DELETE_IN_PROGRESS"
