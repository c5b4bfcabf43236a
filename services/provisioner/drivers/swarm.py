"""The Docker Swarm-mode driver (coe ``swarm-mode``, also Magnum's ``swarm``): Debian/Ubuntu's ``docker.io`` engine
on every node, TLS on the API port, ``docker swarm init`` on the first manager, joins through the API address.

Rendering follows the Kubernetes driver: the bootstrap script is a constant; what varies is written as data (the
``shlex.quote``d environment file, the engine's ``daemon.json`` by ``json.dumps``, the proxies' systemd environment
file) and the whole document by PyYAML, so names, labels and proxies reach the node as values, never as code.

Certificates: every node gets its own certificate and key from the certs service (``needs_server_certificate`` is
true for both roles), signed by the cluster CA with server and client authentication. The engine serves TLS with
it and verifies clients against the cluster CA (``tlsverify``), so only holders of a certificate from this
cluster's CA (users' ``cluster config`` certificates, the nodes) reach an engine. A joining node uses its own
certificate as a client of the first manager's engine (``API_HOST:API_PORT``) to read the join token, then joins
through ``API_HOST:2377`` (the load balancer forwards 2377 too: ``load_balancer_ports``). No node gets the CA key.

Network drivers: ``docker`` (the default, as in Magnum): Swarm mode's own overlay networks (VXLAN on 4789/udp,
gossip on 7946). ``flannel`` is refused with ``ValueError``: Magnum's Swarm-mode driver had no flannel either
(flannel served the classic Swarm's bridge through etcd); Swarm mode's overlay networks do not use it, and a
cluster that asked for it would silently not get it. The API should refuse it for ``swarm-mode``/``swarm``.

Labels (``proto.labels.SWARM_LABELS``): ``docker_volume_type`` and ``availability_zone`` are read by the
provisioner, not the nodes; ``swarm_strategy`` is Magnum's classic-Swarm (v1) scheduler strategy, which Swarm mode
has no counterpart for: validated by the API, ignored here; ``flannel_network_cidr`` only with flannel, refused.

Security groups: the API port (2376) from the allow-list (users' docker clients, each engine's ``/_ping``) and from
the cluster (joining nodes read the join token), 2377/tcp from the cluster on managers only (workers never serve
it: they only connect to managers), 7946/tcp+udp and 4789/udp from the cluster, SSH from the allow-list. Nothing
else.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

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
    CA_PATH,
    ENGINE_HELPERS,
    ENV_PATH,
    SHELL_HELPERS,
    ca_keys_given,
    check_host,
    endpoint,
    host_name,
    node_document,
    proxy_files,
    shell_env,
    write_file,
)

COE = "swarm-mode"
API_PORT = 2376
SWARM_PORT = 2377
"""Swarm's cluster management port (joins and the managers' Raft)."""
NETWORK_DRIVERS = ("docker",)
DEFAULT_NETWORK_DRIVER = "docker"

TLS_DIR = "/etc/docker/tls"
TLS_CA_PATH = f"{TLS_DIR}/ca.pem"
TLS_CERT_PATH = f"{TLS_DIR}/server-cert.pem"
TLS_KEY_PATH = f"{TLS_DIR}/server-key.pem"
DAEMON_JSON_PATH = "/etc/docker/daemon.json"
HOSTS_DROP_IN_PATH = "/etc/systemd/system/docker.service.d/cove-hosts.conf"
PROXY_DROP_IN_PATH = "/etc/systemd/system/docker.service.d/cove-proxy.conf"
"""Where ``render.proxy_files`` puts the Docker engine's proxy drop-in."""
SCRIPT_PATH = "/usr/local/sbin/cove-bootstrap"
DOCKER_DIR = "/var/lib/docker"

# Debian's and Ubuntu's docker.service start ``dockerd -H fd://``, which conflicts with ``hosts`` in daemon.json
# (dockerd refuses to start with both); the drop-in clears it. The command has no directory because Debian installs
# dockerd in /usr/sbin and Ubuntu in /usr/bin: systemd finds it on its fixed search path.
HOSTS_DROP_IN = "[Service]\nExecStart=\nExecStart=dockerd --containerd=/run/containerd/containerd.sock\n"

BOOTSTRAP_SCRIPT = r"""#!/bin/bash
# Cove's Docker Swarm-mode node bootstrap. A constant: everything it depends on is read from the environment file
# that cloud-init wrote beside it, and the engine's configuration is daemon.json, written by cloud-init too.
set -euo pipefail
umask 022
# shellcheck source=/dev/null
. /etc/cove/node.env

TLS_DIR=/etc/docker/tls
JOIN_ATTEMPTS=90

""" + SHELL_HELPERS + r"""
# The engine starts with daemon.json and the drop-ins already in place (cloud-init wrote them before this runs),
# on /var/lib/docker already mounted from the volume when there is one.
""" + ENGINE_HELPERS + r"""
swarm_state() {
  docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || true
}

# The address this node advertises to the swarm: its fixed IP when the provisioner knew it, else the source
# address of its route to the API host.
own_address() {
  local target
  if [ -n "$NODE_ADDRESS" ]; then
    printf '%s\n' "$NODE_ADDRESS"
    return 0
  fi
  target=$(getent ahosts "$API_HOST" | awk 'NR == 1 { print $1 }')
  ip -o route get "$target" | sed -n 's/.* src \([^ ]*\).*/\1/p'
}

# The docker CLI talking to the manager at the API address over TLS, with this node's own certificate (it has
# client authentication too, and every engine trusts the cluster CA).
manager() {
  docker --tlsverify --tlscacert "$TLS_DIR/ca.pem" --tlscert "$TLS_DIR/server-cert.pem" \
    --tlskey "$TLS_DIR/server-key.pem" -H "tcp://${API_ENDPOINT}" "$@"
}

# join_swarm manager|worker ADDRESS: read the join token from a manager, then join through the API address; a
# failed join is undone and tried again (the first manager may still be initialising), a bounded number of times.
join_swarm() {
  local kind=$1 address=$2 token n=1
  until token=$(manager swarm join-token -q "$kind" 2>/dev/null) && [ -n "$token" ] &&
    docker swarm join --token "$token" --advertise-addr "$address" "$SWARM_ENDPOINT"; do
    if [ "$n" -ge "$JOIN_ATTEMPTS" ]; then
      log "could not join the swarm at ${SWARM_ENDPOINT} as a ${kind} after $n attempts"
      return 1
    fi
    docker swarm leave --force >/dev/null 2>&1 || true
    n=$((n + 1))
    sleep 10
  done
}

main() {
  local address
  log "bootstrapping ${COVE_NODE_NAME} (${COVE_ROLE}) of cluster ${COVE_CLUSTER_ID}"
  use_proxy
  install_engine
  retry 30 2 engine_up
  if [ "$(swarm_state)" = active ]; then
    log "already in the swarm"
    return 0
  fi
  address=$(own_address)
  if [ -z "$address" ]; then
    log "cannot tell this node's address"
    return 1
  fi
  if [ "$COVE_ROLE" = master ] && [ "$COVE_FIRST_MASTER" = true ]; then
    docker swarm init --advertise-addr "$address"
  elif [ "$COVE_ROLE" = master ]; then
    join_swarm manager "$address"
  else
    join_swarm worker "$address"
  fi
  log "done"
}

main "$@"
"""


def swarm_network_driver(value: str | None) -> str:
    """The network driver a Swarm-mode cluster runs with; ``ValueError`` for any but Docker's own overlay."""
    driver = value or DEFAULT_NETWORK_DRIVER
    if driver == "flannel":
        raise ValueError(
            "network driver 'flannel' is not supported by the Swarm-mode driver: Swarm mode's overlay networks are "
            "Docker's own (network driver 'docker'); flannel served only the classic Swarm"
        )
    if driver not in NETWORK_DRIVERS:
        raise ValueError(f"network driver {driver!r} is not supported by the Swarm-mode driver; supported: docker")
    return driver


def daemon_json(api_port: int) -> str:
    """The engine's configuration: TLS with the node's certificate, clients verified against the cluster CA, the
    local socket and the API port on every address."""
    return json.dumps({
        "tls": True,
        "tlsverify": True,
        "tlscacert": TLS_CA_PATH,
        "tlscert": TLS_CERT_PATH,
        "tlskey": TLS_KEY_PATH,
        "hosts": ["unix:///var/run/docker.sock", f"tcp://0.0.0.0:{api_port}"],
    }, indent=2) + "\n"


def _no_proxy(node: NodeContext) -> str:
    given = [p.strip() for p in (node.no_proxy or "").split(",") if p.strip()]
    ours = ["localhost", "127.0.0.1", node.api_host, *node.api_sans, *node.master_addresses]
    if node.node_address:
        ours.append(node.node_address)
    return ",".join(dict.fromkeys(given + ours))


class SwarmDriver:
    coe = COE
    default_api_port = API_PORT

    def api_address(self, host: str, port: int) -> str:
        return f"tcp://{endpoint(host, port)}"  # magnumclient's `cluster config` prints DOCKER_HOST=<api_address>

    def load_balancer_ports(self, api_port: int) -> list[int]:
        return [api_port, SWARM_PORT]  # managers join through the load balancer's address

    def needs_ca_key(self, role: Role) -> bool:
        return False  # each node's certificate comes from the certs service (needs_server_certificate)

    def needs_all_master_addresses(self) -> bool:
        return False  # nodes join through the API address

    def needs_server_certificate(self, role: Role) -> bool:
        return True  # every engine serves TLS, and joining nodes are clients of the first manager's

    def port_rules(self, role: Role, *, api_port: int, network_driver: str | None) -> list[PortRule]:
        if not 1 <= api_port <= 65535:
            raise ValueError(f"API port {api_port} is not a TCP port")
        swarm_network_driver(network_driver)
        if role not in ("master", "worker"):
            raise ValueError(f"unknown node role {role!r}")
        rules = [
            PortRule("tcp", api_port, api_port, "allowed", "Docker engine API (TLS)"),
            PortRule("tcp", api_port, api_port, "cluster", "Docker engine API from the nodes (join tokens)"),
            PortRule("tcp", 22, 22, "allowed", "SSH"),
        ]
        if role == "master":
            rules.append(PortRule("tcp", SWARM_PORT, SWARM_PORT, "cluster", "Swarm cluster management (joins, Raft)"))
        return [
            *rules,
            PortRule("tcp", 7946, 7946, "cluster", "Swarm node gossip (tcp)"),
            PortRule("udp", 7946, 7946, "cluster", "Swarm node gossip (udp)"),
            PortRule("udp", 4789, 4789, "cluster", "Swarm overlay networks (VXLAN)"),
        ]

    def user_data(self, node: NodeContext) -> str:
        _labels(node)
        swarm_network_driver(node.network_driver)
        _check_node(node)
        assert node.server_cert_pem is not None and node.server_key_pem is not None
        first = node.role == "master" and node.is_first_master
        proxied = bool(node.http_proxy or node.https_proxy)
        proxy = {
            "HTTP_PROXY": node.http_proxy or "",
            "HTTPS_PROXY": node.https_proxy or "",
            "NO_PROXY": _no_proxy(node) if proxied else (node.no_proxy or ""),
        }
        env = {
            "COVE_COE": COE,
            "COVE_CLUSTER_ID": node.cluster_id,
            "COVE_CLUSTER_NAME": node.cluster_name,
            "COVE_NODE_NAME": node.node_name,
            "COVE_NODEGROUP": node.nodegroup,
            "COVE_ROLE": node.role,
            "COVE_FIRST_MASTER": "true" if first else "false",
            "API_HOST": node.api_host,
            "API_PORT": str(node.api_port),
            "API_ENDPOINT": endpoint(node.api_host, node.api_port),
            "SWARM_PORT": str(SWARM_PORT),
            "SWARM_ENDPOINT": endpoint(node.api_host, SWARM_PORT),
            "NODE_ADDRESS": node.node_address or "",
            "NETWORK_DRIVER": DEFAULT_NETWORK_DRIVER,
            "DOCKER_VOLUME_DEVICE": node.docker_volume_device or "",
            **proxy,
        }
        files = [
            write_file(CA_PATH, node.ca_cert_pem, "0644"),
            write_file(TLS_CA_PATH, node.ca_cert_pem, "0644"),
            write_file(TLS_CERT_PATH, node.server_cert_pem, "0644"),
            write_file(TLS_KEY_PATH, node.server_key_pem, "0600"),
            write_file(ENV_PATH, shell_env(env), "0600"),
            write_file(DAEMON_JSON_PATH, daemon_json(node.api_port), "0644"),
            write_file(HOSTS_DROP_IN_PATH, HOSTS_DROP_IN, "0644"),
        ]
        if proxied or node.no_proxy:
            files += proxy_files(proxy, ["docker.service"])
        files.append(write_file(SCRIPT_PATH, BOOTSTRAP_SCRIPT, "0755"))
        return node_document(host_name(node.node_name), files, [(node.docker_volume_device, DOCKER_DIR, "docker")],
                             SCRIPT_PATH)

    def health_checks(self) -> list[HealthCheck]:
        return [
            HealthCheck("swarm-managers", "cluster",
                        "a majority of the swarm's managers reachable (GET /nodes through api_address over TLS: "
                        "each manager's ManagerStatus.Reachability), the quorum Raft needs",
                        port=None, path="/nodes"),
            HealthCheck("docker-engine", "master",
                        "the Docker engine's /_ping on the node's API port (TLS, the cluster CA)", port=None,
                        path="/_ping"),
            HealthCheck("docker-engine", "worker",
                        "the Docker engine's /_ping on the node's API port (TLS, the cluster CA)", port=None,
                        path="/_ping"),
        ]

    def health_probes(self) -> list[Probe]:
        """The engine's ``/_ping`` and the swarm's ``/nodes`` (each node's ``Status.State``), over TLS."""
        return [Probe("api", "/_ping"), Probe("nodes", "/nodes")]

    def read_health(self, answers: Mapping[str, Answer]) -> CoeHealth:
        return swarm_health(answers)

    def cluster_config(self) -> str:
        return (
            "A docker environment, as python-magnumclient's `cluster config` writes it for Swarm: "
            "DOCKER_HOST=<api_address> (tcp://host:2376), DOCKER_CERT_PATH=<the directory> and DOCKER_TLS_VERIFY=1, "
            "with ca.pem (the cluster CA), cert.pem and key.pem (a client certificate signed by the cluster CA, "
            "which every engine verifies) written there (--output-certs)."
        )


def _labels(node: NodeContext) -> None:
    problems = label_rules.validate_labels(COE, node.labels, network_driver=node.network_driver)
    if problems:
        raise ValueError(" ".join(problems))


def _load_cert(what: str, pem: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError as e:
        raise ValueError(f"{what} is not a PEM certificate: {e}") from None


def _spki(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


_USAGES = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}


def check_server_certificate(node: NodeContext) -> None:
    """``ValueError`` unless the node's certificate and key are a pair, issued by the cluster CA, for both server
    and client authentication (the engine serves with it and joins with it)."""
    if not node.server_cert_pem or not node.server_key_pem:
        raise ValueError("every Swarm node needs its own TLS certificate and key (server_cert_pem, server_key_pem) "
                         "from the cluster CA")
    ca = _load_cert("ca_cert_pem", node.ca_cert_pem)
    cert = _load_cert("server_cert_pem", node.server_cert_pem)
    try:
        key = serialization.load_pem_private_key(node.server_key_pem.encode(), password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"server_key_pem is not an unencrypted PEM private key: {e}") from None
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise ValueError("server_key_pem is not the key of server_cert_pem")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ValueError("server_cert_pem is not issued by the cluster CA (ca_cert_pem)") from None
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return  # no restriction: good for both
    missing = [name for oid, name in _USAGES.items() if oid not in usages]
    if missing:
        raise ValueError("server_cert_pem must allow server and client authentication (extended key usage); "
                         f"it lacks {', '.join(missing)}")


def _check_node(node: NodeContext) -> None:
    if node.role not in ("master", "worker"):
        raise ValueError(f"unknown node role {node.role!r}")
    if node.role == "worker" and node.is_first_master:
        raise ValueError("a worker cannot be the first master")
    if ca_keys_given(node):
        raise ValueError(f"a Swarm node never receives a CA's key ({', '.join(ca_keys_given(node))})"
                         ": its engine has a certificate of its own")
    if node.etcd_volume_device:
        raise ValueError("an etcd volume is for Kubernetes masters only; Swarm keeps its state in /var/lib/docker")
    check_host("api_host", node.api_host)
    if not 1 <= node.api_port <= 65535:
        raise ValueError(f"api_port {node.api_port} is not a TCP port")
    if node.node_address:
        try:
            ipaddress.ip_address(node.node_address)
        except ValueError:
            raise ValueError(f"node_address {node.node_address!r} is not an IP address") from None
    check_server_certificate(node)


def swarm_health(answers: Mapping[str, Answer]) -> CoeHealth:
    """``/_ping`` must answer 200; each node ``/nodes`` lists is ready when its ``Status.State`` is ``ready`` (a
    manager answering 503 to ``/nodes``, no quorum, makes the API unhealthy)."""
    ping = answers.get("api") or Answer(error="not asked")
    api = ping.failure()
    listed = answers.get("nodes")
    nodes: dict[str, tuple[bool, str]] = {}
    if api is None and listed is not None:
        if listed.status == 503:
            api = f"/nodes: {listed.failure()}"
        elif listed.failure() is None:
            try:
                found = json.loads(listed.body)
            except ValueError:
                found = []
            for node in found if isinstance(found, list) else []:
                if not isinstance(node, dict):
                    continue
                name = str((node.get("Description") or {}).get("Hostname") or "")
                status = node.get("Status") or {}
                state = str(status.get("State") or "unknown")
                if name:
                    nodes[name] = (True, "") if state == "ready" else (
                        False, f"Swarm reports the node {state}" + (
                            f" ({status['Message']})" if status.get("Message") else ""))
    return CoeHealth(api=api, nodes=nodes)

