"""What one cluster's reconcile pass decides and remembers: the pass's outcome, the task's memory, the settings."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from services.provisioner import model
from services.provisioner.certificates import NodeTLS
from services.provisioner.cloud import LoadBalancerState, NetworkRefs, PortRefs
from services.provisioner.drivers.addons import Catalog


@dataclass(frozen=True)
class ReconcilerSettings:
    max_active: int = 16
    """Clusters whose step runs at the same time (the cloud thread pool bounds the calls further)."""
    poll_interval: float = 0.25
    """Seconds between the list calls while servers build or go away."""
    catch_up_timeout: float = 15.0
    """How long a task waits for the store to apply its cluster's events (longer than the projection's ack wait,
    ``PROVISIONER_CONSUMER``, after which the events a crashed process held are delivered again)."""
    max_transient_failures: int = 8
    bootstrap_secret: bytes = b"cove-dev-bootstrap-secret"
    default_subnet_cidr: str = model.DEFAULT_SUBNET_CIDR
    """The private subnet of a cluster whose spec names none (``COVE_PROVISIONER_SUBNET_CIDR``)."""
    coe_networks: tuple[str, ...] = ("127.0.0.0/8",)
    """Where the provisioner may reach a cluster's own API (``COVE_PROVISIONER_COE_NETWORKS``, comma-separated
    CIDRs): to drain a Swarm node before its server goes (``coeapi.py``)."""
    drain_timeout: float = 60.0
    """How long a drain waits for a node's tasks to move (``COVE_PROVISIONER_DRAIN_TIMEOUT``)."""
    update_timeout: float = 60.0
    """Minutes an update (resize, upgrade, nodegroups, a CA rotation's roll) may take before it fails
    (``COVE_PROVISIONER_UPDATE_TIMEOUT``); a create has its cluster's ``create_timeout``."""
    delete_timeout: float = 60.0
    """Minutes a delete may take before it fails (``COVE_PROVISIONER_DELETE_TIMEOUT``)."""
    minute_seconds: float = 60.0
    """Seconds in a minute of those deadlines (``COVE_PROVISIONER_MINUTE_SECONDS``): 60 except in tests, which
    shorten a one-minute ``create_timeout``."""
    max_repairs_per_nodegroup: int = 1
    """Auto-healing replaces at most this many nodes of a nodegroup at a time
    (``COVE_PROVISIONER_MAX_REPAIRS_PER_NODEGROUP``): a cloud outage does not replace a whole cluster at once."""
    addons: Catalog = field(default_factory=Catalog)
    """The operator's site add-ons (``COVE_PROVISIONER_ADDONS_DIR``), merged into the user data of the clusters
    whose ``addons`` label names them."""


class Outcome(enum.Enum):
    AGAIN = "again"  # decide again right away (the store changed)
    POLL = "poll"  # the cloud is working: look again after poll_interval (or a kick)
    IDLE = "idle"  # nothing to do until a new event arrives


class Recheck(Exception):
    """The subject moved under us: re-read, catch up and decide again."""


@dataclass
class Infra:
    """The cluster's cloud resources around its servers, as the last pass found or made them."""

    network: NetworkRefs
    security_groups: dict[str, str]
    """Role -> security group id."""
    server_group: str | None
    load_balancer: LoadBalancerState | None
    api_port_ref: PortRefs | None
    """The first master's port, made before it boots, when there is no load balancer: its IP is the API's."""
    api_floating_ip: str | None = None
    """The floating IP in front of the API (on the VIP, or on the first master's port), allocated before the masters
    boot so that their API server certificate names it."""

    @property
    def api_host(self) -> str | None:
        if self.load_balancer is not None:
            return self.load_balancer.vip_address
        return self.api_port_ref.ip if self.api_port_ref is not None else None


@dataclass
class TaskState:
    """What one cluster's task remembers between passes (never needed for correctness after a restart)."""

    infra: Infra | None = None
    delete_requested: set[str] = field(default_factory=set)
    unrecorded: dict[str, model.ServerView] = field(default_factory=dict)
    releasing: set[str] = field(default_factory=set)
    """Names of nodes whose server is gone and whose volumes and floating IP are still being released (a task
    restarted meanwhile forgets them: the cluster's delete removes whatever carries its id)."""
    failures: int = 0
    waiting_for: str | None = None
    """What the last pass waited for (a deadline's reason names it)."""
    retired: set[str] = field(default_factory=set)
    """Masters of a roll already taken out of the load balancer's pool, to be deleted next."""
    coe_client: NodeTLS | None = None
    repairs: dict[str, Any] = field(default_factory=dict)
    """Node name -> ``health.Repair``: the lost nodes auto-healing is replacing (``health.py``)."""
    billed: dict[str, Any] = field(default_factory=dict)
    """Resource id -> ``billing.Billed``: volumes, floating IPs and the load balancer reported to accounting and not
    yet reported gone (``billing.py``)."""
    """The provisioner's client certificate for this cluster's COE API (a Swarm drain), once asked for."""
