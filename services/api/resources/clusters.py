"""``/v1/clusters``: create (202 {"uuid"}), list (summaries), detail, show, PATCH (202 {"uuid"}), delete (204).

PATCH is Magnum's JSON-patch limited to ``/node_count`` (a resize of the default worker group:
``ClusterUpdateRequested``), ``/health_status`` and ``/health_status_reason`` (``ClusterHealthUpdated``, for an
external healer or the cluster's trustee); ``?rollback=True`` from microversion 1.3.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import structlog
from aiohttp import web

from proto import subjects
from proto.clusterspec import FlavorSizes, SpecError, resolve_cluster, with_flavor_sizes
from proto.envelope import decode
from proto.events import (
    ClusterCreateRequested,
    ClusterDeleteRequested,
    ClusterHealthUpdated,
    ClusterRejected,
    ClusterUpdateRejected,
    ClusterUpdateRequested,
    ClusterWithdrawn,
    NodeGroupCreateRequested,
)
from proto.labels import ADDONS_LABEL
from proto.quotas import CLUSTER, RESOURCES, cloud_quota_checked
from services.api import paging, policy, status, store
from services.api.addons import ADDONS
from services.api.errors import ApiError, bad_request
from services.api.keys import KEYSTONE, POOL, SETTINGS, TEMPLATES, USER_CLOUD, WRITER
from services.api.keystone import AuthContext
from services.api.microversion import Microversion
from services.api.middleware import base_url, context, version
from services.api.patch import CLUSTER_INTERNAL, CLUSTER_NON_REMOVABLE, apply_patch, changed, parse_patch
from services.api.resources.clustertemplates import one_template
from services.api.resources.common import cached_json, iso, json_body, links, one, scope_of
from services.api.resources.quotas import default_limit
from services.api.usercloud import UserCloud
from services.api.validation import as_bool, as_int, check_cluster_type, check_labels, cluster_fields
from services.api.writer import Writer

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
        "health_status_reason": _json(row, "health_status_reason", {}),
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


def _json(row: asyncpg.Record, column: str, default: Any) -> Any:
    value = row.get(column)
    return default if value is None else json.loads(value)


def owner(row: asyncpg.Record) -> dict[str, str]:
    return {"project_id": row["project_id"], "user_id": row["user_id"]}


async def lookup(request: web.Request, ident: str) -> asyncpg.Record:
    found = await store.find_clusters(request.app[POOL], scope_of(context(request)), ident)
    row: asyncpg.Record = one(found, "Cluster", ident, plural="clusters")
    return row


async def _list(request: web.Request, rule: str, *, full: bool) -> web.Response:
    ctx = context(request)
    policy.require(request, rule)
    page = paging.parse_page(request.query, store.CLUSTER_SORT_KEYS)
    scope, base, v = scope_of(ctx), base_url(request), version(request)

    async def build() -> dict[str, Any]:
        try:
            rows = await store.list_clusters(request.app[POOL], scope, page)
        except store.MarkerNotFound:
            raise bad_request(f"Marker {page.marker} could not be found.") from None
        body: dict[str, Any] = {"clusters": [view(r, base, v, full=full) for r in rows]}
        nxt = paging.next_link(base, RESOURCE, page, len(rows), rows[-1]["uuid"] if rows else None)
        if nxt:
            body["next"] = nxt
        return body

    return await cached_json(request, (scope.project_id, scope.is_admin, base, v), build)


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
    base, v = base_url(request), version(request)

    async def build() -> dict[str, Any]:
        row = await lookup(request, request.match_info["ident"])
        policy.require(request, "cluster:get", owner(row))
        return view(row, base, v, faults=await _faults(request.app[POOL], row))

    # From the read cache like the lists. The body depends on the caller only through what the lookup (scope) and
    # the policy check (user, project, roles) see, so those are the key; a refusal (404, 403) is never cached.
    return await cached_json(request, (ctx.project_id, ctx.user_id, ctx.roles, base, v), build)


def _flavor_size(flavor: dict[str, Any]) -> tuple[int, int]:
    return int(flavor.get("vcpus") or 0), int(flavor.get("ram") or 0)


class FlavorSizeCache:
    """The vCPUs and RAM of flavors the request did not name (the template's, or Magnum's default), for the
    scheduler's quotas: found in the user's Nova once per ``ttl`` seconds per compute endpoint and flavor, so a burst
    of creates does not list flavors each time. A flavor Nova does not know is remembered as unknown (no sizes: the
    quotas count its nodes, not their vCPUs and RAM)."""

    def __init__(self, ttl: float = 300.0) -> None:
        self.ttl = ttl
        self._sizes: dict[tuple[str, str], tuple[float, tuple[int, int] | None]] = {}

    async def find(self, cloud: UserCloud, ctx: AuthContext, flavor: str) -> tuple[int, int] | None:
        key = (ctx.endpoint("compute") or "", flavor)
        hit = self._sizes.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        try:
            found: tuple[int, int] | None = _flavor_size(await cloud.find_flavor(ctx, flavor))
        except ApiError as exc:
            if exc.status >= 500:
                return None  # not remembered: the next create asks again
            found = None
        self._sizes[key] = (time.monotonic(), found)
        return found


FLAVOR_SIZES = FlavorSizeCache()


@routes.post("/v1/clusters")
async def create_cluster(request: web.Request) -> web.Response:
    ctx = context(request)
    policy.require(request, "cluster:create")
    v = version(request)
    fields = cluster_fields(await json_body(request), v)
    pool, writer, keystone = request.app[POOL], request.app[WRITER], request.app[KEYSTONE]
    user_cloud = request.app[USER_CLOUD]
    found = await request.app[TEMPLATES].find(pool, scope_of(ctx), fields["cluster_template_id"], include_hidden=True)
    if not found:
        detail = f"ClusterTemplate {fields['cluster_template_id']} could not be found."
        raise ApiError(404 if v.at_least(1, 10) else 400, detail)
    template = one_template(found, fields["cluster_template_id"])
    if template.hidden and not ctx.is_admin:
        raise ApiError(403, f"Cluster template {template.uuid} is hidden.")
    try:
        spec = resolve_cluster(
            template, master_count=fields["master_count"], node_count=fields["node_count"],
            flavor_id=fields.get("flavor_id"), master_flavor_id=fields.get("master_flavor_id"),
            labels=fields.get("labels"), merge_labels=bool(fields.get("merge_labels", False)),
            keypair=fields.get("keypair"), docker_volume_size=fields.get("docker_volume_size"),
            fixed_network=fields.get("fixed_network"), fixed_subnet=fields.get("fixed_subnet"),
            floating_ip_enabled=fields.get("floating_ip_enabled"), master_lb_enabled=fields.get("master_lb_enabled"),
            create_timeout=fields["create_timeout"], discovery_url=fields.get("discovery_url"),
        )
    except SpecError as exc:
        raise bad_request(str(exc)) from None
    check_labels(template.coe, spec.labels, spec.network_driver)
    if template.cluster_distro is not None:
        check_cluster_type(template.server_type, template.cluster_distro, template.coe)
    if ADDONS_LABEL in (fields.get("labels") or {}):
        await request.app[ADDONS].check(spec.labels)
    if spec.master_count > 1 and not spec.master_lb_enabled:
        raise bad_request("master_count must be 1 when master_lb_enabled is False")
    sizes: FlavorSizes = {}
    for f in ("flavor_id", "master_flavor_id"):
        if fields.get(f):
            sizes[fields[f]] = _flavor_size(await user_cloud.find_flavor(ctx, fields[f]))
    for flavor in {spec.flavor_id, spec.master_flavor_id} - set(sizes):  # the template's or the default flavors
        size = await FLAVOR_SIZES.find(user_cloud, ctx, flavor)
        if size is not None:
            sizes[flavor] = size
    if sizes:  # the scheduler's quotas count vCPUs and RAM from the spec (decided once, here)
        spec = with_flavor_sizes(spec, sizes)
    if fields.get("keypair"):
        await user_cloud.find_keypair(ctx, fields["keypair"])
    trust_id, trustee = await keystone.cluster_trust(ctx)
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
        labels=spec.labels,
        create_timeout=fields["create_timeout"],
        discovery_url=fields.get("discovery_url"),
        docker_volume_size=fields.get("docker_volume_size"),
        fixed_network=fields.get("fixed_network"),
        fixed_subnet=fields.get("fixed_subnet"),
        floating_ip_enabled=fields.get("floating_ip_enabled"),
        master_lb_enabled=fields.get("master_lb_enabled"),
        merge_labels=bool(fields.get("merge_labels", False)),
        trust_id=trust_id,
        trustee_user_id=trustee,
        requested_at=datetime.now(UTC),
        spec=spec,
    )
    # Listen for the scheduler's decision before it can be taken, then wait (bounded) for it: heard the moment the
    # stream stores it, or when the projection applies it. Then, read-your-writes: an admitted create's own event
    # applied (usually done while the scheduler decided), a rejection applied (its reason is in the read model).
    watch = writer.watch_admission(cluster_uuid)
    try:
        seq = await writer.publish(
            subjects.cluster_events("api", cluster_uuid),
            event,
            project_id=event.project_id,
            cluster_id=cluster_uuid,
            expected_last_subject_seq=0,
            quiet=True,
        )
        decision = await watch.decision(lambda: store.admission_of(pool, cluster_uuid),
                                        request.app[SETTINGS].admission_timeout)
    finally:
        watch.close()
    if decision is not None and decision.verdict == "rejected":
        # The reason from the rejection itself when it was heard as stored (the projection may be seconds behind
        # under load, past read-your-writes' bound); else the read model showed it, and its row holds the reason.
        reason = await _refusal(writer, decision.seq, cluster_uuid) if decision.seq else None
        if reason is None:
            await writer.wait_applied(max(seq, decision.seq))
            row = await store.get_cluster(pool, cluster_uuid)
            reason = row["status_reason"] if row else None
        await _withdraw(writer, event, seq)
        raise ApiError(403, reason or "Cluster creation was refused.")
    # A queued create shows its place in line (``status_reason``) from the answer on, so its decision is waited for
    # too; an admitted one's decision changes nothing a user sees (its own event is what must be applied).
    shown_from = max(seq, decision.seq) if decision is not None and decision.verdict == "queued" else seq
    await writer.wait_applied(shown_from)
    # The checkpoint is the highest sequence applied, not a contiguous one: an API copy that died holding the
    # request's batch leaves it to be delivered again after the ack wait, while the other copy applies later events
    # (parked until the request comes: services/api/parking.py). Wait (bounded) for the row itself.
    if not await store.cluster_exists(pool, cluster_uuid) and not await writer.wait_until(
            lambda: store.cluster_exists(pool, cluster_uuid)):
        log.warning("read_your_writes_late", cluster_id=cluster_uuid, seq=seq)
    log.info("cluster_create_accepted", cluster_id=cluster_uuid, admission=decision and decision.verdict,
             trust_id=trust_id, seq=seq)
    return web.json_response({"uuid": cluster_uuid}, status=202)


async def _withdraw(writer: Writer, request: ClusterCreateRequested, request_seq: int) -> None:
    """The create is answered 403, as Magnum answers a quota refusal, and Magnum then has no such cluster: withdraw
    it (``ClusterWithdrawn``, right after the request, at ``request_seq``, on its subject: nothing else was asked of
    the cluster meanwhile) and wait until the read model dropped it. If that fails the 403 stands and the cluster
    shows CREATE_FAILED with the reason, as after a late rejection."""
    try:
        seq = await writer.publish(
            subjects.cluster_events("api", request.uuid),
            ClusterWithdrawn(uuid=request.uuid, project_id=request.project_id),
            project_id=request.project_id,
            cluster_id=request.uuid,
            expected_last_subject_seq=request_seq,
        )
    except ApiError as exc:
        log.warning("cluster_withdraw_failed", cluster_id=request.uuid, status=exc.status, detail=exc.detail)
        return
    await writer.wait_applied(seq)


async def node_quotas_apply(pool: asyncpg.Pool, project_id: str) -> bool:
    """Whether a quota that a bigger cluster could exceed limits the project: the cloud's own (Nova, Cinder,
    Neutron), when the scheduler checks it (``proto.quotas.cloud_quota_checked``), or Cove's on nodes, vCPUs, RAM or
    volume GB (the project's row in the read model, else a configured default). Only then does a resize wait for the
    scheduler's decision; otherwise nothing could refuse it and it is acted on at once (the scheduler still records
    what it reserves)."""
    if cloud_quota_checked(dict(os.environ)):
        return True
    resources = [r for r in RESOURCES if r != CLUSTER]
    if any(default_limit(resource=r) >= 0 for r in resources):
        return True
    found = await pool.fetchval(
        "SELECT true FROM quotas WHERE project_id = $1 AND resource = ANY($2::text[]) LIMIT 1", project_id, resources
    )
    return bool(found)


async def publish_resize(request: web.Request, writer: Writer, subject: str, event: ClusterUpdateRequested) -> int:
    """Publish a resize (a PATCH of node_count or ``actions/resize``): decided by the scheduler first when a quota
    could refuse it (403, nothing changed), else acted on at once. The sequence the read model shows it from."""
    event = msgspec.structs.replace(event, decided=await node_quotas_apply(request.app[POOL], event.project_id))
    if event.decided:
        return await decided_publish(request, writer, subject, event, event.uuid, event.project_id)
    return await writer.publish(subject, event, project_id=event.project_id, cluster_id=event.uuid)


async def decided_publish(request: web.Request, writer: Writer, subject: str,
                          event: ClusterUpdateRequested | NodeGroupCreateRequested, cluster_uuid: str,
                          project_id: str) -> int:
    """Publish a change the scheduler decides first (quota: a resize, a nodegroup create) and wait (bounded) for
    its decision: 403 with the scheduler's words when refused (nothing changed), else the sequence the read model
    shows the change from (the admission's; the request's own when the decision was not heard in time: it is
    accepted and will be decided)."""
    watch = writer.watch_admission(cluster_uuid)
    try:
        seq = await writer.publish(subject, event, project_id=project_id, cluster_id=cluster_uuid)

        async def undecided() -> str | None:
            return None

        decision = await watch.decision(undecided, request.app[SETTINGS].admission_timeout)
    finally:
        watch.close()
    if decision is not None and decision.verdict == "rejected":
        reason = (await _refusal(writer, decision.seq, cluster_uuid) if decision.seq else None) or RESIZE_REFUSED
        log.info("cluster_change_refused", cluster_id=cluster_uuid, type=type(event).__name__, reason=reason)
        raise ApiError(403, reason)
    return max(seq, decision.seq if decision is not None else 0)


RESIZE_REFUSED = "Quota exceeded: the cluster cannot grow to that size."


async def _refusal(writer: Writer, seq: int, cluster_uuid: str) -> str | None:
    """The scheduler's reason for refusing a create or a resize of ``cluster_uuid``, read from its event at ``seq``
    in the stream (one request; the read model keeps none for a refused resize). None when it cannot be read."""
    with contextlib.suppress(Exception):
        msg = await writer.bus.js.get_msg(subjects.EVENTS_STREAM, seq)
        payload = decode(msg.data or b"").payload
        if isinstance(payload, ClusterUpdateRejected | ClusterRejected) and payload.uuid == cluster_uuid:
            return payload.reason
    return None


@routes.delete("/v1/clusters/{ident}")
async def delete_cluster(request: web.Request) -> web.Response:
    ctx = context(request)
    row = await lookup(request, request.match_info["ident"])
    policy.require(request, "cluster:delete", owner(row))
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


HEALTH_STATUSES = ("HEALTHY", "UNHEALTHY", "UNKNOWN")
PATCHABLE = frozenset({"node_count", "health_status", "health_status_reason"})
UPDATABLE = status.STABLE | {status.UPDATE_FAILED}
"""Statuses a node_count change is accepted from (the projection's ClusterUpdateRequested rule)."""


def cluster_patch_ops(body: Any) -> list[dict[str, Any]]:
    """The PATCH body as validated JSON-patch operations: checked before the cluster is looked up, as in Magnum."""
    return parse_patch(body, internal=CLUSTER_INTERNAL, non_removable=CLUSTER_NON_REMOVABLE)


def cluster_patch(doc: dict[str, Any], body: Any, v: Microversion) -> dict[str, Any]:
    """Magnum's cluster PATCH as a pure function: the changed patchable fields and their validated values.

    ``doc`` is the cluster as shown (``view``), ``body`` the request's. Raises ``ApiError(400)`` for internal
    paths, unknown or unchangeable properties, bad values, and ``node_count`` 0 before microversion 1.10."""
    ops = cluster_patch_ops(body)
    after = apply_patch(doc, ops)
    if after.get("node_count") is not None:
        after["node_count"] = as_int(after, "node_count", minimum=0)
    delta = changed(doc, after)
    refused = sorted(delta - PATCHABLE)
    if refused:
        raise bad_request(f"cannot change cluster property(ies) {', '.join(refused)}.")
    out: dict[str, Any] = {}
    if "node_count" in delta:
        count = after["node_count"]
        if count is None:
            raise bad_request("'/node_count' is a mandatory attribute and can not be removed")
        if count == 0 and not v.at_least(1, 10):
            raise bad_request("Resizing a nodegroup to zero is not supported in the provided microversion.")
        out["node_count"] = count
    if "health_status" in delta:
        health = after["health_status"]
        if health is not None and health not in HEALTH_STATUSES:
            raise bad_request(
                f"Invalid input for field/attribute health_status. Value: '{health}'. "
                f"Value should be one of: {', '.join(HEALTH_STATUSES)}"
            )
        out["health_status"] = health
    if "health_status_reason" in delta:
        reason = after["health_status_reason"] or {}
        if not isinstance(reason, dict):
            raise bad_request(f"Invalid input for field/attribute health_status_reason. Value: '{reason}'.")
        out["health_status_reason"] = {str(k): str(val) for k, val in reason.items()}
    return out


def _rollback(request: web.Request, v: Microversion) -> bool:
    raw = request.query.get("rollback")
    if raw is None:
        return False
    if not v.at_least(1, 3):
        raise bad_request('Unknown argument: "rollback"')
    flag = as_bool({"rollback": raw}, "rollback")
    return bool(flag)


@routes.patch("/v1/clusters/{ident}")
async def patch_cluster(request: web.Request) -> web.Response:
    ctx = context(request)
    v = version(request)
    body = await json_body(request)
    cluster_patch_ops(body)  # a malformed body is a 400 before any look-up, as in Magnum
    rollback = _rollback(request, v)
    row = await lookup(request, request.match_info["ident"])
    policy.require(request, "cluster:update", owner(row))
    doc = view(row, base_url(request), v)
    delta = cluster_patch(doc, body, v)
    spec = json.loads(row["spec"])
    if {"health_status", "health_status_reason"} & set(delta):
        trustee = spec.get("trustee_user_id")
        if not (
            policy.allowed(request, "cluster:update_health_status", owner(row))
            or (trustee and trustee == ctx.user_id
                and policy.allowed(request, "cluster:update_health_status",
                                   {"project_id": row["project_id"], "user_id": trustee}))
        ):
            raise ApiError(403, "Policy doesn't allow cluster:update_health_status to be performed.")
    if "node_count" in delta and row["status"] not in UPDATABLE:
        raise bad_request(f'Updating a cluster when status is "{row["status"]}" is not supported')
    writer = request.app[WRITER]
    subject = subjects.cluster_events("api", row["uuid"])
    seq = 0
    if {"health_status", "health_status_reason"} & set(delta):
        seq = await writer.publish(
            subject,
            ClusterHealthUpdated(
                uuid=row["uuid"],
                project_id=row["project_id"],
                health_status=delta.get("health_status", doc["health_status"]),
                health_status_reason=delta.get("health_status_reason", doc["health_status_reason"]) or {},
                user_id=ctx.user_id,
            ),
            project_id=row["project_id"],
            cluster_id=row["uuid"],
        )
    if "node_count" in delta:
        resize = ClusterUpdateRequested(
            uuid=row["uuid"],
            project_id=row["project_id"],
            node_count=delta["node_count"],
            previous_node_count=spec.get("node_count"),
            rollback=rollback,
        )
        seq = await publish_resize(request, writer, subject, resize)
    if seq:
        await writer.wait_applied(seq)
    log.info("cluster_update_accepted", cluster_id=row["uuid"], fields=sorted(delta), rollback=rollback)
    return web.json_response({"uuid": row["uuid"]}, status=202)
