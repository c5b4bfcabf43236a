"""Request/reply messages for NATS request-reply (RPC). Requests name an intent; replies the result."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec


class _Message(msgspec.Struct, frozen=True, tag_field="type", kw_only=True):
    pass


class SignCertificate(_Message, frozen=True, tag=True):
    """A user's client certificate. The API passes the caller's Keystone identity as it validated it; the certs
    service builds the subject from it (CN user name, OU user id, O the group of ``access``) and ignores the
    CSR's. A request without ``user_id`` (from an API before issue 19) is refused."""

    cluster_id: str
    project_id: str
    csr_pem: str
    user_id: str | None = None
    user_name: str | None = None
    caller_project_id: str | None = None
    """The project of the caller's token (an admin's may differ from the cluster's)."""
    roles: list[str] = msgspec.field(default_factory=list)
    access: str | None = None
    """``admin`` (members and admins: the cluster-admin group) or ``view`` (readers), decided by the API's policy."""
    ca_cert_type: str = "kubernetes"


class CertificateSigned(_Message, frozen=True, tag=True):
    pem: str
    cluster_id: str | None = None
    serial: str | None = None


class SignNodeCertificate(_Message, frozen=True, tag=True):
    """The provisioner asks for a node's server-and-client certificate (e.g. a Swarm node's Docker engine),
    signed by the cluster CA: CN = ``node_name``, SANs = ``sans`` (IP addresses and DNS names only).
    ``cove.rpc.certs.sign_node``: unauthenticated until NATS credentials arrive (issue 16); only the provisioner
    calls it."""

    cluster_id: str
    project_id: str
    csr_pem: str
    node_name: str
    sans: list[str] = msgspec.field(default_factory=list)


class NodeCertificateSigned(_Message, frozen=True, tag=True):
    pem: str
    cluster_id: str
    serial: str


class GetClusterCA(_Message, frozen=True, tag=True):
    cluster_id: str
    project_id: str | None = None
    ca_cert_type: str = "kubernetes"


class ClusterCA(_Message, frozen=True, tag=True):
    pem: str
    cluster_id: str | None = None


class RotateClusterCA(_Message, frozen=True, tag=True):
    cluster_id: str
    project_id: str
    user_id: str | None = None
    user_name: str | None = None


class ClusterCARotated(_Message, frozen=True, tag=True):
    cluster_id: str
    pem: str


class GetClusterCAKey(_Message, frozen=True, tag=True):
    """The provisioner asks for the cluster CA's key to put in its first master's user data (docs/adr/0006);
    answered to the provisioner only (``cove.rpc.certs.ca_key``)."""

    cluster_id: str
    project_id: str


class ClusterCAKey(_Message, frozen=True, tag=True):
    """The cluster CA (``cert_pem``/``key_pem``) and, for clusters created since issue 19, the etcd and
    front-proxy CAs (None for an older cluster, whose kubeadm generates its own)."""

    cluster_id: str
    cert_pem: str
    key_pem: str
    etcd_cert_pem: str | None = None
    etcd_key_pem: str | None = None
    front_proxy_cert_pem: str | None = None
    front_proxy_key_pem: str | None = None


class GetUsage(_Message, frozen=True, tag=True):
    """Usage of one project (optionally one cluster) over [since, until); open intervals count up to now.
    ``project_id`` None asks for every project (the API allows it to admins only). ``group_by`` says what the
    reply's ``rows`` are: one per ``project``, per ``cluster`` or per billed ``resource``."""

    project_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    cluster_id: str | None = None
    group_by: Literal["project", "cluster", "resource"] = "cluster"


class ClusterUsage(msgspec.Struct, frozen=True, kw_only=True):
    cluster_id: str
    node_seconds: float
    core_seconds: float
    ram_mb_seconds: float
    nodes: int
    """Nodes with any active time inside the window."""


class UsageReport(_Message, frozen=True, tag=True):
    project_id: str
    since: datetime | None
    until: datetime
    """The end of the window actually used (the request's ``until``, or now)."""
    node_seconds: float
    core_seconds: float
    ram_mb_seconds: float
    clusters: list[ClusterUsage] = msgspec.field(default_factory=list)
    rows: list[UsageRow] = msgspec.field(default_factory=list)
    """Grouped as asked (``GetUsage.group_by``); rows with nothing in the window are left out."""


class UsageRow(msgspec.Struct, frozen=True, kw_only=True):
    """Usage inside the window, in exact integer microseconds (``*_us``) of each unit: vCPU, RAM MB, volume GB,
    floating IP, load balancer, server and cluster. ``cluster_id`` is None in a project row; the ``resource_*``
    fields, sizes and times are given in resource rows only."""

    project_id: str
    cluster_id: str | None = None
    vcpu_us: int = 0
    ram_mb_us: int = 0
    volume_gb_us: int = 0
    floating_ip_us: int = 0
    load_balancer_us: int = 0
    server_us: int = 0
    cluster_us: int = 0
    resource_id: str | None = None
    resource_kind: str | None = None
    """``server``, ``volume``, ``floating_ip``, ``load_balancer`` or ``cluster``."""
    resource_name: str | None = None
    vcpus: int | None = None
    ram_mb: int | None = None
    size_gb: int | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    billed_us: int | None = None
    """A resource row: microseconds of its life inside the window."""


class ListAddons(_Message, frozen=True, tag=True):
    """Which site add-ons the provisioner's catalog offers (``cove.rpc.provisioner.addons``): the API asks before it
    accepts an ``addons`` label."""


class AddonCatalog(_Message, frozen=True, tag=True):
    names: list[str] = msgspec.field(default_factory=list)
    """The add-on names, sorted (each is a ``<name>.yaml`` cloud-init fragment in the provisioner's directory)."""


class ErrorReply(_Message, frozen=True, tag=True):
    """Any failure answered by an RPC handler. ``code`` follows HTTP semantics (400, 404, 409, 500...)."""

    code: int
    message: str


Request = (
    SignCertificate | SignNodeCertificate | GetClusterCA | GetClusterCAKey | RotateClusterCA | GetUsage
    | ListAddons
)
Reply = (
    CertificateSigned | NodeCertificateSigned | ClusterCA | ClusterCAKey | ClusterCARotated | UsageReport
    | AddonCatalog | ErrorReply
)
Message = Request | Reply

REQUEST_TYPES: dict[str, type[_Message]] = {c.__name__: c for c in Message.__args__}  # type: ignore[attr-defined]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Message)


def encode_request(msg: _Message) -> bytes:
    """Encode any request or reply."""
    return _encoder.encode(msg)


def decode_request(data: bytes) -> Message:
    """Decode any request or reply; raises ``proto.envelope.MalformedMessage`` on failure."""
    from proto.envelope import MalformedMessage

    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise MalformedMessage(str(exc)) from exc


encode_reply = encode_request
decode_reply = decode_request
