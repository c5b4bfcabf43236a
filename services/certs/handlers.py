"""Event handlers ((envelope, transaction) -> events) and RPC handlers (request -> reply) of the certs service."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Literal

import asyncpg
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proto import subjects
from proto.envelope import Envelope, new_envelope
from proto.events import (
    CertificateIssued,
    ClusterAdmitted,
    ClusterCACreated,
    ClusterCADeleted,
    ClusterCAReplaced,
    ClusterDeleteCompleted,
)
from proto.requests import (
    CertificateSigned,
    ClusterCA,
    ClusterCAKey,
    ClusterCARotated,
    GetClusterCA,
    GetClusterCAKey,
    Message,
    NodeCertificateSigned,
    RotateClusterCA,
    SignCertificate,
    SignNodeCertificate,
)
from services.certs import ca, store
from services.certs.keys import KeyRing
from services.runtime.bus import Bus
from services.runtime.projection import Outgoing
from services.runtime.rpc import RpcError

log = structlog.get_logger(__name__)

PRODUCER = "certs"

FILTER_SUBJECTS = [
    subjects.producer_events("scheduler", "cluster"),
    subjects.producer_events(PRODUCER, "cluster"),
    subjects.producer_events("provisioner", "cluster"),
]
"""Admissions (create a CA), the service's own CA facts (what the store is rebuilt from), and the provisioner's
ClusterDeleteCompleted (delete the CA)."""


USER_CERT_DAYS = 30
"""Default validity of a user's client certificate (``COVE_CERTS_USER_CERT_DAYS``)."""
NODE_CERT_DAYS = 365
"""Default validity of a node's certificate (``COVE_CERTS_NODE_CERT_DAYS``)."""


def validity_days(environ: dict[str, str], name: str, default: int) -> timedelta:
    raw = environ.get(name, "").strip()
    days = int(raw) if raw else default
    if days < 1:
        raise ValueError(f"{name} must be at least 1 day, got {days}")
    return timedelta(days=days)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class Handlers:
    def __init__(
        self,
        keyring: KeyRing,
        pool: Callable[[], asyncpg.Pool | None],
        bus: Callable[[], Bus | None] = lambda: None,
        *,
        user_validity: timedelta = timedelta(days=USER_CERT_DAYS),
        node_validity: timedelta = timedelta(days=NODE_CERT_DAYS),
    ) -> None:
        self.keyring = keyring
        self.user_validity = user_validity
        self.node_validity = node_validity
        self._pool = pool
        self._bus = bus

    # ------------------------------------------------------------------ events

    async def handle(self, env: Envelope, tx: asyncpg.Connection) -> Sequence[Outgoing]:
        p = env.payload
        if isinstance(p, ClusterAdmitted):
            return await self.cluster_admitted(env, p, tx)
        if isinstance(p, ClusterCACreated):
            await store.put_ca(
                tx,
                cluster_id=p.uuid,
                project_id=p.project_id,
                ca_cert_pem=p.ca_cert_pem,
                encrypted_ca_key=p.encrypted_ca_key,
                key_id=p.key_id,
                created_at=env.occurred_at,
            )
        elif isinstance(p, ClusterCAReplaced):
            await store.replace_ca(
                tx,
                cluster_id=p.uuid,
                ca_cert_pem=p.ca_cert_pem,
                encrypted_ca_key=p.encrypted_ca_key,
                key_id=p.key_id,
            )
        elif isinstance(p, ClusterCADeleted):
            await store.set_deleted_at(tx, p.uuid, p.project_id, env.occurred_at)
        elif isinstance(p, ClusterDeleteCompleted) and await store.mark_deleted(tx, p.uuid, env.occurred_at):
            log.info("cluster_ca_deleted", cluster_id=p.uuid, project_id=p.project_id)
            return [
                Outgoing(
                    subjects.cluster_events(PRODUCER, p.uuid),
                    ClusterCADeleted(uuid=p.uuid, project_id=p.project_id),
                    project_id=p.project_id,
                    cluster_id=p.uuid,
                )
            ]
        return ()

    async def cluster_admitted(
        self, env: Envelope, p: ClusterAdmitted, tx: asyncpg.Connection
    ) -> Sequence[Outgoing]:
        if await store.get_ca(tx, p.uuid) is not None:
            log.info("cluster_ca_exists", cluster_id=p.uuid)
            return ()
        cert_pem, key_pem = ca.generate_ca(p.name or p.uuid)
        blob, key_id = self.keyring.encrypt(p.uuid, key_pem)
        await store.put_ca(
            tx,
            cluster_id=p.uuid,
            project_id=p.project_id,
            ca_cert_pem=cert_pem,
            encrypted_ca_key=blob,
            key_id=key_id,
            created_at=env.occurred_at,
        )
        log.info("cluster_ca_created", cluster_id=p.uuid, project_id=p.project_id, key_id=key_id)
        return [
            Outgoing(
                subjects.cluster_events(PRODUCER, p.uuid),
                ClusterCACreated(
                    uuid=p.uuid,
                    project_id=p.project_id,
                    ca_cert_pem=cert_pem,
                    encrypted_ca_key=blob,
                    key_id=key_id,
                ),
                project_id=p.project_id,
                cluster_id=p.uuid,
            )
        ]

    # ------------------------------------------------------------------ RPC

    async def _live_ca(self, cluster_id: str, project_id: str | None) -> store.StoredCA:
        pool = self._pool()
        if pool is None:
            raise RpcError(503, "certs store is not ready")
        found = await store.get_ca(pool, cluster_id)
        if found is None or found.deleted or (project_id and found.project_id != project_id):
            raise RpcError(404, f"Cluster {cluster_id} could not be found or has no CA.")
        return found

    async def get_ca(self, req: Message) -> Message:
        if not isinstance(req, GetClusterCA):
            raise RpcError(400, f"expected GetClusterCA, got {type(req).__name__}")
        found = await self._live_ca(req.cluster_id, req.project_id)
        return ClusterCA(pem=found.ca_cert_pem, cluster_id=found.cluster_id)

    async def ca_key(self, req: Message) -> Message:
        """The CA's key, decrypted, for the provisioner to hand the first master (docs/adr/0006). 404: unknown or
        deleted cluster, or another project's."""
        if not isinstance(req, GetClusterCAKey):
            raise RpcError(400, f"expected GetClusterCAKey, got {type(req).__name__}")
        found = await self._live_ca(req.cluster_id, req.project_id)
        assert found.encrypted_ca_key is not None
        key_pem = self.keyring.decrypt(found.cluster_id, found.encrypted_ca_key, found.key_id)
        log.info("ca_key_released", cluster_id=found.cluster_id, to="provisioner")
        return ClusterCAKey(cluster_id=found.cluster_id, cert_pem=found.ca_cert_pem, key_pem=key_pem.decode())

    async def sign(self, req: Message) -> Message:
        """Sign a CSR with the cluster's CA. 400: malformed CSR; 404: unknown/deleted cluster or other project."""
        if not isinstance(req, SignCertificate):
            raise RpcError(400, f"expected SignCertificate, got {type(req).__name__}")
        found = await self._live_ca(req.cluster_id, req.project_id)
        assert found.encrypted_ca_key is not None
        key_pem = self.keyring.decrypt(found.cluster_id, found.encrypted_ca_key, found.key_id)
        try:
            pem = await asyncio.to_thread(ca.sign_csr, found.ca_cert_pem, key_pem, req.csr_pem)
        except ca.InvalidCsr as exc:
            log.info("csr_rejected", cluster_id=req.cluster_id, reason=str(exc))
            raise RpcError(400, f"Invalid CSR: {exc}") from exc
        log.info("csr_signed", cluster_id=req.cluster_id, project_id=found.project_id)
        return CertificateSigned(pem=pem, cluster_id=found.cluster_id)

    async def sign_node(self, req: Message) -> Message:
        """A node's server-and-client certificate (a Swarm node's Docker engine), signed by the cluster CA, for
        the provisioner only (unauthenticated until NATS credentials, issue 16). CN = node name, SANs = the
        given IP addresses and DNS names. 400: malformed CSR, node name or SAN; 404: unknown/deleted cluster or
        another project's."""
        if not isinstance(req, SignNodeCertificate):
            raise RpcError(400, f"expected SignNodeCertificate, got {type(req).__name__}")
        found = await self._live_ca(req.cluster_id, req.project_id)
        assert found.encrypted_ca_key is not None
        key_pem = self.keyring.decrypt(found.cluster_id, found.encrypted_ca_key, found.key_id)
        try:
            subject = ca.node_subject(req.node_name)
            sans = ca.node_sans(req.sans)
            cert = await asyncio.to_thread(
                ca.issue, found.ca_cert_pem, key_pem, req.csr_pem,
                subject=subject, sans=sans, server=True, validity=self.node_validity,
            )
        except ca.InvalidCsr as exc:
            log.info("node_csr_rejected", cluster_id=req.cluster_id, node=req.node_name, reason=str(exc))
            raise RpcError(400, f"Invalid CSR: {exc}") from exc
        serial = await self._audit(found, cert, "kubernetes", issued_to="node", user_name="provisioner")
        return NodeCertificateSigned(pem=_pem(cert), cluster_id=found.cluster_id, serial=serial)

    async def _audit(
        self,
        found: store.StoredCA,
        cert: x509.Certificate,
        ca_cert_type: str,
        *,
        issued_to: Literal["user", "node"],
        user_id: str | None = None,
        user_name: str | None = None,
        caller_project_id: str | None = None,
    ) -> str:
        """Publish ``CertificateIssued`` (durable before the certificate is handed out); returns the serial."""
        bus = self._bus()
        if bus is None:
            raise RpcError(503, "certs is not connected")
        serial, subject, not_after = ca.describe(cert)
        event = CertificateIssued(
            uuid=found.cluster_id,
            project_id=found.project_id,
            serial=serial,
            subject=subject,
            ca_cert_type=ca_cert_type,
            issued_to=issued_to,
            user_id=user_id,
            user_name=user_name,
            caller_project_id=caller_project_id,
            not_after=not_after,
        )
        env = new_envelope(event, project_id=found.project_id, cluster_id=found.cluster_id)
        await bus.publish(subjects.cluster_events(PRODUCER, found.cluster_id), env)
        log.info("certificate_issued", cluster_id=found.cluster_id, serial=serial, subject=subject,
                 ca_cert_type=ca_cert_type, issued_to=issued_to, user_id=user_id)
        return serial

    async def rotate(self, req: Message) -> Message:
        """Replace the cluster's CA with a new one (same subject); the ``ClusterCAReplaced`` fact is durable in
        the stream before the reply, and the store has the new CA, so a sign right after uses it.
        404: unknown/deleted cluster or other project; 503: no bus or store."""
        if not isinstance(req, RotateClusterCA):
            raise RpcError(400, f"expected RotateClusterCA, got {type(req).__name__}")
        found = await self._live_ca(req.cluster_id, req.project_id)
        bus, pool = self._bus(), self._pool()
        if bus is None or pool is None:
            raise RpcError(503, "certs is not connected")
        common_name, previous_serial = ca.subject_and_serial(found.ca_cert_pem)
        cert_pem, key_pem = await asyncio.to_thread(ca.generate_ca, common_name)
        blob, key_id = self.keyring.encrypt(found.cluster_id, key_pem)
        event = ClusterCAReplaced(
            uuid=found.cluster_id,
            project_id=found.project_id,
            ca_cert_pem=cert_pem,
            encrypted_ca_key=blob,
            key_id=key_id,
            previous_serial=previous_serial,
        )
        env = new_envelope(event, project_id=found.project_id, cluster_id=found.cluster_id)
        await bus.publish(subjects.cluster_events(PRODUCER, found.cluster_id), env)
        async with pool.acquire() as conn:
            await store.replace_ca(
                conn, cluster_id=found.cluster_id, ca_cert_pem=cert_pem, encrypted_ca_key=blob, key_id=key_id
            )
        log.info("cluster_ca_rotated", cluster_id=found.cluster_id, project_id=found.project_id,
                 previous_serial=previous_serial)
        return ClusterCARotated(cluster_id=found.cluster_id, pem=cert_pem)
