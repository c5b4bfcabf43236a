"""``cove.rpc.certs.sign_node``: a node's server-and-client certificate signed by the cluster CA, for the
provisioner (a Swarm node's Docker engine), with its audit event; against a real nats-server and PostgreSQL."""

from __future__ import annotations

import ipaddress
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proto import subjects
from proto.events import CertificateIssued, ClusterCACreated
from proto.requests import NodeCertificateSigned, SignNodeCertificate
from services.runtime import rpc
from services.runtime.rpc import RpcError
from tests.certs.test_certs_service import admit, certs, n_ca_events  # noqa: F401  (certs is a fixture)
from tests.conftest import wait_for
from tests.scheduler.support import Harness

pytestmark = pytest.mark.integration


def node_csr(cn: str = "whatever-the-node-asks") -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def openssl_verify(tmp_path: Path, ca_pem: str, cert_pem: str, purpose: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "ca.pem").write_text(ca_pem)
    (tmp_path / "cert.pem").write_text(cert_pem)
    return subprocess.run(
        ["openssl", "verify", "-purpose", purpose, "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "cert.pem")],
        capture_output=True, text=True, check=False,
    )


async def test_node_certificate_is_signed_by_the_cluster_ca_with_the_given_names(
    certs: Harness, tmp_path: Path  # noqa: F811
) -> None:
    project = f"p-{uuid.uuid4().hex[:6]}"
    cid, _ = await admit(certs, project, "swarm-demo")
    [created] = await wait_for(lambda: n_ca_events(certs, 1), message="ClusterCACreated")
    assert isinstance(created, ClusterCACreated)
    nc = certs.bus.nc
    reply = await rpc.request(nc, subjects.CERTS_SIGN_NODE, SignNodeCertificate(
        cluster_id=cid, project_id=project, csr_pem=node_csr(), node_name="swarm-demo-node-0",
        sans=["10.0.0.5", "127.24.4.17", "swarm-demo-node-0", "fd00::5"],
    ))
    assert isinstance(reply, NodeCertificateSigned) and reply.cluster_id == cid
    cert = x509.load_pem_x509_certificate(reply.pem.encode())
    assert cert.subject.rfc4514_string() == "CN=swarm-demo-node-0"  # the CSR's CN is not taken
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("10.0.0.5", "127.24.4.17", "fd00::5")
    }
    assert san.get_values_for_type(x509.DNSName) == ["swarm-demo-node-0"]  # not the CSR's evil.example
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and not ku.key_cert_sign
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 364 <= days <= 366
    assert format(cert.serial_number, "x") == reply.serial
    for purpose in ("sslserver", "sslclient"):
        done = openssl_verify(tmp_path, created.ca_cert_pem, reply.pem, purpose)
        assert done.returncode == 0, done.stdout + done.stderr

    # the audit event, durable before the reply
    issued = [e.payload for e in await certs.events(subjects.cluster_events("certs", cid))
              if isinstance(e.payload, CertificateIssued)]
    assert len(issued) == 1
    assert issued[0].serial == reply.serial and issued[0].issued_to == "node"
    assert issued[0].user_name == "provisioner" and issued[0].subject == "CN=swarm-demo-node-0"
    assert issued[0].ca_cert_type == "kubernetes" and issued[0].project_id == project


@pytest.mark.parametrize(
    ("node_name", "sans", "why"),
    [
        ("node-0", ["http://10.0.0.5/"], "neither an IP address nor a DNS name"),
        ("node-0", ["a b"], "neither an IP address nor a DNS name"),
        ("node-0", ["*.example.com"], "neither an IP address nor a DNS name"),
        ("bad name!", ["10.0.0.5"], "invalid node name"),
    ],
)
async def test_node_names_and_sans_are_validated(
    certs: Harness, node_name: str, sans: list[str], why: str  # noqa: F811
) -> None:
    project = f"p-{uuid.uuid4().hex[:6]}"
    cid, _ = await admit(certs, project, "swarm")
    await wait_for(lambda: n_ca_events(certs, 1), message="ClusterCACreated")
    with pytest.raises(RpcError) as refused:
        await rpc.request(certs.bus.nc, subjects.CERTS_SIGN_NODE, SignNodeCertificate(
            cluster_id=cid, project_id=project, csr_pem=node_csr(), node_name=node_name, sans=sans,
        ))
    assert refused.value.code == 400 and why in refused.value.message
    with pytest.raises(RpcError) as foreign:
        await rpc.request(certs.bus.nc, subjects.CERTS_SIGN_NODE, SignNodeCertificate(
            cluster_id=cid, project_id="another", csr_pem=node_csr(), node_name="n", sans=[],
        ))
    assert foreign.value.code == 404
