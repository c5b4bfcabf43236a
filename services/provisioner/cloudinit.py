"""Cloud-init for the Kubernetes driver: a pure function from a node's role and the cluster's facts to user_data.

kubeadm-style and deliberately minimal: every node gets the cluster CA certificate (from ClusterCACreated) and a
small environment file; the master runs ``kubeadm init`` and each worker ``kubeadm join`` against the API address
with the CA's public-key pin (``--discovery-token-ca-cert-hash``), computed here from the CA certificate.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

DEFAULT_KUBE_TAG = "v1.30.4"
DEFAULT_POD_CIDR = "10.100.0.0/16"
DEFAULT_SERVICE_CIDR = "10.254.0.0/16"
DEFAULT_API_PORT = 6443


@dataclass(frozen=True)
class NodeBoot:
    """Everything a node's user_data depends on."""

    cluster_id: str
    cluster_name: str
    node_name: str
    role: str  # "master" | "worker"
    ca_cert_pem: str
    api_address: str
    """``host:port`` the workers join; masters advertise it as the control-plane endpoint."""
    bootstrap_token: str
    labels: dict[str, str] = field(default_factory=dict)


def ca_cert_hash(ca_cert_pem: str) -> str:
    """kubeadm's discovery pin: ``sha256:<hex of SHA-256 over the CA's DER SubjectPublicKeyInfo>``."""
    cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def bootstrap_token(secret: bytes, cluster_id: str) -> str:
    """A kubeadm bootstrap token (``[a-z0-9]{6}.[a-z0-9]{16}``) derived from a provisioner secret and the cluster.

    Derived, not random, so a restarted provisioner renders the same token for the workers it still has to create.
    """
    digest = hmac.new(secret, cluster_id.encode(), hashlib.sha256).hexdigest()
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    chars = "".join(alphabet[int(digest[i : i + 2], 16) % 36] for i in range(0, 44, 2))
    return f"{chars[:6]}.{chars[6:22]}"


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line else line for line in text.strip("\n").splitlines())


def render_user_data(boot: NodeBoot) -> str:
    """The node's ``#cloud-config`` document (text; the caller base64-encodes it for Nova)."""
    if boot.role not in ("master", "worker"):
        raise ValueError(f"unknown node role {boot.role!r}")
    if "BEGIN CERTIFICATE" not in boot.ca_cert_pem:
        raise ValueError("ca_cert_pem is not a PEM certificate")
    kube_tag = boot.labels.get("kube_tag", DEFAULT_KUBE_TAG)
    pod_cidr = boot.labels.get("calico_ipv4pool", DEFAULT_POD_CIDR)
    service_cidr = boot.labels.get("service_cluster_ip_range", DEFAULT_SERVICE_CIDR)
    env = {
        "COVE_CLUSTER_ID": boot.cluster_id,
        "COVE_CLUSTER_NAME": boot.cluster_name,
        "COVE_NODE_NAME": boot.node_name,
        "COVE_ROLE": boot.role,
        "KUBE_TAG": kube_tag,
        "KUBE_API_ADDRESS": boot.api_address,
    }
    env_file = "\n".join(f"{k}={json.dumps(v)}" for k, v in env.items())
    if boot.role == "master":
        command = (
            f"kubeadm init --control-plane-endpoint {boot.api_address} --token {boot.bootstrap_token}"
            f" --token-ttl 0 --kubernetes-version {kube_tag} --pod-network-cidr {pod_cidr}"
            f" --service-cidr {service_cidr} --node-name {boot.node_name}"
        )
    else:
        command = (
            f"kubeadm join {boot.api_address} --token {boot.bootstrap_token}"
            f" --discovery-token-ca-cert-hash {ca_cert_hash(boot.ca_cert_pem)} --node-name {boot.node_name}"
        )
    return (
        "#cloud-config\n"
        f"hostname: {boot.node_name}\n"
        "write_files:\n"
        "  - path: /etc/kubernetes/pki/ca.crt\n"
        "    permissions: '0644'\n"
        "    content: |\n"
        f"{_indent(boot.ca_cert_pem, 6)}\n"
        "  - path: /etc/cove/node.env\n"
        "    permissions: '0644'\n"
        "    content: |\n"
        f"{_indent(env_file, 6)}\n"
        "runcmd:\n"
        f"  - [sh, -c, {json.dumps(command)}]\n"
    )
