"""The API against a real nats-server, PostgreSQL and the devcloud's identity, image and compute services.

The other services are not running here: where a test needs the scheduler's or provisioner's answer it
publishes that event itself, so what is tested is the API's own projection and HTTP behaviour.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest

from proto import subjects
from proto.envelope import new_envelope
from proto.events import (
    ClusterAdmitted,
    ClusterCreateCompleted,
    ClusterCreateFailed,
    ClusterCreateStarted,
    ClusterDeleteCompleted,
    ClusterRejected,
    Event,
    NodeBecameActive,
    NodeCreated,
)
from tests.api.conftest import RunningApi, user_token
from tests.conftest import stream_events, wait_for

pytestmark = pytest.mark.integration

LATEST = {"OpenStack-API-Version": "container-infra latest"}


class Client:
    def __init__(self, base: str, token: str | None) -> None:
        self.base = base
        self.token = token

    async def call(self, method: str, path: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        h = {**({"X-Auth-Token": self.token} if self.token else {}), **(headers or {})}
        async with aiohttp.ClientSession() as s, s.request(method, self.base + path, json=body, headers=h) as r:
            text = await r.text()
            data = None
            if text:
                try:
                    data = await r.json(content_type=None)
                except ValueError:
                    data = text
            return r.status, data, dict(r.headers)


async def publish(api: RunningApi, producer: str, cluster_id: str, project_id: str, payload: Event) -> None:
    env = new_envelope(payload, project_id=project_id, cluster_id=cluster_id)
    await api.bus.publish(subjects.cluster_events(producer, cluster_id), env)


@pytest.fixture(scope="module")
async def demo(api: RunningApi) -> Client:
    return Client(api.url, await user_token(api.devcloud, "demo", "demo-pass", "demo"))


@pytest.fixture(scope="module")
async def template(demo: Client) -> dict[str, Any]:
    status, body, headers = await demo.call("POST", "/v1/clustertemplates", {
        "name": f"k8s-{uuid.uuid4().hex[:6]}", "coe": "kubernetes", "image_id": "fedora-coreos",
        "flavor_id": "m1.small", "master_flavor_id": "m1.medium", "external_network_id": "public",
        "labels": {"kube_tag": "v1.30.1"},
    })
    assert status == 201, body
    assert headers["Location"].endswith(f"/v1/clustertemplates/{body['uuid']}")
    return dict(body)


async def test_version_documents_need_no_auth(api: RunningApi) -> None:
    anon = Client(api.url, None)
    status, body, headers = await anon.call("GET", "/")
    assert status == 200 and body["versions"][0]["max_version"] == "1.14"
    assert headers["X-Openstack-Request-Id"].startswith("req-")
    status, body, headers = await anon.call("GET", "/v1")
    assert status == 200 and body["id"] == "v1" and "clusters" in body
    assert headers["OpenStack-API-Version"] == "container-infra 1.1"


async def test_no_or_bad_token_is_401_in_magnum_shape(api: RunningApi) -> None:
    for token in (None, "not-a-token"):
        status, body, headers = await Client(api.url, token).call("GET", "/v1/clusters")
        assert status == 401
        err = body["errors"][0]
        assert err["status"] == 401 and err["code"] == "client"
        assert err["request_id"] == headers["X-Openstack-Request-Id"]


async def test_revoked_token_stops_working(api: RunningApi) -> None:
    token = await user_token(api.devcloud, "demo", "demo-pass", "demo")
    client = Client(api.url, token)
    assert (await client.call("GET", "/v1/clusters"))[0] == 200
    async with aiohttp.ClientSession() as s, s.delete(
        f"{api.devcloud.url}/identity/v3/auth/tokens", headers={"X-Auth-Token": token, "X-Subject-Token": token}
    ) as r:
        assert r.status == 204
    # The cache TTL here is 1 s: within a short deadline the token is refused.
    await wait_for(lambda: _status_is(client, "/v1/clusters", 401), timeout=5, message="revoked token refused")


async def _status_is(client: Client, path: str, expected: int) -> bool:
    return (await client.call("GET", path))[0] == expected


async def test_microversion_outside_range_is_406(demo: Client) -> None:
    status, body, headers = await demo.call("GET", "/v1/clusters", headers={"OpenStack-API-Version":
                                                                            "container-infra 1.99"})
    assert status == 406
    assert body["errors"][0]["code"] == "magnum.microversion-unsupported"
    status, _, headers = await demo.call("GET", "/v1/clusters", headers=LATEST)
    assert status == 200 and headers["OpenStack-API-Version"] == "container-infra 1.14"


async def test_template_crud_and_validation(demo: Client, template: dict[str, Any]) -> None:
    assert template["cluster_distro"] == "fedora-coreos" and template["network_driver"] == "flannel"
    # read-your-writes: visible immediately, by uuid and by name
    for ident in (template["uuid"], template["name"]):
        status, body, _ = await demo.call("GET", f"/v1/clustertemplates/{ident}")
        assert status == 200 and body["uuid"] == template["uuid"]
    status, body, _ = await demo.call("GET", "/v1/clustertemplates")
    assert template["uuid"] in [t["uuid"] for t in body["clustertemplates"]]
    bad = {"coe": "kubernetes", "image_id": "no-such-image"}
    status, body, _ = await demo.call("POST", "/v1/clustertemplates", bad)
    assert status == 400 and "no-such-image" in body["errors"][0]["detail"]
    status, body, _ = await demo.call("POST", "/v1/clustertemplates",
                                      {"coe": "kubernetes", "image_id": "fedora-coreos", "flavor_id": "m9.huge"})
    assert status == 400 and "m9.huge" in body["errors"][0]["detail"]
    status, body, _ = await demo.call("POST", "/v1/clustertemplates",
                                      {"coe": "kubernetes", "image_id": "fedora-coreos", "public": True})
    assert status == 403
    # create + delete a throwaway template
    status, body, _ = await demo.call("POST", "/v1/clustertemplates", {"coe": "kubernetes", "image_id": "ubuntu-22.04"})
    assert status == 201 and body["cluster_distro"] == "ubuntu"
    assert (await demo.call("DELETE", f"/v1/clustertemplates/{body['uuid']}"))[0] == 204
    assert (await demo.call("GET", f"/v1/clustertemplates/{body['uuid']}"))[0] == 404


async def test_other_project_and_reader(api: RunningApi, demo: Client, template: dict[str, Any]) -> None:
    alt = Client(api.url, await user_token(api.devcloud, "alt", "alt-pass", "alt"))
    status, body, _ = await alt.call("GET", f"/v1/clustertemplates/{template['uuid']}")
    assert status == 404
    viewer = Client(api.url, await user_token(api.devcloud, "viewer", "viewer-pass", "demo"))
    assert (await viewer.call("GET", f"/v1/clustertemplates/{template['uuid']}"))[0] == 200
    status, body, _ = await viewer.call("POST", "/v1/clusters", {"cluster_template_id": template["uuid"]})
    assert status == 403 and "cluster:create" in body["errors"][0]["detail"]


async def _create_cluster(client: Client, template: dict[str, Any], **extra: Any) -> str:
    status, body, _ = await client.call("POST", "/v1/clusters", {
        "name": f"c-{uuid.uuid4().hex[:6]}", "cluster_template_id": template["uuid"], "node_count": 2, **extra})
    assert status == 202, body
    return str(body["uuid"])


async def test_cluster_lifecycle_from_events(api: RunningApi, demo: Client, template: dict[str, Any]) -> None:
    cid = await _create_cluster(demo, template)
    status, body, _ = await demo.call("GET", f"/v1/clusters/{cid}", headers=LATEST)
    assert status == 200 and body["status"] == "CREATE_IN_PROGRESS"
    assert body["flavor_id"] == "m1.small" and body["master_flavor_id"] == "m1.medium"
    assert body["labels"] == {"kube_tag": "v1.30.1"} and "cluster_id" in body and "stack_id" not in body
    pid = body["project_id"]
    await publish(api, "scheduler", cid, pid, ClusterAdmitted(uuid=cid, project_id=pid, master_count=1, node_count=2))
    await publish(api, "provisioner", cid, pid, ClusterCreateStarted(uuid=cid, project_id=pid, stack_id="kube-abc"))
    await publish(api, "provisioner", cid, pid, NodeCreated(
        cluster_id=cid, project_id=pid, node_name="m0", role="master", server_id="s1", flavor_id="f",
        flavor_name="m1.medium", vcpus=2, ram_mb=4096, disk_gb=40))
    await publish(api, "provisioner", cid, pid, NodeBecameActive(
        cluster_id=cid, project_id=pid, server_id="s1", node_name="m0", role="master",
        addresses={"net": ["10.0.0.5"]}))
    await publish(api, "provisioner", cid, pid, ClusterCreateCompleted(
        uuid=cid, project_id=pid, api_address="https://10.0.0.5:6443", coe_version="v1.30.1"))

    async def complete() -> dict[str, Any] | None:
        _, b, _ = await demo.call("GET", f"/v1/clusters/{cid}")
        return b if b["status"] == "CREATE_COMPLETE" else None

    body = await wait_for(complete, timeout=10, message="CREATE_COMPLETE")
    assert body["api_address"] == "https://10.0.0.5:6443" and body["master_addresses"] == ["10.0.0.5"]
    assert body["stack_id"] == "kube-abc" and body["coe_version"] == "v1.30.1"
    # template referenced by a cluster cannot be deleted
    assert (await demo.call("DELETE", f"/v1/clustertemplates/{template['uuid']}"))[0] == 400
    # list shows the summary
    status, body, _ = await demo.call("GET", "/v1/clusters")
    summary = next(c for c in body["clusters"] if c["uuid"] == cid)
    assert summary["status"] == "CREATE_COMPLETE" and "api_address" not in summary
    # delete: DELETE_IN_PROGRESS at once, gone once the provisioner says so
    assert (await demo.call("DELETE", f"/v1/clusters/{cid}"))[0] == 204
    status, body, _ = await demo.call("GET", f"/v1/clusters/{cid}")
    assert body["status"] == "DELETE_IN_PROGRESS"
    await publish(api, "provisioner", cid, pid, ClusterDeleteCompleted(uuid=cid, project_id=pid))
    await wait_for(lambda: _status_is(demo, f"/v1/clusters/{cid}", 404), timeout=10, message="cluster gone")


async def test_quota_rejection_in_time_is_403(api: RunningApi, demo: Client, template: dict[str, Any]) -> None:
    """Answered 403 as Magnum answers, and then, as in Magnum, there is no such cluster: the API withdrew it."""
    refused: list[str] = []

    # Stand in for the scheduler: reject every ClusterCreateRequested we see, quickly.
    async def reject(msg: Any) -> None:
        from proto.envelope import decode
        from proto.events import ClusterCreateRequested

        env = decode(msg.data)
        if isinstance(env.payload, ClusterCreateRequested):
            p = env.payload
            refused.append(p.uuid)
            await publish(api, "scheduler", p.uuid, p.project_id, ClusterRejected(
                uuid=p.uuid, project_id=p.project_id,
                reason="You have reached the maximum clusters per project, 0. Please delete a cluster first."))

    sub = await api.bus.nc.subscribe(subjects.producer_events("api", "cluster"), cb=reject)
    try:
        status, body, _ = await demo.call("POST", "/v1/clusters", {"cluster_template_id": template["uuid"]})
    finally:
        await sub.unsubscribe()
    assert status == 403
    assert body["errors"][0]["detail"].startswith("You have reached the maximum clusters per project")
    [cid] = refused
    assert (await demo.call("GET", f"/v1/clusters/{cid}"))[0] == 404
    _, listed, _ = await demo.call("GET", "/v1/clusters")
    assert cid not in {c["uuid"] for c in listed["clusters"]}
    subject = subjects.cluster_events("api", cid)
    assert [e.type for e in await stream_events(api.bus, subject)] == ["ClusterCreateRequested", "ClusterWithdrawn"]


async def test_a_late_rejection_stays_visible_with_its_reason(
    api: RunningApi, demo: Client, template: dict[str, Any]
) -> None:
    """A rejection after the create was answered 202 is not withdrawn: the owner sees CREATE_FAILED and why."""
    cid = await _create_cluster(demo, template)
    _, body, _ = await demo.call("GET", f"/v1/clusters/{cid}")
    await publish(api, "scheduler", cid, body["project_id"], ClusterRejected(
        uuid=cid, project_id=body["project_id"], reason="Resource limit exceeded: late."))

    async def failed() -> dict[str, Any] | None:
        _, b, _ = await demo.call("GET", f"/v1/clusters/{cid}")
        return b if b["status"] == "CREATE_FAILED" else None

    shown = await wait_for(failed, timeout=10, message="CREATE_FAILED")
    assert shown["status_reason"] == "Resource limit exceeded: late."
    assert "ClusterWithdrawn" not in [e.type for e in await stream_events(api.bus, subjects.cluster_events("api", cid))]


async def test_failed_create_shows_reason_and_faults(api: RunningApi, demo: Client, template: dict[str, Any]) -> None:
    cid = await _create_cluster(demo, template)
    _, body, _ = await demo.call("GET", f"/v1/clusters/{cid}")
    pid = body["project_id"]
    await publish(api, "provisioner", cid, pid, ClusterCreateFailed(
        uuid=cid, project_id=pid, status_reason="Server m0 went to ERROR: No valid host was found."))

    async def failed() -> dict[str, Any] | None:
        _, b, _ = await demo.call("GET", f"/v1/clusters/{cid}")
        return b if b["status"] == "CREATE_FAILED" else None

    body = await wait_for(failed, timeout=10, message="CREATE_FAILED")
    assert "No valid host" in body["status_reason"] and body["faults"]


async def test_cluster_validation_and_paging(demo: Client, template: dict[str, Any]) -> None:
    status, body, _ = await demo.call("POST", "/v1/clusters", {"cluster_template_id": "nope"})
    assert status == 400  # missing template is 400 before 1.10
    status, body, _ = await demo.call("POST", "/v1/clusters", {"cluster_template_id": "nope"}, headers=LATEST)
    assert status == 404
    status, body, _ = await demo.call("POST", "/v1/clusters",
                                      {"cluster_template_id": template["uuid"], "master_count": 3})
    assert status == 400
    status, body, _ = await demo.call("POST", "/v1/clusters",
                                      {"cluster_template_id": template["uuid"], "keypair": "missing-key"})
    assert status == 404
    for _ in range(3):
        await _create_cluster(demo, template)
    status, body, _ = await demo.call("GET", "/v1/clusters?limit=2")
    assert len(body["clusters"]) == 2 and "marker=" in body["next"]
    seen = [c["uuid"] for c in body["clusters"]]
    marker = body["next"].split("marker=")[1]
    status, body, _ = await demo.call("GET", f"/v1/clusters?limit=2&marker={marker}")
    assert status == 200 and not set(seen) & {c["uuid"] for c in body["clusters"]}
    status, body, _ = await demo.call("GET", "/v1/clusters?sort_key=name&sort_dir=desc")
    names = [c["name"] for c in body["clusters"]]
    assert names == sorted(names, reverse=True)
    assert (await demo.call("GET", "/v1/clusters?sort_key=bogus"))[0] == 400
    assert (await demo.call("GET", "/v1/clusters?marker=no-such"))[0] == 400
