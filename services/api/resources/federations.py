"""``/v1/federations``: answered as current Magnum answers (§1.10 of the reference).

Magnum validates a federation create and casts it to the conductor, whose federation handlers raise
NotImplementedError: nothing is ever stored. So: lists are empty, show/update/delete of any federation are 404,
and a valid create is accepted (202 with a fresh uuid) and then never appears. Validation follows Magnum's:
``hostcluster_id`` required and must name a visible cluster, ``properties`` must hold ``dns-zone``.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from aiohttp import web

from services.api import store
from services.api.errors import ApiError, bad_request
from services.api.keys import POOL
from services.api.middleware import context
from services.api.resources.common import json_body, one, require_read, require_write, scope_of
from services.api.validation import reject_unknown

routes = web.RouteTableDef()

FIELDS = frozenset({"uuid", "name", "hostcluster_id", "member_ids", "status", "status_reason", "properties",
                    "project_id", "links", "created_at", "updated_at"})
_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.-]*$")


def not_found(ident: str) -> ApiError:
    return ApiError(404, f"Federation {ident} could not be found.")


@routes.get("/v1/federations")
async def list_federations(request: web.Request) -> web.Response:
    require_read(context(request), "federation:get_all")
    return web.json_response({"federations": []})


@routes.get("/v1/federations/detail")
async def detail_federations(request: web.Request) -> web.Response:
    require_read(context(request), "federation:detail")
    return web.json_response({"federations": []})


@routes.get("/v1/federations/{ident}")
async def show_federation(request: web.Request) -> web.Response:
    require_read(context(request), "federation:get")
    raise not_found(request.match_info["ident"])


@routes.post("/v1/federations")
async def create_federation(request: web.Request) -> web.Response:
    ctx = context(request)
    require_write(ctx, "federation:create")
    body = await json_body(request)
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    reject_unknown(body, FIELDS, "federation")
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 242 or not _NAME.match(name)):
        raise bad_request(f"Invalid input for field/attribute name. Value: '{name}'.")
    host = body.get("hostcluster_id")
    if not host:
        raise bad_request("No hostcluster specified. Please specify a hostcluster_id.")
    found = await store.find_clusters(request.app[POOL], scope_of(ctx), str(host))
    one(found, "Cluster", str(host), plural="clusters")
    properties: Any = body.get("properties") or {}
    if not isinstance(properties, dict) or "dns-zone" not in properties:
        raise bad_request('No DNS zone specified. Please specify a "dns-zone".')
    return web.json_response({"uuid": str(uuid.uuid4())}, status=202)


@routes.patch("/v1/federations/{ident}")
async def update_federation(request: web.Request) -> web.Response:
    require_write(context(request), "federation:update")
    raise not_found(request.match_info["ident"])


@routes.delete("/v1/federations/{ident}")
async def delete_federation(request: web.Request) -> web.Response:
    require_write(context(request), "federation:delete")
    raise not_found(request.match_info["ident"])
