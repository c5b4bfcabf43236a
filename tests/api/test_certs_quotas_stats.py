"""Certificates, quotas, stats, mservices, federations and credentials through the API, with the real certs and
scheduler services beside it (one private nats-server, one fresh database, the session's devcloud).

The provisioner does not run: where a test needs a cluster CREATE_COMPLETE it publishes that fact itself.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from deploy.local.nats import NatsServer
from proto import subjects
from proto.envelope import new_envelope
from proto.events import (
    ClusterCAReplaced,
    ClusterCreateCompleted,
    ClusterCreateRequested,
    ClusterTrustRotated,
)
from services.api.service import build_service as build_api
from services.certs.service import build_service as build_certs
from services.runtime.bus import Bus
from services.runtime.service import Service, ServiceConfig
from services.scheduler.service import build_service as build_scheduler
from tests.api.conftest import user_token
from tests.conftest import Devcloud, drop_database, fresh_database, stream_events, wait_for

pytestmark = pytest.mark.integration

LATEST = {"OpenStack-API-Version": "container-infra latest"}


@dataclass
class Stack:
    url: str
    bus: Bus
    devcloud: Devcloud
    services: list[Service]


class Client:
    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token

    async def call(self, method: str, path: str, body: Any = None, version: str = "latest") -> tuple[int, Any]:
        headers = {"X-Auth-Token": self.token, "OpenStack-API-Version": f"container-infra {version}"}
        async with aiohttp.ClientSession() as s, s.request(method, self.base + path, json=body, headers=headers) as r:
            text = await r.text()
            return r.status, (await r.json(content_type=None) if text else None)


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, devcloud: Devcloud
) -> AsyncIterator[Stack]:
    nats_server = NatsServer(Path(tmp_path_factory.mktemp("c-nats")), server_name="cove-c")
    nats_server.start()
    db_url = await fresh_database(pg_admin_url)
    common: dict[str, str] = {"COVE_STATE_DIR": str(tmp_path_factory.mktemp("c-state"))}

    def config(name: str, extra: dict[str, str]) -> ServiceConfig:
        return ServiceConfig(service=name, nats_url=nats_server.url, database_url=db_url, http_port=0,
                             heartbeat_interval=1.0, extra={**common, **extra})

    api, server = build_api(config("api", {
        "COVE_API_PORT": "0", "COVE_AUTH_URL": f"{devcloud.url}/identity", "COVE_API_ADMISSION_TIMEOUT": "3.0",
    }))
    services = [build_scheduler(config("scheduler", {})), build_certs(config("certs", {})), api]
    started: list[Service] = []
    try:
        for svc in services:
            await svc.start()
            started.append(svc)
        bus = await Bus.connect(nats_server.url, name="test-c")
        try:
            yield Stack(server.url + "/v1", bus, devcloud, services)
        finally:
            await bus.close()
    finally:
        for svc in reversed(started):
            await svc.stop()
        nats_server.stop()
        await drop_database(pg_admin_url, db_url)


async def client(stack: Stack, user: str, password: str, project: str) -> Client:
    return Client(stack.url, await user_token(stack.devcloud, user, password, project))


@pytest.fixture(scope="module")
async def demo(stack: Stack) -> Client:
    return await client(stack, "demo", "demo-pass", "demo")


@pytest.fixture(scope="module")
async def admin(stack: Stack) -> Client:
    return await client(stack, "admin", "admin-pass", "admin")


async def project_id(stack: Stack, admin: Client, name: str) -> str:
    url = f"{stack.devcloud.url}/identity/v3/projects?name={name}"
    async with aiohttp.ClientSession() as s, s.get(url, headers={"X-Auth-Token": admin.token}) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["projects"][0]["id"])


@pytest.fixture(scope="module")
async def template(demo: Client) -> dict[str, Any]:
    status, body = await demo.call("POST", "/clustertemplates", {
        "name": f"k8s-{uuid.uuid4().hex[:6]}", "coe": "kubernetes", "image_id": "fedora-coreos",
        "flavor_id": "m1.small", "master_flavor_id": "m1.small", "external_network_id": "public"})
    assert status == 201, body
    return dict(body)


async def create_cluster(demo: Client, template: dict[str, Any], node_count: int = 1) -> tuple[int, Any]:
    return await demo.call("POST", "/clusters", {
        "name": f"c-{uuid.uuid4().hex[:6]}", "cluster_template_id": template["uuid"], "node_count": node_count})


async def complete(stack: Stack, demo: Client, cid: str) -> dict[str, Any]:
    """Publish the provisioner's CREATE_COMPLETE and wait for the API to show it."""
    status, body = await demo.call("GET", f"/clusters/{cid}")
    assert status == 200, body
    env = new_envelope(ClusterCreateCompleted(uuid=cid, project_id=body["project_id"], api_address="https://10.0.0.5:6443"),
                       project_id=body["project_id"], cluster_id=cid)
    await stack.bus.publish(subjects.cluster_events("provisioner", cid), env)

    async def done() -> dict[str, Any] | None:
        s, b = await demo.call("GET", f"/clusters/{cid}")
        return dict(b) if s == 200 and b["status"] == "CREATE_COMPLETE" else None

    return await wait_for(done, timeout=10, message="CREATE_COMPLETE in the read model")


def make_csr(cn: str = "admin", org: str = "system:masters") -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def issued_by(cert_pem: str, ca_pem: str) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # noqa: BLE001 - any failure means "not issued by this CA"
        return False
    return True


async def test_ca_show_sign_rotate(stack: Stack, demo: Client, template: dict[str, Any]) -> None:
    status, body = await create_cluster(demo, template)
    assert status == 202, body
    cid = body["uuid"]

    async def ca() -> dict[str, Any] | None:
        s, b = await demo.call("GET", f"/certificates/{cid}")
        return dict(b) if s == 200 else None

    shown = await wait_for(ca, timeout=10, message="the cluster's CA")
    assert shown["cluster_uuid"] == cid and "BEGIN CERTIFICATE" in shown["pem"]
    assert shown["links"][0]["href"].endswith(f"/v1/certificates/{cid}")
    old_ca = shown["pem"]

    csr = make_csr()
    status, signed = await demo.call("POST", "/certificates", {"cluster_uuid": cid, "csr": csr})
    assert status == 201, signed
    assert signed["cluster_uuid"] == cid and signed["csr"] == csr and issued_by(signed["pem"], old_ca)
    cert = x509.load_pem_x509_certificate(signed["pem"].encode())
    # the subject is the caller's (issue 19): the CSR asked for admin/system:masters
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "cove:cluster-admins"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "demo"

    # Magnum's errors: unknown cluster on sign is 400; a bad CSR is 400; another member of the project gets a
    # certificate of their own (Cove's rule; Magnum's is the creator only); another project is refused
    status, err = await demo.call("POST", "/certificates", {"cluster_uuid": str(uuid.uuid4()), "csr": csr})
    assert status == 400 and "could not be found" in err["errors"][0]["detail"], err
    status, err = await demo.call("POST", "/certificates", {"cluster_uuid": cid, "csr": "not a csr"})
    assert status == 400, err
    demo2 = await client(stack, "demo2", "demo2-pass", "demo")
    status, signed2 = await demo2.call("POST", "/certificates", {"cluster_uuid": cid, "csr": csr})
    assert status == 201, signed2
    cert2 = x509.load_pem_x509_certificate(signed2["pem"].encode())
    assert cert2.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "demo2"
    alt = await client(stack, "alt", "alt-pass", "alt")
    assert (await alt.call("GET", f"/certificates/{cid}"))[0] == 403
    assert (await alt.call("POST", "/certificates", {"cluster_uuid": cid, "csr": csr}))[0] == 403

    # rotation needs a stable cluster
    status, err = await demo.call("PATCH", f"/certificates/{cid}")
    assert status == 400, err
    await complete(stack, demo, cid)
    status, body = await demo.call("PATCH", f"/certificates/{cid}")
    assert status == 202 and body == {"uuid": cid}, body
    status, shown = await demo.call("GET", f"/certificates/{cid}")
    assert status == 200 and shown["pem"] != old_ca
    new_ca = shown["pem"]
    status, signed = await demo.call("POST", "/certificates", {"cluster_uuid": cid, "csr": make_csr()})
    assert status == 201, signed
    assert issued_by(signed["pem"], new_ca) and not issued_by(signed["pem"], old_ca)
    replaced = [e.payload for e in await stream_events(stack.bus, subjects.cluster_events("certs", cid))
                if isinstance(e.payload, ClusterCAReplaced)]
    assert len(replaced) == 1 and replaced[0].ca_cert_pem == new_ca


async def test_quotas_crud_and_enforcement(stack: Stack, demo: Client, admin: Client,
                                           template: dict[str, Any]) -> None:
    demo_id, alt_id = await project_id(stack, admin, "demo"), await project_id(stack, admin, "alt")
    # no row: Magnum's synthesized default
    status, body = await demo.call("GET", f"/quotas/{demo_id}/Cluster")
    assert status == 200 and body == {"project_id": demo_id, "hard_limit": 20, "resource": "Cluster"}, body
    assert (await demo.call("GET", f"/quotas/{alt_id}/Cluster"))[0] == 403
    status, err = await demo.call("POST", "/quotas", {"project_id": demo_id, "hard_limit": 1})
    assert status == 403 and "quota:create" in err["errors"][0]["detail"]
    assert (await demo.call("GET", "/quotas"))[0] == 403
    assert (await admin.call("POST", "/quotas", {"project_id": "0" * 32, "hard_limit": 1}))[0] == 404

    status, in_use = await demo.call("GET", "/stats")
    assert status == 200, in_use
    status, created = await admin.call("POST", "/quotas", {"project_id": demo_id, "resource": "Cluster",
                                                           "hard_limit": in_use["clusters"] + 1})
    assert status == 201, created
    assert created["hard_limit"] == in_use["clusters"] + 1 and isinstance(created["id"], int)
    assert (await admin.call("POST", "/quotas", {"project_id": demo_id, "hard_limit": 3}))[0] == 409
    status, other = await admin.call("POST", "/quotas", {"project_id": alt_id, "hard_limit": 7})
    assert status == 201, other

    # list: own project without all_tenants; all projects with it, paged by id
    status, body = await admin.call("GET", "/quotas")
    assert status == 200 and body["quotas"] == []  # the admin project has no row
    status, page1 = await admin.call("GET", "/quotas?all_tenants=True&limit=1")
    assert status == 200 and len(page1["quotas"]) == 1 and "next" in page1, page1
    status, page2 = await admin.call("GET", f"/quotas?all_tenants=True&limit=1&marker={page1['quotas'][0]['id']}")
    assert status == 200 and page2["quotas"][0]["id"] > page1["quotas"][0]["id"], page2
    assert {q["project_id"] for q in page1["quotas"] + page2["quotas"]} == {demo_id, alt_id}

    # the scheduler enforces the new limit: one more cluster fits, the next is refused
    status, body = await create_cluster(demo, template)
    assert status == 202, body
    status, err = await create_cluster(demo, template)
    assert status == 403 and "maximum clusters per project" in err["errors"][0]["detail"], err

    status, body = await admin.call("PATCH", f"/quotas/{demo_id}/Cluster", {"hard_limit": 50})
    assert status == 202 and body["hard_limit"] == 50 and body["updated_at"], body
    status, body = await create_cluster(demo, template)
    assert status == 202, body
    assert (await demo.call("GET", f"/quotas/{demo_id}/Cluster"))[1]["hard_limit"] == 50

    assert (await admin.call("DELETE", f"/quotas/{alt_id}/Cluster"))[0] == 204
    assert (await admin.call("DELETE", f"/quotas/{alt_id}/Cluster"))[0] == 404
    status, body = await admin.call("GET", f"/quotas/{alt_id}/Cluster")
    assert status == 200 and body["hard_limit"] == 20 and "id" not in body
    assert (await admin.call("DELETE", f"/quotas/{demo_id}/Cluster"))[0] == 204


async def test_quota_values_beyond_sql_integers_are_refused(stack: Stack, admin: Client) -> None:
    """Regression: a hard_limit above 2**31 - 1 was accepted (201/202) and published as an event that neither the
    API's nor the scheduler's projection could store (integer columns), and a quota marker beyond the bigint
    range was a 500. Both are 400s now; the largest storable limit is applied by the projections."""
    url = f"{stack.devcloud.url}/identity/v3/projects"
    async with aiohttp.ClientSession() as s, s.post(url, headers={"X-Auth-Token": admin.token}, json={
            "project": {"name": f"q-{uuid.uuid4().hex[:8]}"}}) as r:
        assert r.status == 201, await r.text()
        pid = (await r.json())["project"]["id"]
    for limit in (2**31, 2**70):
        status, err = await admin.call("POST", "/quotas", {"project_id": pid, "hard_limit": limit})
        assert status == 400 and "lower or equal to 2147483647" in err["errors"][0]["detail"], (status, err)
    status, created = await admin.call("POST", "/quotas", {"project_id": pid, "hard_limit": 2**31 - 1})
    assert status == 201 and created["hard_limit"] == 2**31 - 1 and "id" in created, created  # "id": applied
    status, err = await admin.call("PATCH", f"/quotas/{pid}/Cluster", {"hard_limit": 2**31})
    assert status == 400, (status, err)
    assert (await admin.call("GET", f"/quotas/{pid}/Cluster"))[1]["hard_limit"] == 2**31 - 1
    for marker in (2**63, 2**70, -1, 0, "x"):
        status, err = await admin.call("GET", f"/quotas?all_tenants=True&marker={marker}")
        assert status == 400 and err["errors"][0]["detail"] == f"Marker {marker} could not be found.", (marker, err)
    assert (await admin.call("DELETE", f"/quotas/{pid}/Cluster"))[0] == 204


async def test_stats(stack: Stack, demo: Client, admin: Client, template: dict[str, Any]) -> None:
    status, before = await demo.call("GET", "/stats")
    assert status == 200 and set(before) == {"clusters", "nodes", "coes"}
    status, body = await create_cluster(demo, template, node_count=3)
    assert status == 202, body
    status, after = await demo.call("GET", "/stats")
    assert (after["clusters"], after["nodes"]) == (before["clusters"] + 1, before["nodes"] + 4), after  # 1 + 3
    coe = template["coe"]
    was = before["coes"].get(coe, {"clusters": 0, "nodes": 0})
    assert after["coes"][coe] == {"clusters": was["clusters"] + 1, "nodes": was["nodes"] + 4}, after
    assert sum(c["clusters"] for c in after["coes"].values()) == after["clusters"]
    alt_id = await project_id(stack, admin, "alt")
    assert (await demo.call("GET", f"/stats?project_id={alt_id}"))[0] == 403
    assert (await demo.call("GET", "/stats?type=node"))[0] == 400
    status, overall = await admin.call("GET", "/stats")
    assert status == 200 and overall["clusters"] >= after["clusters"]
    status, alt_stats = await admin.call("GET", f"/stats?project_id={alt_id}")
    assert status == 200 and alt_stats == {"clusters": 0, "nodes": 0, "coes": {}}


async def test_mservices(stack: Stack, demo: Client, admin: Client) -> None:
    async def listed() -> list[dict[str, Any]] | None:
        status, body = await admin.call("GET", "/mservices")
        assert status == 200, body
        rows = [r for r in body["mservices"] if r["binary"] in ("cove-api", "cove-certs", "cove-scheduler")]
        return rows if len(rows) == 3 and all(r["report_count"] >= 2 for r in rows) else None

    rows = await wait_for(listed, timeout=10, message="three services heartbeating")
    for row in rows:
        assert row["state"] == "up" and row["disabled"] is False and isinstance(row["id"], int), row
        assert row["host"] and row["created_at"] and row["updated_at"]
    assert (await demo.call("GET", "/mservices"))[0] == 403


async def test_federations_as_magnum(stack: Stack, demo: Client, template: dict[str, Any]) -> None:
    assert await demo.call("GET", "/federations") == (200, {"federations": []})
    assert await demo.call("GET", "/federations/detail") == (200, {"federations": []})
    status, err = await demo.call("GET", "/federations/nope")
    assert status == 404 and err["errors"][0]["detail"] == "Federation nope could not be found."
    assert (await demo.call("POST", "/federations", {"name": "f"}))[0] == 400
    status, body = await create_cluster(demo, template)
    assert status == 202, body
    host = body["uuid"]
    status, err = await demo.call("POST", "/federations", {"name": "f", "hostcluster_id": host, "properties": {}})
    assert status == 400 and "dns-zone" in err["errors"][0]["detail"]
    status, body = await demo.call("POST", "/federations", {
        "name": "f", "hostcluster_id": host, "properties": {"dns-zone": "example.com."}})
    assert status == 202 and uuid.UUID(body["uuid"])
    assert (await demo.call("GET", f"/federations/{body['uuid']}"))[0] == 404  # as Magnum: never stored
    assert (await demo.call("DELETE", f"/federations/{body['uuid']}"))[0] == 404


async def test_credential_rotation_makes_a_new_trust(stack: Stack, demo: Client, template: dict[str, Any]) -> None:
    status, body = await create_cluster(demo, template)
    assert status == 202, body
    cid = body["uuid"]
    status, err = await demo.call("PATCH", f"/credentials/{cid}", version="1.11")
    assert status == 406, err
    viewer = await client(stack, "viewer", "viewer-pass", "demo")
    status, err = await viewer.call("PATCH", f"/credentials/{cid}")
    assert status == 403 and "credential:rotate" in err["errors"][0]["detail"], err
    status, body = await demo.call("PATCH", f"/credentials/{cid}")
    assert status == 202 and body == {"uuid": cid}, body
    found = [e.payload for e in await stream_events(stack.bus, subjects.cluster_events("api", cid))]
    original = next(p for p in found if isinstance(p, ClusterCreateRequested))
    rotated = [p for p in found if isinstance(p, ClusterTrustRotated)]
    assert len(rotated) == 1 and rotated[0].trust_id and rotated[0].trust_id != original.trust_id
    # the new trust exists in Keystone and names the cove service user as trustee
    url = f"{stack.devcloud.url}/identity/v3/OS-TRUST/trusts/{rotated[0].trust_id}"
    async with aiohttp.ClientSession() as s, s.get(url, headers={"X-Auth-Token": demo.token}) as r:
        assert r.status == 200, await r.text()
        trust = (await r.json())["trust"]
    assert trust["trustee_user_id"] == rotated[0].trustee_user_id and trust["project_id"] == original.project_id
