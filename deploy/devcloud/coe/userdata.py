"""What a node's user data gives it, as far as its COE's endpoints are concerned: the files its ``#cloud-config``
writes (``write_files``) and the facts of its environment file, read as the node would read them. Nothing here
asks Cove anything."""

from __future__ import annotations

import base64
import binascii
import functools
import shlex
from dataclasses import dataclass, field

import yaml

ENV_PATH = "/etc/cove/node.env"
"""Every driver's shell environment file: COVE_COE, COVE_CLUSTER_ID, COVE_ROLE, COVE_FIRST_MASTER, API_HOST..."""
CA_PATH = "/etc/cove/ca.pem"
"""The cluster CA certificate on every Swarm and Mesos node."""
KUBE_CA_CERT_PATH = "/etc/kubernetes/pki/ca.crt"
KUBE_CA_KEY_PATH = "/etc/kubernetes/pki/ca.key"
KUBEADM_CONFIG_PATH = "/etc/cove/kubeadm.yaml"
RBAC_PATH = "/etc/cove/rbac.yaml"
KUBE_CLIENT_CA_PATH = "/etc/kubernetes/pki/client-ca.crt"
"""Kubernetes masters during a CA rotation's roll: the CAs (new and old) the API server accepts clients of."""
"""Kubernetes: the ClusterRoleBindings the first master applies after ``kubeadm init`` (Cove's user groups)."""
DOCKER_CA_PATH = "/etc/docker/tls/ca.pem"
DOCKER_CERT_PATH = "/etc/docker/tls/server-cert.pem"
DOCKER_KEY_PATH = "/etc/docker/tls/server-key.pem"
DEFAULT_KUBE_TAG = "v1.30.4"  # what the driver's labels default to when the environment file names none
DEFAULT_API_PORTS = {"kubernetes": 6443, "swarm-mode": 2376, "mesos": 8080}
COE_ALIASES = {"swarm": "swarm-mode"}  # Magnum's API accepted "swarm" for Swarm


@dataclass(frozen=True)
class NodeFiles:
    """What a node's user data gives it (a Kubernetes, Swarm-mode or Mesos node of Cove's drivers)."""

    coe: str
    node_name: str
    role: str
    first_master: bool
    api_host: str
    api_port: int
    ca_cert_pem: str
    ca_key_pem: str | None = None
    """Kubernetes: the cluster CA's key, on the first master (and the masters a roll booted) only."""
    client_ca_pems: tuple[str, ...] = ()
    """Kubernetes: the client CA bundle of a CA rotation's roll (new and old CA); empty: the cluster CA alone."""
    kube_tag: str = DEFAULT_KUBE_TAG
    service_cidr: str = ""
    cert_sans: tuple[str, ...] = ()
    """Kubernetes: kubeadm's ``certSANs``."""
    group_roles: tuple[tuple[str, str], ...] = ()
    """Kubernetes: (group, ClusterRole) of the ClusterRoleBindings in ``/etc/cove/rbac.yaml``."""
    user_roles: tuple[tuple[str, str], ...] = ()
    """Kubernetes: (user, ClusterRole) of the same bindings' ``User`` subjects (the provisioner's health check)."""
    tls_ca_pem: str | None = None
    server_cert_pem: str | None = None
    server_key_pem: str | None = None
    """Swarm: the Docker engine's TLS files (``/etc/docker/tls/``)."""
    cluster_name: str = ""
    hostname: str = ""
    """The ``#cloud-config``'s ``hostname`` (what the node's engine reports, e.g. Docker's node ``Hostname``)."""
    env: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    """The whole environment file, for what a stand-in reads beyond the fields above."""


@functools.lru_cache(maxsize=8192)  # every reconcile reads every cluster server's: parse each user data once
def read_user_data(raw: str | None) -> NodeFiles | None:
    """The node's files from its (base64, as Nova takes it, or plain) #cloud-config; None when it is not one of
    Cove's nodes."""
    if not raw:
        return None
    text = raw
    try:
        text = base64.b64decode(raw, validate=True).decode()
    except (binascii.Error, ValueError):
        pass
    if not text.startswith("#cloud-config"):
        return None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(doc, dict):
        return None
    files = {f.get("path"): str(f.get("content", "")) for f in doc.get("write_files") or [] if isinstance(f, dict)}
    if ENV_PATH not in files:
        return None
    env = shell_env(files[ENV_PATH])
    kubernetes = KUBE_CA_CERT_PATH in files
    coe = COE_ALIASES.get(env.get("COVE_COE", ""), env.get("COVE_COE", "")) or ("kubernetes" if kubernetes else "")
    ca = files.get(KUBE_CA_CERT_PATH) if coe == "kubernetes" else files.get(CA_PATH)
    if coe not in DEFAULT_API_PORTS or ca is None:
        return None
    try:
        api_port = int(env.get("API_PORT") or DEFAULT_API_PORTS[coe])
    except ValueError:
        return None
    return NodeFiles(
        coe=coe,
        node_name=env.get("KUBE_NODE_NAME") or env.get("COVE_NODE_NAME") or str(doc.get("hostname") or ""),
        role=env.get("COVE_ROLE", ""),
        first_master=env.get("COVE_FIRST_MASTER") == "true",
        api_host=env.get("API_HOST", ""),
        api_port=api_port,
        ca_cert_pem=ca,
        ca_key_pem=files.get(KUBE_CA_KEY_PATH) if coe == "kubernetes" else None,
        client_ca_pems=split_pems(files.get(KUBE_CLIENT_CA_PATH, "")) if coe == "kubernetes" else (),
        kube_tag=env.get("KUBE_TAG") or DEFAULT_KUBE_TAG,
        service_cidr=env.get("SERVICE_CIDR", ""),
        cert_sans=_cert_sans(files.get(KUBEADM_CONFIG_PATH, "")),
        group_roles=_group_roles(files.get(RBAC_PATH, "")),
        user_roles=_group_roles(files.get(RBAC_PATH, ""), kind="User"),
        tls_ca_pem=files.get(DOCKER_CA_PATH),
        server_cert_pem=files.get(DOCKER_CERT_PATH),
        server_key_pem=files.get(DOCKER_KEY_PATH),
        cluster_name=env.get("COVE_CLUSTER_NAME", ""),
        hostname=str(doc.get("hostname") or env.get("COVE_NODE_NAME") or ""),
        env=env,
    )


def split_pems(bundle: str) -> tuple[str, ...]:
    """The certificates of a PEM bundle, each as its own PEM text."""
    end = "-----END CERTIFICATE-----"
    return tuple(part.strip() + "\n" + end + "\n" for part in bundle.split(end) if "-----BEGIN" in part)


def _cert_sans(kubeadm_config: str) -> tuple[str, ...]:
    sans: list[str] = []
    try:
        for part in yaml.safe_load_all(kubeadm_config):
            if isinstance(part, dict) and part.get("kind") == "ClusterConfiguration":
                sans += [str(s) for s in (part.get("apiServer") or {}).get("certSANs") or []]
    except yaml.YAMLError:
        pass
    return tuple(sans)


def _group_roles(manifest: str, kind: str = "Group") -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    try:
        for part in yaml.safe_load_all(manifest):
            if not isinstance(part, dict) or part.get("kind") != "ClusterRoleBinding":
                continue
            role = str((part.get("roleRef") or {}).get("name") or "")
            out += [(str(s.get("name")), role) for s in part.get("subjects") or []
                    if isinstance(s, dict) and s.get("kind") == kind]
    except yaml.YAMLError:
        pass
    return tuple(out)


def shell_env(text: str) -> dict[str, str]:
    """``NAME='value'`` lines as a shell's ``.`` reads them (values quoted by shlex)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if not sep:
            continue
        try:
            words = shlex.split(value)
        except ValueError:
            continue
        out[name.strip()] = words[0] if words else ""
    return out
