"""What the provisioner asks of the certs service for a node's user data: the cluster CA's key for the masters of
a COE whose control plane signs with it (Kubernetes, docs/adr/0006), and a TLS certificate of the node's own for a
COE whose nodes serve TLS themselves (the Docker engines of Swarm). Both over NATS request-reply; nothing is kept:
a pass that boots such nodes asks again.

A node's key is made here, in the provisioner, and travels only in that node's user data (as the CA key does for a
Kubernetes master); the certs service sees its CSR and signs it with the cluster CA, naming every address the node
is reached at.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from nats.aio.client import Client as NATS

from proto import subjects
from proto.requests import ClusterCAKey, GetClusterCAKey, NodeCertificateSigned, SignNodeCertificate
from services.provisioner import store
from services.provisioner.cloud import CloudError
from services.runtime import rpc

LOCAL_NAMES = ("localhost", "127.0.0.1")
"""Also named in every node certificate: the node's own tools reach its engine there."""


@dataclass(frozen=True)
class NodeTLS:
    cert_pem: str
    key_pem: str


def _failed(what: str, exc: rpc.RpcError) -> CloudError:
    return CloudError(f"{what}: {exc.message}", permanent=exc.code in (400, 404))


async def ca_key(nc: NATS, row: store.ClusterRow) -> ClusterCAKey:
    """The cluster CA's key (and the other CAs' where the certs service keeps them), for masters' user data."""
    try:
        reply = await rpc.request(nc, subjects.CERTS_CA_KEY,
                                  GetClusterCAKey(cluster_id=row.uuid, project_id=row.project_id or ""))
    except rpc.RpcError as exc:
        raise _failed("The cluster's CA is not available", exc) from exc
    assert isinstance(reply, ClusterCAKey)
    return reply


def node_csr(node_name: str, addresses: list[str]) -> tuple[str, str, list[str]]:
    """A new EC P-256 key and its CSR for ``node_name``: (key PEM, CSR PEM, the SANs asked for: the node's name,
    ``addresses`` and ``LOCAL_NAMES``, without repeats)."""
    sans = list(dict.fromkeys([node_name, *addresses, *LOCAL_NAMES]))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for san in sans:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name)]))
           .add_extension(x509.SubjectAlternativeName(names), critical=False)
           .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode(), sans


async def node_tls(nc: NATS, row: store.ClusterRow, node_name: str, addresses: list[str]) -> NodeTLS:
    """A certificate for the node's own TLS endpoint (server and client authentication), signed by the cluster CA
    and naming ``addresses`` (the node's fixed IP, the API's host and floating IP)."""
    key_pem, csr_pem, sans = node_csr(node_name, addresses)
    try:
        reply = await rpc.request(nc, subjects.CERTS_SIGN_NODE, SignNodeCertificate(
            cluster_id=row.uuid, project_id=row.project_id or "", csr_pem=csr_pem, node_name=node_name, sans=sans))
    except rpc.RpcError as exc:
        raise _failed(f"The certificate of {node_name} could not be issued", exc) from exc
    assert isinstance(reply, NodeCertificateSigned)
    return NodeTLS(cert_pem=reply.pem, key_pem=key_pem)
