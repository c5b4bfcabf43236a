"""Every event Cove services exchange: facts in the past tense, one frozen msgspec Struct each.

Evolution rule: only add optional fields (with a default) to an existing event. A change of meaning is a
new event type. Old events must always decode, because replay reads them long after they were written.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from proto.clusterspec import ClusterSpec, NodeGroupSpec

NodeRole = Literal["master", "worker"]


class _Event(msgspec.Struct, frozen=True, tag_field="type", kw_only=True):
    """Base of every event: the ``type`` tag is the class name."""


# --------------------------------------------------------------------------- cluster templates (api)


class ClusterTemplate(msgspec.Struct, frozen=True, kw_only=True):
    """A full Magnum cluster template, as stored by the API and embedded in cluster requests."""

    uuid: str
    name: str | None = None
    project_id: str
    user_id: str
    coe: str = "kubernetes"
    image_id: str
    flavor_id: str | None = None
    master_flavor_id: str | None = None
    keypair_id: str | None = None
    external_network_id: str | None = None
    fixed_network: str | None = None
    fixed_subnet: str | None = None
    network_driver: str | None = None
    volume_driver: str | None = None
    docker_volume_size: int | None = None
    docker_storage_driver: str | None = None
    dns_nameserver: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    tls_disabled: bool = False
    public: bool = False
    hidden: bool = False
    registry_enabled: bool = False
    master_lb_enabled: bool = False
    floating_ip_enabled: bool = True
    server_type: str = "vm"
    http_proxy: str | None = None
    https_proxy: str | None = None
    no_proxy: str | None = None
    apiserver_port: int | None = None
    insecure_registry: str | None = None
    cluster_distro: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    created_at: datetime
    updated_at: datetime | None = None


class ClusterTemplateCreated(_Event, frozen=True, tag=True):
    template: ClusterTemplate


class ClusterTemplateUpdated(_Event, frozen=True, tag=True):
    """The new full template after a PATCH."""

    template: ClusterTemplate


class ClusterTemplateDeleted(_Event, frozen=True, tag=True):
    uuid: str
    project_id: str


# --------------------------------------------------------------------------- clusters (api)


class ClusterCreateRequested(_Event, frozen=True, tag=True):
    uuid: str
    name: str
    project_id: str
    user_id: str
    template: ClusterTemplate
    master_count: int = 1
    node_count: int = 1
    keypair: str | None = None
    flavor_id: str | None = None
    master_flavor_id: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    create_timeout: int = 60
    discovery_url: str | None = None
    docker_volume_size: int | None = None
    fixed_network: str | None = None
    fixed_subnet: str | None = None
    floating_ip_enabled: bool | None = None
    master_lb_enabled: bool | None = None
    merge_labels: bool = False
    """The cluster's labels were merged over the template's (Magnum's ``merge_labels``)."""
    trust_id: str | None = None
    trustee_user_id: str | None = None
    trustee_password: str | None = None
    """Delegated credentials for the provisioner (Magnum uses a Keystone trust)."""
    stack_id: str | None = None
    requested_at: datetime | None = None
    spec: ClusterSpec | None = None
    """The cluster as it will be built, resolved once by the API (proto/clusterspec.py). Every service reads it
    (``clusterspec.spec_of`` for events written before it existed) and none re-derives it from the fields above,
    which stay as the request gave them."""


class ClusterDeleteRequested(_Event, frozen=True, tag=True):
    uuid: str
    project_id: str
    user_id: str | None = None


class ClusterWithdrawn(_Event, frozen=True, tag=True):
    """The requester was told the create was refused: the scheduler's ``ClusterRejected`` came while the API still
    held the request, which answered 403 as Magnum answers a quota refusal. For the requester the cluster never
    existed, so it leaves the read model at once (Magnum has no row for a refused create) and the provisioner,
    which never built it, lets its trust go. A rejection that came after the API had answered 202 is not withdrawn:
    the cluster shows ``CREATE_FAILED`` with the reason until its owner deletes it."""

    uuid: str
    project_id: str


class ClusterUpdateRequested(_Event, frozen=True, tag=True):
    """A resize: the new worker count (and optionally which nodes to remove first)."""

    uuid: str
    project_id: str
    node_count: int
    previous_node_count: int | None = None
    nodes_to_remove: list[str] = msgspec.field(default_factory=list)
    nodegroup: str | None = None
    rollback: bool = False
    """``PATCH /v1/clusters/{id}?rollback=True`` (microversion >= 1.3): undo the change if it fails."""
    decided: bool = False
    """The scheduler decides it first (quota): the provisioner and the API's read model act on its
    ``ClusterUpdateAdmitted``, and nothing changes on ``ClusterUpdateRejected``. False (older events, or a
    requester that does not wait): acted on at once, and the scheduler only records the reservation."""


class ClusterHealthUpdated(_Event, frozen=True, tag=True):
    """``PATCH /v1/clusters/{id}`` of ``/health_status`` and/or ``/health_status_reason`` (an external healer or
    the cluster's trustee reporting); no status change."""

    uuid: str
    project_id: str
    health_status: str | None = None
    health_status_reason: dict[str, str] = msgspec.field(default_factory=dict)
    user_id: str | None = None


# --------------------------------------------------------------------------- nodegroups and upgrades (api)


class NodeTaint(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    value: str | None = None
    effect: str = "NoSchedule"


class NodeGroup(msgspec.Struct, frozen=True, kw_only=True):
    """A Magnum nodegroup: a set of servers of one role, flavor and image in a cluster."""

    uuid: str
    name: str
    cluster_id: str
    project_id: str
    role: str = "worker"
    node_count: int = 1
    min_node_count: int = 0
    max_node_count: int | None = None
    flavor_id: str | None = None
    image_id: str | None = None
    docker_volume_size: int | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    merge_labels: bool = False
    node_labels: dict[str, str] = msgspec.field(default_factory=dict)
    node_taints: list[NodeTaint] = msgspec.field(default_factory=list)
    is_default: bool = False
    created_at: datetime | None = None


class NodeGroupCreateRequested(_Event, frozen=True, tag=True):
    nodegroup: NodeGroup
    spec: NodeGroupSpec | None = None
    """The nodegroup as it will be built (flavor, image and volume with the cluster's values filled in by the API);
    None in events written before it existed: then ``nodegroup``'s own values, and the cluster's where they are
    None."""
    decided: bool = False
    """As ``ClusterUpdateRequested.decided``: the scheduler decides it first (quota); the provisioner and the API's
    read model act on its ``NodeGroupCreateAdmitted``, and nothing changes on ``ClusterUpdateRejected``."""


class NodeGroupUpdateRequested(_Event, frozen=True, tag=True):
    """A PATCH of the fields that need no server change (min/max counts, node labels and taints)."""

    cluster_id: str
    project_id: str
    uuid: str
    min_node_count: int
    max_node_count: int | None = None
    node_labels: dict[str, str] = msgspec.field(default_factory=dict)
    node_taints: list[NodeTaint] = msgspec.field(default_factory=list)


class NodeGroupDeleteRequested(_Event, frozen=True, tag=True):
    cluster_id: str
    project_id: str
    uuid: str
    name: str


class ClusterUpgradeRequested(_Event, frozen=True, tag=True):
    """Move the cluster (or one nodegroup) to ``template``: nodes whose image differs are replaced in batches."""

    uuid: str
    project_id: str
    template: ClusterTemplate
    max_batch_size: int = 1
    nodegroup: str | None = None


# --------------------------------------------------------------------------- scheduler


class ClusterAdmitted(_Event, frozen=True, tag=True):
    uuid: str
    project_id: str
    master_count: int
    node_count: int
    name: str | None = None
    """The cluster's name (the certs service makes it the CA's common name, as Magnum does)."""


class ClusterRejected(_Event, frozen=True, tag=True):
    uuid: str
    project_id: str
    reason: str
    """Human text shown as status_reason, e.g. Magnum's quota exceeded message."""
    resource: str | None = None
    """The quota that refused it (``Cluster``, ``Node``, ``vCPU``, ``RAM``, ``VolumeGB``); None in older events."""


class ClusterQueued(_Event, frozen=True, tag=True):
    """Within quota (its resources are reserved from now on) but no build slot is free: ``ClusterAdmitted`` follows
    when one is (docs/adr/0008). The API answers the create 202 on it."""

    uuid: str
    project_id: str
    position: int
    """1-based place in the build order when queued (round-robin between projects)."""
    cloud: str = "default"


class ClusterQueuePositions(_Event, frozen=True, tag=True):
    """The build order of the clusters still waiting in ``cloud`` after the queue moved (one event per admission
    from the queue, not one per waiting cluster): uuid -> 1-based place. On ``cove.evt.scheduler.queue.<cloud>``."""

    cloud: str
    positions: dict[str, int] = msgspec.field(default_factory=dict)


class ClusterUpdateAdmitted(_Event, frozen=True, tag=True):
    """The scheduler reserved what a ``decided`` resize needs: the request's values, for the provisioner to act on."""

    uuid: str
    project_id: str
    node_count: int
    previous_node_count: int | None = None
    nodes_to_remove: list[str] = msgspec.field(default_factory=list)
    nodegroup: str | None = None
    rollback: bool = False


class NodeGroupCreateAdmitted(_Event, frozen=True, tag=True):
    """The scheduler reserved a ``decided`` nodegroup create's nodes: the request's values, to act on."""

    nodegroup: NodeGroup
    spec: NodeGroupSpec | None = None


class ClusterUpdateRejected(_Event, frozen=True, tag=True):
    """A ``decided`` resize (or nodegroup create: ``nodegroup`` names it) over quota: nothing changes (the API
    answers 403 with ``reason``)."""

    uuid: str
    project_id: str
    reason: str
    resource: str
    nodegroup: str | None = None


# --------------------------------------------------------------------------- certs


class ClusterCACreated(_Event, frozen=True, tag=True):
    uuid: str
    project_id: str
    ca_cert_pem: str
    encrypted_ca_key: bytes
    key_id: str
    """Identifies the key that wrapped ``encrypted_ca_key`` (and the etcd and front-proxy CA keys): the
    key-encryption key itself when ``wrapped_by`` is ``kek`` (before issue 19), else the cluster's data key."""
    etcd_ca_cert_pem: str | None = None
    """The etcd CA (None for a cluster created before issue 19: it has the cluster CA only)."""
    etcd_encrypted_ca_key: bytes | None = None
    front_proxy_ca_cert_pem: str | None = None
    """The front-proxy (aggregation layer) CA (None before issue 19)."""
    front_proxy_encrypted_ca_key: bytes | None = None
    wrapped_by: Literal["kek", "data_key"] = "kek"
    """``data_key``: the CA keys are wrapped by a per-cluster data key that lives only in the certs key store,
    itself wrapped by the key-encryption key, so rotating that key never needs the stream (docs/adr/0007)."""


class ClusterCADeleted(_Event, frozen=True, tag=True):
    uuid: str
    project_id: str


class ClusterCAReplaced(_Event, frozen=True, tag=True):
    """The cluster's CA was rotated (``PATCH /v1/certificates/{cluster}``): this CA signs from now on."""

    uuid: str
    project_id: str
    ca_cert_pem: str
    encrypted_ca_key: bytes
    key_id: str
    previous_serial: str | None = None
    """Hex serial number of the CA it replaced."""
    user_id: str | None = None
    """Audit: who asked for the rotation (the API's caller)."""
    user_name: str | None = None
    serial: str | None = None
    """Hex serial number of the new CA."""
    wrapped_by: Literal["kek", "data_key"] = "kek"
    """As in ``ClusterCACreated``; a rotation replaces the cluster (``kubernetes``) CA only."""


class CertificateIssued(_Event, frozen=True, tag=True):
    """Audit: the certs service signed a certificate with one of the cluster's CAs (``cove.evt.certs.cluster.<uuid>``).

    ``issued_to`` is ``user`` (a Keystone user's client certificate: ``user_id``/``user_name``/``caller_project_id``
    say who asked) or ``node`` (a node's certificate the provisioner asked for: ``user_name`` is ``provisioner``)."""

    uuid: str
    project_id: str
    serial: str
    """Hex serial number of the issued certificate."""
    subject: str
    """RFC 4514 subject of the issued certificate."""
    ca_cert_type: str = "kubernetes"
    issued_to: Literal["user", "node"] = "user"
    user_id: str | None = None
    user_name: str | None = None
    caller_project_id: str | None = None
    not_after: datetime | None = None


class MasterKeyRotated(_Event, frozen=True, tag=True):
    """Audit: ``cove certs rotate-kek`` re-wrapped every stored data key under a new key-encryption key
    (``cove.evt.certs.kek.<new key id>``; docs/adr/0007)."""

    previous_key_id: str
    key_id: str
    rewrapped: int
    """How many data keys were re-wrapped."""
    by: str | None = None
    """Who ran it (the operating-system user of the ``cove`` command)."""


class ClusterTrustRotated(_Event, frozen=True, tag=True):
    """The cluster's Keystone trust was replaced (``PATCH /v1/credentials/{cluster}``, microversion >= 1.12).

    The provisioner acts with ``trust_id`` from now on; ``previous_trust_id`` may be deleted."""

    uuid: str
    project_id: str
    trust_id: str
    trustee_user_id: str
    previous_trust_id: str | None = None
    user_id: str | None = None


# --------------------------------------------------------------------------- quotas (api, admin CRUD)


class QuotaCreated(_Event, frozen=True, tag=True):
    """A per-project override of the default limit (Magnum's quotas row; only resource ``Cluster``)."""

    project_id: str
    hard_limit: int
    resource: str = "Cluster"


class QuotaUpdated(_Event, frozen=True, tag=True):
    project_id: str
    hard_limit: int
    resource: str = "Cluster"


class QuotaDeleted(_Event, frozen=True, tag=True):
    project_id: str
    resource: str = "Cluster"


# --------------------------------------------------------------------------- provisioner


class ClusterCreateStarted(_Event, frozen=True, tag=True):
    uuid: str
    project_id: str
    stack_id: str | None = None


class NodeCreated(_Event, frozen=True, tag=True):
    cluster_id: str
    project_id: str
    node_name: str
    role: NodeRole
    server_id: str
    flavor_id: str
    flavor_name: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    nodegroup: str | None = None
    created_at: datetime | None = None
    """When the server began to exist at the cloud (the create call's return, else Nova's ``created``); usage
    accrues from here. None in older events: their envelope's ``occurred_at`` stands in."""


class NodeBecameActive(_Event, frozen=True, tag=True):
    cluster_id: str
    project_id: str
    server_id: str
    node_name: str | None = None
    role: NodeRole | None = None
    addresses: dict[str, list[str]] = msgspec.field(default_factory=dict)
    """Network name -> list of IP addresses, as Nova reports them."""


class NodeFailed(_Event, frozen=True, tag=True):
    cluster_id: str
    project_id: str
    server_id: str
    reason: str
    node_name: str | None = None


class NodeDeleted(_Event, frozen=True, tag=True):
    cluster_id: str
    project_id: str
    server_id: str
    node_name: str | None = None
    role: NodeRole | None = None
    deleted_at: datetime | None = None
    """When the provisioner saw the server gone from the cloud (the listing that no longer showed it); usage stops
    here. None in older events: their envelope's ``occurred_at`` stands in."""


class NodeReleased(_Event, frozen=True, tag=True):
    """What a deleted node had beside its server (its volumes, its floating IP, the port it booted on) is gone: the
    end of a resize down's, a nodegroup delete's or a replacement's work on that node. Until then its name is not
    given to a new worker, and a provisioner task that resumes the cluster (its predecessor killed between the
    node's ``NodeDeleted`` and this) releases them."""

    cluster_id: str
    project_id: str
    node_name: str
    server_ids: list[str]
    """The deleted servers of that name whose resources went (one, but for a name deleted twice before a release)."""


class NodeHealth(msgspec.Struct, frozen=True, kw_only=True):
    """One node's health as the provisioner's watch saw it (``ClusterHealthChanged.nodes``)."""

    node_name: str
    server_id: str
    healthy: bool
    status: str
    """The server's state at the cloud: ``ACTIVE``, ``ERROR``, ``SHUTOFF``, ``BUILD``..., or ``DELETED`` (gone)."""
    reason: str | None = None
    nodegroup: str | None = None


class ClusterHealthChanged(_Event, frozen=True, tag=True):
    """The provisioner's fact: the cluster's health as computed from its nodes at the cloud changed (published only
    on a change). ``health_status_reason`` is Magnum's shape (``{"<node>.Ready": "True"|"False", ...}``); the API
    shows both as ``health_status`` / ``health_status_reason``. (``ClusterHealthUpdated`` is the API's, a PATCH.)"""

    uuid: str
    project_id: str
    health_status: Literal["HEALTHY", "UNHEALTHY", "UNKNOWN"]
    health_status_reason: dict[str, str] = msgspec.field(default_factory=dict)
    nodes: list[NodeHealth] = msgspec.field(default_factory=list)
    """The nodes that are not healthy, with why (the healthy ones are only named in the reason: the event stays
    small for a cluster of thousands of nodes)."""


class NodeLost(_Event, frozen=True, tag=True):
    """The cloud lost a node that was ACTIVE (its server went to ERROR, or vanished): usage stops at ``lost_at``, the
    cloud's time (the server's ``updated`` at ERROR, or its ``terminated_at`` from a ``changes-since`` listing)."""

    cluster_id: str
    project_id: str
    server_id: str
    node_name: str | None = None
    status: str = "ERROR"
    """``ERROR`` or ``DELETED``."""
    reason: str | None = None
    lost_at: datetime | None = None


class NodeRepaired(_Event, frozen=True, tag=True):
    """Auto-healing replaced a node (label ``auto_healing_enabled``): the same name, nodegroup, flavor, image and
    volumes on a new server, ACTIVE now and back in the load balancer's pool."""

    cluster_id: str
    project_id: str
    node_name: str
    old_server_id: str
    new_server_id: str
    reason: str
    nodegroup: str | None = None


class VolumeCreated(_Event, frozen=True, tag=True):
    """A Cinder volume of the cluster exists (made or found by the provisioner); billed by size from ``created_at``."""

    cluster_id: str
    project_id: str
    volume_id: str
    name: str
    size_gb: int
    created_at: datetime
    node_name: str | None = None


class VolumeDeleted(_Event, frozen=True, tag=True):
    cluster_id: str
    project_id: str
    volume_id: str
    deleted_at: datetime
    """When the provisioner saw it gone from Cinder."""


class FloatingIpAllocated(_Event, frozen=True, tag=True):
    cluster_id: str
    project_id: str
    floating_ip_id: str
    address: str
    name: str
    """What Cove calls it (``<node>-fip``, ``<prefix>-api``): floating IPs have no name of their own."""
    created_at: datetime


class FloatingIpReleased(_Event, frozen=True, tag=True):
    cluster_id: str
    project_id: str
    floating_ip_id: str
    released_at: datetime


class LoadBalancerCreated(_Event, frozen=True, tag=True):
    cluster_id: str
    project_id: str
    load_balancer_id: str
    name: str
    created_at: datetime


class LoadBalancerDeleted(_Event, frozen=True, tag=True):
    cluster_id: str
    project_id: str
    load_balancer_id: str
    deleted_at: datetime
    """When the provisioner saw it gone from Octavia (its cascade delete is asynchronous)."""


class ClusterCreateCompleted(_Event, frozen=True, tag=True):
    uuid: str
    project_id: str
    api_address: str
    master_addresses: list[str] = msgspec.field(default_factory=list)
    node_addresses: list[str] = msgspec.field(default_factory=list)
    coe_version: str | None = None
    container_version: str | None = None


class ClusterCreateFailed(_Event, frozen=True, tag=True):
    uuid: str
    project_id: str
    status_reason: str


class ClusterDeleteStarted(_Event, frozen=True, tag=True):
    uuid: str
    project_id: str


class ClusterDeleteCompleted(_Event, frozen=True, tag=True):
    uuid: str
    project_id: str


class ClusterDeleteFailed(_Event, frozen=True, tag=True):
    uuid: str
    project_id: str
    status_reason: str


class ClusterTrustDeleted(_Event, frozen=True, tag=True):
    """The provisioner deleted a cluster's Keystone trust, or found it already gone (``already_gone``): the trust
    of a cluster after ``ClusterDeleteCompleted`` (``reason`` cluster_deleted), or the trust a
    ``ClusterTrustRotated`` replaced (``reason`` rotated)."""

    uuid: str
    project_id: str
    trust_id: str
    reason: Literal["cluster_deleted", "rotated"] = "cluster_deleted"
    already_gone: bool = False


class ClusterUpdateStarted(_Event, frozen=True, tag=True):
    uuid: str
    project_id: str
    node_count: int
    generation: int | None = None
    """Which update request (the provisioner's count of them for the cluster) this pass works toward."""


class ClusterUpdateCompleted(_Event, frozen=True, tag=True):
    uuid: str
    project_id: str
    node_count: int
    node_addresses: list[str] = msgspec.field(default_factory=list)
    generation: int | None = None
    nodegroup_counts: dict[str, int] = msgspec.field(default_factory=dict)
    """Nodegroup name -> node count reached."""


class ClusterUpdateFailed(_Event, frozen=True, tag=True):
    uuid: str
    project_id: str
    status_reason: str
    generation: int | None = None


class ClusterCATrustNarrowed(_Event, frozen=True, tag=True):
    """Every node of a cluster whose CA was rotated runs the new CA: its masters are rolled once more trusting the
    new CA alone, after which client certificates of the old CA are refused (issue 13)."""

    uuid: str
    project_id: str
    generation: int | None = None
    """The update (the rotation's roll) it is part of."""


# --------------------------------------------------------------------------- every service


class ServiceHeartbeat(_Event, frozen=True, tag=True):
    """Liveness of one service process, shown by the API as Magnum's mservices."""

    service: str
    host: str
    pid: int
    started_at: datetime
    state: Literal["up", "stopping"] = "up"
    version: str | None = None
    report_count: int | None = None
    """How many heartbeats this process has sent, this one included (Magnum's mservices report_count)."""


Event = (
    ClusterTemplateCreated
    | ClusterTemplateUpdated
    | ClusterTemplateDeleted
    | ClusterCreateRequested
    | ClusterDeleteRequested
    | ClusterWithdrawn
    | ClusterUpdateRequested
    | ClusterHealthUpdated
    | ClusterAdmitted
    | ClusterRejected
    | ClusterQueued
    | ClusterQueuePositions
    | ClusterUpdateAdmitted
    | ClusterUpdateRejected
    | NodeGroupCreateAdmitted
    | ClusterCACreated
    | ClusterCADeleted
    | ClusterCAReplaced
    | CertificateIssued
    | MasterKeyRotated
    | ClusterTrustRotated
    | QuotaCreated
    | QuotaUpdated
    | QuotaDeleted
    | ClusterCreateStarted
    | NodeCreated
    | NodeBecameActive
    | NodeFailed
    | NodeDeleted
    | NodeReleased
    | NodeLost
    | NodeRepaired
    | ClusterHealthChanged
    | VolumeCreated
    | VolumeDeleted
    | FloatingIpAllocated
    | FloatingIpReleased
    | LoadBalancerCreated
    | LoadBalancerDeleted
    | ClusterCreateCompleted
    | ClusterCreateFailed
    | ClusterDeleteStarted
    | ClusterDeleteCompleted
    | ClusterDeleteFailed
    | ClusterTrustDeleted
    | ClusterUpdateStarted
    | ClusterUpdateCompleted
    | ClusterUpdateFailed
    | ClusterCATrustNarrowed
    | NodeGroupCreateRequested
    | NodeGroupUpdateRequested
    | NodeGroupDeleteRequested
    | ClusterUpgradeRequested
    | ServiceHeartbeat
)
"""The discriminated union of every event; ``type`` is the discriminator."""

EVENT_TYPES: dict[str, type[_Event]] = {cls.__name__: cls for cls in Event.__args__}  # type: ignore[attr-defined]


def event_type(payload: msgspec.Struct) -> str:
    """The ``type`` tag of an event payload."""
    return type(payload).__struct_config__.tag  # type: ignore[return-value]
