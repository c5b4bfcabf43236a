"""Event handlers ((envelope, transaction) -> events) and RPC handlers (request -> reply) of the certs service."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Literal

import asyncpg
import msgspec
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
from services.certs.keys import KeyRing, KeySource, UndecryptableKey
from services.certs.keystore import DataKeyStore, PostgresKeyStore
from services.runtime.bus import Bus
from services.runtime.projection import Outgoing, PlannedHandler, Write, replaying
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


ACCESS_GROUPS = {"admin": ca.ADMIN_GROUP, "view": ca.VIEW_GROUP}
"""The access the API's policy grants (``SignCertificate.access``) -> the certificate's group (O)."""


def normalise_ca_cert_type(value: str | None) -> str:
    """Magnum's rule: ``etcd``, ``front_proxy``/``front-proxy``, anything else the cluster CA."""
    if value == "etcd":
        return "etcd"
    if value in ("front_proxy", "front-proxy"):
        return "front_proxy"
    return "kubernetes"


def env_with(env: Envelope, payload: ClusterCACreated) -> Envelope:
    """``env`` carrying ``payload`` (to apply a fact the handler is about to publish exactly as its replay will)."""
    return msgspec.structs.replace(env, payload=payload)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class Handlers:
    def __init__(
        self,
        keys: KeySource | KeyRing,
        pool: Callable[[], asyncpg.Pool | None],
        bus: Callable[[], Bus | None] = lambda: None,
        *,
        keystore: DataKeyStore | None = None,
        user_validity: timedelta = timedelta(days=USER_CERT_DAYS),
        node_validity: timedelta = timedelta(days=NODE_CERT_DAYS),
    ) -> None:
        self.keys = keys
        self.keystore: DataKeyStore = keystore or PostgresKeyStore("certs", keys)
        self.user_validity = user_validity
        self.node_validity = node_validity
        self._pool = pool
        self._bus = bus
        self.project = PlannedHandler(self.plan, self.handle)
        """The projection handler: planned events as writes (grouped in a batch), the others with ``handle``."""

    # ------------------------------------------------------------------ events

    def plan(self, env: Envelope) -> list[Write] | None:
        """The writes applying ``env`` when they can be decided from the event alone (a batch runs them grouped:
        ``PlannedHandler``); None for what ``handle`` must do: make a CA (it reads the store and publishes) and,
        live, forget a data key. Replayed (``replaying()``), an admission changes nothing: the ``ClusterCACreated``
        it caused follows it in the stream and records the CA that was made then, so no CA is made again (three
        key pairs each) and nothing is written to the key store, which is not part of the store being rebuilt
        (and holds the data key the stream's ciphertexts need, made once); nor is a replayed delete's data key
        forgotten again (it was, when the delete was first applied)."""
        p = env.payload
        if isinstance(p, ClusterCACreated):
            return [store.put_ca_write(
                cluster_id=p.uuid,
                project_id=p.project_id,
                ca_cert_pem=p.ca_cert_pem,
                encrypted_ca_key=p.encrypted_ca_key,
                key_id=p.key_id,
                created_at=env.occurred_at,
                etcd_ca_cert_pem=p.etcd_ca_cert_pem,
                etcd_encrypted_ca_key=p.etcd_encrypted_ca_key,
                front_proxy_ca_cert_pem=p.front_proxy_ca_cert_pem,
                front_proxy_encrypted_ca_key=p.front_proxy_encrypted_ca_key,
                wrapped_by=p.wrapped_by,
            )]
        if isinstance(p, ClusterCAReplaced):
            return [store.replace_ca_write(
                cluster_id=p.uuid,
                ca_cert_pem=p.ca_cert_pem,
                encrypted_ca_key=p.encrypted_ca_key,
                key_id=p.key_id,
                wrapped_by=p.wrapped_by,
            )]
        if not replaying():
            return None if isinstance(p, ClusterAdmitted | ClusterCADeleted | ClusterDeleteCompleted) else []
        if isinstance(p, ClusterCADeleted):
            return [store.set_deleted_at_write(p.uuid, env.occurred_at)]
        if isinstance(p, ClusterDeleteCompleted):
            return [store.mark_deleted_write(p.uuid, env.occurred_at)]
        return []

    async def handle(self, env: Envelope, tx: asyncpg.Connection) -> Sequence[Outgoing]:
        """One event, whatever its type (the planned ones through their writes)."""
        p = env.payload
        if isinstance(p, ClusterAdmitted):
            return await self.cluster_admitted(env, p, tx)
        if isinstance(p, ClusterCADeleted):
            await store.set_deleted_at(tx, p.uuid, p.project_id, env.occurred_at)
            await self.keystore.forget(tx, p.uuid)
        elif isinstance(p, ClusterDeleteCompleted) and await store.mark_deleted(tx, p.uuid, env.occurred_at):
            await self.keystore.forget(tx, p.uuid)
            log.info("cluster_ca_deleted", cluster_id=p.uuid, project_id=p.project_id)
            return [
                Outgoing(
                    subjects.cluster_events(PRODUCER, p.uuid),
                    ClusterCADeleted(uuid=p.uuid, project_id=p.project_id),
                    project_id=p.project_id,
                    cluster_id=p.uuid,
                )
            ]
        elif not isinstance(p, ClusterDeleteCompleted):
            for write in self.plan(env) or ():
                await store.run(tx, write)
        return ()

    async def cluster_admitted(
        self, env: Envelope, p: ClusterAdmitted, tx: asyncpg.Connection
    ) -> Sequence[Outgoing]:
        """The cluster's three CAs (cluster, etcd, front-proxy), their keys wrapped by the cluster's data key."""
        if await store.get_ca(tx, p.uuid) is not None:
            log.info("cluster_ca_exists", cluster_id=p.uuid)
            return ()
        name = p.name or p.uuid
        cert_pem, key_pem = ca.generate_ca(name)
        etcd_pem, etcd_key = ca.generate_ca(f"{name[:59]}-etcd")
        proxy_pem, proxy_key = ca.generate_ca(f"{name[:52]}-front-proxy")
        dk = await self.keystore.get_or_create(tx, p.uuid)
        event = ClusterCACreated(
            uuid=p.uuid,
            project_id=p.project_id,
            ca_cert_pem=cert_pem,
            encrypted_ca_key=dk.wrap(key_pem),
            key_id=dk.key_id,
            etcd_ca_cert_pem=etcd_pem,
            etcd_encrypted_ca_key=dk.wrap(etcd_key),
            front_proxy_ca_cert_pem=proxy_pem,
            front_proxy_encrypted_ca_key=dk.wrap(proxy_key),
            wrapped_by="data_key",
        )
        await self.handle(env_with(env, event), tx)
        log.info("cluster_ca_created", cluster_id=p.uuid, project_id=p.project_id, key_id=dk.key_id)
        return [
            Outgoing(
                subjects.cluster_events(PRODUCER, p.uuid),
                event,
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

    @staticmethod
    def _cert(found: store.StoredCA, ca_cert_type: str) -> tuple[str, bytes]:
        """The CA of ``ca_cert_type`` and its wrapped key; 409 when the cluster predates it (issue 19)."""
        kind = normalise_ca_cert_type(ca_cert_type)
        cert_pem, blob = found.cert_and_key(kind)
        if cert_pem is None or blob is None:
            raise RpcError(
                409,
                f"Cluster {found.cluster_id} was created before Cove kept an {kind} CA per cluster; it has only "
                "the kubernetes CA (its nodes' own kubeadm made the others).",
            )
        return cert_pem, blob

    async def _unwrap(self, found: store.StoredCA, blob: bytes) -> bytes:
        """A CA key in the clear: under the cluster's data key, or (before issue 19) under the KEK itself."""
        try:
            if found.wrapped_by == "kek":
                return self.keys.decrypt(found.cluster_id, blob, found.key_id)
            pool = self._pool()
            if pool is None:
                raise RpcError(503, "certs store is not ready")
            dk = await self.keystore.get(pool, found.cluster_id, found.key_id)
            return dk.unwrap(blob)
        except UndecryptableKey as exc:
            log.error("ca_key_undecryptable", cluster_id=found.cluster_id, error=str(exc))
            raise RpcError(500, f"The CA key of cluster {found.cluster_id} cannot be decrypted.") from exc

    async def get_ca(self, req: Message) -> Message:
        if not isinstance(req, GetClusterCA):
            raise RpcError(400, f"expected GetClusterCA, got {type(req).__name__}")
        found = await self._live_ca(req.cluster_id, req.project_id)
        cert_pem, _ = self._cert(found, req.ca_cert_type)
        return ClusterCA(pem=cert_pem, cluster_id=found.cluster_id)

    async def ca_key(self, req: Message) -> Message:
        """The CAs' keys, decrypted, for the provisioner to hand the first master (docs/adr/0006): the cluster CA,
        and the etcd and front-proxy CAs when the cluster has them. 404: unknown or deleted cluster, or another
        project's."""
        if not isinstance(req, GetClusterCAKey):
            raise RpcError(400, f"expected GetClusterCAKey, got {type(req).__name__}")
        found = await self._live_ca(req.cluster_id, req.project_id)
        assert found.encrypted_ca_key is not None
        key_pem = await self._unwrap(found, found.encrypted_ca_key)
        extra: dict[str, str | None] = {}
        for kind, prefix in (("etcd", "etcd"), ("front_proxy", "front_proxy")):
            cert_pem, blob = found.cert_and_key(kind)
            if cert_pem is not None and blob is not None:
                extra[f"{prefix}_cert_pem"] = cert_pem
                extra[f"{prefix}_key_pem"] = (await self._unwrap(found, blob)).decode()
        log.info("ca_key_released", cluster_id=found.cluster_id, to="provisioner", cas=1 + len(extra) // 2)
        return ClusterCAKey(
            cluster_id=found.cluster_id, cert_pem=found.ca_cert_pem, key_pem=key_pem.decode(), **extra
        )

    async def sign(self, req: Message) -> Message:
        """Sign a user's CSR with one of the cluster's CAs; the subject comes from the caller's Keystone identity
        (``ca.user_subject``), never the CSR. 400: malformed CSR or no caller identity; 403: a reader asking for an
        etcd or front-proxy certificate; 404: unknown/deleted cluster or another project's; 409: the cluster has
        no CA of that type."""
        if not isinstance(req, SignCertificate):
            raise RpcError(400, f"expected SignCertificate, got {type(req).__name__}")
        if not req.user_id or req.access not in ACCESS_GROUPS:
            raise RpcError(400, "A certificate is signed only for a caller the API identified (user and access).")
        kind = normalise_ca_cert_type(req.ca_cert_type)
        if req.access != "admin" and kind != "kubernetes":
            raise RpcError(403, f"Only members of the cluster's project may have {kind} certificates signed.")
        found = await self._live_ca(req.cluster_id, req.project_id)
        cert_pem, blob = self._cert(found, kind)
        key_pem = await self._unwrap(found, blob)
        subject = ca.user_subject(req.user_id, req.user_name, ACCESS_GROUPS[req.access])
        sans = ca.user_sans(req.user_id, req.caller_project_id)
        try:
            cert = await asyncio.to_thread(
                ca.issue, cert_pem, key_pem, req.csr_pem, subject=subject, sans=sans, validity=self.user_validity
            )
        except ca.InvalidCsr as exc:
            log.info("csr_rejected", cluster_id=req.cluster_id, reason=str(exc))
            raise RpcError(400, f"Invalid CSR: {exc}") from exc
        serial = await self._audit(
            found, cert, kind, issued_to="user", user_id=req.user_id, user_name=req.user_name,
            caller_project_id=req.caller_project_id,
        )
        return CertificateSigned(pem=_pem(cert), cluster_id=found.cluster_id, serial=serial)

    async def sign_node(self, req: Message) -> Message:
        """A node's server-and-client certificate (a Swarm node's Docker engine), signed by the cluster CA, for
        the provisioner only (unauthenticated until NATS credentials, issue 16). CN = node name, SANs = the
        given IP addresses and DNS names. 400: malformed CSR, node name or SAN; 404: unknown/deleted cluster or
        another project's."""
        if not isinstance(req, SignNodeCertificate):
            raise RpcError(400, f"expected SignNodeCertificate, got {type(req).__name__}")
        found = await self._live_ca(req.cluster_id, req.project_id)
        assert found.encrypted_ca_key is not None
        key_pem = await self._unwrap(found, found.encrypted_ca_key)
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
        async with pool.acquire() as conn:
            dk = await self.keystore.get_or_create(conn, found.cluster_id)
        blob = dk.wrap(key_pem)
        _, serial = ca.subject_and_serial(cert_pem)
        event = ClusterCAReplaced(
            uuid=found.cluster_id,
            project_id=found.project_id,
            ca_cert_pem=cert_pem,
            encrypted_ca_key=blob,
            key_id=dk.key_id,
            previous_serial=previous_serial,
            user_id=req.user_id,
            user_name=req.user_name,
            serial=serial,
            wrapped_by="data_key",
        )
        env = new_envelope(event, project_id=found.project_id, cluster_id=found.cluster_id)
        await bus.publish(subjects.cluster_events(PRODUCER, found.cluster_id), env)
        async with pool.acquire() as conn:
            await store.replace_ca(
                conn, cluster_id=found.cluster_id, ca_cert_pem=cert_pem, encrypted_ca_key=blob, key_id=dk.key_id,
                wrapped_by="data_key",
            )
        log.info("cluster_ca_rotated", cluster_id=found.cluster_id, project_id=found.project_id,
                 previous_serial=previous_serial, serial=serial, user_id=req.user_id)
        return ClusterCARotated(cluster_id=found.cluster_id, pem=cert_pem)
