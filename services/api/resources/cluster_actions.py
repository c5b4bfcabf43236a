"""``POST /v1/clusters/{ident}/actions/resize`` (>= 1.7) and ``/actions/upgrade`` (>= 1.8): 202 {"uuid"}.

Resize sets one worker group's node_count (default: default-worker), optionally naming the servers to remove
first; upgrade moves the cluster (or one nodegroup) to another template, whose image the provisioner rolls the
worker nodes to in batches of ``max_batch_size``.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from proto import subjects
from proto.events import ClusterUpdateRequested, ClusterUpgradeRequested
from services.api import ngstore, status, store
from services.api.errors import ApiError, bad_request, conflict
from services.api.keys import POOL, WRITER
from services.api.middleware import context, version
from services.api.resources.clusters import lookup, publish_resize
from services.api.resources.common import json_body, one, require_write, scope_of
from services.api.resources.nodegroups import require_version
from services.api.validation import as_int, as_str, reject_unknown, require_object

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()
RESIZABLE = status.STABLE | {status.UPDATE_IN_PROGRESS, status.UPDATE_FAILED}


def _nodes_to_remove(body: dict[str, Any]) -> list[str]:
    value = body.get("nodes_to_remove")
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise bad_request(f"Invalid input for field/attribute nodes_to_remove. Value: '{value}'.")
    return list(value)


@routes.post("/v1/clusters/{ident}/actions/resize")
async def resize(request: web.Request) -> web.Response:
    ctx, v = context(request), version(request)
    require_version(v, (1, 7), "Cluster resize")
    require_write(ctx, "cluster:resize")
    cluster = await lookup(request, request.match_info["ident"])
    body = require_object(await json_body(request), "resize")
    reject_unknown(body, frozenset({"node_count", "nodes_to_remove", "nodegroup"}), "resize")
    node_count = as_int(body, "node_count", minimum=0)
    if node_count is None:
        raise bad_request("Mandatory field missing: node_count")
    if node_count == 0 and not v.at_least(1, 10):
        raise bad_request("node_count must be greater than 0 before API version 1.10.")
    remove = _nodes_to_remove(body)
    ng_ident = as_str(body, "nodegroup")
    ng = await ngstore.find(request.app[POOL], cluster["uuid"], ng_ident)
    if ng is None:
        raise ApiError(404, f"Nodegroup {ng_ident or ngstore.DEFAULT_WORKER} could not be found.")
    if ng["role"] == "master":
        raise bad_request("Resizing the master nodegroup is not supported.")
    low, high = ng["min_node_count"], ng["max_node_count"]
    if node_count < low or (high is not None and node_count > high):
        raise bad_request(
            f"Resizing {ng['name']} outside the allowed range: min_node_count = {low}, "
            f"max_node_count = {high if high is not None else 'None'}"
        )
    if cluster["status"] not in RESIZABLE:
        raise conflict(f"Cluster {cluster['uuid']} is in status {cluster['status']}; it cannot be resized now.")
    if ng["status"] not in RESIZABLE:
        raise conflict(f"Nodegroup {ng['name']} is in status {ng['status']}; it cannot be resized now.")
    event = ClusterUpdateRequested(
        uuid=cluster["uuid"], project_id=cluster["project_id"], node_count=node_count,
        previous_node_count=ng["node_count"], nodes_to_remove=remove, nodegroup=ng["name"],
    )
    seq = await publish_resize(request, request.app[WRITER], subjects.cluster_events("api", cluster["uuid"]), event)
    await request.app[WRITER].wait_applied(seq)
    log.info("cluster_resize_accepted", cluster_id=cluster["uuid"], nodegroup=ng["name"], node_count=node_count,
             nodes_to_remove=len(remove))
    return web.json_response({"uuid": cluster["uuid"]}, status=202)


@routes.post("/v1/clusters/{ident}/actions/upgrade")
async def upgrade(request: web.Request) -> web.Response:
    ctx, v = context(request), version(request)
    require_version(v, (1, 7), "Cluster upgrade")
    if not v.at_least(1, 8):
        raise bad_request("Cluster upgrade is not supported before API version 1.8.")
    require_write(ctx, "cluster:upgrade")
    cluster = await lookup(request, request.match_info["ident"])
    body = require_object(await json_body(request), "upgrade")
    reject_unknown(body, frozenset({"cluster_template", "max_batch_size", "nodegroup"}), "upgrade")
    template_ident = as_str(body, "cluster_template")
    if template_ident is None:
        raise bad_request("Mandatory field missing: cluster_template")
    batch = as_int(body, "max_batch_size", minimum=1) or 1
    pool = request.app[POOL]
    found = await store.find_templates(pool, scope_of(ctx), template_ident)
    template = one(found, "ClusterTemplate", template_ident, plural="cluster templates")
    ng_ident = as_str(body, "nodegroup")
    ng = None
    if ng_ident is not None:
        ng = await ngstore.find(pool, cluster["uuid"], ng_ident)
        if ng is None:
            raise ApiError(404, f"Nodegroup {ng_ident} could not be found.")
        if not ng["is_default"] and template.uuid != cluster["cluster_template_id"]:
            raise conflict(
                f"Cluster template {template.uuid} is not valid for upgrading nodegroup {ng['name']}: a "
                "non-default nodegroup can only be upgraded to the cluster's current template."
            )
    current = await store.find_templates(pool, scope_of(ctx), cluster["cluster_template_id"])
    if current and current[0].coe != template.coe:
        raise conflict(
            f"Cluster template {template.uuid} is not valid for upgrade: its coe {template.coe} differs from the "
            f"cluster's {current[0].coe}."
        )
    if cluster["status"] not in status.STABLE | {status.UPDATE_FAILED}:
        raise conflict(f"Cluster {cluster['uuid']} is in status {cluster['status']}; it cannot be upgraded now.")
    event = ClusterUpgradeRequested(
        uuid=cluster["uuid"], project_id=cluster["project_id"], template=template, max_batch_size=batch,
        nodegroup=ng["name"] if ng is not None else None,
    )
    seq = await request.app[WRITER].publish(
        subjects.cluster_events("api", cluster["uuid"]), event,
        project_id=cluster["project_id"], cluster_id=cluster["uuid"],
    )
    await request.app[WRITER].wait_applied(seq)
    log.info("cluster_upgrade_accepted", cluster_id=cluster["uuid"], template=template.uuid, max_batch_size=batch)
    return web.json_response({"uuid": cluster["uuid"]}, status=202)
