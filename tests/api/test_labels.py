"""The API refuses labels the Kubernetes driver would refuse (proto/labels.py): a 400 with Magnum's error body on
template create and update and on cluster create, before anything is published. Unknown labels pass through.

Runs the API in-process against a real nats-server, PostgreSQL and the devcloud (tests/api/conftest.py)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.api.conftest import RunningApi, user_token
from tests.api.test_api_integration import Client

pytestmark = pytest.mark.integration

LATEST = {"OpenStack-API-Version": "container-infra latest"}


@pytest.fixture(scope="module")
async def demo(api: RunningApi) -> Client:
    return Client(api.url, await user_token(api.devcloud, "demo", "demo-pass", "demo"))


def _template(labels: dict[str, Any]) -> dict[str, Any]:
    return {"name": f"labels-{uuid.uuid4().hex[:6]}", "coe": "kubernetes", "image_id": "fedora-coreos",
            "flavor_id": "m1.small", "master_flavor_id": "m1.small", "external_network_id": "public",
            "labels": labels}


def _refused(status: int, body: Any, headers: dict[str, str], label: str, value: str) -> None:
    assert status == 400, body
    (err,) = body["errors"]
    assert err["status"] == 400 and err["code"] == "client"
    assert err["title"] == "Invalid input for field/attribute labels"
    assert label in err["detail"] and repr(value) in err["detail"] and "expected" in err["detail"]
    assert err["request_id"] == headers["X-Openstack-Request-Id"]


async def test_bad_labels_are_a_400_on_templates_and_clusters(demo: Client) -> None:
    for label, value in (("container_runtime", "docker"), ("kube_tag", "latest")):
        status, body, headers = await demo.call("POST", "/v1/clustertemplates", _template({label: value}))
        _refused(status, body, headers, label, value)

    # Accepted: good values, Horizon's booleans, and labels no driver reads.
    status, t, _ = await demo.call("POST", "/v1/clustertemplates", _template(
        {"kube_tag": "v1.30.4", "kube_dashboard_enabled": True, "some_future_label": "$(anything)"}))
    assert status == 201, t

    # A template update that would make a label bad is refused, and the template is unchanged.
    patch = [{"op": "replace", "path": "/labels", "value": {"container_runtime": "docker"}}]
    status, body, headers = await demo.call("PATCH", f"/v1/clustertemplates/{t['uuid']}", patch)
    _refused(status, body, headers, "container_runtime", "docker")
    status, shown, _ = await demo.call("GET", f"/v1/clustertemplates/{t['uuid']}")
    assert status == 200 and shown["labels"]["kube_tag"] == "v1.30.4"

    # A cluster whose labels (merged over the template's or replacing them) are bad is refused; no cluster is left.
    for extra in ({"merge_labels": True}, {}):
        cluster = {"name": f"c-{uuid.uuid4().hex[:6]}", "cluster_template_id": t["uuid"], "node_count": 1,
                   "labels": {"kube_tag": "latest"}, **extra}
        status, body, headers = await demo.call("POST", "/v1/clusters", cluster, headers=LATEST)
        _refused(status, body, headers, "kube_tag", "latest")
        status, _, _ = await demo.call("GET", f"/v1/clusters/{cluster['name']}", headers=LATEST)
        assert status == 404
