"""The provisioner's model of a cluster in the cloud, as pure functions over plain data: the names of its resources,
what one server list call shows (``ServerView``), what the provisioner's events recorded (``KnownNode``), node
states, and the delete plan. The nodegroup planner is ``nodeplan.py``; the I/O is in the reconcile modules."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from proto.statuses import (  # noqa: F401 - the provisioner's statuses are the contract's
    CREATE_COMPLETE,
    CREATE_FAILED,
    CREATE_IN_PROGRESS,
    DELETE_COMPLETE,
    DELETE_FAILED,
    DELETE_IN_PROGRESS,
    UPDATE_COMPLETE,
    UPDATE_FAILED,
    UPDATE_IN_PROGRESS,
)

MASTER, WORKER = "master", "worker"
ROLES: tuple[Literal["master", "worker"], ...] = ("master", "worker")
"""Every role a node has; each gets a security group of its own."""
DEFAULT_SUBNET_CIDR = "10.0.0.0/24"

UPDATABLE = frozenset({CREATE_COMPLETE, UPDATE_COMPLETE, UPDATE_FAILED, UPDATE_IN_PROGRESS})
"""Statuses from which a pending update request is carried out."""

# Node states in the provisioner's store.
NODE_CREATED, NODE_ACTIVE, NODE_FAILED, NODE_DELETED = "created", "active", "failed", "deleted"


def short_id(cluster_id: str) -> str:
    return cluster_id.replace("-", "")[:8]


def cluster_prefix(name: str, cluster_id: str) -> str:
    """``<cluster name>-<short uuid>``: every cloud resource of the cluster is named from it."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "cluster"
    return f"{safe}-{short_id(cluster_id)}"


def node_name(prefix: str, role: str, index: int) -> str:
    return f"{prefix}-{'master' if role == MASTER else 'node'}-{index}"


VOLUME_KINDS = ("docker", "etcd")
"""The volumes a node may have: container storage (``docker_volume_size``) and, on masters, etcd's data."""


def node_port_name(node: str) -> str:
    """The port a node boots on when it is made before the server (the first master's without a load balancer, or
    any node whose address its certificate names): ``<node>-port``. Neutron keeps it when the server goes."""
    return f"{node}-port"


def volume_name(node: str, kind: str) -> str:
    """``<node>-docker`` / ``<node>-etcd``."""
    return f"{node}-{kind}"


def network_name(prefix: str) -> str:
    return f"{prefix}-net"


def subnet_name(prefix: str) -> str:
    return f"{prefix}-subnet"


def router_name(prefix: str) -> str:
    return f"{prefix}-router"


def security_group_name(prefix: str) -> str:
    return f"{prefix}-sg"


def server_name_filter(prefix: str) -> str:
    """Nova's ``name`` list filter is a regular expression: anchor it on the cluster's prefix."""
    return f"^{re.escape(prefix)}-"


def cluster_tag(cluster_id: str) -> str:
    return f"cove-cluster-{cluster_id}"


@dataclass(frozen=True)
class DesiredNode:
    name: str
    role: str
    index: int


def node_metadata(
    cluster_id: str, node: DesiredNode, *, nodegroup: str | None = None, image: str | None = None
) -> dict[str, str]:
    meta = {"cove_cluster_id": cluster_id, "cove_role": node.role, "cove_node": node.name}
    if nodegroup is not None:
        meta["cove_nodegroup"] = nodegroup
    if image is not None:
        meta["cove_image"] = image
    return meta


@dataclass(frozen=True)
class ServerView:
    """What one list call tells about a server."""

    id: str
    name: str
    status: str
    metadata: dict[str, str] = field(default_factory=dict)
    fault: str | None = None
    addresses: dict[str, list[str]] = field(default_factory=dict)
    floating_ip: str | None = None
    """The floating address Nova shows for the server (``OS-EXT-IPS:type`` floating), if it has one."""

    @property
    def role(self) -> str:
        return self.metadata.get("cove_role") or (MASTER if "-master-" in self.name else WORKER)

    def first_ip(self) -> str | None:
        for ips in self.addresses.values():
            if ips:
                return ips[0]
        return None


@dataclass(frozen=True)
class KnownNode:
    """A node as the provisioner's own events recorded it."""

    server_id: str
    name: str
    role: str
    status: str
    releasing: bool = False
    """Deleted, and its volumes, floating IP and own port not yet released (``NodeDeleted`` to ``NodeReleased``)."""


def owned_servers(servers: list[ServerView], cluster_id: str) -> list[ServerView]:
    """The listed servers that belong to this cluster (metadata), ignoring any other server the name matched."""
    return [s for s in servers if s.metadata.get("cove_cluster_id") == cluster_id]


def node_failure_reason(node: str, fault: str | None) -> str:
    return f"Node {node} failed: {fault or 'the server went to ERROR without a fault message'}"


@dataclass
class DeletePlan:
    to_delete: list[ServerView] = field(default_factory=list)
    gone: list[KnownNode] = field(default_factory=list)
    """Recorded nodes whose server no longer exists: NodeDeleted is due."""
    servers_left: int = 0


def plan_delete(servers: list[ServerView], known: dict[str, KnownNode], requested: set[str]) -> DeletePlan:
    """``requested`` are server ids whose delete was already sent by this process."""
    plan = DeletePlan(servers_left=len(servers))
    present = {s.id for s in servers}
    plan.to_delete = [s for s in servers if s.id not in requested and s.status != "DELETED"]
    plan.gone = [n for sid, n in sorted(known.items()) if sid not in present and n.status != NODE_DELETED]
    return plan


def addresses_of(raw: dict[str, list[dict[str, object]]] | None) -> dict[str, list[str]]:
    """Nova's ``addresses`` (network -> [{addr, ...}]) as network -> [ip]."""
    out: dict[str, list[str]] = {}
    for net, entries in (raw or {}).items():
        out[net] = [str(e["addr"]) for e in entries if isinstance(e, dict) and e.get("addr")]
    return out


def floating_address_of(raw: dict[str, list[dict[str, object]]] | None) -> str | None:
    """The first floating address in Nova's ``addresses``, or None."""
    for entries in (raw or {}).values():
        for e in entries:
            if isinstance(e, dict) and e.get("OS-EXT-IPS:type") == "floating" and e.get("addr"):
                return str(e["addr"])
    return None


def is_terminal(status: str | None, desired: str) -> bool:
    """Nothing more to do for a cluster in this state (until a new request arrives)."""
    if desired == "absent":
        return status in (DELETE_COMPLETE, DELETE_FAILED)
    return status in (CREATE_COMPLETE, CREATE_FAILED)
