"""``/v1/certificates``: a cluster's CA, signing a CSR with it, rotating it (§1.5 and §4 of the reference).

Each call needs an answer from the certs service, so each is a NATS request-reply (``cove.rpc.certs.*``), not an
event: show a CA (``GetClusterCA``), sign a CSR (``SignCertificate``), rotate the CA (``RotateClusterCA``;
certs publishes ``ClusterCAReplaced`` before answering). A cluster has three CAs (issue 19): ``ca_cert_type``
``kubernetes`` (the default), ``etcd`` or ``front_proxy`` (``front-proxy``) selects one on show and sign, as in
Magnum; a cluster created before has the kubernetes CA only, and asking for another says so.

Signing (issue 19): every member and reader of the cluster's project (and admins) gets a certificate of their
own. The API passes the caller's Keystone identity as it validated it (user id and name, token project, roles)
and the access its policy grants (``certificate:create_admin_group``: ``admin``, else ``view``); the certs service
makes the subject from them, whatever the CSR asks. Readers are refused etcd and front-proxy certificates (403).
Someone outside the cluster's project who names it by uuid gets 403 (by name: not found, as Magnum).

Policy: certificate:get and certificate:create = admin or a reader of the project; certificate:rotate_ca = admin
or a member of the project.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from proto import subjects
from proto.requests import (
    CertificateSigned,
    ClusterCA,
    ClusterCARotated,
    GetClusterCA,
    Message,
    RotateClusterCA,
    SignCertificate,
)
from services.api import policy, status, store
from services.api.errors import ApiError, bad_request
from services.api.keys import POOL, WRITER
from services.api.middleware import base_url, context
from services.api.resources.common import json_body, links, one, require_read, require_write, scope_of
from services.runtime import rpc

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()
RESOURCE = "certificates"
CA_CERT_TYPES = ("kubernetes", "etcd", "front_proxy", "front-proxy")
RPC_TIMEOUT = 10.0
MAX_CSR_CHARS = 64 * 1024
"""A larger CSR is refused here, before it reaches the certs service (which has the same bound)."""


def owner(cluster: asyncpg.Record) -> dict[str, str]:
    """The policy target of a cluster's certificates: its project and the user who created it."""
    return {"project_id": cluster["project_id"], "user_id": cluster["user_id"]}


async def _find(request: web.Request, ident: str, *, missing_status: int = 404) -> asyncpg.Record:
    """The cluster, in the caller's scope; one of another project named by its uuid is returned too, for the
    caller's policy check to refuse with 403 (a name is looked up in the caller's scope only, so names never
    leak across projects)."""
    found = await store.find_clusters(request.app[POOL], scope_of(context(request)), ident)
    if not found and _is_uuid(ident):
        row = await store.get_cluster(request.app[POOL], ident)
        if row is not None:
            return row
    if not found:
        raise ApiError(missing_status, f"Cluster {ident} could not be found.")
    cluster: asyncpg.Record = one(found, "Cluster", ident, plural="clusters")
    return cluster


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


async def _call(request: web.Request, subject: str, req: Message, ident: str, *, missing_status: int) -> Message:
    nc = request.app[WRITER].bus.nc
    try:
        return await rpc.request(nc, subject, req, timeout=RPC_TIMEOUT)
    except rpc.RpcError as exc:
        if exc.code == 400:
            raise bad_request(exc.message) from exc
        if exc.code == 403:
            raise ApiError(403, exc.message) from exc
        if exc.code == 409:  # the cluster predates that CA type
            raise ApiError(missing_status, exc.message) from exc
        if exc.code == 404:
            raise ApiError(missing_status, f"Cluster {ident} has no certificate authority.") from exc
        log.error("certs_rpc_failed", subject=subject, code=exc.code, error=exc.message)
        raise ApiError(503, "The certificate service is not available; try again later.") from exc


def _ca_cert_type(value: Any) -> str | None:
    if value is None:
        return None
    if value not in CA_CERT_TYPES:
        raise bad_request(f"Invalid ca_cert_type {value}. Valid values are {', '.join(CA_CERT_TYPES)}.")
    return str(value)


def _which_ca(value: str | None) -> str:
    """``front-proxy`` is Magnum's other spelling of ``front_proxy``; none means the cluster (kubernetes) CA."""
    return "front_proxy" if value == "front-proxy" else (value or "kubernetes")


@routes.get("/v1/certificates/{ident}")
async def show(request: web.Request) -> web.Response:
    ctx = context(request)
    require_read(ctx, "certificate:get")
    which = _which_ca(_ca_cert_type(request.query.get("ca_cert_type")))
    ident = request.match_info["ident"]
    cluster = await _find(request, ident)
    policy.require(request, "certificate:get", owner(cluster))
    reply = await _call(
        request, subjects.CERTS_GET_CA,
        GetClusterCA(cluster_id=cluster["uuid"], project_id=cluster["project_id"], ca_cert_type=which),
        ident, missing_status=404,
    )
    assert isinstance(reply, ClusterCA)
    return web.json_response({
        "cluster_uuid": cluster["uuid"],
        "pem": reply.pem,
        "links": links(base_url(request), RESOURCE, cluster["uuid"]),
    })


@routes.post("/v1/certificates")
async def sign(request: web.Request) -> web.Response:
    ctx = context(request)
    require_read(ctx, "certificate:create")
    body = await json_body(request)
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    unknown = sorted(set(body) - {"cluster_uuid", "bay_uuid", "csr", "ca_cert_type", "pem", "links"})
    if unknown:
        raise bad_request(f"Unknown attribute for argument certificate: {', '.join(unknown)}")
    ident = body.get("cluster_uuid") or body.get("bay_uuid")
    csr = body.get("csr")
    if not isinstance(ident, str) or not ident:
        raise bad_request("Invalid input for field/attribute cluster_uuid. Value: 'None'. Mandatory field missing.")
    if not isinstance(csr, str) or not csr.strip():
        raise bad_request("Invalid input for field/attribute csr. Value: 'None'. Mandatory field missing.")
    ca_cert_type = _ca_cert_type(body.get("ca_cert_type"))
    if len(csr) > MAX_CSR_CHARS:
        raise bad_request(f"Invalid CSR: it is too large ({len(csr)} characters; at most {MAX_CSR_CHARS}).")
    cluster = await _find(request, ident, missing_status=400)
    policy.require(request, "certificate:create", owner(cluster))
    access = "admin" if policy.allowed(request, "certificate:create_admin_group", owner(cluster)) else "view"
    which = _which_ca(ca_cert_type)
    if access != "admin" and which != "kubernetes":
        raise ApiError(403, f"Only members of the cluster's project may have {which} certificates signed.")
    reply = await _call(
        request,
        subjects.CERTS_SIGN,
        SignCertificate(
            cluster_id=cluster["uuid"],
            project_id=cluster["project_id"],
            csr_pem=csr,
            user_id=ctx.user_id,
            user_name=ctx.user_name,
            caller_project_id=ctx.project_id,
            roles=sorted(ctx.roles),
            access=access,
            ca_cert_type=which,
        ),
        ident,
        missing_status=400,
    )
    assert isinstance(reply, CertificateSigned)
    log.info("certificate_signed", cluster_id=cluster["uuid"], user_id=ctx.user_id, access=access,
             ca_cert_type=which, serial=reply.serial)
    answer: dict[str, Any] = {
        "cluster_uuid": cluster["uuid"],
        "csr": csr,
        "pem": reply.pem,
        "links": links(base_url(request), RESOURCE, cluster["uuid"]),
    }
    if ca_cert_type is not None:
        answer["ca_cert_type"] = ca_cert_type
    return web.json_response(answer, status=201)


@routes.patch("/v1/certificates/{ident}")
async def rotate(request: web.Request) -> web.Response:
    ctx = context(request)
    require_write(ctx, "certificate:rotate_ca")
    ident = request.match_info["ident"]
    cluster = await _find(request, ident)
    policy.require(request, "certificate:rotate_ca", owner(cluster))
    found = await store.find_templates(
        request.app[POOL], store.Scope(project_id=None, is_admin=True), cluster["cluster_template_id"]
    )
    if found and found[0].tls_disabled:
        raise bad_request(f"Rotating the CA certificate on a non-TLS cluster {cluster['uuid']} is not supported.")
    if cluster["status"] not in status.STABLE:
        raise bad_request(
            f"Updating a cluster when status is \"{cluster['status']}\" is not supported"
        )
    reply = await _call(
        request,
        subjects.CERTS_ROTATE_CA,
        RotateClusterCA(
            cluster_id=cluster["uuid"], project_id=cluster["project_id"], user_id=ctx.user_id, user_name=ctx.user_name
        ),
        ident,
        missing_status=404,
    )
    assert isinstance(reply, ClusterCARotated)
    log.info("cluster_ca_rotate_accepted", cluster_id=cluster["uuid"], user_id=ctx.user_id)
    return web.json_response({"uuid": cluster["uuid"]}, status=202)
