"""``/v1/quotas``: per-project cluster limits (Magnum's quota API, §1.7 of the reference).

Admins create, update and delete rows; each write is a ``Quota*`` event on ``cove.evt.api.quota.<project>``
that the scheduler applies to its own quotas table (what admission enforces) and this module's projection
applies to ``api.quotas`` (what reads show). A project without a row has the default limit
(``COVE_DEFAULT_CLUSTER_QUOTA``, Magnum's 20), which ``GET /v1/quotas/{project}/{resource}`` synthesises.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from proto import quotas as quota_names
from proto import subjects
from proto.envelope import Envelope
from proto.events import QuotaCreated, QuotaDeleted, QuotaUpdated
from services.api import paging, policy, versions
from services.api.errors import ApiError, bad_request
from services.api.keys import KEYSTONE, POOL, WRITER
from services.api.keystone import AuthContext
from services.api.middleware import base_url, context
from services.api.resources.common import iso, json_body
from services.api.store import MarkerNotFound, Page, keyset_page
from services.api.validation import SQL_INT_MAX

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

RESOURCES = quota_names.RESOURCES
"""``Cluster`` (Magnum's), ``Node``, ``vCPU``, ``RAM`` (MB) and ``VolumeGB`` (docs/adr/0008)."""
MAGNUM_DEFAULT_LIMIT = quota_names.MAGNUM_DEFAULT_CLUSTER_QUOTA
SORT_KEYS: dict[str, str] = {
    "id": "id",
    "project_id": "project_id",
    "resource": "resource",
    "hard_limit": "hard_limit",
    "created_at": "created_at",
    "updated_at": "COALESCE(updated_at, created_at)",
}
_PROJECT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})


def default_limit(environ: dict[str, str] | None = None, resource: str = quota_names.CLUSTER) -> int:
    """The limit of projects without a row, as the scheduler reads it: ``COVE_DEFAULT_CLUSTER_QUOTA`` or 20 for
    clusters, ``COVE_DEFAULT_<RESOURCE>_QUOTA`` or -1 (unlimited) for the others."""
    env = environ if environ is not None else dict(os.environ)
    return quota_names.default_limits(env).get(resource, quota_names.UNLIMITED)


# --------------------------------------------------------------------------- the read model (schema api)


async def put_quota(tx: asyncpg.Connection, project_id: str, resource: str, hard_limit: int, at: datetime, *,
                    update: bool) -> None:
    """The quota's limit as of ``at``; ``update``: a change of an existing quota (its row made by it when its
    creation is applied later: versions.py)."""
    await tx.execute(
        "INSERT INTO quotas (project_id, resource, hard_limit, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4::timestamptz, CASE WHEN $5::boolean THEN $4::timestamptz END)"
        " ON CONFLICT (project_id, resource) DO UPDATE SET hard_limit = EXCLUDED.hard_limit,"
        " updated_at = EXCLUDED.created_at",
        project_id, resource, hard_limit, at, update,
    )


async def quota_created(e: QuotaCreated, env: Envelope, tx: asyncpg.Connection) -> None:
    if await versions.newer(tx, "quota", f"{e.project_id}/{e.resource}"):
        await put_quota(tx, e.project_id, e.resource, e.hard_limit, env.occurred_at, update=False)
    else:  # a later change was applied first: the quota was created when this says
        await tx.execute("UPDATE quotas SET created_at = LEAST(created_at, $3) WHERE project_id = $1"
                         " AND resource = $2", e.project_id, e.resource, env.occurred_at)


async def quota_updated(e: QuotaUpdated, env: Envelope, tx: asyncpg.Connection) -> None:
    if await versions.newer(tx, "quota", f"{e.project_id}/{e.resource}"):
        await put_quota(tx, e.project_id, e.resource, e.hard_limit, env.occurred_at, update=True)


async def quota_deleted(e: QuotaDeleted, env: Envelope, tx: asyncpg.Connection) -> None:
    if await versions.newer(tx, "quota", f"{e.project_id}/{e.resource}"):
        await tx.execute("DELETE FROM quotas WHERE project_id = $1 AND resource = $2", e.project_id, e.resource)


PROJECTION: dict[type, Callable[[Any, Envelope, asyncpg.Connection], Awaitable[None]]] = {
    QuotaCreated: quota_created,
    QuotaUpdated: quota_updated,
    QuotaDeleted: quota_deleted,
}
"""Merged into the API projection's handlers (services/api/projection.py)."""


async def get_quota(pool: asyncpg.Pool, project_id: str, resource: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT * FROM quotas WHERE project_id = $1 AND resource = $2", project_id, resource
    )
    return row


async def list_quotas(pool: asyncpg.Pool, project_id: str | None, page: Page) -> list[asyncpg.Record]:
    """One page ordered by ``page.sort_key`` then id; the marker is a row id (Magnum's integer ids)."""
    where, args = ("project_id = $1", [project_id]) if project_id is not None else ("TRUE", [])
    try:
        return await keyset_page(pool, "quotas", SORT_KEYS, where, args, page, marker_column="id")
    except MarkerNotFound:
        raise bad_request(f"Marker {page.marker} could not be found.") from None


# --------------------------------------------------------------------------- HTTP


def view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "project_id": row["project_id"],
        "resource": row["resource"],
        "hard_limit": row["hard_limit"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }


def _resource(value: Any) -> str:
    if value not in RESOURCES:
        raise bad_request(f"Invalid input for field/attribute resource. Value: '{value}'. "
                          f"Value should be one of: {', '.join(RESOURCES)}")
    return str(value)


def _hard_limit(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise bad_request(f"Invalid input for field/attribute hard_limit. Value: '{value}'. Wrong type.")
    try:
        limit = int(value)
    except ValueError:
        raise bad_request(f"Invalid input for field/attribute hard_limit. Value: '{value}'. Wrong type.") from None
    if limit < 0:
        raise bad_request(f"Invalid input for field/attribute hard_limit. Value: '{value}'. "
                          "Value should be greater or equal to 0")
    if limit > SQL_INT_MAX:  # an SQL integer here and in the scheduler, as every integer the API accepts
        raise bad_request(f"Invalid input for field/attribute hard_limit. Value: '{value}'. "
                          f"Value should be lower or equal to {SQL_INT_MAX}")
    return limit


def _project_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise bad_request("Must provide a valid project ID.")
    if not _PROJECT_ID.match(value):
        raise ApiError(404, f"Project {value} could not be found.")
    return value


async def _project_exists(request: web.Request, ctx: AuthContext, project_id: str) -> bool:
    """Ask Keystone (with the admin's own token) whether the project exists."""
    keystone = request.app[KEYSTONE]
    async with keystone._session().get(
        f"{keystone.v3}/projects/{project_id}", headers={"X-Auth-Token": ctx.token}
    ) as resp:
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        log.warning("project_lookup_failed", project_id=project_id, status=resp.status)
        raise ApiError(503, f"Could not look up project {project_id} (identity answered {resp.status}).")


async def _publish(request: web.Request, event: QuotaCreated | QuotaUpdated | QuotaDeleted) -> None:
    writer = request.app[WRITER]
    seq = await writer.publish(
        subjects.event_subject("api", "quota", event.project_id), event, project_id=event.project_id, cluster_id=None
    )
    await writer.wait_applied(seq)


@routes.get("/v1/quotas")
async def list_all(request: web.Request) -> web.Response:
    ctx = context(request)
    policy.require(request, "quota:get_all")
    page = paging.parse_page(request.query, SORT_KEYS)
    all_tenants = request.query.get("all_tenants", "").lower() in _TRUE and policy.is_admin(request)
    rows = await list_quotas(request.app[POOL], None if all_tenants else ctx.project_id or "", page)
    base = base_url(request)
    body: dict[str, Any] = {"quotas": [view(r) for r in rows]}
    nxt = paging.next_link(base, "quotas", page, len(rows), str(rows[-1]["id"]) if rows else None)
    if nxt:
        body["next"] = nxt + ("&all_tenants=True" if all_tenants else "")
    return web.json_response(body)


@routes.get("/v1/quotas/{project_id}/{resource}")
async def show(request: web.Request) -> web.Response:
    ctx = context(request)
    policy.require(request, "quota:get")
    project_id, resource = request.match_info["project_id"], request.match_info["resource"]
    if not policy.is_admin(request) and project_id != ctx.project_id:
        raise ApiError(403, "Not authorized.")
    row = await get_quota(request.app[POOL], project_id, resource)
    if row is None:
        known = resource if resource in RESOURCES else quota_names.CLUSTER
        return web.json_response({"project_id": project_id, "hard_limit": default_limit(resource=known),
                                  "resource": known})
    return web.json_response(view(row))


@routes.post("/v1/quotas")
async def create(request: web.Request) -> web.Response:
    ctx = context(request)
    policy.require(request, "quota:create")
    body = await json_body(request)
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    unknown = sorted(set(body) - {"project_id", "resource", "hard_limit", "id", "created_at", "updated_at"})
    if unknown:
        raise bad_request(f"Unknown attribute for argument quota: {', '.join(unknown)}")
    project_id = _project_id(body.get("project_id"))
    resource = _resource(body.get("resource", "Cluster"))
    hard_limit = _hard_limit(body.get("hard_limit", 1))
    pool = request.app[POOL]
    if await get_quota(pool, project_id, resource) is not None:
        raise ApiError(409, f"Quota for project {project_id} already exists for resource {resource}.")
    if not await _project_exists(request, ctx, project_id):
        raise ApiError(404, f"Project {project_id} could not be found.")
    await _publish(request, QuotaCreated(project_id=project_id, resource=resource, hard_limit=hard_limit))
    log.info("quota_created", project_id=project_id, resource=resource, hard_limit=hard_limit)
    return await _answer(pool, project_id, resource, hard_limit, 201)


async def _answer(pool: asyncpg.Pool, project_id: str, resource: str, hard_limit: int, status: int) -> web.Response:
    """The quota as the read model now has it; from the request when it is not there (the projection is behind,
    or the quota was deleted meanwhile)."""
    row = await get_quota(pool, project_id, resource)
    if row is None:
        return web.json_response({"project_id": project_id, "resource": resource, "hard_limit": hard_limit},
                                 status=status)
    return web.json_response(view(row), status=status)


@routes.patch("/v1/quotas/{project_id}/{resource}")
async def update(request: web.Request) -> web.Response:
    policy.require(request, "quota:update")
    project_id, resource = request.match_info["project_id"], request.match_info["resource"]
    body = await json_body(request)
    if not isinstance(body, dict) or "hard_limit" not in body:
        raise bad_request("The request body must be an object with hard_limit.")
    hard_limit = _hard_limit(body["hard_limit"])
    pool = request.app[POOL]
    if await get_quota(pool, project_id, resource) is None:
        raise ApiError(404, f"Quota for project {project_id} and resource {resource} could not be found.")
    await _publish(request, QuotaUpdated(project_id=project_id, resource=resource, hard_limit=hard_limit))
    log.info("quota_updated", project_id=project_id, resource=resource, hard_limit=hard_limit)
    return await _answer(pool, project_id, resource, hard_limit, 202)


@routes.delete("/v1/quotas/{project_id}/{resource}")
async def delete(request: web.Request) -> web.Response:
    policy.require(request, "quota:delete")
    project_id, resource = request.match_info["project_id"], request.match_info["resource"]
    if await get_quota(request.app[POOL], project_id, resource) is None:
        raise ApiError(404, f"Quota for project {project_id} and resource {resource} could not be found.")
    await _publish(request, QuotaDeleted(project_id=project_id, resource=resource))
    log.info("quota_deleted", project_id=project_id, resource=resource)
    return web.Response(status=204)
