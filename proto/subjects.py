"""Every NATS subject and stream name, in one place.

Events: ONE stream ``COVE_EVENTS`` with subjects ``cove.evt.<producer>.<aggregate>.<id>``.
Dead letters: stream ``COVE_DLQ``, subject ``cove.dlq.<consumer>``.
Heartbeats: stream ``COVE_HEARTBEATS``, subject ``cove.heartbeat.<service>``.
RPC: ``cove.rpc.<service>.<verb>`` answered by queue group ``<service>``.
"""

from __future__ import annotations

from typing import Literal

Producer = Literal["api", "scheduler", "certs", "provisioner", "accounting"]

EVENTS_STREAM = "COVE_EVENTS"
EVENTS_PREFIX = "cove.evt"
EVENTS_ALL = f"{EVENTS_PREFIX}.>"

DLQ_STREAM = "COVE_DLQ"
DLQ_PREFIX = "cove.dlq"
DLQ_ALL = f"{DLQ_PREFIX}.>"

HEARTBEATS_STREAM = "COVE_HEARTBEATS"
HEARTBEATS_PREFIX = "cove.heartbeat"
HEARTBEATS_ALL = f"{HEARTBEATS_PREFIX}.*"

ADVISORIES_STREAM = "COVE_ADVISORIES"
MAX_DELIVERIES_PREFIX = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
"""The server publishes ``<this>.<stream>.<consumer>`` when it drops a message after ``max_deliver`` deliveries
that were not settled (ack timeouts), telling no one else."""
MAX_DELIVERIES_ALL = f"{MAX_DELIVERIES_PREFIX}.>"
DROPPED_DELIVER_PREFIX = "cove.dropped"
"""Where the advisories stream pushes a consumer's own advisories (``<this>.<stream>.<consumer>``, no stream
captures it)."""


STORED_PREFIX = "cove.stored"
"""Where the events stream re-announces what it stored (JetStream RePublish, headers only; no stream captures it).
Only the scheduler's decisions are re-announced: ``cove.stored.scheduler.cluster.<uuid>`` (``stored_decisions``)."""


def max_deliveries_subject(stream: str, durable: str) -> str:
    return f"{MAX_DELIVERIES_PREFIX}.{stream}.{durable}"


RPC_PREFIX = "cove.rpc"


def _token(value: str) -> str:
    if not value or any(c in value for c in " .*>\t\r\n"):
        raise ValueError(f"invalid subject token: {value!r}")
    return value


def event_subject(producer: str, aggregate: str, aggregate_id: str) -> str:
    return f"{EVENTS_PREFIX}.{_token(producer)}.{_token(aggregate)}.{_token(aggregate_id)}"


def cluster_events(producer: str, cluster_id: str) -> str:
    """e.g. ``cove.evt.provisioner.cluster.<uuid>``."""
    return event_subject(producer, "cluster", cluster_id)


def cluster_template_events(producer: str, template_id: str) -> str:
    return event_subject(producer, "clustertemplate", template_id)


def producer_events(producer: str, aggregate: str = "*") -> str:
    """Filter for one producer's events: ``cove.evt.<producer>.<aggregate>.*`` (or all aggregates: ``>``)."""
    if aggregate == "*":
        return f"{EVENTS_PREFIX}.{_token(producer)}.>"
    return f"{EVENTS_PREFIX}.{_token(producer)}.{_token(aggregate)}.*"


def any_cluster_events(cluster_id: str) -> str:
    """Every producer's events about one cluster."""
    return f"{EVENTS_PREFIX}.*.cluster.{_token(cluster_id)}"


def dlq_subject(consumer: str) -> str:
    return f"{DLQ_PREFIX}.{_token(consumer)}"


def heartbeat_subject(service: str) -> str:
    return f"{HEARTBEATS_PREFIX}.{_token(service)}"


def rpc_subject(service: str, verb: str) -> str:
    return f"{RPC_PREFIX}.{_token(service)}.{_token(verb)}"


# The RPCs the certs service answers.
CERTS_SIGN = rpc_subject("certs", "sign")
CERTS_GET_CA = rpc_subject("certs", "get_ca")
CERTS_ROTATE_CA = rpc_subject("certs", "rotate_ca")
CERTS_CA_KEY = rpc_subject("certs", "ca_key")
"""The provisioner's: the CA key for a first master's user data (docs/adr/0006)."""
CERTS_SIGN_NODE = rpc_subject("certs", "sign_node")
"""The provisioner's: a node's server-and-client certificate (a Swarm node's Docker engine), signed by the
cluster CA. Unauthenticated until NATS credentials arrive (issue 16)."""

# The RPCs the accounting service answers.
ACCOUNTING_USAGE = rpc_subject("accounting", "usage")

# The RPCs the provisioner answers.
PROVISIONER_ADDONS = rpc_subject("provisioner", "addons")
"""The names of the site add-ons the provisioner's catalog holds (the API checks an ``addons`` label with them)."""


def decisions_source() -> str:
    """The scheduler's decisions in the events stream (``ClusterAdmitted`` / ``ClusterRejected``), re-announced once
    stored on ``stored_decisions()``."""
    return producer_events("scheduler", "cluster")


def stored_decisions_destination() -> str:
    """The RePublish destination mapping of ``decisions_source()`` (its last token, the cluster uuid, kept)."""
    return f"{STORED_PREFIX}.scheduler.cluster.{{{{wildcard(1)}}}}"


def stored_decisions() -> str:
    """``cove.stored.scheduler.cluster.*``: one headers-only message per decision the events stream stored; the
    headers keep the event's own (``Cove-Event-Type``) and add ``Nats-Sequence`` (its stream sequence)."""
    return f"{STORED_PREFIX}.scheduler.cluster.*"


AUDIT_STREAM = "COVE_AUDIT"
AUDIT_PREFIX = "cove.audit"
AUDIT_ALL = f"{AUDIT_PREFIX}.>"
AUDIT_API = f"{AUDIT_PREFIX}.api"
"""CADF audit records of the API's writes (``proto/audit.py``), in their own stream: outside ``COVE_EVENTS``, so
no projection reads them and replay never sees them."""

LEASES_BUCKET = "COVE_LEASES"
"""The JetStream key-value bucket of leases (``services/runtime/lease.py``, docs/adr/0011): work that must have
one owner among a service's copies (a cluster's reconcile task, the trust reaper), each key's revision its fencing
token. Keys: ``provisioner.cluster.<uuid>``, ``provisioner.singleton.<name>``, ``provisioner.copy.<copy id>``."""
PROVISIONER_KICK = "cove.provisioner.kick"
"""Core NATS (no stream): a provisioner copy that applied an input event about a cluster whose lease another copy
holds tells the holder to decide again (the data is the cluster uuid; header ``Cove-Copy``: the sender)."""
PROVISIONER_WATCH_CHANGES = "cove.provisioner.watch.changes"
"""Core NATS: what the provisioner copy leading the watch recorded of the cloud's servers (JSON list of
``services.provisioner.health.Observed``), kept by the other copies for their health passes."""
PROVISIONER_WATCH_VIEWS = "cove.provisioner.watch.views"
"""Core NATS request-reply: a cluster's views (data: its uuid), answered by the copy leading the watch."""
PROVISIONER_WATCH_RESOURCES = "cove.provisioner.watch.resources"
"""Core NATS: what a listing of the provisioner copy leading the watch changed of the watched clusters' load
balancers and volumes (JSON list of ``services.provisioner.health.ResourceSeen``; header ``Cove-Copy``: the
sender), kept by the other copies for their health passes."""
PROVISIONER_WATCH_RESOURCE_VIEWS = "cove.provisioner.watch.resource_views"
"""Core NATS request-reply: a cluster's load balancers and volumes as last listed (data: its uuid; JSON list of
``ResourceSeen``), answered by the copy leading the watch."""
