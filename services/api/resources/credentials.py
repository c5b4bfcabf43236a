"""``PATCH /v1/credentials/{cluster}`` (microversion >= 1.12): rotate the cluster's credentials (§1.6).

Cove's clusters act in the user's project through a Keystone trust (trustor: the caller, trustee: the cove
service user). Rotation creates a new trust from the caller and publishes ``ClusterTrustRotated``; the
provisioner acts with the new trust from then on. Policy ``credential:rotate`` is Magnum's: a member of the
cluster's project (no admin clause).
"""

from __future__ import annotations

import structlog
from aiohttp import web

from proto import subjects
from proto.events import ClusterTrustRotated
from services.api import policy, status, store
from services.api.errors import bad_request
from services.api.keys import KEYSTONE, POOL, WRITER
from services.api.microversion import unsupported
from services.api.middleware import context, version
from services.api.resources.common import one, scope_of

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()


@routes.patch("/v1/credentials/{ident}")
async def rotate(request: web.Request) -> web.Response:
    v = version(request)
    if not v.at_least(1, 12):
        raise unsupported(f"The requested version {v} does not support credential rotation; 1.12 or later is "
                          "required.")
    ctx = context(request)
    ident = request.match_info["ident"]
    found = await store.find_clusters(request.app[POOL], scope_of(ctx), ident)
    cluster = one(found, "Cluster", ident, plural="clusters")
    policy.require(request, "credential:rotate", {"project_id": cluster["project_id"], "user_id": cluster["user_id"]})
    if cluster["status"] in status.DELETING:
        raise bad_request(f"Cannot rotate the credentials of cluster {cluster['uuid']} while it is deleted.")
    trust_id, trustee = await request.app[KEYSTONE].create_trust(ctx)
    writer = request.app[WRITER]
    seq = await writer.publish(
        subjects.cluster_events("api", cluster["uuid"]),
        ClusterTrustRotated(
            uuid=cluster["uuid"], project_id=cluster["project_id"], trust_id=trust_id, trustee_user_id=trustee,
            user_id=ctx.user_id,
        ),
        project_id=cluster["project_id"],
        cluster_id=cluster["uuid"],
    )
    await writer.wait_applied(seq)
    log.info("cluster_trust_rotated", cluster_id=cluster["uuid"], trust_id=trust_id)
    return web.json_response({"uuid": cluster["uuid"]}, status=202)
