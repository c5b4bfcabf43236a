"""Every route answers the same with and without a trailing slash (services/api/routing.py), with query options,
against the API in-process on real NATS, PostgreSQL and the devcloud. magnumclient sends `GET /v1/clusters/?limit=1`
and `PATCH /v1/clusters/<id>/?rollback=True`; other tools send no slash."""

from __future__ import annotations

import re
import uuid
from typing import Any
from unittest.mock import MagicMock

import pytest

from proto.events import ClusterAdmitted, ClusterCreateCompleted
from services.api import openapi
from services.api.app import build_app
from services.api.routing import canonical, twin
from tests.api.conftest import RunningApi, user_token
from tests.api.test_api_integration import LATEST, Client, publish
from tests.api.test_openapi import accounting, certs

__all__ = ["accounting", "certs"]  # real services, so /v1/certificates/{ident} and /v1/usage answer
from tests.conftest import wait_for


def test_twin_and_canonical() -> None:
    assert twin("/v1/clusters") == "/v1/clusters/" and twin("/v1/clusters/") == "/v1/clusters"
    assert twin("/") is None and canonical("/") == "/"
    assert canonical("/v1/clusters/{ident}/") == "/v1/clusters/{ident}"


def test_every_route_of_the_router_has_its_twin() -> None:
    app = build_app(pool=MagicMock(), writer=MagicMock(), keystone=MagicMock())
    served = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    assert len(served) > 40
    missing = {(m, p) for m, p in served if p != "/" and (m, twin(p)) not in served}
    assert missing == set()
    # the OpenAPI document lists each operation once, under its slash-less path
    assert all(p == "/" or not p.endswith("/") for _, p in openapi.router_operations(app))


def _volatile_free(body: Any) -> Any:
    """A body without what changes from one request to the next (mservices' heartbeat fields, request ids, the
    control plane's clock, heartbeat ages and consumer counters, usage's open end and its figures, which run to
    now)."""
    volatile = ("updated_at", "report_count", "state", "request_id", "time", "age_seconds", "last_heartbeat",
                "consumers", "end", "usage")
    if isinstance(body, dict):
        return {k: _volatile_free(v) for k, v in body.items() if k not in volatile}
    if isinstance(body, list):
        return [_volatile_free(v) for v in body]
    return body


@pytest.mark.integration
async def test_every_get_route_answers_alike_with_and_without_the_slash(
    api: RunningApi, certs: object, accounting: object
) -> None:
    admin = Client(api.url, await user_token(api.devcloud, "admin", "admin-pass", "admin"))
    sfx = uuid.uuid4().hex[:6]
    # a template, a running cluster (so its nodegroups and certificates exist) and a quota to address
    code, tpl, _ = await admin.call("POST", "/v1/clustertemplates/", {
        "name": f"slash-{sfx}", "coe": "kubernetes", "image_id": "fedora-coreos", "flavor_id": "m1.small"})
    assert code == 201, tpl
    code, created, _ = await admin.call("POST", "/v1/clusters/", {
        "name": f"slash-{sfx}", "cluster_template_id": tpl["uuid"], "node_count": 1})
    assert code == 202, created
    cid, pid = created["uuid"], tpl["project_id"]
    await publish(api, "scheduler", cid, pid, ClusterAdmitted(uuid=cid, project_id=pid, master_count=1, node_count=1))
    await publish(api, "provisioner", cid, pid, ClusterCreateCompleted(
        uuid=cid, project_id=pid, api_address="https://127.0.0.1:6443"))

    async def complete() -> bool:
        return (await admin.call("GET", f"/v1/clusters/{cid}"))[1].get("status") == "CREATE_COMPLETE"

    await wait_for(complete, message="cluster CREATE_COMPLETE")
    # (another module on this API may have left the admin project's Cluster quota: this test makes its own)
    await admin.call("DELETE", f"/v1/quotas/{pid}/Cluster")

    async def quota_made() -> bool:
        code, quota, _ = await admin.call("POST", "/v1/quotas/", {"project_id": pid, "resource": "Cluster",
                                                                  "hard_limit": 30})
        assert code in (201, 409), quota
        return code == 201

    await wait_for(quota_made, message="the test's own Cluster quota created")
    values = {"ident": cid, "cluster": cid, "ng": "default-worker", "project_id": pid, "resource": "Cluster"}
    served = api.server._runner
    assert served is not None
    gets = sorted(p for m, p in openapi.router_operations(served.app) if m == "GET")  # the running server's routes
    assert "/v1/clusters" in gets and "/v1/mservices" in gets
    for path in gets:
        if path == "/v1/events":  # a stream that never ends by itself (tests/monitoring/test_sse.py reads it)
            continue
        concrete = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
        if concrete.endswith("/clustertemplates/" + cid):
            concrete = concrete.replace(cid, tpl["uuid"])
        answers = []
        other = twin(concrete) or concrete
        for url in (concrete, other, f"{concrete}?limit=1", f"{other}?limit=1"):
            code, body, _ = await admin.call("GET", url, headers=LATEST)  # nodegroups need 1.9+
            answers.append((code, _volatile_free(body)))
        if path == "/v1/federations/{ident}":  # federations are Magnum's stub: no federation is ever found
            assert answers[0][0] == 404, (path, answers[0])
        else:  # every other route finds what it is given, with and without the slash and the query
            assert answers[0][0] < 400 and answers[2][0] < 400, (path, answers[0], answers[2])
        assert answers[0] == answers[1], (path, answers[:2])
        assert answers[2] == answers[3], (path, answers[2:])
    assert (await admin.call("DELETE", f"/v1/quotas/{pid}/Cluster/"))[0] == 204


@pytest.mark.integration
async def test_writes_answer_alike_with_and_without_the_slash(api: RunningApi) -> None:
    demo = Client(api.url, await user_token(api.devcloud, "demo", "demo-pass", "demo"))
    name = f"w-{uuid.uuid4().hex[:6]}"
    code, tpl, _ = await demo.call("POST", "/v1/clustertemplates", {
        "name": name, "coe": "kubernetes", "image_id": "fedora-coreos", "flavor_id": "m1.small"})
    assert code == 201, tpl
    code, body, _ = await demo.call("PATCH", f"/v1/clustertemplates/{tpl['uuid']}/",
                                    [{"op": "replace", "path": "/name", "value": f"{name}-r"}])
    assert code == 200 and body["name"] == f"{name}-r", body
    code, body, _ = await demo.call("DELETE", f"/v1/clustertemplates/{tpl['uuid']}/")
    assert code == 204, body
    assert (await demo.call("GET", f"/v1/clustertemplates/{tpl['uuid']}"))[0] == 404


@pytest.mark.integration
async def test_a_malformed_patch_is_a_400_before_any_lookup(api: RunningApi) -> None:
    """Magnum validates the body first: a whole object instead of a JSON-patch list on an unknown uuid is a 400."""
    demo = Client(api.url, await user_token(api.devcloud, "demo", "demo-pass", "demo"))
    unknown = str(uuid.uuid4())
    whole = {"name": "t", "coe": "kubernetes", "image_id": "fedora-coreos"}
    well_formed = {
        f"/v1/clustertemplates/{unknown}": [{"op": "replace", "path": "/name", "value": "x"}],
        f"/v1/clusters/{unknown}": [{"op": "replace", "path": "/node_count", "value": 2}],
        f"/v1/clusters/{unknown}/nodegroups/default-worker": [{"op": "replace", "path": "/max_node_count",
                                                               "value": 3}],
    }
    for path, patch in well_formed.items():
        code, body, _ = await demo.call("PATCH", path, whole, headers=LATEST)
        assert code == 400, (path, code, body)
        assert body["errors"][0]["status"] == 400 and body["errors"][0]["detail"], body
        # a well-formed patch on the same unknown uuid is the 404 it always was
        code, body, _ = await demo.call("PATCH", path, patch, headers=LATEST)
        assert code == 404, (path, code, body)
