"""Request/reply messages for NATS request-reply (RPC). Requests name an intent; replies the result."""

from __future__ import annotations

from datetime import datetime

import msgspec


class _Message(msgspec.Struct, frozen=True, tag_field="type", kw_only=True):
    pass


class SignCertificate(_Message, frozen=True, tag=True):
    cluster_id: str
    project_id: str
    csr_pem: str


class CertificateSigned(_Message, frozen=True, tag=True):
    pem: str
    cluster_id: str | None = None


class GetClusterCA(_Message, frozen=True, tag=True):
    cluster_id: str
    project_id: str | None = None


class ClusterCA(_Message, frozen=True, tag=True):
    pem: str
    cluster_id: str | None = None


class RotateClusterCA(_Message, frozen=True, tag=True):
    cluster_id: str
    project_id: str


class ClusterCARotated(_Message, frozen=True, tag=True):
    cluster_id: str
    pem: str


class GetClusterCAKey(_Message, frozen=True, tag=True):
    """The provisioner asks for the cluster CA's key to put in its first master's user data (docs/adr/0006);
    answered to the provisioner only (``cove.rpc.certs.ca_key``)."""

    cluster_id: str
    project_id: str


class ClusterCAKey(_Message, frozen=True, tag=True):
    cluster_id: str
    cert_pem: str
    key_pem: str


class GetUsage(_Message, frozen=True, tag=True):
    """Usage of one project (optionally one cluster) over [since, until); open intervals count up to now."""

    project_id: str
    since: datetime | None = None
    until: datetime | None = None
    cluster_id: str | None = None


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


class ErrorReply(_Message, frozen=True, tag=True):
    """Any failure answered by an RPC handler. ``code`` follows HTTP semantics (400, 404, 409, 500...)."""

    code: int
    message: str


Request = SignCertificate | GetClusterCA | GetClusterCAKey | RotateClusterCA | GetUsage
Reply = CertificateSigned | ClusterCA | ClusterCAKey | ClusterCARotated | UsageReport | ErrorReply
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
