"""``GET /v1/stats``: Magnum's cluster and node counts, per project or (admin) overall (§1.8 of the reference).

``nodes`` is the sum of every cluster's master_count + node_count (Magnum sums all nodegroups' node_count,
masters included). Cove adds ``coes``: the same two counts per COE (``{"kubernetes": {"clusters": 2, "nodes": 7},
...}``), which `openstack coe stats list` prints with the rest. Policy ``stats:get_all``: admin, or a reader of the
project asked about.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from services.api import policy
from services.api.errors import ApiError, bad_request
from services.api.keys import POOL
from services.api.middleware import context

routes = web.RouteTableDef()

_COUNT = (
    "SELECT COALESCE(spec->>'coe', '') AS coe, count(*) AS clusters,"
    " COALESCE(sum(COALESCE((spec->>'master_count')::int, 0) + COALESCE((spec->>'node_count')::int, 0)), 0)"
    " AS nodes FROM clusters"
)


async def count(pool: asyncpg.Pool, project_id: str | None) -> dict[str, Any]:
    """``{"clusters", "nodes", "coes": {coe: {"clusters", "nodes"}}}`` of one project, or of every project when
    ``project_id`` is None."""
    if project_id is None:
        rows = await pool.fetch(_COUNT + " GROUP BY 1 ORDER BY 1")
    else:
        rows = await pool.fetch(_COUNT + " WHERE project_id = $1 GROUP BY 1 ORDER BY 1", project_id)
    coes = {str(r["coe"]): {"clusters": int(r["clusters"]), "nodes": int(r["nodes"])} for r in rows}
    return {"clusters": sum(c["clusters"] for c in coes.values()), "nodes": sum(c["nodes"] for c in coes.values()),
            "coes": coes}


@routes.get("/v1/stats")
async def stats(request: web.Request) -> web.Response:
    ctx = context(request)
    policy.require(request, "stats:get_all")
    kind = request.query.get("type", "cluster")
    if kind != "cluster":
        raise bad_request(f"Invalid stats type {kind}. Valid values are cluster.")
    project_id = request.query.get("project_id") or None
    if not policy.is_admin(request):
        if project_id is not None and project_id != ctx.project_id:
            raise ApiError(403, "Not authorized.")
        project_id = ctx.project_id or ""
    body: dict[str, Any] = await count(request.app[POOL], project_id)
    return web.json_response(body)
