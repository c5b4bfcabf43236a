"""``GET /v1/controlplane`` (a Cove extension, admin only): what the control plane is doing, in one read.

The web console's operator page (docs/console.md) shows it; anything with an admin token may read it. It holds what
Magnum's API has no resource for and what otherwise lives only on NATS:

* ``services``: the last heartbeat of every service (``COVE_HEARTBEATS``, as ``/v1/mservices`` reads it), with its
  age in seconds;
* ``consumers``: every durable consumer of ``COVE_EVENTS`` with its lag: ``pending`` (stored, not yet delivered),
  ``ack_pending`` (delivered, not acknowledged), ``redelivered`` and the last stream sequence delivered;
* ``dead_letters``: how many messages ``COVE_DLQ`` holds, per consumer, and the newest ``recent`` of them (at most
  20) with the ``Cove-Dlq-*`` headers the runtime writes (reason, consumer, original subject and sequence);
* ``build_queue``: clusters waiting for a build slot (admitted to the queue by the scheduler, their place in
  ``status_reason``) and those being built, from the API's own read model.

Read only: retrying or dropping a dead letter stays with ``cove dlq`` (services/ops), which an operator runs with
NATS credentials. Policy ``controlplane:get`` (admin).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from aiohttp import web

from proto import subjects
from services.api import policy
from services.api.keys import POOL, WRITER
from services.api.resources.common import iso
from services.api.resources.mservices import last_heartbeats
from services.runtime.bus import Bus

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

RECENT_DEAD_LETTERS = 20
DLQ_HEADERS = {
    "Cove-Dlq-Reason": "reason",
    "Cove-Dlq-Consumer": "consumer",
    "Cove-Dlq-Subject": "subject",
    "Cove-Dlq-Stream-Seq": "stream_seq",
    "Cove-Dlq-Deliveries": "deliveries",
}


async def consumers(bus: Bus) -> list[dict[str, Any]]:
    try:
        infos = await bus.js.consumers_info(subjects.EVENTS_STREAM)
    except nats.js.errors.NotFoundError:
        return []
    out = []
    for info in infos:
        out.append({
            "name": info.name,
            "pending": info.num_pending or 0,
            "ack_pending": info.num_ack_pending or 0,
            "redelivered": info.num_redelivered or 0,
            "delivered_seq": info.delivered.stream_seq if info.delivered else None,
            "ack_floor_seq": info.ack_floor.stream_seq if info.ack_floor else None,
        })
    return sorted(out, key=lambda c: c["name"])


async def dead_letters(bus: Bus) -> dict[str, Any]:
    try:
        info = await bus.js.stream_info(subjects.DLQ_STREAM, subjects_filter=subjects.DLQ_ALL)
    except nats.js.errors.NotFoundError:
        return {"total": 0, "by_consumer": {}, "recent": []}
    prefix = subjects.DLQ_PREFIX + "."
    by_consumer = {subject.removeprefix(prefix): n for subject, n in sorted((info.state.subjects or {}).items())}
    recent: list[dict[str, Any]] = []
    seq = info.state.last_seq
    while seq >= max(info.state.first_seq, 1) and len(recent) < RECENT_DEAD_LETTERS:
        try:
            msg = await bus.js.get_msg(subjects.DLQ_STREAM, seq=seq)
        except (nats.js.errors.NotFoundError, nats.errors.TimeoutError):
            seq -= 1
            continue  # deleted (retried or dropped) since the stream info
        stored = getattr(msg, "time", None)
        item: dict[str, Any] = {"id": seq, "time": iso(stored) if isinstance(stored, datetime) else stored}
        headers = msg.headers or {}
        for header, key in DLQ_HEADERS.items():
            item[key] = headers.get(header)
        recent.append(item)
        seq -= 1
    return {"total": info.state.messages, "by_consumer": by_consumer, "recent": recent}


async def build_queue(request: web.Request) -> list[dict[str, Any]]:
    rows = await request.app[POOL].fetch(
        "SELECT uuid, name, project_id, status, status_reason, admission, created_at FROM clusters"
        " WHERE admission = 'queued' OR status = 'CREATE_IN_PROGRESS' ORDER BY created_at, uuid LIMIT 500")
    return [{
        "uuid": r["uuid"], "name": r["name"], "project_id": r["project_id"], "status": r["status"],
        "status_reason": r["status_reason"], "waiting": r["admission"] == "queued",
        "created_at": iso(r["created_at"]),
    } for r in rows]


@routes.get("/v1/controlplane")
async def controlplane(request: web.Request) -> web.Response:
    policy.require(request, "controlplane:get")
    bus = request.app[WRITER].bus
    now = datetime.now(UTC)
    services = [{
        "service": hb.service, "host": hb.host, "pid": hb.pid, "state": hb.state, "version": hb.version,
        "started_at": iso(hb.started_at), "last_heartbeat": iso(at), "age_seconds": round((now - at).total_seconds(), 1),
    } for hb, at in await last_heartbeats(bus)]
    body = {
        "time": iso(now),
        "services": services,
        "consumers": await consumers(bus),
        "dead_letters": await dead_letters(bus),
        "build_queue": await build_queue(request),
    }
    return web.json_response(body)
