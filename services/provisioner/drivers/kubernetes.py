"""The Kubernetes driver: kubeadm on Debian/Ubuntu images, containerd, flannel or calico.

Rendering keeps every value out of shell text: the bootstrap script is a constant; what varies is written as data
(an environment file whose values are ``shlex.quote``d, a kubeadm configuration and a systemd environment file,
each emitted by a serialiser), and the whole document by PyYAML. Names, labels and proxies may therefore contain
anything (quotes, newlines, ``$(...)``): they reach the node as values, never as code.

Certificates (docs/adr/0006): the cluster CA from the certs service is the Kubernetes CA. The first master gets
its key (0600) so ``kubeadm init`` signs the control plane's certificates with it and the controller manager signs
the kubelets'; it uploads them encrypted (``--upload-certs``) with a certificate key derived from the CA key,
which the other masters get instead of the CA key. Workers get neither, only the bootstrap token and the CA pin.
The cluster's etcd and front-proxy CAs (issue 19) go to the first master where kubeadm looks for them
(``pki/etcd/ca.{crt,key}``, ``pki/front-proxy-ca.{crt,key}``), so kubeadm uses them instead of making its own
and uploads them with the rest; a cluster from before has none and kubeadm makes them as it did.

Users (issue 19): the certs service signs each user's certificate with O = ``cove:cluster-admins`` (members) or
``cove:cluster-viewers`` (readers). The first master binds them right after ``kubeadm init`` (``RBAC_PATH``):
the first to the ``cluster-admin`` ClusterRole, the second to ``view``. A Cove group bound explicitly rather than
``system:masters``: that group bypasses RBAC and no binding can take it away, while these bindings can be
removed or narrowed by the cluster's own admins, and show in ``kubectl get clusterrolebindings``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proto import labels as label_rules
from services.provisioner.drivers.base import (
    Answer,
    CoeHealth,
    HealthCheck,
    NodeContext,
    PortRule,
    Probe,
    Role,
)
from services.provisioner.drivers.render import (
    ENV_PATH,
    SHELL_HELPERS,
    dump_yaml_all,
    endpoint,
    node_document,
    proxy_files,
    shell_env,
)
from services.provisioner.drivers.render import host_name as kube_node_name
from services.provisioner.drivers.render import write_file as _write

COE = "kubernetes"
CRI_SOCKET = "unix:///run/containerd/containerd.sock"

CA_CERT_PATH = "/etc/kubernetes/pki/ca.crt"
CA_KEY_PATH = "/etc/kubernetes/pki/ca.key"
ETCD_CA_CERT_PATH = "/etc/kubernetes/pki/etcd/ca.crt"
ETCD_CA_KEY_PATH = "/etc/kubernetes/pki/etcd/ca.key"
FRONT_PROXY_CA_CERT_PATH = "/etc/kubernetes/pki/front-proxy-ca.crt"
FRONT_PROXY_CA_KEY_PATH = "/etc/kubernetes/pki/front-proxy-ca.key"
RBAC_PATH = "/etc/cove/rbac.yaml"
CLIENT_CA_PATH = "/etc/kubernetes/pki/client-ca.crt"
"""During a CA rotation's roll: the CAs (new and old) whose client certificates the API server accepts."""
PATCHES_DIR = "/etc/cove/kubeadm-patches"
ADMIN_GROUP = "cove:cluster-admins"
"""Must equal ``services.certs.ca.ADMIN_GROUP`` (tests check it): bound to ``cluster-admin``."""
VIEW_GROUP = "cove:cluster-viewers"
"""Must equal ``services.certs.ca.VIEW_GROUP``: bound to ``view``."""
KUBEADM_CONFIG_PATH = "/etc/cove/kubeadm.yaml"
SCRIPT_PATH = "/usr/local/sbin/cove-bootstrap"
ETCD_DIR = "/var/lib/etcd"
CONTAINERD_DIR = "/var/lib/containerd"

_TOKEN_RE = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
_BOOTSTRAP_GROUP = "system:bootstrappers:kubeadm:default-node-token"


# --------------------------------------------------------------------------- derived secrets and names


def ca_cert_hash(ca_cert_pem: str) -> str:
    """kubeadm's discovery pin: ``sha256:<hex of SHA-256 over the CA's DER SubjectPublicKeyInfo>``."""
    try:
        cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    except ValueError as e:
        raise ValueError(f"ca_cert_pem is not a PEM certificate: {e}") from None
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


def certificate_key(ca_key_pem: str, cluster_id: str) -> str:
    """kubeadm's ``--certificate-key`` (32 bytes, hex) with which the first master uploads the control plane's
    certificates and keys (encrypted) and the other masters download them.

    Derived, like the bootstrap token, so every render agrees; but from the CA key, not from the bootstrap token:
    kubeadm lets the bootstrap token read the uploaded ``kubeadm-certs`` Secret, and every worker holds that token,
    so a key a worker could derive would hand it the CA key."""
    key = _load_key(ca_key_pem)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return hmac.new(der, b"cove/kubeadm-certificate-key/" + cluster_id.encode(), hashlib.sha256).hexdigest()


def _load_key(ca_key_pem: str) -> Any:
    try:
        return serialization.load_pem_private_key(ca_key_pem.encode(), password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"ca_key_pem is not an unencrypted PEM private key: {e}") from None


# --------------------------------------------------------------------------- the bootstrap script

BOOTSTRAP_SCRIPT = r"""#!/bin/bash
# Cove's Kubernetes node bootstrap (kubeadm). A constant: everything it depends on is read from the environment
# file and the kubeadm configuration that cloud-init wrote beside it.
set -euo pipefail
umask 022
# shellcheck source=/dev/null
. /etc/cove/node.env

KUBEADM_CONFIG=/etc/cove/kubeadm.yaml
JOIN_ATTEMPTS=90
DASHBOARD_MANIFEST=https://raw.githubusercontent.com/kubernetes/dashboard/v2.7.0/aio/deploy/recommended.yaml

""" + SHELL_HELPERS + r"""
prepare_host() {
  swapoff -a
  sed -i '/^[^#].*[[:space:]]swap[[:space:]]/ s/^/#/' /etc/fstab
  modprobe overlay
  modprobe br_netfilter
  sysctl --system >/dev/null
}

install_packages() {
  export DEBIAN_FRONTEND=noninteractive
  retry 10 10 apt-get update -q
  retry 10 10 apt-get install -y -q ca-certificates curl containerd
  install -d -m 0755 /etc/apt/keyrings
  retry 10 10 curl -fsSL -o /etc/apt/keyrings/kubernetes.asc \
    "https://pkgs.k8s.io/core:/stable:/${KUBE_MINOR}/deb/Release.key"
  printf 'deb [signed-by=/etc/apt/keyrings/kubernetes.asc] https://pkgs.k8s.io/core:/stable:/%s/deb/ /\n' \
    "$KUBE_MINOR" >/etc/apt/sources.list.d/kubernetes.list
  retry 10 10 apt-get update -q
  retry 10 10 apt-get install -y -q "kubelet=${KUBE_VERSION}-*" "kubeadm=${KUBE_VERSION}-*" \
    "kubectl=${KUBE_VERSION}-*"
  apt-mark hold kubelet kubeadm kubectl containerd
}

configure_containerd() {
  install -d -m 0755 /etc/containerd
  containerd config default >/etc/containerd/config.toml
  if [ "$CGROUP_DRIVER" = systemd ]; then
    sed -i 's/SystemdCgroup = false/SystemdCgroup = true/' /etc/containerd/config.toml
  fi
  systemctl daemon-reload
  systemctl enable containerd
  systemctl restart containerd
  systemctl enable kubelet
}

api_ready() {
  kubectl --kubeconfig /etc/kubernetes/admin.conf get --raw=/readyz >/dev/null 2>&1
}

api_answers() {
  curl --silent --fail --max-time 5 --noproxy '*' --cacert /etc/cove/ca.crt \
    "https://${API_ENDPOINT}/healthz" >/dev/null
}

install_cni() {
  local manifest=/etc/cove/cni.yaml
  case "$NETWORK_DRIVER" in
    flannel)
      retry 10 10 curl -fsSL -o "$manifest" \
        "https://github.com/flannel-io/flannel/releases/download/${CNI_TAG}/kube-flannel.yml"
      sed -i "s#10.244.0.0/16#${POD_CIDR}#g" "$manifest"
      ;;
    calico)
      retry 10 10 curl -fsSL -o "$manifest" \
        "https://raw.githubusercontent.com/projectcalico/calico/${CNI_TAG}/manifests/calico.yaml"
      sed -i -e 's|# - name: CALICO_IPV4POOL_CIDR|- name: CALICO_IPV4POOL_CIDR|' \
        -e "s|#   value: \"192.168.0.0/16\"|  value: \"${POD_CIDR}\"|" "$manifest"
      ;;
    *)
      log "unknown network driver: $NETWORK_DRIVER"
      return 1
      ;;
  esac
  retry 10 10 kubectl --kubeconfig /etc/kubernetes/admin.conf apply -f "$manifest"
}

init_control_plane() {
  kubeadm init --config "$KUBEADM_CONFIG" --upload-certs
  retry 60 5 api_ready
  retry 10 10 kubectl --kubeconfig /etc/kubernetes/admin.conf apply -f /etc/cove/rbac.yaml
  install_cni
  if [ "$DASHBOARD_ENABLED" = true ]; then
    retry 10 10 kubectl --kubeconfig /etc/kubernetes/admin.conf apply -f "$DASHBOARD_MANIFEST"
  fi
}

# Join the control plane or the workers: wait for the API to answer, then join; a failed join is undone and
# tried again (the first master may still be uploading its certificates), a bounded number of times.
join_cluster() {
  local n=1
  until api_answers && kubeadm join --config "$KUBEADM_CONFIG"; do
    if [ "$n" -ge "$JOIN_ATTEMPTS" ]; then
      log "could not join ${API_ENDPOINT} after $n attempts"
      return 1
    fi
    kubeadm reset --force >/dev/null 2>&1 || true
    n=$((n + 1))
    sleep 10
  done
}

main() {
  log "bootstrapping ${KUBE_NODE_NAME} (${COVE_ROLE}) of cluster ${COVE_CLUSTER_ID}"
  install -d -m 0755 /etc/cove
  install -m 0644 /etc/kubernetes/pki/ca.crt /etc/cove/ca.crt
  use_proxy
  prepare_host
  install_packages
  configure_containerd
  if [ "$COVE_ROLE" = master ] && [ "$COVE_FIRST_MASTER" = true ]; then
    init_control_plane
  else
    join_cluster
  fi
  log "done"
}

main "$@"
"""

_MODULES = "overlay\nbr_netfilter\n"
_CLIENT_CA_PATCH = (
    '[{"op": "add", "path": "/spec/containers/0/command/-", "value": "--client-ca-file=' + CLIENT_CA_PATH + '"}]\n'
)
_SYSCTL = "net.bridge.bridge-nf-call-iptables = 1\nnet.bridge.bridge-nf-call-ip6tables = 1\nnet.ipv4.ip_forward = 1\n"


# --------------------------------------------------------------------------- the driver


def _network_driver(value: str | None) -> str:
    driver = value or label_rules.DEFAULT_NETWORK_DRIVER
    if driver not in label_rules.NETWORK_DRIVERS:
        raise ValueError(
            f"network driver {driver!r} is not supported by the Kubernetes driver; supported: "
            f"{', '.join(label_rules.NETWORK_DRIVERS)}"
        )
    return driver


def _kubeadm_api_version(kube_tag: str) -> str:
    minor = int(kube_tag[1:].split(".")[1])
    return "kubeadm.k8s.io/v1beta4" if minor >= 31 else "kubeadm.k8s.io/v1beta3"


def _no_proxy(node: NodeContext, pod_cidr: str, service_cidr: str) -> str:
    given = [p.strip() for p in (node.no_proxy or "").split(",") if p.strip()]
    ours = ["localhost", "127.0.0.1", node.api_host, *node.master_addresses, pod_cidr, service_cidr,
            ".svc", ".cluster.local"]
    return ",".join(dict.fromkeys(given + ours))


class KubernetesDriver:
    coe = COE
    default_api_port = 6443

    def api_address(self, host: str, port: int) -> str:
        return f"https://{endpoint(host, port)}"

    def load_balancer_ports(self, api_port: int) -> list[int]:
        return [api_port]

    def needs_ca_key(self, role: Role) -> bool:
        return role == "master"  # the first master's kubeadm signs with it; the others derive the certificate key

    def needs_all_master_addresses(self) -> bool:
        return False  # kubeadm joins through the API address

    def needs_server_certificate(self, role: Role) -> bool:
        return False  # kubeadm makes the control plane's certificates on the masters from the CA key (ADR 0006)

    def port_rules(self, role: Role, *, api_port: int, network_driver: str | None) -> list[PortRule]:
        if not 1 <= api_port <= 65535:
            raise ValueError(f"API port {api_port} is not a TCP port")
        overlay = _overlay_rules(_network_driver(network_driver))
        if role == "master":
            return [
                PortRule("tcp", api_port, api_port, "allowed", "Kubernetes API"),
                PortRule("tcp", api_port, api_port, "cluster", "Kubernetes API from the nodes"),
                PortRule("tcp", 22, 22, "allowed", "SSH"),
                PortRule("tcp", 2379, 2380, "cluster", "etcd client and peer"),
                PortRule("tcp", 10250, 10250, "cluster", "kubelet API"),
                PortRule("tcp", 10257, 10257, "cluster", "kube-controller-manager"),
                PortRule("tcp", 10259, 10259, "cluster", "kube-scheduler"),
                *overlay,
            ]
        if role == "worker":
            return [
                PortRule("tcp", 22, 22, "allowed", "SSH"),
                PortRule("tcp", 10250, 10250, "cluster", "kubelet API"),
                PortRule("tcp", 30000, 32767, "allowed", "NodePort services"),
                *overlay,
            ]
        raise ValueError(f"unknown node role {role!r}")

    def user_data(self, node: NodeContext) -> str:
        labels = _labels(node)
        driver = _network_driver(node.network_driver)
        _check_node(node)
        kube_tag = labels["kube_tag"]
        pod_cidr = labels[label_rules.POD_NETWORK_LABEL[driver]]
        service_cidr = labels["service_cluster_ip_range"]
        cni_tag = labels["calico_tag" if driver == "calico" else "flannel_tag"]
        node_name = kube_node_name(node.node_name)
        first = node.role == "master" and node.is_first_master
        proxied = bool(node.http_proxy or node.https_proxy)
        proxy = {
            "HTTP_PROXY": node.http_proxy or "",
            "HTTPS_PROXY": node.https_proxy or "",
            "NO_PROXY": _no_proxy(node, pod_cidr, service_cidr) if proxied else (node.no_proxy or ""),
        }
        env = {
            "COVE_CLUSTER_ID": node.cluster_id,
            "COVE_CLUSTER_NAME": node.cluster_name,
            "COVE_NODE_NAME": node.node_name,
            "COVE_NODEGROUP": node.nodegroup,
            "COVE_ROLE": node.role,
            "COVE_FIRST_MASTER": "true" if first else "false",
            "KUBE_NODE_NAME": node_name,
            "KUBE_TAG": kube_tag,
            "KUBE_VERSION": kube_tag[1:],
            "KUBE_MINOR": ".".join(kube_tag.split(".")[:2]),
            "API_HOST": node.api_host,
            "API_PORT": str(node.api_port),
            "API_ENDPOINT": endpoint(node.api_host, node.api_port),
            "NETWORK_DRIVER": driver,
            "CNI_TAG": cni_tag,
            "POD_CIDR": pod_cidr,
            "SERVICE_CIDR": service_cidr,
            "CGROUP_DRIVER": labels["cgroup_driver"],
            "CONTAINER_RUNTIME": labels["container_runtime"],
            "DASHBOARD_ENABLED": "true" if label_rules.as_bool(labels["kube_dashboard_enabled"]) else "false",
            "ETCD_VOLUME_DEVICE": node.etcd_volume_device or "",
            "CONTAINER_VOLUME_DEVICE": node.docker_volume_device or "",
            **proxy,
        }
        files = [_write(CA_CERT_PATH, node.ca_cert_pem, "0644")]
        if node.role == "master" and node.client_ca_bundle_pem:
            files += [_write(CLIENT_CA_PATH, node.client_ca_bundle_pem, "0644"),
                      _write(f"{PATCHES_DIR}/kube-apiserver0+json.json", _CLIENT_CA_PATCH, "0644")]
        if first or (node.role == "master" and node.rejoin):
            assert node.ca_key_pem is not None
            files.append(_write(CA_KEY_PATH, node.ca_key_pem, "0600"))
            for cert_path, cert_pem, key_path, key_pem in (
                (ETCD_CA_CERT_PATH, node.etcd_ca_cert_pem, ETCD_CA_KEY_PATH, node.etcd_ca_key_pem),
                (FRONT_PROXY_CA_CERT_PATH, node.front_proxy_ca_cert_pem, FRONT_PROXY_CA_KEY_PATH,
                 node.front_proxy_ca_key_pem),
            ):
                if cert_pem is not None and key_pem is not None:
                    files += [_write(cert_path, cert_pem, "0644"), _write(key_path, key_pem, "0600")]
            files.append(_write(RBAC_PATH, rbac_manifest(), "0644"))
        files += [
            _write(ENV_PATH, shell_env(env), "0600"),
            _write(KUBEADM_CONFIG_PATH, self.kubeadm_config(node, labels, driver), "0600"),
            _write("/etc/modules-load.d/cove-kubernetes.conf", _MODULES, "0644"),
            _write("/etc/sysctl.d/99-cove-kubernetes.conf", _SYSCTL, "0644"),
        ]
        if proxied or node.no_proxy:
            files += proxy_files(proxy, ["containerd.service", "kubelet.service"])
        files.append(_write(SCRIPT_PATH, BOOTSTRAP_SCRIPT, "0755"))
        volumes = [(node.docker_volume_device, CONTAINERD_DIR, "containerd")]
        if node.role == "master":
            volumes.append((node.etcd_volume_device, ETCD_DIR, "etcd"))
        return node_document(node_name, files, volumes, SCRIPT_PATH)

    def kubeadm_config(self, node: NodeContext, labels: dict[str, str], driver: str) -> str:
        """The node's kubeadm configuration: Init-, Cluster- and KubeletConfiguration on the first master, a
        JoinConfiguration (with the certificate key on masters) on every other node."""
        api_version = _kubeadm_api_version(labels["kube_tag"])
        api = endpoint(node.api_host, node.api_port)
        registration: dict[str, Any] = {"name": kube_node_name(node.node_name), "criSocket": CRI_SOCKET}
        ignored = []
        if node.role == "master" and node.etcd_volume_device:
            ignored.append("DirAvailable--var-lib-etcd")  # a fresh filesystem's lost+found
        if not (node.role == "master" and node.is_first_master):
            ignored.append("FileAvailable--etc-kubernetes-pki-ca.crt")  # written by cloud-init, the same CA
        if node.role == "master" and node.rejoin:
            ignored.append("FileAvailable--etc-kubernetes-pki-ca.key")  # a roll's master brings the CA files
        if ignored:
            registration["ignorePreflightErrors"] = ignored
        if node.role == "master" and node.is_first_master:
            assert node.ca_key_pem is not None
            docs: list[dict[str, Any]] = [
                {
                    "apiVersion": api_version,
                    "kind": "InitConfiguration",
                    "bootstrapTokens": [{
                        "token": node.bootstrap_token,
                        "ttl": "0s",
                        "description": "Cove: nodes of this cluster join with it",
                        "groups": [_BOOTSTRAP_GROUP],
                        "usages": ["signing", "authentication"],
                    }],
                    "certificateKey": certificate_key(node.ca_key_pem, node.cluster_id),
                    "nodeRegistration": registration,
                    "localAPIEndpoint": {"bindPort": node.api_port},
                },
                {
                    "apiVersion": api_version,
                    "kind": "ClusterConfiguration",
                    "kubernetesVersion": labels["kube_tag"],
                    "controlPlaneEndpoint": api,
                    "networking": {
                        "podSubnet": labels[label_rules.POD_NETWORK_LABEL[driver]],
                        "serviceSubnet": labels["service_cluster_ip_range"],
                    },
                    "apiServer": {"certSANs": list(dict.fromkeys([node.api_host, *node.api_sans, *node.master_addresses]))},
                },
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "cgroupDriver": labels["cgroup_driver"],
                },
            ]
        else:
            join: dict[str, Any] = {
                "apiVersion": api_version,
                "kind": "JoinConfiguration",
                "discovery": {"bootstrapToken": {
                    "apiServerEndpoint": api,
                    "token": node.bootstrap_token,
                    "caCertHashes": [ca_cert_hash(node.ca_cert_pem)],
                }},
                "nodeRegistration": registration,
            }
            if node.role == "master":
                assert node.ca_key_pem is not None
                join["controlPlane"] = {
                    "certificateKey": certificate_key(node.ca_key_pem, node.cluster_id),
                    "localAPIEndpoint": {"bindPort": node.api_port},
                }
            docs = [join]
        if node.role == "master" and node.client_ca_bundle_pem:
            docs[0]["patches"] = {"directory": PATCHES_DIR}  # kube-apiserver --client-ca-file: the bundle
        return dump_yaml_all(docs)

    def health_checks(self) -> list[HealthCheck]:
        return [
            HealthCheck("kube-apiserver", "cluster",
                        "the API server's /healthz through the cluster's API address and port (api_address)",
                        port=None, path="/healthz"),
            HealthCheck("kubelet", "master", "the kubelet's /healthz on the node (127.0.0.1)", port=10248,
                        path="/healthz"),
            HealthCheck("kubelet", "worker", "the kubelet's /healthz on the node (127.0.0.1)", port=10248,
                        path="/healthz"),
            HealthCheck("etcd", "master", "etcd's /health on the master's metrics listener (127.0.0.1)",
                        port=2381, path="/health"),
        ]

    def health_probes(self) -> list[Probe]:
        """Magnum's Kubernetes monitor: the API server's ``/healthz``, and every node's ``Ready`` condition."""
        return [Probe("api", "/healthz"), Probe("nodes", "/api/v1/nodes")]

    def read_health(self, answers: Mapping[str, Answer]) -> CoeHealth:
        return kubernetes_health(answers)

    def cluster_config(self) -> str:
        return (
            "A kubeconfig whose server is the cluster's api_address (https) and whose client certificate "
            "is signed by the cluster's CA, the CA the API server trusts; its subject names the Keystone user who "
            f"asked (CN) and the group the cluster binds ({ADMIN_GROUP}: cluster-admin, {VIEW_GROUP}: view)."
        )


def rbac_manifest() -> str:
    """The ClusterRoleBindings of Cove's user groups and of the provisioner's health check (``HEALTH_USER`` reads
    nodes), applied by the first master after ``kubeadm init``."""
    def binding(group: str, role: str) -> dict[str, Any]:
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": group, "labels": {"app.kubernetes.io/managed-by": "cove"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
        }

    health = binding(HEALTH_USER, HEALTH_ROLE)  # the provisioner's health check reads the nodes' Ready condition
    health["metadata"]["name"] = "cove:provisioner-health"
    health["subjects"] = [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": HEALTH_USER}]
    return dump_yaml_all([binding(ADMIN_GROUP, "cluster-admin"), binding(VIEW_GROUP, "view"), health])


def _overlay_rules(driver: str) -> list[PortRule]:
    if driver == "flannel":
        return [PortRule("udp", 8472, 8472, "cluster", "flannel VXLAN")]
    return [
        PortRule("tcp", 179, 179, "cluster", "calico BGP"),
        PortRule("ipip", None, None, "cluster", "calico IP-in-IP"),
    ]


def _labels(node: NodeContext) -> dict[str, str]:
    problems = label_rules.validate_labels(COE, node.labels, network_driver=node.network_driver)
    if problems:
        raise ValueError(" ".join(problems))
    return label_rules.resolved(COE, node.labels)


def _check_node(node: NodeContext) -> None:
    if node.role not in ("master", "worker"):
        raise ValueError(f"unknown node role {node.role!r}")
    if node.role == "worker":
        if node.is_first_master:
            raise ValueError("a worker cannot be the first master")
        if node.ca_key_pem is not None:
            raise ValueError("a worker never receives the cluster CA's key (docs/adr/0006)")
        if node.etcd_volume_device:
            raise ValueError("an etcd volume is for masters only")
    elif node.ca_key_pem is None:
        raise ValueError("a master needs the cluster CA's key (ca_key_pem) to init or join the control plane")
    if not _TOKEN_RE.fullmatch(node.bootstrap_token):
        raise ValueError("bootstrap_token is not a kubeadm token ([a-z0-9]{6}.[a-z0-9]{16})")
    if not node.api_host or any(c.isspace() for c in node.api_host):
        raise ValueError(f"api_host {node.api_host!r} is not a host name or address")
    if not 1 <= node.api_port <= 65535:
        raise ValueError(f"api_port {node.api_port} is not a TCP port")
    ca_cert_hash(node.ca_cert_pem)
    for name, cert_pem, key_pem in (("etcd", node.etcd_ca_cert_pem, node.etcd_ca_key_pem),
                                    ("front-proxy", node.front_proxy_ca_cert_pem, node.front_proxy_ca_key_pem)):
        if (cert_pem is None) != (key_pem is None):
            raise ValueError(f"the {name} CA needs both its certificate and its key")
        if key_pem is not None and not (node.role == "master" and (node.is_first_master or node.rejoin)):
            raise ValueError(f"only the first master receives the {name} CA's key")
    if node.ca_key_pem is not None:
        cert = x509.load_pem_x509_certificate(node.ca_cert_pem.encode())
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        if _load_key(node.ca_key_pem).public_key().public_bytes(serialization.Encoding.DER, public) != \
                cert.public_key().public_bytes(serialization.Encoding.DER, public):
            raise ValueError("ca_key_pem is not the key of ca_cert_pem")


HEALTH_USER = "cove-provisioner"
"""The CN of the provisioner's client certificate (``coeapi.CLIENT_NAME``): bound to ``HEALTH_ROLE`` by
``rbac_manifest`` so that the health check may list the nodes, and nothing more than that role reads."""
HEALTH_ROLE = "system:heapster"
"""A ClusterRole every Kubernetes has (bootstrap policy): get, list and watch of nodes, pods, namespaces and events,
no write and no secret."""


def kubernetes_health(answers: Mapping[str, Answer]) -> CoeHealth:
    """``/healthz`` must answer 200 ``ok``; each node listed by ``/api/v1/nodes`` is ready when its ``Ready``
    condition is ``True`` (a node the API does not list, or a node list the API refused, is not judged here)."""
    healthz = answers.get("api") or Answer(error="not asked")
    api = healthz.failure()
    if api is None and healthz.body.strip() != "ok":
        api = f"/healthz answered {healthz.body.strip()[:120]!r}"
    nodes: dict[str, tuple[bool, str]] = {}
    listed = answers.get("nodes")
    if api is None and listed is not None and listed.failure() is None:
        try:
            items = json.loads(listed.body).get("items") or []
        except (ValueError, AttributeError):
            items = []
        for item in items:
            if not isinstance(item, dict):
                continue
            name = str((item.get("metadata") or {}).get("name") or "")
            conditions = (item.get("status") or {}).get("conditions") or []
            ready = next((c for c in conditions if isinstance(c, dict) and c.get("type") == "Ready"), None)
            if not name:
                continue
            if ready is None:
                nodes[name] = (False, "Kubernetes reports no Ready condition for the node")
            elif ready.get("status") == "True":
                nodes[name] = (True, "")
            else:
                why = ": ".join(str(x) for x in (ready.get("reason"), ready.get("message")) if x)
                nodes[name] = (False, f"Kubernetes reports the node Ready={ready.get('status')}"
                                      + (f" ({why})" if why else ""))
    return CoeHealth(api=api, nodes=nodes)

