"""The COE driver interface: what the provisioner asks of a container orchestration engine's driver.

A driver is pure: it says which ports its COE needs open on each role's security group, renders each node's user
data from plain facts (``NodeContext``), names the health checks, and says what ``cluster config`` hands the user.
It never calls the cloud, NATS or a database; the provisioner's reconcile does, with what the driver returns.
One module per COE (``kubernetes.py``, ``swarm.py``, ``mesos.py``); ``drivers.driver_for(coe)`` picks one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

Role = Literal["master", "worker"]


@dataclass(frozen=True)
class PortRule:
    """One ingress rule a COE needs on one role's security group.

    ``source`` ``"allowed"``: from the cluster's allow-list (``master_lb_allowed_cidrs``; 0.0.0.0/0 when none is
    given): what users reach (the API, SSH). ``"cluster"``: only from the cluster's own security groups (etcd,
    kubelet, the overlay network). ``protocol`` is ``tcp``, ``udp`` or an IP protocol Neutron knows by name
    (``ipip`` for calico's IP-in-IP), which takes no ports."""

    protocol: str
    port_min: int | None
    port_max: int | None
    source: Literal["allowed", "cluster"]
    description: str


@dataclass(frozen=True)
class NodeContext:
    """Everything one node's user data depends on (no cloud call needed to render it)."""

    cluster_id: str
    cluster_name: str
    node_name: str
    role: Role
    nodegroup: str
    is_first_master: bool
    """The master that initialises the control plane; every other master joins it."""
    api_host: str
    """Where the control plane is reached: the load balancer's VIP, else the first master's fixed IP."""
    api_port: int
    ca_cert_pem: str
    bootstrap_token: str
    labels: dict[str, str] = field(default_factory=dict)
    """The cluster's labels, resolved (merge_labels applied) by the API; the driver reads its own."""
    network_driver: str | None = None
    api_sans: tuple[str, ...] = ()
    """Further addresses users reach the API at (the floating IP in front of it, allocated before the masters boot):
    the API server's certificate must name them."""
    master_addresses: tuple[str, ...] = ()
    """The masters' fixed IPs known at render time (certificate SANs, etcd peers); every master's, in index order,
    for a driver whose ``needs_all_master_addresses()`` is true (their ports are made before any node boots)."""
    master_count: int | None = None
    """How many masters the cluster has (a driver can check ``master_addresses`` against it)."""
    docker_volume_device: str | None = None
    """Block device of the container-storage volume (``docker_volume_size``), attached before boot."""
    etcd_volume_device: str | None = None
    """Block device of the etcd volume (label ``etcd_volume_size``), masters only."""
    http_proxy: str | None = None
    https_proxy: str | None = None
    no_proxy: str | None = None
    ca_key_pem: str | None = None
    """The cluster CA's private key (PEM), for masters only (docs/adr/0006): the first master's user data carries
    it (kubeadm init signs the control plane's certificates and the controller manager the kubelets' with it); the
    other masters' user data carries only the kubeadm certificate key derived from it. Never given for a worker."""
    node_address: str | None = None
    """The node's own fixed IP when it is known before boot (its port made first): drivers that need a server
    certificate get one naming it."""
    server_cert_pem: str | None = None
    """The node's TLS certificate (PEM), for drivers whose ``needs_server_certificate(role)`` is true: issued by the
    certs service from the cluster CA, with server and client authentication, naming every address the node is
    reached at (``node_address``, ``api_host``, ``api_sans``, the node's name, 127.0.0.1 and localhost)."""
    server_key_pem: str | None = None
    """The private key (PEM) of ``server_cert_pem``."""
    etcd_ca_cert_pem: str | None = None
    """The cluster's etcd CA (PEM; ``ClusterCAKey.etcd_cert_pem``), for the first master only; None for a cluster
    created before issue 19 (kubeadm then makes its own)."""
    etcd_ca_key_pem: str | None = None
    """Its private key (``ClusterCAKey.etcd_key_pem``), first master only."""
    front_proxy_ca_cert_pem: str | None = None
    """The cluster's front-proxy CA (PEM; ``ClusterCAKey.front_proxy_cert_pem``), first master only."""
    front_proxy_ca_key_pem: str | None = None
    """Its private key (``ClusterCAKey.front_proxy_key_pem``), first master only."""
    rejoin: bool = False
    """A master booted by a roll (upgrade, CA rotation) of a running control plane: it carries the cluster's CA files
    as the first master does (they may be a rotated CA's) and joins the control plane (docs/adr/0010)."""
    client_ca_bundle_pem: str | None = None
    """Masters during a CA rotation's roll: the CAs the API server accepts client certificates of (the new CA and
    the one it replaced); None: the cluster CA alone."""


@dataclass(frozen=True)
class HealthCheck:
    """A check the provisioner (or a node) runs to call a node or the cluster healthy."""

    name: str
    role: Role | Literal["cluster"]
    description: str
    port: int | None = None
    path: str | None = None


@dataclass(frozen=True)
class Probe:
    """One request of a driver's health check through the cluster's API address (``coeapi.check`` sends it):
    ``GET path`` on ``port`` (None: the cluster's API port), over TLS with the provisioner's client certificate
    from the cluster CA when ``tls``, else plain HTTP (Marathon, the Mesos master)."""

    name: str
    path: str
    port: int | None = None
    tls: bool = True


@dataclass(frozen=True)
class Answer:
    """What one probe got: the HTTP status and body, or ``error`` (refused, timed out, TLS refused) and no status."""

    status: int | None = None
    body: str = ""
    error: str | None = None

    def failure(self) -> str | None:
        """None for a 2xx answer, else the failure in words (``health_status_reason``'s ``api`` value)."""
        if self.error is not None:
            return self.error
        if self.status is not None and 200 <= self.status < 300:
            return None
        return f"HTTP {self.status}: {self.body.strip()[:120]}".rstrip(": ")


@dataclass(frozen=True)
class CoeHealth:
    """A driver's reading of its probes' answers: ``api`` None when the API is healthy, else why not; ``nodes``
    the COE's own verdict per node it lists, by the node's host name (``render.host_name``): (ready, reason)."""

    api: str | None
    nodes: dict[str, tuple[bool, str]] = field(default_factory=dict)


class CoeDriver(Protocol):
    coe: str
    default_api_port: int
    """Where the COE's API listens when the template names no ``apiserver_port`` (Kubernetes 6443, the Docker
    engine's TLS port 2376, Marathon 8080); ``proto.clusterspec`` resolves the same default."""

    def api_address(self, host: str, port: int) -> str:
        """The cluster's ``api_address`` as Magnum's clients expect it for this COE (``https://``, ``tcp://``...)."""
        ...

    def load_balancer_ports(self, api_port: int) -> list[int]:
        """The TCP ports the API load balancer (and the floating IP in front of it) forwards to the masters."""
        ...

    def needs_ca_key(self, role: Role) -> bool:
        """Whether each node of ``role`` gets the cluster CA's key (``NodeContext.ca_key_pem``; ADR 0006)."""
        ...

    def needs_all_master_addresses(self) -> bool:
        """Whether every node's user data must name every master's address (a ZooKeeper ensemble): the masters then
        boot on ports made before any node boots, so ``master_addresses`` is complete from the first render."""
        ...

    def needs_server_certificate(self, role: Role) -> bool:
        """Whether each node of ``role`` needs its own TLS certificate from the cluster CA in its user data
        (``NodeContext.server_cert_pem``)."""
        ...

    def port_rules(self, role: Role, *, api_port: int, network_driver: str | None) -> list[PortRule]:
        """The ingress rules ``role``'s security group needs, and no more."""
        ...

    def user_data(self, node: NodeContext) -> str:
        """The node's user data (a ``#cloud-config`` document); raises ``ValueError`` on impossible input."""
        ...

    def health_checks(self) -> list[HealthCheck]:
        ...

    def health_probes(self) -> list[Probe]:
        """The requests of the COE's health check the provisioner sends through the cluster's API address (every
        ``COVE_PROVISIONER_API_CHECK_INTERVAL``, ``health.py``): the API's own health, and the COE's list of nodes."""
        ...

    def read_health(self, answers: Mapping[str, Answer]) -> CoeHealth:
        """What the answers to ``health_probes`` (by probe name) say: pure, so that it is tested without a COE."""
        ...

    def cluster_config(self) -> str:
        """What ``openstack coe cluster config`` hands the user for this COE, in a sentence (docs and tests)."""
        ...
