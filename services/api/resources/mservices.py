"""``GET /v1/mservices``: Cove's services as Magnum's service list (§1.9 of the reference; admin only).

Every service publishes ``ServiceHeartbeat`` to ``cove.heartbeat.<service>``; stream ``COVE_HEARTBEATS`` keeps
the last one per service (and forgets it after a minute). On each GET the API reads those last heartbeats and
records them in ``api.mservices`` (one row per binary and host: a stable integer id and the first time seen),
then answers every row ever seen. ``state`` is ``up`` while the last heartbeat says up and is younger than
``COVE_SERVICE_DOWN_TIME`` seconds (default 60), else ``down`` (a stopped service reports ``stopping``).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import nats.errors
import nats.js.errors
import structlog
from aiohttp import web

from proto import subjects
from proto.envelope import MalformedMessage, decode
from proto.events import ServiceHeartbeat
from services.api import paging, policy
from services.api.errors import bad_request
from services.api.keys import POOL, WRITER
from services.api.middleware import base_url
from services.api.resources.common import iso
from services.api.store import MarkerNotFound, keyset_page
from services.runtime.bus import Bus

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

DEFAULT_DOWN_TIME = 60.0


def down_time() -> timedelta:
    return timedelta(seconds=float(os.environ.get("COVE_SERVICE_DOWN_TIME", str(DEFAULT_DOWN_TIME))))


def binary_of(service: str) -> str:
    """``cove-<service>``, the counterpart of Magnum's ``magnum-conductor``."""
    return f"cove-{service}"


async def last_heartbeats(bus: Bus) -> list[tuple[ServiceHeartbeat, datetime]]:
    """The last heartbeat of every service the stream still holds, with the time it was sent."""
    try:
        info = await bus.js.stream_info(subjects.HEARTBEATS_STREAM, subjects_filter=subjects.HEARTBEATS_ALL)
    except nats.js.errors.NotFoundError:
        return []
    found: list[tuple[ServiceHeartbeat, datetime]] = []
    for subject in sorted((info.state.subjects or {}).keys()):
        try:
            msg = await bus.js.get_last_msg(subjects.HEARTBEATS_STREAM, subject, direct=True)
        except (nats.js.errors.NotFoundError, nats.errors.TimeoutError):
            continue  # expired between the two calls
        if msg.data is None:
            continue
        try:
            env = decode(msg.data)
        except MalformedMessage:
            log.warning("heartbeat_undecodable", subject=subject)
            continue
        if isinstance(env.payload, ServiceHeartbeat):
            found.append((env.payload, env.occurred_at))
    return found


async def record(pool: asyncpg.Pool, beats: list[tuple[ServiceHeartbeat, datetime]]) -> None:
    for hb, at in beats:
        await pool.execute(
            "INSERT INTO mservices (binary_name, host, report_count, state, created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (binary_name, host) DO UPDATE SET"
            " report_count = CASE WHEN mservices.updated_at IS NULL OR EXCLUDED.updated_at >= mservices.updated_at"
            "   THEN EXCLUDED.report_count ELSE mservices.report_count END,"
            " state = CASE WHEN mservices.updated_at IS NULL OR EXCLUDED.updated_at >= mservices.updated_at"
            "   THEN EXCLUDED.state ELSE mservices.state END,"
            " updated_at = GREATEST(mservices.updated_at, EXCLUDED.updated_at)",
            binary_of(hb.service),
            hb.host,
            hb.report_count or 1,
            hb.state,
            hb.started_at,
            at,
        )


def view(row: asyncpg.Record, now: datetime, down_after: timedelta) -> dict[str, Any]:
    fresh = row["updated_at"] is not None and now - row["updated_at"] <= down_after
    return {
        "id": row["id"],
        "binary": row["binary_name"],
        "host": row["host"],
        "state": "up" if fresh and row["state"] == "up" else "down",
        "report_count": row["report_count"],
        "disabled": False,
        "disabled_reason": None,
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }


SORT_KEYS: dict[str, str] = {
    "id": "id",
    "binary": "binary_name",
    "host": "host",
    "report_count": "report_count",
    "created_at": "created_at",
    "updated_at": "COALESCE(updated_at, 'epoch'::timestamptz)",
}


@routes.get("/v1/mservices")
async def list_services(request: web.Request) -> web.Response:
    """Magnum's list, paged like every other (``limit``, ``marker`` = the last id, ``sort_key``, ``sort_dir``):
    python-magnumclient's ``mservices.list(limit=..., marker=...)`` sends them."""
    policy.require(request, "magnum-service:get_all")
    page = paging.parse_page(request.query, SORT_KEYS)
    pool = request.app[POOL]
    await record(pool, await last_heartbeats(request.app[WRITER].bus))
    try:
        rows = await keyset_page(pool, "mservices", SORT_KEYS, "TRUE", [], page, marker_column="id")
    except MarkerNotFound:
        raise bad_request(f"Marker {page.marker} could not be found.") from None
    now, down_after = datetime.now(UTC), down_time()
    body: dict[str, Any] = {"mservices": [view(r, now, down_after) for r in rows]}
    nxt = paging.next_link(base_url(request), "mservices", page, len(rows), str(rows[-1]["id"]) if rows else None)
    if nxt:
        body["next"] = nxt
    return web.json_response(body)
