"""``/v1/clusters``: create (202 {"uuid"}), list (summaries), detail, show, delete (204)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from proto import subjects
from proto.events import ClusterCreateRequested, ClusterDeleteRequested
from services.api import paging, status, store
from services.api.app import POOL, SETTINGS, WRITER
from services.api.errors import ApiError, bad_request
from services.api.microversion import Microversion
from services.api.middleware import KEYSTONE, base_url, context, version
from services.api.resources.common import iso, json_body, links, one, require_read, require_write, scope_of
from services.api.validation import cluster_fields, merged_labels

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()
RESOURCE = "clusters"

SUMMARY_FIELDS = (
    "uuid", "name", "cluster_template_id", "keypair", "docker_volume_size", "labels", "node_count", "status",
    "master_flavor_id", "flavor_id", "create_timeout", "master_count", "health_status", "links",
)


def view(row: asyncpg.Record, base: str, v: Microversion, *, full: bool = True,
         faults: dict[str, str] | None = None) -> dict[str, Any]:
    spec = json.loads(row["spec"])
    labels: dict[str, str] = spec.get("labels") or {}
    parent: dict[str, str] = spec.get("template_labels") or {}
    body: dict[str, Any] = {
        "uuid": row["uuid"],
        "name": row["name"],
        "cluster_template_id": row["cluster_template_id"],
        "keypair": spec.get("keypair"),
        "node_count": spec.get("node_count"),
        "master_count": spec.get("master_count"),
        "docker_volume_size": spec.get("docker_volume_size"),
        "labels": labels,
        "labels_overridden": {k: parent[k] for k in labels if k in parent and parent[k] != labels[k]},
        "labels_added": {k: labels[k] for k in labels if k not in parent},
        "labels_skipped": {k: parent[k] for k in parent if k not in labels},
        "master_flavor_id": spec.get("master_flavor_id"),
        "flavor_id": spec.get("flavor_id"),
        "create_timeout": spec.get("create_timeout"),
        "links": links(base, RESOURCE, row["uuid"]),
        "status": row["status"],
        "status_reason": row["status_reason"],
        "health_status": row["health_status"],
        "health_status_reason": {},
        "discovery_url": spec.get("discovery_url"),
        "api_address": row["api_address"],
        "coe_version": row["coe_version"],
        "container_version": row["container_version"],
        "project_id": row["project_id"],
        "user_id": row["user_id"],
        "node_addresses": json.loads(row["node_addresses"]),
        "master_addresses": json.loads(row["master_addresses"]),
        "fixed_network": spec.get("fixed_network"),
        "fixed_subnet": spec.get("fixed_subnet"),
        "floating_ip_enabled": spec.get("floating_ip_enabled"),
        "master_lb_enabled": spec.get("master_lb_enabled"),
        "merge_labels": spec.get("merge_labels", False),
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }
    id_field = "cluster_id" if v.at_least(1, 13) else "stack_id"
    body[id_field] = row["stack_id"]
    if not full:
        return {k: body[k] for k in (*SUMMARY_FIELDS, id_field)}
    body["faults"] = faults or {}
    return body


async def lookup(request: web.Request, ident: str) -> asyncpg.Record:
    found = await store.find_clusters(request.app[POOL], scope_of(context(request)), ident)
    row: asyncpg.Record = one(found, "Cluster", ident, plural="clusters")
    return row


async def _list(request: web.Request, rule: str, *, full: bool) -> web.Response:
    ctx = context(request)
    require_read(ctx, rule)
    page = paging.parse_page(request.query, store.CLUSTER_SORT_KEYS)
    try:
        rows = await store.list_clusters(request.app[POOL], scope_of(ctx), page)
    except store.MarkerNotFound:
        raise bad_request(f"Marker {page.marker} could not be found.") from None
    base, v = base_url(request), version(request)
    body: dict[str, Any] = {"clusters": [view(r, base, v, full=full) for r in rows]}
    nxt = paging.next_link(base, RESOURCE, page, len(rows), rows[-1]["uuid"] if rows else None)
    if nxt:
        body["next"] = nxt
    return web.json_response(body)


@routes.get("/v1/clusters")
async def list_clusters(request: web.Request) -> web.Response:
    return await _list(request, "cluster:get_all", full=False)


@routes.get("/v1/clusters/detail")
async def detail_clusters(request: web.Request) -> web.Response:
    return await _list(request, "cluster:detail", full=True)


async def _faults(pool: asyncpg.Pool, row: asyncpg.Record) -> dict[str, str]:
    if row["status"] not in status.FAILED:
        return {}
    faults: dict[str, str] = {}
    for node in await store.node_failures(pool, row["uuid"]):
        group = "default-master" if node["role"] == "master" else "default-worker"
        faults.setdefault(group, node["reason"] or row["status_reason"] or "")
    if not faults:
        faults["default-worker"] = row["status_reason"] or ""
    return faults


@routes.get("/v1/clusters/{ident}")
async def show_cluster(request: web.Request) -> web.Response:
    ctx = context(request)
    require_read(ctx, "cluster:get")
    row = await lookup(request, request.match_info["ident"])
    faults = await _faults(request.app[POOL], row)
    return web.json_response(view(row, base_url(request), version(request), faults=faults))


@routes.post("/v1/clusters")
async def create_cluster(request: web.Request) -> web.Response:
    ctx = context(request)
    require_write(ctx, "cluster:create")
    v = version(request)
    fields = cluster_fields(await json_body(request), v)
    pool, writer, keystone = request.app[POOL], request.app[WRITER], request.app[KEYSTONE]
    found = await store.find_templates(pool, scope_of(ctx), fields["cluster_template_id"])
    if not found:
        detail = f"ClusterTemplate {fields['cluster_template_id']} could not be found."
        raise ApiError(404 if v.at_least(1, 10) else 400, detail)
    template = one(found, "ClusterTemplate", fields["cluster_template_id"], plural="cluster templates")
    if template.hidden and not ctx.is_admin:
        raise ApiError(403, f"Cluster template {template.uuid} is hidden.")
    master_lb = fields.get("master_lb_enabled", template.master_lb_enabled)
    if fields["master_count"] > 1 and not master_lb:
        raise bad_request("master_count must be 1 when master_lb_enabled is False")
    for f in ("flavor_id", "master_flavor_id"):
        if fields.get(f):
            await keystone.find_flavor(ctx, fields[f])
    if fields.get("keypair"):
        await keystone.find_keypair(ctx, fields["keypair"])
    labels = merged_labels(template.labels, fields.get("labels"), fields.get("merge_labels", False))
    trust_id, trustee = await keystone.create_trust(ctx)
    cluster_uuid = str(uuid.uuid4())
    event = ClusterCreateRequested(
        uuid=cluster_uuid,
        name=fields["name"],
        project_id=ctx.project_id or "",
        user_id=ctx.user_id,
        template=template,
        master_count=fields["master_count"],
        node_count=fields["node_count"],
        keypair=fields.get("keypair"),
        flavor_id=fields.get("flavor_id"),
        master_flavor_id=fields.get("master_flavor_id"),
        labels=labels,
        create_timeout=fields["create_timeout"],
        discovery_url=fields.get("discovery_url"),
        docker_volume_size=fields.get("docker_volume_size"),
        fixed_network=fields.get("fixed_network"),
        fixed_subnet=fields.get("fixed_subnet"),
        floating_ip_enabled=fields.get("floating_ip_enabled"),
        master_lb_enabled=fields.get("master_lb_enabled"),
        trust_id=trust_id,
        trustee_user_id=trustee,
        requested_at=datetime.now(UTC),
    )
    seq = await writer.publish(
        subjects.cluster_events("api", cluster_uuid),
        event,
        project_id=event.project_id,
        cluster_id=cluster_uuid,
        expected_last_subject_seq=0,
    )
    await writer.wait_applied(seq)
    row = await _wait_admission(request, cluster_uuid)
    if row is not None and row["admission"] == "rejected":
        raise ApiError(403, row["status_reason"] or "Cluster creation was refused.")
    log.info("cluster_create_accepted", cluster_id=cluster_uuid, admission=row["admission"] if row else None)
    return web.json_response({"uuid": cluster_uuid}, status=202)


async def _wait_admission(request: web.Request, cluster_uuid: str) -> asyncpg.Record | None:
    """Wait (bounded) for the scheduler's decision to reach the read model; the last row seen."""
    pool, writer = request.app[POOL], request.app[WRITER]
    seen: list[asyncpg.Record | None] = [None]

    async def decided() -> bool:
        seen[0] = await store.get_cluster(pool, cluster_uuid)
        return seen[0] is not None and seen[0]["admission"] is not None

    await writer.wait_until(decided, request.app[SETTINGS].admission_timeout)
    return seen[0]


@routes.delete("/v1/clusters/{ident}")
async def delete_cluster(request: web.Request) -> web.Response:
    ctx = context(request)
    require_write(ctx, "cluster:delete")
    row = await lookup(request, request.match_info["ident"])
    if not status.is_deletable(row["status"]):
        return web.Response(status=204)
    writer = request.app[WRITER]
    seq = await writer.publish(
        subjects.cluster_events("api", row["uuid"]),
        ClusterDeleteRequested(uuid=row["uuid"], project_id=row["project_id"], user_id=ctx.user_id),
        project_id=row["project_id"],
        cluster_id=row["uuid"],
    )
    await writer.wait_applied(seq)
    return web.Response(status=204)
