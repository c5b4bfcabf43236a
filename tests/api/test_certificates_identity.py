"""Certificates bound to who asks (issue 19), through the API with real Keystone tokens from the devcloud, the real
certs and scheduler services, real certificates (``cryptography``) and ``openssl verify``.

A member who did not create the cluster and a reader each get a certificate naming themselves, with the group the
Kubernetes driver binds (cluster-admin, view), whatever their CSR asked; another project's member gets 403; a
certificate chains to its own cluster's CA only; the etcd and front-proxy CAs are others.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.local.nats import NatsServer
from proto import subjects
from proto.events import CertificateIssued
from services.api.service import build_service as build_api
from services.certs.service import build_service as build_certs
from services.runtime.bus import Bus
from services.runtime.service import Service, ServiceConfig
from services.scheduler.service import build_service as build_scheduler
from tests.api.conftest import user_token
from tests.api.test_certs_quotas_stats import Client, Stack
from tests.conftest import Devcloud, drop_database, fresh_database, stream_events, wait_for

pytestmark = pytest.mark.integration

USER_CERT_DAYS = 7
"""Set through COVE_CERTS_USER_CERT_DAYS (the default, 30, is tested in tests/certs)."""


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, devcloud: Devcloud
) -> AsyncIterator[Stack]:
    nats_server = NatsServer(Path(tmp_path_factory.mktemp("id-nats")), server_name="cove-id")
    nats_server.start()
    db_url = await fresh_database(pg_admin_url)
    common = {"COVE_STATE_DIR": str(tmp_path_factory.mktemp("id-state"))}

    def config(name: str, extra: dict[str, str]) -> ServiceConfig:
        return ServiceConfig(service=name, nats_url=nats_server.url, database_url=db_url, http_port=0,
                             heartbeat_interval=1.0, extra={**common, **extra})

    api, server = build_api(config("api", {
        "COVE_API_PORT": "0", "COVE_AUTH_URL": f"{devcloud.url}/identity", "COVE_API_ADMISSION_TIMEOUT": "3.0",
    }))
    services = [build_scheduler(config("scheduler", {})),
                build_certs(config("certs", {"COVE_CERTS_USER_CERT_DAYS": str(USER_CERT_DAYS)})), api]
    started: list[Service] = []
    try:
        for svc in services:
            await svc.start()
            started.append(svc)
        bus = await Bus.connect(nats_server.url, name="test-id")
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


async def user_id(stack: Stack, c: Client) -> str:
    url = f"{stack.devcloud.url}/identity/v3/auth/tokens"
    headers = {"X-Auth-Token": c.token, "X-Subject-Token": c.token}
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["token"]["user"]["id"])


def make_csr(cn: str = "admin", org: str = "system:masters", key: Any = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def openssl_verifies(tmp_path: Path, ca_pem: str, cert_pem: str, purpose: str = "sslclient") -> bool:
    name = uuid.uuid4().hex
    (tmp_path / f"{name}.ca").write_text(ca_pem)
    (tmp_path / f"{name}.crt").write_text(cert_pem)
    done = subprocess.run(
        ["openssl", "verify", "-purpose", purpose, "-CAfile", str(tmp_path / f"{name}.ca"),
         str(tmp_path / f"{name}.crt")],
        capture_output=True, text=True, check=False,
    )
    return done.returncode == 0


def subject(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(oid)]


async def new_cluster(demo: Client) -> tuple[str, str]:
    """A cluster the demo user creates; (uuid, its CA PEM) once certs made it."""
    status, tpl = await demo.call("POST", "/clustertemplates", {
        "name": f"k8s-{uuid.uuid4().hex[:6]}", "coe": "kubernetes", "image_id": "fedora-coreos",
        "flavor_id": "m1.small", "master_flavor_id": "m1.small", "external_network_id": "public"})
    assert status == 201, tpl
    status, body = await demo.call("POST", "/clusters", {
        "name": f"c-{uuid.uuid4().hex[:6]}", "cluster_template_id": tpl["uuid"], "node_count": 1})
    assert status == 202, body
    cid = body["uuid"]

    async def ca() -> str | None:
        s, b = await demo.call("GET", f"/certificates/{cid}")
        return str(b["pem"]) if s == 200 else None

    return cid, await wait_for(ca, timeout=15, message="the cluster's CA")


@pytest.fixture(scope="module")
async def demo(stack: Stack) -> Client:
    return await client(stack, "demo", "demo-pass", "demo")


async def test_each_member_and_reader_gets_a_certificate_of_their_own(
    stack: Stack, demo: Client, tmp_path: Path
) -> None:
    cid, ca_pem = await new_cluster(demo)
    other_cid, other_ca_pem = await new_cluster(demo)
    demo2 = await client(stack, "demo2", "demo2-pass", "demo")  # a member who did not create the cluster
    viewer = await client(stack, "viewer", "viewer-pass", "demo")  # a reader
    alt = await client(stack, "alt", "alt-pass", "alt")  # another project's member

    # the member: own user in CN, the group bound to cluster-admin, whatever the CSR asked for
    csr = make_csr("admin", "system:masters")
    status, signed = await demo2.call("POST", "/certificates", {"cluster_uuid": cid, "csr": csr})
    assert status == 201, signed
    assert signed["cluster_uuid"] == cid and signed["csr"] == csr
    cert = x509.load_pem_x509_certificate(signed["pem"].encode())
    demo2_id = await user_id(stack, demo2)
    assert subject(cert, NameOID.COMMON_NAME) == ["demo2"]
    assert subject(cert, NameOID.ORGANIZATION_NAME) == ["cove:cluster-admins"]
    assert subject(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == [demo2_id]
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)
    project_id = (await demo.call("GET", f"/clusters/{cid}"))[1]["project_id"]
    assert uris == [f"urn:cove:keystone:user:{demo2_id}:project:{project_id}"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == USER_CERT_DAYS
    # it chains to its cluster's CA and to no other
    assert openssl_verifies(tmp_path, ca_pem, signed["pem"])
    assert not openssl_verifies(tmp_path, other_ca_pem, signed["pem"])
    assert not openssl_verifies(tmp_path, ca_pem, signed["pem"], purpose="sslserver")  # clientAuth only

    # the reader: own user, the group bound to the view role
    status, viewed = await viewer.call("POST", "/certificates", {"cluster_uuid": cid, "csr": make_csr()})
    assert status == 201, viewed
    vcert = x509.load_pem_x509_certificate(viewed["pem"].encode())
    assert subject(vcert, NameOID.COMMON_NAME) == ["viewer"]
    assert subject(vcert, NameOID.ORGANIZATION_NAME) == ["cove:cluster-viewers"]
    assert openssl_verifies(tmp_path, ca_pem, viewed["pem"])
    # ... who may read the CA but not have an etcd or front-proxy certificate
    assert (await viewer.call("GET", f"/certificates/{cid}"))[0] == 200
    for kind in ("etcd", "front_proxy"):
        status, err = await viewer.call("POST", "/certificates", {"cluster_uuid": cid, "csr": make_csr(),
                                                                  "ca_cert_type": kind})
        assert status == 403, err

    # another project's member: 403, on sign and on show (by uuid); by name the cluster is not theirs to find
    status, err = await alt.call("POST", "/certificates", {"cluster_uuid": cid, "csr": make_csr()})
    assert status == 403 and err["errors"][0]["status"] == 403, err
    assert (await alt.call("GET", f"/certificates/{cid}"))[0] == 403
    assert (await alt.call("GET", f"/certificates/{other_cid}?ca_cert_type=etcd"))[0] == 403

    # the audit trail names who asked
    events = await stream_events(stack.bus, subjects.cluster_events("certs", cid))
    issued = [e.payload for e in events if isinstance(e.payload, CertificateIssued)]
    by_serial = {i.serial: i for i in issued}
    mine = by_serial[format(cert.serial_number, "x")]
    assert (mine.user_id, mine.user_name, mine.issued_to, mine.ca_cert_type) == (
        demo2_id, "demo2", "user", "kubernetes")
    assert mine.subject == cert.subject.rfc4514_string() and mine.caller_project_id
    assert by_serial[format(vcert.serial_number, "x")].user_name == "viewer"


async def test_three_cas_selected_by_ca_cert_type(stack: Stack, demo: Client, tmp_path: Path) -> None:
    cid, ca_pem = await new_cluster(demo)
    cas = {"kubernetes": ca_pem}
    for kind in ("etcd", "front_proxy", "front-proxy"):
        status, body = await demo.call("GET", f"/certificates/{cid}?ca_cert_type={kind}")
        assert status == 200, body
        cas[kind] = body["pem"]
    assert cas["front_proxy"] == cas["front-proxy"]
    assert len({cas["kubernetes"], cas["etcd"], cas["front_proxy"]}) == 3
    assert (await demo.call("GET", f"/certificates/{cid}?ca_cert_type=kubernetes"))[1]["pem"] == ca_pem
    status, err = await demo.call("GET", f"/certificates/{cid}?ca_cert_type=bogus")
    assert status == 400, err

    demo2 = await client(stack, "demo2", "demo2-pass", "demo")
    for kind in ("etcd", "front_proxy"):
        status, signed = await demo2.call("POST", "/certificates", {
            "cluster_uuid": cid, "csr": make_csr(), "ca_cert_type": kind})
        assert status == 201 and signed["ca_cert_type"] == kind, signed
        assert openssl_verifies(tmp_path, cas[kind], signed["pem"])
        # an etcd (or front-proxy) certificate does not verify against the cluster CA
        assert not openssl_verifies(tmp_path, cas["kubernetes"], signed["pem"])
        cert = x509.load_pem_x509_certificate(signed["pem"].encode())
        assert subject(cert, NameOID.COMMON_NAME) == ["demo2"]


async def test_weak_malformed_and_oversized_csrs_are_refused(stack: Stack, demo: Client) -> None:
    cid, _ = await new_cluster(demo)
    weak = make_csr(key=rsa.generate_private_key(public_exponent=65537, key_size=1024))
    cases = {
        "weak": (weak, "at least 2048"),
        "malformed": ("-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n",
                      "Invalid CSR"),
        "oversized": ("A" * (64 * 1024 + 1), "too large"),
        "empty": ("   ", "csr"),
    }
    for name, (csr, why) in cases.items():
        status, err = await demo.call("POST", "/certificates", {"cluster_uuid": cid, "csr": csr})
        assert status == 400, (name, err)
        # Magnum's error body
        assert err["errors"][0]["status"] == 400 and why in err["errors"][0]["detail"], (name, err)
    strong = make_csr(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert (await demo.call("POST", "/certificates", {"cluster_uuid": cid, "csr": strong}))[0] == 201
