"""The stand-in COE endpoint's decisions, without a cloud: what it reads from the Kubernetes driver's user data, which
cluster gets an address two clusters' private networks share, that only loopback is bound, and the x509 check."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from deploy.devcloud import coe_endpoints as ce
from proto import labels
from services.provisioner.drivers.base import NodeContext
from services.provisioner.drivers.kubernetes import KubernetesDriver


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


def _client(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, group: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin"),
                                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, group)]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def _node(ca_pem: str, key_pem: str | None, role: str, first: bool, name: str) -> NodeContext:
    return NodeContext(cluster_id="c-1", cluster_name="demo", node_name=name, role=role,  # type: ignore[arg-type]
                       nodegroup="default-master" if role == "master" else "default-worker", is_first_master=first,
                       api_host="127.100.0.5", api_port=6443, ca_cert_pem=ca_pem, bootstrap_token="abcdef.0123456789abcdef",
                       master_addresses=("127.100.0.5",), ca_key_pem=key_pem)


def test_reads_what_the_kubernetes_driver_gives_the_first_master_and_a_worker() -> None:
    ca_pem, key_pem = _pem(*_ca("cluster-ca"))
    driver = KubernetesDriver()
    master = driver.user_data(_node(ca_pem, key_pem, "master", True, "Demo_Master-0"))
    files = ce.read_user_data(base64.b64encode(master.encode()).decode())  # as Nova stores it
    assert files is not None
    assert (files.role, files.first_master, files.node_name) == ("master", True, "demo-master-0")
    assert (files.api_host, files.api_port, files.kube_tag) == ("127.100.0.5", 6443, "v1.30.4")
    assert files.ca_cert_pem == ca_pem and files.ca_key_pem == key_pem
    assert "127.100.0.5" in files.cert_sans and files.service_cidr
    worker = ce.read_user_data(driver.user_data(_node(ca_pem, None, "worker", False, "demo-node-1")))
    assert worker is not None and worker.role == "worker" and worker.ca_key_pem is None
    assert ce.read_user_data("#!/bin/sh\necho hi\n") is None
    assert ce.read_user_data(None) is None


def test_the_default_kube_tag_is_the_driver_s() -> None:
    assert ce.DEFAULT_KUBE_TAG == labels.resolved("kubernetes", {})["kube_tag"]


def _plan(cid: str, created: str, bindings: dict[tuple[str, int], int]) -> ce.Plan:
    return ce.Plan(cid, "", "", "v1.30.4", "", "", (), created, bindings=bindings)


def test_a_shared_fixed_ip_goes_to_the_cluster_whose_api_host_it_is_then_the_holder_then_the_older() -> None:
    key = ("127.100.0.2", 6443)
    old, new = _plan("old", "2026-01-01", {key: 1}), _plan("new", "2026-02-01", {key: 0})
    assert ce.assign({"old": old, "new": new}, {}) == {key: "new"}
    new.bindings[key] = 1
    assert ce.assign({"old": old, "new": new}, {}) == {key: "old"}
    assert ce.assign({"old": old, "new": new}, {key: "new"}) == {key: "new"}


def test_only_loopback_is_bound() -> None:
    endpoints = ce.CoeEndpoints.__new__(ce.CoeEndpoints)
    endpoints.refused = set()
    assert endpoints._allowed(("127.24.4.7", 6443), "c")
    assert not endpoints._allowed(("10.0.0.5", 6443), "c")
    assert not endpoints._allowed(("192.0.2.1", 6443), "c") and len(endpoints.refused) == 2
    assert not ce.is_loopback("not-an-ip")


def test_client_certificates_of_the_cluster_ca_only() -> None:
    ca, ca_key = _ca("cluster-ca")
    other, other_key = _ca("other-ca")
    ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
    assert ce.client_identity(_client(ca, ca_key, "system:masters"), ca_pem) == ("admin", ["system:masters"])
    assert ce.client_identity(_client(other, other_key, "system:masters"), ca_pem) is None
    assert ce.client_identity(None, ca_pem) is None


def test_the_serving_certificate_names_what_the_user_data_names_and_chains_to_the_ca() -> None:
    """As kubeadm on the node: the masters, the service IP, the control-plane endpoint and the certSANs; an address
    the endpoint listens at (a floating IP) only when the user data's certSANs name it."""
    ca, ca_key = _ca("cluster-ca")
    ca_pem, key_pem = _pem(ca, ca_key)

    def ips(cert_sans: tuple[str, ...]) -> set[str]:
        p = ce.Plan("c", ca_pem, key_pem, "v1.30.4", "127.100.0.5", "10.254.0.0/16", cert_sans, "")
        p.master_ips = {"127.100.0.5"}
        cert = x509.load_pem_x509_certificate(
            ce.serving_certificate(p, ["127.24.4.9"], ec.generate_private_key(ec.SECP256R1())))
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {"kubernetes", "kubernetes.default.svc.cluster.local"} <= set(sans.get_values_for_type(x509.DNSName))
        return {str(a) for a in sans.get_values_for_type(x509.IPAddress)}

    assert ips(("127.100.0.5",)) == {"127.100.0.5", "10.254.0.1"}
    assert ips(("127.100.0.5", "127.24.4.9")) == {"127.24.4.9", "127.100.0.5", "10.254.0.1"}
    assert ipaddress.ip_address("127.24.4.9") in ce.LOOPBACK
