"""The certs service against a real nats-server and PostgreSQL: CA on admission, CSR signing over RPC, delete,
idempotency and rebuild by replay."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.local.nats import NatsServer
from proto import subjects
from proto.events import ClusterAdmitted, ClusterCACreated, ClusterCADeleted, ClusterDeleteCompleted
from proto.requests import (
    CertificateSigned,
    ClusterCA,
    ClusterCAKey,
    GetClusterCA,
    GetClusterCAKey,
    SignCertificate,
)
from services.certs.service import build_service
from services.runtime import rpc
from services.runtime.rpc import RpcError
from tests.conftest import wait_for
from tests.scheduler.support import Harness, start_harness, stop_harness

pytestmark = pytest.mark.integration

MASTER_KEY = base64.urlsafe_b64encode(os.urandom(32)).decode()


@pytest.fixture
async def certs(make_nats_server: Callable[..., NatsServer], database_url: str) -> AsyncIterator[Harness]:
    server = make_nats_server()
    h = await start_harness(
        build_service, "certs", server.url, database_url, {"COVE_CERTS_MASTER_KEY": MASTER_KEY}
    )
    yield h
    await stop_harness(h)


def csr_pem(cn: str = "admin", org: str = "system:masters") -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, cn),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                ]
            )
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def admit(h: Harness, project: str, name: str) -> tuple[str, int]:
    cid = str(uuid.uuid4())
    _, seq = await h.publish(
        subjects.cluster_events("scheduler", cid),
        ClusterAdmitted(uuid=cid, project_id=project, master_count=1, node_count=1, name=name),
        project_id=project,
        cluster_id=cid,
    )
    return cid, seq


async def ca_events(h: Harness) -> list[ClusterCACreated | ClusterCADeleted]:
    return [
        e.payload
        for e in await h.events(subjects.producer_events("certs"))
        if isinstance(e.payload, ClusterCACreated | ClusterCADeleted)
    ]


async def n_ca_events(h: Harness, n: int) -> list[ClusterCACreated | ClusterCADeleted]:
    """The CA events once there are at least ``n`` (empty, i.e. falsy for ``wait_for``, before)."""
    got = await ca_events(h)
    return got if len(got) >= n else []


async def test_ca_created_on_admission_and_csr_signed_over_rpc(certs: Harness) -> None:
    project = f"p-{uuid.uuid4().hex[:6]}"
    cid, _ = await admit(certs, project, "k8s-demo")
    [created] = await wait_for(lambda: n_ca_events(certs, 1), message="ClusterCACreated")
    assert isinstance(created, ClusterCACreated) and created.uuid == cid and created.project_id == project
    ca_cert = x509.load_pem_x509_certificate(created.ca_cert_pem.encode())
    assert ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "k8s-demo"
    assert b"PRIVATE KEY" not in created.encrypted_ca_key  # only ever published encrypted
    stored = await certs.rows("cluster_cas", "cluster_id")
    assert b"PRIVATE KEY" not in stored[0][3]

    nc = certs.bus.nc
    got = await rpc.request(nc, subjects.CERTS_GET_CA, GetClusterCA(cluster_id=cid, project_id=project))
    assert isinstance(got, ClusterCA) and got.pem == created.ca_cert_pem

    reply = await rpc.request(nc, subjects.CERTS_SIGN, SignCertificate(
        cluster_id=cid, project_id=project, csr_pem=csr_pem(), user_id="u-1", user_name="alice", access="admin"
    ))
    assert isinstance(reply, CertificateSigned)
    cert = x509.load_pem_x509_certificate(reply.pem.encode())
    pub = ca_cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and cert.signature_hash_algorithm is not None
    pub.verify(
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
    )  # raises if bad
    assert cert.issuer == ca_cert.subject
    # the subject is Cove's, not the CSR's (which asked for CN=admin, O=system:masters)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "cove:cluster-admins"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30  # COVE_CERTS_USER_CERT_DAYS default
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]

    with pytest.raises(RpcError) as bad:
        await rpc.request(
            nc, subjects.CERTS_SIGN,
            SignCertificate(cluster_id=cid, project_id=project, csr_pem="junk", user_id="u-1", access="view")
        )
    assert bad.value.code == 400 and "Invalid CSR" in bad.value.message
    with pytest.raises(RpcError) as unknown:
        await rpc.request(nc, subjects.CERTS_GET_CA, GetClusterCA(cluster_id=str(uuid.uuid4())))
    assert unknown.value.code == 404
    with pytest.raises(RpcError) as foreign:
        await rpc.request(nc, subjects.CERTS_GET_CA, GetClusterCA(cluster_id=cid, project_id="someone-else"))
    assert foreign.value.code == 404

    # the provisioner's question for a first master's user data (ADR 0006): the key that goes with the CA
    key = await rpc.request(nc, subjects.CERTS_CA_KEY, GetClusterCAKey(cluster_id=cid, project_id=project))
    assert isinstance(key, ClusterCAKey) and key.cert_pem == created.ca_cert_pem
    private = serialization.load_pem_private_key(key.key_pem.encode(), password=None)
    assert private.public_key().public_numbers() == pub.public_numbers()  # type: ignore[union-attr]
    for other in (GetClusterCAKey(cluster_id=str(uuid.uuid4()), project_id=project),
                  GetClusterCAKey(cluster_id=cid, project_id="someone-else")):
        with pytest.raises(RpcError) as refused:
            await rpc.request(nc, subjects.CERTS_CA_KEY, other)
        assert refused.value.code == 404

    # cluster deleted -> ClusterCADeleted, CA gone (Magnum: GET /v1/certificates/<uuid> is 404 after delete)
    await certs.publish(
        subjects.cluster_events("provisioner", cid),
        ClusterDeleteCompleted(uuid=cid, project_id=project),
        project_id=project,
        cluster_id=cid,
    )
    events = await wait_for(lambda: n_ca_events(certs, 2), message="ClusterCADeleted")
    assert isinstance(events[1], ClusterCADeleted) and events[1].uuid == cid
    with pytest.raises(RpcError) as gone:
        await rpc.request(nc, subjects.CERTS_GET_CA, GetClusterCA(cluster_id=cid, project_id=project))
    assert gone.value.code == 404
    with pytest.raises(RpcError) as gone:
        await rpc.request(nc, subjects.CERTS_CA_KEY, GetClusterCAKey(cluster_id=cid, project_id=project))
    assert gone.value.code == 404
    assert (await certs.rows("cluster_cas", "cluster_id"))[0][3] is None  # key material forgotten


async def test_redelivered_admission_creates_one_ca(certs: Harness) -> None:
    project = f"p-{uuid.uuid4().hex[:6]}"
    cid = str(uuid.uuid4())
    subject = subjects.cluster_events("scheduler", cid)
    payload = ClusterAdmitted(uuid=cid, project_id=project, master_count=1, node_count=1, name="x")
    env, _ = await certs.publish(subject, payload, project_id=project, cluster_id=cid)
    await certs.bus.publish(subject, env, msg_id=f"again-{env.id}")  # same event id, past JetStream dedup
    _, seq = await certs.publish(subject, payload, project_id=project, cluster_id=cid)  # new id, same cluster
    await wait_for(lambda: certs.applied(seq))
    last = await certs.last_seq()
    await wait_for(lambda: certs.applied(last))
    created = [e for e in await ca_events(certs) if isinstance(e, ClusterCACreated)]
    assert len(created) == 1
    rows = await certs.rows("cluster_cas", "cluster_id")
    assert len(rows) == 1 and rows[0][2] == created[0].ca_cert_pem


async def test_rebuild_by_replay_restores_the_same_cas(certs: Harness) -> None:
    project = f"p-{uuid.uuid4().hex[:6]}"
    ids = [(await admit(certs, project, f"c{i}"))[0] for i in range(3)]
    await wait_for(lambda: n_ca_events(certs, 3))
    await certs.publish(
        subjects.cluster_events("provisioner", ids[1]),
        ClusterDeleteCompleted(uuid=ids[1], project_id=project),
        project_id=project,
        cluster_id=ids[1],
    )
    await wait_for(lambda: n_ca_events(certs, 4))
    last = await certs.last_seq()
    await wait_for(lambda: certs.applied(last))
    before = await certs.rows("cluster_cas", "cluster_id")
    assert len(before) == 3
    await certs.projection.rebuild()
    await wait_for(lambda: certs.applied(last), message="replay reached the end of the stream")
    assert await certs.rows("cluster_cas", "cluster_id") == before
    assert await certs.last_seq() == last
    # the restored CA still signs (its key decrypts with the master key)
    reply = await rpc.request(
        certs.bus.nc,
        subjects.CERTS_SIGN,
        SignCertificate(cluster_id=ids[0], project_id=project, csr_pem=csr_pem(), user_id="u", access="view"),
    )
    assert isinstance(reply, CertificateSigned)
