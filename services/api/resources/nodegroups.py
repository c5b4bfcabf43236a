"""``/v1/clusters/{cluster}/nodegroups`` (>= 1.9): list, show, create (202 + body), PATCH (202 + body), delete.

Every cluster has ``default-master`` and ``default-worker`` (``is_default``); more worker groups can be added.
node_count changes go through ``/actions/resize``; PATCH changes only min/max counts and node labels/taints.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from proto import subjects
from proto.clusterspec import DEFAULT_FLAVOR, NodeGroupSpec, merged_labels
from proto.events import (
    NodeGroup,
    NodeGroupCreateRequested,
    NodeGroupDeleteRequested,
    NodeGroupUpdateRequested,
    NodeTaint,
)
from services.api import ngstore, paging, status
from services.api.errors import ApiError, bad_request, conflict
from services.api.keys import POOL, USER_CLOUD, WRITER
from services.api.microversion import Microversion, unsupported
from services.api.middleware import base_url, context, version
from services.api.resources.clusters import decided_publish, node_quotas_apply
from services.api.resources.clusters import lookup as lookup_cluster
from services.api.resources.common import iso, json_body, require_read, require_write
from services.api.validation import (
    as_bool,
    as_int,
    as_labels,
    as_str,
    reject_unknown,
    require_object,
)

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
OPERABLE = frozenset({"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_IN_PROGRESS", "UPDATE_FAILED"})
CREATE_FIELDS = frozenset({
    "name", "node_count", "min_node_count", "max_node_count", "role", "flavor_id", "image_id",
    "docker_volume_size", "labels", "merge_labels", "node_labels", "node_taints",
})
PATCHABLE = ("min_node_count", "max_node_count", "node_labels", "node_taints")
LIST_FIELDS = ("uuid", "name", "flavor_id", "image_id", "node_count", "role", "is_default", "status", "stack_id")


def require_version(v: Microversion, minimum: tuple[int, int], what: str) -> None:
    if not v.at_least(*minimum):
        raise unsupported(
            f"{what} requires API version {minimum[0]}.{minimum[1]} or later; version {v} was requested."
        )


def view(row: asyncpg.Record, cluster: asyncpg.Record, base: str, v: Microversion,
         node_addresses: list[str] | None = None) -> dict[str, Any]:
    ng = ngstore.nodegroup_of(row)
    spec = json.loads(cluster["spec"])
    parent: dict[str, str] = spec.get("labels") or {}
    labels = dict(ng.labels)
    body: dict[str, Any] = {
        "id": row["id"],
        "uuid": row["uuid"],
        "name": row["name"],
        "cluster_id": row["cluster_uuid"],
        "project_id": row["project_id"],
        "docker_volume_size": ng.docker_volume_size,
        "labels": labels,
        "labels_overridden": {k: parent[k] for k in labels if k in parent and parent[k] != labels[k]},
        "labels_added": {k: labels[k] for k in labels if k not in parent},
        "labels_skipped": {k: parent[k] for k in parent if k not in labels},
        "links": [
            {"href": f"{base}/v1/clusters/{row['cluster_uuid']}/nodegroups/{row['uuid']}", "rel": "self"},
            {"href": f"{base}/clusters/{row['cluster_uuid']}/nodegroups/{row['uuid']}", "rel": "bookmark"},
        ],
        "flavor_id": ng.flavor_id,
        "image_id": ng.image_id,
        "node_addresses": node_addresses or [],
        "node_count": row["node_count"],
        "role": row["role"],
        "min_node_count": row["min_node_count"],
        "max_node_count": row["max_node_count"],
        "is_default": row["is_default"],
        "stack_id": cluster["stack_id"],
        "status": row["status"],
        "status_reason": row["status_reason"],
        "version": None,
        "merge_labels": ng.merge_labels,
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }
    if v.at_least(1, 14):
        body["node_labels"] = dict(ng.node_labels)
        body["node_taints"] = [{"key": t.key, "value": t.value, "effect": t.effect} for t in ng.node_taints]
    return body


async def _cluster(request: web.Request, rule: str, *, write: bool) -> asyncpg.Record:
    ctx = context(request)
    require_version(version(request), (1, 9), "Nodegroups")
    (require_write if write else require_read)(ctx, rule)
    return await lookup_cluster(request, request.match_info["cluster"])


async def _group(request: web.Request, cluster: asyncpg.Record) -> asyncpg.Record:
    ident = request.match_info["ng"]
    row = await ngstore.find(request.app[POOL], cluster["uuid"], ident)
    if row is None:
        raise ApiError(404, f"Nodegroup {ident} could not be found.")
    return row


async def _show(request: web.Request, cluster: asyncpg.Record, row: asyncpg.Record, code: int = 200) -> web.Response:
    addrs = await ngstore.addresses(request.app[POOL], cluster["uuid"], row["name"])
    return web.json_response(view(row, cluster, base_url(request), version(request), addrs), status=code)


@routes.get("/v1/clusters/{cluster}/nodegroups")
async def list_nodegroups(request: web.Request) -> web.Response:
    cluster = await _cluster(request, "nodegroup:get_all", write=False)
    page = paging.parse_page(request.query, ngstore.NODEGROUP_SORT_KEYS)
    role = request.query.get("role") or None
    try:
        rows = await ngstore.list_for(
            request.app[POOL], cluster["uuid"], role=role, limit=page.limit, sort_key=page.sort_key,
            sort_dir=page.sort_dir, marker=page.marker,
        )
    except LookupError:
        raise bad_request(f"Marker {page.marker} could not be found.") from None
    base, v = base_url(request), version(request)
    items = [{k: view(r, cluster, base, v)[k] for k in LIST_FIELDS} for r in rows]
    body: dict[str, Any] = {"nodegroups": items}
    nxt = paging.next_link(base, f"clusters/{cluster['uuid']}/nodegroups", page, len(rows),
                           rows[-1]["uuid"] if rows else None)
    if nxt:
        body["next"] = nxt
    return web.json_response(body)


@routes.get("/v1/clusters/{cluster}/nodegroups/{ng}")
async def show_nodegroup(request: web.Request) -> web.Response:
    cluster = await _cluster(request, "nodegroup:get", write=False)
    return await _show(request, cluster, await _group(request, cluster))


def _taints(value: Any) -> list[NodeTaint]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise conflict(f"Invalid node_taints {value!r}: a list of {{key, value, effect}} objects is expected.")
    out: list[NodeTaint] = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not item["key"]:
            raise conflict(f"Invalid node taint {item!r}: key is required.")
        effect = item.get("effect", "NoSchedule")
        if effect not in TAINT_EFFECTS:
            raise conflict(f"Invalid node taint effect {effect!r}: one of {', '.join(TAINT_EFFECTS)} expected.")
        val = item.get("value")
        out.append(NodeTaint(key=item["key"], value=None if val is None else str(val), effect=effect))
    return out


def _node_labels(value: Any) -> dict[str, str]:
    labels = as_labels({"node_labels": value}, "node_labels") or {}
    for key in labels:
        head = key.split("/", 1)[0] if "/" in key else ""
        if head.endswith(("kubernetes.io", "k8s.io")) and not head.startswith(("node.kubernetes.io",
                                                                             "kubelet.kubernetes.io")):
            raise conflict(f"Invalid node label {key}: the kubernetes.io and k8s.io prefixes are restricted.")
    return labels


def check_counts(node_count: int, min_count: int, max_count: int | None) -> None:
    """Magnum's NodeGroupInvalidInput (409) rules on the counts."""
    if max_count is not None and min_count > max_count:
        raise conflict(f"min_node_count ({min_count}) must not be greater than max_node_count ({max_count}).")
    if max_count is not None and node_count > max_count:
        raise conflict(f"node_count ({node_count}) must not be greater than max_node_count ({max_count}).")
    if min_count > node_count:
        raise conflict(f"min_node_count ({min_count}) must not be greater than node_count ({node_count}).")


def _ensure_operable(cluster: asyncpg.Record) -> None:
    if cluster["status"] not in status.STABLE | {status.UPDATE_FAILED, status.UPDATE_IN_PROGRESS}:
        raise conflict(f"Cluster {cluster['uuid']} is in status {cluster['status']}; nodegroups cannot change now.")


@routes.post("/v1/clusters/{cluster}/nodegroups")
async def create_nodegroup(request: web.Request) -> web.Response:
    cluster = await _cluster(request, "nodegroup:create", write=True)
    ctx, v, pool = context(request), version(request), request.app[POOL]
    body = require_object(await json_body(request), "nodegroup")
    reject_unknown(body, CREATE_FIELDS, "nodegroup")
    if not v.at_least(1, 14) and ({"node_labels", "node_taints"} & set(body)):
        raise bad_request("node_labels and node_taints require API version 1.14 or later.")
    name = as_str(body, "name")
    if name is None:
        raise bad_request("Mandatory field missing: name")
    role = as_str(body, "role") or "worker"
    if role == "master":
        raise bad_request("Creating master nodegroups is currently not supported.")
    node_count = as_int(body, "node_count", minimum=0)
    node_count = 1 if node_count is None else node_count
    min_count = as_int(body, "min_node_count", minimum=0) or 0
    max_count = as_int(body, "max_node_count", minimum=0)
    check_counts(node_count, min_count, max_count)
    if not cluster["api_address"]:
        raise conflict(f"Cluster {cluster['uuid']} has no api_address yet; nodegroups can be added once it has.")
    _ensure_operable(cluster)
    if await ngstore.find(pool, cluster["uuid"], name) is not None:
        raise conflict(f"A node group with name {name} already exists in the cluster {cluster['uuid']}.")
    spec = json.loads(cluster["spec"])
    flavor = as_str(body, "flavor_id") or spec.get("flavor_id")
    size: tuple[int, int] | None = None  # vCPUs and RAM for the scheduler's quotas (else the default worker's)
    if as_str(body, "flavor_id"):
        found = await request.app[USER_CLOUD].find_flavor(ctx, body["flavor_id"])
        size = (int(found.get("vcpus") or 0), int(found.get("ram") or 0))
    image = as_str(body, "image_id")
    if image is None:
        default_worker = await ngstore.find(pool, cluster["uuid"], ngstore.DEFAULT_WORKER)
        image = ngstore.nodegroup_of(default_worker).image_id if default_worker is not None else None
    else:
        await request.app[USER_CLOUD].find_image(ctx, image)
    merge = bool(as_bool(body, "merge_labels"))
    labels = merged_labels(spec.get("labels") or {}, as_labels(body), merge)
    volume = as_int(body, "docker_volume_size", minimum=1)
    ng = NodeGroup(
        uuid=str(uuid.uuid4()), name=name, cluster_id=cluster["uuid"], project_id=cluster["project_id"],
        role=role, node_count=node_count, min_node_count=min_count, max_node_count=max_count, flavor_id=flavor,
        image_id=image, docker_volume_size=volume if volume is not None else spec.get("docker_volume_size"),
        labels=labels, merge_labels=merge, node_labels=_node_labels(body.get("node_labels")),
        node_taints=_taints(body.get("node_taints")), created_at=datetime.now(UTC),
    )
    # Resolved here, once: the group's own values, else the cluster's (its flavor, its default worker's image).
    built = NodeGroupSpec(name=name, role=role, node_count=node_count, flavor_id=flavor or DEFAULT_FLAVOR,
                          image_id=image or "", docker_volume_size=ng.docker_volume_size, labels=labels,
                          vcpus=size[0] if size else None, ram_mb=size[1] if size else None)
    subject = subjects.cluster_events("api", cluster["uuid"])
    # Decided on quota first when a node, vCPU, RAM or volume quota limits the project (docs/adr/0008).
    requested = NodeGroupCreateRequested(nodegroup=ng, spec=built,
                                         decided=await node_quotas_apply(pool, cluster["project_id"]))
    if requested.decided:
        seq = await decided_publish(request, request.app[WRITER], subject, requested, cluster["uuid"],
                                    cluster["project_id"])
    else:
        seq = await request.app[WRITER].publish(subject, requested, project_id=cluster["project_id"],
                                                cluster_id=cluster["uuid"])
    await request.app[WRITER].wait_applied(seq)
    log.info("nodegroup_create_accepted", cluster_id=cluster["uuid"], nodegroup=name, node_count=node_count)
    row = await ngstore.find(pool, cluster["uuid"], ng.uuid)
    if row is None:
        raise ApiError(503, "The nodegroup was accepted but is not visible yet; try again.")
    cluster = await lookup_cluster(request, cluster["uuid"])
    return await _show(request, cluster, row, 202)


def _parse_ops(body: Any, v: Microversion) -> list[dict[str, Any]]:
    """The PATCH body as validated operations; checked before any look-up, as Magnum's WSME types are."""
    if not isinstance(body, list):
        raise bad_request("The PATCH body must be a JSON-patch list of operations.")
    allowed = PATCHABLE if v.at_least(1, 14) else PATCHABLE[:2]
    for op in body:
        if not isinstance(op, dict) or op.get("op") not in ("add", "replace", "remove") \
                or not isinstance(op.get("path"), str):
            raise bad_request(f"Invalid JSON-patch operation: {op!r}")
        field = op["path"].strip("/")
        if field not in allowed:
            raise bad_request(f"cannot change nodegroup property(ies) {field}.")
        if op["op"] != "remove" and "value" not in op:
            raise bad_request(f"'value' is required for {op['op']} of {op['path']}")
    return body


def _apply_ops(current: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(current)
    for op in ops:
        field = op["path"].strip("/")
        if op["op"] == "remove":
            out[field] = {"min_node_count": 0, "max_node_count": None, "node_labels": {}, "node_taints": []}[field]
        else:
            out[field] = op["value"]
    return out


@routes.patch("/v1/clusters/{cluster}/nodegroups/{ng}")
async def update_nodegroup(request: web.Request) -> web.Response:
    v = version(request)
    ops = _parse_ops(await json_body(request), v)
    cluster = await _cluster(request, "nodegroup:update", write=True)
    row = await _group(request, cluster)
    ng = ngstore.nodegroup_of(row)
    current = {
        "min_node_count": row["min_node_count"], "max_node_count": row["max_node_count"],
        "node_labels": dict(ng.node_labels),
        "node_taints": [{"key": t.key, "value": t.value, "effect": t.effect} for t in ng.node_taints],
    }
    new = _apply_ops(current, ops)
    min_count = as_int(new, "min_node_count", minimum=0) or 0
    max_count = as_int(new, "max_node_count", minimum=0)
    if row["role"] == "master" and (new["node_labels"] != current["node_labels"]
                                    or new["node_taints"] != current["node_taints"]):
        raise conflict("Node labels and taints cannot be set on the master nodegroup.")
    check_counts(row["node_count"], min_count, max_count)
    if row["status"] not in OPERABLE:
        raise conflict(f"Nodegroup {row['name']} is in status {row['status']}; it cannot be updated now.")
    event = NodeGroupUpdateRequested(
        cluster_id=cluster["uuid"], project_id=cluster["project_id"], uuid=row["uuid"],
        min_node_count=min_count, max_node_count=max_count, node_labels=_node_labels(new["node_labels"]),
        node_taints=_taints(new["node_taints"]),
    )
    seq = await request.app[WRITER].publish(
        subjects.cluster_events("api", cluster["uuid"]), event,
        project_id=cluster["project_id"], cluster_id=cluster["uuid"],
    )
    await request.app[WRITER].wait_applied(seq)
    row = await _group(request, cluster)
    return await _show(request, cluster, row, 202)


@routes.delete("/v1/clusters/{cluster}/nodegroups/{ng}")
async def delete_nodegroup(request: web.Request) -> web.Response:
    cluster = await _cluster(request, "nodegroup:delete", write=True)
    row = await _group(request, cluster)
    if row["is_default"]:
        raise bad_request(f"Deleting a default nodegroup is not supported ({row['name']}).")
    if row["status"] == "DELETE_IN_PROGRESS":
        return web.Response(status=204)
    if row["status"] not in OPERABLE | {"CREATE_FAILED", "DELETE_FAILED"}:
        raise conflict(f"Nodegroup {row['name']} is in status {row['status']}; it cannot be deleted now.")
    _ensure_operable(cluster)
    seq = await request.app[WRITER].publish(
        subjects.cluster_events("api", cluster["uuid"]),
        NodeGroupDeleteRequested(cluster_id=cluster["uuid"], project_id=cluster["project_id"], uuid=row["uuid"],
                                 name=row["name"]),
        project_id=cluster["project_id"], cluster_id=cluster["uuid"],
    )
    await request.app[WRITER].wait_applied(seq)
    log.info("nodegroup_delete_accepted", cluster_id=cluster["uuid"], nodegroup=row["name"])
    return web.Response(status=204)
