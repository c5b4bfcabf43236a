"""CADF audit records of every API write, as keystonemiddleware's audit middleware gives them for Magnum.

``audit_middleware`` sees each POST, PATCH, PUT and DELETE under ``/v1`` after the token was validated, and the
final response (the Magnum error body included). It builds one ``proto.audit.CadfEvent``: ``initiator`` the
Keystone user in its project (the token masked), ``target`` the resource (``service/container-infra/<collection>``
and its uuid, a created resource's from the response), ``action`` create / update / delete (a cluster action such as
resize is an update), ``outcome`` success below HTTP 400 and failure otherwise, with the status as ``reason`` and
the request id (``X-Openstack-Request-Id``) as an attachment. It is published on ``cove.audit.api`` (stream
``COVE_AUDIT``) in the background, so a write never waits on its audit record; ``Nats-Msg-Id`` is the record's id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from proto import subjects
from proto.audit import (
    INITIATOR_TYPE_URI,
    OBSERVER_TYPE_URI,
    Action,
    CadfAttachment,
    CadfCredential,
    CadfEvent,
    CadfHost,
    CadfReason,
    CadfResource,
)
from services.api.keys import WRITER
from services.api.keystone import AuthContext
from services.api.middleware import CONTEXT, REQUEST_ID
from services.runtime import metrics

log = structlog.get_logger(__name__)

ACTIONS: dict[str, Action] = {"POST": "create", "PUT": "update", "PATCH": "update", "DELETE": "delete"}
CADF_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f+0000"


def _route_parts(request: web.Request) -> list[str]:
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else request.path
    return [p for p in canonical.strip("/").split("/") if p][1:]  # without "v1"


def target_of(request: web.Request, body: Any) -> tuple[str, str, str | None]:
    """(typeURI, id, name) of the resource a write is about: the collection path (``clusters``,
    ``clusters/nodegroups``...; a cluster action targets the cluster), the response's ``uuid`` when it has one,
    else the last identifier in the path (a quota's project), else the certificate's cluster."""
    parts = _route_parts(request)
    if "actions" in parts:
        parts = parts[: parts.index("actions")]
    type_uri = "/".join([OBSERVER_TYPE_URI, *(p for p in parts if not p.startswith("{"))])
    ident: str | None = None
    for part in parts:
        if part.startswith("{") and part != "{resource}":
            ident = request.match_info.get(part.strip("{}"), ident)
    name = None
    if isinstance(body, dict):
        if body.get("uuid"):
            ident = str(body["uuid"])
        elif ident is None and body.get("cluster_uuid"):
            ident = str(body["cluster_uuid"])
        if isinstance(body.get("name"), str):
            name = body["name"]
    return type_uri, ident or "unknown", name


def _body_of(response: web.StreamResponse | None) -> Any:
    if not isinstance(response, web.Response) or response.body is None:
        return None
    if (response.content_type or "") != "application/json":
        return None
    try:
        return json.loads(bytes(response.body))  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return None


def build_event(request: web.Request, ctx: AuthContext, status: int, body: Any) -> CadfEvent:
    type_uri, ident, name = target_of(request, body)
    return CadfEvent(
        id=str(uuid.uuid4()),
        eventTime=datetime.now(UTC).strftime(CADF_TIME_FORMAT),
        action=ACTIONS[request.method],
        outcome="success" if status < 400 else "failure",
        reason=CadfReason(reasonCode=str(status)),
        initiator=CadfResource(
            typeURI=INITIATOR_TYPE_URI, id=ctx.user_id, name=ctx.user_name, project_id=ctx.project_id,
            host=CadfHost(address=request.remote, agent=request.headers.get("User-Agent")),
            credential=CadfCredential(token="***"),
        ),
        target=CadfResource(typeURI=type_uri, id=ident, name=name),
        observer=CadfResource(typeURI=OBSERVER_TYPE_URI, id="target", name="cove-api"),
        requestPath=request.path,
        attachments=[CadfAttachment(typeURI="mime:text/plain", name="request_id", content=request.get(REQUEST_ID, ""))],
    )


class Auditor:
    """Publishes audit records in the background; ``close`` waits for those in flight."""

    def __init__(self, publish: Any) -> None:
        self._publish = publish
        self._pending: set[asyncio.Task[None]] = set()

    def emit(self, event: CadfEvent) -> None:
        task = asyncio.create_task(self._send(event))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, event: CadfEvent) -> None:
        try:
            await self._publish(subjects.AUDIT_API, msgspec.json.encode(event), headers={"Nats-Msg-Id": event.id})
            metrics.AUDIT_PUBLISHED.labels(event.outcome).inc()
        except Exception as exc:  # noqa: BLE001 - the write is done; a lost record is counted and logged
            metrics.AUDIT_FAILED.inc()
            log.error("audit_publish_failed", audit_id=event.id, error=repr(exc))

    async def close(self) -> None:
        if self._pending:
            with contextlib.suppress(Exception):
                await asyncio.wait(list(self._pending), timeout=5.0)


AUDITOR = web.AppKey("auditor", Auditor)


async def auditor_ctx(app: web.Application) -> AsyncIterator[None]:
    bus = app[WRITER].bus
    app[AUDITOR] = auditor = Auditor(bus.js.publish)
    yield
    await auditor.close()


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Between the request id and the error body: it sees the final status of every authenticated write."""
    if request.method not in ACTIONS or not request.path.startswith("/v1"):
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _record(request, exc.status, None)
        raise
    _record(request, response.status, _body_of(response))
    return response


def _record(request: web.Request, status: int, body: Any) -> None:
    ctx = request.get(CONTEXT)
    auditor = request.app.get(AUDITOR)
    if ctx is None or auditor is None:
        return  # refused before the token was validated: not audited (keystonemiddleware sits behind auth_token)
    auditor.emit(build_event(request, ctx, status, body))
