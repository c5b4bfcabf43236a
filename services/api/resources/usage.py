"""``GET /v1/usage`` (a Cove extension): what a project's clusters used over a window, as JSON or CSV.

Query: ``start`` and ``end`` (ISO 8601 with a timezone, or a date; the window is [start, end), ``end`` defaults to
now and ``start`` to the beginning), ``group_by`` (``project``, the default, ``cluster`` or ``resource``: one row per
server, volume, floating IP, load balancer and cluster, with its own billed seconds), ``project_id`` (admins: any
project, or every project when absent; members and readers: their own only, another project's is a 403) and
``cluster_id``. ``Accept: text/csv`` (or ``?format=csv``) answers CSV with the same columns and the same numbers.

The figures are the accounting service's (``cove.rpc.accounting.usage``): usage is the only read the API does not
answer from its own schema, because accounting alone holds the resources' intervals and the arithmetic is done
over them at query time for any window (docs/ARCHITECTURE.md). Hours are exact microsecond sums divided out:
vCPU-hours, RAM-GB-hours (GiB, 1024 MB), volume-GB-hours, floating-IP-hours, load-balancer-hours, server-hours and
cluster-hours.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from proto import subjects
from proto.requests import GetUsage, UsageReport, UsageRow
from services.api import policy
from services.api.errors import ApiError, bad_request
from services.api.keys import WRITER
from services.api.middleware import context
from services.runtime import rpc

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

RPC_TIMEOUT = 10.0
US_PER_HOUR = 3_600_000_000
GROUPS = ("project", "cluster", "resource")

FIGURES = (
    ("vcpu_hours", "vcpu_us", 1),
    ("ram_gb_hours", "ram_mb_us", 1024),
    ("volume_gb_hours", "volume_gb_us", 1),
    ("floating_ip_hours", "floating_ip_us", 1),
    ("load_balancer_hours", "load_balancer_us", 1),
    ("server_hours", "server_us", 1),
    ("cluster_hours", "cluster_us", 1),
)
RESOURCE_COLUMNS = ("resource_kind", "resource_id", "resource_name", "vcpus", "ram_mb", "size_gb", "started_at",
                    "ended_at", "billed_seconds")


def columns(group_by: str) -> list[str]:
    """The JSON keys of a row, and the CSV header, in order."""
    out = ["project_id"]
    if group_by != "project":
        out.append("cluster_id")
    if group_by == "resource":
        out += RESOURCE_COLUMNS
    return out + [name for name, _, _ in FIGURES]


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value is not None else None


def row_view(row: UsageRow, group_by: str) -> dict[str, Any]:
    out: dict[str, Any] = {"project_id": row.project_id}
    if group_by != "project":
        out["cluster_id"] = row.cluster_id
    if group_by == "resource":
        out.update(
            resource_kind=row.resource_kind, resource_id=row.resource_id, resource_name=row.resource_name,
            vcpus=row.vcpus, ram_mb=row.ram_mb, size_gb=row.size_gb, started_at=_iso(row.started_at),
            ended_at=_iso(row.ended_at),
            billed_seconds=row.billed_us / 1_000_000 if row.billed_us is not None else None,
        )
    for name, field, divisor in FIGURES:
        out[name] = getattr(row, field) / (US_PER_HOUR * divisor)
    return out


def parse_time(value: str | None, name: str) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise bad_request(f"Invalid {name}: '{value}' is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _wants_csv(request: web.Request) -> bool:
    if request.query.get("format", "").lower() == "csv":
        return True
    accept = request.headers.get("Accept", "")
    return "text/csv" in accept and "application/json" not in accept.split("text/csv")[0]


def to_csv(body: dict[str, Any]) -> str:
    buf = io.StringIO()
    names = columns(body["group_by"])
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    for row in body["usage"]:
        writer.writerow(["" if row[n] is None else json.dumps(row[n]) if isinstance(row[n], float) else row[n]
                         for n in names])
    return buf.getvalue()


@routes.get("/v1/usage")
async def usage(request: web.Request) -> web.Response:
    ctx = context(request)
    q = request.query
    group_by = q.get("group_by", "project")
    if group_by not in GROUPS:
        raise bad_request(f"Invalid group_by '{group_by}': one of {', '.join(GROUPS)}")
    start, end = parse_time(q.get("start"), "start"), parse_time(q.get("end"), "end")
    if start is not None and end is not None and start > end:
        raise bad_request("start is after end")
    admin = policy.is_admin(request)
    project_id: str | None = q.get("project_id") or None
    if project_id is None and not admin:
        project_id = ctx.project_id
    if project_id is None:
        policy.require(request, "usage:get_all_projects")
    else:
        policy.require(request, "usage:get", {"project_id": project_id, "user_id": ctx.user_id})
    req = GetUsage(project_id=project_id, since=start, until=end, cluster_id=q.get("cluster_id") or None,
                   group_by=group_by)  # type: ignore[arg-type]
    try:
        reply = await rpc.request(request.app[WRITER].bus.nc, subjects.ACCOUNTING_USAGE, req, timeout=RPC_TIMEOUT)
    except rpc.RpcError as exc:
        if exc.code == 400:
            raise bad_request(exc.message) from exc
        if exc.code == 413:  # more rows than one answer holds (e.g. every resource of every project)
            raise bad_request(f"The usage report is too large: {exc.message} (one project, one cluster, a shorter "
                              "period, or group_by project or cluster).") from exc
        log.error("accounting_rpc_failed", code=exc.code, error=exc.message)
        raise ApiError(503, "The accounting service is not available; try again later.") from exc
    assert isinstance(reply, UsageReport)
    body: dict[str, Any] = {
        "project_id": project_id,
        "start": _iso(start),
        "end": _iso(reply.until),
        "group_by": group_by,
        "usage": [row_view(row, group_by) for row in reply.rows],
    }
    if _wants_csv(request):
        return web.Response(text=to_csv(body), content_type="text/csv")
    return web.json_response(body)
